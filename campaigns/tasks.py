"""Celery entry points for campaigns: each loads by id and calls a service.

A step that raises runs again after a back-off, a bounded number of times: the services
say when (``delivery.execution_step_failed``, ``services.campaign_activation_failed``)
and record the error; the task only schedules the retry.

The services, the delivery engine and the proofs import this module to queue work, so it
imports them inside the task bodies (HackSoft's rule), never at module level: no cycle.
"""

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from celery import Task, shared_task
from django.conf import settings

if TYPE_CHECKING:
    from .delivery import Batch

T = TypeVar("T")


@shared_task(
    name="campaigns.tasks.campaign_activation_task",
    bind=True,
    acks_late=True,
    max_retries=None,
)
def campaign_activation_task(self: Task, campaign_id: int) -> None:
    from . import services

    try:
        services.campaign_activation_complete(campaign_id=campaign_id)
    except Exception as error:
        retry_in = services.campaign_activation_failed(campaign_id=campaign_id, error=error)
        if retry_in is None:
            return  # no longer Activating: failed for good, with the error shown
        raise self.retry(exc=error, countdown=retry_in) from error


@shared_task(
    name="campaigns.tasks.scheduler_tick",
)
def scheduler_tick() -> None:
    """Run by the beat scheduler: start due campaigns and due occurrences of recurring ones,
    revive lost activations and stalled deliveries."""
    from . import delivery, experiments, occurrences, services

    services.campaigns_start_due()
    occurrences.occurrences_start_due()
    experiments.experiments_decide_due()
    services.campaigns_retry_stale_activations(
        older_than=dt.timedelta(seconds=settings.SALVO_ACTIVATION_RETRY_AFTER_S)
    )
    delivery.executions_resume_stalled()


@shared_task(
    name="campaigns.tasks.history_maintain",
    soft_time_limit=settings.SALVO_DELIVERY_TASK_SOFT_LIMIT_S,
    time_limit=settings.SALVO_DELIVERY_TASK_HARD_LIMIT_S,
)
def history_maintain() -> None:
    """Run by the beat scheduler every hour: the delivery table's month partitions, and
    retention (SALVO_RETENTION_DAYS)."""
    from . import retention

    retention.history_maintain()


@shared_task(
    name="campaigns.tasks.proof_send_task",
    acks_late=True,
)
def proof_send_task(proof_ids: list[int]) -> None:
    """Send the proofs one request asked for (see campaigns.proofs)."""
    from . import proofs

    proofs.proof_sends_send(proof_ids=proof_ids)


# --- delivery (see campaigns.delivery) ---------------------------------------------------


def _execution_step(
    task: Task, *, execution_id: int, batch: "Batch | None", work: Callable[[], T]
) -> T | None:
    """Run a step of an execution (planning when `batch` is None); when it raises, have
    the engine record the error and run the task again after its back-off, or give up.
    Returns the step's result, or None once it gave up."""
    from . import delivery

    attempt = task.request.retries + 1
    try:
        result = work()
    except Exception as error:
        retry_in = delivery.execution_step_failed(
            execution_id=execution_id, batch=batch, error=error, attempt=attempt
        )
        if retry_in is None:
            return None
        raise task.retry(exc=error, countdown=retry_in) from error
    if attempt > 1:
        delivery.execution_step_recovered(execution_id=execution_id, batch=batch)
    return result


@shared_task(
    name="campaigns.tasks.execution_plan_task",
    bind=True,
    acks_late=True,
    max_retries=None,
)
def execution_plan_task(self: Task, execution_id: int) -> None:
    """Plan one chunk of the audience; queue the next step while more remains (so that a
    long audience never holds a worker, and batches already queued go first)."""
    from . import delivery

    def plan() -> bool:
        return delivery.execution_plan_step(execution_id=execution_id)

    if _execution_step(self, execution_id=execution_id, batch=None, work=plan):
        execution_plan_task.delay(execution_id)


@shared_task(
    name="campaigns.tasks.delivery_batch_task",
    bind=True,
    acks_late=True,
    max_retries=None,
    soft_time_limit=settings.SALVO_DELIVERY_TASK_SOFT_LIMIT_S,
    time_limit=settings.SALVO_DELIVERY_TASK_HARD_LIMIT_S,
)
def delivery_batch_task(
    self: Task, execution_id: int, action_id: int, first_profile_id: int, last_profile_id: int
) -> None:
    """Send one batch; run it again later while retries wait (at once when the worker is
    stopping: the rest goes to the next worker); then top up the window and complete the
    campaign when everything is done."""
    from . import delivery

    batch = delivery.Batch(execution_id, action_id, first_profile_id, last_profile_id)

    def send() -> None:
        wait = delivery.batch_send(
            execution_id=execution_id,
            action_id=action_id,
            first_profile_id=first_profile_id,
            last_profile_id=last_profile_id,
        )
        if wait is not None:
            delivery_batch_task.apply_async(batch.as_args(), countdown=wait)
        delivery.execution_progress(execution_id=execution_id)

    _execution_step(self, execution_id=execution_id, batch=batch, work=send)
