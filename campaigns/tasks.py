"""Celery entry points for campaigns: each loads by id and calls a service."""

import datetime as dt

from celery import shared_task
from django.conf import settings

from . import delivery, services


@shared_task(acks_late=True)
def campaign_activation_task(campaign_id: int) -> None:
    services.campaign_activation_complete(campaign_id=campaign_id)


@shared_task
def scheduler_tick() -> None:
    """Run by the beat scheduler: start due campaigns, revive lost activations and stalled
    deliveries."""
    services.campaigns_start_due()
    services.campaigns_retry_stale_activations(
        older_than=dt.timedelta(seconds=settings.SALVO_ACTIVATION_RETRY_AFTER_S)
    )
    delivery.executions_resume_stalled()


# --- delivery (see campaigns.delivery) ---------------------------------------------------


@shared_task(acks_late=True)
def execution_plan_task(execution_id: int) -> None:
    """Plan one chunk of the audience; queue the next step while more remains (so that a
    long audience never holds a worker, and batches already queued go first)."""
    if delivery.execution_plan_step(execution_id=execution_id):
        execution_plan_task.delay(execution_id)


@shared_task(acks_late=True)
def delivery_batch_task(
    execution_id: int, action_id: int, first_profile_id: int, last_profile_id: int
) -> None:
    """Send one batch; run it again later while retries wait (at once when the worker is
    stopping: the rest goes to the next worker); then top up the window and complete the
    campaign when everything is done."""
    wait = delivery.batch_send(
        execution_id=execution_id,
        action_id=action_id,
        first_profile_id=first_profile_id,
        last_profile_id=last_profile_id,
    )
    if wait is not None:
        delivery_batch_task.apply_async(
            (execution_id, action_id, first_profile_id, last_profile_id), countdown=wait
        )
    delivery.execution_progress(execution_id=execution_id)


@shared_task(acks_late=True)
def naive_delivery_task(execution_id: int, action_id: int, profile_id: int) -> None:
    """The design a Django user would write first, kept only as the benchmark's baseline:
    one task per recipient that renders, sends and saves one row."""
    delivery.naive_send_one(execution_id=execution_id, action_id=action_id, profile_id=profile_id)
