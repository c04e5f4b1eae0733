"""Read-only queries over campaigns, shared by the admin, the API and the commands."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.core.exceptions import ValidationError
from django.db.models import Prefetch, Q, QuerySet, Sum
from django_fsm import can_proceed

from channels.models import REQUIRED_SENDER_FIELD
from channels.rendering import TemplateContentError, validate_content
from segments.choices import SegmentKind
from segments.rules import rule_errors

from .choices import (
    ALL_STATUSES,
    DEFAULT_VISIBLE_STATUSES,
    CampaignStatus,
    DeliveryStatus,
    ExecutionStatus,
)
from .models import Campaign, CampaignTransition, CampaignVersion, DeliveryCount, Execution
from .operations import OPERATIONS

Status = CampaignStatus
# Who asks: a person (admin, API, `--user`), or None in services for the system itself.
Actor = AbstractUser | AnonymousUser


def campaign_statuses_from_query(values: Iterable[str]) -> list[str] | None:
    """Turn `?status=` values into the statuses to show; None means every status.

    No value means the default (Draft, Scheduled, Live); `all` means every status.
    """
    wanted = [v.strip().lower() for v in values if v and v.strip()]
    if not wanted:
        return list(DEFAULT_VISIBLE_STATUSES)
    if ALL_STATUSES in wanted:
        return None
    unknown = sorted(set(wanted) - set(Status.values))
    if unknown:
        raise ValidationError(
            {
                "status": f"Unknown status {', '.join(map(repr, unknown))}; choose from "
                f"{', '.join(Status.values)} or {ALL_STATUSES}."
            }
        )
    return wanted


def _failing_executions() -> QuerySet[Execution]:
    """Executions showing a step's error, newest first: what `campaign_delivery_error`
    reads."""
    return Execution.objects.exclude(error_step="").order_by("-started_at", "-id")


_FAILING_EXECUTIONS = Prefetch(
    "executions", queryset=_failing_executions(), to_attr="failing_executions"
)


def campaign_list(
    *,
    statuses: Iterable[str] | None = DEFAULT_VISIBLE_STATUSES,
    search: str = "",
    tags: Iterable[str] = (),
) -> QuerySet[Campaign]:
    """Campaigns with what a list row shows, in a constant number of queries."""
    queryset = Campaign.objects.select_related(
        "live_version__segment", "draft_version__segment"
    ).prefetch_related("tags", _FAILING_EXECUTIONS)
    if statuses is not None:
        queryset = queryset.filter(status__in=list(statuses))
    if search:
        queryset = queryset.filter(Q(name__icontains=search) | Q(description__icontains=search))
    tag_names = [t for t in tags if t]
    if tag_names:
        queryset = queryset.filter(tags__name__in=tag_names).distinct()
    return queryset


def campaign_versions(*, campaign: Campaign) -> QuerySet[CampaignVersion]:
    return (
        CampaignVersion.objects.filter(campaign=campaign)
        .select_related("segment", "activated_by")
        .prefetch_related("actions__preset")
        .order_by("-number")
    )


def campaign_transitions(*, campaign: Campaign) -> QuerySet[CampaignTransition]:
    return CampaignTransition.objects.filter(campaign=campaign).select_related("by", "version")


def version_activation_problems(*, version: CampaignVersion | None, now: dt.datetime) -> list[str]:
    """Every reason this version cannot be activated now; empty when it can."""
    if version is None:
        return ["There is no draft version to activate."]
    problems = []
    segment = version.segment
    if segment is None:
        problems.append("Choose a segment: the campaign has no audience.")
    elif segment.kind == SegmentKind.RULES:
        # A tree stored before today's checks would fail the planning of every batch.
        problems.extend(
            f"Segment “{segment.name}”, rules: {message}" for message in rule_errors(segment.rules)
        )
    if version.start_at is not None and version.start_at <= now:
        problems.append(
            f"The start time {version.start_at.isoformat()} is in the past; "
            "choose a future time or leave it empty to start now."
        )
    actions = list(version.actions.select_related("preset"))
    if not actions:
        problems.append("Add at least one channel action.")
    for action in actions:
        channel = action.get_channel_display()
        preset = action.preset
        if preset.channel != action.channel:
            problems.append(
                f"{channel} action: preset “{preset.name}” is for "
                f"{preset.get_channel_display()}, not {channel}."
            )
        required = REQUIRED_SENDER_FIELD.get(preset.channel)
        if required and not getattr(preset, required):
            problems.append(f"{channel} action: preset “{preset.name}” has no {required}.")
        if not action.body.strip():
            problems.append(f"{channel} action: the body is empty.")
        if action.channel == "email" and not action.subject.strip():
            problems.append(f"{channel} action: an email needs a subject.")
        try:
            validate_content(subject=action.subject, body=action.body)
        except TemplateContentError as error:
            for field, messages in error.message_dict.items():
                problems.extend(f"{channel} action, {field}: {message}" for message in messages)
    return problems


def _state_allows(campaign: Campaign, name: str) -> bool:
    """Whether the campaign's current state lets the operation through (the services decide
    again under the row lock)."""
    running = campaign.status in (Status.SCHEDULED, Status.LIVE)
    if name in ("activate", "stop", "archive"):
        return can_proceed(getattr(campaign, name))
    if name == "modify":
        return running and campaign.draft_version_id is None
    if name == "discard_draft":
        return running and campaign.draft_version_id is not None
    if name == "delete":
        return campaign.status == Status.DRAFT
    return name == "duplicate"


def campaign_operations(*, campaign: Campaign, user: Actor) -> list[str]:
    """The operations this user may take on this campaign in its current state, in the
    order of the operations table."""
    return [
        name
        for name, operation in OPERATIONS.items()
        if operation.allowed_to(user) and _state_allows(campaign, name)
    ]


def campaign_report(*, campaign: Campaign) -> dict[str, Any]:
    """Delivery counts of every execution of the campaign, from the counters the engine
    keeps (a few rows, however large the audience): `{"total", "by_status": {pending, sent,
    failed, skipped}, "by_channel": {channel: {"total", pending, sent, failed, skipped}}}`.
    Correct at any moment of a run."""
    statuses = list(DeliveryStatus.values)
    by_status = dict.fromkeys(statuses, 0)
    by_channel: dict[str, dict[str, int]] = {}
    rows = (
        DeliveryCount.objects.filter(execution__campaign=campaign)
        .values_list("action__channel", "status")
        .annotate(total=Sum("count"))
        .order_by()
    )
    for channel, status, count in rows:
        by_status[status] += count
        counts = by_channel.setdefault(channel, {"total": 0, **dict.fromkeys(statuses, 0)})
        counts[status] += count
        counts["total"] += count
    return {
        "total": sum(by_status.values()),
        "by_status": {str(k): v for k, v in by_status.items()},
        "by_channel": dict(sorted(by_channel.items())),
    }


def campaign_delivery_error(*, campaign: Campaign) -> dict[str, Any] | None:
    """The error of a step of the campaign's delivery that failed, or None: `{"step",
    "error", "at", "attempts", "retrying"}` (retrying: the engine will try the step
    again; else it gave up, and the execution is Failed). Reads what `campaign_list`
    prefetched when it is there."""
    executions = getattr(campaign, "failing_executions", None)
    if executions is None:
        executions = list(_failing_executions().filter(campaign=campaign)[:1])
    if not executions:
        return None
    execution = executions[0]
    return {
        "step": execution.error_step,
        "error": execution.error,
        "at": execution.error_at,
        "attempts": execution.error_attempts,
        "retrying": execution.status == ExecutionStatus.RUNNING,
    }


def delivery_error_summary(error: dict[str, Any]) -> str:
    """A failing step (`campaign_delivery_error`) in one sentence: what failed, how often,
    and what the engine does now."""
    times = f"{error['attempts']} time{'' if error['attempts'] == 1 else 's'}"
    then = (
        "Retrying."
        if error["retrying"]
        else "Delivery has stopped; what was not sent stays pending until the campaign is stopped."
    )
    return f"{error['step']} failed {times}: {error['error']} {then}"
