"""The preview in a real browser: from a campaign's page, pick a profile by email and see
its email subject and its SMS counts, and every variant of an experiment with the profile's
group (every page checked with axe-core by `admin_page`, in the light and dark themes)."""

from __future__ import annotations

from typing import Any

import pytest

from campaigns.experiments import bucket_of, group_of, split_of
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


def variants_campaign() -> Any:
    """An email with an HTML part and an SMS, each with variants B (30 %) and C (20 %)."""
    return make_campaign(
        name="Spring test",
        actions=[
            email_action(
                subject="A for {{ profile.first_name }}",
                body="Text A",
                html_body="<p>A for {{ profile.first_name }}</p>",
                variants=[
                    {
                        "share": 30,
                        "subject": "B for {{ profile.first_name }}",
                        "body": "Text B",
                        "html_body": "<p>B for {{ profile.first_name }}</p>",
                    },
                    {
                        "share": 20,
                        "subject": "C for {{ profile.first_name }}",
                        "body": "Text C",
                        "html_body": "<p>C for {{ profile.first_name }}</p>",
                    },
                ],
            ),
            sms_action(
                body="SMS A",
                variants=[{"share": 30, "body": "SMS B"}, {"share": 20, "body": "SMS C"}],
            ),
        ],
    )


def test_preview_every_variant_and_the_profiles_group(admin_page: Any, live_server: Any) -> None:
    page = admin_page
    ann = ProfileFactory.create(
        external_id="ann-1", email="ann@example.com", attributes={"first_name": "Ann"}
    )
    campaign = variants_campaign()
    group = group_of(bucket_of(campaign.pk, ann.pk), holdout_share=0, split=split_of([30, 20]))

    page.goto(f"{live_server.url}{change_url(campaign)}")
    page.get_by_role("link", name="Preview for a profile").click()
    page.get_by_label("Profile: email or external id (or how it starts)").fill("ann@example.com")
    page.get_by_role("button", name="Find and preview").click()

    assert page.locator("#preview-group").inner_text() == group
    email = page.get_by_role("region", name="Email · via", exact=False)
    for label, share in (("A", 50), ("B", 30), ("C", 20)):
        variant = email.get_by_role("region", name=f"Variant {label} · {share} %", exact=False)
        assert variant.locator('[data-role="subject"]').inner_text() == f"{label} for Ann"
        frame = variant.frame_locator("iframe")
        assert frame.locator("p").inner_text() == f"{label} for Ann"
    sms = page.locator('section[data-channel="sms"]').first
    assert [
        sms.locator(f'[data-variant="{label}"] [data-role="body"]').inner_text() for label in "ABC"
    ] == ["SMS A", "SMS B", "SMS C"]
    # The group's content is marked in each action.
    marked = page.locator(".salvo-variant-gets")
    assert marked.count() == 2
    assert {marked.nth(i).get_attribute("data-variant") for i in range(2)} == {group}
    page.check_now()
    page.screenshot(path="/tmp/salvo-admin-preview-variants.png", full_page=True)
