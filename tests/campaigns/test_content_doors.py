"""Every door that saves or activates content refuses, on the field, what cannot render:
content over a render limit, and tags that reach outside the message."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from campaigns.choices import CampaignStatus
from campaigns.models import Campaign, ChannelAction
from tests.campaigns.doors import ADD, add_data, change_data, change_url, create_payload, url
from tests.campaigns.factories import activate_acknowledged, make_campaign, sms_action
from tests.campaigns.lifecycle import snapshot
from tests.channels.factories import MessagePresetFactory
from tests.segments.factories import SegmentFactory

pytestmark = pytest.mark.django_db

# (body, what the refusal must say)
UNRENDERABLE = [
    ("{% lorem 20000 p %}", "SALVO_RENDER_MAX_CHARS (100,000 characters)"),
    ('{{ profile.email|ljust:"50000000" }}', "SALVO_RENDER_MAX_CHARS (100,000 characters)"),
    ("{% querystring page=2 %}", "the {% querystring %} tag is not allowed"),
]
IDS = ["lorem", "ljust", "querystring"]


@pytest.fixture(autouse=True)
def default_limits(settings):
    settings.SALVO_RENDER_MAX_CHARS = 100_000
    settings.SALVO_RENDER_TIMEOUT_MS = 50


def stored_with(body: str) -> Campaign:
    """A Draft whose SMS body was stored before the checks existed (written past the doors)."""
    campaign = make_campaign(actions=[sms_action(body="Hi")])
    ChannelAction.objects.filter(version__campaign=campaign).update(body=body)
    return campaign


# --- REST API ------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "expected"), UNRENDERABLE, ids=IDS)
def test_api_create_refuses_the_body_naming_the_action_and_the_field(api_client, body, expected):
    payload = create_payload()
    payload["actions"][1]["body"] = body

    response = api_client.post("/api/campaigns/", payload, format="json")

    assert response.status_code == 400, response.content
    errors = response.json()["actions"]
    assert any(e.startswith("actions[1].body: ") and expected in e for e in errors), errors
    assert not Campaign.objects.exists()


@pytest.mark.parametrize(("body", "expected"), UNRENDERABLE, ids=IDS)
def test_api_patch_refuses_the_subject_and_changes_nothing(api_client, body, expected):
    campaign = make_campaign()
    before = snapshot(campaign)
    preset = MessagePresetFactory.create(channel="email")
    actions = [{"channel": "email", "preset": preset.pk, "subject": body, "body": "Hi"}]

    response = api_client.patch(url(campaign), {"actions": actions}, format="json")

    assert response.status_code == 400, response.content
    errors = response.json()["actions"]
    assert any(e.startswith("actions[0].subject: ") and expected in e for e in errors), errors
    assert snapshot(campaign) == before


@pytest.mark.parametrize(("body", "expected"), UNRENDERABLE, ids=IDS)
def test_api_activate_refuses_stored_content_naming_the_field(api_client, body, expected):
    campaign = stored_with(body)

    response = api_client.post(url(campaign, "activate"), format="json")

    assert response.status_code == 400, response.content
    errors = [c for c in response.json()["checks"] if c["level"] == "error"]
    assert [(c["code"], c["field"]) for c in errors] == [("template_error", "actions[0].body")]
    assert "SMS action, body: " in errors[0]["message"]
    assert expected in errors[0]["message"]
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.DRAFT


# --- admin -----------------------------------------------------------------------------------


def inline_errors(response: Any) -> list[dict[str, list[str]]]:
    formset = response.context["inline_admin_formsets"][0].formset
    return [dict(form.errors) for form in formset.forms]


@pytest.mark.parametrize(("body", "expected"), UNRENDERABLE, ids=IDS)
def test_admin_add_form_shows_the_refusal_on_the_actions_body(admin_client, body, expected):
    sms = MessagePresetFactory.create(channel="sms")
    rows = [{"channel": "sms", "preset": sms.pk, "subject": "", "body": body}]

    response = admin_client.post(ADD, add_data(SegmentFactory(), rows))

    assert response.status_code == 200
    assert not Campaign.objects.exists()
    errors = inline_errors(response)[0]
    assert list(errors) == ["body"]
    assert expected in errors["body"][0]


@pytest.mark.parametrize(("body", "expected"), UNRENDERABLE, ids=IDS)
def test_admin_change_form_shows_the_refusal_on_the_actions_subject(admin_client, body, expected):
    campaign = make_campaign()
    before = snapshot(campaign)
    data = change_data(campaign)
    email_row = next(
        i
        for i in range(int(data["actions-TOTAL_FORMS"]))
        if data[f"actions-{i}-channel"] == "email"
    )
    data[f"actions-{email_row}-subject"] = body

    response = admin_client.post(change_url(campaign), data)

    assert response.status_code == 200
    errors = inline_errors(response)[email_row]
    assert list(errors) == ["subject"]
    assert expected in errors["subject"][0]
    assert snapshot(campaign) == before


def test_admin_activate_refuses_stored_content_naming_the_field(admin_client):
    campaign = stored_with("{% lorem 20000 p %}")

    response = admin_client.post(
        reverse("admin:campaigns_campaign_lifecycle", args=[campaign.pk, "activate"]),
        follow=True,
    )

    # The review page, whose error blocks the confirmation.
    text = response.content.decode()
    assert 'data-code="template_error"' in text
    assert "(actions[0].body)" in text
    assert "SMS action, body: " in text
    assert "SALVO_RENDER_MAX_CHARS (100,000 characters)" in text
    assert 'data-role="confirm"' not in text
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.DRAFT


# --- services and the management command -------------------------------------------------


@pytest.mark.parametrize(("body", "expected"), UNRENDERABLE, ids=IDS)
def test_the_create_service_refuses_the_body(body, expected):
    with pytest.raises(ValidationError) as error:
        make_campaign(actions=[sms_action(body=body)])

    messages = error.value.message_dict["actions"]
    assert any(m.startswith("actions[0].body: ") and expected in m for m in messages), messages
    assert not Campaign.objects.exists()


@pytest.mark.parametrize(("body", "expected"), UNRENDERABLE, ids=IDS)
def test_the_campaign_command_refuses_to_activate_stored_content(body, expected):
    campaign = stored_with(body)

    with pytest.raises(CommandError) as error:
        call_command("campaign", "activate", str(campaign.pk))

    message = str(error.value)
    assert "\n" not in message
    assert "SMS action, body: " in message
    assert expected in message
    campaign.refresh_from_db()
    assert campaign.status == CampaignStatus.DRAFT


def test_activation_checks_refuse_stored_content(settings):
    campaign = stored_with('{{ profile.email|ljust:"50000000" }}')

    with pytest.raises(ValidationError) as error:
        activate_acknowledged(campaign=campaign)

    assert any(
        "SMS action, body: " in m and "SALVO_RENDER_MAX_CHARS" in m for m in error.value.messages
    )
