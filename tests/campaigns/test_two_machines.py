"""Scale-out shown: two worker "machines" (separate worker processes with their own
hostnames, each taking both queues) and two schedulers (beat) at once, on PostgreSQL and
Redis, run a campaign activated now and a scheduled one: each starts once, completes once,
and every message goes out once, while both workers share the batches."""

import datetime as dt
import re

import pytest
from django.utils import timezone

from campaigns.choices import CampaignStatus, DeliveryStatus
from campaigns.models import CampaignVersion, Delivery, Execution
from devtools.sinks import running_sinks
from tests.campaigns.delivery_support import SMALL_BATCHES, wait_for_status
from tests.campaigns.factories import activate_acknowledged, email_action, make_campaign, sms_action
from tests.segments.factories import ProfileFactory

pytestmark = [pytest.mark.postgres, pytest.mark.worker, pytest.mark.timeout(300)]

Status = CampaignStatus
BATCH_SENT = re.compile(r"Task campaigns\.tasks\.delivery_batch_task\[[0-9a-f-]+\] succeeded")


def test_two_workers_and_two_schedulers_start_and_send_everything_once(celery_process_factory):
    ProfileFactory.create_batch(200)
    env = {**SMALL_BATCHES, "SALVO_DELIVERY_BATCH_SIZE": "20", "SALVO_DELIVERY_WINDOW": "4"}
    with running_sinks() as sink:
        env = {**sink.provider_env(), **env}
        workers = [
            celery_process_factory("worker", "-Q", "control,delivery", extra_env=env)
            for _ in range(2)
        ]
        # Debug, so that each scheduler's log shows the ticks it sent.
        fast_ticks = {**env, "SALVO_SCHEDULER_INTERVAL_S": "0.5"}
        beats = [
            celery_process_factory("beat", "--loglevel", "debug", extra_env=fast_ticks)
            for _ in range(2)
        ]
        now_campaign = make_campaign(actions=[email_action(), sms_action()])
        scheduled = make_campaign(
            actions=[email_action(), sms_action()],
            start_at=timezone.now() + dt.timedelta(hours=1),
        )
        activate_acknowledged(campaign=scheduled)
        wait_for_status(scheduled, Status.SCHEDULED)
        scheduled.refresh_from_db()
        # Its start time comes while both schedulers tick.
        assert CampaignVersion.objects.filter(pk=scheduled.live_version_id).update(
            start_at=timezone.now() + dt.timedelta(seconds=2)
        )
        activate_acknowledged(campaign=now_campaign)

        wait_for_status(now_campaign, Status.COMPLETED, timeout=180)
        wait_for_status(scheduled, Status.COMPLETED, timeout=180)

        for beat in beats:
            assert "Sending due task campaigns-scheduler-tick" in beat.log()
        batches_by_worker = [len(BATCH_SENT.findall(worker.log())) for worker in workers]
        assert all(batches_by_worker), f"a worker took no batch: {batches_by_worker}"
        assert sink.duplicates() == 0
        received = sorted(str(r["delivery_id"]) for r in sink.received())
        logs = "".join(worker.log() for worker in workers)
    assert "made no progress" not in logs  # nothing was resumed, by either scheduler

    rows = Delivery.objects.filter(execution__campaign__in=[now_campaign, scheduled])
    assert rows.count() == 2 * 2 * 200
    assert set(rows.values_list("status", "attempts").distinct()) == {(DeliveryStatus.SENT, 1)}
    assert received == sorted(str(pk) for pk in rows.values_list("pk", flat=True))
    for campaign in (now_campaign, scheduled):
        assert Execution.objects.filter(campaign=campaign).count() == 1
        # Each status entered once: never started, gone Live or completed twice.
        entered = list(campaign.transitions.values_list("target", flat=True))
        assert len(entered) == len(set(entered)), entered
        assert Status.LIVE in entered
        assert Status.COMPLETED in entered
    assert scheduled.transitions.filter(name="start").count() == 1
