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
# apart where it has one: (path of the field in the raw event, its values for a soft
# bounce) by ESP.
SOFT_BOUNCE_FIELDS: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {
    "postmark": (("Type",), frozenset({"SoftBounce"})),
    # SendGrid's bounce "type" is "bounce" (permanent) or "blocked" (temporary refusal).
    "sendgrid": (("type",), frozenset({"blocked"})),
    # SES's bounceType is Permanent, Transient or Undetermined (kept as a hard bounce).
    "amazon_ses": (("bounce", "bounceType"), frozenset({"Transient"})),
}

# Amazon SES's provider name (anymail's "Amazon SES"), and its event types anymail does not
# normalize (it reports them "unknown"): a delivery delayed is deferred; a "Subscription"
# event (SES's own list management) that opts out of everything is an unsubscribe.
AMAZON_SES = "amazon_ses"
SES_DELIVERY_DELAY = "DeliveryDelay"
SES_SUBSCRIPTION = "Subscription"

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
    raw = event.esp_event if isinstance(event.esp_event, dict) else {}
    kind = KIND_BY_EVENT_TYPE.get(event.event_type)
    if kind is None and provider == AMAZON_SES:
        kind = _ses_kind(raw)
    if kind is None:
        return None
    if kind == EventKind.BOUNCED and provider in SOFT_BOUNCE_FIELDS:
        path, soft = SOFT_BOUNCE_FIELDS[provider]
        if str(_field(raw, path)) in soft:
            kind = EventKind.SOFT_BOUNCED
    suppress = ""
    if kind == EventKind.REJECTED:
        suppress = SUPPRESSION_BY_REJECT_REASON.get(event.reject_reason or "", "")
    message_id = str(event.message_id or "")
    recipient = str(event.recipient or "")
    event_id = str(event.event_id or "")
    if event_id and provider == AMAZON_SES:
        # The SNS notification's id, shared by the recipients it names (a bounce may name
        # several): one event per recipient, and the same ones when SNS posts it again.
        event_id = f"{event_id}/{recipient.lower()}"
    detail = _detail(event, kind)
    if provider == AMAZON_SES and raw.get("eventType") in (SES_DELIVERY_DELAY, SES_SUBSCRIPTION):
        detail = _ses_detail(raw, recipient.lower())  # anymail's says "unknown event type"
    delivery_id = _delivery_id(event.metadata)
    if delivery_id is None and provider == AMAZON_SES:
        delivery_id = _ses_tagged_delivery_id(raw)
    return ProviderEvent(
        provider=provider,
        event_id=event_id
        or _event_digest(provider, message_id, event.event_type, event.timestamp, recipient),
        kind=kind,
        channel=ChannelKind.EMAIL,
        occurred_at=event.timestamp or timezone.now(),
        delivery_id=delivery_id,
        provider_message_id=message_id,
        recipient=recipient,
        detail=detail,
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


def _field(raw: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = raw
    for name in path:
        value = value.get(name) if isinstance(value, dict) else None
    return "" if value is None else value


def _ses_kind(raw: dict[str, Any]) -> str | None:
    """The kind of an SES event anymail reports as "unknown", if Salvo keeps it."""
    event_type = raw.get("eventType")
    if event_type == SES_DELIVERY_DELAY:
        return EventKind.DEFERRED
    if event_type == SES_SUBSCRIPTION and _field(
        raw, ("subscription", "newTopicPreferences", "unsubscribeAll")
    ):
        return EventKind.UNSUBSCRIBED
    return None


def _ses_tagged_delivery_id(raw: dict[str, Any]) -> int | None:
    """The delivery id from the SES message tag the send added (``SesBackend``): SES gives
    tags back in every event, headers only when its event destination includes them."""
    tags = _field(raw, ("mail", "tags"))
    values = tags.get(DELIVERY_METADATA_KEY) if isinstance(tags, dict) else None
    return _delivery_id({DELIVERY_METADATA_KEY: values[0]} if values else {})


def _ses_detail(raw: dict[str, Any], recipient: str) -> str:
    if raw.get("eventType") == SES_DELIVERY_DELAY:
        delay = _field(raw, ("deliveryDelay",)) or {}
        said = [
            str(entry.get("diagnosticCode") or "")
            for entry in delay.get("delayedRecipients") or []
            if isinstance(entry, dict) and str(entry.get("emailAddress", "")).lower() == recipient
        ]
        return " — ".join(text for text in (str(delay.get("delayType") or ""), *said) if text)
    subscription = _field(raw, ("subscription",)) or {}
    return " — ".join(
        str(subscription.get(name) or "")
        for name in ("source", "contactList")
        if subscription.get(name)
    )


def _detail(event: AnymailTrackingEvent, kind: str) -> str:
    if kind == EventKind.CLICKED:
        return str(event.click_url or "")
    said = (event.description, event.mta_response)
    return " — ".join(dict.fromkeys(str(text).strip() for text in said if text))
