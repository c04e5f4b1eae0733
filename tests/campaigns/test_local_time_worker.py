"""A campaign sent at 09:00-ish in each recipient's own time zone, and quiet hours, with a
real worker process doing the activation, the planning and the sending. The test moves
the waiting rows' due times instead of waiting for hours; the worker's batches look again
every second (SALVO_DELIVERY_WAIT_MAX_S)."""

import datetime as dt
from collections import Counter

import pytest
from django.utils import timezone

from campaigns import delivery, selectors
from campaigns.choices import CampaignStatus, DeliveryReason, DeliveryStatus
from campaigns.models import Delivery, Execution
from tests.campaigns.delivery_support import (
    make_profile,
    received_delivery_ids,
    sent_delivery_ids,
    sinks_and_worker,
    wait_for_status,
)
from tests.campaigns.factories import activate_acknowledged, email_action, make_campaign, sms_action
from tests.channels.factories import MessagePresetFactory
from tests.conftest import wait_until

pytestmark = [pytest.mark.worker, pytest.mark.timeout(180)]

Status = CampaignStatus
ZONES = {
    "kiritimati": "Pacific/Kiritimati",
    "paris": "Europe/Paris",
    "los-angeles": "America/Los_Angeles",
    "nowhere": "",
}
LOOK_AGAIN_EVERY_SECOND = {"SALVO_DELIVERY_WAIT_MAX_S": "1"}


def sent_to(execution: Execution) -> set[str]:
    """The recipients sent every channel."""
    rows = Delivery.objects.filter(execution=execution, status=DeliveryStatus.SENT)
    sent = Counter(rows.values_list("profile__external_id", flat=True))
    return {name for name, channels in sent.items() if channels == 2}


def test_a_local_time_campaign_sends_zone_by_zone_each_once_and_completes(
    celery_process_factory,
):
    for name, zone in ZONES.items():
        make_profile(external_id=name, time_zone=zone)
    start = timezone.now() + dt.timedelta(hours=1)  # Paris's clock time, an hour from now
    with sinks_and_worker(celery_process_factory, env=LOOK_AGAIN_EVERY_SECOND) as (sink, _, _):
        campaign = make_campaign(
            actions=[email_action(), sms_action()],
            start_at=start,
            time_zone="Europe/Paris",
            in_recipient_time_zone=True,
        )
        activate_acknowledged(campaign=campaign)

        # Live at once: that clock time came in Kiritimati twelve hours ago.
        wait_for_status(campaign, Status.LIVE)
        wait_until(
            lambda: Execution.objects.filter(campaign=campaign, planning_done=True).exists(),
            timeout=60,
            message="the audience was never planned",
        )
        execution = Execution.objects.get(campaign=campaign)
        wait_until(
            lambda: sent_to(execution) == {"kiritimati"},
            timeout=60,
            message="Kiritimati's messages never went",
        )
        waiting = Delivery.objects.filter(execution=execution, status=DeliveryStatus.PENDING)
        assert set(waiting.values_list("reason", "attempts")) == {
            (DeliveryReason.RECIPIENT_TIME, 0)
        }
        assert waiting.count() == 6
        # Not a stall while it waits: ten minutes on, the stall check leaves it alone.
        later = timezone.now() + dt.timedelta(minutes=10)
        assert delivery.executions_resume_stalled(now=later) == []
        assert (
            selectors.campaign_report(campaign=campaign)["waiting"]["sms"][
                DeliveryReason.RECIPIENT_TIME
            ]["count"]
            == 3
        )

        # Paris's time comes (and the version zone's, for the profile with none).
        waiting.filter(profile__external_id__in=["paris", "nowhere"]).update(
            next_attempt_at=timezone.now()
        )
        wait_until(
            lambda: sent_to(execution) == {"kiritimati", "paris", "nowhere"},
            timeout=60,
            message="Paris's messages never went",
        )
        assert campaign.__class__.objects.get(pk=campaign.pk).status == Status.LIVE

        # Then Los Angeles's: the last zone, and the campaign completes.
        waiting.update(next_attempt_at=timezone.now())
        wait_for_status(campaign, Status.COMPLETED)

        sent = sent_delivery_ids(campaign)
        assert len(sent) == 8
        assert sorted(received_delivery_ids(sink)) == sent  # each exactly once
        assert set(Counter(received_delivery_ids(sink)).values()) == {1}
        assert set(
            Delivery.objects.filter(execution=execution).values_list("attempts", flat=True)
        ) == {1}


def test_quiet_hours_hold_a_marketing_delivery_then_the_worker_sends_it(celery_process_factory):
    make_profile(external_id="night-owl", time_zone="UTC")
    now = timezone.now().astimezone(dt.UTC)
    end = now + dt.timedelta(seconds=5)
    preset = MessagePresetFactory(
        channel="sms",
        quiet_hours_start=(now - dt.timedelta(hours=1)).time(),
        quiet_hours_end=end.time(),
    )
    with sinks_and_worker(celery_process_factory, env=LOOK_AGAIN_EVERY_SECOND) as (sink, _, _):
        campaign = make_campaign(actions=[sms_action(preset=preset)])
        activate_acknowledged(campaign=campaign)
        wait_for_status(campaign, Status.LIVE)
        wait_until(
            lambda: (
                Delivery.objects.filter(
                    execution__campaign=campaign, reason=DeliveryReason.QUIET_HOURS
                ).exists()
                or timezone.now() >= end
            ),
            timeout=60,
            message="the delivery was never held",
        )
        # A loaded machine may plan the row only after the quiet hours ended: then it goes
        # out at once, and only the sink's time below shows it was held until the end.
        held = wait_until(
            lambda: Delivery.objects.filter(execution__campaign=campaign).first(),
            timeout=60,
            message="the delivery was never planned",
        )
        if timezone.now() < end:
            assert held.status == DeliveryStatus.PENDING
            assert held.attempts == 0
            assert sink.received("sms") == []

        wait_for_status(campaign, Status.COMPLETED)

        assert sink.received("sms")[0]["at"] >= end.timestamp()
        assert len(sink.received("sms")) == 1
        held.refresh_from_db()
        assert (held.status, held.attempts) == (DeliveryStatus.SENT, 1)
