"""What comes back after a send: providers' events, recorded once and attached to their
delivery, and the suppressions they imply.

Every source of events (anymail's tracking webhooks, Twilio's status callbacks, Salvo's
own open pixel and click redirect) turns what it received into ``ProviderEvent`` values
and calls ``events_record``, which

- keeps each event once: ``(provider, event_id)`` is unique (with the delivery's
  execution on PostgreSQL, where the events are partitioned by it), so a provider that
  sends an event twice, or a webhook retried after a timeout, records it once;
- attaches it to its delivery by the delivery id the message carried (anymail metadata,
  the status callback's URL, the tracking link), which exists from planning on, so an
  event is attached whether it arrives before or after the send's outcome commits;
- puts the address on the channel's suppression list for a hard bounce, a complaint, an
  unsubscribe, or the reason the source names (``suppress``);
- for an unsubscribe or a complaint attached to a delivery, withdraws that delivery's
  profile's marketing consent for the channel (source ``provider``): the person said no,
  and the profile shows it wherever consent is read, whatever its address becomes;
- counts the first event of each kind of each delivery, and of each experiment's profile,
  in the report's counters (``campaigns.engagement.engagement_record``), last before the
  commit.

A person may also text a keyword to a sending number (STOP, START…: Twilio's inbound
webhook): ``sms_keyword_record`` suppresses or lifts the number and sets the consent of
every profile with it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from django.db import connection, transaction
from django.utils import timezone

from channels.choices import ChannelKind, SuppressionReason, SuppressionSource
from channels.suppression import (
    SuppressionEntry,
    suppression_lift_unsubscribed,
    suppressions_record,
)
from segments.choices import ConsentChannel, ConsentSource
from segments.services import consent_keyword_apply, consent_withdraw

from .choices import EventKind
from .engagement import engagement_record
from .models import Delivery, DeliveryEvent

# What each kind of event puts on the suppression list, unless its source says otherwise.
SUPPRESSION_BY_KIND: dict[str, str] = {
    EventKind.BOUNCED: SuppressionReason.HARD_BOUNCE,
    EventKind.COMPLAINED: SuppressionReason.COMPLAINT,
    EventKind.UNSUBSCRIBED: SuppressionReason.UNSUBSCRIBED,
}

# The events by which the person opted out at the provider: besides the suppression, they
# withdraw the marketing consent of their delivery's profile.
WITHDRAWS_CONSENT: frozenset[str] = frozenset({EventKind.UNSUBSCRIBED, EventKind.COMPLAINED})

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
    transaction; how many were new and how many had been recorded already.

    One ``INSERT … ON CONFLICT DO NOTHING RETURNING`` (PostgreSQL, SQLite 3.35+) both
    writes the new events and names them: the unique index decides, so two requests
    carrying the same event at once record it once and only one of them counts it new.
    A webhook's post costs that statement, the suppressions' (only for events that imply
    one), the consents' (only for new unsubscribes and complaints attached to a delivery:
    one UPDATE a channel, its profiles found by a subquery on the deliveries), the
    report's counters' (two statements for new events of a kind the report counts, and
    one a counter table that changed) and the commit. The rows go in their keys' order,
    so two posts at once never wait on each other in a cycle."""
    unique = {
        (event.provider, event.event_id[:255]): event
        for event in sorted(events, key=lambda event: (event.provider, event.event_id[:255]))
    }
    received_at = timezone.now()
    rows = [
        DeliveryEvent(
            provider=provider,
            event_id=event_id,
            kind=event.kind,
            delivery_id=event.delivery_id,
            provider_message_id=event.provider_message_id[:255],
            channel=event.channel,
            recipient=event.recipient[:320],
            occurred_at=event.occurred_at,
            received_at=received_at,
            detail=event.detail[:EVENT_DETAIL_MAX_CHARS],
        )
        for (provider, event_id), event in unique.items()
    ]
    with transaction.atomic():
        inserted = _insert_new(rows)
        new = [event for key, event in unique.items() if key in inserted]
        suppressions_record(
            entries=[
                SuppressionEntry(
                    channel=event.channel,
                    address=event.recipient,
                    reason=event.suppress or SUPPRESSION_BY_KIND[event.kind],
                    detail=f"{event.provider}: {event.detail}".strip(": "),
                )
                for event in new
                if event.recipient and (event.suppress or event.kind in SUPPRESSION_BY_KIND)
            ],
            source=SuppressionSource.PROVIDER,
        )
        withdrawn: dict[str, list[int]] = {}
        for event in new:
            if (
                event.kind in WITHDRAWS_CONSENT
                and event.delivery_id is not None
                and event.channel in ConsentChannel.values
            ):
                withdrawn.setdefault(event.channel, []).append(event.delivery_id)
        for channel, delivery_ids in withdrawn.items():
            consent_withdraw(
                profile_ids=Delivery.objects.filter(pk__in=delivery_ids).values("profile_id"),
                channel=channel,
                source=ConsentSource.PROVIDER,
            )
        engagement_record(
            [(event.delivery_id, event.kind) for event in new if event.delivery_id is not None]
        )
    return EventsRecorded(recorded=len(new), duplicates=len(events) - len(new))


# Rows per INSERT statement: well within SQLite's 32,766 parameters at 10 a row.
_INSERT_BATCH = 1000


def _insert_new(rows: Sequence[DeliveryEvent]) -> set[tuple[str, str]]:
    """Insert the rows whose (provider, event_id) is not stored yet: their keys.

    Each row gets its delivery's execution in the same statement (a join by the delivery's
    primary key; 0 when it names no delivery that exists): on PostgreSQL the partition it
    goes to, beside its delivery's. The WHERE before ON CONFLICT is SQLite's: it tells the
    upsert from the join's ON."""
    if not rows:
        return set()
    fields = [
        field
        for field in DeliveryEvent._meta.concrete_fields
        if not field.primary_key and field.attname != "execution_id"
    ]
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in fields)
    # VALUES types a column of NULLs only as text: the delivery id is cast back.
    delivery_id = "CAST(v.delivery_id AS bigint)"
    values = ", ".join(
        delivery_id if field.column == "delivery_id" else f"v.{quote(field.column)}"
        for field in fields
    )
    one_row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    inserted: set[tuple[str, str]] = set()
    with connection.cursor() as cursor:
        for at in range(0, len(rows), _INSERT_BATCH):
            batch = rows[at : at + _INSERT_BATCH]
            cursor.execute(
                f"WITH v ({columns}) AS (VALUES {', '.join([one_row] * len(batch))}) "
                f"INSERT INTO {quote(DeliveryEvent._meta.db_table)} ({columns}, execution_id) "
                f"SELECT {values}, coalesce(d.execution_id, 0) FROM v "
                f"LEFT JOIN {quote(Delivery._meta.db_table)} d ON d.id = {delivery_id} "
                "WHERE 1 = 1 ORDER BY v.provider, v.event_id "
                "ON CONFLICT DO NOTHING RETURNING provider, event_id",
                [
                    field.get_db_prep_save(getattr(row, field.attname), connection)
                    for row in batch
                    for field in fields
                ],
            )
            inserted.update((provider, event_id) for provider, event_id in cursor.fetchall())
    return inserted


def sms_keyword_record(
    *, provider: str, message_id: str, phone: str, keyword: str, opt_out: bool
) -> bool:
    """What a person's keyword text to a sending number asks, done once per message (the
    provider's ``message_id``) in one transaction; whether it was new.

    An opt-out (STOP…) puts the number on the SMS suppression list as ``unsubscribed`` and
    withdraws the SMS consent of every profile with it; an opt-in (START…) takes only an
    ``unsubscribed`` entry of the number off the list (an invalid number or a bounce stays
    suppressed) and gives their consent back. A retried webhook changes nothing again."""
    with transaction.atomic():
        applied = consent_keyword_apply(
            provider=provider,
            message_id=message_id,
            channel=ConsentChannel.SMS,
            address=phone,
            keyword=keyword,
            allowed=not opt_out,
        )
        if applied is None:
            return False
        if opt_out:
            suppressions_record(
                entries=[
                    SuppressionEntry(
                        channel=ChannelKind.SMS,
                        address=applied.address,
                        reason=SuppressionReason.UNSUBSCRIBED,
                        detail=f"{provider}: {keyword} texted to the sending number",
                    )
                ],
                source=SuppressionSource.PROVIDER,
            )
        else:
            suppression_lift_unsubscribed(channel=ChannelKind.SMS, address=applied.address)
    return True
