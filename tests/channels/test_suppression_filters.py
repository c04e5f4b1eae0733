"""The suppression list's time filters take any ISO 8601 offset a client may send, as the
profile list's do (``segments.api.filtersets.UtcIsoDateTimeFilter``): PostgreSQL holds
offsets up to 15:59 only, so a time is read as the moment it names."""

import datetime as dt

import pytest

from channels.choices import SuppressionReason, SuppressionSource
from channels.models import Suppression
from channels.suppression import SuppressionEntry, suppressions_record

pytestmark = pytest.mark.django_db


def _at(moment: dt.datetime, offset: dt.timedelta) -> str:
    return moment.astimezone(dt.timezone(offset)).isoformat()


@pytest.mark.parametrize(
    "offset",
    [dt.timedelta(hours=-22, minutes=-53), dt.timedelta(hours=23, minutes=59), dt.timedelta(0)],
)
def test_a_time_with_any_offset_filters_by_the_moment_it_names(api_client, offset):
    entry = SuppressionEntry("email", "ann@example.com", SuppressionReason.HARD_BOUNCE)
    suppressions_record(entries=[entry], source=SuppressionSource.PROVIDER)
    created = Suppression.objects.get().created_at
    before, after = created - dt.timedelta(minutes=1), created + dt.timedelta(minutes=1)

    listed = api_client.get("/api/suppressions/", {"created_after": _at(before, offset)})
    not_yet = api_client.get("/api/suppressions/", {"created_before": _at(before, offset)})
    until = api_client.get("/api/suppressions/", {"created_before": _at(after, offset)})

    assert listed.status_code == 200, listed.content
    assert [s["address"] for s in listed.json()["results"]] == ["ann@example.com"]
    assert not_yet.json()["results"] == []
    assert [s["address"] for s in until.json()["results"]] == ["ann@example.com"]


def test_a_time_utc_cannot_hold_is_refused_on_the_filter(api_client):
    response = api_client.get("/api/suppressions/", {"created_after": "0001-01-01T00:00:00+05:00"})

    assert response.status_code == 400
    assert "created_after" in response.json()
