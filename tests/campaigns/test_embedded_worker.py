"""Activation and scheduling through real Celery worker and beat processes.

Runs on whichever profile the environment selects: SQLite + the filesystem broker by
default, PostgreSQL + Redis with the variables printed by `make services`.
"""

import datetime as dt
from collections.abc import Callable

import pytest
from django.db import transaction
from django.utils import timezone

from campaigns.choices import CampaignStatus
from campaigns.models import Campaign, CampaignVersion, ChannelAction
from tests.campaigns.delivery_support import wait_for_status
from tests.campaigns.factories import activate_acknowledged, make_campaign
from tests.conftest import CeleryProcess, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.timeout(120)]

Status = CampaignStatus


def _reached(campaign: Campaign, status: str) -> bool:
    """The transition log shows the campaign entered `status` (it may have moved on since:
    a Live campaign with an empty audience completes at once once delivery exists)."""
    return campaign.transitions.filter(target=status).exists()


def test_activate_now_goes_live_through_the_worker(celery_worker_process: CeleryProcess):
    campaign = make_campaign()

    activating = activate_acknowledged(campaign=campaign)

    assert activating.status == Status.ACTIVATING
    wait_until(lambda: _reached(campaign, Status.LIVE), message="campaign never went Live")
    campaign.refresh_from_db()
    assert campaign.activation_error == ""
    assert campaign.started_at is not None
    assert campaign.live_version is not None
    assert campaign.live_version.activated_at is not None
    assert campaign.draft_version is None


def test_scheduled_campaign_goes_live_at_its_start_time(
    celery_process_factory: Callable[..., CeleryProcess],
):
    celery_process_factory("worker")
    # Far enough ahead that no worker, however slow, activates it after its start time.
    campaign = make_campaign(start_at=timezone.now() + dt.timedelta(hours=1))

    activate_acknowledged(campaign=campaign)

    wait_until(lambda: _reached(campaign, Status.SCHEDULED), message="never Scheduled")
    assert not _reached(campaign, Status.LIVE)
    # The hour passes: the start time comes two seconds from now, and the scheduler (beat)
    # starts the campaign by itself once it has come.
    campaign.refresh_from_db()
    start_at = timezone.now() + dt.timedelta(seconds=2)
    version = CampaignVersion.objects.filter(pk=campaign.live_version_id)
    assert version.update(start_at=start_at) == 1
    celery_process_factory("beat", extra_env={"SALVO_SCHEDULER_INTERVAL_S": "0.5"})
    wait_until(
        lambda: _reached(campaign, Status.LIVE), timeout=60, message="never went Live by itself"
    )
    started = campaign.transitions.get(target=Status.LIVE)
    assert started.name == "start"
    assert started.at >= start_at
    campaign.refresh_from_db()
    assert campaign.started_at is not None
    assert campaign.started_at >= start_at


def test_activation_that_fails_its_recheck_returns_to_draft_with_the_reason(
    celery_worker_process: CeleryProcess,
):
    campaign = make_campaign()

    # The task runs once this transaction commits, so it sees a version without actions.
    with transaction.atomic():
        activate_acknowledged(campaign=campaign)
        ChannelAction.objects.filter(version__campaign=campaign).delete()

    wait_for_status(campaign, Status.DRAFT)
    campaign.refresh_from_db()
    assert "Add at least one channel action." in campaign.activation_error
    assert campaign.live_version is None
    assert campaign.draft_version is not None
    failed = campaign.transitions.get(name="activation_fail")
    assert (failed.source, failed.target) == (Status.ACTIVATING, Status.DRAFT)
    assert "channel action" in failed.reason
