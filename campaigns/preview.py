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

from .choices import DeliveryStatus
from .delivery import PROFILE_VALUES, action_sender, recipient_due, render_error_text
from .models import Campaign, CampaignVersion, ChannelAction
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
    shown); `error` why it cannot be rendered for them (nothing else is then shown)."""

    channel: str
    channel_label: str
    preset: str
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


@dataclass
class CampaignPreview:
    campaign: Campaign
    version: CampaignVersion
    role: str  # "draft", "running" or "past": which of the campaign's versions it is
    profile: Profile
    actions: list[ActionPreview]
    personalisation: dict[str, list[str]]  # see `personalisation_fields`


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


def _preview_action(
    campaign: Campaign, action: ChannelAction, row: Mapping[str, Any]
) -> ActionPreview:
    shown = ActionPreview(
        channel=action.channel,
        channel_label=action.get_channel_display(),
        preset=action.preset.name,
    )
    sender = action_sender(action=action, campaign=campaign)
    prepared = sender.prepare([recipient_due(PREVIEW_DELIVERY_ID, row)])
    if prepared.messages:
        _show_message(shown, action, prepared.messages[0][1])
        return shown
    outcome = prepared.outcomes[0]
    if outcome.status != DeliveryStatus.SKIPPED:
        shown.error = outcome.text
        return shown
    shown.skipped = outcome.text
    try:
        subject, body = sender.render(profile_context(row))
    except RenderError as error:
        shown.error = render_error_text(error)
        return shown
    message = OutboundMessage(
        delivery_id=PREVIEW_DELIVERY_ID, channel=action.channel, to="", subject=subject, body=body
    )
    _show_message(shown, action, message)
    return shown


def preview_actions(*, version: CampaignVersion) -> QuerySet[ChannelAction]:
    return version_actions(version=version)


def campaign_preview(
    *, campaign: Campaign, profile: Profile, user: Any, version: CampaignVersion | None = None
) -> CampaignPreview:
    """Every action of `version` (default: ``preview_version``) rendered for `profile`, as
    the delivery engine would send it, in the actions' order. `PermissionDenied` unless
    `user` may see campaigns and profiles (None: the system). Sends and writes nothing."""
    require_perms(user, *PREVIEW_PERMISSIONS, to="preview a campaign for a profile")
    if version is None:
        version = preview_version(campaign=campaign)
    row = profile_row(profile)
    actions = [
        _preview_action(campaign, action, row) for action in preview_actions(version=version)
    ]
    return CampaignPreview(
        campaign=campaign,
        version=version,
        role=version_role(campaign, version),
        profile=profile,
        actions=actions,
        personalisation=personalisation_fields(),
    )
