"""What comes back after a send: providers' events, recorded once and attached to their
delivery, and the suppressions they imply.

Every source of events (anymail's tracking webhooks, Twilio's status callbacks, Salvo's
own open pixel and click redirect) turns what it received into ``ProviderEvent`` values
and calls ``events_record``, which

- keeps each event once: ``(provider, event_id)`` is unique, so a provider that sends an
  event twice, or a webhook retried after a timeout, records it once;
- attaches it to its delivery by the delivery id the message carried (anymail metadata,
  the status callback's URL, the tracking link), which exists from planning on, so an
  event is attached whether it arrives before or after the send's outcome commits;
- puts the address on the channel's suppression list for a hard bounce, a complaint, an
  unsubscribe, or the reason the source names (``suppress``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from django.db import transaction

from channels.choices import SuppressionReason, SuppressionSource
from channels.suppression import SuppressionEntry, suppressions_record

from .choices import EventKind
from .models import DeliveryEvent

# What each kind of event puts on the suppression list, unless its source says otherwise.
SUPPRESSION_BY_KIND: dict[str, str] = {
    EventKind.BOUNCED: SuppressionReason.HARD_BOUNCE,
    EventKind.COMPLAINED: SuppressionReason.COMPLAINT,
    EventKind.UNSUBSCRIBED: SuppressionReason.UNSUBSCRIBED,
}

# A provider's text beyond this is cut.
EVENT_DETAIL_MAX_CHARS = 2000


@dataclass(frozen=True)
class ProviderEvent:
    """One event as its source reported it."""

    provider: str  # "postmark", "sendgrid", "twilio", "salvo" (own tracking)…
    event_id: str  # the provider's id of the event, or a digest of what makes it one
    kind: str  # an EventKind
    channel: str  # a ChannelKind
    occurred_at: dt.datetime
    delivery_id: int | None = None  # Salvo's delivery id, when the message carried it
    provider_message_id: str = ""
    recipient: str = ""  # the address, as the provider names it
    detail: str = ""
    # The SuppressionReason the source read in the event ('' for SUPPRESSION_BY_KIND's):
    # e.g. Twilio's "unknown destination" is an invalid address, though it is no bounce.
    suppress: str = ""


@dataclass(frozen=True)
class EventsRecorded:
    recorded: int
    duplicates: int


def events_record(*, events: Sequence[ProviderEvent]) -> EventsRecorded:
    """Record the events not recorded before, and the suppressions they imply, in one
    transaction; how many were new and how many had been recorded already."""
    unique = {(event.provider, event.event_id[:255]): event for event in events}
    with transaction.atomic():
        known = set(
            DeliveryEvent.objects.filter(
                provider__in={provider for provider, _ in unique},
                event_id__in={event_id for _, event_id in unique},
            ).values_list("provider", "event_id")
        )
        new = {key: event for key, event in unique.items() if key not in known}
        DeliveryEvent.objects.bulk_create(
            [
                DeliveryEvent(
                    provider=provider,
                    event_id=event_id,
                    kind=event.kind,
                    delivery_id=event.delivery_id,
                    provider_message_id=event.provider_message_id[:255],
                    channel=event.channel,
                    recipient=event.recipient[:320],
                    occurred_at=event.occurred_at,
                    detail=event.detail[:EVENT_DETAIL_MAX_CHARS],
                )
                for (provider, event_id), event in new.items()
            ],
            # Another request recording the same event meanwhile: the unique index keeps one.
            ignore_conflicts=True,
        )
        suppressions_record(
            entries=[
                SuppressionEntry(
                    channel=event.channel,
                    address=event.recipient,
                    reason=event.suppress or SUPPRESSION_BY_KIND[event.kind],
                    detail=f"{event.provider}: {event.detail}".strip(": "),
                )
                for event in new.values()
                if event.recipient and (event.suppress or event.kind in SUPPRESSION_BY_KIND)
            ],
            source=SuppressionSource.PROVIDER,
        )
    return EventsRecorded(recorded=len(new), duplicates=len(events) - len(new))
