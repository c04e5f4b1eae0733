"""A campaign previewed for one profile, at the selector, the API and the command: what
the delivery engine would send, rendered by its own code, and nothing sent or written."""

import json
from io import StringIO

import pytest
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from campaigns import services
from campaigns.models import Delivery, Execution
from campaigns.preview import campaign_preview, preview_profile_matches, preview_version
from segments.selectors import profile_attribute_keys
from tests.campaigns.factories import (
    email_action,
    make_campaign,
    make_campaign_in_status,
    make_live_campaign,
    push_action,
    sms_action,
    webhook_action,
)
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.django_db

VIEWER_PERMS = ("campaigns.view_campaign", "segments.view_profile")


def every_channel_campaign(**fields):
    return make_campaign(
        actions=[
            email_action(
                subject="Hi {{ profile.first_name }}",
                body="Dear {{ profile.first_name }}, your plan: {{ profile.plan }}.",
            ),
            sms_action(body="Hi {{ profile.first_name }} €5 off"),
            push_action(
                subject="Deal for {{ profile.first_name }}", body="Open {{ profile.plan }}"
            ),
            webhook_action(body="{{ profile.external_id }}"),
        ],
        **fields,
    )


@pytest.fixture
def ann():
    return ProfileFactory(
        external_id="ann-1",
        email="ann@example.com",
        attributes={"first_name": "Ann", "plan": "gold"},
    )


def by_channel(preview):
    return {action.channel: action for action in preview.actions}


# --- the selector ----------------------------------------------------------------------


@override_settings(SALVO_PUBLIC_URL="https://salvo.example.com")
def test_every_channel_is_rendered_as_the_engine_would_send_it(ann):
    campaign = every_channel_campaign()
    preview = campaign_preview(campaign=campaign, profile=ann, user=None)
    assert (preview.version.number, preview.role) == (1, "draft")
    shown = by_channel(preview)
    email = shown["email"]
    assert (email.to, email.subject) == ("ann@example.com", "Hi Ann")
    assert email.text == email.body == "Dear Ann, your plan: gold."
    assert email.html is None  # the engine sends a text-only email
    # A marketing email carries the engine's unsubscribe headers, with the signed link.
    assert email.headers["List-Unsubscribe"].startswith("<https://salvo.example.com/")
    assert email.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    sms = shown["sms"]
    assert sms.body == "Hi Ann €5 off"
    assert (sms.sms.encoding, sms.sms.characters, sms.sms.segments) == ("GSM-7", 14, 1)
    assert (shown["push"].subject, shown["push"].body) == ("Deal for Ann", "Open gold")
    assert shown["webhook"].payload == {
        "delivery_id": 0,
        "profile": {"external_id": "ann-1", "campaign": campaign.pk},
        "subject": "",
        "body": "ann-1",
    }
    assert all(not action.error and not action.skipped for action in preview.actions)
    assert preview.personalisation["attribute_keys"] == [
        "profile.first_name",
        "profile.plan",
    ]
    assert "profile.email" in preview.personalisation["profile_fields"]


def test_a_long_unicode_sms_counts_its_segments(ann):
    campaign = make_campaign(
        actions=[sms_action(body="Bonjour {{ profile.first_name }} ! " * 6 + "ç")]
    )
    sms = by_channel(campaign_preview(campaign=campaign, profile=ann, user=None))["sms"]
    assert sms.sms.encoding == "UCS-2"
    assert (sms.sms.characters, sms.sms.segments) == (len(sms.body), 2)


def test_a_render_error_is_shown_on_its_action_with_the_engines_words():
    wordy = ProfileFactory.create(attributes={"first_name": "Ann", "bio": "x" * 200})
    campaign = make_campaign(
        actions=[
            email_action(body="About you: {{ profile.bio }}"),
            sms_action(body="Hi {{ profile.first_name }}"),
        ]
    )
    with override_settings(SALVO_RENDER_MAX_CHARS=100):
        shown = by_channel(campaign_preview(campaign=campaign, profile=wordy, user=None))
    assert shown["email"].error.startswith("Cannot render: body:")
    assert "SALVO_RENDER_MAX_CHARS" in shown["email"].error
    assert shown["email"].body == ""
    assert (shown["sms"].error, shown["sms"].body) == ("", "Hi Ann")


def test_a_profile_the_engine_would_skip_says_why_and_still_shows_the_content():
    nobody = ProfileFactory.create(phone="", consent_email=False, attributes={"first_name": "Bo"})
    campaign = make_campaign(
        actions=[email_action(subject="Hi {{ profile.first_name }}"), sms_action()]
    )
    shown = by_channel(campaign_preview(campaign=campaign, profile=nobody, user=None))
    assert shown["email"].skipped == "Opted out of Email marketing."
    assert shown["email"].subject == "Hi Bo"
    assert shown["sms"].skipped == "No SMS address."
    assert shown["sms"].sms.segments == 1


def test_the_open_draft_is_previewed_else_the_running_version(ann):
    campaign = make_live_campaign(actions=[sms_action(body="Old {{ profile.first_name }}")])
    assert (
        by_channel(campaign_preview(campaign=campaign, profile=ann, user=None))["sms"].body
        == "Old Ann"
    )
    services.campaign_modify(campaign=campaign, user=None)
    campaign.refresh_from_db()
    services.campaign_update(
        campaign=campaign, user=None, data={"actions": [sms_action(body="New {{ profile.plan }}")]}
    )
    campaign.refresh_from_db()
    preview = campaign_preview(campaign=campaign, profile=ann, user=None)
    assert (preview.role, preview.version.number, preview.actions[0].body) == (
        "draft",
        2,
        "New gold",
    )
    running = preview_version(campaign=campaign, number=1)
    preview = campaign_preview(campaign=campaign, profile=ann, user=None, version=running)
    assert (preview.role, preview.actions[0].body) == ("running", "Old Ann")


def test_a_preview_sends_nothing_and_writes_nothing(ann):
    campaign = make_live_campaign(actions=[email_action(), sms_action()])
    executions = Execution.objects.count()
    campaign_preview(campaign=campaign, profile=ann, user=None)
    assert Delivery.objects.count() == 0
    assert Execution.objects.count() == executions
    assert mail.outbox == []


def test_the_picker_finds_profiles_by_email_or_external_id_exact_or_prefix(user_with_perms):
    viewer = user_with_perms(*VIEWER_PERMS)
    ProfileFactory(external_id="zed-1", email="ann.lee@example.com")
    ProfileFactory(external_id="ann-2", email="x@example.com")
    ProfileFactory(external_id="bob", email="bob@example.com")
    found = preview_profile_matches(search="ANN", user=viewer)
    assert {p.external_id for p in found} == {"zed-1", "ann-2"}
    assert [p.external_id for p in preview_profile_matches(search="bob", user=viewer)] == ["bob"]
    assert preview_profile_matches(search="  ", user=viewer) == []
    assert len(preview_profile_matches(search="", user=viewer)) == 0


def test_attribute_keys_come_from_the_newest_profiles_only():
    ProfileFactory(attributes={"old_key": 1})
    ProfileFactory(attributes={"b": 1, "a": {"nested": 2}})
    ProfileFactory(attributes={"c": [1]})
    assert profile_attribute_keys(sample=2) == ["a", "b", "c"]
    assert profile_attribute_keys() == ["a", "b", "c", "old_key"]
    assert profile_attribute_keys(limit=2) == ["a", "b"]


def test_a_user_who_may_not_see_profiles_is_refused(user_with_perms, ann):
    from django.core.exceptions import PermissionDenied

    campaign = make_campaign()
    user = user_with_perms("campaigns.view_campaign")
    with pytest.raises(PermissionDenied, match=r"segments\.view_profile"):
        campaign_preview(campaign=campaign, profile=ann, user=user)


# --- the API -------------------------------------------------------------------------


def preview_url(campaign):
    return f"/api/campaigns/{campaign.pk}/preview/"


def test_api_preview_by_external_id(api_client_for, user_with_perms, ann):
    campaign = every_channel_campaign()
    client = api_client_for(user_with_perms(*VIEWER_PERMS))
    response = client.post(preview_url(campaign), {"external_id": "ann-1"}, format="json")
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["version"] == 1
    assert data["version_role"] == "draft"
    assert data["profile"] == {
        "id": ann.pk,
        "external_id": "ann-1",
        "email": "ann@example.com",
        "phone": ann.phone,
    }
    shown = {action["channel"]: action for action in data["actions"]}
    assert shown["email"]["subject"] == "Hi Ann"
    assert shown["email"]["text"] == "Dear Ann, your plan: gold."
    assert shown["email"]["sms"] is None
    assert shown["email"]["error"] is None
    assert shown["sms"]["sms"] == {"encoding": "GSM-7", "characters": 14, "segments": 1}
    assert shown["webhook"]["payload"]["body"] == "ann-1"
    assert shown["push"]["subject"] == "Deal for Ann"
    assert "profile.first_name" in data["personalisation"]["attribute_keys"]
    assert Delivery.objects.count() == 0


def test_api_preview_by_id_and_version(api_client, ann):
    campaign = make_live_campaign(actions=[sms_action(body="v1 {{ profile.plan }}")])
    response = api_client.post(
        preview_url(campaign) + "?version=1", {"profile": ann.pk}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["version_role"] == "running"
    assert response.json()["actions"][0]["body"] == "v1 gold"


@pytest.mark.parametrize(
    ("status", "role"),
    [("scheduled", "scheduled"), ("live", "running"), ("completed", "last_run")],
)
def test_the_live_versions_role_follows_the_campaign(api_client, ann, status, role):
    """The role the preview gives the live version is the one its page shows: scheduled
    until the campaign starts, running while it sends, its last run once it has ended."""
    campaign = make_campaign_in_status(status, actions=[sms_action()])
    response = api_client.post(preview_url(campaign), {"profile": ann.pk}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["version_role"] == role


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"profile": 999999}, "profile"),
        ({"external_id": "nobody"}, "external_id"),
        ({}, "profile"),
        ({"profile": "x"}, "profile"),
        ({"external_id": "ann-1", "version": 7}, "version"),
    ],
)
def test_api_preview_refuses_an_unknown_profile_or_version_on_its_field(
    api_client, ann, body, field
):
    response = api_client.post(preview_url(make_campaign()), body, format="json")
    assert response.status_code == 400
    assert field in response.json(), response.json()


def test_api_preview_needs_campaign_and_profile_permissions(api_client_for, user_with_perms, ann):
    campaign = make_campaign()
    for perms in (("campaigns.view_campaign",), ("segments.view_profile",), ()):
        client = api_client_for(user_with_perms(*perms))
        response = client.post(preview_url(campaign), {"profile": ann.pk}, format="json")
        assert response.status_code == 403, perms
        assert "detail" in response.json()


def test_api_preview_of_an_unknown_campaign_is_404(api_client, ann):
    response = api_client.post("/api/campaigns/999999/preview/", {"profile": ann.pk}, format="json")
    assert response.status_code == 404


# --- the command -----------------------------------------------------------------------


def run(*args: str) -> str:
    out = StringIO()
    call_command("campaign", *args, stdout=out)
    return out.getvalue()


def test_command_preview_prints_each_action(ann):
    campaign = every_channel_campaign()
    out = run("preview", str(campaign.pk), "--profile", "ann-1")
    assert "version 1 (draft), for profile ann-1" in out
    assert "subject: Hi Ann" in out
    assert "GSM-7, 14 characters, 1 segment(s)" in out
    assert '"body": "ann-1"' in out


def test_command_preview_json_is_the_apis_shape(api_client, ann):
    campaign = every_channel_campaign()
    printed = json.loads(run("preview", str(campaign.pk), "--profile", "ann-1", "--json"))
    answered = api_client.post(preview_url(campaign), {"profile": ann.pk}, format="json").json()
    assert printed == answered


def test_command_preview_refuses_in_one_line(user_with_perms, ann):
    campaign = make_campaign()
    for args, words in (
        (("--profile", "nobody"), "external_id: No profile has the external id “nobody”."),
        (
            ("--profile", "ann-1", "--version", "9"),
            f"version: Campaign {campaign.pk} has no version 9.",
        ),
    ):
        with pytest.raises(CommandError) as error:
            run("preview", str(campaign.pk), *args)
        assert str(error.value) == words
    user_with_perms("campaigns.view_campaign", username="half")
    with pytest.raises(CommandError, match=r"segments\.view_profile"):
        run("preview", str(campaign.pk), "--profile", "ann-1", "--user", "half")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"profile": 2**70}, "profile"),
        ({"external_id": "ann-1", "version": 2**40}, "version"),
        ({"external_id": "x" * 300}, "external_id"),
    ],
)
def test_api_preview_refuses_numbers_past_what_the_database_holds(api_client, ann, body, field):
    response = api_client.post(preview_url(make_campaign()), body, format="json")
    assert response.status_code == 400
    assert field in response.json(), response.json()


def test_api_preview_refuses_a_body_that_is_not_an_object(api_client, ann):
    response = api_client.post(preview_url(make_campaign()) + "?version=1", [1], format="json")
    assert response.status_code == 400
    assert "detail" in response.json() or "non_field_errors" in response.json()


def test_command_and_page_refuse_numbers_past_what_the_database_holds(admin_client, ann):
    campaign = make_campaign()
    with pytest.raises(CommandError, match="has no version"):
        run("preview", str(campaign.pk), "--profile", "ann-1", "--version", str(2**40))
    url = f"/admin/campaigns/campaign/{campaign.pk}/preview/?profile={2**70}&version={2**40}"
    page = admin_client.get(url).content.decode()
    assert f"No profile has the id {2**70}." in page
    assert "has no version" in page
