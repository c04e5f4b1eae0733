"""The live report in a real browser, with a real worker sending: a two-channel campaign
goes from Live to Completed while its page refreshes the figures by itself (checked with
axe-core by `admin_page`, again once the page has changed itself)."""

from __future__ import annotations

from typing import Any

import pytest

from campaigns.choices import CampaignStatus, DeliveryReason
from tests.campaigns.delivery_support import (
    make_profile,
    sinks_and_worker,
    wait_for_status,
)
from tests.campaigns.doors import change_url
from tests.campaigns.factories import activate_acknowledged, email_action, make_campaign, sms_action
from tests.channels.factories import MessagePresetFactory
from tests.segments.factories import ProfileFactory

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.timeout(240)]

R = DeliveryReason
# Slow enough that the page refreshes a few times while the campaign is Live.
EMAIL_RATE_PER_S = 4


def shown(page: Any, channel: str, figure: str) -> str:
    row = page.locator(f'#report section[data-execution] tr[data-channel="{channel}"]')
    return row.locator(f'[data-figure="{figure}"]').first.inner_text().strip()


def test_the_report_refreshes_by_itself_from_live_to_completed(
    admin_page: Any, celery_process_factory: Any, live_server: Any
) -> None:
    page = admin_page
    reached = ProfileFactory.create_batch(24)
    opted_out = ProfileFactory.create_batch(3, consent_sms=False)
    no_phone = [make_profile(phone="")]
    audience = len(reached) + len(opted_out) + len(no_phone)
    slow_email = MessagePresetFactory(channel="email", rate_limit_per_second=EMAIL_RATE_PER_S)
    campaign = make_campaign(
        name="Live report", actions=[email_action(preset=slow_email), sms_action()]
    )

    with sinks_and_worker(celery_process_factory):
        activate_acknowledged(campaign=campaign)
        wait_for_status(campaign, CampaignStatus.LIVE)
        page.goto(f"{live_server.url}{change_url(campaign)}")
        # A mark the page keeps only if it is never reloaded.
        page.evaluate("window.salvoNotReloaded = true")
        assert page.locator("#lifecycle-badge").inner_text() == "Live"
        first_figures = page.locator("#report-summary").inner_text()

        # The figures change in place while the email goes out at its rate.
        page.wait_for_function(
            "text => document.getElementById('report-summary').innerText !== text",
            arg=first_figures,
            timeout=30_000,
        )
        wait_for_status(campaign, CampaignStatus.COMPLETED, timeout=120)
        page.locator("#lifecycle-badge", has_text="Completed").wait_for(timeout=30_000)

    assert page.evaluate("window.salvoNotReloaded") is True
    # It stopped asking, and says how to see the new operations.
    assert page.locator("#report").get_attribute("data-refresh-ms") == ""
    assert "The campaign is now Completed." in page.locator("#report-notice").inner_text()
    assert "Completed" in page.locator("#report-announce").inner_text()
    sms_sent = len(reached)
    assert {
        channel: [
            shown(page, channel, f) for f in ("total", "sent", "failed", "skipped", "pending")
        ]
        for channel in ("email", "sms")
    } == {
        "email": [str(audience), str(audience), "0", "0", "0"],
        "sms": [str(audience), str(sms_sent), "0", str(audience - sms_sent), "0"],
    }
    for channel in ("email", "sms"):
        bar = page.locator(f'#report tr[data-channel="{channel}"] progress')
        assert (bar.get_attribute("value"), bar.get_attribute("max")) == (
            str(audience),
            str(audience),
        )
    reasons = page.locator('#report tr[data-channel="sms"] li[data-reason]')
    assert sorted(reasons.all_inner_texts()) == sorted(
        [f"No address: {len(no_phone)}", f"Opted out: {len(opted_out)}"]
    )
    assert page.locator('#report tr[data-channel="email"] li[data-reason]').count() == 0
    # The chart's lines end at what each channel sent; its table says the same.
    totals = page.locator('#report-chart [data-figure="chart-total"]').all_text_contents()
    assert totals == [str(audience), str(sms_sent)]
    page.locator("#report-chart-table summary").click()
    last_row = page.locator("#report-chart-table tbody tr").last
    assert last_row.locator("td").all_inner_texts() == [str(audience), str(sms_sent)]
    page.check_now()
    page.screenshot(path="/tmp/salvo-admin-live-report.png", full_page=True)
