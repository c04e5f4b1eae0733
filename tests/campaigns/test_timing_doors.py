"""Local time and quiet hours at every door: the API, the admin and the command read and
write the same fields, refuse the same bad input on its field, and show what still waits."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from campaigns.choices import DeliveryReason
from campaigns.models import Campaign
from channels.models import MessagePreset
from devtools.sinks import RunningSinks, running_sinks
from tests.campaigns.delivery_support import make_profile, plan, send_all
from tests.campaigns.doors import ADD, add_data, change_data, change_url, create_payload
from tests.campaigns.factories import make_live_campaign, sms_action
from tests.channels.doors import preset_data
from tests.segments.factories import SegmentFactory

pytestmark = pytest.mark.django_db

PRESET_ADD = reverse("admin:channels_messagepreset_add")


@pytest.fixture
def sinks() -> Iterator[RunningSinks]:
    with running_sinks() as sink, override_settings(**sink.provider_settings()):
        yield sink


def a_day_ahead() -> dt.datetime:
    return (timezone.now() + dt.timedelta(days=1)).replace(microsecond=0)


# --- the API ---------------------------------------------------------------------------


def test_the_api_writes_and_reads_local_time_and_quiet_hours(api_client):
    schedule = {
        "start_at": a_day_ahead().isoformat(),
        "time_zone": "Europe/Paris",
        "in_recipient_time_zone": True,
        "quiet_hours_start": "21:00",
        "quiet_hours_end": "08:00",
    }
    made = api_client.post("/api/campaigns/", create_payload(schedule=schedule), format="json")
    assert made.status_code == 201, made.content

    url = f"/api/campaigns/{made.json()['id']}/"
    shown = api_client.get(url).json()["draft_version"]["schedule"]
    assert shown["in_recipient_time_zone"] is True
    assert (shown["quiet_hours_start"], shown["quiet_hours_end"]) == ("21:00", "08:00")

    changed = api_client.patch(
        url,
        {"schedule": {"quiet_hours_start": None, "quiet_hours_end": None}},
        format="json",
    )
    assert changed.status_code == 200, changed.content
    shown = api_client.get(url).json()["draft_version"]["schedule"]
    assert "quiet_hours_start" not in shown  # cleared: shown only when set
    assert shown["in_recipient_time_zone"] is True
    review = api_client.get(f"{url}review/").json()
    assert "in each recipient's time zone" in review["schedule"]["timing"][0]


@pytest.mark.parametrize(
    ("schedule", "field"),
    [
        ({"start_at": None, "in_recipient_time_zone": True}, "in_recipient_time_zone"),
        ({"start_at": None, "quiet_hours_start": "21:00"}, "quiet_hours_end"),
        ({"start_at": None, "quiet_hours_start": "25:00", "quiet_hours_end": "08:00"}, None),
    ],
)
def test_the_api_refuses_bad_timing_on_its_field(api_client, schedule, field):
    response = api_client.post("/api/campaigns/", create_payload(schedule=schedule), format="json")

    assert response.status_code == 400
    body = response.json()
    if field is None:  # not a time at all: the schedule's own field says so
        assert "quiet_hours_start" in body["schedule"]
    else:
        assert field in body
    assert not Campaign.objects.exists()


def test_the_api_writes_reads_and_refuses_a_presets_quiet_hours(api_client):
    data = {"name": "Night SMS", "channel": "sms", "sms_sender_id": "SHOP"}
    made = api_client.post(
        "/api/presets/",
        {**data, "quiet_hours_start": "21:00", "quiet_hours_end": "08:00"},
        format="json",
    )
    assert made.status_code == 201, made.content
    assert (made.json()["quiet_hours_start"], made.json()["quiet_hours_end"]) == ("21:00", "08:00")

    half = api_client.post(
        "/api/presets/", {**data, "name": "Half", "quiet_hours_end": "08:00"}, format="json"
    )
    assert half.status_code == 400
    assert "quiet_hours_start" in half.json()
    assert not MessagePreset.objects.filter(name="Half").exists()


def waiting_campaign() -> Campaign:
    """A Live local-time SMS campaign: Kiritimati's message sent, Paris's and Los
    Angeles's waiting."""
    for name, zone in [("k", "Pacific/Kiritimati"), ("p", "Europe/Paris"), ("l", "US/Pacific")]:
        make_profile(external_id=name, time_zone=zone)
    campaign = make_live_campaign(
        actions=[sms_action()],
        start_at=timezone.now() + dt.timedelta(hours=1),
        time_zone="Europe/Paris",
        in_recipient_time_zone=True,
    )
    send_all(plan(campaign))
    return campaign


def test_the_api_report_says_what_waits_and_until_when(api_client, sinks):
    campaign = waiting_campaign()

    report = api_client.get(f"/api/campaigns/{campaign.pk}/report/").json()

    waiting = report["waiting"]["sms"][DeliveryReason.RECIPIENT_TIME]
    assert waiting["count"] == 2
    until = dt.datetime.fromisoformat(waiting["until"])
    assert timezone.now() + dt.timedelta(hours=9) < until < timezone.now() + dt.timedelta(hours=11)
    assert report["by_status"]["pending"] == 2


# --- the admin -------------------------------------------------------------------------


def test_the_admin_writes_and_reads_local_time_and_quiet_hours(admin_client):
    segment = SegmentFactory()
    start = timezone.localtime(a_day_ahead())
    response = admin_client.post(
        ADD,
        add_data(
            segment,
            [],
            name="Morning",
            start_at_0=start.strftime("%Y-%m-%d"),
            start_at_1="09:00:00",
            in_recipient_time_zone="on",
            quiet_hours_start="21:00",
            quiet_hours_end="08:00",
        ),
    )
    assert response.status_code == 302, response.content

    campaign = Campaign.objects.get(name="Morning")
    version = campaign.draft_version
    assert version.in_recipient_time_zone
    assert (version.quiet_hours_start, version.quiet_hours_end) == (dt.time(21), dt.time(8))
    page = admin_client.get(change_url(campaign)).content.decode()
    assert 'id="id_in_recipient_time_zone" checked' in page
    assert 'value="21:00:00"' in page
    # Saved again as the page shows it, nothing changes.
    admin_client.post(
        change_url(campaign),
        change_data(
            campaign,
            in_recipient_time_zone="on",
            quiet_hours_start="21:00:00",
            quiet_hours_end="08:00:00",
        ),
    )
    version.refresh_from_db()
    assert version.in_recipient_time_zone


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"in_recipient_time_zone": "on"}, "in_recipient_time_zone"),
        ({"quiet_hours_start": "21:00"}, "quiet_hours_end"),
        ({"quiet_hours_start": "8:00", "quiet_hours_end": "08:00"}, "quiet_hours_end"),
    ],
)
def test_the_admin_refuses_bad_timing_on_its_field(admin_client, fields, field):
    response = admin_client.post(ADD, add_data(SegmentFactory(), [], name="Bad", **fields))

    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    assert not Campaign.objects.filter(name="Bad").exists()


def test_the_admin_sets_and_refuses_a_presets_quiet_hours(admin_client):
    sms = {"channel": "sms", "sms_sender_id": "SHOP"}
    half = admin_client.post(PRESET_ADD, preset_data(name="Half", quiet_hours_start="21:00", **sms))
    assert half.status_code == 200
    assert "quiet_hours_end" in half.context["adminform"].form.errors

    whole = admin_client.post(
        PRESET_ADD,
        preset_data(name="Night", quiet_hours_start="21:00", quiet_hours_end="08:00", **sms),
    )
    assert whole.status_code == 302, whole.content
    preset = MessagePreset.objects.get(name="Night")
    assert (preset.quiet_hours_start, preset.quiet_hours_end) == (dt.time(21), dt.time(8))


def test_the_admin_report_shows_what_waits(admin_client, sinks):
    campaign = waiting_campaign()

    page = admin_client.get(change_url(campaign)).content.decode()

    assert "Still waiting" in page
    assert 'data-reason="recipient_time"' in page


# --- the command -----------------------------------------------------------------------


def test_the_command_shows_the_timing_and_what_waits(capsys, sinks):
    campaign = waiting_campaign()

    call_command("campaign", "show", str(campaign.pk))
    shown = capsys.readouterr().out
    assert "timing:   Sent at" in shown
    assert "in each recipient's time zone (Europe/Paris for profiles without one)" in shown

    call_command("campaign", "report", str(campaign.pk))
    report = capsys.readouterr().out
    assert "sms waiting: 2 (waiting for the recipient's local time), the last until" in report
