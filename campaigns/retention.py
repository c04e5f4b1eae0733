"""Retention: the deliveries of runs that ended more than N days ago are dropped, with the
provider events and engagement rows about them; the runs themselves stay, with the counters
every report reads (``DeliveryCount``, ``DeliveryTimeline``, ``EngagementCount``), so a
campaign's report says the same after as before. Each run dropped is marked
(``Execution.deliveries_dropped_at``): its deliveries are no longer listed, and the report
says why.

On PostgreSQL the deliveries go a partition at a time (``campaigns.delivery.partitions``: a
month of runs each), with the partitions of their events and engagement rows, in about a
second whatever their number: a month's partitions are dropped once every run in it ended
before the cutoff, so a run's deliveries are kept at least N days, and at most until the
last run of its month is N days old too. (The engagement rows of the months before
migration 0023 share one partition: they are deleted with their month's deliveries.) On
SQLite, which has no partitions, each run's rows are deleted, a batch at a time.

Events that name no delivery that exists (execution 0; on PostgreSQL their own partition),
and those recorded before migration 0023, are deleted once they were received N days ago.
A dropped run's audience goes with its deliveries: its snapshot's members, and the contexts
an API trigger gave its recipients (the snapshot and the trigger stay, with their sizes and
the trigger's idempotency key, so a repeated call still sends nothing).

Whatever the setting, every hour the frequency caps' ledger (``MarketingSend``) loses the
rows older than the longest cap period: no rule counts them any more.

Run by ``manage.py retention`` and, with ``SALVO_RETENTION_DAYS``, every hour by the
scheduler (``campaigns.tasks.history_maintain``).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, models, transaction
from django.db.models import Max, Q, QuerySet, Sum
from django.utils import timezone

from config.permissions import require_perms
from segments.models import AudienceMember

from .choices import CAP_PERIOD_SECONDS
from .delivery.partitions import (
    ABOUT_DELIVERIES,
    Partition,
    executions_of,
    partition_detach_and_drop,
    partition_within,
    partitioned,
    partitioned_tables_analyze,
    partitions_closed,
    partitions_roll,
)
from .delivery.sql import table_name
from .exceptions import CampaignConflict
from .models import (
    Delivery,
    DeliveryCount,
    DeliveryEvent,
    Execution,
    MarketingSend,
    TriggerRecipient,
)
from .operations import VIEW_CAMPAIGN

RETENTION_PERMISSIONS = (VIEW_CAMPAIGN, "campaigns.delete_delivery")
# Rows deleted per statement where rows go one by one (SQLite's deliveries, audiences, the
# caps' ledger), so that the workers' writes wait at most that long.
DELETE_BATCH = 10_000
# Session-level advisory lock key of a retention run ("rete" in ASCII).
_LOCK_KEY = 0x72657465


@dataclass
class Retention:
    """What a retention run dropped (or, with ``dry_run``, would drop)."""

    days: int
    cutoff: dt.datetime
    dry_run: bool
    runs: int = 0  # executions whose deliveries went
    deliveries: int = 0  # by their counters
    # Provider events and engagement rows deleted row by row (0 on a dry run): on SQLite,
    # unattached events, and rows kept in one partition with newer ones. Those in the
    # dropped partitions are not counted, which would read them all.
    events: int = 0
    # The dropped runs' audience snapshot members and trigger recipients' contexts.
    audience: int = 0
    partitions: list[str] = field(default_factory=list)  # the deliveries' (PostgreSQL)
    # Runs that ended before the cutoff, kept because a newer run shares their partition.
    runs_held: int = 0
    seconds: float = 0.0
    # Of those, detaching and dropping the partitions (the rest is mostly the events').
    drop_seconds: float = 0.0

    def words(self) -> str:
        """One sentence for a person."""
        verb = "Would drop" if self.dry_run else "Dropped"
        said = (
            f"{verb} {self.deliveries:,} deliveries of {self.runs:,} runs that ended before "
            f"{self.cutoff:%Y-%m-%d %H:%M} UTC ({self.days} days)"
        )
        if self.partitions:
            months = len(self.partitions)
            said += (
                f", as {months} whole month{'s' if months != 1 else ''} (the partitions of "
                "their deliveries, provider events and engagement rows)"
            )
        if not self.dry_run and (self.events or not self.partitions):
            said += f", with {self.events:,} provider events and engagement rows deleted"
        if self.audience:
            said += (
                f", and {self.audience:,} rows of their audiences "
                "(snapshot members, trigger contexts)"
            )
        said += f", in {self.seconds:.2f}s"
        if self.partitions and not self.dry_run:
            said += f" ({self.drop_seconds:.2f}s of it detaching and dropping the partitions)"
        said += "; their reports keep their counts."
        if self.runs_held:
            said += (
                f" {self.runs_held:,} more runs that ended before then share a month's "
                "partition with newer runs: they go with it."
            )
        return said


def retention_days_check(days: int) -> None:
    """A ValidationError on ``days`` unless it is a whole number of days in range."""
    if isinstance(days, bool) or not isinstance(days, int):
        raise ValidationError({"days": "Give a whole number of days."})
    if not 1 <= days <= settings.SALVO_RETENTION_MAX_DAYS:
        raise ValidationError(
            {"days": f"Give from 1 to {settings.SALVO_RETENTION_MAX_DAYS} days, not {days}."}
        )


def _counted(runs: QuerySet[Execution]) -> int:
    total = DeliveryCount.objects.filter(execution__in=runs).aggregate(n=Sum("count"))["n"]
    return int(total or 0)


def _expired(runs: QuerySet[Execution], cutoff: dt.datetime) -> QuerySet[Execution]:
    return runs.filter(finished_at__lt=cutoff, deliveries_dropped_at=None)


@contextmanager
def _one_run_at_a_time() -> Iterator[None]:
    """PostgreSQL: refuse a second retention run while one goes (they would both detach
    the same partitions)."""
    if not partitioned():
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_LOCK_KEY])
        if not cursor.fetchone()[0]:
            raise CampaignConflict("Another retention run is dropping deliveries: try later.")
        try:
            yield
        finally:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_LOCK_KEY])


def deliveries_drop_expired(
    *, days: int, user: object = None, dry_run: bool = False, now: dt.datetime | None = None
) -> Retention:
    """Drop the deliveries of the runs that ended more than `days` days before `now`.
    `PermissionDenied` unless `user` may delete deliveries (None: the system);
    ValidationError for days out of range; CampaignConflict while another run goes."""
    require_perms(user, *RETENTION_PERMISSIONS, to="drop old deliveries")
    retention_days_check(days)
    started = time.monotonic()
    now = now or timezone.now()
    result = Retention(days=days, cutoff=now - dt.timedelta(days=days), dry_run=dry_run)
    with _one_run_at_a_time():
        if partitioned():
            _drop_partitions(result, now=now)
        else:
            _delete_rows(result, now=now)
        if not dry_run:
            # Events no delivery was found for, as old (and those before migration 0023).
            unattached = DeliveryEvent.objects.filter(execution_id=0, received_at__lt=result.cutoff)
            result.events += unattached.delete()[0]
    result.seconds = time.monotonic() - started
    return result


def _drop_partitions(result: Retention, *, now: dt.datetime) -> None:
    with connection.cursor() as cursor:
        closed = partitions_closed(cursor)
    for partition in closed:
        runs = executions_of(partition)
        if runs.filter(Q(finished_at=None) | Q(finished_at__gte=result.cutoff)).exists():
            result.runs_held += _expired(runs, result.cutoff).count()
            continue
        dropping = runs.filter(deliveries_dropped_at=None)
        result.runs += dropping.count()
        result.deliveries += _counted(dropping)
        result.partitions.append(partition.name)
        if not result.dry_run:
            _partition_drop(result, partition, dropping, now=now)


def _partition_drop(
    result: Retention, partition: Partition, runs: QuerySet[Execution], *, now: dt.datetime
) -> None:
    """Delete the runs' audiences, mark the runs, drop the partitions of the rows about the
    deliveries (or delete those rows where they share one with newer runs), then the
    deliveries' partition: a crash at any point leaves what the next run finishes."""
    _audiences_delete(result, runs.values_list("pk", "snapshot_id"))
    runs.update(deliveries_dropped_at=now)

    def drop(cursor: Any, own: Partition, model: type[models.Model]) -> None:
        started = time.monotonic()
        partition_detach_and_drop(cursor, own, model)
        result.drop_seconds += time.monotonic() - started

    with connection.cursor() as cursor:
        for model in ABOUT_DELIVERIES:
            own = partition_within(cursor, model, partition)
            if own is not None:
                drop(cursor, own, model)
                continue
            # Executions start at 1: execution 0's events are about no delivery.
            cursor.execute(
                f"DELETE FROM {table_name(model)} WHERE execution_id >= %s AND execution_id < %s",
                [max(partition.low or 1, 1), partition.high],
            )
            result.events += cursor.rowcount
        drop(cursor, partition, Delivery)


def _delete_rows(result: Retention, *, now: dt.datetime) -> None:
    runs = _expired(Execution.objects.all(), result.cutoff).order_by("pk")
    result.runs = runs.count()
    result.deliveries = _counted(runs)
    if result.dry_run:
        return
    for run in runs.iterator():
        _audiences_delete(result, [(run.pk, run.snapshot_id)])
        while True:
            with transaction.atomic():
                ids = list(
                    Delivery.objects.filter(execution=run)
                    .order_by()
                    .values_list("pk", flat=True)[:DELETE_BATCH]
                )
                if not ids:
                    break
                for model in ABOUT_DELIVERIES:
                    rows = model._default_manager.filter(delivery_id__in=ids)
                    result.events += rows.delete()[0]
                Delivery.objects.filter(pk__in=ids).delete()
        Execution.objects.filter(pk=run.pk).update(deliveries_dropped_at=now)


def _audiences_delete(result: Retention, runs: Iterable[tuple[int, int | None]]) -> None:
    """Delete the audiences of the runs, given as (execution id, snapshot id), before the
    runs are marked (a crash leaves them to the next retention run): the members of each
    snapshot a key range at a time, and the trigger recipients' contexts."""
    for execution_id, snapshot_id in runs:
        result.audience += TriggerRecipient.objects.filter(execution_id=execution_id).delete()[0]
        if snapshot_id is None:
            continue
        members = AudienceMember.objects.filter(snapshot_id=snapshot_id)
        last = members.aggregate(last=Max("key"))["last"] or 0
        for low in range(0, last, DELETE_BATCH):
            batch = members.filter(key__gt=low, key__lte=low + DELETE_BATCH)
            result.audience += batch.delete()[0]


def caps_ledger_trim(*, now: dt.datetime | None = None, batch: int = DELETE_BATCH) -> int:
    """Delete the caps' ledger rows older than the longest cap period, which no rule counts;
    the number deleted. By id, `batch` rows at a time: a row's id and time both grow as
    rows are written, so the old rows come first, and the first batch that holds a younger
    row ends the trim (the time condition keeps that row; an old row written after it goes
    the next hour)."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(seconds=max(CAP_PERIOD_SECONDS.values()))
    ledger = MarketingSend.objects.order_by("pk")
    deleted, after = 0, 0
    while True:
        edge = list(ledger.filter(pk__gt=after).values_list("pk", flat=True)[batch - 1 : batch])
        rows = ledger.filter(pk__gt=after, at__lt=cutoff)
        if edge:
            rows = rows.filter(pk__lte=edge[0])
        gone = rows.delete()[0]
        deleted += gone
        if not edge or gone < batch:
            return deleted
        after = edge[0]


def history_maintain(*, now: dt.datetime | None = None) -> Retention | None:
    """The scheduler's hourly step: a new month's partition when one began (and statistics of
    the partitioned tables then, or when they have none), retention when
    ``SALVO_RETENTION_DAYS`` is set (None otherwise), then the caps' ledger trimmed (last:
    after a long time without, its first trims may outlast the task's time limit, and the
    next hour goes on from where it stopped)."""
    now = now or timezone.now()
    opened = partitions_roll(now=now)
    partitioned_tables_analyze(missing_only=opened is None)
    dropped = None
    if settings.SALVO_RETENTION_DAYS:
        dropped = deliveries_drop_expired(days=settings.SALVO_RETENTION_DAYS, now=now)
    caps_ledger_trim(now=now)
    return dropped
