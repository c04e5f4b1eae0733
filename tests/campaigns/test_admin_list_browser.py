"""The marketer's admin in a real browser: the list's alert icon and filters, the home's
dashboard and the versions diff (every page also checked with axe-core by `admin_page`)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from django.utils import timezone

from campaigns import services
from campaigns.choices import CampaignStatus
from campaigns.models import Campaign
from channels.models import MessagePreset
from devtools.sinks import RunningSinks
from tests.campaigns.delivery_support import plan, send_all
from tests.campaigns.factories import (
    activate_acknowledged,
    email_action,
    make_campaign,
    make_live_campaign,
    sms_action,
)
from tests.segments.factories import ProfileFactory, SegmentFactory

Status = CampaignStatus

pytestmark = pytest.mark.browser


def activation_failed(name: str) -> Campaign:
    """A campaign whose preset lost its sender address while its activation waited."""
    preset: MessagePreset = email_action()["preset"]
    campaign = make_campaign(name=name, actions=[email_action(preset=preset)])
    activate_acknowledged(campaign=campaign)
    MessagePreset.objects.filter(pk=preset.pk).update(from_email="")
    return services.campaign_activation_complete(campaign_id=campaign.pk)


def sending(name: str, *, profiles: int) -> Campaign:
    """A Live SMS campaign to `profiles` profiles of its own, all sent (the completion
    check has not run yet, so it is still Live)."""
    ProfileFactory.create_batch(profiles, attributes={"group": name})
    segment = SegmentFactory(rules={"field": "attributes.group", "op": "eq", "value": name})
    campaign = make_live_campaign(name=name, segment=segment, actions=[sms_action()])
    send_all(plan(campaign))
    return campaign


def row(page: Any, name: str) -> Any:
    return page.locator("#result_list tbody tr", has_text=name)


def shown_names(page: Any) -> set[str]:
    return {text.strip() for text in page.locator("#result_list tbody th a").all_inner_texts()}


def test_the_list_shows_the_alert_and_filters_by_alert_channel_and_start_day(
    admin_page: Any, local_sinks: RunningSinks
) -> None:
    page = admin_page
    broken = activation_failed("Broken launch")
    sending("Flash SMS", profiles=3)
    later = make_live_campaign(
        name="Autumn letter",
        actions=[email_action()],
        start_at=timezone.now() + dt.timedelta(days=10),
    )
    assert later.status == Status.SCHEDULED
    page.reload()

    # The alert beside the failed activation: a tooltip, and words for screen readers.
    alert = row(page, "Broken launch").locator(".salvo-alert")
    assert alert.get_attribute("title") == f"Activation: {broken.activation_error}"
    assert alert.locator(".visually-hidden").inner_text() == (
        f"Alert: Activation: {broken.activation_error}"
    )
    assert row(page, "Flash SMS").locator(".salvo-alert").count() == 0
    assert row(page, "Flash SMS").locator("td.field-sent_of_total").inner_text() == "3 / 3"
    assert row(page, "Flash SMS").locator("td.field-channel_list").inner_text() == "SMS"

    # Has alerts: yes.
    page.locator('details[data-filter-title="has alerts"]').get_by_role(
        "link", name="Yes", exact=True
    ).click()
    page.wait_for_url(re.compile(r"has_alerts=yes"))
    assert shown_names(page) == {"Broken launch"}

    # Channel SMS, alerts forgotten.
    page.goto(page.url.split("?")[0])
    page.locator('details[data-filter-title="channel"]').get_by_role(
        "link", name="SMS", exact=True
    ).click()
    page.wait_for_url(re.compile(r"channel=sms"))
    assert shown_names(page) == {"Flash SMS"}

    # Start day from five days ahead: the scheduled one only.
    page.goto(page.url.split("?")[0])
    page.get_by_label("From").fill((timezone.localdate() + dt.timedelta(days=5)).isoformat())
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"start_from="))
    assert shown_names(page) == {"Autumn letter"}
    page.screenshot(path="/tmp/salvo-admin-list-filters.png", full_page=True)


def test_the_home_dashboard_leads_to_the_live_campaigns(
    admin_page: Any, local_sinks: RunningSinks, live_server: Any
) -> None:
    page = admin_page
    sending("Flash SMS", profiles=4)
    activation_failed("Broken launch")
    page.goto(f"{live_server.url}/admin/")

    captions = page.locator("#content-main .app-list caption, #content-main caption")
    assert [c.strip() for c in captions.all_text_contents()][:4] == [
        "Campaigns",
        "Audience",
        "Channels",
        "Settings",
    ]
    board = page.locator("#salvo-dashboard")
    progress = board.locator("tr", has_text="Flash SMS").locator("progress")
    assert progress.get_attribute("value") == "4"
    assert progress.get_attribute("max") == "4"
    assert "4 / 4" in board.locator("tr", has_text="Flash SMS").inner_text()
    assert "Broken launch" in board.locator(".salvo-transitions").inner_text()
    page.screenshot(path="/tmp/salvo-admin-home.png", full_page=True)

    board.locator('a[data-status="live"]').click()
    page.wait_for_url(re.compile(r"/admin/campaigns/campaign/\?status=live$"))
    assert shown_names(page) == {"Flash SMS"}


def test_the_versions_diff_compares_any_two_versions(admin_page: Any, live_server: Any) -> None:
    page = admin_page
    campaign = make_live_campaign(
        name="Newsletter", actions=[email_action(subject="News", body="Line one\nLine two")]
    )
    services.campaign_modify(campaign=campaign, user=None)
    draft = Campaign.objects.get(pk=campaign.pk)
    version = draft.draft_version
    assert version is not None
    email = version.actions.get()
    services.campaign_update(
        campaign=draft,
        user=None,
        data={
            "actions": [
                {
                    "channel": "email",
                    "preset": email.preset,
                    "subject": "News",
                    "body": "Line one\nLine 2",
                },
                sms_action(body="Read the news"),
            ]
        },
    )
    page.goto(f"{live_server.url}/admin/campaigns/campaign/{campaign.pk}/change/")
    page.get_by_role("link", name="Changes from version 1").click()
    page.wait_for_url(re.compile(r"/versions/diff/\?old=1&new=2$"))

    email_section = page.locator("section", has_text="Email action — changed")
    assert email_section.locator("del").text_content() == "removed: - Line two"
    assert email_section.locator("ins").text_content() == "added: + Line 2"
    assert page.locator("section", has_text="SMS action — added in version 2").count() == 1
    page.screenshot(path="/tmp/salvo-admin-version-diff.png", full_page=True)

    # The other way round, chosen on the page.
    page.select_option("#diff-old", "2")
    page.select_option("#diff-new", "1")
    page.get_by_role("button", name="Compare").click()
    page.wait_for_url(re.compile(r"old=2&new=1$"))
    assert page.locator("section", has_text="SMS action — removed in version 1").count() == 1
