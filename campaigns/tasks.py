"""Celery entry points for campaigns: each loads by id and calls a service."""

import datetime as dt

from celery import shared_task
from django.conf import settings

from . import services


@shared_task(acks_late=True)
def campaign_activation_task(campaign_id: int) -> None:
    services.campaign_activation_complete(campaign_id=campaign_id)


@shared_task
def scheduler_tick() -> None:
    """Run by the beat scheduler: start due campaigns and revive lost activations."""
    services.campaigns_start_due()
    services.campaigns_retry_stale_activations(
        older_than=dt.timedelta(seconds=settings.SALVO_ACTIVATION_RETRY_AFTER_S)
    )
