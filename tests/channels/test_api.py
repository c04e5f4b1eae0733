"""/api/presets/: the message presets a campaign's actions go out with."""

import pytest
from rest_framework.test import APIClient

from channels.models import MessagePreset
from tests.campaigns.factories import make_campaign
from tests.campaigns.lifecycle import version
from tests.channels.factories import MessagePresetFactory

pytestmark = pytest.mark.django_db


def test_create_an_email_preset(api_client):
    response = api_client.post(
        "/api/presets/",
        {"name": "Newsletter", "channel": "email", "from_email": "news@example.com"},
        format="json",
    )

    assert response.status_code == 201, response.content
    preset = MessagePreset.objects.get(pk=response.json()["id"])
    assert (preset.name, preset.channel, preset.from_email) == (
        "Newsletter",
        "email",
        "news@example.com",
    )


@pytest.mark.parametrize(
    ("channel", "field"),
    [
        ("email", "from_email"),
        ("sms", "sms_sender_id"),
        ("push", "push_app_id"),
        ("webhook", "webhook_url"),
    ],
)
def test_create_without_the_channels_sender_setting_is_400(api_client, channel, field):
    response = api_client.post(
        "/api/presets/", {"name": "Incomplete", "channel": channel}, format="json"
    )

    assert response.status_code == 400
    assert field in response.json()
    assert not MessagePreset.objects.exists()


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"name": "X", "channel": "fax", "from_email": "a@b.c"}, id="bad-channel"),
        pytest.param({"name": "X", "channel": "email", "from_email": "nope"}, id="bad-email"),
        pytest.param({"channel": "email", "from_email": "a@b.c"}, id="no-name"),
        pytest.param({"name": "X", "channel": "webhook", "webhook_url": "x"}, id="bad-url"),
    ],
)
def test_create_refuses_bad_input(api_client, payload):
    response = api_client.post("/api/presets/", payload, format="json")

    assert response.status_code == 400
    assert not MessagePreset.objects.exists()


def test_name_is_unique(api_client):
    MessagePresetFactory.create(name="Newsletter")

    response = api_client.post(
        "/api/presets/",
        {"name": "Newsletter", "channel": "email", "from_email": "a@example.com"},
        format="json",
    )

    assert response.status_code == 400
    assert "name" in response.json()


def test_patch_runs_the_models_checks_and_leaves_the_row_on_refusal(api_client):
    preset = MessagePresetFactory.create(channel="sms", sms_sender_id="SALVO")

    refused = api_client.patch(f"/api/presets/{preset.pk}/", {"sms_sender_id": ""}, format="json")
    accepted = api_client.patch(
        f"/api/presets/{preset.pk}/", {"sms_sender_id": "SHOP"}, format="json"
    )

    assert refused.status_code == 400
    assert "sms_sender_id" in refused.json()
    assert accepted.status_code == 200
    preset.refresh_from_db()
    assert preset.sms_sender_id == "SHOP"


@pytest.mark.parametrize("used_by_a_campaign", [True, False])
def test_patch_never_changes_the_channel(api_client, used_by_a_campaign):
    if used_by_a_campaign:
        preset = version(make_campaign()).actions.get(channel="email").preset
    else:
        preset = MessagePresetFactory.create(channel="email")
    # Otherwise valid: the push preset's required setting is there.
    change = {"channel": "push", "push_app_id": "com.example.app"}

    response = api_client.patch(f"/api/presets/{preset.pk}/", change, format="json")

    assert response.status_code == 400, response.content
    assert list(response.json()) == ["channel"]
    assert "cannot change" in response.json()["channel"][0]
    assert MessagePreset.objects.get(pk=preset.pk).channel == "email"


def test_list_filters_by_channel_and_searches(api_client):
    MessagePresetFactory.create(name="Newsletter", channel="email")
    MessagePresetFactory.create(name="Promo texts", channel="sms")
    MessagePresetFactory.create(name="Promo mails", channel="email")

    by_channel = api_client.get("/api/presets/?channel=email").json()["results"]
    searched = api_client.get("/api/presets/?search=promo").json()["results"]
    both = api_client.get("/api/presets/?search=promo&channel=sms").json()["results"]

    assert [p["name"] for p in by_channel] == ["Newsletter", "Promo mails"]
    assert [p["name"] for p in searched] == ["Promo mails", "Promo texts"]
    assert [p["name"] for p in both] == ["Promo texts"]


def test_unknown_channel_filter_is_400(api_client):
    response = api_client.get("/api/presets/?channel=fax")

    assert response.status_code == 400
    assert "channel" in response.json()


def test_delete_an_unused_preset(api_client):
    preset = MessagePresetFactory.create()

    assert api_client.delete(f"/api/presets/{preset.pk}/").status_code == 204
    assert not MessagePreset.objects.exists()


def test_delete_a_preset_in_use_is_409_and_keeps_it(api_client):
    campaign = make_campaign()
    preset = version(campaign).actions.get(channel="email").preset

    response = api_client.delete(f"/api/presets/{preset.pk}/")

    assert response.status_code == 409
    assert preset.name in response.json()["detail"]
    assert MessagePreset.objects.filter(pk=preset.pk).exists()


def test_unknown_id_is_404(api_client):
    assert api_client.get("/api/presets/4242/").status_code == 404
    assert api_client.patch("/api/presets/4242/", {}, format="json").status_code == 404


def test_unauthenticated_is_401():
    assert APIClient().get("/api/presets/").status_code == 401


def test_reading_needs_the_view_permission(api_client_for, user_with_perms):
    no_view = api_client_for(user_with_perms("channels.add_messagepreset"))
    viewer = api_client_for(user_with_perms("channels.view_messagepreset"))

    assert no_view.get("/api/presets/").status_code == 403
    assert viewer.get("/api/presets/").status_code == 200
    assert (
        viewer.post("/api/presets/", {"name": "X", "channel": "sms"}, format="json").status_code
        == 403
    )
