"""A recurring campaign's schedule at every door: the API, the admin, the command, the
review; each reads and writes the same fields and refuses a bad recurrence on its field."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.management import call_command
from django.utils import timezone

from campaigns import services
from campaigns.choices import CampaignKind, CampaignStatus
from campaigns.models import Campaign
from campaigns.review import campaign_review
from tests.campaigns.doors import ADD, add_data, change_url, create_payload
from tests.campaigns.factories import make_campaign, make_live_campaign
from tests.segments.factories import SegmentFactory

pytestmark = pytest.mark.django_db

WEEKLY = {"every": "week", "at": "09:00", "weekdays": ["monday"]}
END = "2099-03-31T12:00:00+00:00"


def recurring_payload(**schedule):
    return create_payload(
        kind="recurring",
        schedule={
            "start_at": None,
            "time_zone": "Europe/Paris",
            "recurrence": WEEKLY,
            "end_at": END,
            "once_per_profile": True,
            **schedule,
        },
    )


def test_the_api_writes_and_reads_the_recurrence(api_client):
    made = api_client.post("/api/campaigns/", recurring_payload(), format="json")
    assert made.status_code == 201, made.content

    schedule = api_client.get(f"/api/campaigns/{made.json()['id']}/").json()["draft_version"][
        "schedule"
    ]
    assert schedule["recurrence"] == {
        "every": "week",
        "interval": 1,
        "at": "09:00",
        "weekdays": ["monday"],
        "month_days": [],
    }
    assert schedule["end_at"] == "2099-03-31T12:00:00Z"
    assert schedule["once_per_profile"] is True
    assert schedule["recurrence_words"] == (
        "every Monday at 09:00 (Europe/Paris), until 31 March 2099"
    )

    changed = api_client.patch(
        f"/api/campaigns/{made.json()['id']}/",
        {"schedule": {"recurrence": {"every": "day", "at": "07:30"}, "once_per_profile": False}},
        format="json",
    )
    assert changed.status_code == 200, changed.content
    version = Campaign.objects.get(pk=made.json()["id"]).draft_version
    assert version.recurrence["every"] == "day"
    assert version.once_per_profile is False


def test_the_api_refuses_a_bad_recurrence_naming_its_key(api_client):
    response = api_client.post(
        "/api/campaigns/",
        recurring_payload(recurrence={"every": "day", "at": "9:00", "interval": 0}),
        format="json",
    )

    assert response.status_code == 400
    errors = response.json()["schedule"]["recurrence"]
    assert errors["at"] == ["A clock time as HH:MM, from 00:00 to 23:59."]
    assert errors["interval"] == ["Between 1 and 99."]
    assert not Campaign.objects.exists()


def test_the_api_refuses_an_end_before_any_occurrence(api_client):
    response = api_client.post(
        "/api/campaigns/",
        recurring_payload(start_at="2099-01-05T09:00:00+00:00", end_at="2099-01-05T10:00:00Z"),
        format="json",
    )

    assert response.status_code == 400
    assert "no occurrence" in response.json()["end_at"][0]


def test_the_api_shows_the_next_runs_of_a_live_recurring_campaign(api_client):
    campaign = make_live_campaign(
        kind=CampaignKind.RECURRING, recurrence={"every": "day", "at": "09:00"}, time_zone="UTC"
    )

    body = api_client.get(f"/api/campaigns/{campaign.pk}/").json()
    assert body["status"] == "live"
    first = dt.datetime.fromisoformat(body["next_run_at"])
    assert first > timezone.now()
    assert first.hour == 9
    assert len(body["next_runs"]) == 5
    assert body["next_runs"][1]["at"] == (first + dt.timedelta(days=1)).isoformat().replace(
        "+00:00", "Z"
    )
    assert body["next_runs"][0]["words"].endswith("at 09:00")


def test_the_review_says_the_recurrence_and_refuses_a_recurring_campaign_without_one():
    without = make_campaign(kind=CampaignKind.RECURRING)
    codes = [check.code for check in campaign_review(campaign=without, user=None).warnings]
    assert "no_recurrence" in codes
    bad = make_campaign(kind=CampaignKind.RECURRING, recurrence=WEEKLY)
    # A recurrence stored by an earlier release that today's rules refuse.
    type(bad.draft_version).objects.filter(pk=bad.draft_version_id).update(
        recurrence={"every": "week", "at": "25:00", "weekdays": ["monday"]}
    )
    refused = campaign_review(campaign=bad, user=None).errors
    assert [(c.code, c.message) for c in refused] == [
        ("invalid_recurrence", "Recurrence, at: A clock time as HH:MM, from 00:00 to 23:59.")
    ]

    with_rule = make_campaign(
        kind=CampaignKind.RECURRING, recurrence=WEEKLY, time_zone="Europe/Paris"
    )
    review = campaign_review(campaign=with_rule, user=None)
    assert not review.errors
    assert review.as_dict()["schedule"]["recurrence"] == "every Monday at 09:00 (Europe/Paris)"


def test_the_command_shows_the_recurrence_and_the_next_runs(capsys):
    campaign = make_live_campaign(
        kind=CampaignKind.RECURRING, recurrence=WEEKLY, time_zone="Europe/Paris"
    )

    call_command("campaign", "show", str(campaign.pk))
    out = capsys.readouterr().out
    assert "every Monday at 09:00 (Europe/Paris)" in out
    assert out.count("Monday ") >= 5  # the next runs, one a line


def test_a_stopped_recurring_campaign_has_no_next_run(api_client):
    campaign = make_live_campaign(
        kind=CampaignKind.RECURRING, recurrence=WEEKLY, time_zone="Europe/Paris"
    )
    services.campaign_stop(campaign=campaign, user=None)

    body = api_client.get(f"/api/campaigns/{campaign.pk}/").json()
    assert body["status"] == CampaignStatus.STOPPED
    assert body["next_run_at"] is None
    assert body["next_runs"] == []


# --- the admin ---------------------------------------------------------------------------

RECURRENCE_FORM = {
    "recurrence_every": "week",
    "recurrence_interval": "2",
    "recurrence_at": "09:00",
    "recurrence_weekdays": ["monday", "thursday"],
    "recurrence_month_days": "",
    "end_at_0": "2099-03-31",
    "end_at_1": "12:00:00",
    "once_per_profile": "on",
}


def test_the_admin_writes_and_reads_the_recurrence(admin_client):
    segment = SegmentFactory()
    form = admin_client.get(ADD).content.decode()
    for field in ("recurrence_every", "recurrence_at", "recurrence_weekdays", "once_per_profile"):
        assert f'name="{field}"' in form
    assert 'for="id_recurrence_at"' in form  # each field has its label

    response = admin_client.post(
        ADD,
        add_data(
            segment,
            [],
            name="Digest",
            kind="recurring",
            time_zone="Europe/Paris",
            **RECURRENCE_FORM,
        ),
    )
    assert response.status_code == 302, response.content

    campaign = Campaign.objects.get(name="Digest")
    version = campaign.draft_version
    assert version.recurrence == {
        "every": "week",
        "interval": 2,
        "at": "09:00",
        "weekdays": ["monday", "thursday"],
        "month_days": [],
    }
    assert version.once_per_profile is True
    assert version.end_at is not None
    page = admin_client.get(change_url(campaign))
    assert 'value="09:00"' in page.content.decode()
    form = page.context["adminform"].form
    assert form["recurrence_weekdays"].value() == ["monday", "thursday"]
    assert form["recurrence_interval"].value() == 2


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"recurrence_at": "9h"}, "recurrence_at", "A clock time as HH:MM"),
        ({"recurrence_weekdays": []}, "recurrence_weekdays", "at least one weekday"),
        ({"recurrence_month_days": "1, x"}, "recurrence_month_days", "numbers from 1 to 31"),
        (
            {"recurrence_every": "month", "recurrence_month_days": "32"},
            "recurrence_month_days",
            "from 1 to 31",
        ),
    ],
)
def test_the_admin_refuses_a_bad_recurrence_on_its_field(admin_client, fields, field, message):
    segment = SegmentFactory()
    data = add_data(segment, [], name="Digest", kind="recurring", **{**RECURRENCE_FORM, **fields})
    if not data["recurrence_weekdays"]:
        del data["recurrence_weekdays"]

    response = admin_client.post(ADD, data)

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert message in " ".join(errors[field]), errors
    assert not Campaign.objects.filter(name="Digest").exists()


def test_the_admin_shows_a_running_recurring_campaigns_next_runs(admin_client):
    campaign = make_live_campaign(
        kind=CampaignKind.RECURRING, recurrence=WEEKLY, time_zone="Europe/Paris"
    )

    page = admin_client.get(change_url(campaign)).content.decode()

    assert "every Monday at 09:00 (Europe/Paris)" in page
    assert "Next runs: Monday" in page
    listed = admin_client.get("/admin/campaigns/campaign/").content.decode()
    assert "Next run " in listed
