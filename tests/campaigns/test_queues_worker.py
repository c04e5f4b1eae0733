"""Celery's queues and time limits with real worker processes: control work (activation,
planning, the scheduler's tick) never waits behind delivery batches, and a batch at its soft
time limit hands the rest of its work back instead of being cut mid-chunk.

Runs on whichever profile the environment selects (filesystem broker or Redis).
"""

from collections import Counter

import pytest

from campaigns.choices import CampaignStatus, DeliveryStatus
from campaigns.models import Campaign, Delivery, Execution
from config.metrics import queue_depths, scheduler_last_tick
from devtools.sinks import running_sinks
from tests.campaigns.delivery_support import SMALL_BATCHES, campaign_status, wait_for_status
from tests.campaigns.factories import activate_acknowledged, make_campaign, webhook_action
from tests.channels.factories import MessagePresetFactory
from tests.conftest import wait_until
from tests.segments.factories import ProfileFactory

pytestmark = [pytest.mark.worker, pytest.mark.timeout(180)]

Status = CampaignStatus


def wait_until_planned(campaign: Campaign) -> None:
    wait_until(
        lambda: Execution.objects.filter(campaign=campaign, planning_done=True).exists(),
        timeout=60,
        message="the control worker never activated and planned the campaign",
    )


def test_a_delivery_backlog_never_delays_an_activation_nor_the_next_campaigns_first_batch(
    celery_process_factory,
):
    ProfileFactory.create_batch(60)
    # Every batch queued at once (no window): the first batch of 10 in the first batches'
    # queue, 5 more of 10 in the delivery queue.
    env = {**SMALL_BATCHES, "SALVO_DELIVERY_WINDOW": "100"}
    with running_sinks() as sink:
        env = {**sink.provider_env(), **env}
        hook = MessagePresetFactory(channel="webhook", webhook_url=sink.webhook_url)
        celery_process_factory("worker", "-Q", "control", extra_env=env)
        first = make_campaign(actions=[webhook_action(preset=hook)])
        activate_acknowledged(campaign=first)
        wait_until_planned(first)
        wait_until(
            lambda: queue_depths() == {"control": 0, "delivery_first": 1, "delivery": 5},
            message="batches not queued",
        )
        assert campaign_status(first) == Status.LIVE

        # The backlog stays where it is, and the next campaign activates and plans anyway.
        second = make_campaign(actions=[webhook_action(preset=hook)])
        activate_acknowledged(campaign=second)
        wait_until_planned(second)  # not waiting behind the first one's batches
        # Planning hands out the last batches just after it marks itself done.
        wait_until(
            lambda: queue_depths() == {"control": 0, "delivery_first": 2, "delivery": 10},
            message="the second campaign's batches not queued",
        )
        assert sink.received() == []

        # One process, started as before the first batches had a queue: it takes that
        # queue too, and first: the second campaign's first messages go out before the
        # first campaign's backlog.
        celery_process_factory("worker", "-Q", "delivery", "--concurrency", "1", extra_env=env)
        wait_for_status(first, Status.COMPLETED)
        wait_for_status(second, Status.COMPLETED)
        assert sink.duplicates() == 0
        received = sorted(sink.received("webhook"), key=lambda record: record["at"])
        assert len(received) == 120
        campaign_of = dict(Delivery.objects.values_list("pk", "execution__campaign_id").iterator())
        in_turn = [campaign_of[int(record["delivery_id"])] for record in received]
        assert in_turn[:20] == [first.pk] * 10 + [second.pk] * 10
        assert Counter(in_turn[20:]) == {first.pk: 50, second.pk: 50}


def test_a_batch_at_its_soft_time_limit_hands_back_the_rest_and_sends_nothing_twice(
    celery_process_factory,
):
    audience = 800
    # Batches of 400 webhooks at 5 ms each outlast a 1 s soft limit several times over.
    env = {
        "SALVO_DELIVERY_BATCH_SIZE": "400",
        "SALVO_DELIVERY_WINDOW": "2",
        "SALVO_DELIVERY_SEND_CHUNK": "50",
        "SALVO_DELIVERY_TASK_SOFT_LIMIT_S": "1",
        "SALVO_DELIVERY_TASK_HARD_LIMIT_S": "60",
    }
    ProfileFactory.create_batch(audience)
    with running_sinks(slow="webhook", slow_s=0.005) as sink:
        worker = celery_process_factory("worker", extra_env={**sink.provider_env(), **env})
        hook = MessagePresetFactory(channel="webhook", webhook_url=sink.webhook_url)
        campaign = make_campaign(actions=[webhook_action(preset=hook)])
        activate_acknowledged(campaign=campaign)

        wait_for_status(campaign, Status.COMPLETED, timeout=150)

        log = worker.log()
        assert "campaigns.tasks.delivery_batch_task reached its soft time limit (1 s)" in log
        assert "SoftTimeLimitExceeded" not in log
        assert "ERROR" not in log
        receptions = Counter(r["delivery_id"] for r in sink.attempts("webhook") if r["accepted"])
    assert len(receptions) == audience
    assert [key for key, times in receptions.items() if times > 1] == []
    rows = Delivery.objects.filter(execution__campaign=campaign)
    assert set(rows.values_list("status", "attempts").distinct()) == {(DeliveryStatus.SENT, 1)}


def test_the_schedulers_routine_ticks_log_nothing_at_info(celery_process_factory):
    worker = celery_process_factory("worker")
    beat = celery_process_factory("beat", extra_env={"SALVO_SCHEDULER_INTERVAL_S": "0.5"})
    first = wait_until(lambda: scheduler_last_tick() or 0.0, message="no scheduler tick ran")
    wait_until(lambda: (scheduler_last_tick() or 0.0) > first, message="only one tick ran")

    assert "Sending due task" not in beat.log()
    assert "Task campaigns.tasks.scheduler_tick[" not in worker.log()  # received, succeeded
    assert "beat: Starting..." in beat.log()  # beat's other lines still show at INFO
