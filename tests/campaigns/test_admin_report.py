"""The live report on a campaign's change page, and the JSON endpoint its script polls:
per channel what was sent, failed, skipped (and why) and is pending, the rate and the time
left while it sends, the chart of sends over time; the same queries for ten deliveries or
ten thousand.

The engine's steps run in the test process against the local sinks (see
delivery_support); the browser test (test_admin_report_browser) watches it refresh."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from campaigns import services
from campaigns.choices import DeliveryReason
from campaigns.models import Campaign
from tests.campaigns.delivery_support import (
    drive,
    live_and_partly_sent,
    make_profile,
    make_segment,
)
from tests.campaigns.doors import change_url
from tests.campaigns.factories import (
    email_action,
    make_campaign,
    make_live_campaign,
    make_scheduled_campaign,
    sms_action,
)
from tests.campaigns.report_page import (
    channel_table,
    chart_totals,
    figures,
    report_block,
    report_url,
)
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.django_db

R = DeliveryReason


def finished_two_channels() -> tuple[Campaign, dict[str, list[Any]]]:
    people = {
        "reached": ProfileFactory.create_batch(3),
        "no_sms": ProfileFactory.create_batch(2, consent_sms=False),
        "no_phone": [make_profile(phone="")],
        "refused": [make_profile(email="invalid@example.com")],
    }
    campaign = make_live_campaign(actions=[email_action(), sms_action()])
    drive(campaign)
    return campaign, people


def test_a_finished_campaign_shows_each_channels_figures_and_why_some_were_not_sent(
    refusing_sinks, admin_client
):
    campaign, people = finished_two_channels()
    audience = sum(len(group) for group in people.values())

    page = admin_client.get(change_url(campaign)).content.decode()

    table = channel_table(report_block(page))
    no_sms = len(people["no_sms"])
    assert table["email"] == {
        "total": str(audience),
        "sent": str(audience - 1),
        "failed": "1",
        "skipped": "0",
        "pending": "0",
        "done": f"{audience}/{audience}",
        f"reason:{R.PROVIDER_REFUSED}": "1",
    }
    assert table["sms"] == {
        "total": str(audience),
        "sent": str(audience - no_sms - 1),
        "failed": "0",
        "skipped": str(no_sms + 1),
        "pending": "0",
        "done": f"{audience}/{audience}",
        f"reason:{R.OPTED_OUT}": str(no_sms),
        f"reason:{R.NO_ADDRESS}": "1",
    }
    # The chart's lines end at what was sent.
    assert chart_totals(report_block(page)) == {
        "email": table["email"]["sent"],
        "sms": table["sms"]["sent"],
    }
    # A reason links to the deliveries it counts.
    assert f"?campaign={campaign.pk}&channel=sms&reason={R.OPTED_OUT}" in page.replace("&amp;", "&")
    # Nothing more will be sent: no rate, and the page does not poll.
    assert "time-left" not in report_block(page)
    assert 'data-refresh-ms=""' in page


def test_the_endpoint_gives_the_same_report_and_says_when_to_stop_asking(
    refusing_sinks, admin_client
):
    campaign = live_and_partly_sent("live-", 6, sent=2)

    live = admin_client.get(report_url(campaign))

    assert live.status_code == 200
    assert "no-store" in live["Cache-Control"]
    data = live.json()
    assert (data["status"], data["status_display"], data["refresh_ms"]) == ("live", "Live", 3000)
    table = channel_table(data["html"])
    assert {c: (row["sent"], row["pending"], row["done"]) for c, row in table.items()} == {
        "email": ("2", "4", "2/6"),
        "sms": ("2", "4", "2/6"),
    }
    # While it sends, each channel has a rate and a time left.
    assert {f["figure"] for f in figures(data["html"]) if f.get("channel") == "sms"} >= {
        "rate",
        "time-left",
    }

    drive(campaign)
    done = admin_client.get(report_url(campaign)).json()

    assert (done["status"], done["refresh_ms"]) == ("completed", None)
    assert "Completed" in done["status_badge"]
    assert {c: row["pending"] for c, row in channel_table(done["html"]).items()} == {
        "email": "0",
        "sms": "0",
    }


def test_a_scheduled_campaign_polls_slowly_with_nothing_to_show_yet(admin_client):
    campaign = make_scheduled_campaign()

    page = admin_client.get(change_url(campaign)).content.decode()
    data = admin_client.get(report_url(campaign)).json()

    assert 'data-refresh-ms="15000"' in page
    assert data["refresh_ms"] == 15000
    assert figures(data["html"]) == []


def test_a_draft_has_no_report(admin_client):
    campaign = make_campaign()

    page = admin_client.get(change_url(campaign)).content.decode()

    assert 'id="report"' not in page


def test_the_endpoint_needs_view_permission_and_only_answers_get(
    refusing_sinks, client, user_with_perms
):
    campaign, people = finished_two_channels()
    sms_sent = len(people["reached"]) + len(people["refused"])
    client.force_login(user_with_perms("segments.view_profile"))
    assert client.get(report_url(campaign)).status_code == 403

    client.force_login(user_with_perms("campaigns.view_campaign"))
    allowed = client.get(report_url(campaign))
    assert allowed.status_code == 200
    # Without the profiles' view permission the figures are there, the links are not.
    assert channel_table(allowed.json()["html"])["sms"]["sent"] == str(sms_sent)
    assert "campaigns/delivery/" not in allowed.json()["html"]
    assert client.post(report_url(campaign)).status_code == 405


def test_the_page_says_what_activating_the_draft_changes_for_the_execution_under_way(
    refusing_sinks, admin_client
):
    campaign = live_and_partly_sent("notes-", 4, sent=1)
    draft = services.campaign_modify(campaign=campaign, user=None)
    draft.segment = make_segment()
    draft.save()
    draft.actions.filter(channel="sms").update(body="New text")

    page = admin_client.get(change_url(campaign)).content.decode()

    notes = page[page.index('id="change-notes"') :]
    notes = notes[: notes.index("</div>")]
    assert "The segment change applies to the next execution" in notes
    assert "The new content of SMS applies to every delivery not yet sent" in notes


def page_queries(client: Any, campaign: Campaign) -> tuple[int, int]:
    counts = []
    for url in (change_url(campaign), report_url(campaign)):
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url)
        assert response.status_code == 200
        counts.append(len(queries))
    return counts[0], counts[1]


def test_the_page_and_its_refresh_cost_the_same_queries_for_10_and_10000_deliveries(
    refusing_sinks, admin_client
):
    small = live_and_partly_sent("small-", 5, sent=2)
    large = live_and_partly_sent("large-", 5000, sent=50)

    assert (
        channel_table(admin_client.get(report_url(large)).json()["html"])["email"]["done"]
        == "50/5000"
    )
    assert page_queries(admin_client, small) == page_queries(admin_client, large)
