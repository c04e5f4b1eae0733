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
4. ``batch_send`` — a chunk at a time, in one transaction: lock the chunk's due rows
   together with their recipients' data (one query), skip the ineligible, render (templates
   compiled once per batch), hand the whole chunk to the preset's backend in one
   ``send_batch`` call (one bulk request for providers that have a bulk API), then record
   every outcome with one UPDATE and move the per-status counters (``DeliveryCount``).
5. ``execution_progress`` — after each batch: top up the window, and once every batch is
   handed out and the counters show nothing pending, complete the execution and the
   campaign, exactly once (under the execution's row lock).

Exactly once. A row stays pending until its outcome is recorded, and a worker holds the
rows it is sending locked (PostgreSQL ``FOR UPDATE SKIP LOCKED``; SQLite's write lock) from
reading them until the outcome commits, so two copies of a batch never send the same row.
A worker killed mid-send rolls back: its rows are still pending, unlocked as soon as its
connection drops, and are sent by the redelivered batch. Those few may have reached the
provider before the worker died: the delivery id goes with every message as its
idempotency key so that the provider can drop the repeat. Lost task messages (the
filesystem transport drops a message whose worker dies; Redis returns it only after its
visibility timeout) are revived by ``executions_resume_stalled``, run by the scheduler tick.

Cost. Per recipient and channel the database writes the row once when planning and once
with its outcome; no index holds a column that sending changes, so on PostgreSQL that
second write is a heap-only update on the row's own half-empty page.

Stop. Each chunk is sent inside a transaction that holds the campaign row in share mode
(PostgreSQL ``FOR SHARE``; SQLite's write lock): ``campaign_stop`` waits for chunks in flight,
and once it has committed every batch sees Stopped before sending anything.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import Max, Sum
from django.utils import timezone

from channels import ratelimit
from channels.choices import ChannelKind
from channels.providers import (
    OutboundMessage,
    PermanentProviderError,
    ProviderBackend,
    ProviderError,
    SendResult,
    TransientProviderError,
    get_backend,
)
from channels.rendering import RenderError, content_renderer, profile_context, render_content
from segments.choices import ConsentChannel
from segments.models import (
    CONSENT_FIELDS,
    PROFILE_DATA_FIELDS,
    AudienceMember,
    Profile,
    consent_field,
)
from segments.unsubscribe import unsubscribe_links

from .choices import CampaignStatus, CampaignType, DeliveryStatus, ExecutionStatus
from .models import Campaign, ChannelAction, Delivery, DeliveryCount, Execution

logger = logging.getLogger(__name__)

D = DeliveryStatus
# While a new version is being activated, the running execution goes on with its own.
SENDING_CAMPAIGN_STATUSES = (CampaignStatus.LIVE, CampaignStatus.ACTIVATING)

ADDRESS_FIELD: dict[str, str] = {
    ChannelKind.EMAIL: "email",
    ChannelKind.SMS: "phone",
    ChannelKind.PUSH: "push_token",
}
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


def _campaign_sending(campaign_id: int, *, lock: bool = False) -> bool:
    """Whether the campaign may still send; with `lock`, hold its row in share mode until the
    transaction ends, so that a stop waits for what is being sent now."""
    if lock and _on_postgres():
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT status FROM {_table(Campaign)} WHERE id = %s FOR SHARE", [campaign_id]
            )
            row = cursor.fetchone()
        return row is not None and row[0] in SENDING_CAMPAIGN_STATUSES
    return Campaign.objects.filter(pk=campaign_id, status__in=SENDING_CAMPAIGN_STATUSES).exists()


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
        DeliveryCount(execution=execution, action_id=action_id, status=status)
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
        "(execution_id, action_id, profile_id, status, attempts, provider_message_id, error) "
        f"SELECT %s, a.id, m.{profile_column}, %s, 0, '', '' "
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
        _count(execution.pk, {(action, D.PENDING): n for action, n in per_action.items()})
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
        in_flight = sum(
            Delivery.objects.filter(
                execution_id=execution.pk,
                action_id=action_id,
                status=D.PENDING,
                profile_id__gt=floor[0] if floor else 0,
                profile_id__lte=execution.dispatched_through,
            ).count()
            for action_id in action_ids
        )
        window = settings.SALVO_DELIVERY_WINDOW * size * len(action_ids)
        batches: list[Batch] = []
        while in_flight < window:
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
            in_flight += size * len(action_ids)
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
    """A pending delivery of the batch, locked by this worker until its chunk commits."""

    delivery_id: int
    attempt: int  # the attempt about to be made: 1 for the first
    profile: dict[str, Any] | None  # the recipient's data; None once the profile is gone


@dataclass
class _Outcome:
    delivery_id: int
    status: str
    text: str = ""  # the provider's message id when sent, else the reason
    next_attempt_at: dt.datetime | None = None  # a pending row's retry time


def _lock_due(batch: Batch, *, limit: int, now: dt.datetime) -> list[_Due]:
    """Up to `limit` deliveries of the batch that are due, with their recipients' data, held
    until the transaction ends.

    On PostgreSQL the rows are locked and rows that another worker holds are skipped, so two
    copies of one batch never take the same row; a worker that dies releases its rows with
    its connection. On SQLite the transaction's write lock lets one chunk run at a time.
    """
    quote = connection.ops.quote_name
    columns = ", ".join(f"p.{quote(name)}" for name in PROFILE_VALUES)
    lock = " FOR UPDATE OF d SKIP LOCKED" if _on_postgres() else ""
    sql = (
        f"SELECT d.id, d.attempts, {columns} "
        f"FROM {_table(Delivery)} d LEFT JOIN {_table(Profile)} p ON p.id = d.profile_id "
        "WHERE d.execution_id = %s AND d.action_id = %s AND d.profile_id BETWEEN %s AND %s "
        "AND d.status = %s AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= %s) "
        f"ORDER BY d.profile_id LIMIT %s{lock}"
    )
    params = [
        batch.execution_id,
        batch.action_id,
        batch.first_profile_id,
        batch.last_profile_id,
        D.PENDING,
        _db_time(now),
        limit,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    due = []
    for delivery_id, attempts, *values in rows:
        profile = None
        if values[0] is not None:
            profile = dict(zip(PROFILE_VALUES, values, strict=True))
            # Django reads JSON as text and decodes it in the field, which a raw query skips.
            if isinstance(profile["attributes"], str):
                profile["attributes"] = json.loads(profile["attributes"])
        due.append(_Due(int(delivery_id), int(attempts) + 1, profile))
    return due


def _record(outcomes: Sequence[_Outcome], *, now: dt.datetime) -> None:
    """Write every outcome of a chunk with one UPDATE of its (pending) rows.

    The outcomes travel as one JSON parameter: the driver would otherwise quote thousands
    of parameters one by one, which costs more than the update."""
    if not outcomes:
        return
    document = json.dumps(
        [
            [
                o.delivery_id,
                o.status,
                o.text[:10_000],
                _db_time(o.next_attempt_at) if o.next_attempt_at else None,
            ]
            for o in outcomes
        ],
        separators=(",", ":"),
        default=str,
    )
    table = _table(Delivery)
    if _on_postgres():
        source = (
            "(SELECT (e->>0)::bigint AS id, e->>1 AS status, e->>2 AS text, "
            "(e->>3)::timestamptz AS due FROM jsonb_array_elements(%s::jsonb) AS e) AS v"
        )
    else:
        source = (
            "(SELECT value->>0 AS id, value->>1 AS status, value->>2 AS text, "
            "value->>3 AS due FROM json_each(%s)) AS v"
        )
    sql = (
        f"UPDATE {table} SET status = v.status, attempts = {table}.attempts + 1, "
        "provider_message_id = CASE WHEN v.status = %s THEN v.text ELSE '' END, "
        "error = CASE WHEN v.status = %s THEN '' ELSE v.text END, "
        "next_attempt_at = v.due, sent_at = CASE WHEN v.status = %s THEN %s END, "
        f"updated_at = %s FROM {source} WHERE {table}.id = v.id AND {table}.status = %s"
    )
    at = _db_time(now)
    with connection.cursor() as cursor:
        cursor.execute(sql, [D.SENT, D.SENT, D.SENT, at, at, document, D.PENDING])


def _count(execution_id: int, changes: Mapping[tuple[int, str], int]) -> None:
    """Add to the (action, status) counters of an execution, in one statement.

    Last in its transaction, so the counter rows that every worker of the action updates
    stay locked only for the commit; always in the same order, so two never deadlock."""
    rows = [(execution_id, a, s, n) for (a, s), n in sorted(changes.items()) if n]
    if not rows:
        return
    table = _table(DeliveryCount)
    count = connection.ops.quote_name("count")
    values = ", ".join(["(%s, %s, %s, %s)"] * len(rows))
    sql = (
        f"INSERT INTO {table} (execution_id, action_id, status, {count}) VALUES {values} "
        f"ON CONFLICT (execution_id, action_id, status) "
        f"DO UPDATE SET {count} = {table}.{count} + excluded.{count}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [value for row in rows for value in row])


@dataclass
class _Prepared:
    messages: list[tuple[_Due, OutboundMessage]]
    outcomes: list[_Outcome]  # recipients decided without sending: skipped or failed


class _ActionSender:
    """Sends the chunks of one action's batch: what every recipient shares is worked out
    once, and the provider's connection stays open across the chunks."""

    def __init__(self, *, action: ChannelAction, campaign: Campaign) -> None:
        self.action = action
        self.campaign = campaign
        self.preset = action.preset
        channel = action.channel
        self.channel = channel
        label = action.get_channel_display()
        marketing = campaign.type == CampaignType.MARKETING
        self.consent = (
            consent_field(channel) if marketing and channel in ConsentChannel.values else None
        )
        self.opted_out = f"Opted out of {label} marketing."
        self.address_field = ADDRESS_FIELD.get(channel)
        self.no_address = f"No {label} address."
        self.render = content_renderer(subject=action.subject, body=action.body)
        self.unsubscribe = (
            self.preset.reply_to or self.preset.from_email
            if marketing and channel == ChannelKind.EMAIL
            else None
        )
        self.unsubscribe_link = unsubscribe_links() if self.unsubscribe else None
        self.backend: ProviderBackend | None = None

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def _unsubscribe_headers(self, profile: Mapping[str, Any]) -> dict[str, str]:
        """A marketing email's ``List-Unsubscribe``: the one-click link (RFC 8058) when
        Salvo is reachable from the internet, and a mailto to the preset's reply address."""
        mailto = f"<mailto:{self.unsubscribe}?subject=unsubscribe%20{profile['external_id']}>"
        if self.unsubscribe_link is None:
            return {"List-Unsubscribe": mailto}
        url = self.unsubscribe_link(profile["id"], profile["external_id"], ConsentChannel.EMAIL)
        return {
            "List-Unsubscribe": f"<{url}>, {mailto}",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }

    def prepare(self, due: Sequence[_Due]) -> _Prepared:
        """Decide each row: skipped (no address, opted out), failed (cannot render) or a
        rendered message."""
        prepared = _Prepared([], [])
        skip, fail = D.SKIPPED, D.FAILED
        for row in due:
            profile = row.profile
            if profile is None:
                prepared.outcomes.append(
                    _Outcome(row.delivery_id, skip, "The profile no longer exists.")
                )
                continue
            if self.consent and not profile[self.consent]:
                prepared.outcomes.append(_Outcome(row.delivery_id, skip, self.opted_out))
                continue
            field = self.address_field
            address = profile[field] if field else self.preset.webhook_url
            if not address:
                prepared.outcomes.append(_Outcome(row.delivery_id, skip, self.no_address))
                continue
            try:
                subject, body = self.render(profile_context(profile))
            except RenderError as error:
                prepared.outcomes.append(_Outcome(row.delivery_id, fail, f"Cannot render: {error}"))
                continue
            headers: dict[str, str] = {}
            if self.unsubscribe:
                headers.update(self._unsubscribe_headers(profile))
            payload: dict[str, Any] = {}
            if self.channel == ChannelKind.WEBHOOK:
                payload = {"external_id": profile["external_id"], "campaign": self.campaign.pk}
            message = OutboundMessage(
                delivery_id=row.delivery_id,
                channel=self.channel,
                to=str(address),
                subject=subject,
                body=body,
                headers=headers,
                payload=payload,
            )
            prepared.messages.append((row, message))
        return prepared

    def send(
        self, messages: Sequence[tuple[_Due, OutboundMessage]], *, now: dt.datetime
    ) -> list[_Outcome]:
        """Hand the messages to the provider in one call; every message's outcome."""
        outcomes: Sequence[SendResult | ProviderError]
        try:
            if self.backend is None:
                backend = get_backend(self.preset)
                backend.open()
                self.backend = backend
            outcomes = self.backend.send_batch([message for _, message in messages])
            if len(outcomes) != len(messages):
                raise ValueError(f"{len(outcomes)} outcomes for {len(messages)} messages")
        except TransientProviderError as error:  # the provider cannot be reached
            outcomes = [error] * len(messages)
        except Exception as error:  # a backend bug must not strand the chunk
            logger.exception("Provider backend failed on a chunk of %d messages", len(messages))
            outcomes = [TransientProviderError(f"{type(error).__name__}: {error}")] * len(messages)
        return [
            _outcome_of(row, outcome, now=now)
            for (row, _), outcome in zip(messages, outcomes, strict=True)
        ]

    def send_chunk(self, batch: Batch, *, limit: int) -> bool | None:
        """Send the next chunk of the batch: lock its due rows, send, record the outcomes and
        the counts, all in one transaction. Returns whether more of the batch may be due
        now, or None (nothing sent) once the campaign is stopped.

        The transaction holds the campaign row in share mode: a stop waits for the chunk,
        and once the stop has committed no chunk sends."""
        with transaction.atomic():
            if not _campaign_sending(self.campaign.pk, lock=True):
                return None
            now = timezone.now()
            due = _lock_due(batch, limit=limit, now=now)
            if not due:
                return False
            prepared = self.prepare(due)
            outcomes = prepared.outcomes
            if prepared.messages:
                outcomes += self.send(prepared.messages, now=now)
            now = timezone.now()
            _record(outcomes, now=now)
            changes: Counter[tuple[int, str]] = Counter()
            for outcome in outcomes:
                if outcome.status != D.PENDING:
                    changes[(self.action.pk, outcome.status)] += 1
                    changes[(self.action.pk, D.PENDING)] -= 1
            _count(batch.execution_id, changes)
        # A short chunk took everything due, unless some retry is due already.
        return len(due) == limit or any(
            o.next_attempt_at is not None and o.next_attempt_at <= now for o in outcomes
        )


def _outcome_of(row: _Due, outcome: SendResult | ProviderError, *, now: dt.datetime) -> _Outcome:
    """What a provider's answer means for the row: sent, refused (failed), or, for a
    transient error, a retry after an exponential back-off, or failed once every attempt
    is used."""
    if isinstance(outcome, SendResult):
        return _Outcome(row.delivery_id, D.SENT, outcome.provider_message_id or "")
    if isinstance(outcome, PermanentProviderError):
        return _Outcome(row.delivery_id, D.FAILED, outcome.reason)
    if not isinstance(outcome, TransientProviderError):
        # A bare ProviderError: the backend did not say, so try again later.
        outcome = TransientProviderError(str(outcome))
    if row.attempt >= settings.SALVO_DELIVERY_MAX_ATTEMPTS:
        return _Outcome(
            row.delivery_id, D.FAILED, f"Gave up after {row.attempt} attempts: {outcome.reason}"
        )
    base = settings.SALVO_DELIVERY_RETRY_BASE_S
    cap = settings.SALVO_DELIVERY_RETRY_CAP_S
    delay = max(min(cap, base * 2 ** (row.attempt - 1)), min(cap, outcome.retry_after or 0.0))
    due = (now + dt.timedelta(seconds=delay)).replace(microsecond=0)
    return _Outcome(row.delivery_id, D.PENDING, outcome.reason, next_attempt_at=due)


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
    for a longer wait than a worker should sleep.

    A rate-limited preset sends one second's worth of its rate per chunk, so that a worker
    waits in small steps; past SALVO_DELIVERY_RATE_WAIT_MAX_S it gives its reservation
    back and the batch comes back later, leaving the worker to other campaigns."""
    preset = action.preset
    rate = preset.rate_limit_per_second
    chunk = settings.SALVO_DELIVERY_SEND_CHUNK
    if rate:
        chunk = max(1, min(chunk, int(rate)))
    bucket = f"preset:{preset.pk}"
    sender = _ActionSender(action=action, campaign=campaign)
    try:
        while True:
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
    provider or a commit, another renders. Called inside a transaction (or on SQLite,
    whose write lock lets one chunk run at a time), it sends in the calling thread.

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
    cutoff = now - dt.timedelta(seconds=settings.SALVO_DELIVERY_STALL_AFTER_S)
    size = settings.SALVO_DELIVERY_BATCH_SIZE
    resumed = []
    stalled = Execution.objects.filter(status=ExecutionStatus.RUNNING, last_progress_at__lt=cutoff)
    for execution in stalled:
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
            Execution.objects.filter(pk=execution.pk).update(last_progress_at=now)
            _enqueue(batches)
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


def naive_send_one(*, execution_id: int, action_id: int, profile_id: int) -> None:
    """The benchmark's baseline, as a Django user would first write it: load, render, send,
    save one row — one task, one connection and a handful of queries per recipient."""
    action = ChannelAction.objects.select_related("preset", "version__campaign").get(pk=action_id)
    profile = Profile.objects.get(pk=profile_id)
    address_field = ADDRESS_FIELD.get(action.channel)
    address = getattr(profile, address_field) if address_field else action.preset.webhook_url
    subject, body = render_content(
        subject=action.subject, body=action.body, profile=profile_context(profile)
    )
    delivery = Delivery.objects.create(
        execution_id=execution_id, action=action, profile_id=profile_id, attempts=1
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
