"""anymail's tracking webhooks as delivery events.

anymail receives each ESP's webhook at ``/anymail/<esp>/tracking/``, checks the ESP's own
authentication (HTTP basic auth with ``ANYMAIL_WEBHOOK_SECRET``, plus the signature where
the ESP signs its posts and its key is set), and normalizes what it received into
``AnymailTrackingEvent`` values, sent one by one on ``anymail.signals.tracking``.
``tracking_received`` (connected in ``CampaignsConfig.ready``) maps each to a
``ProviderEvent``; the events of one post (SendGrid, Mailgun and others post batches) are
recorded together through ``events_record``, the one writer of events, in one
transaction once anymail has parsed them all (``events_collected``, around each webhook
view: ``campaigns.webhooks.urls``). A failure to record answers 500, which every ESP
retries later; the retried events are then recorded once.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterator
from typing import Any

from anymail.signals import AnymailTrackingEvent, EventType, RejectReason
from django.utils import timezone

from channels.choices import ChannelKind, SuppressionReason

from ..choices import EventKind
from ..events import ProviderEvent, events_record

# The anymail metadata key a message carries Salvo's delivery id in (channels.providers.esp).
DELIVERY_METADATA_KEY = "salvo_delivery_id"

# anymail's normalized event types Salvo keeps. The others say nothing about the recipient
# after the send: queued and sent repeat the send's own outcome, failed is the ESP's own
# error (template rendering) the send already answered, autoresponded, subscribed, inbound
# and unknown are not about delivery.
KIND_BY_EVENT_TYPE: dict[str, str] = {
    EventType.DELIVERED: EventKind.DELIVERED,
    EventType.DEFERRED: EventKind.DEFERRED,
    EventType.BOUNCED: EventKind.BOUNCED,
    EventType.REJECTED: EventKind.REJECTED,
    EventType.COMPLAINED: EventKind.COMPLAINED,
    EventType.UNSUBSCRIBED: EventKind.UNSUBSCRIBED,
    EventType.OPENED: EventKind.OPENED,
    EventType.CLICKED: EventKind.CLICKED,
}

# anymail reports soft and hard bounces alike as "bounced"; the ESP's own field tells them
# apart where it has one: (field of the raw event, its values for a soft bounce) by ESP.
SOFT_BOUNCE_FIELDS: dict[str, tuple[str, frozenset[str]]] = {
    "postmark": ("Type", frozenset({"SoftBounce"})),
    # SendGrid's bounce "type" is "bounce" (permanent) or "blocked" (temporary refusal).
    "sendgrid": ("type", frozenset({"blocked"})),
}

# A rejection names why the ESP refused to send: a reason that is about the address puts it
# on Salvo's list too, so that the next campaign skips it rather than be refused again.
SUPPRESSION_BY_REJECT_REASON: dict[str, str] = {
    RejectReason.INVALID: SuppressionReason.INVALID_ADDRESS,
    RejectReason.BOUNCED: SuppressionReason.HARD_BOUNCE,
    RejectReason.SPAM: SuppressionReason.COMPLAINT,
    RejectReason.UNSUBSCRIBED: SuppressionReason.UNSUBSCRIBED,
}


def provider_name(esp_name: str) -> str:
    """anymail's display name of an ESP ("Amazon SES") as Salvo names a provider."""
    return esp_name.strip().lower().replace(" ", "_")


def provider_event(event: AnymailTrackingEvent, *, provider: str) -> ProviderEvent | None:
    """The delivery event an anymail tracking event is, or None for one Salvo does not keep."""
    kind = KIND_BY_EVENT_TYPE.get(event.event_type)
    if kind is None:
        return None
    raw = event.esp_event if isinstance(event.esp_event, dict) else {}
    if kind == EventKind.BOUNCED and provider in SOFT_BOUNCE_FIELDS:
        field, soft = SOFT_BOUNCE_FIELDS[provider]
        if str(raw.get(field, "")) in soft:
            kind = EventKind.SOFT_BOUNCED
    suppress = ""
    if kind == EventKind.REJECTED:
        suppress = SUPPRESSION_BY_REJECT_REASON.get(event.reject_reason or "", "")
    message_id = str(event.message_id or "")
    recipient = str(event.recipient or "")
    return ProviderEvent(
        provider=provider,
        event_id=str(event.event_id or "")
        or _event_digest(provider, message_id, event.event_type, event.timestamp, recipient),
        kind=kind,
        channel=ChannelKind.EMAIL,
        occurred_at=event.timestamp or timezone.now(),
        delivery_id=_delivery_id(event.metadata),
        provider_message_id=message_id,
        recipient=recipient,
        detail=_detail(event, kind),
        suppress=suppress,
    )


# The events of the post being answered, while ``events_collected`` runs.
_collected: contextvars.ContextVar[list[ProviderEvent] | None] = contextvars.ContextVar(
    "salvo_anymail_events", default=None
)


@contextlib.contextmanager
def events_collected() -> Iterator[None]:
    """Record the events received inside the block together, when it ends without error."""
    collected: list[ProviderEvent] = []
    token = _collected.set(collected)
    try:
        yield
    finally:
        _collected.reset(token)
    if collected:
        events_record(events=collected)


def tracking_received(sender: Any, event: AnymailTrackingEvent, esp_name: str, **_: Any) -> None:
    """``anymail.signals.tracking``'s receiver: the event, recorded once (with the rest of
    its post inside ``events_collected``, at once outside it)."""
    received = provider_event(event, provider=provider_name(esp_name))
    if received is None:
        return
    collected = _collected.get()
    if collected is None:
        events_record(events=[received])
    else:
        collected.append(received)


def _event_digest(provider: str, message_id: str, event_type: str, when: Any, to: str) -> str:
    """An id for an event its ESP gives none (Postmark's deliveries, opens and clicks):
    what makes it that event, so that the same event posted twice has the same id."""
    stamp = when.isoformat() if when is not None else ""
    facts = "\x1f".join((provider, message_id, event_type, stamp, to))
    return "sha256:" + hashlib.sha256(facts.encode()).hexdigest()


def _delivery_id(metadata: Any) -> int | None:
    value = metadata.get(DELIVERY_METADATA_KEY) if isinstance(metadata, dict) else None
    text = str(value).strip() if value is not None else ""
    return int(text) if text.isdigit() and len(text) < 19 else None


def _detail(event: AnymailTrackingEvent, kind: str) -> str:
    if kind == EventKind.CLICKED:
        return str(event.click_url or "")
    said = (event.description, event.mta_response)
    return " — ".join(dict.fromkeys(str(text).strip() for text in said if text))
