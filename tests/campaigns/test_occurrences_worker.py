"""A recurring campaign run by the real scheduler (beat) and worker processes, through
days of occurrences in seconds: both follow the test's clock (SALVO_TEST_CLOCK_FILE, see
campaigns.clock), which the test moves on instead of sleeping.

Runs on whichever profile the environment selects (SQLite + the embedded broker, or
PostgreSQL + Redis)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from django.utils import timezone

from campaigns import services
from campaigns.choices import CampaignKind, CampaignStatus, ExecutionStatus
from campaigns.clock import clock_set
from campaigns.models import Campaign, Execution
from tests.campaigns.delivery_support import sinks_and_worker, wait_for_status
from tests.campaigns.factories import activate_acknowledged, make_campaign, sms_action
from tests.conftest import wait_until
from tests.segments.factories import ProfileFactory, SegmentFactory

pytestmark = [pytest.mark.worker, pytest.mark.timeout(300)]

DAY = dt.timedelta(days=1)
GRACE = dt.timedelta(hours=1)


def move_clock(path: Path, to: dt.datetime) -> None:
    """The scheduler's and the worker's clock now read `to` (and run on from there)."""
    clock_set(path, ahead=to - timezone.now())


def next_run(campaign: Campaign) -> dt.datetime | None:
    return Campaign.objects.values_list("next_run_at", flat=True).get(pk=campaign.pk)


def execution_for(campaign: Campaign, moment: dt.datetime) -> Execution | None:
    return Execution.objects.filter(campaign=campaign, scheduled_for=moment).first()


def wait_for_execution(campaign: Campaign, moment: dt.datetime, status: str) -> Execution:
    wait_until(
        lambda: (found := execution_for(campaign, moment)) is not None and found.status == status,
        timeout=120,
        interval=0.2,
        message=f"the occurrence of {moment} never became {status}",
    )
    found = execution_for(campaign, moment)
    assert found is not None
    return found


def recurring_campaign(name: str, body: str) -> Campaign:
    campaign = make_campaign(
        name=name,
        kind=CampaignKind.RECURRING,
        segment=SegmentFactory(rules={"all": []}),
        actions=[sms_action(body=body)],
        time_zone="UTC",
        recurrence={"every": "day", "at": "12:00"},
    )
    activate_acknowledged(campaign=campaign)
    wait_until(
        lambda: next_run(campaign) is not None,
        timeout=120,
        interval=0.2,
        message=f"{name} never got its next occurrence",
    )
    return campaign


def test_occurrences_missed_modified_and_stopped(celery_process_factory, tmp_path, settings):
    clock = tmp_path / "clock"
    move_clock(clock, timezone.now())
    settings.SALVO_TEST_CLOCK_FILE = str(clock)
    profiles = ProfileFactory.create_batch(3)
    phones = sorted(p.phone for p in profiles)
    env = {
        "DJANGO_DEBUG": "1",
        "SALVO_TEST_CLOCK_FILE": str(clock),
        "SALVO_RECURRENCE_GRACE_S": str(GRACE.total_seconds()),
    }
    with sinks_and_worker(celery_process_factory, env=env, beat=True) as (sink, _, _):
        campaign = recurring_campaign("Daily news", "First edition")
        assert Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.LIVE
        first = next_run(campaign)
        assert first is not None
        assert not Execution.objects.filter(campaign=campaign).exists()

        # 1. The first occurrence comes: each profile gets the first edition.
        move_clock(clock, first + dt.timedelta(seconds=5))
        wait_for_execution(campaign, first, ExecutionStatus.COMPLETED)
        sink.wait_for(3, channel="sms", timeout=120)

        # 2. The scheduler was "down" two hours past the next one: recorded skipped.
        second = first + DAY
        move_clock(clock, second + 2 * GRACE)
        skipped = wait_for_execution(campaign, second, ExecutionStatus.SKIPPED)
        assert "SALVO_RECURRENCE_GRACE_S" in skipped.error
        wait_until(
            lambda: next_run(campaign) == second + DAY,
            timeout=60,
            interval=0.2,
            message="the next occurrence never moved on",
        )

        # 3. A modification between two occurrences: the next one sends the new content.
        services.campaign_modify(campaign=campaign, user=None)
        services.campaign_update(
            campaign=campaign, user=None, data={"actions": [sms_action(body="Second edition")]}
        )
        activate_acknowledged(campaign=campaign)
        wait_until(
            lambda: Campaign.objects.get(pk=campaign.pk).live_version.number == 2,
            timeout=120,
            interval=0.2,
            message="version 2 never went Live",
        )
        third = second + DAY
        assert next_run(campaign) == third
        move_clock(clock, third + dt.timedelta(minutes=10))  # late, within the grace
        ran = wait_for_execution(campaign, third, ExecutionStatus.COMPLETED)
        assert ran.version.number == 2
        sink.wait_for(6, channel="sms", timeout=120)

        # 4. A stop: nothing more. Another campaign's occurrence at the same moment shows
        # the scheduler went past it.
        services.campaign_stop(campaign=campaign, user=None)
        witness = recurring_campaign("Witness", "Still here")
        fourth = third + DAY
        assert next_run(witness) == fourth
        move_clock(clock, fourth + dt.timedelta(seconds=5))
        wait_for_execution(witness, fourth, ExecutionStatus.COMPLETED)
        sink.wait_for(9, channel="sms", timeout=120)
        texts = sink.received("sms")

    assert execution_for(campaign, fourth) is None
    runs = Execution.objects.filter(campaign=campaign).order_by("scheduled_for")
    assert [(e.scheduled_for, e.status) for e in runs] == [
        (first, ExecutionStatus.COMPLETED),
        (second, ExecutionStatus.SKIPPED),
        (third, ExecutionStatus.COMPLETED),
    ]
    by_text: dict[str, list[str]] = {}
    for message in texts:
        by_text.setdefault(message["json"]["text"], []).append(message["to"])
    assert {text: sorted(to) for text, to in by_text.items()} == {
        "First edition": phones,
        "Second edition": phones,
        "Still here": phones,
    }
    wait_for_status(campaign, CampaignStatus.STOPPED, timeout=5)
