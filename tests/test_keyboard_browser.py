"""The pages a mouse is not needed for, and those the admin crawl cannot reach by address:
the review and activation driven with the keyboard alone (focus visible on each control it
lands on), the approval screen behind the Approve button, and the recipients' unsubscribe
confirmation. `admin_page` runs axe-core on every page in both themes
(tests/accessibility.py)."""

from __future__ import annotations

from typing import Any

import pytest

from campaigns import services
from campaigns.choices import CampaignStatus
from campaigns.models import Campaign
from segments.models import Profile
from segments.unsubscribe import unsubscribe_token
from tests.campaigns.doors import change_url, review_url
from tests.campaigns.factories import campaign_reaching_nobody, make_campaign
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.browser

# The focused element's outline as the browser draws it: "none" would be invisible focus.
FOCUS_OUTLINE = "() => getComputedStyle(document.activeElement).outlineStyle"
FOCUSED = "() => document.activeElement.outerHTML.slice(0, 200)"


def tab_to(page: Any, selector: str, *, limit: int = 200) -> None:
    """Press Tab until `selector` has the focus, as a keyboard user moves through the page;
    fail if it never does."""
    target = page.locator(selector)
    for _ in range(limit):
        page.keyboard.press("Tab")
        if target.evaluate("element => element === document.activeElement"):
            assert page.evaluate(FOCUS_OUTLINE) != "none", page.evaluate(FOCUSED)
            return
    pytest.fail(f"Tab never reached {selector}")


def test_review_and_activate_with_the_keyboard_alone(admin_page: Any, live_server: Any) -> None:
    page = admin_page
    campaign = campaign_reaching_nobody(name="Keyboard")
    page.goto(f"{live_server.url}{change_url(campaign)}")

    tab_to(page, 'button[data-operation="activate"]')
    page.keyboard.press("Enter")
    page.wait_for_url(f"**{review_url(campaign)}")

    tab_to(page, 'input[type="checkbox"][value="empty_audience"]')
    page.keyboard.press("Space")
    assert page.locator('input[type="checkbox"][value="empty_audience"]').is_checked()
    tab_to(page, 'button:has-text("Activate: send to 0 profiles")')
    page.keyboard.press("Enter")
    page.wait_for_url(f"**{change_url(campaign)}")

    assert "Activation of “Keyboard” started" in page.locator(".messagelist").inner_text()
    assert Campaign.objects.get(pk=campaign.pk).status != CampaignStatus.DRAFT


def test_the_approval_screen_is_reached_and_used_with_the_keyboard(
    admin_page: Any, live_server: Any
) -> None:
    page = admin_page
    campaign = make_campaign(name="Needs a yes", approval_required=True)
    services.campaign_request_approval(campaign=campaign, user=None)
    page.goto(f"{live_server.url}{change_url(campaign)}")

    tab_to(page, '[data-operation="approve"]')
    page.keyboard.press("Enter")
    comment = page.get_by_label("Comment")
    comment.focus()
    page.keyboard.type("Copy and audience checked.")
    tab_to(page, 'input[type="submit"][data-operation="approve"]')
    page.keyboard.press("Enter")
    page.wait_for_url(f"**{change_url(campaign)}")

    assert "approved" in page.locator(".messagelist").inner_text()
    assert Campaign.objects.get(pk=campaign.pk).draft_version.approval_comment == (
        "Copy and audience checked."
    )


def test_the_unsubscribe_confirmation_works_with_the_keyboard(
    admin_page: Any, live_server: Any
) -> None:
    page = admin_page
    profile: Profile = ProfileFactory.create(email="ann@example.com", consent_email=True)
    token = unsubscribe_token(
        profile_id=profile.pk, external_id=profile.external_id, channel="email"
    )
    page.goto(f"{live_server.url}/unsubscribe/{token}/")
    assert page.locator("h1").inner_text() == "Unsubscribe"

    tab_to(page, 'button[type="submit"]')
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="You are unsubscribed").wait_for()

    profile.refresh_from_db()
    assert profile.consent_email is False
