"""The review of a campaign's version before it is activated: whom each channel reaches,
when it starts, how long sending takes, what a sample recipient gets, and the checks.

Every door shows this one review (the admin's review page, ``GET /api/campaigns/{id}/
review/``, ``manage.py campaign review``) and ``campaign_activate`` enforces it: **errors**
(``selectors.version_activation_errors``, the conditions the activation task checks
again) block activation; **warnings** must be acknowledged by their code
(``ReviewCode``), so that nobody sends to nobody, or a blank first name to everyone,
without having been told.

Nothing here restates the delivery engine's rules: the reach counts the audience with the
engine's own condition per channel (``delivery.reachable_profiles``: consent, address) in
one aggregate query, the sample is rendered by the preview (which runs the engine's
sender), and an SMS is measured as the preview measures it (``channels.sms``). The cost is
a fixed number of queries whatever the size of the audience or the number of actions.

The content checks read every content an action sends: its own (variant A) and each
variant's, each part (subject, text, HTML) named where it is (``actions[0].html_body``,
``actions[0].variants[1].html_body``), by one function (``action_content_warnings``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.utils import timezone

from channels.choices import ChannelKind
from channels.rendering import PROFILE_FIELDS, content_profile_keys
from channels.sms import sms_segments
from config.permissions import require_perms
from segments.choices import SegmentKind
from segments.models import Profile
from segments.rules import RuleError, rule_conditions
from segments.selectors import profile_attribute_keys, segment_profiles
from segments.unsubscribe import unsubscribe_links

from .approval import unapproved_text
from .choices import CampaignKind, CampaignType, CheckLevel, ReviewCode
from .delivery import reachable_profiles
from .delivery.timing import schedule_words
from .models import Campaign, CampaignVersion, ChannelAction
from .occurrences import version_schedule_words
from .operations import VIEW_CAMPAIGN
from .preview import CampaignPreview, campaign_preview
from .selectors import Actor, Check, version_actions, version_activation_errors

__all__ = [
    "CampaignReview",
    "ChannelReach",
    "Check",
    "action_content_warnings",
    "activation_review",
    "campaign_review",
    "review_warning_codes",
    "tiny_audience",
    "unknown_variable_checks",
    "version_content_warnings",
]

# The profile fields content may read (``{{ profile.email }}``), and the container of the
# attributes themselves.
_PROVIDED_KEYS = frozenset({*PROFILE_FIELDS, "attributes"})


def tiny_audience() -> int:
    """An audience of fewer recipients than this is worth a second look
    (``SALVO_REVIEW_TINY_AUDIENCE``); 0 turns the warning off."""
    return int(settings.SALVO_REVIEW_TINY_AUDIENCE)


@dataclass(frozen=True)
class ChannelReach:
    """One action's share of the review: how many profiles it reaches and, at its
    preset's rate limit, how long sending them takes (None: no limit, as fast as the
    workers go)."""

    channel: str
    channel_label: str
    preset: str
    reach: int
    rate_per_s: float | None
    seconds: float | None


@dataclass
class CampaignReview:
    """What activating `version` would do. `recipients` counts the profiles at least one
    channel reaches (the number a confirmation quotes); `audience` the segment's members
    before any channel's exclusions; `estimate_s` the longest channel's sending time, the
    channels sending side by side (None when none is rate-limited)."""

    campaign: Campaign
    version: CampaignVersion | None
    audience: int
    recipients: int
    channels: list[ChannelReach]
    start_at: dt.datetime | None
    estimate_s: float | None
    sample: CampaignPreview | None
    checks: list[Check] = field(default_factory=list)
    # The local time and quiet hours in words (campaigns.delivery.timing).
    timing: list[str] = field(default_factory=list)

    @property
    def reach(self) -> dict[str, int]:
        return {shown.channel: shown.reach for shown in self.channels}

    @property
    def errors(self) -> list[Check]:
        return [check for check in self.checks if check.level == CheckLevel.ERROR]

    @property
    def warnings(self) -> list[Check]:
        return [check for check in self.checks if check.level == CheckLevel.WARNING]

    def unacknowledged(self, acknowledge: set[str] | frozenset[str]) -> list[Check]:
        """The warnings whose code is not in `acknowledge`."""
        return [check for check in self.warnings if check.code not in acknowledge]

    def _recurrence(self) -> dict[str, str]:
        """A recurring campaign's recurrence in words (only theirs)."""
        if self.version is None or self.campaign.kind != CampaignKind.RECURRING:
            return {}
        return {"recurrence": version_schedule_words(self.version)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "reach": self.reach,
            "recipients": self.recipients,
            "audience": self.audience,
            "schedule": {
                "start_at": self.start_at.isoformat() if self.start_at else None,
                **self._recurrence(),
                # Only when the version sends in local time or keeps quiet hours.
                **({"timing": self.timing} if self.timing else {}),
            },
            "estimate": {
                "seconds": self.estimate_s,
                "by_channel": {
                    shown.channel: {"rate_per_s": shown.rate_per_s, "seconds": shown.seconds}
                    for shown in self.channels
                },
            },
            "checks": [check.as_dict() for check in self.checks],
        }


def _warning(code: str, message: str, field: str = "") -> Check:
    return Check(CheckLevel.WARNING, code, message, field)


def _count_reach(
    campaign: Campaign, version: CampaignVersion, actions: list[ChannelAction]
) -> tuple[int, int, list[int]]:
    """(audience, recipients, reach per action), counted by the database in one query."""
    if version.segment is None:
        return 0, 0, [0 for _ in actions]
    try:
        members = segment_profiles(segment=version.segment)
    except RuleError:  # an error of the review already
        return 0, 0, [0 for _ in actions]
    conditions = [
        reachable_profiles(
            channel=action.channel,
            campaign_type=campaign.type,
            webhook_url=action.preset.webhook_url,
        )
        for action in actions
    ]
    anyone = Q(pk__isnull=True)
    for condition in conditions:
        anyone |= condition
    counts = members.aggregate(
        audience=Count("pk"),
        recipients=Count("pk", filter=anyone),
        **{f"action_{i}": Count("pk", filter=c) for i, c in enumerate(conditions)},
    )
    return (
        counts["audience"],
        counts["recipients"],
        [counts[f"action_{i}"] for i in range(len(actions))],
    )


def _channel_reach(action: ChannelAction, reach: int) -> ChannelReach:
    rate = action.preset.rate_limit_per_second
    return ChannelReach(
        channel=action.channel,
        channel_label=str(action.get_channel_display()),
        preset=action.preset.name,
        reach=reach,
        rate_per_s=rate,
        seconds=reach / rate if rate else None,
    )


def _audience_warnings(recipients: int) -> list[Check]:
    if recipients == 0:
        return [
            _warning(
                ReviewCode.EMPTY_AUDIENCE,
                "No profile will receive this campaign: the segment is empty, or every "
                "member is opted out or has no address for its channels.",
                "segment",
            )
        ]
    if recipients < tiny_audience():
        return [
            _warning(
                ReviewCode.TINY_AUDIENCE,
                f"Only {recipients:,} profile{'s' if recipients != 1 else ''} will receive "
                f"this campaign (fewer than {tiny_audience():,}, SALVO_REVIEW_TINY_AUDIENCE).",
                "segment",
            )
        ]
    return []


def _rule_warnings(version: CampaignVersion, known: set[str]) -> list[Check]:
    segment = version.segment
    if segment is None or segment.kind != SegmentKind.RULES:
        return []
    return [
        _warning(
            ReviewCode.UNKNOWN_RULE_ATTRIBUTE,
            f"Segment “{segment.name}”, {path}: no profile has the attribute "
            f"“{ref.path[0]}”; is it misspelt?",
            "segment",
        )
        for path, ref in rule_conditions(segment.rules)
        if ref.kind == "attribute" and ref.path[0] not in known
    ]


def _action_contents(action: ChannelAction, where: str) -> list[tuple[str, str, Any]]:
    """Each content of the action, as (where, variant label, content): its own (variant
    A, at `where`, unlabelled) and each variant's (``<where>.variants[j]``), in label
    order. Reads the action's variants (prefetch them: ``review_actions``)."""
    return [
        (where, "", action),
        *(
            (f"{where}.variants[{j}]", variant.label, variant)
            for j, variant in enumerate(action.variants.all())
        ),
    ]


def action_content_warnings(
    *,
    action: ChannelAction,
    where: str,
    known: set[str],
    trigger_context: bool = False,
) -> list[Check]:
    """What the action's content holds that sends but is worth a look, for its own content
    and each variant's alike, each part (subject, text, HTML) named where it is
    (``actions[i].variants[j].html_body``): variables no profile provides, and an SMS
    over one segment."""
    label = str(action.get_channel_display())
    warnings: list[Check] = []
    for at, variant, content in _action_contents(action, where):
        warnings.extend(
            unknown_variable_checks(
                label=label,
                where=at,
                subject=content.subject,
                body=content.body,
                html_body=content.html_body,
                known=known,
                trigger_context=trigger_context,
                variant=variant,
            )
        )
        if action.channel == ChannelKind.SMS:
            length = sms_segments(content.body)
            if length.segments > 1:
                warnings.append(
                    _warning(
                        ReviewCode.SMS_SEGMENTS,
                        f"{_who(label, variant)}: the text takes {length.segments} segments "
                        f"({length.characters} characters in {length.encoding}); each is "
                        "charged as one message.",
                        f"{at}.body",
                    )
                )
    return warnings


def _content_warnings(
    campaign: Campaign, actions: list[ChannelAction], known: set[str]
) -> list[Check]:
    warnings: list[Check] = []
    for index, action in enumerate(actions):
        where = f"actions[{index}]"
        label = action.get_channel_display()
        warnings.extend(
            action_content_warnings(
                action=action,
                where=where,
                known=known,
                trigger_context=campaign.kind == CampaignKind.API_TRIGGERED,
            )
        )
        if (
            action.channel == ChannelKind.EMAIL
            and campaign.type == CampaignType.MARKETING
            and unsubscribe_links() is None
        ):
            warnings.append(
                _warning(
                    ReviewCode.NO_UNSUBSCRIBE_LINK,
                    f"{label} action: this marketing email goes out without an unsubscribe "
                    "link (only a mailto): set SALVO_PUBLIC_URL so that recipients can "
                    "unsubscribe in one click.",
                    f"{where}.body",
                )
            )
    return warnings


def _who(label: str, variant: str) -> str:
    """ "Email action", or "Email action, variant C": whose content a warning is about."""
    return f"{label} action" + (f", variant {variant}" if variant else "")


def unknown_variable_checks(
    *,
    label: str,
    where: str,
    subject: str,
    body: str,
    known: set[str],
    trigger_context: bool = False,
    html_body: str = "",
    variant: str = "",
) -> list[Check]:
    """The `unknown_variable` warnings of one content (`where`: ``actions[i]`` or
    ``actions[i].variants[j]`` of `variant`, or empty for a form's own fields), in its
    subject, body and HTML part: at review, and when content is saved."""
    prefix = f"{where}." if where else ""
    return [
        _warning(
            ReviewCode.UNKNOWN_VARIABLE,
            f"{_who(label, variant)}, {name}: no profile field or known attribute provides "
            f"“profile.{key}”; it renders empty.",
            f"{prefix}{name}",
        )
        for name, source in (("subject", subject), ("body", body), ("html_body", html_body))
        for key in unknown_variables(source, known=known, trigger_context=trigger_context)
    ]


def review_actions(*, version: CampaignVersion) -> list[ChannelAction]:
    """The version's actions with their variants, whose content the checks read (one
    query more, whatever their number)."""
    return list(version_actions(version=version).prefetch_related("variants"))


def version_content_warnings(
    *, version: CampaignVersion, trigger_context: bool = False
) -> list[Check]:
    """What saving the version's content warns about without refusing it: variables no
    profile provides, in every action's and variant's subject, text and HTML part (three
    queries: the actions, their variants, the attribute keys). With `trigger_context` (an
    API-triggered campaign), ``context.<key>`` is given by the call."""
    known = set(profile_attribute_keys())
    return [
        check
        for index, action in enumerate(review_actions(version=version))
        for check in action_content_warnings(
            action=action, where=f"actions[{index}]", known=known, trigger_context=trigger_context
        )
        if check.code == ReviewCode.UNKNOWN_VARIABLE
    ]


def unknown_variables(source: str, *, known: set[str], trigger_context: bool = False) -> list[str]:
    """The profile keys `source` reads that neither a profile field nor a known attribute
    key (`known`) provides. An API trigger's ``context.<key>`` is never one of them: the
    call gives it (`trigger_context`, for an API-triggered campaign's content)."""
    return [
        key
        for key in content_profile_keys(source, trigger_context=trigger_context)
        if key not in _PROVIDED_KEYS | known
    ]


def _sample(
    campaign: Campaign, version: CampaignVersion, user: Actor | None
) -> CampaignPreview | None:
    """The version rendered for the segment's first member, when there is one and the
    user may see a profile's data."""
    if version.segment is None:
        return None
    try:
        profile: Profile | None = segment_profiles(segment=version.segment).order_by("pk").first()
    except RuleError:
        return None
    if profile is None:
        return None
    try:
        return campaign_preview(campaign=campaign, profile=profile, user=user, version=version)
    except PermissionDenied:
        return None


def _recurrence_warnings(campaign: Campaign, version: CampaignVersion) -> list[Check]:
    """A recurring campaign without a recurrence has no occurrence: it would go Live and
    complete with nothing sent."""
    if campaign.kind != CampaignKind.RECURRING or version.recurrence:
        return []
    return [
        _warning(
            ReviewCode.NO_RECURRENCE,
            "A recurring campaign without a recurrence sends nothing: set every day, week or "
            "month, at a time.",
            "recurrence",
        )
    ]


def activation_review(
    *, campaign: Campaign, user: Actor | None = None, sample: bool = True
) -> CampaignReview:
    """The review of the version activating would apply: the open draft. Reads only; a
    fixed number of queries."""
    version = (
        CampaignVersion.objects.select_related("segment")
        .filter(pk=campaign.draft_version_id)
        .first()
        if campaign.draft_version_id
        else None
    )
    errors = version_activation_errors(version=version, now=timezone.now())
    unapproved = unapproved_text(campaign=campaign, version=version)
    if unapproved:
        errors.append(Check(CheckLevel.ERROR, ReviewCode.NOT_APPROVED, unapproved, "approval"))
    if version is None:
        return CampaignReview(campaign, None, 0, 0, [], None, None, None, errors)
    actions = review_actions(version=version)
    audience, recipients, reaches = _count_reach(campaign, version, actions)
    channels = [
        _channel_reach(action, reach) for action, reach in zip(actions, reaches, strict=True)
    ]
    limited = [shown.seconds for shown in channels if shown.seconds is not None]
    known = set(profile_attribute_keys())
    # An API-triggered campaign has no segment: each call names its recipients.
    audience_checked = campaign.kind != CampaignKind.API_TRIGGERED
    warnings = [
        *(_audience_warnings(recipients) if audience_checked else []),
        *(_rule_warnings(version, known) if audience_checked else []),
        *_content_warnings(campaign, actions, known),
        *_recurrence_warnings(campaign, version),
    ]
    return CampaignReview(
        campaign=campaign,
        version=version,
        audience=audience,
        recipients=recipients,
        channels=channels,
        start_at=version.start_at,
        estimate_s=max(limited) if limited else None,
        sample=_sample(campaign, version, user) if sample else None,
        checks=[*errors, *warnings],
        timing=schedule_words(version),
    )


def campaign_review(*, campaign: Campaign, user: Actor | None) -> CampaignReview:
    """The review every door shows (`PermissionDenied` as for viewing the campaign)."""
    require_perms(user, VIEW_CAMPAIGN, to="review a campaign")
    return activation_review(campaign=campaign, user=user)


def review_warning_codes(*, campaign: Campaign) -> list[str]:
    """The codes of the warnings the review of the campaign's current row lists now: what
    a caller that has read them acknowledges (``campaign activate --yes``, the demo data,
    the benchmark)."""
    current = Campaign.objects.get(pk=campaign.pk)  # a caller's copy may predate a draft
    return [check.code for check in activation_review(campaign=current, sample=False).warnings]
