"""The delivery benchmark's history (``--history-deliveries N``): N delivery rows of earlier
campaigns in the tables while the runs are measured, kept between runs like the profiles.

About one campaign a day over a year (``HISTORY_DAYS`` campaigns named ``bench-history …``,
which ``data.earlier_runs_delete`` does not match), each a Completed marketing campaign
with one execution sending an email and an SMS action to the bench profiles. Row g of the
history (0 ≤ g < N) is campaign g mod days, channel (g div days) mod 2 and the
(g div days div 2)-th bench profile, so the rows of a larger N extend those of a smaller
one: a change of N inserts or deletes only the difference, in PostgreSQL (INSERT …
SELECT over generate_series), and the rows' ids follow g, so trimming drops the highest.

Like a sender's rows: mostly sent with the provider's message id (``make_msgid``'s form
for email, a Twilio SID for SMS), 1.5% skipped (opted out, suppressed, no address) and
0.5% refused by the provider, sent a day apart across the year; the counters the reports
read (``DeliveryCount``, ``DeliveryTimeline``, ``EngagementCount``), and for sent rows the
provider's events with their ``DeliveryEngagement``: email delivered 96%, opened 26%,
clicked 4%; SMS delivered 93%. The frequency caps' ledger (``MarketingSend``) is not
filled: ``caps.cap_ledger_delete`` empties it before every run anyway.

PostgreSQL only (generate_series, pg_total_relation_size).
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from typing import Any

from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from campaigns import services
from campaigns.choices import CampaignStatus, CampaignType, DeliveryReason, ExecutionStatus
from campaigns.delivery.partitions import partition_open_next, partitions_roll
from campaigns.models import (
    TIMELINE_BUCKET_S,
    Campaign,
    ChannelAction,
    Delivery,
    DeliveryCount,
    DeliveryEngagement,
    DeliveryEvent,
    DeliveryTimeline,
    EngagementCount,
    Execution,
)
from campaigns.retention import Retention, deliveries_drop_expired
from channels.choices import ChannelKind
from channels.models import MessagePreset
from segments.choices import SegmentKind
from segments.models import Profile, Segment

from .data import CONTENT, PRESET_FIELDS, tables_vacuum_analyze
from .errors import BenchmarkError

HISTORY_PREFIX = "bench-history "
HISTORY_DAYS = 365
# The profiles the history is sent to (data.profiles_ensure's own).
PROFILE_PREFIX = "bench-"
CHANNELS = (ChannelKind.EMAIL, ChannelKind.SMS)
# Each campaign sends at this rate (rows per second), from 09:00 UTC of its day.
SEND_RATE = 2000
# Row g's outcome, from a hash of g in 0..999: below SKIPPED skipped (the reasons by
# thirds), below FAILED refused by the provider, sent otherwise.
SKIPPED, FAILED = 15, 20
SKIP_REASONS = (DeliveryReason.OPTED_OUT, DeliveryReason.SUPPRESSED, DeliveryReason.NO_ADDRESS)
# A sent row's events, from another hash in 0..999: (channel, kind, below, after sent_at).
EVENTS = (
    (ChannelKind.EMAIL, "delivered", 960, "3 seconds"),
    (ChannelKind.EMAIL, "opened", 260, "2 hours"),
    (ChannelKind.EMAIL, "clicked", 40, "2 hours 30 seconds"),
    (ChannelKind.SMS, "delivered", 930, "5 seconds"),
)
PROVIDERS = {ChannelKind.EMAIL: "mailgun", ChannelKind.SMS: "twilio"}
# The tables the history writes, vacuumed and analyzed once it is written.
HISTORY_TABLES = (
    Delivery,
    DeliveryEvent,
    DeliveryEngagement,
    DeliveryCount,
    DeliveryTimeline,
    EngagementCount,
)
# retention_drop_s: a month of campaigns that ended about 14 months ago, dropped by a
# retention that keeps the year of history.
EXPIRED_PREFIX = "bench-expired "
EXPIRED_DAYS = 30
EXPIRED_AGO = HISTORY_DAYS + 40
RETENTION_DAYS = HISTORY_DAYS + 20


def postgres_required(option: str) -> str | None:
    """The one-line refusal of an option that needs PostgreSQL, on another database."""
    if connection.vendor == "postgresql":
        return None
    return (
        f"{option} needs PostgreSQL (rows generated with generate_series, sizes read with "
        f"pg_total_relation_size); this database is {connection.vendor}."
    )


def history_campaigns(prefix: str = HISTORY_PREFIX) -> QuerySet[Campaign]:
    return Campaign.objects.filter(name__startswith=prefix).order_by("name")


def history_ensure(n: int, *, days: int = HISTORY_DAYS, say: Callable[[str], None]) -> None:
    """Exactly n history delivery rows over `days` campaigns, with their counters and
    events (nothing is written when they are already there); then VACUUM ANALYZE of the
    delivery tables, at every run: the rows an earlier run's campaigns left or deleted
    count alike with and without the history."""
    refused = postgres_required("--history-deliveries")
    if refused:
        raise BenchmarkError(refused)
    if n == 0 and not history_campaigns().exists():
        return
    needed = math.ceil(n / (days * len(CHANNELS)))
    have = Profile.objects.filter(external_id__startswith=PROFILE_PREFIX).count()
    if have < needed:
        raise BenchmarkError(
            f"--history-deliveries {n} sends each of its {days} campaigns to {needed} "
            f"profiles: --profiles must be at least {needed}, not {have}."
        )
    started = time.monotonic()
    with transaction.atomic():
        runs = _runs_ensure(days)
        executions = [run["execution"] for run in runs]
        count = Delivery.objects.filter(execution_id__in=executions).count()
        if count > n:
            say(f"trimming the history to {n} deliveries (from {count})…")
            _trim(executions, n)
        elif count < n:
            say(f"generating {n - count} history deliveries ({count} kept)…")
            _generate(runs, days, count, n)
        if count != n:
            _counters_rebuild(executions)
    written = time.monotonic() - started
    if count < n:
        say(
            f"history: {n - count} deliveries with their events and counters in "
            f"{written:.1f}s = {(n - count) / written:.0f} deliveries/s"
        )
    tables_vacuum_analyze(*HISTORY_TABLES)
    say(f"history ready in {time.monotonic() - started:.1f}s (VACUUM ANALYZE included)")


def _runs_ensure(days: int, *, prefix: str = HISTORY_PREFIX, ago: int = 0) -> list[dict[str, Any]]:
    """The history's campaigns, one a day up to `ago` days before today, each Completed
    with one execution: per day, its execution, version, actions and first send time.
    Other days' campaigns (another `days`) are dropped with their rows. Each month's
    executions are in a partition of their own, as a year of sending would have left
    them (campaigns.delivery.partitions)."""
    names = [f"{prefix}{day + 1:03d}/{days}" for day in range(days)]
    stale = history_campaigns(prefix).exclude(name__in=names)
    _campaigns_delete(stale)
    found = {c.name: c for c in history_campaigns(prefix)}
    segment, _ = Segment.objects.update_or_create(
        name="bench history",
        defaults={
            "kind": SegmentKind.RULES,
            "rules": {
                "all": [{"field": "external_id", "op": "startswith", "value": PROFILE_PREFIX}]
            },
        },
    )
    actions = []
    for channel in CHANNELS:
        preset, _ = MessagePreset.objects.update_or_create(
            name=f"bench {channel}", defaults={"channel": channel, **PRESET_FIELDS[channel]}
        )
        subject, body = CONTENT[channel]
        actions.append({"channel": channel, "preset": preset, "subject": subject, "body": body})
    today = timezone.now().replace(hour=9, minute=0, second=0, microsecond=0)
    runs = []
    for day, name in enumerate(names):
        campaign = found.get(name) or _campaign_create(
            name, segment, actions, today - dt.timedelta(days=days - day + ago)
        )
        execution = Execution.objects.filter(campaign=campaign).get()
        by_channel = dict(
            ChannelAction.objects.filter(version_id=execution.version_id).values_list(
                "channel", "pk"
            )
        )
        runs.append(
            {
                "day": day,
                "execution": execution.pk,
                "version": execution.version_id,
                "email": by_channel[ChannelKind.EMAIL],
                "sms": by_channel[ChannelKind.SMS],
                "first_send": execution.started_at,
            }
        )
    return runs


def _campaigns_delete(campaigns: QuerySet[Campaign]) -> None:
    """The campaigns, their executions and every row of them."""
    if not campaigns.exists():
        return
    runs = Execution.objects.filter(campaign__in=campaigns)
    _rows_delete(list(runs.values_list("pk", flat=True)))
    # First what keeps a version from going: its executions, the campaign's pointers
    # (a campaign without a live version is a Draft).
    runs.delete()
    campaigns.update(status=CampaignStatus.DRAFT, live_version=None, draft_version=None)
    campaigns.delete()


def _campaign_create(
    name: str, segment: Segment, actions: list[dict[str, Any]], first_send: dt.datetime
) -> Campaign:
    campaign = services.campaign_create(
        user=None, name=name, type=CampaignType.MARKETING, segment=segment, actions=actions
    )
    version = campaign.draft_version
    assert version is not None
    # A campaign that went Live on its day and completed: set as a fixture is, not walked
    # through the lifecycle (which would plan and send it).
    Campaign.objects.filter(pk=campaign.pk).update(
        status=CampaignStatus.COMPLETED,
        live_version=version,
        draft_version=None,
        started_at=first_send,
        created_at=first_send - dt.timedelta(days=1),
        updated_at=first_send + dt.timedelta(hours=1),
    )
    type(version).objects.filter(pk=version.pk).update(activated_at=first_send)
    partitions_roll(now=first_send)
    execution = Execution.objects.create(
        campaign=campaign,
        version=version,
        status=ExecutionStatus.COMPLETED,
        scheduled_for=first_send,
        planning_done=True,
    )
    Execution.objects.filter(pk=execution.pk).update(
        started_at=first_send, finished_at=first_send + dt.timedelta(hours=1)
    )
    return campaign


def _table(model: Any) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _runs_table(cursor: Any, runs: list[dict[str, Any]]) -> None:
    """The temporary table bench_history_runs: one row per day."""
    cursor.execute("DROP TABLE IF EXISTS bench_history_runs")
    cursor.execute(
        "CREATE TEMPORARY TABLE bench_history_runs (day integer PRIMARY KEY, "
        "execution_id bigint, version_id bigint, email_id bigint, sms_id bigint, "
        "first_send timestamptz)"
    )
    cursor.executemany(
        "INSERT INTO bench_history_runs VALUES (%s, %s, %s, %s, %s, %s)",
        [
            (r["day"], r["execution"], r["version"], r["email"], r["sms"], r["first_send"])
            for r in runs
        ],
    )


def _generate(runs: list[dict[str, Any]], days: int, first: int, n: int) -> None:
    """Insert history rows first … n - 1, their events and engagement rows."""
    profiles = math.ceil(n / (days * len(CHANNELS)))
    delivery = _table(Delivery)
    pm = "(g * 2654435761 %% 4294967296 %% 1000)"  # row g's outcome, 0..999
    skip_reason = " ".join(
        f"WHEN {pm} < {SKIPPED * (i + 1) // len(SKIP_REASONS)} THEN '{reason}'"
        for i, reason in enumerate(SKIP_REASONS)
    )
    with connection.cursor() as cursor:
        _runs_table(cursor, runs)
        cursor.execute("DROP TABLE IF EXISTS bench_history_profiles")
        cursor.execute(
            "CREATE TEMPORARY TABLE bench_history_profiles AS "
            "SELECT (row_number() OVER (ORDER BY id) - 1)::bigint AS p, id, email, phone "
            f"FROM {_table(Profile)} WHERE external_id LIKE %s ORDER BY id LIMIT %s",
            [f"{PROFILE_PREFIX}%", profiles],
        )
        cursor.execute("ALTER TABLE bench_history_profiles ADD PRIMARY KEY (p)")
        cursor.execute(f"SELECT coalesce(max(id), 0) FROM {delivery}")
        (before,) = cursor.fetchone()
        # The ids drawn in g's order (the sequence Django's identity column draws from).
        cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [Delivery._meta.db_table])
        (sequence,) = cursor.fetchone()
        sent_at = f"r.first_send + make_interval(secs => (s.g / {days}) / {SEND_RATE}.0)"
        cursor.execute(
            f"INSERT INTO {delivery} (id, execution_id, action_id, profile_id, status, "
            "version_id, reason, attempts, provider_message_id, error, sent_at, updated_at) "
            f"SELECT s.id, r.execution_id, CASE WHEN s.c = 0 THEN r.email_id ELSE r.sms_id END, "
            "p.id, s.status, r.version_id, s.reason, "
            "CASE WHEN s.status = 'skipped' THEN 0 ELSE 1 END, "
            "CASE WHEN s.status <> 'sent' THEN '' WHEN s.c = 0 THEN "
            f"(extract(epoch FROM {sent_at}) * 100)::bigint || '.' || (4000 + r.day) || '.' || "
            "(s.g * 1000003 %% 9000000000000000 + 1000000000000000000)::text || '.salvo.' || "
            "s.id || '@example.com' "
            # A Twilio SID's form (SM and 32 hex digits), its first 8 the send time's: in
            # roughly the rows' order, so the events' index of it is not split at random
            # while it grows by millions (real SIDs are random; the index ends the same size).
            f"ELSE 'SM' || lpad(to_hex(extract(epoch FROM {sent_at})::bigint), 8, '0') || "
            "left(md5(s.g::text), 24) END, "
            "CASE WHEN s.status = 'failed' THEN "
            "'Refused by the provider: 550 5.1.1 mailbox unavailable' ELSE '' END, "
            f"CASE WHEN s.status = 'sent' THEN {sent_at} END, {sent_at} "
            "FROM (SELECT g, nextval(%s) AS id, g %% %s AS day, (g / %s) %% 2 AS c, "
            "g / %s / 2 AS p, "
            f"CASE WHEN {pm} < {SKIPPED} THEN 'skipped' WHEN {pm} < {FAILED} THEN 'failed' "
            "ELSE 'sent' END AS status, "
            f"CASE {skip_reason} WHEN {pm} < {FAILED} THEN 'provider_refused' ELSE '' END "
            "AS reason FROM generate_series(%s::bigint, %s::bigint) AS g) AS s "
            "JOIN bench_history_runs r ON r.day = s.day "
            "JOIN bench_history_profiles p ON p.p = s.p",
            [sequence, days, days, days, first, n - 1],
        )
        _events_insert(cursor, before)
        cursor.execute("DROP TABLE bench_history_profiles")
        cursor.execute("DROP TABLE bench_history_runs")


def _events_insert(cursor: Any, after_id: int) -> None:
    """The events of the sent history rows with ids above after_id, and their
    DeliveryEngagement rows (the first event of each kind: here the only one)."""
    kinds = " UNION ALL ".join(
        f"SELECT '{channel}' AS channel, '{kind}' AS kind, {below} AS below, "
        f"interval '{after}' AS after"
        for channel, kind, below, after in EVENTS
    )
    chosen = (
        "FROM (SELECT d.*, CASE WHEN d.action_id = r.email_id THEN 'email' ELSE 'sms' END "
        "AS channel FROM {delivery} d JOIN bench_history_runs r ON r.execution_id = "
        "d.execution_id WHERE d.id > %s AND d.status = 'sent') AS d "
        f"JOIN ({kinds}) AS k ON k.channel = d.channel "
        "AND d.id * 2246822519 %% 4294967296 %% 1000 < k.below "
    ).format(delivery=_table(Delivery))
    cursor.execute(
        f"INSERT INTO {_table(DeliveryEvent)} (provider, event_id, kind, delivery_id, "
        "execution_id, provider_message_id, channel, recipient, occurred_at, received_at, "
        "detail) "
        f"SELECT CASE WHEN d.channel = 'email' THEN '{PROVIDERS[ChannelKind.EMAIL]}' "
        f"ELSE '{PROVIDERS[ChannelKind.SMS]}' END, "
        # Padded: in the ids' order, so the unique index is appended to, not split.
        "'bench-history-' || lpad(d.id::text, 12, '0') || '-' || k.kind, "
        "k.kind, d.id, d.execution_id, d.provider_message_id, d.channel, "
        "CASE WHEN d.channel = 'email' THEN p.email ELSE p.phone END, "
        "d.sent_at + k.after, d.sent_at + k.after + interval '1 second', "
        "CASE WHEN k.kind = 'clicked' THEN 'https://example.com/news?utm_source=salvo' "
        "ELSE '' END "
        f"{chosen}LEFT JOIN bench_history_profiles p ON p.id = d.profile_id",
        [after_id],
    )
    cursor.execute(
        f"INSERT INTO {_table(DeliveryEngagement)} (delivery_id, kind, execution_id, "
        f"action_id, version_id) SELECT d.id, k.kind, d.execution_id, d.action_id, d.version_id "
        f"{chosen}",
        [after_id],
    )


def _trim(executions: list[int], n: int) -> None:
    """Drop the history rows after the n-th (by id: g's order), with their events."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {_table(Delivery)} WHERE execution_id = ANY(%s) "
            "ORDER BY id OFFSET %s LIMIT 1",
            [executions, n],
        )
        (cutoff,) = cursor.fetchone()
        _rows_delete(executions, from_id=cutoff)


def _rows_delete(executions: list[int], *, from_id: int = 0) -> None:
    """Delete the executions' delivery rows with ids from from_id, their events and
    engagement rows (and, from the first row, their counters)."""
    if not executions:
        return
    with connection.cursor() as cursor:
        for table, row in (
            (_table(DeliveryEvent), "delivery_id"),
            (_table(DeliveryEngagement), "delivery_id"),
            (_table(Delivery), "id"),
        ):
            cursor.execute(
                f"DELETE FROM {table} WHERE execution_id = ANY(%s) AND {row} >= %s",
                [executions, from_id],
            )
        if not from_id:
            for counter in (DeliveryCount, DeliveryTimeline, EngagementCount):
                cursor.execute(
                    f"DELETE FROM {_table(counter)} WHERE execution_id = ANY(%s)", [executions]
                )


def _counters_rebuild(executions: list[int]) -> None:
    """The counters the history campaigns' reports read, counted from their rows, and
    each execution's audience size."""
    delivery = _table(Delivery)
    count = connection.ops.quote_name("count")
    finished_at = "coalesce(sent_at, updated_at)"
    with connection.cursor() as cursor:
        for model in (DeliveryCount, DeliveryTimeline, EngagementCount):
            cursor.execute(
                f"DELETE FROM {_table(model)} WHERE execution_id = ANY(%s)", [executions]
            )
        cursor.execute(
            f"INSERT INTO {_table(DeliveryCount)} (execution_id, action_id, version_id, status, "
            f"reason, {count}) SELECT execution_id, action_id, version_id, status, reason, "
            f"count(*) FROM {delivery} WHERE execution_id = ANY(%s) "
            "GROUP BY execution_id, action_id, version_id, status, reason",
            [executions],
        )
        cursor.execute(
            f"INSERT INTO {_table(DeliveryTimeline)} (execution_id, action_id, bucket, status, "
            f"{count}) SELECT execution_id, action_id, floor(extract(epoch FROM {finished_at}) "
            f"/ {TIMELINE_BUCKET_S})::bigint * {TIMELINE_BUCKET_S}, status, count(*) "
            f"FROM {delivery} WHERE execution_id = ANY(%s) AND status <> 'pending' "
            "GROUP BY 1, 2, 3, 4",
            [executions],
        )
        cursor.execute(
            f"INSERT INTO {_table(EngagementCount)} (execution_id, action_id, version_id, kind, "
            f"{count}) SELECT execution_id, action_id, version_id, kind, count(*) "
            f"FROM {_table(DeliveryEngagement)} WHERE execution_id = ANY(%s) "
            "GROUP BY 1, 2, 3, 4",
            [executions],
        )
        cursor.execute(
            f"UPDATE {_table(Execution)} e SET audience_size = a.n FROM (SELECT execution_id, "
            f"max(n) AS n FROM (SELECT execution_id, action_id, sum({count}) AS n "
            f"FROM {_table(DeliveryCount)} WHERE execution_id = ANY(%s) GROUP BY 1, 2) "
            "AS per_action GROUP BY 1) AS a WHERE e.id = a.execution_id",
            [executions],
        )


def delivery_table_size() -> dict[str, int]:
    """The delivery table on disk: ``rows``, ``table_bytes`` (the heap), ``index_bytes``,
    ``total_bytes`` (pg_total_relation_size: heap, indexes and TOAST) and
    ``bytes_per_delivery`` (total over rows, rounded)."""
    refused = postgres_required("bytes_per_delivery")
    if refused:
        raise BenchmarkError(refused)
    with connection.cursor() as cursor:
        # Its partitions' (campaigns.delivery.partitions): the parent holds no row.
        cursor.execute(
            "SELECT sum(pg_relation_size(relid)), sum(pg_indexes_size(relid)), "
            "sum(pg_total_relation_size(relid)) FROM pg_partition_tree(%s) WHERE isleaf",
            [Delivery._meta.db_table],
        )
        heap, indexes, total = (int(n or 0) for n in cursor.fetchone())
        cursor.execute(f"SELECT count(*) FROM {_table(Delivery)}")
        (rows,) = cursor.fetchone()
    return {
        "rows": rows,
        "table_bytes": heap,
        "index_bytes": indexes,
        "total_bytes": total,
        "bytes_per_delivery": round(total / rows) if rows else 0,
    }


def retention_figure(n: int, *, say: Callable[[str], None]) -> Retention | None:
    """``retention_drop_s``: the seconds retention takes to drop a month of deliveries as
    large as the history's (n / 12 rows of 30 campaigns, with their events, ended about
    14 months ago, in a partition of their own), while the history (within the year) stays.
    The month is generated for the measure and gone after it; what retention did (its
    seconds, and of those the partitions' detach and drop), None when n < 12."""
    rows = n // 12
    if rows == 0:
        return None
    partition_open_next()
    runs = _runs_ensure(EXPIRED_DAYS, prefix=EXPIRED_PREFIX, ago=EXPIRED_AGO)
    executions = [run["execution"] for run in runs]
    say(f"retention: generating a month of {rows} expired deliveries…")
    _generate(runs, EXPIRED_DAYS, 0, rows)
    _counters_rebuild(executions)
    partition_open_next()
    tables_vacuum_analyze(*HISTORY_TABLES)
    dropped = deliveries_drop_expired(days=RETENTION_DAYS)
    say(f"retention_drop_s = {dropped.seconds:.2f}: {dropped.words()}")
    if dropped.deliveries != rows:
        raise BenchmarkError(f"retention dropped {dropped.deliveries} deliveries, not {rows}.")
    _campaigns_delete(history_campaigns(EXPIRED_PREFIX))
    return dropped


def history_figures(n: int, *, say: Callable[[str], None]) -> dict[str, Any]:
    """The summary's ``history_deliveries``, ``bytes_per_delivery`` and
    ``retention_drop_s`` (None on another database than PostgreSQL), each said as a line
    with what they are made of."""
    say(f"history: {n} delivery rows of {HISTORY_PREFIX.strip()} campaigns in the tables")
    if postgres_required("bytes_per_delivery"):
        return {
            "history_deliveries": n,
            "bytes_per_delivery": None,
            "retention_drop_s": None,
            "retention_partition_drop_s": None,
        }
    size = delivery_table_size()
    mb = 1024 * 1024
    say(
        f"bytes_per_delivery = {size['bytes_per_delivery']}: {Delivery._meta.db_table} "
        f"{size['total_bytes'] / mb:.1f} MB on disk (heap {size['table_bytes'] / mb:.1f} MB, "
        f"indexes {size['index_bytes'] / mb:.1f} MB, TOAST and maps "
        f"{(size['total_bytes'] - size['table_bytes'] - size['index_bytes']) / mb:.1f} MB) "
        f"for {size['rows']} rows"
    )
    drop = retention_figure(n, say=say)
    return {
        "history_deliveries": n,
        "bytes_per_delivery": size["bytes_per_delivery"],
        "retention_drop_s": round(drop.seconds, 3) if drop else None,
        "retention_partition_drop_s": round(drop.drop_seconds, 3) if drop else None,
    }
