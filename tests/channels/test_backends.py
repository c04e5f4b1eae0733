"""Which provider backend a preset may name: the registry (the shipped backends, the
channels' defaults from settings and the extra backends settings list), a choice per channel.

Nothing a request says is imported: a dotted path outside the registry is refused without
its module being loaded, at every door.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django.urls import reverse

from channels.choices import ChannelKind
from channels.models import MessagePreset
from channels.providers import backend_choices, get_backend, provider_backends
from channels.providers.console import ConsoleBackend
from channels.providers.http import SmsBackend
from tests.channels.doors import preset_data
from tests.channels.factories import MessagePresetFactory

pytestmark = pytest.mark.django_db

SHIPPED: dict[str, set[str]] = {
    "channels.providers.console.ConsoleBackend": set(ChannelKind.values),
    "channels.providers.locmem.LocmemBackend": set(ChannelKind.values),
    "channels.providers.email.EmailBackend": {ChannelKind.EMAIL},
    **{
        f"channels.providers.esp.{name}Backend": {ChannelKind.EMAIL}
        for name in ("Postmark", "SendGrid", "Mailgun", "SparkPost", "Brevo", "Resend", "Ses")
    },
    "channels.providers.http.SmsBackend": {ChannelKind.SMS},
    "channels.providers.http.PushBackend": {ChannelKind.PUSH},
    "channels.providers.http.WebhookBackend": {ChannelKind.WEBHOOK},
    "channels.providers.twilio.TwilioSmsBackend": {ChannelKind.SMS},
    "channels.providers.fcm.FcmPushBackend": {ChannelKind.PUSH},
}


class ProbeModule:
    """A module on sys.path that leaves a file behind when it is imported, and defines a
    well-formed SMS backend: importing it is the side effect a request must never cause."""

    def __init__(self, folder: Path) -> None:
        self.name = f"salvo_probe_{uuid.uuid4().hex}"
        self.marker = folder / f"{self.name}.imported"
        (folder / f"{self.name}.py").write_text(
            "from pathlib import Path\n"
            "from channels.providers import ProviderBackend, SendResult\n"
            f"Path({str(self.marker)!r}).write_text('imported')\n"
            "class ProbeBackend(ProviderBackend):\n"
            "    channels = frozenset({'sms'})\n"
            "    def send(self, message):\n"
            "        return SendResult(provider_message_id='probe')\n"
        )
        self.path = f"{self.name}.ProbeBackend"

    @property
    def imported(self) -> bool:
        return self.marker.exists() or self.name in sys.modules


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ProbeModule:
    monkeypatch.syspath_prepend(str(tmp_path))
    return ProbeModule(tmp_path)


def sms_preset(**fields: Any) -> dict[str, Any]:
    return {"name": "Texts", "channel": "sms", "sms_sender_id": "SHOP", **fields}


def any_channel_preset(channel: str, backend: str) -> dict[str, Any]:
    """A preset of `channel` with every channel's sender setting: only the backend decides."""
    return {
        "name": "Preset",
        "channel": channel,
        "from_email": "news@example.com",
        "sms_sender_id": "SHOP",
        "push_app_id": "com.example",
        "webhook_url": "https://hooks.example.com/in",
        "backend": backend,
    }


# --- the API door ------------------------------------------------------------------------


def test_api_refuses_a_module_outside_the_registry_without_importing_it(api_client, probe):
    response = api_client.post("/api/presets/", sms_preset(backend=probe.path), format="json")

    assert response.status_code == 400, response.content
    assert probe.path in response.json()["backend"][0]
    assert not probe.imported
    assert not MessagePreset.objects.exists()


def test_api_refuses_an_import_with_a_side_effect_of_the_standard_library(api_client):
    # `this` prints the Zen of Python when imported: the path is refused, never loaded.
    sys.modules.pop("this", None)

    response = api_client.post("/api/presets/", sms_preset(backend="this.x"), format="json")

    assert response.status_code == 400
    assert "backend" in response.json()
    assert "this" not in sys.modules


@pytest.mark.parametrize(
    ("backend", "channel"),
    [
        pytest.param(".x", "sms", id="relative-path"),
        pytest.param("x", "sms", id="no-dot"),
        pytest.param("channels.providers.ProviderBackend", "sms", id="abstract-base"),
        pytest.param("channels.providers.http.HttpProviderBackend", "sms", id="abstract-http"),
        pytest.param("channels.providers.http.SmsBackend", "email", id="other-channel"),
        pytest.param("channels.providers.email.EmailBackend", "sms", id="email-for-sms"),
        pytest.param("channels.providers.esp.PostmarkBackend", "push", id="esp-for-push"),
        pytest.param("channels.models.MessagePreset", "sms", id="not-a-backend"),
        pytest.param("os.system", "sms", id="a-function"),
    ],
)
def test_api_refuses_what_the_channel_cannot_use_with_a_400(api_client, backend, channel):
    payload = any_channel_preset(channel, backend)

    response = api_client.post("/api/presets/", payload, format="json")

    assert response.status_code == 400, response.content
    assert list(response.json()) == ["backend"]
    assert not MessagePreset.objects.exists()


def test_api_patch_to_an_unregistered_backend_leaves_the_preset(api_client, probe):
    preset = MessagePresetFactory.create(channel="sms")

    response = api_client.patch(
        f"/api/presets/{preset.pk}/", {"backend": probe.path}, format="json"
    )

    assert response.status_code == 400
    assert not probe.imported
    assert MessagePreset.objects.get(pk=preset.pk).backend == ""


@pytest.mark.parametrize(
    ("channel", "backend"),
    [(channel, path) for path, channels in SHIPPED.items() for channel in sorted(channels)],
)
def test_api_accepts_every_shipped_backend_for_the_channels_it_serves(api_client, channel, backend):
    payload = any_channel_preset(channel, backend)

    response = api_client.post("/api/presets/", payload, format="json")

    assert response.status_code == 201, response.content
    assert MessagePreset.objects.get().backend == backend


def test_a_backend_listed_in_settings_is_a_choice_for_its_channels(api_client, probe):
    with override_settings(SALVO_PROVIDER_EXTRA_BACKENDS=[probe.path]):
        accepted = api_client.post("/api/presets/", sms_preset(backend=probe.path), format="json")
        wrong_channel = api_client.post(
            "/api/presets/",
            {
                "name": "Mail",
                "channel": "email",
                "from_email": "a@example.com",
                "backend": probe.path,
            },
            format="json",
        )
        sent_through = type(get_backend(MessagePreset.objects.get(name="Texts")))

    assert accepted.status_code == 201, accepted.content
    assert wrong_channel.status_code == 400
    assert "backend" in wrong_channel.json()
    assert sent_through.__module__ == probe.name


# --- the admin door ----------------------------------------------------------------------


def test_admin_refuses_a_module_outside_the_registry_without_importing_it(admin_client, probe):
    response = admin_client.post(
        reverse("admin:channels_messagepreset_add"),
        preset_data(name="Texts", channel="sms", sms_sender_id="SHOP", backend=probe.path),
    )

    assert response.status_code == 200
    assert "backend" in response.context["adminform"].form.errors
    assert not probe.imported
    assert not MessagePreset.objects.exists()


def test_admin_offers_the_registered_backends_of_the_presets_channel(admin_client):
    preset = MessagePresetFactory.create(channel="sms")

    page = admin_client.get(reverse("admin:channels_messagepreset_change", args=[preset.pk]))

    choices = [value for value, _ in page.context["adminform"].form.fields["backend"].choices]
    assert choices == ["", *sorted(p for p, channels in SHIPPED.items() if "sms" in channels)]


# --- the registry ------------------------------------------------------------------------


def test_registry_holds_the_shipped_backends_with_their_channels():
    registry = provider_backends()

    assert {path: set(cls.channels) for path, cls in registry.items()} == SHIPPED


def test_choices_per_channel():
    sms = [path for path, _label in backend_choices(ChannelKind.SMS)]

    assert "channels.providers.http.SmsBackend" in sms
    assert "channels.providers.console.ConsoleBackend" in sms
    assert "channels.providers.email.EmailBackend" not in sms


def test_a_stored_backend_outside_the_registry_is_never_imported(probe):
    preset = MessagePresetFactory.build(channel="sms", backend=probe.path)

    with pytest.raises(ImproperlyConfigured, match="not a registered provider backend"):
        get_backend(preset)

    assert not probe.imported


def test_the_channels_defaults_are_registered():
    with override_settings(SALVO_PROVIDER_BACKENDS={"sms": "channels.providers.http.SmsBackend"}):
        assert isinstance(get_backend(MessagePresetFactory.build(channel="sms")), SmsBackend)
    assert isinstance(get_backend(MessagePresetFactory.build(channel="sms")), ConsoleBackend)


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("SALVO_PROVIDER_EXTRA_BACKENDS", ["channels.providers.nope.Missing"], "cannot import"),
        ("SALVO_PROVIDER_EXTRA_BACKENDS", ["channels.providers.ProviderBackend"], "no channels"),
        (
            "SALVO_PROVIDER_BACKENDS",
            {"sms": "channels.providers.email.EmailBackend"},
            "does not serve sms",
        ),
    ],
)
def test_a_bad_setting_is_named_when_the_registry_is_built(setting, value, says):
    with override_settings(**{setting: value}), pytest.raises(ImproperlyConfigured) as error:
        provider_backends()

    assert setting in str(error.value)
    assert says in str(error.value)
