"""The batch window: handing an execution's batches to the workers, a bounded number at a
time.

A batch is (execution, action, first profile id, last profile id); the batches of every
action for one id range are queued side by side, so no channel waits for another. At most
SALVO_DELIVERY_WINDOW batches' worth of unfinished rows per action wait in the queue
(``execution_dispatch``); each batch that finishes, and each planning step, tops the
window up (``completion.execution_progress``). A batch that still holds rows waiting for
their retry comes back after ``range_wait``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from campaigns import tasks

from ..choices import DeliveryReason, DeliveryStatus, ExecutionStatus
from ..models import ChannelAction, Delivery, Execution
from .policy import Batch
from .sql import on_postgres

D = DeliveryStatus

# Pending rows that wait for a moment rather than for a worker (see ``timing``, and
# ``campaigns.experiments`` for the rest of a test waiting for its winner).
WAITING_REASONS = (
    DeliveryReason.RECIPIENT_TIME,
    DeliveryReason.QUIET_HOURS,
    DeliveryReason.WINNER_WAIT,
)


def batches_enqueue(batches: Sequence[Batch], *, first: bool = False) -> None:
    """Queue the batches for the workers once the current transaction commits; `first`:
    a run's first batches, to the queue workers read before the other batches'."""
    if not batches:
        return
    # The other batches go where the task's route sends them (CELERY_TASK_ROUTES).
    route: dict[str, Any] = {"queue": settings.SALVO_FIRST_BATCH_QUEUE} if first else {}

    def send() -> None:
        for batch in batches:
            tasks.delivery_batch_task.apply_async(batch.as_args(), **route)

    transaction.on_commit(send)


def execution_dispatch(*, execution_id: int) -> list[Batch]:
    """Queue batches until the window is full: at most SALVO_DELIVERY_WINDOW batches' worth
    of unfinished rows per action below the dispatch cursor. Returns the batches queued."""
    return dispatch_window(execution_id)[0]


def dispatch_window(execution_id: int) -> tuple[list[Batch], bool]:
    """``execution_dispatch``, also telling whether every batch has now been handed out
    (planning is over and no delivery lies beyond the dispatch cursor).

    A run's first batches (nothing dispatched yet) hold at most
    SALVO_DELIVERY_FIRST_BATCH_SIZE recipients and go to the first batches' queue: the run's
    first messages go out ahead of the batches other runs queued before it (a trigger
    behind the backlog of a hundred others), and the rest follows in its turn."""
    size = settings.SALVO_DELIVERY_BATCH_SIZE
    with transaction.atomic():
        # On PostgreSQL, a worker that finds the execution locked (a planning step or
        # another worker dispatching) goes on with its next batch instead of waiting: the
        # holder dispatches, and looks for completion, after this worker's rows committed.
        execution = (
            Execution.objects.select_for_update(skip_locked=on_postgres())
            .filter(pk=execution_id)
            .first()
        )
        if execution is None or execution.status != ExecutionStatus.RUNNING:
            return [], False
        action_ids = list(
            ChannelAction.objects.filter(version_id=execution.version_id)
            .order_by("channel")
            .values_list("pk", flat=True)
        )
        if not action_ids:
            return [], execution.planning_done
        # Count what is unfinished among the last window's worth of rows only: counting
        # below the whole cursor would walk every row ever sent, which grows with the run.
        # Older rows still unfinished are retries waiting for their time, not work in the
        # queue.
        floor = list(
            Delivery.objects.filter(
                execution_id=execution.pk,
                action_id=action_ids[0],
                profile_id__lte=execution.dispatched_through,
            )
            .order_by("-profile_id")
            .values_list("profile_id", flat=True)[
                settings.SALVO_DELIVERY_WINDOW * size : settings.SALVO_DELIVERY_WINDOW * size + 1
            ]
        )
        # One count per action: each is a range of the unique index, where an IN list
        # over the actions makes PostgreSQL scan the whole table. Rows waiting for a later
        # time (the recipient's local time, quiet hours: ``timing``) are not work in the
        # queue: their batches come back by themselves, and the rows behind them, due
        # sooner in another zone, must not wait for them.
        in_flight = [
            Delivery.objects.filter(
                execution_id=execution.pk,
                action_id=action_id,
                status=D.PENDING,
                profile_id__gt=floor[0] if floor else 0,
                profile_id__lte=execution.dispatched_through,
            )
            .exclude(reason__in=WAITING_REASONS, next_attempt_at__gt=timezone.now())
            .count()
            for action_id in action_ids
        ]
        # The next id range holds at most one batch of each action: queue it only if it
        # fits in every action's window, so that no action ever has more than the window
        # waiting, however far ahead the others are.
        window = settings.SALVO_DELIVERY_WINDOW * size
        batches: list[Batch] = []
        first_batches: list[Batch] = []
        while max(in_flight) + size <= window:
            first = execution.dispatched_through == 0
            take = min(settings.SALVO_DELIVERY_FIRST_BATCH_SIZE, size) if first else size
            ahead = Delivery.objects.filter(
                execution_id=execution.pk,
                action_id=action_ids[0],
                profile_id__gt=execution.dispatched_through,
                profile_id__lte=execution.planned_through,
            )
            found = list(
                ahead.order_by("profile_id").values_list("profile_id", flat=True)[take - 1 : take]
            )
            if found:
                last = int(found[0])
            elif execution.planning_done:
                last = ahead.aggregate(last=Max("profile_id"))["last"] or 0
                if not last:
                    break
            else:
                break  # wait for planning to produce a whole batch
            taken = [
                Batch(execution.pk, a, execution.dispatched_through + 1, last) for a in action_ids
            ]
            (first_batches if first else batches).extend(taken)
            in_flight = [count + take for count in in_flight]
            execution.dispatched_through = last
        execution.last_progress_at = timezone.now()
        execution.save(update_fields=["dispatched_through", "last_progress_at"])
        batches_enqueue(first_batches, first=True)
        batches_enqueue(batches)
        exhausted = (
            execution.planning_done
            and not Delivery.objects.filter(
                execution_id=execution.pk,
                action_id=action_ids[0],
                profile_id__gt=execution.dispatched_through,
            ).exists()
        )
    return first_batches + batches, exhausted


def range_wait(batch: Batch, *, now: dt.datetime) -> float | None:
    """Seconds until the batch must run again; None when every row of it is finished.

    A pending row is due at its retry time (or its recipient's local time, or the end of
    its quiet hours), looked at again after SALVO_DELIVERY_WAIT_MAX_S at most. One that
    is due now was held by another worker (a second copy of the batch): look again after
    SALVO_DELIVERY_SENDING_TIMEOUT_S, by which time that worker has finished it, or died
    and released it."""
    retry_times = Delivery.objects.filter(
        execution_id=batch.execution_id,
        action_id=batch.action_id,
        profile_id__gte=batch.first_profile_id,
        profile_id__lte=batch.last_profile_id,
        status=D.PENDING,
    ).values_list("next_attempt_at", flat=True)
    held = now + dt.timedelta(seconds=settings.SALVO_DELIVERY_SENDING_TIMEOUT_S)
    soonest: dt.datetime | None = None
    for next_attempt_at in retry_times:
        when = next_attempt_at if next_attempt_at and next_attempt_at > now else held
        soonest = when if soonest is None else min(soonest, when)
    if soonest is None:
        return None
    return max(0.1, min((soonest - now).total_seconds(), settings.SALVO_DELIVERY_WAIT_MAX_S))
