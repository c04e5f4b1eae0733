"""Campaign domain functions.

The admin, the REST API, the management commands and the Celery tasks all change
campaigns through these functions and nothing else. Each runs in one transaction, locks
the campaign row it changes (so that of two concurrent transitions exactly one wins),
validates everything, and records the step in the campaign's transition log.

Errors: `django_fsm.TransitionNotAllowed` and `CampaignConflict` when the current state
refuses the operation (409), `ValidationError` for bad input (400), `PermissionDenied`
when the user lacks the permission (403). `user=None` means the system (scheduler,
activation task, staff commands).
"""

from __future__ import annotations

import datetime as dt
import functools
import zoneinfo
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.utils import timezone
from django_fsm import TransitionNotAllowed, can_proceed

from channels.choices import ChannelKind, subject_refusal
from channels.models import MessagePreset, quiet_hours_refusal
from channels.rendering import TemplateContentError, validate_content
from config.permissions import require_perms
from segments.models import Segment

from . import clock, tasks
from .approval import (
    approval_step_refusal,
    clean_comment,
    require_approved_for_activation,
    require_not_last_editor,
    require_policy_change_allowed,
)
from .caps import require_exemption_change_allowed
from .choices import (
    VARIANT_LABELS,
    ApprovalStatus,
    CampaignKind,
    CampaignStatus,
    CampaignType,
    ExperimentMetric,
)
from .delivery import error_text, execution_start, hold_campaign_sends, step_policy
from .delivery.timing import LOCAL_TIME_LEAD, go_live_at
from .exceptions import ActivationRefused, CampaignConflict
from .experiments import (
    Split,
    holdout_refusal,
    split_of,
    test_then_winner_refusals,
    variants_refusals,
    version_split_refusal,
)
from .lifecycle import (
    campaign_complete as campaign_complete,  # the operations table names it here
)
from .lifecycle import (
    draft_discard,
    lock_campaign,
    status_label,
    transition_actor,
    transition_apply,
    transition_log,
    transition_refusal,
)
from .models import (
    ACTION_CONTENT_FIELDS,
    Campaign,
    CampaignTransition,
    CampaignVersion,
    ChannelAction,
    Variant,
    approval_required_by_default,
    html_body_refusal,
    site_time_zone,
)
from .occurrences import occurrence_plan_next
from .operations import ADD_CAMPAIGN, CHANGE_CAMPAIGN, OPERATIONS, VIEW_CAMPAIGN
from .recurrence import next_occurrences, recurrence_parse
from .review import activation_review
from .selectors import Actor, version_activation_problems
from .triggers import trigger_executions_halt

Status = CampaignStatus

CAMPAIGN_FIELDS: tuple[str, ...] = ("name", "description", "type", "kind", "approval_required")
# Frequency caps: the exemption is the campaign's own, changed only with its permission.
CAMPAIGN_FIELDS += ("frequency_cap_exempt",)
# Own open and click tracking (campaigns.tracking): the campaign's, like its type.
CAMPAIGN_FIELDS += ("track_opens", "track_clicks")
VERSION_FIELDS = ("segment", "start_at", "time_zone")
# A recurring campaign's schedule (campaigns.recurrence, campaigns.occurrences).
RECURRENCE_FIELDS = ("recurrence", "end_at", "once_per_profile")
# Sending in each recipient's local time, and quiet hours (``delivery.timing``).
TIMING_FIELDS = ("in_recipient_time_zone", "quiet_hours_start", "quiet_hours_end")
# Content experiments (campaigns.experiments); an action's variants come with its actions.
EXPERIMENT_FIELDS = ("holdout_share", "test_share", "winner_after", "winner_metric")


# --- helpers ---------------------------------------------------------------------------


def _require_operation(user: Actor | None, name: str) -> None:
    """The permissions of the operations table, checked for a person (None: the system)."""
    operation = OPERATIONS[name]
    require_perms(user, *operation.permissions, to=f"use “{operation.label}” on a campaign")


def _validate_start_at(start_at: dt.datetime | None) -> None:
    if start_at is not None and start_at <= timezone.now():
        raise ValidationError(
            {"start_at": "The start time is in the past; choose a future time or leave it empty."}
        )


def _validate_time_zone(name: str) -> None:
    """A schedule's zone is one of the IANA zones this machine knows ("" for the site's)."""
    if name and name not in zoneinfo.available_timezones():
        raise ValidationError({"time_zone": f"“{name}” is not a time zone name."})


def _validate_recurrence(campaign: Campaign, version: CampaignVersion) -> None:
    """A recurrence is valid, belongs to a recurring campaign, and has an occurrence at or
    before the end; the stored form is the parsed one (every key, weekdays by name)."""
    if not version.recurrence:
        version.recurrence = None
        return
    if campaign.kind != CampaignKind.RECURRING:
        raise ValidationError(
            {"recurrence": "Only a recurring campaign has a recurrence; set its kind first."}
        )
    try:
        rule = recurrence_parse(version.recurrence)
    except ValidationError as error:
        raise ValidationError(
            {
                "recurrence": [
                    f"{key}: {message}"
                    for key, messages in error.message_dict.items()
                    for message in messages
                ]
            }
        ) from error
    version.recurrence = rule.as_json()
    start = version.start_at or clock.now()
    if version.end_at is not None and not next_occurrences(
        rule, zone=version.time_zone, start=start, end=version.end_at
    ):
        raise ValidationError(
            {"end_at": "The recurrence has no occurrence between the start and this end."}
        )


def _validate_timing(
    *, kind: str, start_at: dt.datetime | None, in_recipient_time_zone: bool, quiet: Any
) -> None:
    """Local time needs a clock time to read: a one-shot campaign's start (a recurring
    one's occurrences have theirs); an API-triggered campaign sends when it is called.
    Quiet hours come in pairs."""
    errors = dict(quiet_hours_refusal(quiet.get("quiet_hours_start"), quiet.get("quiet_hours_end")))
    if in_recipient_time_zone:
        if kind == CampaignKind.API_TRIGGERED:
            errors["in_recipient_time_zone"] = (
                "An API-triggered campaign sends when it is triggered, not at a local time."
            )
        elif kind == CampaignKind.ONE_SHOT and start_at is None:
            errors["in_recipient_time_zone"] = (
                "Sending in each recipient's time zone needs a start: the date and clock "
                "time to send at."
            )
    if errors:
        raise ValidationError(errors)


def _content_errors(
    where: str, channel: str, content: Mapping[str, Any], *, trigger_context: bool
) -> list[str]:
    """What keeps an action's (or a variant's) content from ever rendering, or from going
    on its channel (a subject on an SMS, an HTML part on anything but an email)."""
    content = {field: content.get(field) or "" for field in ACTION_CONTENT_FIELDS}
    refusal = subject_refusal(channel) if content["subject"] else ""
    if refusal:
        return [f"{where}.subject: {refusal}"]
    refusal = html_body_refusal(channel) if content["html_body"] else ""
    if refusal:
        return [f"{where}.html_body: {refusal}"]
    try:
        validate_content(**content, trigger_context=trigger_context)
    except TemplateContentError as error:
        return [
            f"{where}.{field}: {message}"
            for field, messages in error.message_dict.items()
            for message in messages
        ]
    return []


def _variant_errors(
    where: str, channel: str, variants: Any, *, html_body: str, trigger_context: bool
) -> list[str]:
    """What is wrong with an action's variants: their number, shares and parts against the
    action's HTML part `html_body` (``experiments.variants_refusals``), and each one's
    content."""
    if not isinstance(variants, list | tuple):
        return [f"{where}.variants: a list of variants, each with its share, subject and body."]
    if not all(isinstance(variant, Mapping) for variant in variants):
        return [f"{where}.variants: each variant is an object with its share, subject and body."]
    errors = [
        f"{where}.{key}: {message}"
        for key, messages in variants_refusals(
            variants, channel=channel, html_body=html_body
        ).items()
        for message in messages
    ]
    for index, variant in enumerate(variants):
        errors += _content_errors(
            f"{where}.variants[{index}]", channel, variant, trigger_context=trigger_context
        )
    return errors


def _validate_holdout(value: Any) -> None:
    refusal = holdout_refusal(value)
    if refusal:
        raise ValidationError({"holdout_share": refusal})


def _validate_test_then_winner(campaign: Campaign, version: CampaignVersion) -> None:
    """ "Test, then send the winner" needs a share and a time, on a one-shot campaign."""
    errors = test_then_winner_refusals(
        kind=campaign.kind,
        test_share=version.test_share,
        winner_after=version.winner_after,
        in_recipient_time_zone=version.in_recipient_time_zone,
    )
    if version.winner_metric not in ExperimentMetric.values:
        errors["winner_metric"] = f"Choose one of {', '.join(ExperimentMetric.values)}."
    if errors:
        raise ValidationError(errors)


def _replace_actions(version: CampaignVersion, actions: Iterable[Mapping[str, Any]]) -> None:
    """Make the version's channel actions (and their variants) exactly `actions`,
    validating each."""
    errors: list[str] = []
    seen: set[str] = set()
    rows = []
    variants: list[list[Mapping[str, Any]]] = []
    splits: list[tuple[str, Split]] = []
    trigger_context = version.campaign.kind == CampaignKind.API_TRIGGERED
    for index, spec in enumerate(actions):
        channel = spec.get("channel")
        preset = spec.get("preset")
        where = f"actions[{index}]"
        if channel not in ChannelKind.values:
            errors.append(f"{where}.channel: choose one of {', '.join(ChannelKind.values)}.")
            continue
        if channel in seen:
            errors.append(f"{where}.channel: a version has at most one {channel} action.")
            continue
        seen.add(channel)
        if not isinstance(preset, MessagePreset):
            errors.append(f"{where}.preset: choose a message preset.")
            continue
        if preset.channel != channel:
            errors.append(
                f"{where}.preset: “{preset.name}” is a {preset.get_channel_display()} preset, "
                f"not {ChannelKind(channel).label}."
            )
            continue
        found = _content_errors(where, channel, spec, trigger_context=trigger_context)
        found += _variant_errors(
            where,
            channel,
            spec.get("variants") or [],
            html_body=spec.get("html_body") or "",
            trigger_context=trigger_context,
        )
        if found:
            errors.extend(found)
            continue
        rows.append(
            ChannelAction(
                version=version,
                channel=channel,
                preset=preset,
                **{field: spec.get(field) or "" for field in ACTION_CONTENT_FIELDS},
            )
        )
        variants.append(list(spec.get("variants") or []))
        splits.append((ChannelKind(channel).label, split_of(v["share"] for v in variants[-1])))
    refusal = "" if errors else version_split_refusal(splits)
    if refusal:
        errors.append(f"actions: {refusal}")
    if errors:
        raise ValidationError({"actions": errors})
    version.actions.all().delete()
    ChannelAction.objects.bulk_create(rows)
    Variant.objects.bulk_create(
        Variant(
            action=action,
            label=label,
            share=variant["share"],
            **{field: variant.get(field) or "" for field in ACTION_CONTENT_FIELDS},
        )
        for action, specs in zip(rows, variants, strict=True)
        for label, variant in zip(VARIANT_LABELS[1:], specs, strict=False)
    )


def _copy_version(
    source: CampaignVersion, *, campaign: Campaign, number: int, user: Actor | None
) -> CampaignVersion:
    copy = CampaignVersion.objects.create(
        campaign=campaign,
        number=number,
        segment=source.segment,
        start_at=source.start_at,
        time_zone=source.time_zone,
        recurrence=source.recurrence,
        end_at=source.end_at,
        once_per_profile=source.once_per_profile,
        **{field: getattr(source, field) for field in (*TIMING_FIELDS, *EXPERIMENT_FIELDS)},
        last_edited_by=transition_actor(user),
    )
    sources = list(source.actions.prefetch_related("variants"))
    copies = ChannelAction.objects.bulk_create(
        ChannelAction(
            version=copy,
            channel=a.channel,
            preset_id=a.preset_id,
            **{field: getattr(a, field) for field in ACTION_CONTENT_FIELDS},
        )
        for a in sources
    )
    Variant.objects.bulk_create(
        Variant(
            action=action,
            label=v.label,
            share=v.share,
            **{field: getattr(v, field) for field in ACTION_CONTENT_FIELDS},
        )
        for action, a in zip(copies, sources, strict=True)
        for v in a.variants.all()
    )
    return copy


def _next_version_number(campaign: Campaign) -> int:
    highest = campaign.versions.aggregate(n=Max("number"))["n"] or 0
    return int(highest) + 1


# --- create and edit ----------------------------------------------------------------


@transaction.atomic
def campaign_create(
    *,
    user: Actor | None,
    name: str,
    description: str = "",
    type: str = CampaignType.MARKETING,
    kind: str = CampaignKind.ONE_SHOT,
    tags: Iterable[str] = (),
    segment: Segment | None = None,
    start_at: dt.datetime | None = None,
    time_zone: str = "",
    in_recipient_time_zone: bool = False,
    quiet_hours_start: dt.time | None = None,
    quiet_hours_end: dt.time | None = None,
    actions: Iterable[Mapping[str, Any]] = (),
    approval_required: bool | None = None,
    recurrence: Mapping[str, Any] | None = None,
    end_at: dt.datetime | None = None,
    once_per_profile: bool = False,
    frequency_cap_exempt: bool = False,
    track_opens: bool = False,
    track_clicks: bool = False,
    holdout_share: int = 0,
    test_share: int = 0,
    winner_after: dt.timedelta | None = None,
    winner_metric: str = ExperimentMetric.OPENED,
) -> Campaign:
    """A new Draft campaign whose version 1 holds the given content. `approval_required`
    defaults to SALVO_APPROVAL_REQUIRED."""
    require_perms(user, ADD_CAMPAIGN, to="create a campaign")
    campaign = Campaign(
        name=name,
        description=description,
        type=type,
        kind=kind,
        track_opens=track_opens,
        track_clicks=track_clicks,
        created_by=transition_actor(user),
    )
    if approval_required is not None:
        require_policy_change_allowed(campaign=None, required=approval_required, user=user)
        campaign.approval_required = approval_required
    require_exemption_change_allowed(campaign=None, exempt=frequency_cap_exempt, user=user)
    campaign.frequency_cap_exempt = frequency_cap_exempt
    campaign.full_clean(exclude=["status", "live_version", "draft_version"])
    _validate_start_at(start_at)
    _validate_time_zone(time_zone)
    timing = {
        "in_recipient_time_zone": in_recipient_time_zone,
        "quiet_hours_start": quiet_hours_start,
        "quiet_hours_end": quiet_hours_end,
    }
    _validate_timing(
        kind=kind, start_at=start_at, in_recipient_time_zone=in_recipient_time_zone, quiet=timing
    )
    _validate_holdout(holdout_share)
    campaign.save()
    version = CampaignVersion(
        campaign=campaign,
        number=1,
        segment=segment,
        start_at=start_at,
        time_zone=time_zone or site_time_zone(),
        recurrence=recurrence,
        end_at=end_at,
        once_per_profile=once_per_profile,
        **timing,
        holdout_share=holdout_share,
        test_share=test_share,
        winner_after=winner_after,
        winner_metric=winner_metric,
        last_edited_by=transition_actor(user),
    )
    _validate_recurrence(campaign, version)
    _validate_test_then_winner(campaign, version)
    version.save()
    _replace_actions(version, actions)
    campaign.draft_version = version
    campaign.save(update_fields=["draft_version", "updated_at"])
    campaign.tags.set(list(tags))
    transition_log(campaign, "create", source=campaign.status, user=user, version=version)
    return campaign


@transaction.atomic
def campaign_update(*, campaign: Campaign, user: Actor | None, data: Mapping[str, Any]) -> Campaign:
    """Edit a campaign's open draft version (and its name, description, tags, type).

    Only the keys present in `data` change; `actions`, when given, replaces all actions.
    The edited campaign is shown to the editor: editing needs the view permission too.
    """
    require_perms(user, VIEW_CAMPAIGN, CHANGE_CAMPAIGN, to="edit a campaign")
    campaign = lock_campaign(campaign)
    if campaign.status == Status.ACTIVATING:
        raise CampaignConflict(
            f"Campaign “{campaign.name}” is being activated; edit it once activation ends."
        )
    version = campaign.draft_version
    if version is None:
        raise CampaignConflict(
            f"Campaign “{campaign.name}” has no draft version to edit"
            + (
                "; use “modify” to open one."
                if campaign.status in (Status.SCHEDULED, Status.LIVE)
                else f": a {status_label(campaign.status)} campaign cannot change."
            )
        )
    if "approval_required" in data:
        require_policy_change_allowed(
            campaign=campaign, required=data["approval_required"], user=user
        )
    if "frequency_cap_exempt" in data:
        require_exemption_change_allowed(
            campaign=campaign, exempt=data["frequency_cap_exempt"], user=user
        )
    written_before = _draft_content(campaign, version)
    if campaign.live_version_id is not None:
        for fixed in ("type", "kind"):
            if fixed in data and data[fixed] != getattr(campaign, fixed):
                raise ValidationError(
                    {
                        fixed: f"The {fixed} cannot change once the campaign has run; "
                        "duplicate it instead."
                    }
                )
    for field in CAMPAIGN_FIELDS:
        if field in data:
            setattr(campaign, field, data[field])
    campaign.full_clean(exclude=["status", "live_version", "draft_version"])
    if "start_at" in data:
        _validate_start_at(data["start_at"])
    if "time_zone" in data:
        _validate_time_zone(data["time_zone"])
        data = {**data, "time_zone": data["time_zone"] or site_time_zone()}
    if "holdout_share" in data:
        _validate_holdout(data["holdout_share"])
    for field in (*VERSION_FIELDS, *RECURRENCE_FIELDS, *TIMING_FIELDS, *EXPERIMENT_FIELDS):
        if field in data:
            setattr(version, field, data[field])
    _validate_recurrence(campaign, version)
    _validate_test_then_winner(campaign, version)
    _validate_timing(
        kind=campaign.kind,
        start_at=version.start_at,
        in_recipient_time_zone=version.in_recipient_time_zone,
        quiet={f: getattr(version, f) for f in TIMING_FIELDS},
    )
    version.save()
    if "actions" in data:
        _replace_actions(version, data["actions"])
    campaign.save()
    if "tags" in data:
        campaign.tags.set(list(data["tags"]))
    if _draft_content(campaign, version) != written_before:
        _version_edited(campaign, version, user=user)
    return campaign


@transaction.atomic
def campaign_delete(*, campaign: Campaign, user: Actor | None) -> None:
    """Delete a Draft that never ran; anything else is stopped or archived instead."""
    _require_operation(user, "delete")
    campaign = lock_campaign(campaign)
    if campaign.status != Status.DRAFT:
        raise CampaignConflict(
            f"Campaign “{campaign.name}” is {status_label(campaign.status)}: only Draft campaigns "
            "can be deleted; stop or archive it instead."
        )
    campaign.draft_version = None
    campaign.save(update_fields=["draft_version"])
    campaign.delete()


# --- lifecycle ------------------------------------------------------------------------


def activation_refusal(campaign: Campaign) -> TransitionNotAllowed | None:
    """Why the campaign's state refuses activation now (as ``campaign_activate`` would
    say), or None: for a door that reviews before it activates."""
    return None if can_proceed(campaign.activate) else transition_refusal(campaign, "activate")


@transaction.atomic
def campaign_activate(
    *, campaign: Campaign, user: Actor | None, acknowledge: Iterable[str] = ()
) -> Campaign:
    """Draft → Activating (or a running campaign's open draft), once the review
    (``campaigns.review``) passes: no error, and every warning's code in `acknowledge`;
    else ``ActivationRefused`` (400) naming what refused. The errors are checked again in
    the activation task, which moves the campaign to Scheduled or Live."""
    _require_operation(user, "activate")
    campaign = lock_campaign(campaign)
    if not can_proceed(campaign.activate):
        raise transition_refusal(campaign, "activate")
    require_approved_for_activation(campaign)
    review = activation_review(campaign=campaign, sample=False)
    refused = review.errors or review.unacknowledged(frozenset(acknowledge))
    if refused:
        raise ActivationRefused(review=review, refused=refused)
    transition_apply(campaign, "activate", user=user, version=campaign.draft_version)

    campaign_pk = campaign.pk
    transaction.on_commit(lambda: tasks.campaign_activation_task.delay(campaign_pk))
    return campaign


def _activation_request(campaign: Campaign) -> CampaignTransition | None:
    """The log entry of the activation under way: where it began, and who asked."""
    return campaign.transitions.filter(name="activate").order_by("-at", "-id").first()


def _fail_activation(campaign: Campaign, *, reason: str) -> Campaign:
    """Activating → the status the activation began from, with `reason` shown."""
    request = _activation_request(campaign)
    return transition_apply(
        campaign,
        "activation_fail",
        user=None,
        reason=reason,
        version=campaign.draft_version,
        error=reason,
        return_to=request.source if request else Status.DRAFT,
    )


@transaction.atomic
def campaign_activation_complete(*, campaign_id: int) -> Campaign:
    """The activation task's work: re-check, then Scheduled/Live, or back with the reason.

    Safe to run twice: a campaign no longer Activating is left as it is.

    A new version of a Live campaign applies to every delivery not yet sent from the
    moment this commits: first wait for the chunks on their way to the provider (with the
    running version's content) and hold off new ones until then, as a stop does; each
    chunk then reads the new running version. Its segment applies from the next execution
    (the running one keeps its audience).
    """
    hold_campaign_sends(campaign_id=campaign_id)
    campaign = lock_campaign(campaign_id)
    if campaign.status != Status.ACTIVATING:
        return campaign
    request = _activation_request(campaign)
    requested_by = request.by if request else None
    version = campaign.draft_version
    now = clock.now()
    # The start time is judged at the moment the user activated: one still ahead then that
    # passed while this task waited in the queue starts the campaign now, not a refusal.
    asked_at = min(request.at, now) if request else now
    problems = version_activation_problems(version=version, now=asked_at)
    if problems or version is None:
        return _fail_activation(campaign, reason=" ".join(problems))
    version.activated_at = now
    version.activated_by = requested_by
    version.save()
    campaign.live_version = version
    campaign.draft_version = None
    transition_apply(
        campaign,
        "activation_succeed",
        user=None,
        version=version,
        reason=f"Version {version.number} activated.",
        start_at=go_live_at(version),
        now=now,
    )
    if campaign.status == Status.LIVE and campaign.started_at is None:
        campaign.started_at = now
        campaign.save(update_fields=["started_at", "updated_at"])
    if campaign.status == Status.LIVE:
        execution_start(campaign=campaign)
    occurrence_plan_next(campaign=campaign, now=now)
    return campaign


def campaigns_start_due(*, now: dt.datetime | None = None) -> list[int]:
    """Scheduled → Live for every campaign whose start time has come; returns their ids."""
    now = now or clock.now()
    due = Campaign.objects.filter(
        # A version sent in the recipients' zones starts up to a day before its start.
        Q(live_version__start_at__lte=now)
        | Q(
            live_version__in_recipient_time_zone=True,
            live_version__start_at__lte=now + LOCAL_TIME_LEAD,
        ),
        status=Status.SCHEDULED,
    ).values_list("pk", flat=True)
    started = []
    for pk in list(due):
        with transaction.atomic():
            campaign = lock_campaign(pk)
            start_at = go_live_at(campaign.live_version) if campaign.live_version else None
            if campaign.status != Status.SCHEDULED or (start_at and start_at > now):
                continue
            transition_apply(campaign, "start", user=None, reason="Start time reached.", now=now)
            execution_start(campaign=campaign)
            started.append(pk)
    return started


@transaction.atomic
def campaign_activation_failed(*, campaign_id: int, error: BaseException) -> float | None:
    """Record that a run of the activation task raised `error`. Returns the seconds after
    which to run it again, or None when it must not run again: the campaign is no longer
    Activating, or SALVO_STEP_MAX_ATTEMPTS runs were used and the activation fails back
    to the status it began from, with the error shown."""
    campaign = lock_campaign(campaign_id)
    if campaign.status != Status.ACTIVATING:
        return None
    policy = step_policy()
    attempt = max(1, campaign.activation_attempts)
    text = error_text(error)
    if not policy.may_retry(attempt=attempt):
        _fail_activation(
            campaign, reason=f"The activation failed {attempt} times; the last error: {text}"
        )
        return None
    campaign.activation_attempts = attempt + 1
    campaign.activation_error = (
        f"Attempt {attempt} of {policy.max_attempts} failed, trying again: {text}"
    )
    campaign.save(update_fields=["activation_attempts", "activation_error", "updated_at"])
    return policy.delay(attempt=attempt)


def campaigns_retry_stale_activations(*, older_than: dt.timedelta) -> list[int]:
    """Send the activation task again for campaigns stuck in Activating for `older_than`
    (its message was lost), each run counted: once SALVO_STEP_MAX_ATTEMPTS runs were sent,
    the activation fails instead. Returns the ids of the campaigns whose task was sent."""
    cutoff = timezone.now() - older_than
    stale = Campaign.objects.filter(status=Status.ACTIVATING, updated_at__lt=cutoff)
    sent = []
    for pk in list(stale.values_list("pk", flat=True)):
        with transaction.atomic():
            campaign = lock_campaign(pk)
            if campaign.status != Status.ACTIVATING or campaign.updated_at >= cutoff:
                continue  # it moved on meanwhile
            attempts = campaign.activation_attempts
            if not step_policy().may_retry(attempt=max(1, attempts)):
                last = campaign.activation_error
                last = f" The last error: {last}" if last else ""
                _fail_activation(
                    campaign,
                    reason=f"The activation did not finish after {attempts} attempts.{last}",
                )
                continue
            # Counted, and dated: the next tick does not send it again at once.
            campaign.activation_attempts = attempts + 1
            campaign.save(update_fields=["activation_attempts", "updated_at"])
            transaction.on_commit(functools.partial(tasks.campaign_activation_task.delay, pk))
            sent.append(pk)
    return sent


@transaction.atomic
def campaign_stop(*, campaign: Campaign, user: Actor | None, reason: str = "") -> Campaign:
    """Scheduled or Live → Stopped. Terminal: no delivery starts after this commits, and
    an open draft is discarded with it."""
    _require_operation(user, "stop")
    # First wait for the chunks on their way to the provider, holding off new ones.
    hold_campaign_sends(campaign_id=campaign.pk)
    campaign = lock_campaign(campaign)
    campaign.next_run_at = None  # a recurring campaign's occurrences to come are cancelled
    transition_apply(campaign, "stop", user=user, reason=reason)
    trigger_executions_halt(campaign=campaign)
    draft_discard(campaign, user=user, why="the campaign stopped")
    return campaign


@transaction.atomic
def campaign_archive(*, campaign: Campaign, user: Actor | None) -> Campaign:
    """Completed or Stopped → Archived."""
    _require_operation(user, "archive")
    campaign = lock_campaign(campaign)
    return transition_apply(campaign, "archive", user=user)


# --- versions -------------------------------------------------------------------------


@transaction.atomic
def campaign_modify(*, campaign: Campaign, user: Actor | None) -> CampaignVersion:
    """Open a draft version of a Scheduled or Live campaign, a copy of the running one."""
    _require_operation(user, "modify")
    campaign = lock_campaign(campaign)
    if campaign.status not in (Status.SCHEDULED, Status.LIVE):
        raise CampaignConflict(
            f"Cannot modify campaign “{campaign.name}”: it is "
            f"{status_label(campaign.status)}; only a Scheduled or Live campaign can be modified"
            + (" (edit its draft directly)." if campaign.status == Status.DRAFT else ".")
        )
    if campaign.draft_version_id is not None:
        raise CampaignConflict(
            f"Campaign “{campaign.name}” already has an open draft "
            f"(version {campaign.draft_version.number})."  # type: ignore[union-attr]
        )
    assert campaign.live_version is not None  # guaranteed by campaign_activated_has_live_version
    draft = _copy_version(
        campaign.live_version, campaign=campaign, number=_next_version_number(campaign), user=user
    )
    campaign.draft_version = draft
    campaign.save()
    transition_log(campaign, "modify", source=campaign.status, user=user, version=draft)
    return draft


@transaction.atomic
def campaign_discard_draft(*, campaign: Campaign, user: Actor | None) -> Campaign:
    """Drop the open draft of a Scheduled or Live campaign; the running version stays."""
    _require_operation(user, "discard_draft")
    campaign = lock_campaign(campaign)
    draft = campaign.draft_version
    if campaign.status not in (Status.SCHEDULED, Status.LIVE) or draft is None:
        raise CampaignConflict(
            f"Campaign “{campaign.name}” has no open draft beside a running version to discard"
            + ("; delete the Draft campaign instead." if campaign.status == Status.DRAFT else ".")
        )
    draft_discard(campaign, user=user)
    return campaign


def _duplicate_name(name: str) -> str:
    base = f"{name} (copy)"
    candidate, n = base, 2
    while Campaign.objects.filter(name=candidate).exists():
        candidate, n = f"{name} (copy {n})", n + 1
    return candidate[:200]


@transaction.atomic
def campaign_duplicate(*, campaign: Campaign, user: Actor | None, name: str = "") -> Campaign:
    """A new Draft with the latest content of any campaign (its draft, else its live version)."""
    _require_operation(user, "duplicate")
    source = campaign.draft_version or campaign.live_version
    copy = Campaign(
        name=name or _duplicate_name(campaign.name),
        description=campaign.description,
        type=campaign.type,
        kind=campaign.kind,
        track_opens=campaign.track_opens,
        track_clicks=campaign.track_clicks,
        # A copy is no way around the policy: it needs an approval as the original does.
        approval_required=campaign.approval_required or approval_required_by_default(),
        created_by=transition_actor(user),
    )
    copy.full_clean(exclude=["status", "live_version", "draft_version"])
    try:
        with transaction.atomic():
            copy.save()
    except IntegrityError as error:
        raise ValidationError({"name": "A campaign with this name already exists."}) from error
    if source is not None:
        version = _copy_version(source, campaign=copy, number=1, user=user)
    else:
        version = CampaignVersion.objects.create(
            campaign=copy, number=1, last_edited_by=transition_actor(user)
        )
    copy.draft_version = version
    copy.save(update_fields=["draft_version", "updated_at"])
    copy.tags.set(list(campaign.tags.names()))
    transition_log(
        copy, "duplicate", source=copy.status, user=user, reason=f"Copy of “{campaign.name}”."
    )
    return copy


# --- approval (the policy's rules: campaigns.approval) ---------------------------------


def _draft_content(campaign: Campaign, version: CampaignVersion) -> tuple[Any, ...]:
    """What an approval approves: everything the draft sends, to whom and when. A save
    that changes none of it (the admin's "Save and activate" of an untouched form) is no
    edit."""
    actions = version.actions.order_by("channel").values_list(
        "channel", "preset_id", *ACTION_CONTENT_FIELDS
    )
    variants = Variant.objects.filter(action__version=version).order_by("action__channel", "label")
    return (
        campaign.name,
        campaign.description,
        campaign.type,
        campaign.kind,
        campaign.track_opens,
        campaign.track_clicks,
        version.segment_id,
        version.start_at,
        version.time_zone,
        version.recurrence,
        version.end_at,
        version.once_per_profile,
        *(getattr(version, field) for field in (*TIMING_FIELDS, *EXPERIMENT_FIELDS)),
        list(actions),
        list(variants.values_list("action__channel", "label", "share", *ACTION_CONTENT_FIELDS)),
        sorted(campaign.tags.names()),
    )


def _version_edited(campaign: Campaign, version: CampaignVersion, *, user: Actor | None) -> None:
    """Record who edited the draft last; an approval given before the edit is void."""
    version.last_edited_by = transition_actor(user)
    was_approved = version.approval_status == ApprovalStatus.APPROVED
    if was_approved:
        version.approval_status = ApprovalStatus.NOT_REQUESTED
    version.save(update_fields=["last_edited_by", "approval_status"])
    if not was_approved:
        return
    transition_log(
        campaign,
        "void_approval",
        source=campaign.status,
        user=user,
        version=version,
        reason=f"Version {version.number} changed after its approval; request a new one.",
    )


def _approval_step(campaign: Campaign, name: str, *, user: Actor | None) -> Campaign:
    """The locked campaign, once the operation's permission and its state allow `name`."""
    _require_operation(user, name)
    campaign = lock_campaign(campaign)
    refusal = approval_step_refusal(campaign, name)
    if refusal:
        raise CampaignConflict(refusal)
    return campaign


@transaction.atomic
def campaign_request_approval(
    *, campaign: Campaign, user: Actor | None, comment: str = ""
) -> Campaign:
    """Ask for the open draft's approval (again, after a rejection)."""
    campaign = _approval_step(campaign, "request_approval", user=user)
    comment = clean_comment(comment, required=False)
    version = campaign.draft_version
    assert version is not None  # approval_step_refusal
    version.approval_status = ApprovalStatus.AWAITING
    version.approval_requested_by = transition_actor(user)
    version.approval_requested_at = timezone.now()
    version.approval_decided_by = None
    version.approval_decided_at = None
    version.approval_comment = ""
    version.save()
    transition_log(
        campaign,
        "request_approval",
        source=campaign.status,
        user=user,
        version=version,
        reason=comment,
    )
    return campaign


def _decide(campaign: Campaign, name: str, *, user: Actor | None, comment: str) -> Campaign:
    campaign = _approval_step(campaign, name, user=user)
    version = campaign.draft_version
    assert version is not None  # approval_step_refusal
    require_not_last_editor(version, transition_actor(user))
    comment = clean_comment(comment, required=name == "reject")
    approved = name == "approve"
    version.approval_status = ApprovalStatus.APPROVED if approved else ApprovalStatus.REJECTED
    version.approval_decided_by = transition_actor(user)
    version.approval_decided_at = timezone.now()
    version.approval_comment = comment
    version.save()
    transition_log(
        campaign, name, source=campaign.status, user=user, version=version, reason=comment
    )
    return campaign


@transaction.atomic
def campaign_approve(*, campaign: Campaign, user: Actor | None, comment: str = "") -> Campaign:
    """Approve the draft awaiting approval, by someone other than its last editor; it may
    then be activated."""
    return _decide(campaign, "approve", user=user, comment=comment)


@transaction.atomic
def campaign_reject(*, campaign: Campaign, user: Actor | None, comment: str) -> Campaign:
    """Reject the draft awaiting approval, saying why (`comment` is required); its author
    edits it and asks again."""
    return _decide(campaign, "reject", user=user, comment=comment)
