"""Running a recurring campaign: one execution per occurrence of its recurrence.

A recurring campaign is Scheduled until its version's ``start_at`` and Live from then on
(the services' ordinary activation and start). Its next occurrence is stored on the
campaign (``next_run_at``): set when a version is activated (from the start, or, for a
new version of a running campaign, from now and after the last occurrence that began), and
moved on by the scheduler tick under the campaign's row lock as it starts each one, so two
schedulers never start an occurrence twice (the unique (campaign, scheduled_for) of the
executions holds even so).

An occurrence the tick finds late by less than SALVO_RECURRENCE_GRACE_S (the scheduler was
down) runs once, at once; a later one is recorded as a Skipped execution and never runs.
Each occurrence runs the running version with its own audience snapshot, counts and
report. Once the last occurrence at or before ``end_at`` has started and finished, the
campaign completes (``delivery.completion.recurring_campaign_over``). A stop cancels the
occurrences to come.

An occurrence sent in each recipient's time zone (``delivery.timing``) begins when the
earliest zone on earth reaches its clock time, and its recipients are due zone by zone.

Every time here is read from ``campaigns.clock``, which a test may move on.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max

from . import clock
from .choices import CampaignKind, CampaignStatus, ExecutionStatus
from .delivery import execution_create
from .delivery.completion import LAST_OCCURRENCE_DONE, recurring_campaign_over
from .delivery.timing import LOCAL_TIME_LEAD, run_starts_at
from .lifecycle import campaign_complete, lock_campaign, transition_log
from .models import Campaign, CampaignVersion, Execution
from .recurrence import (
    Recurrence,
    moment_words,
    next_occurrences,
    recurrence_parse,
    recurrence_words,
)

logger = logging.getLogger(__name__)

Status = CampaignStatus


def recurrence_grace() -> dt.timedelta:
    """How late an occurrence may start: SALVO_RECURRENCE_GRACE_S."""
    return dt.timedelta(seconds=settings.SALVO_RECURRENCE_GRACE_S)


def version_recurrence(version: CampaignVersion) -> Recurrence | None:
    """The version's recurrence, or None when it has none (the services stored it valid)."""
    return recurrence_parse(version.recurrence) if version.recurrence else None


def version_next_runs(
    *,
    version: CampaignVersion,
    count: int,
    after: dt.datetime | None = None,
    now: dt.datetime | None = None,
) -> list[dt.datetime]:
    """The version's next `count` occurrences: from its start (or `now` when it has none),
    and after `after` when given. Sent in each recipient's zone, an occurrence whose run
    would begin before the start (``run_starts_at``: up to a day before its clock time) is
    not one: the campaign begins at its start."""
    rule = version_recurrence(version)
    if rule is None:
        return []
    start = version.start_at or now or clock.now()
    # A run begins at most LOCAL_TIME_LEAD before its occurrence: at most that many days'
    # occurrences can fall before the start, however often it recurs.
    extra = LOCAL_TIME_LEAD.days + 2 if version.in_recipient_time_zone else 0
    runs = next_occurrences(
        rule,
        zone=version.time_zone,
        start=start,
        end=version.end_at,
        after=after,
        count=count + extra,
    )
    return [run for run in runs if run_starts_at(version, run) >= start][:count]


def occurrence_plan_next(*, campaign: Campaign, now: dt.datetime) -> None:
    """Set the locked campaign's next occurrence from its running version, as a version is
    activated: its first occurrence from the start; for a new version of a campaign whose
    occurrences have begun, the first one after both now and the last that began (a new
    version applies from the next occurrence)."""
    if campaign.kind != CampaignKind.RECURRING or campaign.live_version is None:
        return
    version = campaign.live_version
    last = Execution.objects.filter(campaign=campaign, scheduled_for__isnull=False).aggregate(
        last=Max("scheduled_for")
    )["last"]
    if last is None:
        runs = version_next_runs(version=version, count=1, now=now)
    else:
        # From now on; but an occurrence already due that no tick has started yet stays
        # due (the new rule's first one from its time): activating never loses one.
        since = min(now, campaign.next_run_at) if campaign.next_run_at else now
        after = max(last, since - dt.timedelta(microseconds=1))
        runs = version_next_runs(version=version, count=1, after=after, now=now)
    campaign.next_run_at = runs[0] if runs else None
    campaign.save(update_fields=["next_run_at", "updated_at"])


def _occurrence_skip(campaign: Campaign, occurrence: dt.datetime, *, now: dt.datetime) -> None:
    """Record the occurrence as skipped: a Skipped execution the report lists, never run."""
    assert campaign.live_version_id is not None  # a Live campaign
    late = now - occurrence
    why = (
        f"The occurrence of {occurrence.isoformat()} is skipped: the scheduler reached it "
        f"{_duration_words(late)} late, more than SALVO_RECURRENCE_GRACE_S "
        f"({_duration_words(recurrence_grace())})."
    )
    Execution.objects.create(
        campaign=campaign,
        version_id=campaign.live_version_id,
        scheduled_for=occurrence,
        status=ExecutionStatus.SKIPPED,
        planning_done=True,
        finished_at=now,
        error=why,
    )
    # In the campaign's log too, where every door shows what happened to it and why.
    transition_log(campaign, "skip_occurrence", source=campaign.status, user=None, reason=why)
    logger.warning(
        "Campaign %s: the occurrence of %s is skipped, %s late.",
        campaign.pk,
        occurrence.isoformat(),
        _duration_words(late),
    )


def _duration_words(span: dt.timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds >= 86400:
        return f"{seconds // 86400} d {seconds % 86400 // 3600} h"
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 60} min {seconds % 60} s"


def _start_due(campaign_id: int, *, now: dt.datetime) -> list[int]:
    """Start (or skip) every due occurrence of one campaign; returns the executions started."""
    started = []
    with transaction.atomic():
        campaign = lock_campaign(campaign_id)
        version = campaign.live_version
        while (
            campaign.status == Status.LIVE
            and version is not None
            and campaign.next_run_at is not None
        ):
            occurrence = campaign.next_run_at
            # Sent in each recipient's zone, an occurrence begins when the earliest zone
            # reaches its clock time, up to LOCAL_TIME_LEAD before it.
            begins = run_starts_at(version, occurrence)
            if begins > now:
                break
            if now - begins <= recurrence_grace():
                started.append(execution_create(campaign=campaign, scheduled_for=occurrence).pk)
            else:
                _occurrence_skip(campaign, occurrence, now=now)
            runs = version_next_runs(version=version, count=1, after=occurrence, now=now)
            campaign.next_run_at = runs[0] if runs else None
            campaign.save(update_fields=["next_run_at", "updated_at"])
        if recurring_campaign_over(campaign):
            campaign_complete(campaign=campaign, reason=LAST_OCCURRENCE_DONE)
    return started


def occurrences_start_due(*, now: dt.datetime | None = None) -> list[int]:
    """The scheduler tick's part: start every due occurrence of every Live recurring
    campaign, skip those late beyond the grace, and complete the campaigns whose last
    occurrence is done. Returns the ids of the executions started."""
    now = now or clock.now()
    live = Campaign.objects.filter(kind=CampaignKind.RECURRING, status=Status.LIVE)
    due = live.filter(next_run_at__lte=now + LOCAL_TIME_LEAD) | live.filter(
        next_run_at__isnull=True
    )
    started = []
    for pk in list(due.values_list("pk", flat=True)):
        started += _start_due(pk, now=now)
    return started


# --- what the doors show ---------------------------------------------------------------

NEXT_RUNS_SHOWN = 5


def campaign_next_runs(*, campaign: Campaign, count: int = NEXT_RUNS_SHOWN) -> list[dt.datetime]:
    """A Scheduled or Live recurring campaign's next `count` occurrences, from its
    ``next_run_at``; empty for any other campaign."""
    version = campaign.live_version
    if campaign.next_run_at is None or version is None:
        return []
    if campaign.status not in (Status.SCHEDULED, Status.LIVE):
        return []
    later = version_next_runs(version=version, count=count - 1, after=campaign.next_run_at)
    return [campaign.next_run_at, *later]


def version_schedule_words(version: CampaignVersion) -> str:
    """The version's recurrence in words ("every Monday at 09:00 (Europe/Paris), until 31
    March 2027"), or "" when it has none."""
    try:
        rule = version_recurrence(version)
    except ValidationError:
        return ""  # the review says what is wrong with it
    if rule is None:
        return ""
    return recurrence_words(rule, zone=version.time_zone, end=version.end_at)


def run_words(moment: dt.datetime, *, version: CampaignVersion) -> str:
    """One occurrence in words, in the version's zone: "Monday 4 January 2027 at 09:00"."""
    return moment_words(moment, version.time_zone)
