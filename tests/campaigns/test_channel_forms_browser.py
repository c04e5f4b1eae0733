"""Forms that fit the channel, in a real browser: an action offers only its channel's
presets and no subject for an SMS; a new preset shows only its channel's sender fields."""

from __future__ import annotations

from typing import Any

import pytest

from campaigns.models import Campaign
from channels.models import MessagePreset
from tests.channels.factories import MessagePresetFactory
from tests.segments.factories import SegmentFactory

SCREENSHOTS = "/tmp/salvo-channel-forms-{}.png"

pytestmark = pytest.mark.browser


def offered_presets(page: Any, row: int) -> list[str]:
    options = page.locator(f"#id_actions-{row}-preset option")
    return [text.strip() for text in options.all_inner_texts() if text.strip("- ")]


def test_each_action_offers_its_channels_presets_and_an_sms_no_subject(
    admin_page: Any, live_server: Any
) -> None:
    page = admin_page
    SegmentFactory(name="Everyone")
    MessagePresetFactory(channel="email", name="Newsletter")
    MessagePresetFactory(channel="email", name="Receipts")
    shop_sms: MessagePreset = MessagePresetFactory(channel="sms", name="Shop SMS")  # type: ignore[assignment]
    MessagePresetFactory(channel="push", name="App push")

    page.goto(f"{live_server.url}/admin/campaigns/campaign/add/")
    page.fill("#id_name", "Spring sale")
    page.select_option("#id_segment", label="Everyone")

    # The first row: email, its presets only, with a subject.
    page.select_option("#id_actions-0-channel", "email")
    assert offered_presets(page, 0) == ["Newsletter (Email)", "Receipts (Email)"]
    assert page.locator("#id_actions-0-subject").is_visible()
    page.select_option("#id_actions-0-preset", label="Receipts (Email)")
    page.fill("#id_actions-0-subject", "Spring is here")
    page.fill("#id_actions-0-body", "Our spring offers")

    # A row added with "Add another": SMS, its preset only, and no subject field.
    page.locator(".add-row a").click()
    page.select_option("#id_actions-1-channel", "sms")
    assert offered_presets(page, 1) == ["Shop SMS (SMS)"]
    assert not page.locator("#id_actions-1-subject").is_visible()
    assert page.locator("#id_actions-1-subject").is_disabled()
    page.select_option("#id_actions-1-preset", str(shop_sms.pk))
    page.fill("#id_actions-1-body", "Spring sale starts today!")

    # The table fits its panel at 1360 px: nothing scrolls sideways.
    group = page.locator("#actions-group")
    overflow = group.evaluate(
        "g => [...g.querySelectorAll('*')].some(e => e.scrollWidth > e.clientWidth + 1"
        " && getComputedStyle(e).overflowX !== 'visible')"
        " || g.getBoundingClientRect().right > document.documentElement.clientWidth"
    )
    assert overflow is False
    page.screenshot(path=SCREENSHOTS.format("actions"), full_page=True)

    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist .success")
    campaign = Campaign.objects.get(name="Spring sale")
    actions = {a.channel: a for a in campaign.draft_version.actions.select_related("preset")}
    assert actions["email"].preset.name == "Receipts"
    assert actions["email"].subject == "Spring is here"
    assert actions["sms"].preset == shop_sms
    assert actions["sms"].subject == ""

    # Saved rows are set up the same way when the page loads.
    sms_row = page.locator("#actions-group tr.has_original", has_text="Shop SMS")
    assert not sms_row.locator("input[name$=-subject]").is_visible()
    email_row = page.locator("#actions-group tr.has_original", has_text="Receipts")
    assert email_row.locator("input[name$=-subject]").is_visible()
    email_presets = email_row.locator("select[name$=-preset] option").all_inner_texts()
    assert [t for t in email_presets if t.strip("- ")] == ["Newsletter (Email)", "Receipts (Email)"]


def test_a_new_preset_shows_only_its_channels_sender_fields(
    admin_page: Any, live_server: Any
) -> None:
    page = admin_page
    page.goto(f"{live_server.url}/admin/channels/messagepreset/add/")
    page.fill("#id_name", "Shop SMS")

    page.select_option("#id_channel", "sms")
    assert page.locator("#id_sms_sender_id").is_visible()
    for hidden in ("#id_from_email", "#id_push_app_id", "#id_webhook_url"):
        assert not page.locator(hidden).is_visible(), hidden

    page.select_option("#id_channel", "email")
    assert page.locator("#id_from_email").is_visible()
    assert not page.locator("#id_sms_sender_id").is_visible()
    page.fill("#id_from_email", "news@example.com")
    page.screenshot(path=SCREENSHOTS.format("preset"), full_page=True)
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist .success")
    assert MessagePreset.objects.get(name="Shop SMS").from_email == "news@example.com"
