"""The profile list's time filters take any ISO 8601 offset a client may send."""

import datetime as dt

import pytest

from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.django_db


def _at(moment: dt.datetime, offset: dt.timedelta) -> str:
    return moment.astimezone(dt.timezone(offset)).isoformat()


@pytest.mark.parametrize(
    "offset",
    [dt.timedelta(hours=-22, minutes=-53), dt.timedelta(hours=23, minutes=59), dt.timedelta(0)],
)
def test_a_time_with_any_offset_filters_by_the_moment_it_names(api_client, offset):
    profile = ProfileFactory.create()
    before = profile.created_at - dt.timedelta(minutes=1)
    after = profile.created_at + dt.timedelta(minutes=1)

    listed = api_client.get("/api/profiles/", {"created_after": _at(before, offset)})
    not_yet = api_client.get("/api/profiles/", {"created_before": _at(before, offset)})
    until = api_client.get("/api/profiles/", {"created_before": _at(after, offset)})

    assert listed.status_code == 200, listed.content
    assert [p["external_id"] for p in listed.json()["results"]] == [profile.external_id]
    assert not_yet.json()["results"] == []
    assert [p["external_id"] for p in until.json()["results"]] == [profile.external_id]


def test_a_time_utc_cannot_hold_is_refused_on_the_filter(api_client):
    response = api_client.get("/api/profiles/", {"created_after": "0001-01-01T00:00:00+05:00"})

    assert response.status_code == 400
    assert "created_after" in response.json()
