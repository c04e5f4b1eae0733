"""Recovery paths of the delivery engine: retries and their back-off, giving up, a profile
gone mid-run, the dispatch window, and (through real worker processes) lost task messages,
lost activations and two copies of one batch at once.

Time is driven explicitly: a retry's due time is checked against the moment of the
failure and the policy's settings, and "later" is made by moving that due time into the
past, never by sleeping through a back-off.
"""

import datetime as dt
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import factory
import pytest
from django.test import override_settings
from django.utils import timezone

from campaigns import delivery, selectors, services
from campaigns.choices import CampaignStatus, DeliveryStatus, ExecutionStatus
from campaigns.models import Campaign, ChannelAction, Delivery, Execution
from campaigns.tasks import delivery_batch_task
from config.celery import app as celery_app
from devtools.sinks import RunningSinks, running_sinks
from segments.models import Profile
from tests.campaigns.delivery_support import (
    campaign_status,
    expected_report,
    make_profile,
    plan,
    received_delivery_ids,
    send_all,
    sent_delivery_ids,
    sinks_and_worker,
    time_passes,
    wait_for_status,
)
from tests.campaigns.factories import (
    activate_acknowledged,
    email_action,
    make_campaign,
    make_live_campaign,
    sms_action,
)
from tests.conftest import wait_until
from tests.segments.factories import ProfileFactory

Status = CampaignStatus
D = DeliveryStatus


@pytest.fixture
def flaky_sinks() -> Iterator[RunningSinks]:
    """SMS to numbers with "+3370" fail with a 503 for their first three attempts, and to
    "+3371" with a 429 asking to come back in 45 s, each time."""
    with (
        running_sinks(
            flaky=r"\+3370", flaky_times=3, throttle=r"\+3371", throttle_times=9, retry_after_s=45
        ) as sink,
        override_settings(**sink.provider_settings()),
    ):
        yield sink


def phones_starting(prefix: str) -> Any:
    return factory.Sequence(lambda n: f"{prefix}{n:05d}")


def row_of(profile: Any) -> Delivery:
    return Delivery.objects.get(profile_id=profile.pk)


@pytest.mark.django_db
@override_settings(
    SALVO_DELIVERY_RETRY_BASE_S=5, SALVO_DELIVERY_RETRY_CAP_S=7, SALVO_DELIVERY_MAX_ATTEMPTS=6
)
def test_a_transient_failure_is_retried_after_a_backoff_that_doubles_up_to_its_cap(flaky_sinks):
    fine = ProfileFactory(phone="+33600000001")
    flaky = ProfileFactory(phone="+33700000001")
    campaign = make_live_campaign(actions=[sms_action()])
    execution = plan(campaign)
    expected_waits = [5, 7, 7]  # 5, then 10 and 20 capped at 7

    for attempt, wait_s in enumerate(expected_waits, start=1):
        before = timezone.now()
        [come_back_in] = send_all(execution)
        after = timezone.now()

        row = row_of(flaky)
        assert (row.status, row.attempts) == (D.PENDING, attempt)
        assert "503" in row.error
        assert row.next_attempt_at is not None
        assert before + dt.timedelta(seconds=wait_s) <= row.next_attempt_at
        assert row.next_attempt_at <= after + dt.timedelta(seconds=wait_s)
        # The batch comes back when the retry is due, not before.
        assert come_back_in is not None
        assert wait_s - (after - before).total_seconds() - 1 <= come_back_in <= wait_s
        # Running it again before then sends nothing.
        attempts_so_far = len(flaky_sinks.attempts())
        send_all(execution)
        assert len(flaky_sinks.attempts()) == attempts_so_far
        time_passes(execution, wait_s)

    [come_back_in] = send_all(execution)

    assert come_back_in is None
    row = row_of(flaky)
    assert (row.status, row.attempts, row.error, row.next_attempt_at) == (D.SENT, 4, "", None)
    assert row_of(fine).attempts == 1
    assert [r["status"] for r in flaky_sinks.attempts() if r["to"] == flaky.phone] == [
        503,
        503,
        503,
        200,
    ]
    assert received_delivery_ids(flaky_sinks) == sent_delivery_ids(campaign)
    delivery.execution_complete_if_done(execution_id=execution.pk)
    assert campaign_status(campaign) == Status.COMPLETED


@pytest.mark.django_db
@override_settings(
    SALVO_DELIVERY_RETRY_BASE_S=5, SALVO_DELIVERY_RETRY_CAP_S=600, SALVO_DELIVERY_MAX_ATTEMPTS=6
)
def test_a_providers_retry_after_is_honoured(flaky_sinks):
    throttled = ProfileFactory(phone="+33710000001")
    campaign = make_live_campaign(actions=[sms_action()])
    execution = plan(campaign)

    before = timezone.now()
    [come_back_in] = send_all(execution)
    after = timezone.now()

    row = row_of(throttled)
    assert (row.status, row.attempts) == (D.PENDING, 1)
    assert "429" in row.error
    # 45 s as the provider asked, not the 5 s back-off.
    assert row.next_attempt_at is not None
    assert before + dt.timedelta(seconds=45) <= row.next_attempt_at
    assert row.next_attempt_at <= after + dt.timedelta(seconds=45)
    assert come_back_in is not None
    assert come_back_in > 40
    time_passes(execution, 40)
    send_all(execution)
    assert len(flaky_sinks.attempts()) == 1
    time_passes(execution, 5)
    send_all(execution)
    assert len(flaky_sinks.attempts()) == 2


@pytest.mark.django_db
@override_settings(
    SALVO_DELIVERY_RETRY_BASE_S=5, SALVO_DELIVERY_RETRY_CAP_S=600, SALVO_DELIVERY_MAX_ATTEMPTS=3
)
def test_a_delivery_that_keeps_failing_is_given_up_after_the_maximum_attempts(flaky_sinks):
    fine = make_profile(phone="+33600000002")
    hopeless = make_profile(phone="+33710000002")  # throttled on every attempt
    campaign = make_live_campaign(actions=[sms_action()])
    execution = plan(campaign)

    for _ in range(3):
        send_all(execution)
        time_passes(execution, 45)

    row = row_of(hopeless)
    assert (row.status, row.attempts, row.next_attempt_at) == (D.FAILED, 3, None)
    assert row.error.startswith("Gave up after 3 attempts: ")
    assert "429" in row.error
    assert len([r for r in flaky_sinks.attempts() if r["to"] == hopeless.phone]) == 3
    assert send_all(execution) == [None]  # nothing left to try
    delivery.execution_complete_if_done(execution_id=execution.pk)
    assert campaign_status(campaign) == Status.COMPLETED
    assert selectors.campaign_delivery_counts(campaign=campaign) == expected_report(
        sms={"sent": [fine], "failed": [hopeless]}
    )


@pytest.mark.django_db
def test_a_profile_deleted_mid_run_is_skipped_with_its_reason(flaky_sinks):
    kept = ProfileFactory.create_batch(3, phone=phones_starting("+33620"))
    gone = make_profile(phone="+33629999999")
    campaign = make_live_campaign(actions=[sms_action()])
    execution = plan(campaign)  # its delivery row exists …

    Profile.objects.filter(pk=gone.pk).delete()  # … then the profile goes
    send_all(execution)

    row = row_of(gone)
    assert (row.status, row.error, row.attempts) == (D.SKIPPED, "The profile no longer exists.", 1)
    assert sorted(r["to"] for r in flaky_sinks.received()) == sorted(p.phone for p in kept)
    assert selectors.campaign_delivery_counts(campaign=campaign) == expected_report(
        sms={"sent": kept, "skipped": [gone]}
    )


# --- the dispatch window, followed through the broker's queue ----------------------------


def _queues() -> list[str]:
    return list(celery_app.amqp.queues) or [celery_app.conf.task_default_queue]


def take_queued_tasks() -> list[tuple[str, tuple[Any, ...]]]:
    """Every task message waiting in the broker, taken off the queue: (task name, args)."""
    taken = []
    with celery_app.connection_for_read() as connection:
        channel: Any = connection.default_channel  # a kombu virtual or Redis channel
        for queue in _queues():
            while (message := channel.basic_get(queue, no_ack=True)) is not None:
                args, _kwargs, _embed = message.decode()
                taken.append((message.headers["task"], tuple(args)))
    return taken


@pytest.mark.django_db(transaction=True)
@override_settings(
    SALVO_DELIVERY_BATCH_SIZE=5, SALVO_DELIVERY_WINDOW=2, SALVO_DELIVERY_PLAN_CHUNK=20
)
def test_the_batches_queued_never_exceed_the_window():
    """Run the tasks the engine queues one at a time, in order, in this process (a worker
    with one slot): at no moment are more batches of an action waiting than the window."""
    profiles = ProfileFactory.create_batch(60)
    take_queued_tasks()  # whatever earlier tests left behind
    with running_sinks() as sink, override_settings(**sink.provider_settings(email_api=True)):
        campaign = make_campaign(actions=[email_action(), sms_action()])
        activate_acknowledged(campaign=campaign)

        waiting = take_queued_tasks()
        most_waiting = Counter[int]()
        batches_run = Counter[int]()
        while waiting:
            name, args = waiting.pop(0)
            celery_app.tasks[name].apply(args=args, throw=True)
            waiting += take_queued_tasks()
            batches = Counter(a[1] for n, a in waiting if n.endswith("delivery_batch_task"))
            for action_id, count in batches.items():
                most_waiting[action_id] = max(most_waiting[action_id], count)
            if name.endswith("delivery_batch_task"):
                batches_run[args[1]] += 1

        assert campaign_status(campaign) == Status.COMPLETED
        assert received_delivery_ids(sink) == sent_delivery_ids(campaign)
        assert len(sink.received()) == 2 * len(profiles)
    # 12 batches of 5 per action went through a window of 2, which filled.
    assert set(batches_run.values()) == {12}
    assert set(most_waiting.values()) == {2}


# --- lost messages and concurrent copies, through real workers -------------------------


# A worker log line of a pool process that finished a batch; the group is its number.
BATCH_DONE_BY = (
    r"ForkPoolWorker-(\d+)\] Task campaigns\.tasks\.delivery_batch_task\[[^\]]+\] succeeded"
)


def lose_every_queued_message() -> None:
    """What a broker restart or a worker's crash with the filesystem transport does."""
    take_queued_tasks()


def planned_before_any_worker(campaign: Campaign) -> Execution:
    """Make the campaign Live and plan its audience in this process, before any worker
    runs: the batches that planning handed out wait in the broker."""
    activate_acknowledged(campaign=campaign)
    services.campaign_activation_complete(campaign_id=campaign.pk)
    execution = plan(campaign)
    assert execution.dispatched_through > 0
    return execution


@pytest.mark.worker
@pytest.mark.timeout(180)
def test_an_execution_whose_task_messages_were_lost_resumes(celery_process_factory):
    profiles = ProfileFactory.create_batch(40)
    campaign = make_campaign(actions=[sms_action()])
    execution = planned_before_any_worker(campaign)
    lose_every_queued_message()

    with sinks_and_worker(
        celery_process_factory, beat=True, env={"SALVO_DELIVERY_STALL_AFTER_S": "1"}
    ) as (sink, worker, _):
        wait_for_status(campaign, Status.COMPLETED)

        assert sorted(r["to"] for r in sink.received()) == sorted(p.phone for p in profiles)
        assert sink.duplicates() == 0
        assert f"Execution {execution.pk} made no progress since" in worker.log()


@pytest.mark.worker
@pytest.mark.timeout(180)
def test_an_activation_whose_task_message_was_lost_is_sent_again(celery_process_factory):
    profiles = ProfileFactory.create_batch(5)
    campaign = make_campaign(actions=[sms_action()])
    activate_acknowledged(campaign=campaign)
    lose_every_queued_message()

    with sinks_and_worker(
        celery_process_factory, beat=True, env={"SALVO_ACTIVATION_RETRY_AFTER_S": "1"}
    ) as (sink, _, _):
        wait_for_status(campaign, Status.COMPLETED)

        assert sorted(r["to"] for r in sink.received()) == sorted(p.phone for p in profiles)
    campaign.refresh_from_db()
    # Sent again at least once (a slow worker may see it twice: it activates once).
    assert campaign.activation_attempts >= 2
    assert campaign.transitions.filter(name="activation_succeed").count() == 1
    assert campaign.activation_error == ""


@pytest.mark.worker
@pytest.mark.timeout(180)
def test_two_copies_of_a_batch_at_once_send_each_row_once(celery_process_factory):
    """Besides the batches the engine queued, two more copies cover the whole audience: two
    worker processes run them side by side, and each recipient still gets one message."""
    profiles = ProfileFactory.create_batch(60)
    campaign = make_campaign(actions=[sms_action()])
    execution = planned_before_any_worker(campaign)
    action = ChannelAction.objects.get(version_id=execution.version_id)
    whole = (execution.pk, action.pk, 0, execution.audience_max_profile_id)

    delivery_batch_task.apply_async(whole)
    delivery_batch_task.apply_async(whole)

    # A slow provider keeps every copy's chunks in flight long enough to overlap.
    with sinks_and_worker(celery_process_factory, slow=r"\+33", slow_s=0.3) as (sink, worker, _):
        wait_for_status(campaign, Status.COMPLETED)

        received = Counter(received_delivery_ids(sink))
        assert sink.duplicates() == 0
        assert set(received.values()) == {1}
        assert sorted(received) == sent_delivery_ids(campaign)
        assert sorted(r["to"] for r in sink.received()) == sorted(p.phone for p in profiles)
        # Both worker processes ran a batch. The campaign completes inside the last batch,
        # a moment before its process logs it done: wait for the log line.
        wait_until(
            lambda: len(set(re.findall(BATCH_DONE_BY, worker.log()))) == 2,
            timeout=30,
            message="both worker processes never logged a finished batch",
        )
    assert Execution.objects.get(pk=execution.pk).status == ExecutionStatus.COMPLETED
