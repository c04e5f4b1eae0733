"""The delivery benchmark's baseline: the design a Django user would write first.

One Celery task per recipient and channel (``devtools.tasks.naive_delivery_task``) that
loads, renders, sends and saves one row: a task, a provider connection and a handful of
queries per recipient. ``manage.py bench_delivery`` measures the engine against it; nothing
in the product calls it. It reads the product's public pieces only (models, rendering,
provider backends), so it measures their cost and not a copy of them.
"""

from django.utils import timezone

from campaigns.choices import DeliveryStatus, ExecutionStatus
from campaigns.models import Campaign, ChannelAction, Delivery, Execution
from channels.choices import CHANNELS
from channels.providers import OutboundMessage, get_backend
from channels.rendering import profile_context, render_content
from segments.models import Profile


def naive_execution_create(*, campaign: Campaign) -> Execution:
    """The execution a naive run's rows belong to: of the campaign's draft version, and
    Completed from the start, so that the engine (planning, resuming stalled executions)
    never takes it up."""
    version = campaign.draft_version
    if version is None:
        raise ValueError(f"Campaign {campaign.pk} has no draft version to run naively.")
    return Execution.objects.create(
        campaign=campaign,
        version=version,
        planning_done=True,
        status=ExecutionStatus.COMPLETED,
    )


def naive_send_one(*, execution_id: int, action_id: int, profile_id: int) -> None:
    """Load, render, send and save one delivery of ``action_id`` to ``profile_id``."""
    action = ChannelAction.objects.select_related("preset", "version__campaign").get(pk=action_id)
    profile = Profile.objects.get(pk=profile_id)
    address_field = CHANNELS[action.channel].address_field
    address = getattr(profile, address_field) if address_field else action.preset.webhook_url
    subject, body = render_content(
        subject=action.subject, body=action.body, profile=profile_context(profile)
    )
    delivery = Delivery.objects.create(
        execution_id=execution_id,
        action=action,
        version_id=action.version_id,
        profile_id=profile_id,
        attempts=1,
    )
    message = OutboundMessage(
        delivery_id=delivery.pk, channel=action.channel, to=address, subject=subject, body=body
    )
    with get_backend(action.preset) as backend:
        result = backend.send(message)
    delivery.status = DeliveryStatus.SENT
    delivery.provider_message_id = result.provider_message_id
    delivery.sent_at = timezone.now()
    delivery.save()
