"""Own open and click tracking: a tracked marketing email sent through the SMTP sink, its
links followed with the test client, and forged links refused."""

from __future__ import annotations

import email
import re
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import pytest
from django.test import override_settings

from campaigns.choices import EventKind
from campaigns.models import Delivery, DeliveryEvent
from campaigns.tracking import PIXEL_GIF, tracked_click
from devtools.sinks import running_sinks
from tests.campaigns.delivery_support import drive
from tests.campaigns.factories import email_action, make_live_campaign, sms_action
from tests.channels.factories import MessagePresetFactory
from tests.segments.factories import ProfileFactory
from tests.settings_loader import PRODUCTION_REQUIRED, PRODUCTION_URLS, refusal, run_python

PUBLIC = "https://salvo.example.com"
TRACKING = {"SALVO_PUBLIC_URL": PUBLIC, "SALVO_TRACKING_SECRET": "tracking-test-key-0123456789"}

HTML = (
    "<html><body><p>Hi {{ profile.external_id }}</p>"
    '<a href="https://shop.example.com/sale?a=1&amp;b=2">Sale</a> '
    '<a href="mailto:help@example.com">Write</a></body></html>'
)
TEXT = "Hi {{ profile.external_id }}, see https://shop.example.com/sale?a=1&b=2. Or write."


def tracked_campaign(**fields: Any) -> Any:
    preset = MessagePresetFactory(channel="email", reply_to="help@example.com")
    fields.setdefault("track_opens", True)
    fields.setdefault("track_clicks", True)
    return make_live_campaign(
        actions=[email_action(preset=preset, body=TEXT, html_body=HTML)], **fields
    )


def send_one(campaign: Any) -> tuple[EmailMessage, Delivery]:
    """Drive the campaign through the SMTP sink; the one message received, parsed."""
    with running_sinks() as sink, override_settings(**sink.provider_settings(), **TRACKING):
        drive(campaign)
        [received] = sink.received("email")
    message = email.message_from_string(received["raw"], policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message, Delivery.objects.get(execution__campaign=campaign)


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    return text.get_content(), html.get_content() if html is not None else ""


def local(url: str) -> str:
    assert url.startswith(PUBLIC + "/t/"), url
    return url.removeprefix(PUBLIC)


@pytest.mark.django_db
def test_a_tracked_link_records_the_click_and_redirects_to_the_original_url(client):
    ProfileFactory.create(email="ann@example.com")
    message, delivery = send_one(tracked_campaign())
    text, html = parts(message)

    [text_link] = re.findall(r"https?://\S+", text.replace("Or write.", ""))
    text_link = text_link.rstrip(".,")
    [html_link, mailto] = re.findall(r'href="([^"]+)"', html)
    assert mailto == "mailto:help@example.com"  # never rewritten
    assert "shop.example.com" not in text
    assert "shop.example.com" not in html
    assert "&amp;" not in html_link  # the tracked link has no query to escape

    with override_settings(**TRACKING):
        response = client.get(local(html_link))
        assert response.status_code == 302
        assert response["Location"] == "https://shop.example.com/sale?a=1&b=2"
        response = client.get(local(text_link))
        assert response["Location"] == "https://shop.example.com/sale?a=1&b=2"

    # Two clicks of one link within a minute are one click (a scanner, a double click).
    [click] = DeliveryEvent.objects.filter(kind=EventKind.CLICKED)
    assert (click.provider, click.delivery_id) == ("salvo", delivery.pk)
    assert click.recipient == "ann@example.com"
    assert click.detail == "https://shop.example.com/sale?a=1&b=2"


@pytest.mark.django_db
def test_the_open_pixel_answers_an_uncached_gif_and_records_the_open(client):
    ProfileFactory.create(email="ann@example.com")
    message, delivery = send_one(tracked_campaign())
    _, html = parts(message)
    [pixel] = re.findall(r'<img src="([^"]+)"', html)
    assert html.index(pixel) < html.index("</body>")

    with override_settings(**TRACKING):
        first = client.get(local(pixel))
        again = client.get(local(pixel))
    assert first.status_code == again.status_code == 200
    assert first["Content-Type"] == "image/gif"
    assert first.content == PIXEL_GIF
    assert "no-cache" in first["Cache-Control"]
    assert "no-store" in first["Cache-Control"]
    [opened] = DeliveryEvent.objects.filter(kind=EventKind.OPENED)  # unique per hour
    assert (opened.delivery_id, opened.recipient) == (delivery.pk, "ann@example.com")


@pytest.mark.django_db
def test_a_forged_altered_or_truncated_token_is_a_404_and_records_nothing(client):
    ProfileFactory.create(email="ann@example.com")
    message, delivery = send_one(tracked_campaign())
    _, html = parts(message)
    [link, _] = re.findall(r'href="([^"]+)"', html)
    [pixel] = re.findall(r'<img src="([^"]+)"', html)
    token = local(link).removeprefix("/t/c/")
    with override_settings(**TRACKING):
        assert tracked_click(token) is not None

    # An attacker's own token: the right shape, signed with a key that is not Salvo's.
    from django.core import signing

    from campaigns import tracking

    forged = signing.Signer(key="attacker", salt="salvo.tracking").sign(
        f"{delivery.pk}:https://evil.example.net/"
    )
    forged_token = tracking._encode(forged)
    # The real token with its URL changed, keeping Salvo's signature.
    altered_token = tracking._encode(
        tracking._decode(token).replace("shop.example.com", "evil.example.net")
    )
    junk = ["", "x", "%00", "////", "a" * 20000, token[:-3], token + "A", altered_token]
    with override_settings(**TRACKING):
        for bad in [forged_token, *junk]:
            response = client.get(f"/t/c/{bad}")
            assert response.status_code == 404, bad
            assert "Location" not in response
            response = client.get(f"/t/o/{bad}.gif")
            assert response.status_code == 404, bad
        # The open token is no click token, and the other way round.
        open_token = local(pixel).removeprefix("/t/o/").removesuffix(".gif")
        assert client.get(f"/t/c/{open_token}").status_code == 404
        assert client.get(f"/t/o/{token}.gif").status_code == 404
    assert not DeliveryEvent.objects.exists()


@pytest.mark.django_db
def test_without_a_tracking_key_no_link_is_followed(client):
    """The production profile without SALVO_TRACKING_SECRET (no SALVO_PUBLIC_URL) signs
    nothing and follows nothing, whatever was signed under the embedded default's key."""
    ProfileFactory.create(email="ann@example.com")
    message, _ = send_one(tracked_campaign())
    [link, _] = re.findall(r'href="([^"]+)"', parts(message)[1])
    with override_settings(SALVO_TRACKING_SECRET=""):
        assert client.get(local(link)).status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize(
    "fields",
    [
        {"track_opens": False, "track_clicks": False},
        {"type": "transactional"},
    ],
    ids=["tracking-off", "transactional"],
)
def test_transactional_or_untracked_campaigns_are_not_rewritten(fields):
    ProfileFactory.create(email="ann@example.com")
    message, delivery = send_one(tracked_campaign(**fields))
    text, html = parts(message)
    assert f"Hi {delivery.profile.external_id}, see https://shop.example.com/sale?a=1&b=2." in text
    assert 'href="https://shop.example.com/sale?a=1&amp;b=2"' in html
    assert "/t/" not in text + html
    assert "<img" not in html


@pytest.mark.django_db
def test_no_tracking_without_a_public_url():
    ProfileFactory.create(email="ann@example.com")
    campaign = tracked_campaign()
    with (
        running_sinks() as sink,
        override_settings(**sink.provider_settings(), SALVO_PUBLIC_URL=""),
    ):
        drive(campaign)
        [received] = sink.received("email")
    message = email.message_from_string(received["raw"], policy=default_policy)
    assert isinstance(message, EmailMessage)
    text, html = parts(message)
    assert "https://shop.example.com/sale" in text
    assert "/t/" not in text + html


@pytest.mark.django_db
def test_opens_only_leaves_the_links_alone_and_the_sms_untouched():
    profile = ProfileFactory.create(email="ann@example.com", phone="+33612345678")
    preset = MessagePresetFactory(channel="email")
    campaign = make_live_campaign(
        actions=[
            email_action(preset=preset, body=TEXT, html_body=HTML),
            sms_action(body="See https://shop.example.com/x"),
        ],
        track_opens=True,
    )
    with running_sinks() as sink, override_settings(**sink.provider_settings(), **TRACKING):
        drive(campaign)
        [mail] = sink.received("email")
        [sms] = sink.received("sms")
    message = email.message_from_string(mail["raw"], policy=default_policy)
    assert isinstance(message, EmailMessage)
    text, html = parts(message)
    assert "https://shop.example.com/sale?a=1&b=2" in text
    assert re.findall(r'<img src="([^"]+)"', html)[0].startswith(PUBLIC + "/t/o/")
    assert "https://shop.example.com/x" in str(sms["json"])
    assert profile.pk


def test_tracked_links_are_never_signed_with_a_public_key(tmp_path):
    public = "embedded-default-tracking-secret"
    # Outside the embedded default, or with links going out, the public key is refused.
    production = {**PRODUCTION_URLS, **PRODUCTION_REQUIRED, "SALVO_TRACKING_SECRET": public}
    assert "SALVO_TRACKING_SECRET" in refusal(production, tmp_path)
    mailing = {"SALVO_PUBLIC_URL": PUBLIC, "SALVO_UNSUBSCRIBE_SECRET": "u" * 40}
    assert "SALVO_TRACKING_SECRET" in refusal(
        {**mailing, "SALVO_TRACKING_SECRET": public}, tmp_path
    )
    # Without a key of its own, a deployment mailing links starts, and tracks nothing.
    show = "from django.conf import settings; print(repr(settings.SALVO_TRACKING_SECRET))"
    started = run_python(["-c", show], mailing, tmp_path)
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "''"
