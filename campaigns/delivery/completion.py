"""Completion, progress and recovery of an execution.

``execution_progress`` runs after each batch and each planning step: it tops up the batch
window and, once every batch is handed out and the counters show nothing pending,
completes the execution and the campaign, exactly once (under the execution's row lock;
``lifecycle.campaign_complete``).

Lost task messages (the filesystem transport drops a message whose worker dies; Redis
returns it only after its visibility timeout) are revived by ``executions_resume_stalled``,
run by the scheduler tick.

Failures. A step that raises (planning a chunk, a batch) runs again after a back-off, at
most SALVO_STEP_MAX_ATTEMPTS times (``execution_step_failed``); then the execution is
Failed, which nothing revives, and the campaign shows the error (it stays Live: stopping
it is the user's call).
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db import transaction
from django.db.models import Min, Sum
from django.utils import timezone

from campaigns import tasks
from channels.choices import ChannelKind

from ..choices import CampaignKind, CampaignStatus, DeliveryStatus, ExecutionStatus
from ..lifecycle import campaign_complete
from ..models import Campaign, ChannelAction, Delivery, DeliveryCount, Execution
from ..selectors import stalled_executions
from .policy import PLANNING_STEP, Batch, RetryPolicy, error_text
from .sql import campaign_sending
from .window import WAITING_REASONS, batches_enqueue, dispatch_window

logger = logging.getLogger(__name__)

D = DeliveryStatus


def execution_halt(execution_id: int, *, now: dt.datetime | None = None) -> None:
    """Halt a running execution whose campaign may no longer send (it was stopped)."""
    Execution.objects.filter(pk=execution_id, status=ExecutionStatus.RUNNING).update(
        status=ExecutionStatus.HALTED, finished_at=now or timezone.now()
    )


def _pending(execution_id: int) -> int:
    counts = DeliveryCount.objects.filter(execution_id=execution_id, status=D.PENDING)
    return int(counts.aggregate(n=Sum("count"))["n"] or 0)


def execution_complete_if_done(*, execution_id: int) -> bool:
    """Complete the execution, and the campaign, when planning is over and no delivery is
    pending. Exactly once: decided under the execution's row lock."""
    ready = Execution.objects.filter(
        pk=execution_id, status=ExecutionStatus.RUNNING, planning_done=True
    )
    if not ready.exists() or _pending(execution_id):
        return False
    with transaction.atomic():
        execution = Execution.objects.select_for_update().get(pk=execution_id)
        if (
            execution.status != ExecutionStatus.RUNNING
            or not execution.planning_done
            or _pending(execution_id)
        ):
            return False
        campaign = Campaign.objects.select_for_update().get(pk=execution.campaign_id)
        if campaign.status == CampaignStatus.ACTIVATING:
            # A new version is being activated: complete once it is Live again (the
            # scheduler's stall check comes back to this execution).
            return False
        execution.status = ExecutionStatus.COMPLETED
        execution.finished_at = timezone.now()
        execution.save(update_fields=["status", "finished_at"])
        # Only a one-shot campaign ends with its execution: a recurring one runs again at
        # its next occurrence, and an API-triggered one waits for the next trigger.
        if campaign.status == CampaignStatus.LIVE and campaign.kind == CampaignKind.ONE_SHOT:
            campaign_complete(
                campaign=campaign,
                reason=f"Every delivery of version {execution.version.number} is done.",
            )
        elif recurring_campaign_over(campaign):
            campaign_complete(campaign=campaign, reason=LAST_OCCURRENCE_DONE)
    return True


LAST_OCCURRENCE_DONE = "The last occurrence of its recurrence is done."


def recurring_campaign_over(campaign: Campaign) -> bool:
    """A Live recurring campaign is over once no occurrence is left to start (the scheduler
    cleared its ``next_run_at``) and none is still running (see campaigns.occurrences)."""
    return (
        campaign.status == CampaignStatus.LIVE
        and campaign.kind == CampaignKind.RECURRING
        and campaign.next_run_at is None
        and not Execution.objects.filter(campaign=campaign, status=ExecutionStatus.RUNNING).exists()
    )


def execution_progress(*, execution_id: int) -> None:
    """After a batch or a planning step: top up the window, then complete if all is done.

    Completion is looked for only once every batch is handed out: until then something is
    certainly left, and asking the database "anything unfinished?" after every batch of a
    million-row run would cost more than the batch itself."""
    _, exhausted = dispatch_window(execution_id)
    if exhausted:
        execution_complete_if_done(execution_id=execution_id)


def executions_resume_stalled(*, now: dt.datetime | None = None) -> list[int]:
    """Send again the unfinished batches of executions that made no progress for
    SALVO_DELIVERY_STALL_AFTER_S (their task messages were lost with a worker); halt those
    whose campaign was stopped. Returns the ids of the executions resumed."""
    now = now or timezone.now()
    size = settings.SALVO_DELIVERY_BATCH_SIZE
    resumed = []
    for execution in stalled_executions(now=now):
        if not campaign_sending(execution.campaign_id):
            execution_halt(execution.pk, now=now)
            continue
        if execution_wait(execution, now=now):
            continue
        rows = (
            Delivery.objects.filter(
                execution_id=execution.pk,
                status=D.PENDING,
                profile_id__lte=execution.dispatched_through,
            )
            .order_by("action_id", "profile_id")
            .values_list("action_id", "profile_id")
        )
        batches: list[Batch] = []
        current: list[int] = []
        current_action: int | None = None
        for action_id, profile_id in rows.iterator():
            if current and (action_id != current_action or len(current) >= size):
                batches.append(Batch(execution.pk, current_action, current[0], current[-1]))  # type: ignore[arg-type]
                current = []
            current_action = action_id
            current.append(profile_id)
        if current and current_action is not None:
            batches.append(Batch(execution.pk, current_action, current[0], current[-1]))
        with transaction.atomic():
            # Claimed by moving its progress time on from what was read: a second scheduler
            # that read the same stall finds it moved (on PostgreSQL, once the first commits)
            # and leaves it, so two schedulers never resume an execution twice.
            claimed = Execution.objects.filter(
                pk=execution.pk, last_progress_at=execution.last_progress_at
            ).update(last_progress_at=now)
            if claimed:
                batches_enqueue(batches)
        if not claimed:
            continue
        if not execution.planning_done:
            tasks.execution_plan_task.delay(execution.pk)
        execution_progress(execution_id=execution.pk)
        logger.warning(
            "Execution %s made no progress since %s: %d batches sent again.",
            execution.pk,
            execution.last_progress_at,
            len(batches),
        )
        resumed.append(execution.pk)
    return resumed


def execution_wait(execution: Execution, *, now: dt.datetime) -> bool:
    """Whether every unfinished delivery of the execution waits for a later moment (its
    recipient's local time, the end of quiet hours: ``timing``): then it is not stalled,
    and is left alone until the soonest of them (``waiting_until``). Its batches are
    queued with their countdown; should those be lost, the stall check sends them again
    once that moment is past."""
    pending = Delivery.objects.filter(execution_id=execution.pk, status=D.PENDING)
    if pending.exclude(reason__in=WAITING_REASONS, next_attempt_at__gt=now).exists():
        return False
    soonest = pending.aggregate(soonest=Min("next_attempt_at"))["soonest"]
    if soonest is None:
        return False
    Execution.objects.filter(pk=execution.pk, last_progress_at=execution.last_progress_at).update(
        waiting_until=soonest
    )
    return True


def step_name(batch: Batch | None) -> str:
    """What a step of the execution does, as its error shows it: planning (no batch) or
    sending one batch."""
    if batch is None:
        return PLANNING_STEP
    channel = ChannelAction.objects.filter(pk=batch.action_id).values_list("channel", flat=True)
    label = ChannelKind(channel[0]).label if channel else f"action {batch.action_id}"
    return f"Sending {label} to profiles {batch.first_profile_id}–{batch.last_profile_id}"


def step_policy() -> RetryPolicy:
    """How often, and how patiently, a step of the engine (or an activation) runs again."""
    return RetryPolicy(
        max_attempts=settings.SALVO_STEP_MAX_ATTEMPTS,
        base_s=settings.SALVO_STEP_RETRY_BASE_S,
        cap_s=settings.SALVO_STEP_RETRY_CAP_S,
    )


def execution_step_failed(
    *, execution_id: int, batch: Batch | None, error: BaseException, attempt: int
) -> float | None:
    """Record that the `attempt`-th attempt of a step of the execution (planning when
    `batch` is None) raised `error`. Returns the seconds after which to run it again, or
    None when it must not run again: the execution is over, or this was the last of
    SALVO_STEP_MAX_ATTEMPTS attempts, and then the execution is Failed with the error.

    A Failed execution is never revived (the stall check looks at running ones only); its
    campaign stays Live and shows the error until someone stops it."""
    policy = step_policy()
    now = timezone.now()
    step = step_name(batch)
    record = {"error_step": step[:200], "error": error_text(error), "error_at": now}
    running = Execution.objects.filter(pk=execution_id, status=ExecutionStatus.RUNNING)
    if not policy.may_retry(attempt=attempt):
        if running.update(
            status=ExecutionStatus.FAILED, finished_at=now, error_attempts=attempt, **record
        ):
            logger.error(
                "Execution %s failed: %s failed %d times: %s", execution_id, step, attempt, error
            )
        return None
    if not running.update(error_attempts=attempt, **record):
        return None
    delay = policy.delay(attempt=attempt)
    logger.warning(
        "Execution %s: %s failed (attempt %d of %d), again in %gs: %s",
        execution_id,
        step,
        attempt,
        policy.max_attempts,
        delay,
        error,
    )
    return delay


def execution_step_recovered(*, execution_id: int, batch: Batch | None) -> None:
    """A step that had failed went through: its error no longer stands (another step's,
    recorded since, does)."""
    Execution.objects.filter(
        pk=execution_id, status=ExecutionStatus.RUNNING, error_step=step_name(batch)[:200]
    ).update(error_step="", error="", error_at=None, error_attempts=0)
