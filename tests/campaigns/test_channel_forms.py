"""Forms that fit the channel: an SMS action has no subject at any door, and the pages say
which presets and fields belong to which channel (the script that hides the others is
driven in tests/campaigns/test_channel_forms_browser.py)."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from campaigns.models import Campaign
from channels.choices import CHANNELS_WITH_SUBJECT, SENDER_FIELDS
from tests.campaigns.doors import ADD, add_data, create_payload, url
from tests.campaigns.factories import make_campaign
from tests.campaigns.lifecycle import snapshot
from tests.channels.factories import MessagePresetFactory
from tests.segments.factories import SegmentFactory

pytestmark = pytest.mark.django_db

NO_SUBJECT = "An SMS message has no subject"


def test_api_refuses_a_subject_on_an_sms_action_naming_the_field(api_client):
    campaign = make_campaign()
    before = snapshot(campaign)
    sms = MessagePresetFactory.create(channel="sms")
    actions = [{"channel": "sms", "preset": sms.pk, "subject": "Hello", "body": "Hi"}]

    response = api_client.patch(url(campaign), {"actions": actions}, format="json")

    assert response.status_code == 400, response.content
    errors = response.json()["actions"]
    assert any(e.startswith("actions[0].subject: ") and NO_SUBJECT in e for e in errors), errors
    assert snapshot(campaign) == before


@pytest.mark.parametrize("channel", sorted(CHANNELS_WITH_SUBJECT))
def test_api_keeps_the_subject_of_a_channel_that_has_one(api_client, channel):
    payload = create_payload()
    preset = MessagePresetFactory.create(channel=channel)
    payload["actions"] = [{"channel": channel, "preset": preset.pk, "subject": "S", "body": "B"}]

    response = api_client.post("/api/campaigns/", payload, format="json")

    assert response.status_code == 201, response.content
    action = Campaign.objects.get().draft_version.actions.get()
    assert action.subject == "S"


def test_admin_refuses_a_subject_on_an_sms_row_on_its_subject_field(admin_client):
    sms = MessagePresetFactory.create(channel="sms")
    rows = [{"channel": "sms", "preset": sms.pk, "subject": "Hello", "body": "Hi"}]

    response = admin_client.post(ADD, add_data(SegmentFactory(), rows))

    assert response.status_code == 200
    assert not Campaign.objects.exists()
    errors = response.context["inline_admin_formsets"][0].formset.forms[0].errors
    assert list(errors) == ["subject"]
    assert NO_SUBJECT in errors["subject"][0]


def test_admin_page_says_each_presets_channel_and_which_channels_have_a_subject(admin_client):
    email = MessagePresetFactory.create(channel="email", name="Newsletter")
    sms = MessagePresetFactory.create(channel="sms", name="Shop SMS")

    html = admin_client.get(ADD).content.decode()

    assert re.search(rf'<option value="{email.pk}" data-channel="email"', html)
    assert re.search(rf'<option value="{sms.pk}" data-channel="sms"', html)
    subject = re.search(r'<input[^>]*name="actions-0-subject"[^>]*>', html)
    assert subject is not None
    assert 'data-channels="email push webhook"' in subject.group(0)
    assert 'src="/static/channels/channel_fields.js"' in html


def test_new_preset_form_marks_each_sender_field_with_its_channel(admin_client):
    html = admin_client.get(reverse("admin:channels_messagepreset_add")).content.decode()

    assert re.search(r'<select[^>]*name="channel"[^>]*data-channel-select', html)
    for channel, fields in SENDER_FIELDS.items():
        for name in fields:
            field = re.search(rf'<input[^>]*name="{name}"[^>]*>', html)
            assert field is not None, name
            assert f'data-channels="{channel}"' in field.group(0)
    assert 'src="/static/channels/channel_fields.js"' in html


def test_existing_preset_form_shows_only_its_channels_sender_fields(admin_client):
    preset = MessagePresetFactory.create(channel="sms")

    response = admin_client.get(reverse("admin:channels_messagepreset_change", args=[preset.pk]))

    html = response.content.decode()
    assert 'name="sms_sender_id"' in html
    for name in (*SENDER_FIELDS["email"], *SENDER_FIELDS["push"], *SENDER_FIELDS["webhook"]):
        assert f'name="{name}"' not in html
