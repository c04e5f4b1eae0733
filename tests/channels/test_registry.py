"""The channel registry's facts where a user meets them: the sender settings a preset's page
shows under its channel's title, and the environment variable that picks each channel's
default provider. The expectations are written out here, not read from the registry, so
that a change of the registry shows up as a change a user would see."""

from __future__ import annotations

import json
import re

import pytest
from django.urls import reverse

from tests.channels.factories import MessagePresetFactory
from tests.settings_loader import run_python

# What a preset of each channel asks for, as its admin page shows it.
SENDER_PAGES = {
    "email": ("Email sender", {"from_name", "from_email", "reply_to"}),
    "sms": ("SMS sender", {"sms_sender_id"}),
    "push": ("Push application", {"push_app_id"}),
    "webhook": ("Webhook endpoint", {"webhook_url"}),
}
EVERY_SENDER_FIELD = set().union(*(fields for _, fields in SENDER_PAGES.values()))
CONSOLE = "channels.providers.console.ConsoleBackend"
# Each channel's variable, and a shipped backend of that channel to set it to.
BACKEND_VARIABLES = {
    "email": ("SALVO_EMAIL_BACKEND", "channels.providers.email.EmailBackend"),
    "sms": ("SALVO_SMS_BACKEND", "channels.providers.http.SmsBackend"),
    "push": ("SALVO_PUSH_BACKEND", "channels.providers.http.PushBackend"),
    "webhook": ("SALVO_WEBHOOK_BACKEND", "channels.providers.http.WebhookBackend"),
}
SHOW_BACKENDS = """
import json
from django.conf import settings
print(json.dumps(settings.SALVO_PROVIDER_BACKENDS))
"""


@pytest.mark.django_db
@pytest.mark.parametrize("channel", sorted(SENDER_PAGES))
def test_a_presets_page_shows_exactly_its_channels_sender_settings_under_its_title(
    admin_client, channel
):
    title, fields = SENDER_PAGES[channel]
    preset = MessagePresetFactory.create(channel=channel)

    response = admin_client.get(reverse("admin:channels_messagepreset_change", args=[preset.pk]))

    html = response.content.decode()
    named = set(re.findall(r'<(?:input|select|textarea)[^>]*\bname="([a-z_]+)"', html))
    assert named & EVERY_SENDER_FIELD == fields
    assert re.search(rf"<h2[^>]*>\s*{re.escape(title)}\s*</h2>", html), title


@pytest.mark.parametrize("channel", sorted(BACKEND_VARIABLES))
def test_each_channels_variable_sets_its_default_provider_and_no_other(tmp_path, channel):
    variable, backend = BACKEND_VARIABLES[channel]

    done = run_python(["-c", SHOW_BACKENDS], {variable: backend}, tmp_path)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        kind: backend if kind == channel else CONSOLE for kind in BACKEND_VARIABLES
    }
