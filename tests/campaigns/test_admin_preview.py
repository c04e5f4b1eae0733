"""The admin's preview page: a profile picked by email or external id, each action
rendered for them as the engine would send it, the fields to insert; the same permissions
as the API; a constant number of queries whatever the data."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from campaigns.models import Campaign, Delivery
from tests.campaigns.delivery_support import live_and_partly_sent
from tests.campaigns.doors import change_url
from tests.campaigns.factories import email_action, make_campaign, sms_action, webhook_action
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.django_db


def preview_url(campaign: Campaign, query: str = "") -> str:
    url = reverse("admin:campaigns_campaign_preview", args=[campaign.pk])
    return f"{url}?{query}" if query else url


def section(page: str, channel: str) -> str:
    start = page.index(f'data-channel="{channel}"')
    return page[start : page.index("</section>", start)]


@pytest.fixture
def campaign() -> Campaign:
    return make_campaign(
        actions=[
            email_action(
                subject="Hi {{ profile.first_name }}", body="Dear {{ profile.first_name }}"
            ),
            sms_action(body="ça va {{ profile.first_name }} ?"),
            webhook_action(body="{{ profile.plan }}"),
        ]
    )


@pytest.fixture
def ann() -> Any:
    return ProfileFactory.create(
        external_id="ann-1",
        email="ann@example.com",
        attributes={"first_name": "Ann", "plan": "gold"},
    )


def test_the_change_page_links_to_the_preview(admin_client, campaign):
    page = admin_client.get(change_url(campaign)).content.decode()
    assert f'id="preview-link" href="{preview_url(campaign)}"' in page


def test_a_unique_match_is_previewed_side_by_side(admin_client, campaign, ann):
    response = admin_client.get(preview_url(campaign, "q=ann@example.com"))
    assert response.status_code == 200
    page = response.content.decode()
    assert 'id="preview-profile">ann-1<' in page
    email = section(page, "email")
    assert '<dd data-role="subject">Hi Ann</dd>' in email
    assert '<pre class="salvo-body" data-role="text">Dear Ann</pre>' in email
    assert "None: this email goes as plain text." in email
    sms = section(page, "sms")
    assert '<dd data-role="sms-encoding">UCS-2</dd>' in sms
    assert '<dd data-role="sms-characters">11</dd>' in sms
    assert '<dd data-role="sms-segments">1</dd>' in sms
    webhook = section(page, "webhook")
    assert "&quot;body&quot;: &quot;gold&quot;" in webhook
    fields = page[page.index('id="preview-fields"') :]
    assert "{{ profile.first_name }}" in fields
    assert "{{ profile.email }}" in fields
    assert Delivery.objects.count() == 0


def test_several_matches_are_listed_to_pick_from(admin_client, campaign, ann):
    other = ProfileFactory.create(external_id="ann-2", email="ann2@example.com")
    page = admin_client.get(preview_url(campaign, "q=ANN")).content.decode()
    assert 'id="preview-matches"' in page
    assert 'data-profile="ann-1"' in page
    assert 'data-profile="ann-2"' in page
    assert 'data-channel="email"' not in page
    page = admin_client.get(preview_url(campaign, f"q=ANN&profile={other.pk}")).content.decode()
    assert 'id="preview-profile">ann-2<' in page


def test_no_match_says_so(admin_client, campaign):
    page = admin_client.get(preview_url(campaign, "q=nobody")).content.decode()
    assert "No profile's email or external id is or starts with “nobody”." in page


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("profile=999999", "No profile has the id 999999."),
        ("profile=abc", "“abc” is not a profile number."),
        ("version=7", "has no version 7."),
    ],
)
def test_bad_choices_are_said_on_the_page(admin_client, campaign, query, words):
    response = admin_client.get(preview_url(campaign, query))
    assert response.status_code == 200
    errors = response.content.decode()
    errors = errors[errors.index('id="preview-errors"') :]
    assert words in errors


def test_a_render_error_is_shown_on_its_action(admin_client, settings, ann):
    settings.SALVO_RENDER_MAX_CHARS = 50
    campaign = make_campaign(actions=[email_action(body="{{ profile.bio }}"), sms_action()])
    ann.attributes = {"bio": "x" * 100}
    ann.save()
    page = admin_client.get(preview_url(campaign, f"profile={ann.pk}")).content.decode()
    assert '<p class="errornote" data-role="error">Cannot render: body:' in section(page, "email")
    assert '<dd data-role="sms-segments">1</dd>' in section(page, "sms")


def test_the_page_needs_campaign_and_profile_view_permissions(
    client, user_with_perms, campaign, ann
):
    for perms, code in (
        (("campaigns.view_campaign",), 403),
        (("segments.view_profile",), 403),
        (("campaigns.view_campaign", "segments.view_profile"), 200),
    ):
        client.force_login(user_with_perms(*perms))
        assert client.get(preview_url(campaign, f"profile={ann.pk}")).status_code == code, perms
    half = user_with_perms("campaigns.view_campaign")
    client.force_login(half)
    assert 'id="preview-link"' not in client.get(change_url(campaign)).content.decode()


def page_queries(client: Any, campaign: Campaign, query: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(preview_url(campaign, query))
    assert response.status_code == 200
    assert 'data-channel="sms"' in response.content.decode()
    return len(queries)


def test_the_page_costs_the_same_queries_for_10_and_2000_profiles_and_deliveries(
    refusing_sinks, admin_client
):
    small = live_and_partly_sent("small-", 5, sent=2)
    large = live_and_partly_sent("large-", 2000, sent=50)
    assert Delivery.objects.filter(execution__campaign=large).count() == 4000
    picks = []
    for campaign, prefix in ((small, "small-"), (large, "large-")):
        listing = admin_client.get(preview_url(campaign, f"q={prefix}")).content.decode()
        assert listing.count("data-profile=") == min(10, 5 if prefix == "small-" else 2000)
        first = listing[listing.index("profile=") :].split("&", 1)[0].split("=", 1)[1]
        picks.append(page_queries(admin_client, campaign, f"q={prefix}&profile={first}"))
    assert picks[0] == picks[1]
