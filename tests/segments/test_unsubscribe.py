"""The unsubscribe link that marketing email carries: a public page, no login."""

import pytest
from django.conf import settings
from django.core import signing
from django.test import Client, override_settings

from segments.choices import ConsentSource
from segments.unsubscribe import read_unsubscribe_token, unsubscribe_token, unsubscribe_url
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.django_db

# The secret key the embedded default runs with, published in this repository; unsubscribe
# links were signed with the secret key (and this salt) before they had a key of their own.
PUBLIC_SECRET_KEY = "embedded-default-insecure-key-set-DJANGO_SECRET_KEY-in-production"
OLD_SALT = "salvo.unsubscribe"


@pytest.fixture
def client() -> Client:
    # As a mail client's one-click POST comes: no session, no CSRF cookie.
    return Client(enforce_csrf_checks=True)


def link_path(profile, channel: str = "email") -> str:
    with override_settings(SALVO_PUBLIC_URL="https://salvo.example.com"):
        url = unsubscribe_url(
            profile_id=profile.pk, external_id=profile.external_id, channel=channel
        )
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
    one, next_one = ProfileFactory.create_batch(2)
    token = unsubscribe_token(profile_id=one.pk, external_id=one.external_id, channel="email")
    assert read_unsubscribe_token(token) is not None
    assert read_unsubscribe_token(token).profile_id == one.pk
    assert read_unsubscribe_token(token).channel == "email"

    named, _, signature = token.rpartition(":")
    _, binding = named.rsplit(".", 1)
    assert read_unsubscribe_token(f"{next_one.pk}.email.{binding}:{signature}") is None
    assert read_unsubscribe_token(f"{one.pk}.sms.{binding}:{signature}") is None
    fax = unsubscribe_token(profile_id=one.pk, external_id=one.external_id, channel="fax")
    assert read_unsubscribe_token(fax) is None


def test_a_link_signed_with_the_public_default_key_changes_nothing(client):
    """The attack of issue 9: profile ids are sequential, and the key was public."""
    profile = ProfileFactory.create()
    forged = signing.Signer(key=PUBLIC_SECRET_KEY, salt=OLD_SALT).sign(f"{profile.pk}.email")

    for method in (client.get, client.post):
        response = method(f"/unsubscribe/{forged}/")
        assert response.status_code == 404
    profile.refresh_from_db()
    assert profile.consent_email is True


def test_holding_the_key_is_not_enough_to_unsubscribe_a_neighbour(client):
    """A link names its profile by id and by external id: whoever holds the signing key (a
    leak, or the embedded default's public one) still cannot reach a profile by its id."""
    mine, neighbour = ProfileFactory.create_batch(2)
    key = settings.SALVO_UNSUBSCRIBE_SECRET
    forged = [
        # Built from the neighbour's id alone, as links used to be.
        signing.Signer(key=key, salt=OLD_SALT).sign(f"{neighbour.pk}.email"),
        # The neighbour's id with another profile's external id, or a guess.
        unsubscribe_token(profile_id=neighbour.pk, external_id=mine.external_id, channel="email"),
        unsubscribe_token(profile_id=neighbour.pk, external_id=str(neighbour.pk), channel="email"),
    ]

    for token in forged:
        for method in (client.get, client.post):
            assert method(f"/unsubscribe/{token}/").status_code == 404, token
    neighbour.refresh_from_db()
    assert neighbour.consent_email is True


def test_a_link_says_nothing_about_the_next_profiles_link():
    one, next_one = ProfileFactory.create_batch(2)
    mine = unsubscribe_token(profile_id=one.pk, external_id=one.external_id, channel="email")
    theirs = unsubscribe_token(
        profile_id=next_one.pk, external_id=next_one.external_id, channel="email"
    )

    # Past the ids, the two share nothing: neither can be worked out from the other.
    mine_rest, theirs_rest = mine.partition(".")[2], theirs.partition(".")[2]
    assert mine_rest.partition(".")[0] == theirs_rest.partition(".")[0] == "email"
    mine_binding, _, mine_signature = mine_rest.partition(".")[2].partition(":")
    theirs_binding, _, theirs_signature = theirs_rest.partition(".")[2].partition(":")
    assert mine_binding != theirs_binding
    assert mine_signature != theirs_signature


def test_a_link_stops_naming_a_profile_whose_external_id_changed(client):
    profile = ProfileFactory.create(external_id="crm-1")
    path = link_path(profile)
    profile.external_id = "crm-1-renumbered"
    profile.save()

    assert client.post(path).status_code == 404
    profile.refresh_from_db()
    assert profile.consent_email is True


def test_links_signed_before_the_upgrade_work_once_their_key_is_listed(client):
    profile = ProfileFactory.create()
    previous_secret_key = "the-deployments-previous-DJANGO_SECRET_KEY-0123456789abcdef"
    old_link = signing.Signer(key=previous_secret_key, salt=OLD_SALT).sign(f"{profile.pk}.email")

    assert client.post(f"/unsubscribe/{old_link}/").status_code == 404
    with override_settings(SALVO_UNSUBSCRIBE_SECRET_FALLBACKS=[previous_secret_key]):
        assert client.get(f"/unsubscribe/{old_link}/").status_code == 200
        assert client.post(f"/unsubscribe/{old_link}/").status_code == 200
    profile.refresh_from_db()
    assert profile.consent_email is False


def test_a_rotated_key_keeps_the_links_it_signed_working_while_listed(client):
    profile = ProfileFactory.create()
    with override_settings(SALVO_UNSUBSCRIBE_SECRET="first-unsubscribe-key-0123456789abcdef"):
        path = link_path(profile)

    with override_settings(SALVO_UNSUBSCRIBE_SECRET="second-unsubscribe-key-0123456789abcdef"):
        assert client.post(path).status_code == 404
        with override_settings(
            SALVO_UNSUBSCRIBE_SECRET_FALLBACKS=["first-unsubscribe-key-0123456789abcdef"]
        ):
            assert client.post(path).status_code == 200
    profile.refresh_from_db()
    assert profile.consent_email is False


def test_the_link_of_a_deleted_profile_still_answers(client):
    profile = ProfileFactory.create()
    path = link_path(profile)
    profile.delete()

    assert client.get(path).status_code == 200
    assert client.post(path).status_code == 200


def test_without_a_public_url_there_is_no_link():
    with override_settings(SALVO_PUBLIC_URL=""):
        assert unsubscribe_url(profile_id=1, external_id="crm-1", channel="email") is None
