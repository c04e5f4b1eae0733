"""The deliveries page of a finished campaign in a real browser (checked with axe-core by
`admin_page`): reached from the campaign's page, filtered by reason, exported as CSV."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import pytest

from devtools.sinks import RunningSinks
from tests.campaigns.delivery_support import drive
from tests.campaigns.doors import change_url
from tests.campaigns.factories import email_action, make_live_campaign, sms_action
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.browser


def test_the_deliveries_of_a_finished_campaign_filter_by_reason_and_export_as_csv(
    admin_page: Any, local_sinks: RunningSinks, live_server: Any
) -> None:
    page = admin_page
    reached = ProfileFactory.create_batch(3)
    opted_out = ProfileFactory.create_batch(2, consent_sms=False)
    campaign = make_live_campaign(name="Spring sale", actions=[email_action(), sms_action()])
    drive(campaign)
    audience = len(reached) + len(opted_out)

    page.goto(f"{live_server.url}{change_url(campaign)}")
    link = page.locator("#deliveries-link")
    assert f"{2 * audience} in all" in link.inner_text()
    link.get_by_role("link", name="Deliveries").click()
    page.wait_for_url(re.compile(r"/admin/campaigns/delivery/\?campaign="))
    assert page.locator("#result_list tbody tr").count() == 2 * audience

    page.locator('details[data-filter-title="reason not sent"]').get_by_role(
        "link", name="Opted out", exact=True
    ).click()
    page.wait_for_url(re.compile(r"reason=opted_out"))
    shown = page.locator("#result_list tbody td.field-profile_text").all_inner_texts()
    assert sorted(shown) == sorted(p.external_id for p in opted_out)
    page.screenshot(path="/tmp/salvo-admin-deliveries.png", full_page=True)

    with page.expect_download() as download:
        page.get_by_role("link", name="Export CSV").click()
    saved = Path(download.value.path())
    with saved.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert download.value.suggested_filename == f"campaign-{campaign.pk}-deliveries.csv"
    assert sorted((r["profile_external_id"], r["channel"], r["reason"]) for r in rows) == sorted(
        (p.external_id, "sms", "opted_out") for p in opted_out
    )
    assert {r["address"] for r in rows} == {p.phone for p in opted_out}
