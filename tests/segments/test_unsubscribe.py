"""The unsubscribe link that marketing email carries: a public page, no login."""

import pytest
from django.test import Client, override_settings

from segments.choices import ConsentSource
from segments.unsubscribe import read_unsubscribe_token, unsubscribe_token, unsubscribe_url
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def client() -> Client:
    # As a mail client's one-click POST comes: no session, no CSRF cookie.
    return Client(enforce_csrf_checks=True)


def link_path(profile, channel: str = "email") -> str:
    with override_settings(SALVO_PUBLIC_URL="https://salvo.example.com"):
        url = unsubscribe_url(profile_id=profile.pk, channel=channel)
    assert url is not None
    assert url.startswith("https://salvo.example.com/unsubscribe/")
    return url.removeprefix("https://salvo.example.com")


def test_opening_the_link_asks_first_and_changes_nothing(client):
    profile = ProfileFactory.create()

    response = client.get(link_path(profile))

    assert response.status_code == 200
    assert b"Stop receiving marketing messages by email?" in response.content
    assert b'<form method="post">' in response.content
    profile.refresh_from_db()
    assert profile.consent_email is True


def test_one_click_post_unsubscribes_from_that_channel_only(client):
    profile = ProfileFactory.create()

    response = client.post(link_path(profile), {"List-Unsubscribe": "One-Click"})

    assert response.status_code == 200
    assert b"You are unsubscribed" in response.content
    profile.refresh_from_db()
    assert profile.consent_email is False
    assert profile.consent_email_source == ConsentSource.UNSUBSCRIBE
    assert profile.consent_email_changed_at is not None
    assert profile.consent_sms is True
    # A second click is harmless and keeps the first change's time.
    changed_at = profile.consent_email_changed_at
    assert client.post(link_path(profile)).status_code == 200
    profile.refresh_from_db()
    assert profile.consent_email_changed_at == changed_at


def test_each_channel_has_its_own_link(client):
    profile = ProfileFactory.create()

    client.post(link_path(profile, "sms"))

    profile.refresh_from_db()
    assert (profile.consent_sms, profile.consent_email) == (False, True)


@pytest.mark.parametrize(
    "token",
    [
        "42.email",  # unsigned
        "42.email:forged-signature",
        "not-a-token",
    ],
)
def test_a_forged_or_damaged_link_is_refused_and_changes_nothing(client, token):
    profile = ProfileFactory.create()

    for method in (client.get, client.post):
        response = method(f"/unsubscribe/{token}/")
        assert response.status_code == 404
        assert b"This link is not valid" in response.content
    profile.refresh_from_db()
    assert profile.consent_email is True


def test_a_token_cannot_be_pointed_at_another_profile_or_channel():
    token = unsubscribe_token(profile_id=7, channel="email")
    assert read_unsubscribe_token(token) == (7, "email")
    _value, _, signature = token.rpartition(":")
    assert read_unsubscribe_token(f"8.email:{signature}") is None
    assert read_unsubscribe_token(f"7.sms:{signature}") is None
    assert read_unsubscribe_token(unsubscribe_token(profile_id=7, channel="fax")) is None


def test_the_link_of_a_deleted_profile_still_answers(client):
    profile = ProfileFactory.create()
    path = link_path(profile)
    profile.delete()

    assert client.post(path).status_code == 200


def test_without_a_public_url_there_is_no_link():
    with override_settings(SALVO_PUBLIC_URL=""):
        assert unsubscribe_url(profile_id=1, channel="email") is None
