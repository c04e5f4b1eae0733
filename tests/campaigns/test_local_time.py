"""Sending in each recipient's local time, and quiet hours: the engine's services run in
the test process against the local sinks, on SQLite and PostgreSQL alike. The same with a
real worker process: test_local_time_worker.py."""

import datetime as dt
import zoneinfo
from collections import Counter
from collections.abc import Iterator

import pytest
from django.core.exceptions import ValidationError
from django.test import override_settings
from django.utils import timezone

from campaigns import delivery, selectors, services
from campaigns.choices import (
    CampaignStatus,
    CampaignType,
    DeliveryReason,
    DeliveryStatus,
    ExecutionStatus,
)
from campaigns.models import Delivery, Execution
from devtools.sinks import RunningSinks, running_sinks
from segments.models import Profile
from tests.campaigns.delivery_support import make_profile, plan, send_all
from tests.campaigns.factories import email_action, make_campaign, make_live_campaign, sms_action
from tests.channels.factories import MessagePresetFactory
from tests.conftest import wait_until

Status = CampaignStatus
UTC = dt.UTC
ZONES = {
    "kiritimati": "Pacific/Kiritimati",
    "paris": "Europe/Paris",
    "los-angeles": "America/Los_Angeles",
    "nowhere": "",
}

pytestmark = pytest.mark.django_db


@pytest.fixture
def sinks() -> Iterator[RunningSinks]:
    with running_sinks() as sink, override_settings(**sink.provider_settings()):
        yield sink


def profiles_in_three_zones() -> dict[str, Profile]:
    return {name: make_profile(external_id=name, time_zone=zone) for name, zone in ZONES.items()}


def due_times(execution: Execution, channel: str = "sms") -> dict[str, dt.datetime | None]:
    rows = Delivery.objects.filter(execution=execution, action__channel=channel)
    return dict(rows.values_list("profile__external_id", "next_attempt_at"))


def test_rows_are_planned_due_at_the_clock_time_in_each_recipients_zone_across_dst():
    profiles_in_three_zones()
    make_profile(external_id="unknown-zone", time_zone="Mars/Olympus_Mons")
    # 09:00 in Paris on 2027-03-28, the day Europe moves to summer time.
    start = dt.datetime(2027, 3, 28, 7, 0, tzinfo=UTC)
    campaign = make_live_campaign(
        actions=[sms_action()],
        start_at=start,
        time_zone="Europe/Paris",
        in_recipient_time_zone=True,
    )
    # Live when Kiritimati (UTC+14) reaches 09:00, not before.
    assert campaign.status == Status.SCHEDULED
    kiritimati_nine = dt.datetime(2027, 3, 27, 19, 0, tzinfo=UTC)
    assert services.campaigns_start_due(now=kiritimati_nine - dt.timedelta(seconds=1)) == []
    assert services.campaigns_start_due(now=kiritimati_nine) == [campaign.pk]

    execution = plan(campaign)

    assert execution.scheduled_for == start
    assert due_times(execution) == {
        "kiritimati": kiritimati_nine,
        "paris": dt.datetime(2027, 3, 28, 7, 0, tzinfo=UTC),
        "los-angeles": dt.datetime(2027, 3, 28, 16, 0, tzinfo=UTC),  # PDT, UTC-7
        "nowhere": dt.datetime(2027, 3, 28, 7, 0, tzinfo=UTC),  # the version's zone
        "unknown-zone": dt.datetime(2027, 3, 28, 7, 0, tzinfo=UTC),
    }
    rows = Delivery.objects.filter(execution=execution)
    assert set(rows.values_list("status", "reason", "attempts")) == {
        (DeliveryStatus.PENDING, DeliveryReason.RECIPIENT_TIME, 0)
    }


def test_due_rows_go_now_the_others_when_their_time_comes_each_once(sinks):
    people = profiles_in_three_zones()
    start = (timezone.now() + dt.timedelta(hours=1)).replace(microsecond=0)
    campaign = make_live_campaign(
        actions=[email_action(), sms_action()],
        start_at=start,
        time_zone="Europe/Paris",
        in_recipient_time_zone=True,
    )
    assert campaign.status == Status.LIVE  # 09:00-ish has long come in Kiritimati
    execution = plan(campaign)
    wall = start.astimezone(dt.timezone(dt.timedelta(hours=1))).replace(tzinfo=None)  # Paris
    los_angeles = wall.replace(tzinfo=dt.timezone(dt.timedelta(hours=-8))).astimezone(UTC)
    assert due_times(execution) == {
        "kiritimati": None,  # passed at planning: due at once
        "paris": start,
        "los-angeles": los_angeles,
        "nowhere": start,
    }

    waits = send_all(execution)

    assert sorted(r["to"] for r in sinks.received("sms")) == [people["kiritimati"].phone]
    assert len(sinks.received("email")) == 1
    assert all(0 < wait <= 900 for wait in waits if wait is not None)
    waiting = Delivery.objects.filter(execution=execution, status=DeliveryStatus.PENDING)
    assert set(waiting.values_list("reason", "attempts")) == {(DeliveryReason.RECIPIENT_TIME, 0)}
    report = selectors.campaign_report(campaign=campaign)
    assert report["waiting"] == {
        channel: {DeliveryReason.RECIPIENT_TIME: {"count": 3, "until": los_angeles}}
        for channel in ("email", "sms")
    }
    # Waiting is not stalling: the scheduler's stall check leaves it alone.
    later = timezone.now() + dt.timedelta(minutes=10)
    assert delivery.executions_resume_stalled(now=later) == []
    execution.refresh_from_db()
    assert execution.waiting_until == start
    assert not selectors.stalled_executions(now=later).filter(pk=execution.pk).exists()

    # Paris's time (and the version zone's) comes.
    waiting.filter(next_attempt_at=start).update(next_attempt_at=timezone.now())
    send_all(execution)
    assert len(sinks.received("sms")) == 3
    assert Status(services.Campaign.objects.get(pk=campaign.pk).status) == Status.LIVE

    # Then Los Angeles's: the last zone completes the campaign.
    waiting.update(next_attempt_at=timezone.now())
    send_all(execution)
    delivery.execution_complete_if_done(execution_id=execution.pk)

    campaign.refresh_from_db()
    assert campaign.status == Status.COMPLETED
    sent = Delivery.objects.filter(execution=execution)
    assert set(sent.values_list("status", "attempts", "reason")) == {(DeliveryStatus.SENT, 1, "")}
    ids = Counter(str(r["delivery_id"]) for r in sinks.received())
    assert sorted(ids) == sorted(str(pk) for pk in sent.values_list("pk", flat=True))
    assert set(ids.values()) == {1}
    assert selectors.campaign_report(campaign=campaign)["waiting"] == {}


def test_stop_halts_the_rows_still_waiting(sinks):
    profiles_in_three_zones()
    start = timezone.now() + dt.timedelta(hours=1)
    campaign = make_live_campaign(
        actions=[sms_action()],
        start_at=start,
        time_zone="Europe/Paris",
        in_recipient_time_zone=True,
    )
    execution = plan(campaign)
    send_all(execution)
    services.campaign_stop(campaign=campaign, user=None)

    Delivery.objects.filter(execution=execution).update(next_attempt_at=timezone.now())
    send_all(execution)

    assert len(sinks.received("sms")) == 1  # Kiritimati's, before the stop
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.HALTED
    assert Delivery.objects.filter(execution=execution, status=DeliveryStatus.PENDING).count() == 3


def quiet_until_seconds_from_now(seconds: float, zone: str = "UTC") -> dict[str, dt.time]:
    """Quiet hours, in `zone`'s clock times, that began an hour ago and end `seconds` from
    now."""
    now = timezone.now().astimezone(zoneinfo.ZoneInfo(zone))
    return {
        "quiet_hours_start": (now - dt.timedelta(hours=1)).time(),
        "quiet_hours_end": (now + dt.timedelta(seconds=seconds)).time(),
    }


def test_quiet_hours_hold_a_marketing_delivery_until_they_end_then_send_it(sinks):
    # Read in the recipient's zone, not the schedule's (the site's, UTC here).
    tokyo = zoneinfo.ZoneInfo("Asia/Tokyo")
    profile = make_profile(external_id="night-owl", time_zone="Asia/Tokyo")
    quiet = quiet_until_seconds_from_now(3, zone="Asia/Tokyo")
    preset = MessagePresetFactory(channel="sms", **quiet)
    campaign = make_live_campaign(actions=[sms_action(preset=preset)])
    execution = plan(campaign)

    (wait,) = send_all(execution)

    row = Delivery.objects.get(execution=execution)
    assert (row.status, row.reason, row.attempts) == (
        DeliveryStatus.PENDING,
        DeliveryReason.QUIET_HOURS,
        0,
    )
    today = timezone.now().astimezone(tokyo).date()
    end = dt.datetime.combine(today, quiet["quiet_hours_end"], tokyo).astimezone(UTC)
    if end < timezone.now() - dt.timedelta(hours=1):
        end += dt.timedelta(days=1)  # the test began just before midnight in Tokyo
    assert row.next_attempt_at == end
    assert "Quiet hours" in row.error
    assert wait is not None
    assert wait <= 4
    assert sinks.received("sms") == []
    assert selectors.campaign_report(campaign=campaign)["waiting"] == {
        "sms": {DeliveryReason.QUIET_HOURS: {"count": 1, "until": end}}
    }

    wait_until(lambda: timezone.now() >= end, timeout=30, message="the quiet hours never ended")
    send_all(execution)

    row.refresh_from_db()
    assert (row.status, row.attempts, row.reason) == (DeliveryStatus.SENT, 1, "")
    assert [r["to"] for r in sinks.received("sms")] == [profile.phone]


def test_a_transactional_campaign_ignores_quiet_hours(sinks):
    make_profile(external_id="night-owl", time_zone="UTC")
    preset = MessagePresetFactory(channel="sms", **quiet_until_seconds_from_now(3600))
    campaign = make_live_campaign(
        type=CampaignType.TRANSACTIONAL, actions=[sms_action(preset=preset)]
    )
    execution = plan(campaign)

    send_all(execution)

    assert Delivery.objects.get(execution=execution).status == DeliveryStatus.SENT
    assert len(sinks.received("sms")) == 1


def test_a_versions_quiet_hours_replace_the_presets(sinks):
    make_profile(external_id="night-owl", time_zone="UTC")
    preset = MessagePresetFactory(channel="sms", **quiet_until_seconds_from_now(3600))
    # The version's quiet hours are twelve hours away from now.
    far = timezone.now().astimezone(UTC) + dt.timedelta(hours=12)
    campaign = make_live_campaign(
        actions=[sms_action(preset=preset)],
        quiet_hours_start=far.time(),
        quiet_hours_end=(far + dt.timedelta(hours=1)).time(),
    )
    execution = plan(campaign)

    send_all(execution)

    assert Delivery.objects.get(execution=execution).status == DeliveryStatus.SENT


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"in_recipient_time_zone": True}, "in_recipient_time_zone", "needs a start"),
        (
            {"in_recipient_time_zone": True, "kind": "api_triggered"},
            "in_recipient_time_zone",
            "when it is triggered",
        ),
        ({"quiet_hours_start": dt.time(21)}, "quiet_hours_end", "both a start and an end"),
        ({"quiet_hours_end": dt.time(8)}, "quiet_hours_start", "both a start and an end"),
        (
            {"quiet_hours_start": dt.time(8), "quiet_hours_end": dt.time(8)},
            "quiet_hours_end",
            "another time",
        ),
    ],
)
def test_the_services_refuse_bad_timing_on_its_field(fields, field, words):
    with pytest.raises(ValidationError) as error:
        make_campaign(**fields)

    assert words in " ".join(error.value.message_dict[field])
