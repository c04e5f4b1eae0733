"""What recipients did with a campaign's messages, read from the delivery events providers
reported (``campaigns.events``): per channel and per version, how many deliveries were
delivered, bounced (hard), complained, unsubscribed, opened and clicked, and each as a rate
of the deliveries sent; and how many conversions were attributed to it, with their value
(``campaigns.conversions``).

Each count is of deliveries, not of events: a message opened five times is one opened
delivery, a bounce reported twice one bounced delivery. One query, grouped in the
database: the events of the campaign's executions (joined to their deliveries by primary
key, and from there only to the small action and version tables), counted by distinct
delivery per (action, version, kind). Events not attached to a delivery count nowhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.db.models import Count

from .choices import EventKind
from .conversions import campaign_conversions
from .experiments import experiment_engagement
from .models import Campaign, DeliveryEvent

# The kinds a report counts, in the order it shows them.
ENGAGEMENT_KINDS: tuple[str, ...] = (
    EventKind.DELIVERED,
    EventKind.BOUNCED,
    EventKind.COMPLAINED,
    EventKind.UNSUBSCRIBED,
    EventKind.OPENED,
    EventKind.CLICKED,
)

# Conversions (``campaigns.conversions``) are counted beside the events, with their value.
CONVERTED = "converted"
# What a report shows after the send, in order, with each column's label.
OUTCOME_LABELS: dict[str, str] = {
    **{kind: str(EventKind(kind).label) for kind in ENGAGEMENT_KINDS},
    CONVERTED: "Converted",
}


def engagement_counts(*, campaign: Campaign) -> list[tuple[str, int, str, int]]:
    """(channel, version number, kind, deliveries) for every kind of ``ENGAGEMENT_KINDS``
    that some delivery of the campaign had."""
    rows = (
        DeliveryEvent.objects.filter(
            delivery__execution__campaign=campaign, kind__in=ENGAGEMENT_KINDS
        )
        .values_list("delivery__action__channel", "delivery__version__number", "kind")
        .annotate(deliveries=Count("delivery_id", distinct=True))
        .order_by()
    )
    return [(channel, int(version), kind, int(n)) for channel, version, kind, n in rows]


def campaign_engagement(
    *,
    campaign: Campaign,
    sent_by_channel: Mapping[str, int],
    sent_by_version: Mapping[str, int],
) -> dict[str, Any]:
    """``{"by_channel": {channel: {outcome: {"count", "rate"}}}, "by_version": {number: …},
    "by_variant": {group: …}}`` for the channels and versions that sent something or had
    events, and the groups of the campaign's experiment (none without one), the outcomes of
    ``OUTCOME_LABELS``; ``rate`` is the count over the deliveries sent (None when none was
    sent), and ``converted`` also has its ``value`` (the conversions' total, as a string)."""
    by_channel: dict[str, dict[str, Any]] = {c: {} for c, n in sent_by_channel.items() if n}
    by_version: dict[str, dict[str, Any]] = {v: {} for v, n in sent_by_version.items() if n}
    for channel, version, kind, deliveries in engagement_counts(campaign=campaign):
        for counts in (by_channel.setdefault(channel, {}), by_version.setdefault(str(version), {})):
            counts[kind] = counts.get(kind, 0) + deliveries
    conversions = campaign_conversions(campaign=campaign)
    for table, groups in (("by_channel", by_channel), ("by_version", by_version)):
        for group, converted in conversions[table].items():
            if group is not None:  # None: attributed to no delivery of the campaign
                groups.setdefault(str(group), {})[CONVERTED] = converted
    groups = experiment_engagement(campaign=campaign, kinds=ENGAGEMENT_KINDS)
    return {
        "by_channel": {
            channel: _rates(counts, sent_by_channel.get(channel, 0))
            for channel, counts in sorted(by_channel.items())
        },
        # An experiment's groups: profiles, not deliveries (a profile is in one group on
        # every channel), each a rate of the group's profiles.
        "by_variant": {group: _rates(counts, counts["n"]) for group, counts in groups.items()},
        "by_version": {
            version: _rates(counts, sent_by_version.get(version, 0))
            for version, counts in sorted(by_version.items(), key=lambda item: int(item[0]))
        },
    }


def _rates(counts: Mapping[str, Any], sent: int) -> dict[str, dict[str, Any]]:
    shown: dict[str, dict[str, Any]] = {}
    for outcome in OUTCOME_LABELS:
        found = counts.get(outcome)
        count = (found.converted if outcome == CONVERTED else found) if found else 0
        shown[outcome] = {"count": count, "rate": round(count / sent, 4) if sent else None}
    value = counts[CONVERTED].value if CONVERTED in counts else 0
    shown[CONVERTED]["value"] = f"{value:.2f}"  # as the API's decimals are written
    return shown


def engagement_summary(counts: Mapping[str, Mapping[str, Any]]) -> str:
    """One channel's or version's engagement as a line: "delivered 980 (98%), …"."""
    return ", ".join(
        f"{kind} {shown['count']}"
        + (f" ({shown['rate']:.1%})" if shown["rate"] is not None else "")
        + (f", worth {shown['value']}" if kind == CONVERTED else "")
        for kind, shown in counts.items()
    )


def events_by_delivery(delivery_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """What providers reported about each of these deliveries: ``{delivery id: {kind:
    events}}``, the kinds in the order they first happened (a delivery without events
    maps to ``{}``). One query on the events' delivery index, for a page of deliveries."""
    kinds: dict[int, dict[str, int]] = {delivery_id: {} for delivery_id in delivery_ids}
    events = (
        DeliveryEvent.objects.filter(delivery_id__in=kinds)
        .order_by("occurred_at", "id")
        .values_list("delivery_id", "kind")
    )
    for delivery_id, kind in events:
        counts = kinds[delivery_id]
        counts[kind] = counts.get(kind, 0) + 1
    return kinds


def events_summary(counts: Mapping[str, int]) -> str:
    """One delivery's events as a line: "Delivered · Opened ×3 · Clicked"."""
    return " · ".join(
        str(EventKind(kind).label) + (f" ×{n}" if n > 1 else "") for kind, n in counts.items()
    )
