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
4. ``batch_send`` — claim a chunk of rows at a time (pending → sending, committed), skip
   the ineligible, render (templates compiled once per batch), hand the whole chunk to the
   preset's backend in one ``send_batch`` call (one bulk request for providers that have a
   bulk API), record every outcome with one UPDATE per status. Idempotent: a redelivered
   batch only finds what is still unsent.
5. ``execution_progress`` — after each batch: top up the window, and once every batch is
   handed out and nothing is pending or sending any more, complete the execution and the
   campaign, exactly once (under the execution's row lock).

Exactly once. A row moves pending → sending → sent/failed/skipped with conditional UPDATEs,
so two copies of a batch never send the same row. A worker killed mid-send leaves at most
``SALVO_DELIVERY_SEND_CHUNK`` rows "sending"; they are claimed again once
``SALVO_DELIVERY_SENDING_TIMEOUT_S`` has passed (a live worker finishes a chunk long before
that, as provider calls time out well within it). Those few may have reached the provider
before the worker died: the delivery id goes with every message as its idempotency key so
that the provider can drop the repeat. Lost task messages (the filesystem transport drops a
message whose worker dies; Redis returns it only after its visibility timeout) are revived
by ``executions_resume_stalled``, run by the scheduler tick.

Stop. Each chunk is sent inside a transaction that holds the campaign row in share mode
(PostgreSQL ``FOR SHARE``; SQLite's write lock): ``campaign_stop`` waits for chunks in flight,
and once it has committed every batch sees Stopped before sending anything.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Max
from django.utils import timezone

from channels import ratelimit
from channels.choices import ChannelKind
from channels.providers import (
    OutboundMessage,
    PermanentProviderError,
    ProviderBackend,
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

from .choices import CampaignStatus, CampaignType, DeliveryStatus, ExecutionStatus
from .models import Campaign, ChannelAction, Delivery, Execution

logger = logging.getLogger(__name__)

D = DeliveryStatus
UNFINISHED = (D.PENDING, D.SENDING)
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


def _insert_deliveries(execution: Execution, first: int, last: int) -> int:
    """One pending row per (action, audience member) with ids in [first, last]; idempotent."""
    member = AudienceMember._meta
    snapshot_column = connection.ops.quote_name(member.get_field("snapshot").column)
    profile_column = connection.ops.quote_name(member.get_field("profile").column)
    # "WHERE" before ON CONFLICT also keeps SQLite from reading it as a join constraint.
    sql = (
        f"INSERT INTO {_table(Delivery)} "
        "(execution_id, action_id, profile_id, status, attempts, provider_message_id, error) "
        f"SELECT %s, a.id, m.{profile_column}, %s, 0, '', '' "
        f"FROM {_table(AudienceMember)} m CROSS JOIN {_table(ChannelAction)} a "
        f"WHERE m.{snapshot_column} = %s AND m.{profile_column} BETWEEN %s AND %s "
        "AND a.version_id = %s "
        "ON CONFLICT DO NOTHING"
    )
    with connection.cursor() as cursor:
        cursor.execute(
            sql, [execution.pk, D.PENDING, execution.snapshot_id, first, last, execution.version_id]
        )
        return max(cursor.rowcount, 0)


def execution_plan_step(*, execution_id: int) -> bool:
    """Snapshot the next chunk of the audience and create its delivery rows, then hand out
    batches. Returns True while more of the audience remains to plan.

    Safe to run twice: a chunk is planned in one transaction that also moves the cursor.
    """
    from segments.services import audience_snapshot_create

    with transaction.atomic():
        execution = (
            Execution.objects.select_for_update(of=("self",))
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
        if first <= last and segment is not None:
            snapshot = audience_snapshot_create(
                # Half-open range: [first, last + 1).
                segment=segment,
                profile_id_range=(first, last + 1),
                snapshot=execution.snapshot,
            )
            execution.snapshot = snapshot
            execution.save(update_fields=["snapshot"])
            actions = execution.version.actions.count()
            inserted = _insert_deliveries(execution, first, last)
            if _on_postgres() and inserted > settings.SALVO_DELIVERY_BATCH_SIZE:
                # Fresh statistics, or the planner takes the window and claim queries over
                # a table it believes empty through the wrong index (~10x slower).
                with connection.cursor() as cursor:
                    cursor.execute(f"ANALYZE {_table(Delivery)}")
            execution.audience_size += inserted // actions if actions else 0
        execution.planned_through = max(last, execution.planned_through)
        execution.planning_done = execution.planned_through >= top
        execution.save(update_fields=["planned_through", "planning_done", "audience_size"])
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
        # below the whole cursor walks every row ever sent (their old index entries stay
        # until vacuum), which grows with the run. Older rows still unfinished are retries
        # waiting for their time, not work in the queue.
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
        in_flight = Delivery.objects.filter(
            execution_id=execution.pk,
            status__in=UNFINISHED,
            profile_id__gt=floor[0] if floor else 0,
            profile_id__lte=execution.dispatched_through,
        ).count()
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
class _Claimed:
    delivery_id: int
    profile_id: int
    attempts: int


def _claimable_sql() -> str:
    return (
        "((status = %s AND (next_attempt_at IS NULL OR next_attempt_at <= %s)) "
        "OR (status = %s AND claimed_at < %s))"
    )


def _claim(batch: Batch, *, limit: int, now: dt.datetime) -> list[_Claimed]:
    """Move up to `limit` claimable rows of the batch to "sending" and return them.

    Claimable: pending and due, or left "sending" longer than the sending timeout by a
    worker that died. The outer condition is checked again on the locked row, so two
    copies of one batch never claim the same row.
    """
    stale = now - dt.timedelta(seconds=settings.SALVO_DELIVERY_SENDING_TIMEOUT_S)
    claimable = _claimable_sql()
    claimable_params = [D.PENDING, _db_time(now), D.SENDING, _db_time(stale)]
    skip_locked = " FOR UPDATE SKIP LOCKED" if _on_postgres() else ""
    table = _table(Delivery)
    sql = (
        f"UPDATE {table} SET status = %s, claimed_at = %s, updated_at = %s, "
        "attempts = attempts + 1 "
        f"WHERE id IN (SELECT id FROM {table} WHERE execution_id = %s AND action_id = %s "
        f"AND profile_id BETWEEN %s AND %s AND {claimable} "
        f"ORDER BY profile_id LIMIT %s{skip_locked}) AND {claimable} "
        "RETURNING id, profile_id, attempts"
    )
    params = [
        D.SENDING,
        _db_time(now),
        _db_time(now),
        batch.execution_id,
        batch.action_id,
        batch.first_profile_id,
        batch.last_profile_id,
        *claimable_params,
        limit,
        *claimable_params,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [_Claimed(int(r[0]), int(r[1]), int(r[2])) for r in rows]


def _set_outcome(
    ids_with_text: Sequence[tuple[int, str]], *, status: str, text_column: str, now: dt.datetime
) -> None:
    """Move "sending" rows to `status`, each with its own text (provider id or error)."""
    if not ids_with_text:
        return
    table = _table(Delivery)
    values = ", ".join(["(CAST(%s AS bigint), %s)"] * len(ids_with_text))
    sent_at = ", sent_at = %s" if status == D.SENT else ""
    other = "error" if text_column == "provider_message_id" else "provider_message_id"
    sql = (
        f"UPDATE {table} SET status = %s, {text_column} = v.column2, {other} = '', "
        f"updated_at = %s, next_attempt_at = NULL{sent_at} "
        f"FROM (VALUES {values}) AS v WHERE {table}.id = v.column1 AND {table}.status = %s"
    )
    params: list[Any] = [status, _db_time(now)]
    if sent_at:
        params.append(_db_time(now))
    for delivery_id, text in ids_with_text:
        params.extend([delivery_id, text[:10_000]])
    params.append(D.SENDING)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _retry_later(
    failures: Sequence[tuple[_Claimed, TransientProviderError]], *, now: dt.datetime
) -> None:
    """Transient failures: back to pending after an exponential back-off, or failed once
    they have used every attempt."""
    give_up: list[tuple[int, str]] = []
    later: dict[tuple[dt.datetime, str], list[int]] = {}
    base = settings.SALVO_DELIVERY_RETRY_BASE_S
    cap = settings.SALVO_DELIVERY_RETRY_CAP_S
    for claimed, error in failures:
        if claimed.attempts >= settings.SALVO_DELIVERY_MAX_ATTEMPTS:
            give_up.append(
                (claimed.delivery_id, f"Gave up after {claimed.attempts} attempts: {error.reason}")
            )
            continue
        delay = min(cap, base * 2 ** (claimed.attempts - 1))
        delay = max(delay, min(cap, error.retry_after or 0.0))
        due = (now + dt.timedelta(seconds=delay)).replace(microsecond=0)
        later.setdefault((due, error.reason[:10_000]), []).append(claimed.delivery_id)
    _set_outcome(give_up, status=D.FAILED, text_column="error", now=now)
    for (due, reason), ids in later.items():
        Delivery.objects.filter(pk__in=ids, status=D.SENDING).update(
            status=D.PENDING, next_attempt_at=due, error=reason, updated_at=now
        )


def _release(ids: Iterable[int]) -> None:
    """Claimed rows that will not be sent now go back to pending, untouched."""
    Delivery.objects.filter(pk__in=list(ids), status=D.SENDING).update(
        status=D.PENDING, attempts=F("attempts") - 1, claimed_at=None
    )


def _profiles(ids: list[int]) -> dict[int, dict[str, Any]]:
    """The claimed recipients' data as plain rows, by profile id."""
    if not _on_postgres():
        rows = Profile.objects.filter(pk__in=ids).values(*PROFILE_VALUES)
        return {int(row["id"]): row for row in rows}
    # One array parameter instead of hundreds of placeholders the ORM prepares one by one.
    # Plain fields, so each column is named as its field.
    columns = ", ".join(connection.ops.quote_name(name) for name in PROFILE_VALUES)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {columns} FROM {_table(Profile)} WHERE id = ANY(%s)", [ids])
        profiles = {int(row[0]): dict(zip(PROFILE_VALUES, row, strict=True)) for row in cursor}
    for profile in profiles.values():
        # Django reads jsonb as text and decodes it in the field, which a raw query skips.
        if isinstance(profile["attributes"], str):
            profile["attributes"] = json.loads(profile["attributes"])
    return profiles


@dataclass
class _Prepared:
    messages: list[tuple[_Claimed, OutboundMessage]]
    skipped: list[tuple[int, str]]
    failed: list[tuple[int, str]]


def _prepare(
    claimed: Sequence[_Claimed],
    *,
    action: ChannelAction,
    campaign: Campaign,
    profiles: Mapping[int, Mapping[str, Any]],
) -> _Prepared:
    """Decide each claimed row: skipped (no address, opted out), failed (cannot render) or a
    rendered message."""
    prepared = _Prepared([], [], [])
    channel = action.channel
    label = action.get_channel_display()
    marketing = campaign.type == CampaignType.MARKETING
    preset = action.preset
    render = content_renderer(subject=action.subject, body=action.body)
    unsubscribe = preset.reply_to or preset.from_email
    list_unsubscribe = marketing and channel == ChannelKind.EMAIL
    for row in claimed:
        profile = profiles.get(row.profile_id)
        if profile is None:
            prepared.skipped.append((row.delivery_id, "The profile no longer exists."))
            continue
        consent = consent_field(channel) if channel in ConsentChannel.values else None
        if marketing and consent and not profile[consent]:
            prepared.skipped.append((row.delivery_id, f"Opted out of {label} marketing."))
            continue
        address_field = ADDRESS_FIELD.get(channel)
        address = profile[address_field] if address_field else preset.webhook_url
        if not address:
            prepared.skipped.append((row.delivery_id, f"No {label} address."))
            continue
        try:
            subject, body = render(profile_context(profile))
        except RenderError as error:
            prepared.failed.append((row.delivery_id, f"Cannot render: {error}"))
            continue
        headers: dict[str, str] = {}
        if list_unsubscribe:
            headers["List-Unsubscribe"] = (
                f"<mailto:{unsubscribe}?subject=unsubscribe%20{profile['external_id']}>"
            )
        payload: dict[str, Any] = {}
        if channel == ChannelKind.WEBHOOK:
            payload = {"external_id": profile["external_id"], "campaign": campaign.pk}
        message = OutboundMessage(
            delivery_id=row.delivery_id,
            channel=channel,
            to=str(address),
            subject=subject,
            body=body,
            headers=headers,
            payload=payload,
        )
        prepared.messages.append((row, message))
    return prepared


def _send_chunk(
    backend: ProviderBackend,
    messages: Sequence[tuple[_Claimed, OutboundMessage]],
    *,
    campaign_id: int,
) -> bool:
    """Send one chunk and record every outcome; False (nothing sent) once the campaign is
    stopped."""
    with transaction.atomic():
        if not _campaign_sending(campaign_id, lock=True):
            _release(row.delivery_id for row, _ in messages)
            return False
        sent: list[tuple[int, str]] = []
        refused: list[tuple[int, str]] = []
        transient: list[tuple[_Claimed, TransientProviderError]] = []
        try:
            outcomes = backend.send_batch([message for _, message in messages])
            if len(outcomes) != len(messages):
                raise ValueError(f"{len(outcomes)} outcomes for {len(messages)} messages")
        except Exception as error:  # a backend bug must not strand the chunk
            logger.exception("Provider backend failed on a chunk of %d messages", len(messages))
            failure = TransientProviderError(f"{type(error).__name__}: {error}")
            outcomes = [failure] * len(messages)
        for (row, _), outcome in zip(messages, outcomes, strict=True):
            if isinstance(outcome, TransientProviderError):
                transient.append((row, outcome))
            elif isinstance(outcome, PermanentProviderError):
                refused.append((row.delivery_id, outcome.reason))
            elif isinstance(outcome, SendResult):
                sent.append((row.delivery_id, outcome.provider_message_id or ""))
            else:  # a bare ProviderError: the backend did not say, so try again later
                transient.append((row, TransientProviderError(str(outcome))))
        now = timezone.now()
        _set_outcome(sent, status=D.SENT, text_column="provider_message_id", now=now)
        _set_outcome(refused, status=D.FAILED, text_column="error", now=now)
        _retry_later(transient, now=now)
    return True


def _range_wait(batch: Batch, *, now: dt.datetime) -> float | None:
    """Seconds until unfinished rows of the batch can be tried again; None when none are
    left."""
    rows = Delivery.objects.filter(
        execution_id=batch.execution_id,
        action_id=batch.action_id,
        profile_id__gte=batch.first_profile_id,
        profile_id__lte=batch.last_profile_id,
        status__in=UNFINISHED,
    ).values_list("status", "next_attempt_at", "claimed_at")
    timeout = dt.timedelta(seconds=settings.SALVO_DELIVERY_SENDING_TIMEOUT_S)
    soonest: dt.datetime | None = None
    for status, next_attempt_at, claimed_at in rows:
        # A pending row is due at its retry time; a claimed one once its claim goes stale.
        when = (next_attempt_at or now) if status == D.PENDING else (claimed_at or now) + timeout
        soonest = when if soonest is None else min(soonest, when)
    if soonest is None:
        return None
    return max(0.1, (soonest - now).total_seconds())


def batch_send(
    *, execution_id: int, action_id: int, first_profile_id: int, last_profile_id: int
) -> float | None:
    """Deliver one batch. Returns None when every row of the batch is finished, else the
    seconds after which the batch must run again (retries waiting, or rows held by a worker
    that may have died).

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
    preset = action.preset
    chunk = settings.SALVO_DELIVERY_SEND_CHUNK
    backend: ProviderBackend | None = None
    try:
        while True:
            if preset.rate_limit_per_second:
                # Reserve before claiming, so that no row sits claimed while we wait.
                wait = ratelimit.acquire(
                    key=f"preset:{preset.pk}", rate_per_s=preset.rate_limit_per_second, tokens=chunk
                )
                if wait:
                    time.sleep(wait)
            claimed = _claim(batch, limit=chunk, now=timezone.now())
            if not claimed:
                break
            profiles = _profiles([c.profile_id for c in claimed])
            prepared = _prepare(claimed, action=action, campaign=campaign, profiles=profiles)
            now = timezone.now()
            _set_outcome(prepared.skipped, status=D.SKIPPED, text_column="error", now=now)
            _set_outcome(prepared.failed, status=D.FAILED, text_column="error", now=now)
            if not prepared.messages:
                continue
            if backend is None:
                backend = get_backend(preset)
                try:
                    backend.open()
                except TransientProviderError as error:
                    # The provider cannot be reached: the whole chunk waits for a retry.
                    backend = None
                    _retry_later([(row, error) for row, _ in prepared.messages], now=now)
                    break
            if not _send_chunk(backend, prepared.messages, campaign_id=campaign.pk):
                _halt(execution_id)
                return None
    finally:
        if backend is not None:
            backend.close()
    return _range_wait(batch, now=timezone.now())


# --- 5. progress and completion -----------------------------------------------------------


def execution_complete_if_done(*, execution_id: int) -> bool:
    """Complete the execution, and the campaign, when planning is over and no delivery is
    pending or sending. Exactly once: decided under the execution's row lock."""
    from . import services

    unfinished = Delivery.objects.filter(execution_id=execution_id, status__in=UNFINISHED)
    ready = Execution.objects.filter(
        pk=execution_id, status=ExecutionStatus.RUNNING, planning_done=True
    )
    if not ready.exists() or unfinished.exists():
        return False
    with transaction.atomic():
        execution = Execution.objects.select_for_update().get(pk=execution_id)
        if (
            execution.status != ExecutionStatus.RUNNING
            or not execution.planning_done
            or unfinished.exists()
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
                status__in=UNFINISHED,
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


def execution_counts(*, execution_ids: Iterable[int]) -> list[dict[str, Any]]:
    """Rows of (channel, status, count) over the given executions, from one aggregate."""
    return list(
        Delivery.objects.filter(execution_id__in=list(execution_ids))
        .values("action__channel", "status")
        .annotate(count=Count("id"))
        .order_by()
    )


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
