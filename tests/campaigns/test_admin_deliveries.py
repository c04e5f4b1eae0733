"""The admin's deliveries page of a campaign: reached from its page, filtered and searched
like the API's, read-only, exported as the same streamed CSV."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from campaigns.choices import DeliveryReason
from campaigns.models import Campaign, Delivery
from segments.models import Profile
from tests.campaigns.delivery_support import drive, make_profile
from tests.campaigns.doors import change_url
from tests.campaigns.factories import email_action, make_live_campaign, sms_action
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.django_db

R = DeliveryReason
SEES_DELIVERIES = ("campaigns.view_campaign", "segments.view_profile")


def page_url(campaign: Campaign, query: str = "") -> str:
    url = reverse("admin:campaigns_delivery_changelist") + f"?campaign={campaign.pk}"
    return url + (f"&{query}" if query else "")


def finished() -> tuple[Campaign, dict[str, list[Profile]]]:
    people = {
        "reached": ProfileFactory.create_batch(3),
        "no_sms": ProfileFactory.create_batch(2, consent_sms=False),
        "refused": [make_profile(email="invalid@example.com")],
    }
    campaign = make_live_campaign(actions=[email_action(), sms_action()])
    drive(campaign)
    return campaign, people


def shown_ids(response: Any) -> list[str]:
    """The profile column of the page's rows."""
    assert response.status_code == 200
    return sorted(response.context["cl"].result_list.values_list("profile_external_id", flat=True))


def ids(profiles: list[Profile], times: int = 1) -> list[str]:
    return sorted([p.external_id for p in profiles] * times)


def test_the_campaign_page_links_to_its_deliveries_with_their_counts(refusing_sinks, admin_client):
    campaign, people = finished()
    audience = sum(len(group) for group in people.values())

    page = admin_client.get(change_url(campaign)).content.decode()

    assert f'href="{page_url(campaign)}"' in page.replace("&amp;", "&")
    sent = 2 * audience - len(people["refused"]) - len(people["no_sms"])
    assert (
        f"{2 * audience} in all — {sent} sent, 1 failed, {len(people['no_sms'])} skipped, 0 pending"
    ) in " ".join(page.split())


def test_the_page_lists_the_campaigns_rows_and_filters_them_by_reason(refusing_sinks, admin_client):
    campaign, people = finished()
    other, _ = finished()
    everyone = [p for group in people.values() for p in group]

    assert shown_ids(admin_client.get(page_url(campaign))) == ids(everyone, 2)
    opted_out = admin_client.get(page_url(campaign, "reason=opted_out"))
    assert shown_ids(opted_out) == ids(people["no_sms"])
    refused = admin_client.get(page_url(campaign, "channel=email&status=failed"))
    assert shown_ids(refused) == ids(people["refused"])
    found = admin_client.get(page_url(campaign, f"q={people['reached'][0].email}"))
    assert shown_ids(found) == ids(people["reached"][:1], 2)
    assert shown_ids(admin_client.get(page_url(other))) != []
    page = opted_out.content.decode()
    assert "Deliveries of “" in page
    assert "Opted out" in page
    # "Show all" keeps the campaign (and forgets the filters).
    assert f'(<a href="?campaign={campaign.pk}&amp;">Show all</a>)' in page
    assert 'aria-label="Search deliveries"' in page


def test_a_page_costs_the_same_queries_for_a_few_and_many_deliveries(refusing_sinks, admin_client):
    small, _ = finished()
    ProfileFactory.create_batch(150)
    large, _ = finished()
    assert Delivery.objects.filter(execution__campaign=large).count() > 300

    def queries(campaign: Campaign) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(page_url(campaign)).status_code == 200
        return len(captured)

    assert queries(small) == queries(large)


def test_the_pages_number_of_rows_comes_from_the_engines_counters(refusing_sinks, admin_client):
    campaign, people = finished()

    with CaptureQueriesContext(connection) as captured:
        response = admin_client.get(page_url(campaign, "channel=sms&status=skipped"))
    assert response.context["cl"].result_count == len(people["no_sms"])
    sql = [q["sql"] for q in captured]
    assert not [s for s in sql if "COUNT(" in s and f'FROM "{Delivery._meta.db_table}"' in s]


def test_the_page_needs_campaign_and_profile_view_and_changes_nothing(
    refusing_sinks, client, user_with_perms
):
    campaign, _ = finished()
    for perms in ([SEES_DELIVERIES[0]], [SEES_DELIVERIES[1]]):
        client.force_login(user_with_perms(*perms))
        assert client.get(page_url(campaign)).status_code == 403
        assert client.get(page_url(campaign, "status=lost")).status_code == 403
        export = reverse("admin:campaigns_delivery_export") + f"?campaign={campaign.pk}"
        assert client.get(export).status_code == 403
    client.force_login(user_with_perms(*SEES_DELIVERIES))
    response = client.get(page_url(campaign))
    assert response.status_code == 200
    delivery = Delivery.objects.filter(execution__campaign=campaign).first()
    assert delivery is not None
    assert client.post(page_url(campaign), {"action": "delete_selected"}).status_code in (
        200,
        403,
    )
    assert Delivery.objects.filter(pk=delivery.pk).exists()
    change = f"/admin/campaigns/delivery/{delivery.pk}/change/"
    assert client.post(change, {"status": "sent"}).status_code == 404
    assert 'href="/admin/campaigns/delivery/add/' not in response.content.decode()


def test_an_invalid_filter_says_so_and_keeps_the_campaign(refusing_sinks, admin_client):
    campaign, _ = finished()
    response = admin_client.get(page_url(campaign, "status=lost"), follow=True)
    assert response.redirect_chain == [(page_url(campaign), 302)]
    shown = [str(m) for m in response.context["messages"]]
    assert len(shown) == 1
    assert shown[0].startswith("status: Select a valid choice. lost is not one of")


def test_without_a_campaign_the_page_sends_back_to_the_campaigns(admin_client):
    response = admin_client.get(reverse("admin:campaigns_delivery_changelist"))
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:campaigns_campaign_changelist")


def csv_of(response: Any) -> list[list[str]]:
    assert response.status_code == 200
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_export_csv_streams_the_filtered_rows_as_the_api_does(
    refusing_sinks, admin_client, api_client
):
    campaign, people = finished()
    page = admin_client.get(page_url(campaign, "reason=opted_out"))
    export_url = page.context["salvo_export_url"]
    assert "reason=opted_out" in export_url

    rows = csv_of(admin_client.get(export_url))

    _, *body = rows
    assert sorted(row[0] for row in body) == ids(people["no_sms"])
    api = csv_of(
        api_client.get(f"/api/campaigns/{campaign.pk}/deliveries/?format=csv&reason=opted_out")
    )
    assert rows == api
    bad = admin_client.get(
        reverse("admin:campaigns_delivery_export") + f"?campaign={campaign.pk}&status=lost"
    )
    assert bad.status_code == 400
    assert "status" in bad.content.decode()
