"""How the campaign tests reach each door: the admin's URLs and form data as its pages
post them, the API's URLs and request bodies. Shared by every module that goes through
those doors."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from django.utils import timezone

from campaigns.models import Campaign
from tests.channels.factories import MessagePresetFactory
from tests.segments.factories import SegmentFactory

# --- the admin --------------------------------------------------------------------------

ADD = reverse("admin:campaigns_campaign_add")


def change_url(campaign: Campaign) -> str:
    return reverse("admin:campaigns_campaign_change", args=[campaign.pk])


def review_url(campaign: Campaign) -> str:
    """The admin's review page, where every activation is confirmed."""
    return reverse("admin:campaigns_campaign_review", args=[campaign.pk])


def action_rows(rows: list[dict[str, Any]], *, initial: int = 0) -> dict[str, Any]:
    data: dict[str, Any] = {
        "actions-TOTAL_FORMS": str(len(rows)),
        "actions-INITIAL_FORMS": str(initial),
        "actions-MIN_NUM_FORMS": "0",
        "actions-MAX_NUM_FORMS": "4",
    }
    for i, row in enumerate(rows):
        for key, value in row.items():
            data[f"actions-{i}-{key}"] = value
    return data


def add_data(segment: Any, rows: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {
        "name": "Spring sale",
        "description": "Our spring offers",
        "type": "marketing",
        "kind": "one_shot",
        "tags": "spring, sale",
        "segment": segment.pk if segment else "",
        "start_at_0": "",
        "start_at_1": "",
        "_save": "Save",
        **action_rows(rows),
        **fields,
    }


def change_data(campaign: Campaign, rows: list[dict[str, Any]] | None = None, **fields: Any):
    """The change form as the page shows it (with `rows` added as new actions)."""
    draft = campaign.draft_version
    assert draft is not None
    existing = [
        {
            "id": a.pk,
            "version": draft.pk,
            "channel": a.channel,
            "preset": a.preset_id,
            "subject": a.subject,
            "body": a.body,
        }
        for a in draft.actions.all()
    ]
    start = timezone.localtime(draft.start_at) if draft.start_at else None
    return {
        "name": campaign.name,
        "description": campaign.description,
        "type": campaign.type,
        "kind": campaign.kind,
        "tags": ", ".join(campaign.tags.names()),
        "segment": draft.segment_id or "",
        "start_at_0": start.strftime("%Y-%m-%d") if start else "",
        "start_at_1": start.strftime("%H:%M:%S") if start else "",
        "_continue": "Save",
        # A checkbox: ticked is sent, unticked is absent.
        **({"approval_required": "on"} if campaign.approval_required else {}),
        **action_rows(existing + (rows or []), initial=len(existing)),
        **fields,
    }


# --- the REST API -------------------------------------------------------------------------


def url(campaign: Campaign | int, operation: str = "") -> str:
    pk = campaign if isinstance(campaign, int) else campaign.pk
    path = f"/api/campaigns/{pk}/"
    return f"{path}{operation.replace('_', '-')}/" if operation else path


def create_payload(**overrides: Any) -> dict[str, Any]:
    email = MessagePresetFactory.create(channel="email")
    sms = MessagePresetFactory.create(channel="sms")
    return {
        "name": "Spring sale",
        "description": "Our spring offers",
        "tags": ["promo", "spring"],
        "type": "marketing",
        "segment": SegmentFactory.create().pk,
        "schedule": {"start_at": None},
        "actions": [
            {"channel": "email", "preset": email.pk, "subject": "Spring!", "body": "Hi"},
            {"channel": "sms", "preset": sms.pk, "body": "Spring is here"},
        ],
        **overrides,
    }
