"""What recipients did with a campaign's messages, read from the delivery events providers
reported (``campaigns.events``): per channel and per version, how many deliveries were
delivered, bounced (hard), complained, unsubscribed, opened and clicked, and each as a rate
of the deliveries sent; and how many conversions were attributed to it, with their value
(``campaigns.conversions``).

Each count is of deliveries, not of events: a message opened five times is one opened
delivery, a bounce reported twice one bounced delivery. Counting them from the events on
every request cost seconds at a million deliveries (a distinct count over the events
joined to their deliveries, 10 s for 1.3M events), and the admin's report refreshes every
few seconds; so the counts are kept, as the engine keeps ``DeliveryCount``:

- ``engagement_record`` runs in the transaction of ``events_record``, with the events it
  recorded new. It inserts a ``DeliveryEngagement`` row per (delivery, kind) with
  ``ON CONFLICT DO NOTHING RETURNING``: the unique index decides which event is the first
  (a second open, a duplicate, the same event posted twice at once find the row there,
  or wait for the transaction that writes it and then find it), and only the rows it
  returns are added to the ``EngagementCount`` of their (execution, action, version,
  kind). The rows are read from the deliveries themselves (a join by primary key), so an
  event naming a delivery that does not exist (or no longer does) adds nothing anywhere.
- For an experiment's profiles the same again per (campaign, profile, kind)
  (``ProfileEngagement``, only for an assigned profile) feeding ``GroupEngagementCount``.
- A delivery's version is decided when it is sent. An event that comes before its send's
  outcome commits finds none: its row keeps an empty version, is in no counter, and the
  report counts such rows with their delivery's version at read time (the execution's
  while the delivery is still undecided, as ``DeliveryCount`` counts pending rows): one
  query on a partial index, which holds only those rows.
- The counters are updated last in the transaction, in one order (so two transactions
  never wait on each other in a cycle), and hold their row locks only for the commit.

The report reads the counters: a handful of rows, whatever the number of events. Events
not attached to a delivery count nowhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.db import connection
from django.db.models import Count, F, Sum
from django.db.models.functions import Coalesce

from .choices import EventKind
from .conversions import campaign_conversions
from .counters import counters_add
from .experiments import experiment_engagement
from .models import (
    Assignment,
    Campaign,
    Delivery,
    DeliveryEngagement,
    DeliveryEvent,
    EngagementCount,
    Execution,
    GroupEngagementCount,
    ProfileEngagement,
)

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
    that some delivery of the campaign had: its counters, and the first events that came
    before their delivery's version was decided (two queries)."""
    counted: Counter[tuple[str, int, str]] = Counter()
    kept = (
        EngagementCount.objects.filter(execution__campaign=campaign, kind__in=ENGAGEMENT_KINDS)
        .values_list("action__channel", "version__number", "kind")
        .annotate(deliveries=Sum("count"))
        .order_by()
    )
    undecided = (
        DeliveryEngagement.objects.filter(
            execution__campaign=campaign, version__isnull=True, kind__in=ENGAGEMENT_KINDS
        )
        .annotate(number=Coalesce(F("delivery__version__number"), F("execution__version__number")))
        .values_list("action__channel", "number", "kind")
        .annotate(deliveries=Count("delivery_id"))
        .order_by()
    )
    for rows in (kept, undecided):
        for channel, version, kind, n in rows:
            counted[(channel, int(version), kind)] += int(n)
    return [(channel, version, kind, n) for (channel, version, kind), n in counted.items() if n]


def engagement_record(firsts: Sequence[tuple[int, str]]) -> None:
    """Count these (delivery id, kind) of events just recorded, as the module says: the
    first of each kind per delivery, and per assigned profile of the campaign. Two
    statements (the first events of deliveries, then of the profiles of those that were
    new), and one per counter table that changed; one statement that finds nothing for ids
    that name no delivery. In the caller's transaction."""
    pairs = sorted({(int(d), kind) for d, kind in firsts if kind in ENGAGEMENT_KINDS})
    if not pairs:
        return
    delivery_counts: Counter[tuple[int, int, int, str]] = Counter()
    group_counts: Counter[tuple[int, str, str]] = Counter()
    for at in range(0, len(pairs), _RECORD_BATCH):
        new: list[tuple[int, str]] = []
        for delivery_id, execution_id, action_id, version_id, kind in _firsts_insert(
            _DELIVERY_FIRSTS, pairs[at : at + _RECORD_BATCH]
        ):
            new.append((delivery_id, kind))
            if version_id is not None:
                delivery_counts[(execution_id, action_id, version_id, kind)] += 1
        # Only a delivery's first event of a kind can be its profile's first.
        if new:
            for campaign_id, group, kind in _firsts_insert(_PROFILE_FIRSTS, sorted(new)):
                group_counts[(campaign_id, group, kind)] += 1
    counters_add(
        EngagementCount, ("execution_id", "action_id", "version_id", "kind"), delivery_counts
    )
    counters_add(GroupEngagementCount, ("campaign_id", "group", "kind"), group_counts)


# (delivery id, kind) pairs per statement: 2 parameters each.
_RECORD_BATCH = 1000
# The first events of the pairs' deliveries (those that exist), each returned when new.
# The WHERE before ON CONFLICT is SQLite's: it tells the upsert from a join's ON.
_DELIVERY_FIRSTS = (
    "INSERT INTO {engaged} (delivery_id, kind, execution_id, action_id, version_id) "
    "SELECT d.id, v.kind, d.execution_id, d.action_id, d.version_id "
    "FROM v JOIN {delivery} d ON d.id = v.delivery_id "
    "WHERE 1 = 1 ORDER BY d.id, v.kind "
    "ON CONFLICT DO NOTHING RETURNING delivery_id, execution_id, action_id, version_id, kind"
)
# The first events of the deliveries' profiles in their campaign, for assigned profiles.
_PROFILE_FIRSTS = (
    'INSERT INTO {profiled} (campaign_id, profile_id, kind, "group") '
    'SELECT a.campaign_id, a.profile_id, v.kind, a."group" '
    "FROM v JOIN {delivery} d ON d.id = v.delivery_id "
    "JOIN {execution} x ON x.id = d.execution_id "
    "JOIN {assignment} a ON a.campaign_id = x.campaign_id AND a.profile_id = d.profile_id "
    "WHERE 1 = 1 ORDER BY a.campaign_id, a.profile_id, v.kind "
    'ON CONFLICT DO NOTHING RETURNING campaign_id, "group", kind'
)


def _firsts_insert(statement: str, pairs: Sequence[tuple[int, str]]) -> list[tuple[Any, ...]]:
    tables = {
        "engaged": DeliveryEngagement._meta.db_table,
        "profiled": ProfileEngagement._meta.db_table,
        "delivery": Delivery._meta.db_table,
        "execution": Execution._meta.db_table,
        "assignment": Assignment._meta.db_table,
    }
    values = ", ".join(["(%s, %s)"] * len(pairs))
    sql = f"WITH v (delivery_id, kind) AS (VALUES {values}) " + statement.format(**tables)
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for pair in pairs for value in pair])
        return list(cursor.fetchall())


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
