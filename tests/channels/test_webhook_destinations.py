"""Webhook URLs may not reach loopback, private, link-local, multicast or reserved addresses
unless SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES says so (the embedded default does, for its
loopback sinks): refused at save, and at send after the host is resolved."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from django.test import override_settings
from django.urls import reverse

from campaigns.choices import DeliveryStatus
from campaigns.models import Delivery
from channels.choices import ChannelKind
from channels.models import MessagePreset
from channels.providers import OutboundMessage, PermanentProviderError
from devtools.sinks import RunningSinks, running_sinks
from tests.campaigns.delivery_support import plan, send_all
from tests.campaigns.factories import make_live_campaign, webhook_action
from tests.channels.doors import preset_data
from tests.channels.factories import MessagePresetFactory
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.django_db

REFUSED = [
    pytest.param("http://127.0.0.1:8025/webhook", "loopback", id="loopback"),
    pytest.param("http://localhost:8025/webhook", "loopback", id="localhost-name"),
    pytest.param("http://app.localhost/webhook", "loopback", id="localhost-subdomain"),
    pytest.param("http://[::1]/webhook", "loopback", id="ipv6-loopback"),
    pytest.param("http://[::ffff:127.0.0.1]/webhook", "loopback", id="ipv4-mapped"),
    pytest.param("http://[2002:7f00:1::1]/webhook", "loopback", id="6to4-of-loopback"),
    pytest.param("http://10.1.2.3/webhook", "private", id="private-10"),
    pytest.param("https://192.168.1.20/webhook", "private", id="private-192"),
    pytest.param("http://[fc00::1]/webhook", "private", id="ipv6-unique-local"),
    pytest.param("http://169.254.169.254/latest/meta-data/", "link-local", id="metadata"),
    pytest.param("http://[fe80::1]/webhook", "link-local", id="ipv6-link-local"),
    pytest.param("http://224.0.0.1/webhook", "multicast", id="multicast"),
    pytest.param("http://240.0.0.1/webhook", "reserved", id="reserved"),
    pytest.param("http://0.0.0.0/webhook", "unspecified", id="unspecified"),
    pytest.param("http://100.64.0.1/webhook", "non-public", id="shared-address-space"),
]
PUBLIC = "https://hooks.example.com/salvo"


def webhook_preset(url: str) -> dict[str, str]:
    return {"name": "CRM", "channel": "webhook", "webhook_url": url}


# --- at save -----------------------------------------------------------------------------


@override_settings(SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES=False)
@pytest.mark.parametrize(("url", "kind"), REFUSED)
def test_api_refuses_a_webhook_url_of_a_non_public_address(api_client, url, kind):
    response = api_client.post("/api/presets/", webhook_preset(url), format="json")

    assert response.status_code == 400, response.content
    assert f"a {kind} address" in response.json()["webhook_url"][0]
    assert not MessagePreset.objects.exists()


@override_settings(SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES=False)
def test_api_accepts_a_public_webhook_url_and_refuses_a_patch_to_a_private_one(api_client):
    created = api_client.post("/api/presets/", webhook_preset(PUBLIC), format="json")
    preset_url = f"/api/presets/{created.json()['id']}/"

    refused = api_client.patch(preset_url, {"webhook_url": "http://10.0.0.7/"}, format="json")

    assert created.status_code == 201, created.content
    assert refused.status_code == 400
    assert MessagePreset.objects.get().webhook_url == PUBLIC


@override_settings(SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES=False)
def test_admin_refuses_a_webhook_url_of_a_private_address_on_the_field(admin_client):
    response = admin_client.post(
        reverse("admin:channels_messagepreset_add"),
        preset_data(name="CRM", channel="webhook", webhook_url="http://10.1.2.3/hook"),
    )

    assert response.status_code == 200
    assert "a private address" in response.context["adminform"].form.errors["webhook_url"][0]
    assert not MessagePreset.objects.exists()


@override_settings(SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES=True)
def test_the_setting_allows_loopback_sinks(api_client):
    response = api_client.post(
        "/api/presets/", webhook_preset("http://127.0.0.1:8025/webhook"), format="json"
    )

    assert response.status_code == 201, response.content


def test_the_embedded_default_allows_private_addresses_and_production_does_not(settings):
    # This run's profile: embedded when neither server is named in the environment.
    embedded = not (os.environ.get("DATABASE_URL") or os.environ.get("CELERY_BROKER_URL"))

    assert settings.SALVO_EMBEDDED is embedded
    assert settings.SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES is embedded


# --- at send ---------------------------------------------------------------------------


@pytest.fixture
def sink() -> Iterator[RunningSinks]:
    with running_sinks() as running:
        yield running


def send_one(url: str) -> object:
    from channels.providers import get_backend

    hook = MessagePresetFactory.build(channel=ChannelKind.WEBHOOK, webhook_url=url)
    message = OutboundMessage(delivery_id=4242, channel="webhook", to="", subject="", body="Hi")
    with get_backend(hook) as backend:
        return backend.send_batch([message])[0]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"], ids=["address", "hostname"])
def test_send_refuses_a_host_that_resolves_to_a_private_address(sink, host):
    url = sink.webhook_url.replace("127.0.0.1", host)
    backends = {"webhook": "channels.providers.http.WebhookBackend"}

    with override_settings(
        SALVO_PROVIDER_BACKENDS=backends, SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES=False
    ):
        outcome = send_one(url)

    assert isinstance(outcome, PermanentProviderError)
    assert "127.0.0.1, a loopback address" in outcome.reason
    assert url in outcome.reason
    assert sink.attempts("webhook") == []


def test_send_reaches_a_loopback_sink_when_allowed(sink):
    backends = {"webhook": "channels.providers.http.WebhookBackend"}

    with override_settings(
        SALVO_PROVIDER_BACKENDS=backends, SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES=True
    ):
        outcome = send_one(sink.webhook_url.replace("127.0.0.1", "localhost"))

    assert not isinstance(outcome, PermanentProviderError), outcome
    assert len(sink.received("webhook")) == 1


def test_a_refused_webhook_is_that_deliverys_permanent_failure(sink):
    # Saved while private addresses were allowed (or its DNS changed since): the send
    # refuses it after resolving, and the delivery records why.
    profile = ProfileFactory.create()
    hook = MessagePresetFactory.create(channel=ChannelKind.WEBHOOK, webhook_url=sink.webhook_url)
    campaign = make_live_campaign(actions=[webhook_action(preset=hook)])

    refusing = {**sink.provider_settings(), "SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": False}
    with override_settings(**refusing):
        send_all(plan(campaign))

    row = Delivery.objects.get(profile=profile)
    assert row.status == DeliveryStatus.FAILED
    assert "127.0.0.1, a loopback address" in row.error
    assert row.attempts == 1
    assert sink.attempts("webhook") == []
