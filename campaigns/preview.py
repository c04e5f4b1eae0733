"""A campaign's actions as one chosen profile would get them: the preview of every door
(the admin's preview page, ``POST /api/campaigns/{id}/preview/``, ``manage.py campaign
preview``).

Nothing here renders on its own: each action goes through the delivery engine's own sender
(``campaigns.delivery.ActionSender.prepare``), the very code a worker runs for one
recipient — the same profile data, the same sandboxed templates within the same budgets,
the same unsubscribe headers, the same refusals — and a webhook's JSON is what the preset's
backend would post. A preview sends nothing and writes nothing.

When the engine would skip the profile (opted out, no address for the channel) the preview
says why and still shows the content, rendered by the same renderer, so that a marketer can
check it with a profile at hand. A render error is shown per action, with the engine's
wording (``render_error``).

Content experiments (``campaigns.experiments``): each action shows its own content (variant
A) and then each of its variants, each rendered by the same sender for the profile put in
that variant's group (the sender's ``groups``, as a worker's chunk reads them from the
stored assignments). The preview also says which group the profile is in: its stored
assignment when planning has stored one, else the group the assignment's hash gives it now
(nothing is stored), and whether that group is the holdout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db.models import QuerySet

from channels.choices import ChannelKind
from channels.providers import OutboundMessage, get_backend
from channels.providers.http import HttpProviderBackend, WebhookBackend
from channels.rendering import PROFILE_FIELDS, RenderError, profile_context
from channels.sms import SmsLength, sms_segments
from config.permissions import require_perms
from segments.models import Profile
from segments.selectors import profile_attribute_keys, profile_list

from .choices import HOLDOUT_GROUP, REST_GROUP, DeliveryStatus
from .delivery import PROFILE_VALUES, ActionSender, action_sender, recipient_due, render_error_text
from .experiments import (
    Split,
    bucket_of,
    group_of,
    has_experiment,
    split_of,
    version_split,
)
from .models import Assignment, Campaign, CampaignVersion, ChannelAction, ExperimentWinner
from .selectors import DELIVERY_VIEW_PERMISSIONS, version_actions, version_role

# A preview shows a profile's data, as a delivery row does: it takes the same permissions.
PREVIEW_PERMISSIONS = DELIVERY_VIEW_PERMISSIONS
# The profile picker lists at most this many profiles matching what was typed.
PREVIEW_PROFILE_MATCHES = 10
# The largest id and version number a database stores (BigAutoField, PositiveIntegerField
# on PostgreSQL): anything larger names nothing, and is not sent to the database.
PROFILE_ID_MAX = 2**63 - 1
VERSION_NUMBER_MAX = 2**31 - 1
# The delivery id a previewed message carries (a webhook's `delivery_id`): no delivery
# exists; a real message carries its delivery's id.
PREVIEW_DELIVERY_ID = 0


@dataclass
class ActionPreview:
    """One action rendered for the profile. `text` is an email's text part and `html` its
    HTML part (None when it has none); `sms` the SMS's length; `payload` the webhook's
    JSON; `skipped` why the engine would not send it to this profile (the content is still
    shown); `error` why it cannot be rendered for them (nothing else is then shown).

    The action's own content is variant `label` A with its `share` of the tested audience;
    `variants` holds B, C, … rendered likewise (each with no variants of its own), and
    `profile_gets` says whether this content is the one the profile would get."""

    channel: str
    channel_label: str
    preset: str
    label: str = "A"
    share: int = 100
    profile_gets: bool = True
    to: str = ""
    subject: str = ""
    body: str = ""
    text: str | None = None
    html: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    sms: SmsLength | None = None
    payload: dict[str, Any] | None = None
    skipped: str = ""
    error: str = ""
    variants: list[ActionPreview] = field(default_factory=list)


@dataclass(frozen=True)
class PreviewExperiment:
    """The profile's place in the campaign's experiment: its `group` (a variant's label,
    ``holdout``, or ``rest``: a "test, then send the winner" campaign's rest), whether it
    is `stored` (planning assigned it) or computed now as planning would, whether it is
    `held_out` (no message of the campaign), and the version's holdout and split."""

    group: str
    stored: bool
    held_out: bool
    holdout_share: int
    split: Split
    winner: str | None = None  # the rest's: the winner, once decided

    @property
    def receives(self) -> str | None:
        """The group whose content the profile gets: None when held out, or when it is in
        the rest and the winner is not decided yet."""
        if self.held_out:
            return None
        return self.winner if self.group == REST_GROUP else self.group

    @property
    def source(self) -> str:
        return "stored" if self.stored else "computed now, as planning will store it"

    @property
    def outcome(self) -> str:
        """What the group gets, in words."""
        if self.held_out:
            return "held out: no message of this campaign"
        if self.group == REST_GROUP:
            if self.winner:
                return f"the rest of the audience: it gets the winner, variant {self.winner}"
            return "the rest of the audience: it gets the winner once the test has decided it"
        return f"it gets variant {self.group} of each action that has one, else variant A"

    @property
    def words(self) -> str:
        return f"this profile is in group {self.group} ({self.source}); {self.outcome}"


@dataclass
class CampaignPreview:
    campaign: Campaign
    version: CampaignVersion
    role: str  # "draft", "running" or "past": which of the campaign's versions it is
    profile: Profile
    actions: list[ActionPreview]
    personalisation: dict[str, list[str]]  # see `personalisation_fields`
    experiment: PreviewExperiment | None = None  # None: the campaign runs no experiment


def preview_version(*, campaign: Campaign, number: int | None = None) -> CampaignVersion:
    """The version a preview shows: version `number`, else the open draft, else the
    running version (else the newest). `ValidationError` on `version` when the campaign
    has no such version."""
    versions = CampaignVersion.objects.filter(campaign=campaign)
    if number is not None:
        found = versions.filter(number=number).first() if number <= VERSION_NUMBER_MAX else None
        if found is None:
            raise ValidationError({"version": f"Campaign {campaign.pk} has no version {number}."})
        return found
    chosen = campaign.draft_version_id or campaign.live_version_id
    version = versions.filter(pk=chosen).first() if chosen else versions.order_by("-number").first()
    if version is None:
        raise ValidationError({"version": f"Campaign {campaign.pk} has no version."})
    return version


def preview_profile(*, pk: int | None = None, external_id: str | None = None) -> Profile:
    """The profile to preview for, by id or external id; `ValidationError` on the field
    given (`profile` or `external_id`) when none matches or neither is given."""
    if pk is not None:
        found = Profile.objects.filter(pk=pk).first() if 0 < pk <= PROFILE_ID_MAX else None
        if found is None:
            raise ValidationError({"profile": f"No profile has the id {pk}."})
        return found
    if external_id:
        found = Profile.objects.filter(external_id=external_id).first()
        if found is None:
            raise ValidationError(
                {"external_id": f"No profile has the external id “{external_id}”."}
            )
        return found
    raise ValidationError({"profile": "Choose a profile: give its id or its external id."})


def preview_profile_matches(
    *, search: str, user: Any, limit: int = PREVIEW_PROFILE_MATCHES
) -> list[Profile]:
    """Profiles whose external id or email is or starts with `search` (case-insensitive),
    at most `limit`: the profile picker's choices. `PermissionDenied` as for a preview."""
    require_perms(user, *PREVIEW_PERMISSIONS, to="preview a campaign for a profile")
    search = search.strip()
    if not search:
        return []
    return list(profile_list(search=search).order_by("external_id")[:limit])


def personalisation_fields() -> dict[str, list[str]]:
    """What content can insert: the profile's own fields (``{{ profile.email }}``) and the
    attribute keys seen in the data (``{{ profile.first_name }}``; a key named like a field
    is only reachable as ``{{ profile.attributes.<key> }}``, see ``profile_context``)."""
    keys = profile_attribute_keys()
    return {
        "profile_fields": [f"profile.{name}" for name in PROFILE_FIELDS],
        "attribute_keys": [
            f"profile.attributes.{key}"
            if key in PROFILE_FIELDS or key == "attributes"
            else f"profile.{key}"
            for key in keys
        ],
    }


def profile_row(profile: Profile) -> dict[str, Any]:
    """The profile's data as the engine reads it for a recipient (``PROFILE_VALUES``)."""
    return {name: getattr(profile, "pk" if name == "id" else name) for name in PROFILE_VALUES}


def _webhook_payload(action: ChannelAction, message: OutboundMessage) -> dict[str, Any]:
    """The JSON the preset's backend would post for the message; for a backend that posts
    none of its own (the console one that only logs, a test double), the JSON of the
    shipped webhook backend, which production uses."""
    backend = get_backend(action.preset)
    if not isinstance(backend, HttpProviderBackend):
        backend = WebhookBackend(action.preset)
    return dict(backend.payload_for(message))


def _show_message(shown: ActionPreview, action: ChannelAction, message: OutboundMessage) -> None:
    shown.to = message.to
    shown.subject = message.subject
    shown.body = message.body
    shown.headers = dict(message.headers)
    if action.channel == ChannelKind.EMAIL:
        shown.text = message.body
        shown.html = message.html_body or None
    elif action.channel == ChannelKind.SMS:
        shown.sms = sms_segments(message.body)
    elif action.channel == ChannelKind.WEBHOOK:
        try:
            shown.payload = _webhook_payload(action, message)
        except ImproperlyConfigured as error:  # the preset names a backend that is gone
            shown.error = str(error)


def _preview_content(
    sender: ActionSender, shown: ActionPreview, action: ChannelAction, row: Mapping[str, Any]
) -> ActionPreview:
    """Render `shown.label`'s content for the profile with the engine's sender: the
    profile put in that group, as a worker's chunk puts each recipient in its own."""
    # Variant A is the action's own content, which the sender renders with no group.
    sender.groups = {} if shown.label == "A" else {row["id"]: shown.label}
    prepared = sender.prepare([recipient_due(PREVIEW_DELIVERY_ID, row)])
    if prepared.messages:
        _show_message(shown, action, prepared.messages[0][1])
        return shown
    outcome = prepared.outcomes[0]
    if outcome.status != DeliveryStatus.SKIPPED:
        shown.error = outcome.text
        return shown
    shown.skipped = outcome.text
    # Variant A is the action's own content: no group.
    render, render_html = sender.renderers(None if shown.label == "A" else shown.label)
    try:
        data = profile_context(row)
        subject, body = render(data)
        html_body = render_html(data)
    except RenderError as error:
        shown.error = render_error_text(error)
        return shown
    message = OutboundMessage(
        delivery_id=PREVIEW_DELIVERY_ID,
        channel=action.channel,
        to="",
        subject=subject,
        body=body,
        html_body=html_body,
    )
    _show_message(shown, action, message)
    return shown


def _preview_action(
    campaign: Campaign,
    action: ChannelAction,
    row: Mapping[str, Any],
    experiment: PreviewExperiment | None,
) -> ActionPreview:
    """The action's own content (variant A), then each of its variants, for the profile."""
    variants = list(action.variants.all())
    receives = experiment.receives if experiment is not None else "A"
    labels = {variant.label for variant in variants}
    # An action without the profile's group's variant sends it its own content.
    gets = receives if receives in labels else ("A" if receives is not None else None)
    split = split_of(variant.share for variant in variants)

    def blank(label: str, share: int) -> ActionPreview:
        return ActionPreview(
            channel=action.channel,
            channel_label=action.get_channel_display(),
            preset=action.preset.name,
            label=label,
            share=share,
            profile_gets=label == gets,
        )

    sender = action_sender(action=action, campaign=campaign)
    shown = _preview_content(sender, blank(*split[0]), action, row)
    shown.variants = [
        _preview_content(sender, blank(label, share), action, row) for label, share in split[1:]
    ]
    return shown


def preview_experiment(
    *, campaign: Campaign, version: CampaignVersion, profile: Profile
) -> PreviewExperiment | None:
    """The profile's group in the campaign's experiment (see `PreviewExperiment`), or None
    when the campaign runs none for it: no group stored and the version tests nothing.
    Reads only (three queries at most); a group not yet stored is computed as
    ``experiments.assignments_store`` would store it."""
    split = version_split(version.pk)
    stored = (
        Assignment.objects.filter(campaign=campaign, profile=profile)
        .values_list("group", flat=True)
        .first()
    )
    if stored is None and not has_experiment(holdout_share=version.holdout_share, split=split):
        return None
    group = stored or group_of(
        bucket_of(campaign.pk, profile.pk),
        holdout_share=version.holdout_share,
        split=split,
        test_share=version.test_share,
    )
    winner = None
    if group == REST_GROUP:
        winner = (
            ExperimentWinner.objects.filter(campaign=campaign)
            .values_list("group", flat=True)
            .first()
        )
    return PreviewExperiment(
        group=group,
        stored=stored is not None,
        held_out=group == HOLDOUT_GROUP,
        holdout_share=version.holdout_share,
        split=split,
        winner=winner,
    )


def preview_actions(*, version: CampaignVersion) -> QuerySet[ChannelAction]:
    """The version's actions with their variants (one query more, whatever their number)."""
    return version_actions(version=version).prefetch_related("variants")


def campaign_preview(
    *, campaign: Campaign, profile: Profile, user: Any, version: CampaignVersion | None = None
) -> CampaignPreview:
    """Every action of `version` (default: ``preview_version``) rendered for `profile`, as
    the delivery engine would send it, in the actions' order, each with its variants, and
    the profile's group when the campaign runs an experiment. `PermissionDenied` unless
    `user` may see campaigns and profiles (None: the system). Sends and writes nothing."""
    require_perms(user, *PREVIEW_PERMISSIONS, to="preview a campaign for a profile")
    if version is None:
        version = preview_version(campaign=campaign)
    row = profile_row(profile)
    experiment = preview_experiment(campaign=campaign, version=version, profile=profile)
    actions = [
        _preview_action(campaign, action, row, experiment)
        for action in preview_actions(version=version)
    ]
    return CampaignPreview(
        campaign=campaign,
        version=version,
        role=version_role(campaign, version),
        profile=profile,
        actions=actions,
        personalisation=personalisation_fields(),
        experiment=experiment,
    )
