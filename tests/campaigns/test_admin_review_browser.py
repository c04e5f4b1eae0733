"""The review page in a real browser: "Save and activate" leads to the review, an
unticked warning keeps the confirmation from going through, ticking the empty-audience
warning lets it activate (every page checked with axe-core by `admin_page`, in the light
and dark themes)."""

from __future__ import annotations

from typing import Any

import pytest

from campaigns.choices import CampaignStatus
from campaigns.models import Campaign
from tests.campaigns.doors import change_url, review_url
from tests.campaigns.factories import campaign_reaching_nobody

pytestmark = pytest.mark.browser


def test_review_acknowledge_the_empty_audience_and_activate(
    admin_page: Any, live_server: Any
) -> None:
    page = admin_page
    campaign = campaign_reaching_nobody(name="Nobody yet")

    page.goto(f"{live_server.url}{change_url(campaign)}")
    page.get_by_role("button", name="Save and activate").click()
    page.wait_for_url(f"**{review_url(campaign)}")

    checks = page.locator('[data-role="checks"] li')
    assert checks.evaluate_all("items => items.map(i => i.dataset.code)") == ["empty_audience"]
    assert page.locator('[data-role="reach"][data-channel="sms"]').inner_text().startswith("0 ")
    confirm = page.get_by_role("button", name="Activate: send to 0 profiles")

    confirm.click()  # the warning is not ticked: the browser keeps the form
    assert page.url.endswith(review_url(campaign))
    assert Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.DRAFT

    page.get_by_label("I have read the “empty_audience” warning").check()
    confirm.click()
    page.wait_for_url(f"**{change_url(campaign)}")

    assert "Activation of “Nobody yet” started" in page.locator(".messagelist").inner_text()
    assert Campaign.objects.get(pk=campaign.pk).status != CampaignStatus.DRAFT
