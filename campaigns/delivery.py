"""The delivery engine: a Live campaign's channel actions, sent to its audience at once.

How a run goes (every step is a service here; the Celery tasks only call them):

1. ``execution_start`` — inside the transaction that makes a campaign Live: one
   ``Execution`` of the running version; the planning task runs once that commits.
2. ``execution_plan_step`` — snapshot the audience in profile-id chunks (the first one a
   single batch long, so that sending starts at once) and insert one ``Delivery`` row per
   (action, profile) of the chunk with one INSERT … SELECT inside the database.
3. ``execution_dispatch`` — hand batches to the workers in a bounded window: a batch is
   (execution, action, first profile id, last profile id); the batches of every action for
   one id range are queued side by side, so no channel waits for another.
4. ``batch_send`` — a chunk at a time: take the chunk's due rows together with their
   recipients' data (one query), skip the ineligible, render (templates compiled once per
   batch), hand the whole chunk to the preset's backend in one ``send_batch`` call (one
   bulk request for providers that have a bulk API), then record every outcome with one
   UPDATE and move the per-status counters (``DeliveryCount``).
5. ``execution_progress`` — after each batch: top up the window, and once every batch is
   handed out and the counters show nothing pending, complete the execution and the
   campaign, exactly once (under the execution's row lock).

Exactly once. A row stays pending until its outcome is recorded, and a worker holds the
rows it is sending from reading them until the outcome is recorded, so two copies of a
batch never send the same row. How it holds them depends on the database:

* PostgreSQL: one transaction per chunk locks the due rows (``FOR UPDATE SKIP LOCKED``: a
  second copy of the batch skips them), renders, sends and records. A worker killed
  mid-send rolls back: its rows are still pending, unlocked as soon as its connection
  drops, and are sent by the redelivered batch.
* SQLite has one writer at a time, so no transaction may stay open while a chunk renders
  or waits for the provider: every other write (Stop, an edit) would wait behind it. A
  short transaction *claims* the due rows instead (a claim id, and ``next_attempt_at``
  moved to the end of a lease of SALVO_DELIVERY_SENDING_TIMEOUT_S, so that they are not
  due for anyone else), the chunk renders with no transaction open, a second short
  transaction renews the lease of the rows still claimed just before the provider call,
  and a third records the outcomes of the rows that still carry this claim, and only
  those. A worker killed mid-send leaves its rows claimed: they are due again when the
  lease ends.

Either way the rows a killed worker was sending may have reached the provider before it
died: the delivery id goes with every message as its idempotency key so that the provider
can drop the repeat. Lost task messages (the filesystem transport drops a message whose
worker dies; Redis returns it only after its visibility timeout) are revived by
``executions_resume_stalled``, run by the scheduler tick.

Failures. Whatever goes wrong while preparing one recipient (reading its data, building
its context, rendering, building headers) fails that recipient only, with the reason on
its row. A step that raises (planning a chunk, a batch) runs again after a back-off, at
most SALVO_STEP_MAX_ATTEMPTS times (``execution_step_failed``); then the execution is
Failed, which nothing revives, and the campaign shows the error (it stays Live: stopping
it is the user's call).

Cost. Per recipient and channel the database writes the row once when planning and once
with its outcome (on SQLite, twice more to claim it and renew the lease); no index holds a
column that sending changes, so on PostgreSQL that second write is a heap-only update on
the row's own half-empty page.

Versions. A batch's action names a channel of the execution; the content comes from the
campaign's running version's action of that channel, checked again by every chunk just
before its provider call (``_ActionSender``). Activating a new version while Live takes the
send lock as Stop does (below), so from its commit every chunk sends the new content; a
channel the new version removed is skipped (``channel_removed``). Each row records the
version it was decided with, and the counters (``DeliveryCount``, per action, version,
status and reason; ``DeliveryTimeline``, per 5-second bucket) move in the chunk's own
transaction, last.

Stop. Once ``campaign_stop`` has committed, no chunk starts sending. On PostgreSQL a chunk
holds the campaign's send lock in share mode (an advisory lock: unlike a row lock it queues
new holders behind a waiting Stop, so a steady stream of chunks cannot starve it) from the
moment it checks the campaign, after rendering, until it commits: Stop waits for the
provider calls in flight, which the provider timeout bounds, never for rendering. On
SQLite each short transaction checks the campaign (the write lock orders it with Stop);
Stop waits for none of them, and a chunk already claimed when it commits is not sent.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import Max, Q, Sum
from django.utils import timezone

from channels import ratelimit
from channels.choices import ChannelKind
from channels.providers import (
    OutboundMessage,
    ProviderBackend,
    ProviderError,
    SendResult,
    TransientProviderError,
    get_backend,
)
from channels.rendering import RenderError, content_renderer, profile_context, render_content
from config.graceful_stop import stop_requested
from segments.choices import ConsentChannel
from segments.models import (
    ADDRESS_FIELDS,
    CONSENT_FIELDS,
    PROFILE_DATA_FIELDS,
    AudienceMember,
    Profile,
    consent_field,
)
from segments.selectors import reachable_on
from segments.unsubscribe import unsubscribe_links

from .choices import (
    CampaignStatus,
    CampaignType,
    DeliveryReason,
    DeliveryStatus,
    ExecutionStatus,
)
from .models import (
    TIMELINE_BUCKET_S,
    Campaign,
    CampaignVersion,
    ChannelAction,
    Delivery,
    DeliveryCount,
    DeliveryTimeline,
    Execution,
)
from .retries import RetryPolicy, provider_answer_outcome
from .selectors import stalled_executions

logger = logging.getLogger(__name__)

D = DeliveryStatus
R = DeliveryReason
# While a new version is being activated, the running execution goes on with its own.
SENDING_CAMPAIGN_STATUSES = (CampaignStatus.LIVE, CampaignStatus.ACTIVATING)


def consent_column(channel: str, *, campaign_type: str) -> str | None:
    """The consent column a recipient must have true for this channel: a marketing
    campaign skips profiles opted out of a channel with consent; a transactional one (a
    legal notice) sends regardless."""
    if campaign_type == CampaignType.MARKETING and channel in ConsentChannel.values:
        return consent_field(channel)
    return None


def reachable_profiles(*, channel: str, campaign_type: str, webhook_url: str = "") -> Q:
    """The profiles this channel's sends are not skipped for (consent, no address), as one
    condition the database counts: the rules of ``_ActionSender._prepare_one`` over a
    whole audience. A webhook goes to the preset's URL, for every profile or none."""
    condition = reachable_on(channel, consent_required=campaign_type == CampaignType.MARKETING)
    if channel not in ADDRESS_FIELDS and not webhook_url:
        condition &= Q(pk__isnull=True)  # no profile: a condition every database can count
    return condition


# Columns read per recipient: identity, address, personalisation data and consent.
PROFILE_VALUES = ("id", *PROFILE_DATA_FIELDS, *CONSENT_FIELDS)


@dataclass(frozen=True)
class Batch:
    """One action's recipients with profile ids in [first_profile_id, last_profile_id]."""

    execution_id: int
    action_id: int
    first_profile_id: int
    last_profile_id: int

    def as_args(self) -> tuple[int, int, int, int]:
        return (self.execution_id, self.action_id, self.first_profile_id, self.last_profile_id)


# --- small helpers ---------------------------------------------------------------------


def _db_time(value: dt.datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def _on_postgres() -> bool:
    return connection.vendor == "postgresql"


def _table(model: Any) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _enqueue(batches: Sequence[Batch]) -> None:
    if not batches:
        return
    from .tasks import delivery_batch_task

    def send() -> None:
        for batch in batches:
            delivery_batch_task.delay(*batch.as_args())

    transaction.on_commit(send)


# The key space of the campaigns' send locks among PostgreSQL advisory locks ("SALV").
SEND_LOCK_SPACE = 0x53414C56


def _send_lock_key(campaign_id: int) -> list[int]:
    return [SEND_LOCK_SPACE, campaign_id & 0x7FFFFFFF]


def _sending_version(campaign_id: int, *, hold: bool = False) -> int | None:
    """The campaign's running version, whose content goes out now; None once the campaign
    may no longer send. With `hold`, take its send lock in share mode until the
    transaction ends (PostgreSQL), so that a stop or the activation of a new version waits
    for what is being sent now, and nothing is sent with the old state once it has
    committed."""
    if hold and _on_postgres():
        with connection.cursor() as cursor:
            sql = "SELECT pg_advisory_xact_lock_shared(%s, %s)"
            cursor.execute(sql, _send_lock_key(campaign_id))
    # Read after the lock is held: a new statement sees what a stop committed meanwhile.
    found = Campaign.objects.filter(
        pk=campaign_id, status__in=SENDING_CAMPAIGN_STATUSES
    ).values_list("live_version_id", flat=True)
    return next(iter(found), None)


def _campaign_sending(campaign_id: int) -> bool:
    """Whether the campaign may still send."""
    return _sending_version(campaign_id) is not None


def hold_campaign_sends(*, campaign_id: int) -> None:
    """Wait for the campaign's chunks that are on their way to the provider and keep new
    ones from sending until the current transaction ends: ``campaign_stop`` and the
    activation of a new version (``campaign_activation_complete``) call it first, so that
    nothing is sent with the old state once they have committed.

    On PostgreSQL the send lock in exclusive mode; a chunk that asks for it in share mode
    meanwhile queues behind. On SQLite nothing to do: the stop's transaction holds the
    write lock, and no transaction of a chunk lasts longer than a few statements."""
    if _on_postgres():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", _send_lock_key(campaign_id))


def _halt(execution_id: int, *, now: dt.datetime | None = None) -> None:
    Execution.objects.filter(pk=execution_id, status=ExecutionStatus.RUNNING).update(
        status=ExecutionStatus.HALTED, finished_at=now or timezone.now()
    )


# --- 1. start -----------------------------------------------------------------------------


def execution_start(*, campaign: Campaign) -> Execution | None:
    """Start delivering the campaign's running version, unless a run already exists.

    Call it inside the transaction that makes the campaign Live; planning starts when that
    transaction commits. A running execution finishes with the version it began with, so a
    new version activated while Live starts nothing.
    """
    if campaign.live_version_id is None or Execution.objects.filter(campaign=campaign).exists():
        return None
    now = timezone.now()
    top = Profile.objects.aggregate(top=Max("pk"))["top"] or 0
    execution = Execution.objects.create(
        campaign=campaign,
        version_id=campaign.live_version_id,
        audience_max_profile_id=top,
        last_progress_at=now,
    )
    # Every counter exists from the start: the engine then only ever updates them.
    DeliveryCount.objects.bulk_create(
        DeliveryCount(
            execution=execution,
            action_id=action_id,
            version_id=campaign.live_version_id,
            status=status,
        )
        for action_id in ChannelAction.objects.filter(
            version_id=campaign.live_version_id
        ).values_list("pk", flat=True)
        for status in DeliveryStatus.values
    )
    from .tasks import execution_plan_task

    execution_pk = execution.pk
    transaction.on_commit(lambda: execution_plan_task.delay(execution_pk))
    return execution


# --- 2. planning ----------------------------------------------------------------------------


def _first_chunk_end(execution: Execution) -> int:
    """The profile id that ends the first chunk: one batch of the audience, found by the
    segment's own query (ordered by id, so it stops early)."""
    from segments.selectors import segment_profiles

    size = settings.SALVO_DELIVERY_BATCH_SIZE
    segment = execution.version.segment
    top = execution.audience_max_profile_id
    if segment is None:
        return top
    ids = (
        segment_profiles(segment=segment)
        .filter(pk__lte=top)
        .order_by("pk")
        .values_list("pk", flat=True)[size - 1 : size]
    )
    found = list(ids)
    return int(found[0]) if found else top


def _insert_deliveries(execution: Execution, first_key: int, last_key: int) -> Counter[int]:
    """One pending row per (action, audience member) for the snapshot's members with keys
    in [first_key, last_key]; idempotent. Returns how many rows each action got."""
    member = AudienceMember._meta
    snapshot_column = connection.ops.quote_name(member.get_field("snapshot").column)
    profile_column = connection.ops.quote_name(member.get_field("profile").column)
    key_column = connection.ops.quote_name(member.get_field("key").column)
    # "WHERE" before ON CONFLICT also keeps SQLite from reading it as a join constraint.
    sql = (
        f"INSERT INTO {_table(Delivery)} "
        "(execution_id, action_id, profile_id, status, attempts, provider_message_id, error, "
        "reason) "
        f"SELECT %s, a.id, m.{profile_column}, %s, 0, '', '', '' "
        f"FROM {_table(AudienceMember)} m CROSS JOIN {_table(ChannelAction)} a "
        f"WHERE m.{snapshot_column} = %s AND m.{key_column} BETWEEN %s AND %s "
        "AND a.version_id = %s "
        "ON CONFLICT DO NOTHING RETURNING action_id"
    )
    params: list[Any] = [
        execution.pk,
        D.PENDING,
        execution.snapshot_id,
        first_key,
        last_key,
        execution.version_id,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return Counter(int(action_id) for (action_id,) in cursor.fetchall())


def execution_plan_step(*, execution_id: int) -> bool:
    """Snapshot the next chunk of the audience and create its delivery rows, then hand out
    batches. Returns True while more of the audience remains to plan.

    Safe to run twice: a chunk is planned in one transaction that also moves the cursor.
    """
    from segments.services import audience_snapshot_create

    with transaction.atomic():
        execution = (
            Execution.objects.select_for_update(of=("self",), no_key=True)
            .select_related("version__segment")
            .get(pk=execution_id)
        )
        if execution.status != ExecutionStatus.RUNNING or execution.planning_done:
            return False
        if not _campaign_sending(execution.campaign_id):
            _halt(execution.pk)
            return False
        top = execution.audience_max_profile_id
        first = execution.planned_through + 1
        if execution.planned_through == 0:
            last = _first_chunk_end(execution)
        else:
            last = min(top, execution.planned_through + settings.SALVO_DELIVERY_PLAN_CHUNK)
        segment = execution.version.segment
        per_action: Counter[int] = Counter()
        if first <= last and segment is not None:
            keys_before = execution.snapshot.size if execution.snapshot else 0
            snapshot = audience_snapshot_create(
                # Half-open range: [first, last + 1).
                segment=segment,
                profile_id_range=(first, last + 1),
                snapshot=execution.snapshot,
            )
            execution.snapshot = snapshot
            execution.save(update_fields=["snapshot"])
            # The slice's members are the keys the snapshot gained.
            per_action = _insert_deliveries(execution, keys_before + 1, snapshot.size)
            inserted = sum(per_action.values())
            if _on_postgres() and first > 1 and inserted > settings.SALVO_DELIVERY_BATCH_SIZE:
                # Fresh statistics, or the planner reads a table it believes empty with a
                # sequential scan where the batch queries need the unique index. Not on the
                # first chunk, one batch long: the first message must not wait for it.
                with connection.cursor() as cursor:
                    cursor.execute(f"ANALYZE {_table(Delivery)}")
            execution.audience_size += max(per_action.values(), default=0)
        execution.planned_through = max(last, execution.planned_through)
        execution.planning_done = execution.planned_through >= top
        execution.save(update_fields=["planned_through", "planning_done", "audience_size"])
        _count(
            execution.pk,
            {(a, execution.version_id, D.PENDING, ""): n for a, n in per_action.items()},
        )
    execution_progress(execution_id=execution_id)
    return not execution.planning_done


# --- 3. the batch window ----------------------------------------------------------------


def execution_dispatch(*, execution_id: int) -> list[Batch]:
    """Queue batches until the window is full: at most SALVO_DELIVERY_WINDOW batches' worth
    of unfinished rows per action below the dispatch cursor. Returns the batches queued."""
    return _dispatch(execution_id)[0]


def _dispatch(execution_id: int) -> tuple[list[Batch], bool]:
    """``execution_dispatch``, also telling whether every batch has now been handed out
    (planning is over and no delivery lies beyond the dispatch cursor)."""
    size = settings.SALVO_DELIVERY_BATCH_SIZE
    with transaction.atomic():
        # On PostgreSQL, a worker that finds the execution locked (a planning step or
        # another worker dispatching) goes on with its next batch instead of waiting: the
        # holder dispatches, and looks for completion, after this worker's rows committed.
        execution = (
            Execution.objects.select_for_update(skip_locked=_on_postgres())
            .filter(pk=execution_id)
            .first()
        )
        if execution is None or execution.status != ExecutionStatus.RUNNING:
            return [], False
        action_ids = list(
            ChannelAction.objects.filter(version_id=execution.version_id)
            .order_by("channel")
            .values_list("pk", flat=True)
        )
        if not action_ids:
            return [], execution.planning_done
        # Count what is unfinished among the last window's worth of rows only: counting
        # below the whole cursor would walk every row ever sent, which grows with the run.
        # Older rows still unfinished are retries waiting for their time, not work in the
        # queue.
        floor = list(
            Delivery.objects.filter(
                execution_id=execution.pk,
                action_id=action_ids[0],
                profile_id__lte=execution.dispatched_through,
            )
            .order_by("-profile_id")
            .values_list("profile_id", flat=True)[
                settings.SALVO_DELIVERY_WINDOW * size : settings.SALVO_DELIVERY_WINDOW * size + 1
            ]
        )
        # One count per action: each is a range of the unique index, where an IN list
        # over the actions makes PostgreSQL scan the whole table.
        in_flight = [
            Delivery.objects.filter(
                execution_id=execution.pk,
                action_id=action_id,
                status=D.PENDING,
                profile_id__gt=floor[0] if floor else 0,
                profile_id__lte=execution.dispatched_through,
            ).count()
            for action_id in action_ids
        ]
        # The next id range holds at most one batch of each action: queue it only if it
        # fits in every action's window, so that no action ever has more than the window
        # waiting, however far ahead the others are.
        window = settings.SALVO_DELIVERY_WINDOW * size
        batches: list[Batch] = []
        while max(in_flight) + size <= window:
            ahead = Delivery.objects.filter(
                execution_id=execution.pk,
                action_id=action_ids[0],
                profile_id__gt=execution.dispatched_through,
                profile_id__lte=execution.planned_through,
            )
            found = list(
                ahead.order_by("profile_id").values_list("profile_id", flat=True)[size - 1 : size]
            )
            if found:
                last = int(found[0])
            elif execution.planning_done:
                last = ahead.aggregate(last=Max("profile_id"))["last"] or 0
                if not last:
                    break
            else:
                break  # wait for planning to produce a whole batch
            first = execution.dispatched_through + 1
            batches.extend(Batch(execution.pk, a, first, last) for a in action_ids)
            in_flight = [count + size for count in in_flight]
            execution.dispatched_through = last
        execution.last_progress_at = timezone.now()
        execution.save(update_fields=["dispatched_through", "last_progress_at"])
        _enqueue(batches)
        exhausted = (
            execution.planning_done
            and not Delivery.objects.filter(
                execution_id=execution.pk,
                action_id=action_ids[0],
                profile_id__gt=execution.dispatched_through,
            ).exists()
        )
    return batches, exhausted


# --- 4. a batch -------------------------------------------------------------------------


@dataclass
class _Due:
    """A pending delivery of the batch that this worker holds until its outcome is
    recorded (PostgreSQL: locked by the chunk's transaction; SQLite: claimed)."""

    delivery_id: int
    attempt: int  # the attempt about to be made: 1 for the first
    # The recipient's data as read (attributes still JSON text on both databases, decoded
    # for each recipient on its own); None once the profile is gone.
    profile: dict[str, Any] | None


@dataclass
class _Outcome:
    delivery_id: int
    status: str
    text: str = ""  # the provider's message id when sent, else the reason
    next_attempt_at: dt.datetime | None = None  # a pending row's retry time
    reason: str = ""  # why it was not sent (DeliveryReason); empty when sent


def _due_rows_sql(*, where: str, suffix: str = "") -> str:
    """The query that reads deliveries of a batch with their recipients' data."""
    quote = connection.ops.quote_name
    columns = ", ".join(
        # As text: a recipient whose attributes cannot be decoded fails alone, in prepare.
        f"CAST(p.{quote(name)} AS text)" if name == "attributes" else f"p.{quote(name)}"
        for name in PROFILE_VALUES
    )
    return (
        f"SELECT d.id, d.attempts, {columns} "
        f"FROM {_table(Delivery)} d LEFT JOIN {_table(Profile)} p ON p.id = d.profile_id "
        f"WHERE {where} ORDER BY d.profile_id{suffix}"
    )


_DUE = (
    "d.execution_id = %s AND d.action_id = %s AND d.profile_id BETWEEN %s AND %s "
    "AND d.status = %s AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= %s)"
)


def _due_params(batch: Batch, *, now: dt.datetime) -> list[Any]:
    return [*batch.as_args(), D.PENDING, _db_time(now)]


def _read_due(cursor: Any) -> list[_Due]:
    due = []
    for delivery_id, attempts, *values in cursor.fetchall():
        profile = dict(zip(PROFILE_VALUES, values, strict=True)) if values[0] is not None else None
        due.append(_Due(int(delivery_id), int(attempts) + 1, profile))
    return due


def _lock_due(batch: Batch, *, limit: int, now: dt.datetime) -> list[_Due]:
    """PostgreSQL: up to `limit` deliveries of the batch that are due, with their
    recipients' data, locked until the transaction ends. Rows that another worker holds
    are skipped, so two copies of one batch never take the same row; a worker that dies
    releases its rows with its connection."""
    sql = _due_rows_sql(where=_DUE, suffix=" LIMIT %s FOR UPDATE OF d SKIP LOCKED")
    with connection.cursor() as cursor:
        cursor.execute(sql, [*_due_params(batch, now=now), limit])
        return _read_due(cursor)


def _claim_value(claim: uuid.UUID) -> Any:
    return Delivery._meta.get_field("claim").get_db_prep_value(claim, connection)


def _lease_end(now: dt.datetime) -> Any:
    return _db_time(now + dt.timedelta(seconds=settings.SALVO_DELIVERY_SENDING_TIMEOUT_S))


def _claim_due(batch: Batch, *, limit: int, now: dt.datetime, claim: uuid.UUID) -> list[_Due]:
    """SQLite: claim up to `limit` deliveries of the batch that are due, and return them
    with their recipients' data. Call inside a (short) transaction.

    A claimed row carries `claim` and is not due for anyone else before the end of its
    lease (``next_attempt_at``): a second copy of the batch skips it, and if this worker
    dies the row is due again when the lease ends."""
    table = _table(Delivery)
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
        cursor.execute(_due_rows_sql(where=where), [*batch.as_args(), _claim_value(claim)])
        return _read_due(cursor)


def _ids_document(ids: Sequence[int]) -> str:
    return json.dumps(list(ids), separators=(",", ":"))


def _renew_claim(ids: Sequence[int], *, claim: uuid.UUID, now: dt.datetime) -> set[int]:
    """SQLite: a new lease for those of `ids` that still carry `claim` (their lease may
    have ended while the chunk rendered, and another worker claimed them); their ids."""
    table = _table(Delivery)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET next_attempt_at = %s "
            f"WHERE id IN (SELECT value FROM json_each(%s)) AND claim = %s AND status = %s "
            "RETURNING id",
            [_lease_end(now), _ids_document(ids), _claim_value(claim), D.PENDING],
        )
        return {int(delivery_id) for (delivery_id,) in cursor.fetchall()}


def _release_claim(ids: Sequence[int], *, claim: uuid.UUID) -> None:
    """SQLite: let go of claimed rows that will not be sent (the campaign was stopped)."""
    table = _table(Delivery)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET claim = NULL "
            f"WHERE id IN (SELECT value FROM json_each(%s)) AND claim = %s",
            [_ids_document(ids), _claim_value(claim)],
        )


def _record(
    outcomes: Sequence[_Outcome],
    *,
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
                _db_time(o.next_attempt_at) if o.next_attempt_at else None,
                o.reason,
            ]
            for o in outcomes
        ],
        separators=(",", ":"),
        default=str,
    )
    table = _table(Delivery)
    at = _db_time(now)
    params: list[Any] = [D.SENT, D.SENT, D.SENT, at, version_id, at, document, D.PENDING]
    if _on_postgres():
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
    where = f"{table}.id = v.id AND {table}.status = %s"
    clear_claim = ""
    if claim is not None:
        where += f" AND {table}.claim = %s"
        params.append(_claim_value(claim))
        clear_claim = ", claim = NULL"
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


def _count(execution_id: int, changes: Mapping[CountKey, int]) -> None:
    """Add to the (action, version, status, reason) counters of an execution, in one
    statement.

    Last in its transaction, so the counter rows that every worker of the action updates
    stay locked only for the commit; always in the same order, so two never deadlock."""
    rows = [(execution_id, *key, n) for key, n in sorted(changes.items()) if n]
    _add_to_counters(
        DeliveryCount, ("execution_id", "action_id", "version_id", "status", "reason"), rows
    )


def _add_to_counters(model: Any, key: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Add each row's last value to the `count` of the counter with the row's key (the
    `key` columns, those of the model's unique constraint), creating it at need: one
    INSERT … ON CONFLICT DO UPDATE for all the rows."""
    if not rows:
        return
    table = _table(model)
    count = connection.ops.quote_name("count")
    columns = ", ".join([*key, count])
    values = ", ".join([f"({', '.join(['%s'] * (len(key) + 1))})"] * len(rows))
    sql = (
        f"INSERT INTO {table} ({columns}) VALUES {values} "
        f"ON CONFLICT ({', '.join(key)}) "
        f"DO UPDATE SET {count} = {table}.{count} + excluded.{count}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for row in rows for value in row])


def timeline_bucket(at: dt.datetime) -> int:
    """The timeline bucket a moment falls in: its start, in seconds since the epoch."""
    return int(at.timestamp()) // TIMELINE_BUCKET_S * TIMELINE_BUCKET_S


def _count_timeline(
    execution_id: int, action_id: int, outcomes: Sequence[_Outcome], *, now: dt.datetime
) -> None:
    """Add the chunk's finished outcomes to the execution's timeline bucket of `now`, in
    one statement, after `_count` (the same order in every transaction)."""
    finished = Counter(o.status for o in outcomes if o.status != D.PENDING)
    bucket = timeline_bucket(now)
    rows = [(execution_id, action_id, bucket, status, n) for status, n in sorted(finished.items())]
    _add_to_counters(DeliveryTimeline, ("execution_id", "action_id", "bucket", "status"), rows)


def _status_changes(
    action: ChannelAction, outcomes: Sequence[_Outcome], *, version_id: int
) -> Counter[CountKey]:
    """How the recorded outcomes move the action's counters: out of pending (counted under
    the action's own version), into their status, decided with `version_id`, for their
    reason."""
    changes: Counter[CountKey] = Counter()
    for outcome in outcomes:
        if outcome.status != D.PENDING:
            changes[(action.pk, version_id, outcome.status, outcome.reason)] += 1
            changes[(action.pk, action.version_id, D.PENDING, "")] -= 1
    return changes


def _record_counts(
    execution_id: int,
    action: ChannelAction,
    outcomes: Sequence[_Outcome],
    *,
    version_id: int,
    now: dt.datetime,
) -> None:
    """Move the counters and the timeline by the recorded outcomes: the last statements of
    the chunk's transaction."""
    _count(execution_id, _status_changes(action, outcomes, version_id=version_id))
    _count_timeline(execution_id, action.pk, outcomes, now=now)


@dataclass
class _Prepared:
    messages: list[tuple[_Due, OutboundMessage]]
    outcomes: list[_Outcome]  # recipients decided without sending: skipped or failed


def _delivery_policy() -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.SALVO_DELIVERY_MAX_ATTEMPTS,
        base_s=settings.SALVO_DELIVERY_RETRY_BASE_S,
        cap_s=settings.SALVO_DELIVERY_RETRY_CAP_S,
    )


def render_error_text(error: RenderError) -> str:
    """What a delivery (and a preview) says when its content cannot be rendered."""
    return f"Cannot render: {error}"


class _ActionSender:
    """Sends the chunks of one action's batch: what every recipient shares is worked out
    once, and the provider's connection stays open across the chunks.

    The batch's action names the channel (and the counters) within the execution; the
    content, and the preset, are those of the campaign's running version's action of that
    channel (``use_version``): a version activated while the execution sends applies to
    every delivery not sent yet. Each chunk checks the running version once more just
    before the provider call (under the send lock on PostgreSQL) and renders again if it
    changed, so no delivery goes out with an older version's content once the activation
    has committed."""

    def __init__(self, *, action: ChannelAction, campaign: Campaign, version_id: int) -> None:
        self.action = action
        self.campaign = campaign
        self.preset = action.preset
        channel = action.channel
        self.channel = channel
        self.label = action.get_channel_display()
        self.marketing = campaign.type == CampaignType.MARKETING
        self.consent = consent_column(channel, campaign_type=campaign.type)
        self.opted_out = f"Opted out of {self.label} marketing."
        self.address_field = ADDRESS_FIELDS.get(channel)
        self.no_address = f"No {self.label} address."
        self.backend: ProviderBackend | None = None
        self.policy = _delivery_policy()
        self.version_id = 0
        self.content: ChannelAction | None = None
        self.removed = ""
        self.use_version(version_id)

    def use_version(self, version_id: int) -> None:
        """Send the content of this version's action of the channel from now on. When the
        version has none (it removed the channel), the rows left are skipped with the
        reason ``channel_removed``: what a version does not send is not sent."""
        if version_id == self.version_id:
            return
        if version_id == self.action.version_id:
            content: ChannelAction | None = self.action
        else:
            content = (
                ChannelAction.objects.select_related("preset")
                .filter(version_id=version_id, channel=self.channel)
                .first()
            )
        self.version_id = version_id
        self.content = content
        if content is None:
            number = CampaignVersion.objects.filter(pk=version_id).values_list("number", flat=True)
            self.removed = f"Version {next(iter(number), '?')} has no {self.label} action."
            return
        if self.backend is not None and content.preset_id != self.preset.pk:
            self.close()  # the next send opens the new preset's backend
        self.preset = content.preset
        self.render = content_renderer(subject=content.subject, body=content.body)
        self.unsubscribe = (
            self.preset.reply_to or self.preset.from_email
            if self.marketing and self.channel == ChannelKind.EMAIL
            else None
        )
        self.unsubscribe_link = unsubscribe_links() if self.unsubscribe else None

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def _unsubscribe_headers(self, profile: Mapping[str, Any]) -> dict[str, str]:
        """A marketing email's ``List-Unsubscribe``: the one-click link (RFC 8058) when
        Salvo is reachable from the internet, and a mailto to the preset's reply address."""
        # Percent-encoded (RFC 6068): an id must not end the URI or the header.
        subject = quote(f"unsubscribe {profile['external_id']}", safe="")
        mailto = f"<mailto:{self.unsubscribe}?subject={subject}>"
        if self.unsubscribe_link is None:
            return {"List-Unsubscribe": mailto}
        url = self.unsubscribe_link(profile["id"], profile["external_id"], ConsentChannel.EMAIL)
        return {
            "List-Unsubscribe": f"<{url}>, {mailto}",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }

    def prepare(self, due: Sequence[_Due]) -> _Prepared:
        """Decide each row: skipped (no address, opted out), failed (its data cannot be
        read, its content cannot be rendered, or anything else goes wrong for it alone) or
        a rendered message."""
        prepared = _Prepared([], [])
        if self.content is None:
            prepared.outcomes = [
                _Outcome(row.delivery_id, D.SKIPPED, self.removed, reason=R.CHANNEL_REMOVED)
                for row in due
            ]
            return prepared
        for row in due:
            try:
                decided = self._prepare_one(row)
            except RenderError as error:
                text = render_error_text(error)
                decided = _Outcome(row.delivery_id, D.FAILED, text, reason=R.RENDER_ERROR)
            except Exception as error:  # this recipient's failure, never the batch's
                text = f"Cannot prepare the message: {type(error).__name__}: {error}"
                logger.warning("Delivery %s failed: %s", row.delivery_id, text)
                decided = _Outcome(row.delivery_id, D.FAILED, text, reason=R.PREPARE_ERROR)
            if isinstance(decided, _Outcome):
                prepared.outcomes.append(decided)
            else:
                prepared.messages.append((row, decided))
        return prepared

    def _prepare_one(self, row: _Due) -> _Outcome | OutboundMessage:
        profile = row.profile
        if profile is None:
            return _Outcome(
                row.delivery_id,
                D.SKIPPED,
                "The profile no longer exists.",
                reason=R.PROFILE_DELETED,
            )
        if self.consent and not profile[self.consent]:
            return _Outcome(row.delivery_id, D.SKIPPED, self.opted_out, reason=R.OPTED_OUT)
        field = self.address_field
        address = profile[field] if field else self.preset.webhook_url
        if not address:
            return _Outcome(row.delivery_id, D.SKIPPED, self.no_address, reason=R.NO_ADDRESS)
        attributes = profile["attributes"]
        if isinstance(attributes, str):
            try:
                profile = {**profile, "attributes": json.loads(attributes)}
            except (ValueError, RecursionError) as error:
                text = f"Cannot read the profile's attributes: {type(error).__name__}: {error}"
                return _Outcome(row.delivery_id, D.FAILED, text, reason=R.BAD_PROFILE_DATA)
        subject, body = self.render(profile_context(profile))
        headers: dict[str, str] = {}
        if self.unsubscribe:
            headers.update(self._unsubscribe_headers(profile))
        payload: dict[str, Any] = {}
        if self.channel == ChannelKind.WEBHOOK:
            payload = {"external_id": profile["external_id"], "campaign": self.campaign.pk}
        return OutboundMessage(
            delivery_id=row.delivery_id,
            channel=self.channel,
            to=str(address),
            subject=subject,
            body=body,
            headers=headers,
            payload=payload,
        )

    def send(self, messages: Sequence[tuple[_Due, OutboundMessage]]) -> list[_Outcome]:
        """Hand the messages to the provider in one call; every message's outcome."""
        answers: Sequence[SendResult | ProviderError]
        try:
            if self.backend is None:
                backend = get_backend(self.preset)
                backend.open()
                self.backend = backend
            answers = self.backend.send_batch([message for _, message in messages])
            if len(answers) != len(messages):
                raise ValueError(f"{len(answers)} outcomes for {len(messages)} messages")
        except TransientProviderError as error:  # the provider cannot be reached
            answers = [error] * len(messages)
        except Exception as error:  # a backend bug must not strand the chunk
            logger.exception("Provider backend failed on a chunk of %d messages", len(messages))
            answers = [TransientProviderError(f"{type(error).__name__}: {error}")] * len(messages)
        now = timezone.now()
        outcomes = []
        for (row, _), answer in zip(messages, answers, strict=True):
            decided = provider_answer_outcome(
                answer, attempt=row.attempt, now=now, policy=self.policy
            )
            outcomes.append(
                _Outcome(
                    row.delivery_id,
                    decided.status,
                    decided.text,
                    decided.next_attempt_at,
                    decided.reason,
                )
            )
        return outcomes

    def send_chunk(self, batch: Batch, *, limit: int) -> bool | None:
        """Send the next chunk of the batch and record its outcomes and counts. Returns
        whether more of the batch may be due now, or None (nothing sent) once the
        campaign is stopped."""
        if _on_postgres():
            return self._send_locked_chunk(batch, limit=limit)
        return self._send_claimed_chunk(batch, limit=limit)

    def _send_locked_chunk(self, batch: Batch, *, limit: int) -> bool | None:
        """PostgreSQL: lock the chunk's due rows, render, send, record, all in one
        transaction. From the campaign check on (after rendering) the transaction holds
        the campaign's send lock in share mode: a stop, or the activation of a new
        version, waits for the provider call, and once it has committed no chunk sends
        with the old state (a chunk rendered with the old version renders again, under
        the lock: once per chunk in flight per activation)."""
        with transaction.atomic():
            due = _lock_due(batch, limit=limit, now=timezone.now())
            if not due:
                return False
            prepared = self.prepare(due)
            version_id = _sending_version(self.campaign.pk, hold=True)
            if version_id is None:
                return None
            if version_id != self.version_id:
                self.use_version(version_id)
                prepared = self.prepare(due)
            outcomes = prepared.outcomes
            if prepared.messages:
                outcomes += self.send(prepared.messages)
            now = timezone.now()
            _record(outcomes, now=now, version_id=self.version_id)
            _record_counts(
                batch.execution_id, self.action, outcomes, version_id=self.version_id, now=now
            )
        return self._more_due(due, outcomes, limit=limit)

    def _send_claimed_chunk(self, batch: Batch, *, limit: int) -> bool | None:
        """SQLite: claim the chunk's due rows in a short transaction that checks the
        campaign; render with no transaction open; check the campaign and its running
        version again and renew the claim just before the provider call (rendering again
        first if a new version went Live meanwhile); record the outcomes of the rows still
        claimed in a last short transaction. Nothing holds the write lock while the chunk
        renders or waits for the provider."""
        claim = uuid.uuid4()
        with transaction.atomic():
            version_id = _sending_version(self.campaign.pk)
            if version_id is None:
                return None
            due = _claim_due(batch, limit=limit, now=timezone.now(), claim=claim)
        if not due:
            return False
        self.use_version(version_id)
        prepared = self.prepare(due)
        held: set[int] = set()
        while prepared.messages:
            with transaction.atomic():
                version_id = _sending_version(self.campaign.pk)
                if version_id is None:
                    _release_claim([row.delivery_id for row in due], claim=claim)
                    return None
                if version_id == self.version_id:
                    held = _renew_claim(
                        [row.delivery_id for row, _ in prepared.messages],
                        claim=claim,
                        now=timezone.now(),
                    )
                    break
            self.use_version(version_id)
            prepared = self.prepare(due)
        outcomes = prepared.outcomes
        messages = [(row, m) for row, m in prepared.messages if row.delivery_id in held]
        if messages:
            outcomes += self.send(messages)
        with transaction.atomic():
            now = timezone.now()
            recorded = _record(outcomes, now=now, version_id=self.version_id, claim=claim)
            outcomes = [o for o in outcomes if o.delivery_id in recorded]
            _record_counts(
                batch.execution_id, self.action, outcomes, version_id=self.version_id, now=now
            )
        return self._more_due(due, outcomes, limit=limit)

    @staticmethod
    def _more_due(due: Sequence[_Due], outcomes: Sequence[_Outcome], *, limit: int) -> bool:
        """A short chunk took everything due, unless some retry is due already."""
        now = timezone.now()
        return len(due) == limit or any(
            o.next_attempt_at is not None and o.next_attempt_at <= now for o in outcomes
        )


def _range_wait(batch: Batch, *, now: dt.datetime) -> float | None:
    """Seconds until the batch must run again; None when every row of it is finished.

    A pending row is due at its retry time. One that is due now was held by another worker
    (a second copy of the batch): look again after SALVO_DELIVERY_SENDING_TIMEOUT_S, by
    which time that worker has finished it, or died and released it."""
    retry_times = Delivery.objects.filter(
        execution_id=batch.execution_id,
        action_id=batch.action_id,
        profile_id__gte=batch.first_profile_id,
        profile_id__lte=batch.last_profile_id,
        status=D.PENDING,
    ).values_list("next_attempt_at", flat=True)
    held = now + dt.timedelta(seconds=settings.SALVO_DELIVERY_SENDING_TIMEOUT_S)
    soonest: dt.datetime | None = None
    for next_attempt_at in retry_times:
        when = next_attempt_at if next_attempt_at and next_attempt_at > now else held
        soonest = when if soonest is None else min(soonest, when)
    if soonest is None:
        return None
    return max(0.1, (soonest - now).total_seconds())


_send_pool: ThreadPoolExecutor | None = None


def _sending_threads() -> ThreadPoolExecutor:
    """The process's sending threads, started on first use (so in each worker process,
    after the fork), each with its own database connection."""
    global _send_pool
    if _send_pool is None:
        _send_pool = ThreadPoolExecutor(
            max_workers=settings.SALVO_DELIVERY_SEND_THREADS, thread_name_prefix="salvo-send"
        )
    return _send_pool


def _forget_sending_threads() -> None:
    global _send_pool
    _send_pool = None  # a forked child has none of its parent's threads


os.register_at_fork(after_in_child=_forget_sending_threads)


def _send_chunks(batch: Batch, *, action: ChannelAction, campaign: Campaign) -> bool | float:
    """Send chunk after chunk of the batch until nothing in it is due now. Returns False
    once the campaign is stopped, or the seconds to wait when the preset's rate limit asks
    for a longer wait than a worker should sleep, or 0 when the worker is stopping: the
    chunk in flight has been sent and recorded, and the rest goes back to the queue.

    A rate-limited preset sends one second's worth of its rate per chunk, so that a worker
    waits in small steps; past SALVO_DELIVERY_RATE_WAIT_MAX_S it gives its reservation
    back and the batch comes back later, leaving the worker to other campaigns."""
    sender = _ActionSender(
        action=action, campaign=campaign, version_id=campaign.live_version_id or action.version_id
    )
    try:
        while True:
            if stop_requested():
                return 0.0
            # The running version's preset: a new version may bring another one, or
            # remove the channel (what is left is skipped, with nothing to pace).
            rate = sender.preset.rate_limit_per_second if sender.content else None
            chunk = settings.SALVO_DELIVERY_SEND_CHUNK
            if rate:
                chunk = max(1, min(chunk, int(rate)))
            bucket = f"preset:{sender.preset.pk}"
            if rate:
                # Reserve before locking rows, so that no row sits locked while we wait.
                wait = ratelimit.acquire(key=bucket, rate_per_s=rate, tokens=chunk)
                if wait > settings.SALVO_DELIVERY_RATE_WAIT_MAX_S:
                    ratelimit.give_back(key=bucket, rate_per_s=rate, tokens=chunk)
                    return wait
                if wait:
                    time.sleep(wait)
            more = sender.send_chunk(batch, limit=chunk)
            if more is None:
                return False
            if not more:
                return True
    finally:
        sender.close()


def _send_chunks_in_thread(
    batch: Batch, *, action: ChannelAction, campaign: Campaign
) -> bool | float:
    # This thread's connection lives on between batches: drop it if it broke or aged out.
    close_old_connections()
    try:
        return _send_chunks(batch, action=action, campaign=campaign)
    finally:
        if connection.in_atomic_block:  # never leave a transaction open on a reused thread
            connection.close()


def batch_send(
    *, execution_id: int, action_id: int, first_profile_id: int, last_profile_id: int
) -> float | None:
    """Deliver one batch. Returns None when every row of the batch is finished, else the
    seconds after which the batch must run again (retries waiting, or rows held by another
    worker).

    On PostgreSQL, SALVO_DELIVERY_SEND_THREADS threads send chunks of the batch side by
    side, each in its own transaction (row locks keep them apart): while one waits for the
    provider or a commit, another renders. Called inside a transaction, or on SQLite
    (where a chunk renders and sends outside any transaction, and one writer at a time
    would leave threads little to overlap), it sends in the calling thread.

    Sends nothing when the campaign is stopped or the execution is over.
    """
    batch = Batch(execution_id, action_id, first_profile_id, last_profile_id)
    execution = Execution.objects.select_related("campaign").get(pk=execution_id)
    campaign = execution.campaign
    if execution.status != ExecutionStatus.RUNNING:
        return None
    if not _campaign_sending(campaign.pk):
        _halt(execution_id)
        return None
    action = ChannelAction.objects.select_related("preset").get(pk=action_id)
    threads = settings.SALVO_DELIVERY_SEND_THREADS
    if threads <= 1 or not _on_postgres() or connection.in_atomic_block:
        results = [_send_chunks(batch, action=action, campaign=campaign)]
    else:
        pool = _sending_threads()
        futures = [
            pool.submit(_send_chunks_in_thread, batch, action=action, campaign=campaign)
            for _ in range(threads)
        ]
        wait(futures)
        results = [future.result() for future in futures]  # raises a thread's error
    if any(result is False for result in results):
        _halt(execution_id)
        return None
    paused = [result for result in results if not isinstance(result, bool)]
    if paused:
        return min(paused)
    return _range_wait(batch, now=timezone.now())


# --- 5. progress and completion -----------------------------------------------------------


def _pending(execution_id: int) -> int:
    counts = DeliveryCount.objects.filter(execution_id=execution_id, status=D.PENDING)
    return int(counts.aggregate(n=Sum("count"))["n"] or 0)


def execution_complete_if_done(*, execution_id: int) -> bool:
    """Complete the execution, and the campaign, when planning is over and no delivery is
    pending. Exactly once: decided under the execution's row lock."""
    from . import services

    ready = Execution.objects.filter(
        pk=execution_id, status=ExecutionStatus.RUNNING, planning_done=True
    )
    if not ready.exists() or _pending(execution_id):
        return False
    with transaction.atomic():
        execution = Execution.objects.select_for_update().get(pk=execution_id)
        if (
            execution.status != ExecutionStatus.RUNNING
            or not execution.planning_done
            or _pending(execution_id)
        ):
            return False
        campaign = Campaign.objects.select_for_update().get(pk=execution.campaign_id)
        if campaign.status == CampaignStatus.ACTIVATING:
            # A new version is being activated: complete once it is Live again (the
            # scheduler's stall check comes back to this execution).
            return False
        execution.status = ExecutionStatus.COMPLETED
        execution.finished_at = timezone.now()
        execution.save(update_fields=["status", "finished_at"])
        if campaign.status == CampaignStatus.LIVE:
            services.campaign_complete(
                campaign=campaign,
                reason=f"Every delivery of version {execution.version.number} is done.",
            )
    return True


def execution_progress(*, execution_id: int) -> None:
    """After a batch or a planning step: top up the window, then complete if all is done.

    Completion is looked for only once every batch is handed out: until then something is
    certainly left, and asking the database "anything unfinished?" after every batch of a
    million-row run would cost more than the batch itself."""
    _, exhausted = _dispatch(execution_id)
    if exhausted:
        execution_complete_if_done(execution_id=execution_id)


def executions_resume_stalled(*, now: dt.datetime | None = None) -> list[int]:
    """Send again the unfinished batches of executions that made no progress for
    SALVO_DELIVERY_STALL_AFTER_S (their task messages were lost with a worker); halt those
    whose campaign was stopped. Returns the ids of the executions resumed."""
    from .tasks import execution_plan_task

    now = now or timezone.now()
    size = settings.SALVO_DELIVERY_BATCH_SIZE
    resumed = []
    for execution in stalled_executions(now=now):
        if not _campaign_sending(execution.campaign_id):
            _halt(execution.pk, now=now)
            continue
        rows = (
            Delivery.objects.filter(
                execution_id=execution.pk,
                status=D.PENDING,
                profile_id__lte=execution.dispatched_through,
            )
            .order_by("action_id", "profile_id")
            .values_list("action_id", "profile_id")
        )
        batches: list[Batch] = []
        current: list[int] = []
        current_action: int | None = None
        for action_id, profile_id in rows.iterator():
            if current and (action_id != current_action or len(current) >= size):
                batches.append(Batch(execution.pk, current_action, current[0], current[-1]))  # type: ignore[arg-type]
                current = []
            current_action = action_id
            current.append(profile_id)
        if current and current_action is not None:
            batches.append(Batch(execution.pk, current_action, current[0], current[-1]))
        with transaction.atomic():
            # Claimed by moving its progress time on from what was read: a second scheduler
            # that read the same stall finds it moved (on PostgreSQL, once the first commits)
            # and leaves it, so two schedulers never resume an execution twice.
            claimed = Execution.objects.filter(
                pk=execution.pk, last_progress_at=execution.last_progress_at
            ).update(last_progress_at=now)
            if claimed:
                _enqueue(batches)
        if not claimed:
            continue
        if not execution.planning_done:
            execution_plan_task.delay(execution.pk)
        execution_progress(execution_id=execution.pk)
        logger.warning(
            "Execution %s made no progress since %s: %d batches sent again.",
            execution.pk,
            execution.last_progress_at,
            len(batches),
        )
        resumed.append(execution.pk)
    return resumed


# --- 6. steps that fail ------------------------------------------------------------------

PLANNING_STEP = "Planning the audience"


def step_name(batch: Batch | None) -> str:
    """What a step of the execution does, as its error shows it: planning (no batch) or
    sending one batch."""
    if batch is None:
        return PLANNING_STEP
    channel = ChannelAction.objects.filter(pk=batch.action_id).values_list("channel", flat=True)
    label = ChannelKind(channel[0]).label if channel else f"action {batch.action_id}"
    return f"Sending {label} to profiles {batch.first_profile_id}–{batch.last_profile_id}"


def error_text(error: BaseException) -> str:
    """An exception as a person reads it: its type and its message(s)."""
    messages = getattr(error, "messages", None)  # a ValidationError holds a list
    detail = "; ".join(map(str, messages)) if isinstance(messages, list) else str(error)
    return f"{type(error).__name__}: {detail}"[:10_000]


def step_policy() -> RetryPolicy:
    return RetryPolicy(
        max_attempts=settings.SALVO_STEP_MAX_ATTEMPTS,
        base_s=settings.SALVO_STEP_RETRY_BASE_S,
        cap_s=settings.SALVO_STEP_RETRY_CAP_S,
    )


def execution_step_failed(
    *, execution_id: int, batch: Batch | None, error: BaseException, attempt: int
) -> float | None:
    """Record that the `attempt`-th attempt of a step of the execution (planning when
    `batch` is None) raised `error`. Returns the seconds after which to run it again, or
    None when it must not run again: the execution is over, or this was the last of
    SALVO_STEP_MAX_ATTEMPTS attempts, and then the execution is Failed with the error.

    A Failed execution is never revived (the stall check looks at running ones only); its
    campaign stays Live and shows the error until someone stops it."""
    policy = step_policy()
    now = timezone.now()
    step = step_name(batch)
    record = {"error_step": step[:200], "error": error_text(error), "error_at": now}
    running = Execution.objects.filter(pk=execution_id, status=ExecutionStatus.RUNNING)
    if not policy.may_retry(attempt=attempt):
        if running.update(
            status=ExecutionStatus.FAILED, finished_at=now, error_attempts=attempt, **record
        ):
            logger.error(
                "Execution %s failed: %s failed %d times: %s", execution_id, step, attempt, error
            )
        return None
    if not running.update(error_attempts=attempt, **record):
        return None
    delay = policy.delay(attempt=attempt)
    logger.warning(
        "Execution %s: %s failed (attempt %d of %d), again in %gs: %s",
        execution_id,
        step,
        attempt,
        policy.max_attempts,
        delay,
        error,
    )
    return delay


def execution_step_recovered(*, execution_id: int, batch: Batch | None) -> None:
    """A step that had failed went through: its error no longer stands (another step's,
    recorded since, does)."""
    Execution.objects.filter(
        pk=execution_id, status=ExecutionStatus.RUNNING, error_step=step_name(batch)[:200]
    ).update(error_step="", error="", error_at=None, error_attempts=0)


def naive_send_one(*, execution_id: int, action_id: int, profile_id: int) -> None:
    """The benchmark's baseline, as a Django user would first write it: load, render, send,
    save one row — one task, one connection and a handful of queries per recipient."""
    action = ChannelAction.objects.select_related("preset", "version__campaign").get(pk=action_id)
    profile = Profile.objects.get(pk=profile_id)
    address_field = ADDRESS_FIELDS.get(action.channel)
    address = getattr(profile, address_field) if address_field else action.preset.webhook_url
    subject, body = render_content(
        subject=action.subject, body=action.body, profile=profile_context(profile)
    )
    delivery = Delivery.objects.create(
        execution_id=execution_id,
        action=action,
        version_id=action.version_id,
        profile_id=profile_id,
        attempts=1,
    )
    message = OutboundMessage(
        delivery_id=delivery.pk, channel=action.channel, to=address, subject=subject, body=body
    )
    with get_backend(action.preset) as backend:
        result = backend.send(message)
    delivery.status = D.SENT
    delivery.provider_message_id = result.provider_message_id
    delivery.sent_at = timezone.now()
    delivery.save()
