"""Content is checked where it is typed: what can never render is refused on its field at
save (admin and API); a variable no profile provides is a warning beside the field, and
the save goes through."""

from __future__ import annotations

import pytest

from campaigns.models import Campaign
from tests.campaigns.doors import change_data, change_url, create_payload, url
from tests.campaigns.factories import make_campaign, sms_action
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.django_db

UNCLOSED = "Hi {% if profile.vip %}VIP"


def test_api_refuses_a_template_error_keyed_by_its_field(api_client):
    payload = create_payload()
    payload["actions"][1]["body"] = UNCLOSED

    response = api_client.post("/api/campaigns/", payload, format="json")

    assert response.status_code == 400
    body = response.json()
    assert "endif" in " ".join(body["actions[1].body"])
    assert any(e.startswith("actions[1].body: ") for e in body["actions"])
    assert "actions[0].body" not in body
    assert not Campaign.objects.exists()


def test_api_patch_refuses_a_forbidden_subject_keyed_by_its_field(api_client):
    campaign = make_campaign()
    payload = create_payload()
    payload["actions"][0]["subject"] = "{% load static %}Hi"

    response = api_client.patch(url(campaign), {"actions": payload["actions"]}, format="json")

    assert response.status_code == 400
    assert "load" in " ".join(response.json()["actions[0].subject"])


def test_api_saves_an_unknown_variable_and_returns_the_warning(api_client):
    ProfileFactory(attributes={"first_name": "Ann"})
    payload = create_payload()
    payload["actions"][0]["body"] = "Hi {{ profile.frist_name }} {{ profile.first_name }}"

    response = api_client.post("/api/campaigns/", payload, format="json")

    assert response.status_code == 201, response.content
    (warning,) = response.json()["warnings"]
    assert warning["code"] == "unknown_variable"
    assert warning["field"] == "actions[0].body"
    assert "profile.frist_name" in warning["message"]

    patched = api_client.patch(
        url(response.json()["id"]), {"description": "unchanged content"}, format="json"
    )
    assert [w["field"] for w in patched.json()["warnings"]] == ["actions[0].body"]


def test_admin_refuses_a_template_error_on_the_body_field(admin_client):
    campaign = make_campaign(actions=[sms_action(body="Hi")])
    data = change_data(campaign)
    data["actions-0-body"] = UNCLOSED

    response = admin_client.post(change_url(campaign), data)

    assert response.status_code == 200
    (formset,) = response.context["inline_admin_formsets"]
    assert "endif" in " ".join(formset.formset.forms[0].errors["body"])
    assert Campaign.objects.get(pk=campaign.pk).draft_version.actions.get().body == "Hi"


def test_admin_saves_an_unknown_variable_and_shows_the_warning_beside_the_field(admin_client):
    ProfileFactory(attributes={"first_name": "Ann"})
    campaign = make_campaign(actions=[sms_action(body="Hi")])
    data = change_data(campaign)
    data["actions-0-body"] = "Hi {{ profile.frist_name }}"

    response = admin_client.post(change_url(campaign), data, follow=True)

    saved = Campaign.objects.get(pk=campaign.pk).draft_version.actions.get()
    assert saved.body == "Hi {{ profile.frist_name }}"
    html = response.content.decode()
    textarea_end = html.index("</textarea>", html.index('name="actions-0-body"'))
    beside = html[textarea_end : textarea_end + 400]
    assert 'class="salvo-field-warnings"' in beside
    assert "profile.frist_name" in beside
