"""Everything the delivery engine says to the database in its own words: the SQL that
differs between PostgreSQL and SQLite, and the raw statements that make a batch cheap.

Exactly once. A row stays pending until its outcome is recorded, and a worker holds the
rows it is sending from reading them until the outcome is recorded, so two copies of a
batch never send the same row. How it holds them depends on the database:

* PostgreSQL: one transaction per chunk locks the due rows (``FOR UPDATE SKIP LOCKED``: a
  second copy of the batch skips them), renders, sends and records (``due_lock``). A
  worker killed mid-send rolls back: its rows are still pending, unlocked as soon as its
  connection drops, and are sent by the redelivered batch.
* SQLite has one writer at a time, so no transaction may stay open while a chunk renders
  or waits for the provider: every other write (Stop, an edit) would wait behind it. A
  short transaction *claims* the due rows instead (``due_claim``: a claim id, and
  ``next_attempt_at`` moved to the end of a lease of SALVO_DELIVERY_SENDING_TIMEOUT_S, so
  that they are not due for anyone else), the chunk renders with no transaction open, a
  second short transaction renews the lease of the rows still claimed just before the
  provider call (``claim_renew``), and a third records the outcomes of the rows that
  still carry this claim, and only those (``outcomes_record``). A worker killed mid-send
  leaves its rows claimed: they are due again when the lease ends.

Stop. On PostgreSQL a chunk holds the campaign's send lock in share mode (an advisory
lock: unlike a row lock it queues new holders behind a waiting Stop, so a steady stream of
chunks cannot starve it) from the moment it checks the campaign (``sending_version`` with
`hold`), after rendering, until it commits: Stop (``hold_campaign_sends``) waits for the
provider calls in flight, which the provider timeout bounds, never for rendering. On
SQLite each short transaction checks the campaign (the write lock orders it with Stop);
Stop waits for none of them, and a chunk already claimed when it commits is not sent.

Cost. Per recipient and channel the database writes the row once when planning
(``insert_deliveries``: one INSERT … SELECT) and once with its outcome (one UPDATE per
chunk; on SQLite, twice more to claim it and renew the lease); no index holds a column
that sending changes, so on PostgreSQL that second write is a heap-only update on the
row's own half-empty page. The counters (``DeliveryCount``, per action, version, status
and reason; ``DeliveryTimeline``, per 5-second bucket) move in one INSERT … ON CONFLICT
each, last in the chunk's transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from segments.models import CONSENT_FIELDS, PROFILE_DATA_FIELDS, AudienceMember, Profile

from ..choices import DeliveryReason, DeliveryStatus
from ..counters import counters_add
from ..models import Campaign, ChannelAction, Delivery, DeliveryCount, DeliveryTimeline, Execution
from ..selectors import SENDING_CAMPAIGN_STATUSES, timeline_bucket
from .partitions import partition_of
from .policy import Batch, DeliveryOutcome, Due

D = DeliveryStatus


def db_time(value: dt.datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def on_postgres() -> bool:
    return connection.vendor == "postgresql"


def table_name(model: Any) -> str:
    return connection.ops.quote_name(model._meta.db_table)


# The key space of the campaigns' send locks among PostgreSQL advisory locks ("SALV").
SEND_LOCK_SPACE = 0x53414C56


def _send_lock_key(campaign_id: int) -> list[int]:
    return [SEND_LOCK_SPACE, campaign_id & 0x7FFFFFFF]


def sending_version(campaign_id: int, *, hold: bool = False) -> int | None:
    """The campaign's running version, whose content goes out now; None once the campaign
    may no longer send. With `hold`, take its send lock in share mode until the
    transaction ends (PostgreSQL), so that a stop or the activation of a new version waits
    for what is being sent now, and nothing is sent with the old state once it has
    committed."""
    if hold and on_postgres():
        with connection.cursor() as cursor:
            sql = "SELECT pg_advisory_xact_lock_shared(%s, %s)"
            cursor.execute(sql, _send_lock_key(campaign_id))
    # Read after the lock is held: a new statement sees what a stop committed meanwhile.
    found = Campaign.objects.filter(
        pk=campaign_id, status__in=SENDING_CAMPAIGN_STATUSES
    ).values_list("live_version_id", flat=True)
    return next(iter(found), None)


def campaign_sending(campaign_id: int) -> bool:
    """Whether the campaign may still send."""
    return sending_version(campaign_id) is not None


def hold_campaign_sends(*, campaign_id: int) -> None:
    """Wait for the campaign's chunks that are on their way to the provider and keep new
    ones from sending until the current transaction ends: ``campaign_stop`` and the
    activation of a new version (``campaign_activation_complete``) call it first, so that
    nothing is sent with the old state once they have committed.

    On PostgreSQL the send lock in exclusive mode; a chunk that asks for it in share mode
    meanwhile queues behind. On SQLite nothing to do: the stop's transaction holds the
    write lock, and no transaction of a chunk lasts longer than a few statements."""
    if on_postgres():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", _send_lock_key(campaign_id))


def insert_deliveries(
    execution: Execution, first_key: int, last_key: int, *, now: dt.datetime | None = None
) -> Counter[int]:
    """One pending row per (action, audience member) for the snapshot's members with keys
    in [first_key, last_key]; idempotent. Returns how many rows each action got.

    A version sent in each recipient's time zone gives each row its due time in the same
    statement (``timing.execution_due_times``): the profile's zone joined with a table of
    one due time per zone (a JSON parameter), ``next_attempt_at`` and the reason
    ``recipient_time`` for a moment still ahead, nothing for one already passed."""
    from .timing import execution_due_times

    member = AudienceMember._meta
    snapshot_column = connection.ops.quote_name(member.get_field("snapshot").column)
    profile_column = connection.ops.quote_name(member.get_field("profile").column)
    key_column = connection.ops.quote_name(member.get_field("key").column)
    once_sql, once_params = _once_per_profile_condition(execution, f"m.{profile_column}")
    due_times = execution_due_times(execution, now=now or timezone.now())
    params: list[Any] = [execution.pk, D.PENDING]
    due_columns = due_values = due_join = ""
    if due_times is not None:
        zone = connection.ops.quote_name(Profile._meta.get_field("time_zone").column)
        if on_postgres():
            zones = (
                "(SELECT e->>0 AS name, (e->>1)::timestamptz AS due "
                "FROM jsonb_array_elements(%s::jsonb) AS e)"
            )
        else:
            zones = "(SELECT value->>0 AS name, value->>1 AS due FROM json_each(%s))"
        due = "(CASE WHEN z.name IS NULL THEN %s ELSE z.due END)"
        due_columns = ", next_attempt_at"
        due_values = f", CASE WHEN {due} IS NULL THEN '' ELSE %s END, {due}"
        due_join = (
            f"LEFT JOIN {table_name(Profile)} p ON p.id = m.{profile_column} "
            f"LEFT JOIN {zones} z ON z.name = p.{zone} "
        )
        default = db_time(due_times.default) if due_times.default else None
        params += [default, DeliveryReason.RECIPIENT_TIME, default]
        params.append(due_times.as_json(db_time))
        reason = ""
    else:
        reason = ", ''"
    # "WHERE" before ON CONFLICT also keeps SQLite from reading it as a join constraint.
    sql = (
        f"INSERT INTO {table_name(Delivery)} "
        "(execution_id, action_id, profile_id, status, attempts, provider_message_id, error, "
        f"reason{due_columns}) "
        f"SELECT %s, a.id, m.{profile_column}, %s, 0, '', ''{reason}{due_values} "
        f"FROM {table_name(AudienceMember)} m CROSS JOIN {table_name(ChannelAction)} a "
        f"{due_join}"
        f"WHERE m.{snapshot_column} = %s AND m.{key_column} BETWEEN %s AND %s "
        "AND a.version_id = %s "
        f"{once_sql}"
        "ON CONFLICT DO NOTHING RETURNING action_id"
    )
    params += [execution.snapshot_id, first_key, last_key, execution.version_id, *once_params]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return Counter(int(action_id) for (action_id,) in cursor.fetchall())


def _once_per_profile_condition(execution: Execution, profile: str) -> tuple[str, list[Any]]:
    """For a recurring campaign sending "once per profile": the condition that leaves out
    a profile an earlier occurrence already sent the action's channel to, and its
    parameters ("" when nothing is left out).

    The earlier executions, and the earlier actions of each channel, are named by id: each
    candidate row then costs probes of the delivery table's only index, (execution,
    action, profile), with every column given, never a scan of past deliveries."""
    if not execution.version.once_per_profile:
        return "", []
    earlier = list(
        Execution.objects.filter(campaign_id=execution.campaign_id, scheduled_for__isnull=False)
        .exclude(pk=execution.pk)
        .values_list("pk", flat=True)
    )
    if not earlier:
        return "", []
    by_channel: dict[str, list[int]] = {}
    for action_id, channel in ChannelAction.objects.filter(
        version__campaign_id=execution.campaign_id
    ).values_list("pk", "channel"):
        by_channel.setdefault(channel, []).append(action_id)
    sql, params = "", []
    for channel, actions in sorted(by_channel.items()):
        sql += (
            f"AND (a.channel <> %s OR NOT EXISTS (SELECT 1 FROM {table_name(Delivery)} d "
            f"WHERE d.execution_id IN ({', '.join(['%s'] * len(earlier))}) "
            f"AND d.action_id IN ({', '.join(['%s'] * len(actions))}) "
            f"AND d.profile_id = {profile} AND d.status = %s)) "
        )
        params += [channel, *earlier, *actions, D.SENT]
    return sql, params


def _pending_rows_of(
    table: str, execution_id: int, claim: uuid.UUID | None, params: list[Any]
) -> tuple[str, str]:
    """The condition of an UPDATE … FROM v that writes the execution's pending rows by the
    ids in `v`, and its SET clause's claim part: with `claim` (SQLite), only the rows that
    still carry it, whose claim it clears. Appends the parameters to `params`. The
    execution lets PostgreSQL read its partition alone (campaigns.delivery.partitions)."""
    params.append(execution_id)
    where = f"{table}.id = v.id AND {table}.status = %s AND {table}.execution_id = %s"
    if claim is None:
        return where, ""
    params.append(_claim_value(claim))
    return f"{where} AND {table}.claim = %s", ", claim = NULL"


def waiting_record(
    held: Sequence[tuple[int, dt.datetime]],
    *,
    execution_id: int,
    reason: str,
    text: Callable[[dt.datetime], str],
    claim: uuid.UUID | None = None,
) -> None:
    """Put pending rows back to wait, each until its moment, with `reason` and
    `text(moment)`, without counting an attempt; with `claim` (SQLite), only rows that
    still carry it, whose claim is then released. One UPDATE for all of them."""
    table = table_name(Delivery)
    document = json.dumps(
        [[delivery_id, db_time(until), text(until)] for delivery_id, until in held],
        separators=(",", ":"),
        default=str,
    )
    if on_postgres():
        source = (
            "(SELECT (e->>0)::bigint AS id, (e->>1)::timestamptz AS due, e->>2 AS text "
            "FROM jsonb_array_elements(%s::jsonb) AS e) AS v"
        )
    else:
        source = (
            "(SELECT value->>0 AS id, value->>1 AS due, value->>2 AS text FROM json_each(%s)) AS v"
        )
    params: list[Any] = [reason, document, D.PENDING]
    where, clear_claim = _pending_rows_of(table, execution_id, claim, params)
    sql = (
        f"UPDATE {table} SET next_attempt_at = v.due, reason = %s, error = v.text{clear_claim} "
        f"FROM {source} WHERE {where}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


# Columns read per recipient: identity, address, personalisation data and consent.
PROFILE_VALUES = ("id", *PROFILE_DATA_FIELDS, *CONSENT_FIELDS)


def statistics_refresh(*, execution_id: int, first_profile_id: int, inserted: int) -> None:
    """After planning a chunk on PostgreSQL: fresh statistics of the execution's partition
    of the delivery table (the one its batch queries read), or the planner reads a partition
    it believes empty with a sequential scan where they need the unique index. Not on the
    first chunk, one batch long (the first message must not wait for it), nor after a chunk
    smaller than a batch. The partition alone: ANALYZE of the whole table samples every
    partition, seconds with a year of history."""
    if on_postgres() and first_profile_id > 1 and inserted > settings.SALVO_DELIVERY_BATCH_SIZE:
        with connection.cursor() as cursor:
            partition = partition_of(cursor, execution_id)
            cursor.execute(f"ANALYZE {connection.ops.quote_name(partition.name)}")


def _due_rows_sql(*, where: str, suffix: str = "") -> str:
    """The query that reads deliveries of a batch with their recipients' data; its first
    two parameters are the batch's profile range (`_profile_range`), then `where`'s.

    The range bounds the profiles as well as the deliveries: the planner carries an
    equality across a join, never a range, and with some statistics of the run's partition
    it chose a merge join that read the profiles' index from the first profile to the
    batch's, on every batch (a year of history made the engine 20% slower that way)."""
    quote = connection.ops.quote_name
    columns = ", ".join(
        # As text: a recipient whose attributes cannot be decoded fails alone, in prepare.
        f"CAST(p.{quote(name)} AS text)" if name == "attributes" else f"p.{quote(name)}"
        for name in PROFILE_VALUES
    )
    return (
        f"SELECT d.id, d.attempts, {columns} "
        f"FROM {table_name(Delivery)} d LEFT JOIN {table_name(Profile)} p ON p.id = d.profile_id "
        f"AND p.id BETWEEN %s AND %s WHERE {where} ORDER BY d.profile_id{suffix}"
    )


def _profile_range(batch: Batch) -> list[int]:
    return [batch.first_profile_id, batch.last_profile_id]


_DUE = (
    "d.execution_id = %s AND d.action_id = %s AND d.profile_id BETWEEN %s AND %s "
    "AND d.status = %s AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= %s)"
)


def _due_params(batch: Batch, *, now: dt.datetime) -> list[Any]:
    return [*batch.as_args(), D.PENDING, db_time(now)]


def _read_due(cursor: Any) -> list[Due]:
    due = []
    for delivery_id, attempts, *values in cursor.fetchall():
        profile = dict(zip(PROFILE_VALUES, values, strict=True)) if values[0] is not None else None
        due.append(Due(int(delivery_id), int(attempts) + 1, profile))
    return due


def due_lock(batch: Batch, *, limit: int, now: dt.datetime) -> list[Due]:
    """PostgreSQL: up to `limit` deliveries of the batch that are due, with their
    recipients' data, locked until the transaction ends. Rows that another worker holds
    are skipped, so two copies of one batch never take the same row; a worker that dies
    releases its rows with its connection."""
    sql = _due_rows_sql(where=_DUE, suffix=" LIMIT %s FOR UPDATE OF d SKIP LOCKED")
    with connection.cursor() as cursor:
        cursor.execute(sql, [*_profile_range(batch), *_due_params(batch, now=now), limit])
        return _read_due(cursor)


def _claim_value(claim: uuid.UUID) -> Any:
    return Delivery._meta.get_field("claim").get_db_prep_value(claim, connection)


def _lease_end(now: dt.datetime) -> Any:
    return db_time(now + dt.timedelta(seconds=settings.SALVO_DELIVERY_SENDING_TIMEOUT_S))


def due_claim(batch: Batch, *, limit: int, now: dt.datetime, claim: uuid.UUID) -> list[Due]:
    """SQLite: claim up to `limit` deliveries of the batch that are due, and return them
    with their recipients' data. Call inside a (short) transaction.

    A claimed row carries `claim` and is not due for anyone else before the end of its
    lease (``next_attempt_at``): a second copy of the batch skips it, and if this worker
    dies the row is due again when the lease ends."""
    table = table_name(Delivery)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET claim = %s, next_attempt_at = %s WHERE id IN ("
            f"SELECT d.id FROM {table} d WHERE {_DUE} ORDER BY d.profile_id LIMIT %s)",
            [_claim_value(claim), _lease_end(now), *_due_params(batch, now=now), limit],
        )
        where = (
            "d.execution_id = %s AND d.action_id = %s AND d.profile_id BETWEEN %s AND %s "
            "AND d.claim = %s"
        )
        cursor.execute(
            _due_rows_sql(where=where),
            [*_profile_range(batch), *batch.as_args(), _claim_value(claim)],
        )
        return _read_due(cursor)


def _ids_document(ids: Sequence[int]) -> str:
    return json.dumps(list(ids), separators=(",", ":"))


def claim_renew(ids: Sequence[int], *, claim: uuid.UUID, now: dt.datetime) -> set[int]:
    """SQLite: a new lease for those of `ids` that still carry `claim` (their lease may
    have ended while the chunk rendered, and another worker claimed them); their ids."""
    table = table_name(Delivery)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET next_attempt_at = %s "
            f"WHERE id IN (SELECT value FROM json_each(%s)) AND claim = %s AND status = %s "
            "RETURNING id",
            [_lease_end(now), _ids_document(ids), _claim_value(claim), D.PENDING],
        )
        return {int(delivery_id) for (delivery_id,) in cursor.fetchall()}


def claim_release(ids: Sequence[int], *, claim: uuid.UUID) -> None:
    """SQLite: let go of claimed rows that will not be sent (the campaign was stopped)."""
    table = table_name(Delivery)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET claim = NULL "
            f"WHERE id IN (SELECT value FROM json_each(%s)) AND claim = %s",
            [_ids_document(ids), _claim_value(claim)],
        )


def outcomes_record(
    outcomes: Sequence[DeliveryOutcome],
    *,
    execution_id: int,
    now: dt.datetime,
    version_id: int,
    claim: uuid.UUID | None = None,
) -> set[int]:
    """Write every outcome of a chunk with one UPDATE of its (pending) rows, each with the
    version whose content decided it; with `claim` (SQLite), only of the rows that still
    carry it, whose claim it then clears. Returns the ids of the rows written.

    The outcomes travel as one JSON parameter: the driver would otherwise quote thousands
    of parameters one by one, which costs more than the update."""
    if not outcomes:
        return set()
    document = json.dumps(
        [
            [
                o.delivery_id,
                o.status,
                o.text[:10_000],
                db_time(o.next_attempt_at) if o.next_attempt_at else None,
                o.reason,
            ]
            for o in outcomes
        ],
        separators=(",", ":"),
        default=str,
    )
    table = table_name(Delivery)
    at = db_time(now)
    params: list[Any] = [D.SENT, D.SENT, D.SENT, at, version_id, at, document, D.PENDING]
    if on_postgres():
        source = (
            "(SELECT (e->>0)::bigint AS id, e->>1 AS status, e->>2 AS text, "
            "(e->>3)::timestamptz AS due, e->>4 AS reason "
            "FROM jsonb_array_elements(%s::jsonb) AS e) AS v"
        )
    else:
        source = (
            "(SELECT value->>0 AS id, value->>1 AS status, value->>2 AS text, "
            "value->>3 AS due, value->>4 AS reason FROM json_each(%s)) AS v"
        )
    where, clear_claim = _pending_rows_of(table, execution_id, claim, params)
    sql = (
        f"UPDATE {table} SET status = v.status, attempts = {table}.attempts + 1, "
        "provider_message_id = CASE WHEN v.status = %s THEN v.text ELSE '' END, "
        "error = CASE WHEN v.status = %s THEN '' ELSE v.text END, "
        "next_attempt_at = v.due, sent_at = CASE WHEN v.status = %s THEN %s END, "
        f"reason = v.reason, version_id = %s, updated_at = %s{clear_claim} "
        f"FROM {source} WHERE {where}"
    )
    with connection.cursor() as cursor:
        if claim is None:
            cursor.execute(sql, params)
            return {o.delivery_id for o in outcomes}
        cursor.execute(f"{sql} RETURNING {table}.id", params)
        return {int(delivery_id) for (delivery_id,) in cursor.fetchall()}


# A counter's key: (action, version, status, reason); see DeliveryCount.
CountKey = tuple[int, int, str, str]


def counts_add(execution_id: int, changes: Mapping[CountKey, int]) -> None:
    """Add to the (action, version, status, reason) counters of an execution, in one
    statement, last in its transaction (``campaigns.counters``)."""
    counters_add(
        DeliveryCount,
        ("execution_id", "action_id", "version_id", "status", "reason"),
        {(execution_id, *key): n for key, n in changes.items()},
    )


def timeline_add(
    execution_id: int, action_id: int, outcomes: Sequence[DeliveryOutcome], *, now: dt.datetime
) -> None:
    """Add the chunk's finished outcomes to the execution's timeline bucket of `now`, in
    one statement, after `counts_add` (the same order in every transaction)."""
    finished = Counter(o.status for o in outcomes if o.status != D.PENDING)
    bucket = timeline_bucket(now)
    counters_add(
        DeliveryTimeline,
        ("execution_id", "action_id", "bucket", "status"),
        {(execution_id, action_id, bucket, status): n for status, n in finished.items()},
    )
