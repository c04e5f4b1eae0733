"""The admin's review page: every activation goes through it, whichever button started it;
errors block, each warning needs ticking, the confirmation names the recipients."""

from __future__ import annotations

import json
import re
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.urls import reverse

from campaigns.choices import CampaignStatus as Status
from campaigns.models import Campaign
from tests.campaigns.doors import change_data, change_url, review_url, url
from tests.campaigns.factories import email_action, make_campaign, sms_action, webhook_action
from tests.segments.factories import ProfileFactory, SegmentFactory

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:campaigns_campaign_changelist")


def lifecycle_url(campaign: Campaign, operation: str) -> str:
    return reverse("admin:campaigns_campaign_lifecycle", args=[campaign.pk, operation])


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def status_of(campaign: Campaign) -> str:
    return Campaign.objects.get(pk=campaign.pk).status


def page_codes(html: str, level: str) -> list[str]:
    return re.findall(rf'data-level="{level}" data-code="([a-z_]+)"', html)


def test_the_activate_button_leads_to_the_review_not_to_activation(admin_client):
    for _ in range(3):
        ProfileFactory()
    campaign = make_campaign(name="Spring")

    response = admin_client.post(lifecycle_url(campaign, "activate"), follow=True)

    assert response.redirect_chain[-1][0] == review_url(campaign)
    assert status_of(campaign) == Status.DRAFT
    html = response.content.decode()
    assert 'data-role="reach" data-channel="email">3 profiles' in html
    assert "Activate: send to 3 profiles" in html
    assert page_codes(html, "warning") == ["tiny_audience", "no_unsubscribe_link"]
    assert 'name="acknowledge" value="tiny_audience"' in html
    assert 'data-role="sample-profile"' in html


def test_confirming_without_ticking_every_warning_refuses_and_marks_it(admin_client):
    campaign = make_campaign()
    data = {"acknowledge": ["empty_audience"]}

    response = admin_client.post(review_url(campaign), data)

    assert response.status_code == 200
    assert status_of(campaign) == Status.DRAFT
    assert any("no_unsubscribe_link" in t for t in messages_of(response))
    assert "salvo-ack salvo-ack-refused" in response.content.decode()


def test_confirming_with_every_warning_ticked_activates(admin_client):
    campaign = make_campaign(name="Go")
    data = {"acknowledge": ["empty_audience", "no_unsubscribe_link"]}

    response = admin_client.post(review_url(campaign), data, follow=True)

    assert status_of(campaign) == Status.ACTIVATING
    assert response.redirect_chain[-1][0] == change_url(campaign)
    assert any("Activation of “Go” started" in t for t in messages_of(response))


def test_errors_leave_no_way_to_confirm(admin_client):
    campaign = make_campaign(segment=None, actions=[])

    html = admin_client.get(review_url(campaign)).content.decode()

    assert page_codes(html, "error") == ["no_segment", "no_action"]
    assert 'data-role="blocked"' in html
    assert 'data-role="confirm"' not in html

    admin_client.post(review_url(campaign), {"acknowledge": ["empty_audience"]})
    assert status_of(campaign) == Status.DRAFT


def test_save_and_activate_saves_then_reviews(admin_client):
    campaign = make_campaign(name="Edited", segment=None)
    segment: Any = SegmentFactory()
    data = change_data(campaign, segment=segment.pk, _lifecycle="activate")

    response = admin_client.post(change_url(campaign), data, follow=True)

    assert response.redirect_chain[-1][0] == review_url(campaign)
    campaign = Campaign.objects.get(pk=campaign.pk)
    assert campaign.draft_version.segment == segment
    assert campaign.status == Status.DRAFT
    assert "empty_audience" in page_codes(response.content.decode(), "warning")


def test_the_list_action_reviews_each_campaign_on_one_page(admin_client):
    first = make_campaign(name="A first")
    second = make_campaign(name="B second", segment=None)

    response = admin_client.post(
        CHANGELIST + "?status=all",
        {"action": "activate_selected", "_selected_action": [first.pk, second.pk]},
        follow=True,
    )

    html = response.content.decode()
    assert f'id="review-{first.pk}"' in html
    assert f'id="review-{second.pk}"' in html
    assert html.count('data-role="confirm"') == 1  # the second has an error
    page = response.redirect_chain[-1][0]

    back = admin_client.post(
        review_url(first),
        {"acknowledge": ["empty_audience", "no_unsubscribe_link"], "next": page},
        follow=True,
    )

    assert status_of(first) == Status.ACTIVATING
    assert back.redirect_chain[-1][0] == page
    assert 'data-role="not-activatable"' in back.content.decode()


def test_the_list_action_with_one_campaign_opens_its_review(admin_client):
    campaign = make_campaign()
    response = admin_client.post(
        CHANGELIST, {"action": "activate_selected", "_selected_action": [campaign.pk]}
    )
    assert response["Location"] == review_url(campaign)


def test_the_review_page_needs_to_view_the_campaign(client, user_with_perms):
    client.force_login(user_with_perms("segments.view_segment"))
    campaign = make_campaign()
    assert client.get(review_url(campaign)).status_code == 403


def test_confirming_needs_the_activate_permission(client, user_with_perms):
    client.force_login(user_with_perms("campaigns.view_campaign"))
    campaign = make_campaign()

    response = client.post(
        review_url(campaign),
        {"acknowledge": ["empty_audience", "no_unsubscribe_link"]},
        follow=True,
    )

    assert any("campaigns.activate_campaign" in t for t in messages_of(response))
    assert status_of(campaign) == Status.DRAFT


def test_the_same_codes_at_every_door(admin_client, api_client):
    ProfileFactory(attributes={"first_name": "Ann"})
    campaign = make_campaign(actions=[sms_action(body="Hi {{ profile.frist_name }} " + "ж" * 80)])

    api = [c["code"] for c in api_client.get(url(campaign, "review")).json()["checks"]]
    out = StringIO()
    call_command("campaign", "review", str(campaign.pk), "--json", stdout=out)
    command = [c["code"] for c in json.loads(out.getvalue())["checks"]]
    admin = page_codes(admin_client.get(review_url(campaign)).content.decode(), "warning")

    assert api == command == admin == ["tiny_audience", "unknown_variable", "sms_segments"]


def test_the_review_page_costs_the_same_queries_whatever_the_data(
    admin_client, django_assert_max_num_queries
):
    ProfileFactory()
    small = make_campaign(actions=[email_action()])
    with django_assert_max_num_queries(100) as one:
        admin_client.get(review_url(small))
    baseline = len(one.captured_queries)

    for _ in range(40):
        ProfileFactory(attributes={"first_name": "Ann", "country": "BE"})
    big = make_campaign(actions=[email_action(), sms_action(), webhook_action()])
    with django_assert_max_num_queries(baseline):
        admin_client.get(review_url(big))
