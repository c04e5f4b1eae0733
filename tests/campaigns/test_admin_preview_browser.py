"""The preview in a real browser: from a campaign's page, pick a profile by email and see
its email subject and its SMS counts (every page checked with axe-core by `admin_page`, in
the light and dark themes)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.campaigns.doors import change_url
from tests.campaigns.factories import email_action, make_campaign, sms_action
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.browser


def test_preview_a_campaign_for_a_profile_picked_by_email(
    admin_page: Any, live_server: Any
) -> None:
    page = admin_page
    ProfileFactory.create(
        external_id="ann-1", email="ann@example.com", attributes={"first_name": "Ann"}
    )
    ProfileFactory.create(external_id="anna-2", email="anna@example.com")
    campaign = make_campaign(
        name="Spring",
        actions=[
            email_action(subject="Spring for {{ profile.first_name }}", body="Hello"),
            sms_action(body="Hi {{ profile.first_name }}! " + "Spring sale, all week long. " * 6),
        ],
    )

    page.goto(f"{live_server.url}{change_url(campaign)}")
    page.get_by_role("link", name="Preview for a profile").click()
    page.get_by_label("Profile: email or external id (or how it starts)").fill("ann")
    page.get_by_role("button", name="Find and preview").click()

    # Two profiles start with "ann": pick the one by its email.
    matches = page.locator("#preview-matches")
    matches.locator("li", has_text="ann@example.com").get_by_role("link").click()
    assert page.locator("#preview-profile").inner_text() == "ann-1"

    email = page.locator('section[data-channel="email"]')
    assert email.locator('[data-role="subject"]').inner_text() == "Spring for Ann"
    sms = page.locator('section[data-channel="sms"]')
    body = sms.locator('[data-role="body"]').inner_text()
    assert sms.locator('[data-role="sms-encoding"]').inner_text() == "GSM-7"
    assert sms.locator('[data-role="sms-characters"]').inner_text() == str(len(body))
    assert sms.locator('[data-role="sms-segments"]').inner_text() == "2"
