"""The delivery table's partitions on PostgreSQL, and those of the rows about its
deliveries: what makes a year of history cheap to keep and cheap to let go.

``campaigns_delivery`` is partitioned by RANGE of ``execution_id`` (migration 0022), so an
execution's deliveries are all in one partition: its unique (execution, action, profile)
holds within the partition, and every query of one execution reads one partition. Each
partition covers ``EXECUTIONS_PER_PARTITION`` execution ids, from a multiple of it (the one
the migration made from the rows already there starts at MINVALUE). A partition is a month
of executions: once the open one (the one the next execution id falls in) holds an
execution that started in an earlier calendar month (UTC), ``partitions_roll`` creates the
next partition and moves the executions' id sequence to its start. Execution ids therefore
jump at a month's start; they stay unique and increasing.

The rows about the deliveries, their provider events and engagement rows
(``ABOUT_DELIVERIES``), are partitioned the same way (migration 0023), and each new
partition of the deliveries is made with theirs: an execution's events are beside its
deliveries. Events that name no delivery (execution 0) are in a partition of their own,
below every execution (``campaigns_deliveryevent_unattached``). Retention
(``campaigns.retention``) then drops a month's partitions whole, in a second whatever their
size, once every execution in them ended before the cutoff.

A partition exists for every execution before its deliveries are written:
``partition_ensure`` runs when an execution is created (``post_save``), and creates the
next partition when a month held more executions than a partition's range (the sequence
went past it).
New partitions are made as tables of their own, then attached: attaching an empty table
takes only a SHARE UPDATE EXCLUSIVE lock on the parent, so sending goes on meanwhile.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import connection, models, transaction

from ..models import Delivery, DeliveryEngagement, DeliveryEvent, Execution

# The tables partitioned with the deliveries, by the execution of the delivery each row is
# about: they go with it.
ABOUT_DELIVERIES: tuple[type[models.Model], ...] = (DeliveryEvent, DeliveryEngagement)
# Every table partitioned by execution: each month has a partition of each.
PARTITIONED: tuple[type[models.Model], ...] = (Delivery, *ABOUT_DELIVERIES)
# Execution ids per partition: a month's executions, with room for API-triggered campaigns
# (one execution per call); a busier month opens the next partition early.
EXECUTIONS_PER_PARTITION = 1_000_000
# Transaction-level advisory lock key of every change of the partitions ("deli" in ASCII).
_LOCK_KEY = 0x64656C69
# Half the page left free: see migration 0003 (an outcome is a heap-only update).
_STORAGE = "WITH (fillfactor = 50)"
_BOUND = re.compile(r"FROM \((?P<low>[^)]*)\) TO \((?P<high>[^)]*)\)")


@dataclass(frozen=True)
class Partition:
    """One partition: the execution ids it holds, from ``low`` (None: any lower id) up to
    ``high`` (excluded)."""

    name: str
    low: int | None
    high: int

    def holds(self, execution_id: int) -> bool:
        return (self.low is None or self.low <= execution_id) and execution_id < self.high


def partitioned() -> bool:
    """Whether the delivery table is partitioned: on PostgreSQL, always (migration 0022)."""
    return connection.vendor == "postgresql"


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def _bound(text: str) -> int | None:
    text = text.strip().strip("'")
    return None if text.upper() == "MINVALUE" else int(text)


def partitions_list(cursor: Any, model: type[models.Model] = Delivery) -> list[Partition]:
    """The partitions of the model's table (the deliveries' by default), lowest first."""
    cursor.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
        [model._meta.db_table],
    )
    found = []
    for name, bound in cursor.fetchall():
        match = _BOUND.search(bound)
        assert match is not None, bound  # every partition is a range (migrations 0022, 0023)
        high = _bound(match["high"])
        assert high is not None
        found.append(Partition(name, _bound(match["low"]), high))
    return sorted(found, key=lambda p: p.high)


def partition_of(cursor: Any, execution_id: int) -> Partition:
    """The partition that holds the execution's deliveries."""
    return next(p for p in partitions_list(cursor) if p.holds(execution_id))


def _execution_sequence(cursor: Any) -> str:
    cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [Execution._meta.db_table])
    (sequence,) = cursor.fetchone()
    return str(sequence)


def next_execution_id(cursor: Any) -> int:
    """The id the next execution will get (the sequence is not moved)."""
    cursor.execute(f"SELECT last_value, is_called FROM {_execution_sequence(cursor)}")
    last, called = cursor.fetchone()
    return int(last) + 1 if called else int(last)


def partition_within(
    cursor: Any, model: type[models.Model], partition: Partition
) -> Partition | None:
    """The partition of the model's table that holds the rows about the deliveries of
    `partition` and nothing else, if it has one: not when the table's rows of those
    executions share a partition with newer ones (those it held before migration 0023)."""
    return next(
        (
            own
            for own in partitions_list(cursor, model)
            if own.high == partition.high
            and (partition.low is None or (own.low is not None and own.low >= partition.low))
        ),
        None,
    )


def _name(model: type[models.Model], low: int) -> str:
    """The name of the model's partition of execution ids from `low`."""
    return f"{model._meta.db_table}_{low // EXECUTIONS_PER_PARTITION}"


def _create(cursor: Any, low: int) -> Partition:
    """The deliveries' partition of execution ids from `low` (a multiple of the range), and
    those of the rows about them, each created detached and then attached."""
    high = low + EXECUTIONS_PER_PARTITION
    for model in PARTITIONED:
        table, name = model._meta.db_table, _name(model, low)
        storage = _STORAGE if model is Delivery else ""
        cursor.execute(
            f"CREATE TABLE {_quote(name)} (LIKE {_quote(table)} INCLUDING CONSTRAINTS) {storage}"
        )
        cursor.execute(
            f"ALTER TABLE {_quote(table)} ATTACH PARTITION {_quote(name)} "
            f"FOR VALUES FROM ({low}) TO ({high})"
        )
    return Partition(_name(Delivery, low), low, high)


def partition_ensure(execution_id: int) -> None:
    """Make sure the partition its deliveries go to exists (nothing to do on SQLite, and
    nearly always on PostgreSQL, where one catalog query says so). Run in the transaction
    that created the execution: a partition created then goes if that transaction does."""
    if not partitioned():
        return
    with connection.cursor() as cursor:
        if execution_id < partitions_list(cursor)[-1].high:
            return
    with _changing() as cursor:
        _ensure(cursor, execution_id)


def partition_ensure_for_new(sender: Any, instance: Execution, created: bool, **_: Any) -> None:
    """``post_save`` of an execution: `partition_ensure` for a new one."""
    if created:
        partition_ensure(instance.pk)


@contextmanager
def _changing() -> Iterator[Any]:
    """A cursor in a transaction that holds the lock of every change of the partitions:
    of two processes (two schedulers, two executions created at once), the second sees
    what the first did, and a change is whole or not at all (PostgreSQL's DDL is
    transactional)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        yield cursor


def _ensure(cursor: Any, execution_id: int) -> None:
    top = partitions_list(cursor)[-1]
    while execution_id >= top.high:
        top = _create(cursor, top.high)


def _open_partition(cursor: Any) -> Partition:
    """The partition the next execution goes to (created if the sequence went past the
    last one)."""
    next_id = next_execution_id(cursor)
    _ensure(cursor, next_id)
    return partition_of(cursor, next_id)


def _open_next(cursor: Any, open_: Partition) -> Partition:
    """The partition after the open one, created if need be; the next execution's id is
    its first."""
    following = next((p for p in partitions_list(cursor) if p.low == open_.high), None)
    if following is None:
        following = _create(cursor, open_.high)
    cursor.execute("SELECT setval(%s, %s, false)", [_execution_sequence(cursor), following.low])
    return following


def partitions_roll(*, now: dt.datetime) -> Partition | None:
    """Start a new month's partition when the open one holds an execution that started in
    an earlier month than `now`'s (UTC): the next execution gets the first id of the new
    partition. Returns that partition, if any (None on SQLite). Run by the scheduler every
    hour; the history benchmark runs it with its own `now`."""
    if not partitioned():
        return None
    with _changing() as cursor:
        open_ = _open_partition(cursor)
        first = executions_of(open_).order_by("pk").values_list("started_at", flat=True).first()
        if first is None:
            return None
        first_utc, now_utc = first.astimezone(dt.UTC), now.astimezone(dt.UTC)
        if (first_utc.year, first_utc.month) >= (now_utc.year, now_utc.month):
            return None
        return _open_next(cursor, open_)


def partition_open_next() -> Partition | None:
    """Start the next partition now, whatever the month (None on SQLite): the history
    benchmark's way to give a month of runs from the past a partition of its own."""
    if not partitioned():
        return None
    with _changing() as cursor:
        return _open_next(cursor, _open_partition(cursor))


def executions_of(partition: Partition) -> Any:
    """The executions whose deliveries the partition holds."""
    executions = Execution.objects.filter(pk__lt=partition.high)
    if partition.low is not None:
        executions = executions.filter(pk__gte=partition.low)
    return executions


def partitions_closed(cursor: Any) -> list[Partition]:
    """The partitions no new execution can go to (below the open one), lowest first."""
    next_id = next_execution_id(cursor)
    return [p for p in partitions_list(cursor) if p.high <= next_id]


def partitioned_tables_analyze(*, missing_only: bool) -> None:
    """ANALYZE the partitioned tables (PostgreSQL; all of them, or those with no statistics
    yet when `missing_only`). Autovacuum analyzes each partition but never a partitioned
    table itself, and without statistics of its own the planner takes a join to the whole
    table (by delivery id alone, as provider events are recorded) to match 1/200 of its
    rows: with 80M deliveries, a hundred events were costed as a sort of
    millions of rows and compiled by JIT on every statement: 1,016 events a second, 7,875
    once analyzed. ANALYZE of a partitioned table samples all its partitions and refreshes
    theirs too: the scheduler runs it when a month's partition opens, and for a table that
    has none (after migration 0022 or 0023)."""
    if not partitioned():
        return
    with connection.cursor() as cursor:
        for model in PARTITIONED:
            table = model._meta.db_table
            if missing_only:
                cursor.execute(
                    "SELECT EXISTS (SELECT 1 FROM pg_stats WHERE schemaname = current_schema() "
                    "AND tablename = %s AND inherited)",
                    [table],
                )
                if cursor.fetchone()[0]:
                    continue
            cursor.execute(f"ANALYZE {_quote(table)}")


def partition_detach_and_drop(
    cursor: Any, partition: Partition, model: type[models.Model] = Delivery
) -> None:
    """Detach the partition of the model's table (the deliveries' by default) and drop it.
    Outside a transaction, CONCURRENTLY: the parent is then never locked against the
    workers sending meanwhile (a test's transaction, which cannot, locks it for the instant
    of its own detach)."""
    table, name = _quote(model._meta.db_table), _quote(partition.name)
    cursor.execute(
        "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = %s::regclass",
        [partition.name],
    )
    # A concurrent detach that was interrupted (its second transaction) is only finished.
    if cursor.fetchone()[0]:
        how = " FINALIZE"
    else:
        how = "" if connection.in_atomic_block else " CONCURRENTLY"
    cursor.execute(f"ALTER TABLE {table} DETACH PARTITION {name}{how}")
    cursor.execute(f"DROP TABLE {name}")
