"""The admin in a real browser: a marketer drives a campaign from Draft to Archived."""

from __future__ import annotations

import re
from typing import Any

import pytest

from campaigns import services
from campaigns.choices import CampaignStatus
from campaigns.models import Campaign
from channels.models import MessagePreset
from tests.campaigns.factories import email_action, make_campaign, make_live_campaign
from tests.channels.factories import MessagePresetFactory

SCREENSHOTS = "/tmp/salvo-admin-{}.png"

pytestmark = pytest.mark.browser


def status_text(page: Any) -> str:
    return str(page.locator("#lifecycle .salvo-badge").inner_text()).strip()


def test_marketer_drives_a_campaign_from_draft_to_archived(
    admin_page: Any, live_server: Any
) -> None:
    page = admin_page
    make_campaign(name="Summer sale", tags=["summer"], actions=[email_action()])
    old = make_live_campaign(name="Last winter")
    services.campaign_stop(campaign=old, user=None)
    running = make_live_campaign(name="Weekly digest", tags=["digest"])
    services.campaign_modify(campaign=running, user=None)
    sms: MessagePreset = MessagePresetFactory(channel="sms", name="Shop SMS")  # type: ignore[assignment]

    # The list opens on Draft, Scheduled and Live.
    page.reload()
    filters = page.locator('details[data-filter-title="status"]')
    assert filters.locator("li.selected").inner_text().strip() == "Draft, Scheduled and Live"
    rows = page.locator("#result_list tbody")
    assert "Summer sale" in rows.inner_text()
    assert "Last winter" not in rows.inner_text()
    assert "open draft" in rows.locator("tr", has_text="Weekly digest").inner_text()
    page.screenshot(path=SCREENSHOTS.format("changelist"), full_page=True)

    # "All" shows the stopped campaign too.
    filters.get_by_role("link", name="All", exact=True).click()
    page.wait_for_url(re.compile(r"status=all"))
    assert "Last winter" in page.locator("#result_list tbody").inner_text()
    assert filters.locator("li.selected").inner_text().strip() == "All"

    # Open the Draft, add an SMS action, save.
    page.get_by_role("link", name="Summer sale").click()
    assert status_text(page) == "Draft"
    page.locator(".add-row a").click()
    page.select_option("#id_actions-1-channel", "sms")
    page.select_option("#id_actions-1-preset", str(sms.pk))
    page.fill("#id_actions-1-body", "Summer sale starts today!")
    page.screenshot(path=SCREENSHOTS.format("draft"), full_page=True)
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist .success")
    campaign = Campaign.objects.get(name="Summer sale")
    assert sorted(a.channel for a in campaign.draft_version.actions.all()) == ["email", "sms"]

    # Activate: the review page, each warning ticked, confirmed; then the campaign waits
    # for its activation task.
    page.click("button[data-operation=activate]")
    page.wait_for_url(re.compile(r"/review/$"))
    for box in page.locator('input[name="acknowledge"]').all():
        box.check()
    page.locator('[data-role="confirm"]').click()
    page.wait_for_selector(".messagelist .success")
    assert status_text(page) == "Activating"
    assert page.locator("button[data-operation=stop]").count() == 0

    # The activation task finishes (no worker in this test): Live, with a Stop button.
    services.campaign_activation_complete(campaign_id=campaign.pk)
    page.reload()
    assert status_text(page) == "Live"
    assert "Running — version 1" in page.locator("#live-version").inner_text()
    page.screenshot(path=SCREENSHOTS.format("change"), full_page=True)

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[data-operation=stop]")
    page.wait_for_selector(".messagelist .success")
    assert status_text(page) == "Stopped"

    page.click("button[data-operation=archive]")
    page.wait_for_selector(".messagelist .success")
    assert status_text(page) == "Archived"
    assert Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.ARCHIVED
    log = page.locator("#transitions").inner_text()
    for step in ("Activation requested", "Activated", "Stopped", "Archived"):
        assert step in log
