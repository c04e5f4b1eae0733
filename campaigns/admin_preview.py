"""The admin's preview page of a campaign: pick a profile (by email or external id, exact
or prefix), see every action of the draft (or the running version, or `?version=N`)
rendered for them side by side, as the delivery engine would send it (an action with
variants shows each variant in a section of its own, and the page says which group the
profile is in), and the fields and attribute keys content can insert.

A GET form and links, no script: the choices are in the page's address, so a preview can be
shared and reloaded. The rendering is `campaigns.preview`'s, as at the API and the command.
Whatever the number of profiles or deliveries, the page costs the same few queries: the
campaign, its versions, the matching profiles (at most `PREVIEW_PROFILE_MATCHES`), the
chosen one, the version's actions and a bounded sample of attribute keys.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from .models import Campaign, CampaignVersion
from .preview import (
    PREVIEW_PERMISSIONS,
    PREVIEW_PROFILE_MATCHES,
    ActionPreview,
    campaign_preview,
    personalisation_fields,
    preview_profile,
    preview_profile_matches,
    preview_version,
)
from .selectors import campaign_versions, version_role

SEARCH_VAR, PROFILE_VAR, VERSION_VAR = "q", "profile", "version"


def _number(request: HttpRequest, name: str) -> tuple[int | None, str]:
    """The query's positive whole number `name` (None when absent), or why it is not one."""
    text = request.GET.get(name, "").strip()
    if not text:
        return None, ""
    if not text.isdigit() or int(text) < 1:
        return None, f"“{text}” is not a {name} number."
    return int(text), ""


def _payload_json(shown: ActionPreview) -> str | None:
    if shown.payload is None:
        return None
    return json.dumps(shown.payload, indent=2, ensure_ascii=False)


def _messages(error: ValidationError) -> list[str]:
    return [str(message) for message in error.messages]


def preview_page(model_admin: Any, request: HttpRequest, object_id: str) -> HttpResponse:
    """The preview page, for whoever may view the campaign and profiles."""
    campaign: Campaign = model_admin.viewable_campaign(request, object_id)
    if not request.user.has_perms(PREVIEW_PERMISSIONS):
        raise PermissionDenied
    errors: list[str] = []
    versions = list(campaign_versions(campaign=campaign))
    number, problem = _number(request, VERSION_VAR)
    errors += [problem] if problem else []
    version: CampaignVersion | None = None
    try:
        version = preview_version(campaign=campaign, number=number)
    except ValidationError as error:
        errors += _messages(error)

    search = request.GET.get(SEARCH_VAR, "").strip()
    matches = preview_profile_matches(search=search, user=request.user) if search else []
    chosen, problem = _number(request, PROFILE_VAR)
    errors += [problem] if problem else []
    profile = None
    if chosen is not None:
        try:
            profile = preview_profile(pk=chosen)
        except ValidationError as error:
            errors += _messages(error)
    elif len(matches) == 1:
        profile = matches[0]  # nothing to choose between

    preview = None
    if profile is not None and version is not None:
        preview = campaign_preview(
            campaign=campaign, profile=profile, user=request.user, version=version
        )
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": f"Preview “{campaign}”",
        "salvo_campaign": campaign,
        "salvo_versions": versions,
        "salvo_version": version,
        "salvo_version_role": version_role(campaign, version).label if version else "",
        "salvo_search": search,
        "salvo_matches": matches,
        "salvo_matches_max": PREVIEW_PROFILE_MATCHES,
        "salvo_profile": profile,
        "salvo_preview": preview,
        # Each action with its contents (its own, then each variant's), each with the
        # webhook's JSON as the page prints it.
        "salvo_shown": [
            {
                "action": shown,
                "contents": [
                    {
                        "content": content,
                        "payload_json": _payload_json(content),
                        # Each frame's title names its variant: every title is unique.
                        "part_of": f", variant {content.label}",
                    }
                    for content in (shown, *shown.variants)
                ],
            }
            for shown in (preview.actions if preview else [])
        ],
        "salvo_personalisation": preview.personalisation if preview else personalisation_fields(),
        "salvo_errors": errors,
    }
    return TemplateResponse(request, "admin/campaigns/campaign/preview.html", context)
