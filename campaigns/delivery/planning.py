"""Planning: an execution of the running version, and its delivery rows.

1. ``execution_start`` — inside the transaction that makes a campaign Live: one
   ``Execution`` of the running version, every counter at zero; the planning task runs
   once that commits.
2. ``execution_plan_step`` — snapshot the audience in profile-id chunks (the first one a
   single batch long, so that sending starts at once) and insert one ``Delivery`` row per
   (action, profile) of the chunk with one INSERT … SELECT inside the database
   (``sql.insert_deliveries``), then top up the batch window.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from campaigns import tasks
from segments.models import Profile
from segments.selectors import segment_profiles
from segments.services import audience_snapshot_create

from ..choices import CampaignKind, DeliveryStatus, ExecutionStatus
from ..experiments import assignments_plan, winner_wait_plan
from ..models import Campaign, ChannelAction, DeliveryCount, Execution
from .completion import execution_halt, execution_progress
from .sql import campaign_sending, counts_add, insert_deliveries, statistics_refresh

D = DeliveryStatus


def execution_start(*, campaign: Campaign) -> Execution | None:
    """Start delivering the campaign's running version, unless a run already exists.

    Call it inside the transaction that makes the campaign Live; planning starts when that
    transaction commits. A running execution finishes with the version it began with, so a
    new version activated while Live starts nothing. Only a one-shot campaign starts its
    execution here: a recurring one starts one per occurrence, an API-triggered one one per
    trigger.
    """
    if campaign.kind != CampaignKind.ONE_SHOT:
        return None
    if campaign.live_version_id is None or Execution.objects.filter(campaign=campaign).exists():
        return None
    # The run is for its start (what a local-time version reads its clock time from).
    version = campaign.live_version
    start = version.start_at if version is not None else None
    return execution_create(campaign=campaign, scheduled_for=start or timezone.now())


def execution_create(*, campaign: Campaign, scheduled_for: dt.datetime | None = None) -> Execution:
    """A new execution of the campaign's running version, every counter at zero, planned
    once the caller's transaction commits: one-shot campaigns through ``execution_start``,
    each occurrence of a recurring one (`scheduled_for`) through
    ``campaigns.occurrences``."""
    assert campaign.live_version_id is not None  # only a running campaign has executions
    now = timezone.now()
    top = Profile.objects.aggregate(top=Max("pk"))["top"] or 0
    execution = Execution.objects.create(
        campaign=campaign,
        version_id=campaign.live_version_id,
        audience_max_profile_id=top,
        last_progress_at=now,
        scheduled_for=scheduled_for,
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
    execution_pk = execution.pk
    transaction.on_commit(lambda: tasks.execution_plan_task.delay(execution_pk))
    return execution


def _first_chunk_end(execution: Execution) -> int:
    """The profile id that ends the first chunk: one batch of the audience, found by the
    segment's own query (ordered by id, so it stops early)."""
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


def execution_plan_step(*, execution_id: int) -> bool:
    """Snapshot the next chunk of the audience and create its delivery rows, then hand out
    batches. Returns True while more of the audience remains to plan.

    Safe to run twice: a chunk is planned in one transaction that also moves the cursor.
    """
    with transaction.atomic():
        execution = (
            Execution.objects.select_for_update(of=("self",), no_key=True)
            .select_related("version__segment")
            .get(pk=execution_id)
        )
        if execution.status != ExecutionStatus.RUNNING or execution.planning_done:
            return False
        if not campaign_sending(execution.campaign_id):
            execution_halt(execution.pk)
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
            per_action = insert_deliveries(execution, keys_before + 1, snapshot.size)
            assignments_plan(execution, keys_before + 1, snapshot.size)
            winner_wait_plan(execution, first, last)
            statistics_refresh(
                execution_id=execution.pk, first_profile_id=first, inserted=sum(per_action.values())
            )
            execution.audience_size += max(per_action.values(), default=0)
        execution.planned_through = max(last, execution.planned_through)
        execution.planning_done = execution.planned_through >= top
        execution.save(update_fields=["planned_through", "planning_done", "audience_size"])
        counts_add(
            execution.pk,
            {(a, execution.version_id, D.PENDING, ""): n for a, n in per_action.items()},
        )
    execution_progress(execution_id=execution_id)
    return not execution.planning_done
