"""Read-only queries over campaigns, shared by the admin, the API and the commands."""

from __future__ import annotations

import datetime as dt
import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from django.conf import settings
from django.contrib.auth.models import AbstractUser, AnonymousUser
from django.core.exceptions import ValidationError
from django.db.models import (
    BigIntegerField,
    BooleanField,
    Case,
    CharField,
    Count,
    Exists,
    ExpressionWrapper,
    F,
    Max,
    OuterRef,
    Prefetch,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.text import capfirst
from django_fsm import can_proceed

from channels.choices import CHANNELS, ChannelKind
from channels.models import REQUIRED_SENDER_FIELD
from channels.rendering import TemplateContentError, validate_content
from config.permissions import require_perms
from segments.choices import SegmentKind
from segments.models import ADDRESS_FIELDS, Profile
from segments.rules import rule_errors

from .approval import NEEDED_STATUS, approval_step_refusal
from .choices import (
    ALL_STATUSES,
    DEFAULT_VISIBLE_STATUSES,
    DELIVERY_TERMINAL_STATUSES,
    ApprovalStatus,
    CampaignKind,
    CampaignStatus,
    CheckLevel,
    DeliveryReason,
    DeliveryStatus,
    ExecutionStatus,
    ReviewCode,
    VersionRole,
)
from .engagement import campaign_engagement
from .experiments import variant_html_refusal, variants_text
from .models import (
    ACTION_CONTENT_FIELDS,
    TIMELINE_BUCKET_S,
    Campaign,
    CampaignTransition,
    CampaignVersion,
    ChannelAction,
    Delivery,
    DeliveryCount,
    DeliveryTimeline,
    Execution,
    html_body_refusal,
)
from .operations import OPERATIONS, VIEW_CAMPAIGN
from .recurrence import next_occurrences, recurrence_parse

Status = CampaignStatus
# Who asks: a person (admin, API, `--user`), or None in services for the system itself.
Actor = AbstractUser | AnonymousUser
# The statuses in which a campaign's execution sends. While a new version is being
# activated, the running execution goes on with its own.
SENDING_CAMPAIGN_STATUSES = (CampaignStatus.LIVE, CampaignStatus.ACTIVATING)


def timeline_bucket(at: dt.datetime) -> int:
    """The timeline bucket a moment falls in: its start, in seconds since the epoch."""
    return int(at.timestamp()) // TIMELINE_BUCKET_S * TIMELINE_BUCKET_S


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


# --- what a list row shows: delivery figures and alerts ---------------------------------


def _delivered(*statuses: str) -> Coalesce:
    """The campaign's deliveries in these statuses over all its executions, from the
    engine's counters (a few rows per execution, however large the audience)."""
    counts = DeliveryCount.objects.filter(execution__campaign=OuterRef("pk"))
    if statuses:
        counts = counts.filter(status__in=statuses)
    total = counts.order_by().values("execution__campaign").annotate(n=Sum("count")).values("n")
    return Coalesce(Subquery(total, output_field=BigIntegerField()), Value(0))


def stalled_executions(*, now: dt.datetime) -> QuerySet[Execution]:
    """Running executions with no progress for SALVO_DELIVERY_STALL_AFTER_S: those the
    scheduler's stall check (`delivery.executions_resume_stalled`) resumes, and the list's
    "stuck" alert."""
    cutoff = now - dt.timedelta(seconds=settings.SALVO_DELIVERY_STALL_AFTER_S)
    # One whose deliveries all wait for a later moment (the recipients' local time, quiet
    # hours) is not stalled before that moment (``delivery.timing``).
    return Execution.objects.filter(
        Q(waiting_until__isnull=True) | Q(waiting_until__lt=cutoff),
        status=ExecutionStatus.RUNNING,
        last_progress_at__lt=cutoff,
    )


@dataclass(frozen=True)
class AlertRule:
    """One reason a campaign deserves a look: its code (in the API's `alerts`), the
    condition on a row of `campaign_list`, and the sentence the list's tooltip says."""

    code: str
    condition: Q
    label: str

    @property
    def annotation(self) -> str:
        """The name of the boolean `campaign_list` annotates each row with."""
        return f"alert_{self.code}"


def alert_rules() -> list[AlertRule]:
    """Every alert, written once: the admin list's icon and its "has alerts" filter, the
    API's `alerts` and `?has_alerts=` all read these conditions over `campaign_list`'s
    rows (never per row: they are evaluated by the list's one query)."""
    rate = settings.SALVO_ALERT_FAILURE_RATE
    stall_s = settings.SALVO_DELIVERY_STALL_AFTER_S
    return [
        AlertRule("activation_failed", ~Q(activation_error=""), "Its last activation failed."),
        AlertRule(
            "delivery_error",
            Q(has_failing_step=True),
            "A step of its delivery failed (the error is on its page).",
        ),
        AlertRule(
            "failure_rate",
            Q(delivery_failed__gt=F("delivery_decided") * Value(rate)),
            f"More than {rate:.0%} of its messages sent or failed so far failed.",
        ),
        AlertRule(
            "stalled",
            Q(has_stalled_execution=True),
            f"Its delivery has made no progress for more than {stall_s:g} seconds.",
        ),
    ]


def _with_list_figures(queryset: QuerySet[Campaign], *, now: dt.datetime) -> QuerySet[Campaign]:
    """Annotate what a row shows and what the alerts test: delivery counts, the latest
    audience size, the start time, whether a step failed or the delivery is stuck, then
    one boolean per alert rule."""
    latest_execution = Execution.objects.filter(campaign=OuterRef("pk")).order_by(
        "-started_at", "-id"
    )
    queryset = queryset.annotate(
        delivery_total=_delivered(),
        delivery_sent=_delivered(DeliveryStatus.SENT),
        delivery_failed=_delivered(DeliveryStatus.FAILED),
        delivery_done=_delivered(*DELIVERY_TERMINAL_STATUSES),
        delivery_decided=_delivered(DeliveryStatus.SENT, DeliveryStatus.FAILED),
        audience_size=Subquery(latest_execution.values("audience_size")[:1]),
        start_time=Coalesce("started_at", "live_version__start_at", "draft_version__start_at"),
        has_failing_step=Exists(_failing_executions().filter(campaign=OuterRef("pk"))),
        has_stalled_execution=Exists(stalled_executions(now=now).filter(campaign=OuterRef("pk"))),
    )
    return queryset.annotate(
        **{
            rule.annotation: ExpressionWrapper(rule.condition, output_field=BooleanField())
            for rule in alert_rules()
        }
    )


def campaign_alerts(campaign: Campaign) -> list[AlertRule]:
    """The alerts that hold for the campaign: read from its row when it comes from
    `campaign_list` (no query), else from one query through it."""
    rules = alert_rules()
    if not hasattr(campaign, rules[0].annotation):
        campaign = campaign_list(statuses=None).get(pk=campaign.pk)
    return [rule for rule in rules if getattr(campaign, rule.annotation)]


def _any_alert() -> Q:
    condition = Q()
    for rule in alert_rules():
        condition |= rule.condition
    return condition


def _shown_version_has_channel(channels: list[str]) -> Exists:
    """The version a row shows (the running one, else the draft) has an action on one of
    these channels."""
    return Exists(
        ChannelAction.objects.filter(
            version_id=Coalesce(OuterRef("live_version_id"), OuterRef("draft_version_id")),
            channel__in=channels,
        )
    )


# The people the open draft's approval names (campaigns.approval.campaign_approval).
APPROVAL_PEOPLE = (
    "draft_version__last_edited_by",
    "draft_version__approval_requested_by",
    "draft_version__approval_decided_by",
)


def campaign_list(
    *,
    statuses: Iterable[str] | None = DEFAULT_VISIBLE_STATUSES,
    search: str = "",
    tags: Iterable[str] = (),
    channels: Iterable[str] = (),
    kind: str = "",
    has_alerts: bool | None = None,
    awaiting_approval: bool | None = None,
    start_from: dt.date | None = None,
    start_to: dt.date | None = None,
    now: dt.datetime | None = None,
) -> QuerySet[Campaign]:
    """Campaigns with what a list row shows (channels, audience, delivery counts, alerts),
    in a constant number of queries.

    `kind`: one ``CampaignKind`` only (every kind when empty);
    `channels`: the version the row shows (running, else draft) sends on any of them;
    `has_alerts`: some rule of `alert_rules()` holds (True) or none does (False);
    `awaiting_approval`: the open draft awaits an approval (True) or not (False);
    `start_from`/`start_to`: the day it went Live, or else is set to start, in the current
    time zone, both ends included.
    """
    queryset = Campaign.objects.select_related(
        "live_version__segment", "draft_version__segment", *APPROVAL_PEOPLE
    ).prefetch_related(
        "tags",
        _FAILING_EXECUTIONS,
        "live_version__actions__variants",
        "draft_version__actions__variants",
    )
    queryset = _with_list_figures(queryset, now=now or timezone.now())
    if statuses is not None:
        queryset = queryset.filter(status__in=list(statuses))
    if search:
        queryset = queryset.filter(Q(name__icontains=search) | Q(description__icontains=search))
    tag_names = [t for t in tags if t]
    if tag_names:
        queryset = queryset.filter(tags__name__in=tag_names).distinct()
    if kind:
        queryset = queryset.filter(kind=kind)
    channel_names = [c for c in channels if c]
    if channel_names:
        queryset = queryset.filter(_shown_version_has_channel(channel_names))
    if has_alerts is True:
        queryset = queryset.filter(_any_alert())
    elif has_alerts is False:
        queryset = queryset.exclude(_any_alert())
    awaiting = Q(draft_version__approval_status=ApprovalStatus.AWAITING)
    if awaiting_approval is True:
        queryset = queryset.filter(awaiting)
    elif awaiting_approval is False:
        queryset = queryset.exclude(awaiting)
    if start_from is not None:
        queryset = queryset.filter(Q(start_time__date__gte=start_from))
    if start_to is not None:
        queryset = queryset.filter(Q(start_time__date__lte=start_to))
    return queryset


def campaign_versions(*, campaign: Campaign) -> QuerySet[CampaignVersion]:
    return (
        CampaignVersion.objects.filter(campaign=campaign)
        .select_related("segment", "activated_by")
        .prefetch_related("actions__preset", "actions__variants")
        .order_by("-number")
    )


def version_role(campaign: Campaign, version: CampaignVersion | None = None) -> VersionRole:
    """What `version` (the live one unless given) is to the campaign now: its draft; the
    live version scheduled until the campaign starts, running while it sends (or activates
    with it), its last run once the campaign has ended; or a past version."""
    version_id = campaign.live_version_id if version is None else version.pk
    if version_id is not None and version_id == campaign.draft_version_id:
        return VersionRole.DRAFT
    if version_id != campaign.live_version_id:
        return VersionRole.PAST
    if campaign.status == CampaignStatus.SCHEDULED:
        return VersionRole.SCHEDULED
    if campaign.status in (CampaignStatus.LIVE, CampaignStatus.ACTIVATING):
        return VersionRole.RUNNING
    return VersionRole.LAST_RUN


def campaign_transitions(*, campaign: Campaign) -> QuerySet[CampaignTransition]:
    return CampaignTransition.objects.filter(campaign=campaign).select_related("by", "version")


@dataclass(frozen=True)
class Check:
    """One finding of a campaign's review: its weight, stable code, words, and the field
    it is about (``segment``, ``start_at``, ``actions[1].body``; empty for the whole)."""

    level: str  # CheckLevel
    code: str  # ReviewCode
    message: str
    field: str = ""

    def as_dict(self) -> dict[str, str]:
        return {
            "level": self.level,
            "code": self.code,
            "message": self.message,
            "field": self.field,
        }


def _error(code: str, message: str, field: str = "") -> Check:
    return Check(CheckLevel.ERROR, code, message, field)


def version_actions(*, version: CampaignVersion) -> QuerySet[ChannelAction]:
    """The version's actions in the order they were given: ``actions[i]`` at every door."""
    return ChannelAction.objects.filter(version=version).select_related("preset").order_by("pk")


def _recurrence_errors(version: CampaignVersion, *, now: dt.datetime) -> list[Check]:
    """A recurring campaign's version needs a valid recurrence with an occurrence to come."""
    if version.campaign.kind != CampaignKind.RECURRING:
        return []
    if not version.recurrence:
        return []  # a warning of the review (campaigns.review): it would send nothing
    try:
        rule = recurrence_parse(version.recurrence)
    except ValidationError as error:
        return [
            _error(ReviewCode.INVALID_RECURRENCE, f"Recurrence, {key}: {message}", "recurrence")
            for key, messages in error.message_dict.items()
            for message in messages
        ]
    start = max(version.start_at or now, now)
    if not next_occurrences(rule, zone=version.time_zone, start=start, end=version.end_at):
        return [
            _error(
                ReviewCode.NO_OCCURRENCE,
                "The recurrence has no occurrence to come before its end; move the end later.",
                "end_at",
            )
        ]
    return []


def version_activation_errors(*, version: CampaignVersion | None, now: dt.datetime) -> list[Check]:
    """Every reason this version cannot be activated now, as review errors; empty when it
    can."""
    if version is None:
        return [_error(ReviewCode.NO_DRAFT, "There is no draft version to activate.")]
    errors = []
    segment = version.segment
    # An API-triggered campaign needs no segment: each trigger call names its recipients.
    triggered = version.campaign.kind == CampaignKind.API_TRIGGERED
    if segment is None and not triggered:
        errors.append(
            _error(
                ReviewCode.NO_SEGMENT, "Choose a segment: the campaign has no audience.", "segment"
            )
        )
    elif segment is not None and segment.kind == SegmentKind.RULES:
        # A tree stored before today's checks would fail the planning of every batch.
        errors.extend(
            _error(
                ReviewCode.INVALID_RULES, f"Segment “{segment.name}”, rules: {message}", "segment"
            )
            for message in rule_errors(segment.rules)
        )
    errors.extend(_recurrence_errors(version, now=now))
    # A running recurring campaign's new version keeps the start it began with (past).
    started = version.campaign.kind == CampaignKind.RECURRING and version.campaign.live_version_id
    if version.start_at is not None and version.start_at <= now and not started:
        errors.append(
            _error(
                ReviewCode.START_IN_PAST,
                f"The start time {version.start_at.isoformat()} is in the past; "
                "choose a future time or leave it empty to start now.",
                "start_at",
            )
        )
    actions = list(version_actions(version=version).prefetch_related("variants"))
    if not actions:
        errors.append(_error(ReviewCode.NO_ACTION, "Add at least one channel action.", "actions"))
    for index, action in enumerate(actions):
        where = f"actions[{index}]"
        channel = action.get_channel_display()
        preset = action.preset
        if preset.channel != action.channel:
            errors.append(
                _error(
                    ReviewCode.PRESET_CHANNEL,
                    f"{channel} action: preset “{preset.name}” is for "
                    f"{preset.get_channel_display()}, not {channel}.",
                    f"{where}.preset",
                )
            )
        required = REQUIRED_SENDER_FIELD.get(preset.channel)
        if required and not getattr(preset, required):
            errors.append(
                _error(
                    ReviewCode.PRESET_INCOMPLETE,
                    f"{channel} action: preset “{preset.name}” has no {required}.",
                    f"{where}.preset",
                )
            )
        if not action.body.strip():
            errors.append(
                _error(
                    ReviewCode.EMPTY_BODY, f"{channel} action: the body is empty.", f"{where}.body"
                )
            )
        if CHANNELS[action.channel].subject_required and not action.subject.strip():
            errors.append(
                _error(
                    ReviewCode.MISSING_SUBJECT,
                    f"{channel} action: an email needs a subject.",
                    f"{where}.subject",
                )
            )
        errors.extend(
            _content_errors(action, what=f"{channel} action", where=where, triggered=triggered)
        )
        errors.extend(_variant_errors(action, where=where, channel=channel, triggered=triggered))
    return errors


def _variant_errors(
    action: ChannelAction, *, where: str, channel: str, triggered: bool
) -> list[Check]:
    """What keeps the action's stored variants from rendering: their content, and their
    parts against the action's (``experiments.variant_html_refusal``)."""
    errors = []
    for index, variant in enumerate(action.variants.all()):
        at = f"{where}.variants[{index}]"
        refusal = (
            ""
            if html_body_refusal(action.channel)
            else variant_html_refusal(
                variant.label,
                action_html=bool(action.html_body),
                variant_html=bool(variant.html_body),
            )
        )
        if refusal:
            errors.append(
                _error(ReviewCode.TEMPLATE_ERROR, f"{channel} action: {refusal}", f"{at}.html_body")
            )
        errors.extend(
            _content_errors(
                variant,
                what=f"{channel} action, variant {variant.label}",
                where=at,
                triggered=triggered,
            )
        )
    return errors


def _content_errors(content: Any, *, what: str, where: str, triggered: bool) -> list[Check]:
    """What keeps an action's or a variant's content (``ACTION_CONTENT_FIELDS``) from
    rendering, each on its field."""
    try:
        validate_content(
            **{field: getattr(content, field) for field in ACTION_CONTENT_FIELDS},
            trigger_context=triggered,
        )
    except TemplateContentError as error:
        return [
            _error(ReviewCode.TEMPLATE_ERROR, f"{what}, {field}: {message}", f"{where}.{field}")
            for field, messages in error.message_dict.items()
            for message in messages
        ]
    return []


def version_activation_problems(*, version: CampaignVersion | None, now: dt.datetime) -> list[str]:
    """Every reason this version cannot be activated now; empty when it can."""
    return [check.message for check in version_activation_errors(version=version, now=now)]


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
    if name in NEEDED_STATUS:
        return not approval_step_refusal(campaign, name)
    return name == "duplicate"


def campaign_operations(*, campaign: Campaign, user: Actor) -> list[str]:
    """The operations this user may take on this campaign in its current state, in the
    order of the operations table."""
    return [
        name
        for name, operation in OPERATIONS.items()
        if operation.allowed_to(user) and _state_allows(campaign, name)
    ]


def _count_rows(campaign: Campaign) -> list[tuple[int, str, int, str, str, int]]:
    """The campaign's delivery counters: (execution, channel, version number, status,
    reason, count), one row per distinct outcome (a few per channel, however large the
    audience)."""
    rows = (
        DeliveryCount.objects.filter(execution__campaign=campaign)
        .values_list("execution_id", "action__channel", "version__number", "status", "reason")
        .annotate(total=Sum("count"))
        .order_by()
    )
    return [(e, c, v, s, r, int(n)) for e, c, v, s, r, n in rows]


def _status_counts() -> dict[str, int]:
    return {"total": 0, **dict.fromkeys(DeliveryStatus.values, 0)}


def _counts(rows: Iterable[tuple[int, str, int, str, str, int]]) -> dict[str, Any]:
    """`{"total", "by_status", "by_channel"}` of the counter rows given."""
    by_status = dict.fromkeys(DeliveryStatus.values, 0)
    by_channel: dict[str, dict[str, int]] = {}
    for _, channel, _, status, _, count in rows:
        by_status[status] += count
        counts = by_channel.setdefault(channel, _status_counts())
        counts[status] += count
        counts["total"] += count
    return {
        "total": sum(by_status.values()),
        "by_status": {str(k): v for k, v in by_status.items()},
        "by_channel": dict(sorted(by_channel.items())),
    }


def campaign_delivery_counts(*, campaign: Campaign) -> dict[str, Any]:
    """Delivery counts of every execution of the campaign, from the counters the engine
    keeps: `{"total", "by_status": {pending, sent, failed, skipped}, "by_channel":
    {channel: {"total", pending, sent, failed, skipped}}}`. Correct at any moment of a
    run; one query."""
    return _counts(_count_rows(campaign))


# The report's chart has at most this many points: buckets are merged into the shortest of
# REPORT_TIMELINE_INTERVALS_S that keeps the campaign's span within it.
REPORT_TIMELINE_MAX_POINTS = 120
REPORT_TIMELINE_INTERVALS_S = (
    5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
)  # fmt: skip
# The current rate is what finished over this many seconds up to now.
REPORT_RATE_WINDOW_S = 60


def timeline_interval(span_s: float) -> int:
    """The chart's interval for a campaign that has been sending for `span_s` seconds."""
    for interval in REPORT_TIMELINE_INTERVALS_S:
        if span_s / interval <= REPORT_TIMELINE_MAX_POINTS:
            return interval
    return int(-(-span_s // REPORT_TIMELINE_MAX_POINTS) // 86400 + 1) * 86400


def _epoch(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def _timeline(
    campaign: Campaign, executions: list[Execution], channels: list[str], *, now: dt.datetime
) -> dict[str, Any]:
    """Sent and failed per channel per interval, from the first execution's start to the
    last one's end (or now), every interval listed (zeros included); one query."""
    if not executions:
        return {"interval_s": TIMELINE_BUCKET_S, "points": []}
    start = min(_epoch(e.started_at) for e in executions)
    end = max(_epoch(e.finished_at or now) for e in executions)
    interval = timeline_interval(end - start)
    first = start // interval * interval
    slot = (
        F("bucket")
        / Value(interval, output_field=BigIntegerField())
        * Value(interval, output_field=BigIntegerField())
    )
    rows = (
        DeliveryTimeline.objects.filter(
            execution__campaign=campaign,
            status__in=[DeliveryStatus.SENT, DeliveryStatus.FAILED],
        )
        .annotate(slot=slot)
        .values_list("slot", "action__channel", "status")
        .annotate(total=Sum("count"))
        .order_by()
    )
    found: dict[int, dict[str, dict[str, int]]] = {}
    last = end // interval * interval
    for at, channel, status, count in rows:
        found.setdefault(int(at), {}).setdefault(status, {})[channel] = int(count)
        last = max(last, int(at))
    points: list[dict[str, Any]] = []
    for at in range(first, last + 1, interval):
        counts = found.get(at, {})
        point: dict[str, Any] = {"at": dt.datetime.fromtimestamp(at, tz=dt.UTC)}
        for status in (DeliveryStatus.SENT, DeliveryStatus.FAILED):
            point[str(status)] = {c: counts.get(status, {}).get(c, 0) for c in channels}
        points.append(point)
    return {"interval_s": interval, "points": points}


def _rate(
    campaign: Campaign,
    executions: list[Execution],
    pending: dict[str, int],
    *,
    now: dt.datetime,
) -> dict[str, Any]:
    """Deliveries finished per second over the last REPORT_RATE_WINDOW_S seconds, per
    channel and in all, and the time left at that rate, per channel and in all (None when
    it cannot be told: the campaign no longer sends, or a channel with deliveries left
    finished none lately); one query."""
    window_start = timeline_bucket(now) - REPORT_RATE_WINDOW_S + TIMELINE_BUCKET_S
    running = [e for e in executions if e.status == ExecutionStatus.RUNNING]
    per_channel: dict[str, float] = dict.fromkeys(pending, 0.0)
    if running:
        since = max(window_start, min(e.started_at.timestamp() for e in running))
        seconds = max(1.0, now.timestamp() - since)
        rows = (
            DeliveryTimeline.objects.filter(
                execution__in=[e.pk for e in running], bucket__gte=window_start
            )
            .values_list("action__channel")
            .annotate(total=Sum("count"))
            .order_by()
        )
        for channel, count in rows:
            per_channel[channel] = round(int(count) / seconds, 2)
    sending = campaign.status in SENDING_CAMPAIGN_STATUSES and bool(running)
    left: dict[str, float | None] = {}
    for channel, waiting in pending.items():
        if not waiting:
            left[channel] = 0.0
        elif not sending or not per_channel.get(channel):
            left[channel] = None
        else:
            left[channel] = round(waiting / per_channel[channel], 1)
    known = [seconds for seconds in left.values() if seconds is not None]
    time_left = None if len(known) < len(left) else max(known, default=0.0)
    return {
        "window_s": REPORT_RATE_WINDOW_S,
        "per_s": round(sum(per_channel.values()), 2),
        "by_channel": dict(sorted(per_channel.items())),
        "time_left_s": time_left,
        "time_left_s_by_channel": dict(sorted(left.items())),
    }


def campaign_report(*, campaign: Campaign, now: dt.datetime | None = None) -> dict[str, Any]:
    """What a campaign's deliveries came to, from the counters the engine keeps: the same
    few queries for ten deliveries or ten million.

    `campaign_delivery_counts`' `total`, `by_status` and `by_channel`, and:
    `by_reason` (per channel, how many were skipped or failed for each `DeliveryReason`),
    `by_version` (per version number, how many were decided with its content, by status;
    pending ones are decided by no version yet), `timeline` (sent and failed per channel
    per `interval_s`), `rate` (finished per second lately, and the time left at that
    rate) and `executions` (each run with its own counts, newest first; a recurring
    campaign's with the occurrence it is for, skipped ones included)."""
    now = now or timezone.now()
    executions = list(
        Execution.objects.filter(campaign=campaign)
        .select_related("version")
        .order_by("-started_at", "-id")
    )
    rows = _count_rows(campaign)
    report = _counts(rows)
    by_version: dict[str, dict[str, int]] = {}
    for _, _, version, status, _, count in rows:
        if status != DeliveryStatus.PENDING and count:
            counts = by_version.setdefault(str(version), _status_counts())
            counts[status] += count
            counts["total"] += count
    for counts in by_version.values():
        del counts[DeliveryStatus.PENDING]
    pending = {c: counts[DeliveryStatus.PENDING] for c, counts in report["by_channel"].items()}
    report.update(
        by_reason=_reasons(rows),
        by_version=dict(sorted(by_version.items(), key=lambda item: int(item[0]))),
        timeline=_timeline(campaign, executions, _channels(executions), now=now),
        rate=_rate(campaign, executions, pending, now=now),
        waiting=campaign_waiting(campaign, executions, now=now),
        # Delivered, bounced, complained, unsubscribed, opened, clicked (campaigns.engagement).
        engagement=campaign_engagement(
            campaign=campaign,
            sent_by_channel={c: n[DeliveryStatus.SENT] for c, n in report["by_channel"].items()},
            sent_by_version={v: n[DeliveryStatus.SENT] for v, n in by_version.items()},
        ),
        executions=[
            {
                "id": execution.pk,
                "version": execution.version.number,
                "status": execution.status,
                "started_at": execution.started_at,
                "finished_at": execution.finished_at,
                "deliveries_dropped_at": execution.deliveries_dropped_at,
                "audience_size": execution.audience_size,
                "planning_done": execution.planning_done,
                # A recurring campaign's occurrence this run is for (None for one-shot).
                "scheduled_for": execution.scheduled_for,
                **_counts(row for row in rows if row[0] == execution.pk),
                "by_reason": _reasons(row for row in rows if row[0] == execution.pk),
            }
            for execution in executions
        ],
    )
    return report


def campaign_waiting(
    campaign: Campaign, executions: Iterable[Execution], *, now: dt.datetime
) -> dict[str, dict[str, dict[str, Any]]]:
    """What still waits for a later moment (``delivery.timing``, an experiment's winner):
    per channel and reason (``recipient_time``, ``quiet_hours``, ``winner_wait``), how many
    deliveries and until when the last of them waits (``{"count", "until"}``). Read from
    the running executions' pending rows, only while an execution runs whose version sends
    in local time, keeps quiet hours (its own or its presets') or tests before sending the
    winner: the counters count pending rows by none of these reasons,
    so the rows are read (one scan of the execution's rows), and no other report pays
    for it."""
    running = [e for e in executions if e.status == ExecutionStatus.RUNNING]
    timed = [
        e.pk
        for e in running
        if e.version.in_recipient_time_zone
        or e.version.quiet_hours_start is not None
        or e.version.test_share  # the rest waits for the experiment's winner
    ]
    if len(timed) < len(running):
        # The running version's presets send the rest of the run (``delivery.sending``).
        versions = {e.version_id for e in running} | {campaign.live_version_id}
        quiet_presets = ChannelAction.objects.filter(
            version_id__in=versions, preset__quiet_hours_start__isnull=False
        )
        if quiet_presets.exists():
            timed = [e.pk for e in running]
    if not timed:
        return {}
    rows = (
        Delivery.objects.filter(
            execution_id__in=timed,
            status=DeliveryStatus.PENDING,
            reason__in=(
                DeliveryReason.RECIPIENT_TIME,
                DeliveryReason.QUIET_HOURS,
                DeliveryReason.WINNER_WAIT,
            ),
            next_attempt_at__gt=now,
        )
        .values("action__channel", "reason")
        .annotate(count=Count("id"), until=Max("next_attempt_at"))
        .order_by("action__channel", "reason")
    )
    waiting: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        waiting.setdefault(row["action__channel"], {})[row["reason"]] = {
            "count": row["count"],
            "until": row["until"],
        }
    return waiting


def _reasons(rows: Iterable[tuple[int, str, int, str, str, int]]) -> dict[str, dict[str, int]]:
    """Per channel, how many of the counter rows given were skipped or failed for each
    reason (codes of `DeliveryReason`)."""
    by_reason: dict[str, dict[str, int]] = {}
    for _, channel, _, status, reason, count in rows:
        if reason and status != DeliveryStatus.PENDING and count:
            reasons = by_reason.setdefault(channel, {})
            reasons[reason] = reasons.get(reason, 0) + count
    return {c: dict(sorted(r.items())) for c, r in sorted(by_reason.items())}


def _channels(executions: list[Execution]) -> list[str]:
    """The channels of the executions' versions; one query."""
    versions = [e.version_id for e in executions]
    rows = ChannelAction.objects.filter(version_id__in=versions).values_list("channel", flat=True)
    return sorted(set(rows))


# --- who got it, who did not, and why ----------------------------------------------------

# A delivery row reveals the profile's address: reading them takes the permissions of both.
DELIVERY_VIEW_PERMISSIONS = (VIEW_CAMPAIGN, "segments.view_profile")
# What a row of `campaign_deliveries` shows, in this order: the API's fields and the CSV
# export's columns.
DELIVERY_COLUMNS = (
    "profile_external_id",
    "address",
    "channel",
    "status",
    "reason",
    "error",
    "attempts",
    "provider_message_id",
    "version_number",
    "sent_at",
    "updated_at",
)


def _profile_field(field: str) -> Subquery:
    """The delivery's profile's field, by its primary key: a subquery rather than a join,
    so that a row whose profile was deleted since stays listed (a delivery is history),
    with an empty value."""
    profile = Profile.objects.filter(pk=OuterRef("profile_id")).order_by()
    return Subquery(profile.values(field)[:1])


def _delivery_address() -> Coalesce:
    """The address the delivery's channel reads: the profile's field for the channel, the
    preset's URL for a webhook."""
    address = Case(
        *(
            When(action__channel=channel, then=_profile_field(field))
            for channel, field in ADDRESS_FIELDS.items()
        ),
        default=F("action__preset__webhook_url"),
        output_field=CharField(),
    )
    return Coalesce(address, Value(""))


class CountedDeliveries(QuerySet[Delivery]):
    """`campaign_deliveries`' rows when the engine's counters already know how many there
    are: `count()`, which every paginator asks, reads those few counter rows instead of
    counting millions of deliveries. A further filter (any change of the WHERE clause),
    a slice or DISTINCT forgets the number, and `count()` counts rows again."""

    counted: int | None = None
    counted_where: Any = None

    def _clone(self) -> CountedDeliveries:
        clone = cast(CountedDeliveries, super()._clone())  # type: ignore[misc]
        clone.counted, clone.counted_where = self.counted, self.counted_where
        return clone

    def count(self) -> int:
        query = self.query
        if (
            self.counted is not None
            and query.where == self.counted_where
            and not query.is_sliced
            and not query.distinct
            and query.combinator is None
        ):
            return self.counted
        return super().count()


def _counted_rows(
    rows: QuerySet[Delivery], executions: list[int], actions: list[int] | None, **exact: str
) -> CountedDeliveries:
    """`rows` that know their number from the counters of these executions (and actions),
    with the `status` / `reason` given (empty: any)."""
    counters = DeliveryCount.objects.filter(execution_id__in=executions)
    if actions is not None:
        counters = counters.filter(action_id__in=actions)
    counters = counters.filter(**{name: value for name, value in exact.items() if value})
    counted = CountedDeliveries(model=Delivery, query=rows.query.chain(), using=rows.db)
    counted.counted = int(counters.aggregate(n=Sum("count"))["n"] or 0)
    counted.counted_where = counted.query.where
    return counted


def campaign_deliveries(
    *,
    campaign: Campaign,
    user: Actor | None,
    channel: str = "",
    status: str = "",
    reason: str = "",
    version: int | None = None,
    search: str = "",
) -> QuerySet[Delivery]:
    """The campaign's deliveries, one row per recipient and channel of every execution,
    annotated with `DELIVERY_COLUMNS` (the profile's external id and address, the channel
    and the version number), in the order of the unique index (execution, action,
    profile). `PermissionDenied` unless `user` may see campaigns and profiles (None: the
    system).

    Every condition narrows the rows the unique index finds by execution first (there is
    no index on status, reason or version: they are read from those rows). `search` is a
    profile's external id, email or phone, exactly. A row keeps its place when its profile
    was deleted since (history outlives it), with an empty id and address. One or two
    small queries find the executions and actions; then a page, or the whole export, is
    one query whatever its length (the profile's fields are looked up by primary key).
    """
    require_perms(user, *DELIVERY_VIEW_PERMISSIONS, to="see a campaign's deliveries")
    # Not the runs whose deliveries retention dropped: their counters would count rows
    # that are gone.
    executions = list(
        Execution.objects.filter(campaign=campaign, deliveries_dropped_at=None).values_list(
            "pk", flat=True
        )
    )
    rows = Delivery.objects.filter(execution_id__in=executions)
    actions = None
    if channel:
        of_channel = ChannelAction.objects.filter(version__campaign=campaign, channel=channel)
        actions = list(of_channel.values_list("pk", flat=True))
        rows = rows.filter(action_id__in=actions)
    if status:
        rows = rows.filter(status=status)
    if reason:
        rows = rows.filter(reason=reason)
    if version is not None:
        rows = rows.filter(
            version_id__in=CampaignVersion.objects.filter(campaign=campaign, number=version)
            .order_by()
            .values("pk")
        )
    if search:
        rows = rows.filter(
            profile_id__in=Profile.objects.filter(
                Q(external_id=search) | Q(email__iexact=search) | Q(phone=search)
            )
            .order_by()
            .values("pk")
        )
    rows = rows.annotate(
        profile_external_id=Coalesce(_profile_field("external_id"), Value("")),
        address=_delivery_address(),
        channel=F("action__channel"),
        version_number=F("version__number"),
    ).order_by("execution_id", "action_id", "profile_id")
    if version is None and not search:
        # The counters are kept by execution, action, status and reason (their version is
        # the one a pending row will be decided with, not the row's own): they answer
        # every filter but these two.
        return _counted_rows(rows, executions, actions, status=status, reason=reason)
    return rows


def version_change_notes(*, campaign: Campaign) -> list[str]:
    """What activating the campaign's open draft changes for the execution under way, as
    the admin says it before activation: content applies to every delivery not yet sent,
    a changed segment (or an added channel) from the next execution, a removed channel
    skips what is left of it. Empty when no execution is under way or no draft is open."""
    live, draft = campaign.live_version, campaign.draft_version
    if live is None or draft is None or campaign.status != Status.LIVE:
        return []
    actions = {
        (a.version_id, a.channel): a
        for a in ChannelAction.objects.filter(version_id__in=[live.pk, draft.pk])
    }
    before = {channel for version, channel in actions if version == live.pk}
    after = {channel for version, channel in actions if version == draft.pk}
    label = {value: str(name) for value, name in ChannelKind.choices}
    notes = []
    if draft.segment_id != live.segment_id:
        notes.append(
            "The segment change applies to the next execution: the one under way keeps "
            "its audience."
        )
    for channel in sorted(after - before):
        notes.append(
            f"{label[channel]} is added: it goes out from the next execution, not in the "
            "one under way."
        )
    for channel in sorted(before - after):
        notes.append(
            f"{label[channel]} is removed: the {label[channel]} deliveries not yet sent "
            "are skipped (reason: channel removed)."
        )
    changed = [
        channel
        for channel in sorted(before & after)
        if any(
            getattr(actions[(live.pk, channel)], field)
            != getattr(actions[(draft.pk, channel)], field)
            for field in ("preset_id", *ACTION_CONTENT_FIELDS)
        )
    ]
    if changed:
        notes.append(
            "The new content of "
            + ", ".join(label[c] for c in changed)
            + " applies to every delivery not yet sent, from the moment the activation "
            "commits."
        )
    return notes


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


# The admin home's dashboard shows this many Live campaigns and this many transitions.
DASHBOARD_LIVE_SHOWN = 10
DASHBOARD_TRANSITIONS_SHOWN = 10


def progress_percent(done: int, total: int) -> int:
    """How far `done` of `total` deliveries got, in whole percent (rounded down: 100 only
    when all are done); 0 when there are none."""
    return 100 * done // total if total else 0


def campaign_dashboard() -> dict[str, Any]:
    """What the admin home shows of the campaigns, in four queries however many there are:
    `{"by_status": [(status, label, count)], "live": [campaign with delivery_done,
    delivery_total and progress_percent], "live_count", "transitions": [last ones]}`.
    Progress counts sent, failed and skipped deliveries against all planned ones, from
    the engine's counters."""
    counts = dict(
        Campaign.objects.order_by()
        .values_list("status")
        .annotate(n=Count("pk"))
        .values_list("status", "n")
    )
    live_campaigns = Campaign.objects.filter(status=Status.LIVE)
    live = list(
        live_campaigns.annotate(
            delivery_done=_delivered(*DELIVERY_TERMINAL_STATUSES),
            delivery_total=_delivered(),
        ).order_by("-started_at", "-id")[:DASHBOARD_LIVE_SHOWN]
    )
    for campaign in live:
        done, total = campaign.delivery_done, campaign.delivery_total
        campaign.progress_percent = progress_percent(done, total)
    transitions = list(
        CampaignTransition.objects.select_related("campaign", "by", "version")[
            :DASHBOARD_TRANSITIONS_SHOWN
        ]
    )
    return {
        "by_status": [(value, label, counts.get(value, 0)) for value, label in Status.choices],
        "live": live,
        "live_count": counts.get(Status.LIVE, 0),
        "transitions": transitions,
    }


# --- comparing two versions -------------------------------------------------------------


@dataclass(frozen=True)
class FieldDiff:
    """One field of two versions side by side; `lines` is a line diff of a text field
    (`(mark, text)`, mark "-" only in the older, "+" only in the newer, " " in both),
    None for a one-line value."""

    label: str
    old: str
    new: str
    lines: list[tuple[str, str]] | None = None

    @property
    def changed(self) -> bool:
        return self.old != self.new


@dataclass(frozen=True)
class SectionDiff:
    """A part of the versions: their audience and schedule, or one channel's action.
    `state` is "changed", "same", "added" (only in the newer) or "removed"."""

    title: str
    state: str
    fields: list[FieldDiff]


def _text_diff(label: str, old: str, new: str) -> FieldDiff:
    lines = [
        (line[0], line[2:])
        for line in difflib.ndiff(old.splitlines(), new.splitlines())
        if line[0] in "+- "
    ]
    return FieldDiff(label, old, new, lines)


def _segment_text(version: CampaignVersion) -> str:
    return str(version.segment) if version.segment else "— (none chosen)"


def _start_text(version: CampaignVersion) -> str:
    if version.start_at is None:
        return "As soon as activated"
    return timezone.localtime(version.start_at).isoformat(sep=" ", timespec="minutes")


def version_diff(*, old: CampaignVersion, new: CampaignVersion) -> list[SectionDiff]:
    """What changed from `old` to `new` of one campaign: the segment, the start time and
    each channel's action (preset, content fields and variants as the admin writes them,
    compared line by line). Four queries."""
    old_actions, new_actions = (
        {
            action.channel: action
            for action in version.actions.select_related("preset").prefetch_related("variants")
        }
        for version in (old, new)
    )
    audience = [
        FieldDiff(
            "Segment", str(old.segment or "— (none chosen)"), str(new.segment or "— (none chosen)")
        ),
        FieldDiff("Start", _start_text(old), _start_text(new)),
    ]
    sections = [
        SectionDiff(
            "Audience and schedule",
            "changed" if any(f.changed for f in audience) else "same",
            audience,
        )
    ]
    labels = dict(ChannelAction._meta.get_field("channel").choices or ())
    for channel in sorted(old_actions.keys() | new_actions.keys()):
        before, after = old_actions.get(channel), new_actions.get(channel)
        fields = [
            FieldDiff(
                "Preset",
                before.preset.name if before else "",
                after.preset.name if after else "",
            ),
            *(
                _text_diff(
                    capfirst(getattr(ChannelAction._meta.get_field(field), "verbose_name", field)),
                    getattr(before, field) if before else "",
                    getattr(after, field) if after else "",
                )
                for field in ACTION_CONTENT_FIELDS
                # Only an email has an HTML part: no empty row for the other channels.
                if field != "html_body" or not html_body_refusal(channel)
            ),
        ]
        # Content experiments: each variant's share and content, its HTML part too, as the
        # admin writes them; no row when neither version has variants.
        variants = [
            variants_text(action.variants.all()) if action else "" for action in (before, after)
        ]
        if any(variants):
            fields.append(_text_diff("Variants", *variants))
        if before is None:
            state = "added"
        elif after is None:
            state = "removed"
        else:
            state = "changed" if any(f.changed for f in fields) else "same"
        sections.append(SectionDiff(f"{labels.get(channel, channel)} action", state, fields))
    return sections
