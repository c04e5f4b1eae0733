"""An email action's optional HTML part at every door: the API, the admin, the services,
a version's copy, the preview, the activation review and the send; refused on the other
channels; and the tracking switches at the API, admin and command doors."""

from __future__ import annotations

import email
from email.message import EmailMessage
from email.policy import default as default_policy
from io import StringIO
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.test import override_settings

from campaigns import services
from campaigns.models import Campaign, ChannelAction
from campaigns.selectors import version_change_notes, version_diff
from devtools.sinks import running_sinks
from tests.campaigns.delivery_support import drive
from tests.campaigns.doors import ADD, add_data, create_payload, url
from tests.campaigns.factories import (
    activate_acknowledged,
    email_action,
    make_campaign,
    make_live_campaign,
    sms_action,
)
from tests.channels.factories import MessagePresetFactory
from tests.segments.factories import ProfileFactory, SegmentFactory

pytestmark = pytest.mark.django_db

HTML = "<p>Hello <b>{{ profile.attributes.name }}</b></p>"


def inline_errors(response: Any) -> list[dict[str, list[str]]]:
    formset = response.context["inline_admin_formsets"][0].formset
    return [dict(form.errors) for form in formset.forms]


def test_api_stores_and_shows_the_html_part_and_the_tracking_switches(api_client):
    payload = create_payload(track_opens=True)
    payload["actions"][0]["html_body"] = HTML

    response = api_client.post("/api/campaigns/", payload, format="json")

    assert response.status_code == 201, response.content
    shown = api_client.get(url(Campaign.objects.get())).json()
    assert (shown["track_opens"], shown["track_clicks"]) == (True, False)
    actions = {a["channel"]: a for a in shown["draft_version"]["actions"]}
    assert actions["email"]["html_body"] == HTML
    assert actions["sms"]["html_body"] == ""


def test_api_refuses_an_html_part_on_an_sms_naming_the_field(api_client):
    payload = create_payload()
    payload["actions"][1]["html_body"] = "<p>Hi</p>"

    response = api_client.post("/api/campaigns/", payload, format="json")

    assert response.status_code == 400, response.content
    assert "Only an email has an HTML part" in str(response.json()["actions"])
    assert not Campaign.objects.exists()


def test_api_refuses_html_that_cannot_render_naming_the_field(api_client):
    payload = create_payload()
    payload["actions"][0]["html_body"] = "{% load static %}"

    response = api_client.post("/api/campaigns/", payload, format="json")

    assert response.status_code == 400, response.content
    assert "actions[0].html_body" in response.json()
    assert not Campaign.objects.exists()


def test_admin_saves_the_html_part_and_the_switches_and_refuses_it_on_an_sms(admin_client):
    email_preset = MessagePresetFactory.create(channel="email")
    sms = MessagePresetFactory.create(channel="sms")
    rows = [
        {
            "channel": "email",
            "preset": email_preset.pk,
            "subject": "Hi",
            "body": "Hi",
            "html_body": HTML,
        },
        {"channel": "sms", "preset": sms.pk, "subject": "", "body": "Hi", "html_body": "<p>x</p>"},
    ]
    response = admin_client.post(ADD, add_data(SegmentFactory(), rows, track_clicks="on"))
    assert response.status_code == 200
    assert not Campaign.objects.exists()
    errors = inline_errors(response)
    assert errors[0] == {}
    assert "Only an email has an HTML part" in errors[1]["html_body"][0]

    rows[1]["html_body"] = ""
    response = admin_client.post(ADD, add_data(SegmentFactory(), rows, track_clicks="on"))
    assert response.status_code == 302
    campaign = Campaign.objects.get()
    assert (campaign.track_opens, campaign.track_clicks) == (False, True)
    assert ChannelAction.objects.get(channel="email").html_body == HTML


def test_the_services_and_the_database_refuse_an_html_part_off_email():
    with pytest.raises(ValidationError, match="html_body: Only an email"):
        make_campaign(actions=[sms_action(html_body="<p>x</p>")])
    campaign = make_campaign(actions=[sms_action()])
    with pytest.raises(IntegrityError), transaction.atomic():
        ChannelAction.objects.filter(version__campaign=campaign).update(html_body="<p>x</p>")


def test_a_new_version_copies_the_html_part_and_the_diff_notes_its_change(api_client):
    campaign = make_live_campaign(actions=[email_action(html_body=HTML)])
    response = api_client.post(f"/api/campaigns/{campaign.pk}/modify/", format="json")
    assert response.status_code == 201, response.content
    campaign.refresh_from_db()
    draft = campaign.draft_version
    assert draft is not None
    assert draft.actions.get().html_body == HTML

    preset = draft.actions.get().preset
    services.campaign_update(
        campaign=campaign,
        user=None,
        data={"actions": [email_action(preset=preset, html_body="<p>New</p>")]},
    )
    campaign.refresh_from_db()
    old, new = campaign.live_version, campaign.draft_version
    assert old is not None
    assert new is not None
    [_, email_section] = version_diff(old=old, new=new)
    changed = {f.label: (f.old, f.new) for f in email_section.fields if f.changed}
    assert list(changed) == ["HTML body"]
    assert any("new content of Email" in n for n in version_change_notes(campaign=campaign))


def test_the_preview_shows_the_html_part_escaped(api_client):
    ann = ProfileFactory.create(attributes={"name": "<Ann & co>"})
    campaign = make_campaign(actions=[email_action(html_body=HTML)])

    response = api_client.post(
        f"/api/campaigns/{campaign.pk}/preview/", {"profile": ann.pk}, format="json"
    )

    assert response.status_code == 200, response.content
    [shown] = response.json()["actions"]
    assert shown["html"] == "<p>Hello <b>&lt;Ann &amp; co&gt;</b></p>"


def test_activation_refuses_stored_html_that_cannot_render():
    campaign = make_campaign(actions=[email_action()])
    ChannelAction.objects.filter(version__campaign=campaign).update(html_body="{% load x %}")
    with pytest.raises(ValidationError, match="html_body"):
        activate_acknowledged(campaign=campaign)


def test_the_send_carries_the_html_part_rendered_escaped_beside_the_text():
    ProfileFactory.create(email="ann@example.com", attributes={"name": "<Ann>"})
    campaign = make_live_campaign(actions=[email_action(html_body=HTML)])
    with running_sinks() as sink, override_settings(**sink.provider_settings()):
        drive(campaign)
        [received] = sink.received("email")
    message = email.message_from_string(received["raw"], policy=default_policy)
    assert isinstance(message, EmailMessage)
    html, text = message.get_body(("html",)), message.get_body(("plain",))
    assert html is not None
    assert text is not None
    assert html.get_content().strip() == "<p>Hello <b>&lt;Ann&gt;</b></p>"
    assert text.get_content().startswith("Hello ")


def test_the_command_shows_the_tracking_switches_and_why_they_do_nothing(settings):
    settings.SALVO_PUBLIC_URL = ""
    campaign = make_campaign(actions=[email_action(html_body=HTML)], track_clicks=True)
    out = StringIO()
    call_command("campaign", "show", str(campaign.pk), stdout=out)
    assert "tracking:    clicks (no effect until SALVO_PUBLIC_URL is set)" in out.getvalue()
    assert "(with an HTML part)" in out.getvalue()
    out = StringIO()
    call_command("campaign", "show", str(campaign.pk), "--json", stdout=out)
    assert '"track_clicks": true' in out.getvalue()
