"""A marketer's whole journey in a real browser, with a real worker sending to the local
sinks: a segment built in the rule builder without typing JSON, a campaign with an email and
an SMS whose template error is shown on its field at save, a preview for a chosen profile, a
proof that reaches the test profile, the review page and an activation confirmed with the
number of recipients, the campaign completing and the messages at the sinks; then a second
campaign whose segment matches nobody, activated once its empty-audience warning is
acknowledged (every page checked with axe-core by `admin_page`)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.urls import reverse

from campaigns.choices import CampaignStatus, ProofStatus
from campaigns.models import Campaign, ProofSend
from segments.models import Segment
from tests.campaigns.delivery_support import make_profile, sinks_and_worker
from tests.campaigns.doors import change_url, review_url
from tests.campaigns.factories import make_campaign, sms_action
from tests.channels.factories import MessagePresetFactory
from tests.conftest import wait_until
from tests.segments.factories import SegmentFactory

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.timeout(420)]

# Deadlines for what the worker does in the background; generous, as the machine is shared.
WORKER_S = 120
UNCLOSED_IF = "Hi {% if profile.first_name %}{{ profile.first_name }}, spring is here!"
FIXED = "Hi {% if profile.first_name %}{{ profile.first_name }}{% endif %}, spring is here!"


def at(path: str) -> re.Pattern[str]:
    """The page at `path`, whatever fragment the browser carried over a redirect (the
    proof's redirect ends in #proofs, and the browser keeps it on the next redirects)."""
    return re.compile(re.escape(path) + r"(#.*)?$")


def _expect() -> Any:
    return pytest.importorskip("playwright.sync_api").expect


def test_a_marketer_builds_proves_reviews_and_activates_two_campaigns(
    admin_page: Any, celery_process_factory: Any, live_server: Any
) -> None:
    expect = _expect()
    page = admin_page
    ann = make_profile(
        external_id="ann",
        email="ann@example.com",
        attributes={"country": "FR", "first_name": "Ann"},
    )
    bob = make_profile(
        external_id="bob",
        email="bob@example.com",
        attributes={"country": "FR", "first_name": "Bob"},
    )
    make_profile(external_id="dora", attributes={"country": "DE", "first_name": "Dora"})
    tester = make_profile(
        external_id="tester",
        email="me@example.com",
        is_test=True,
        attributes={"country": "QA", "first_name": "Tess"},
    )
    MessagePresetFactory(channel="email", name="Newsletter")
    MessagePresetFactory(channel="sms", name="Shop SMS")

    with sinks_and_worker(celery_process_factory) as (sink, _, _):
        # 1. A segment built in the rule builder: no JSON typed, the live count follows.
        page.goto(f"{live_server.url}{reverse('admin:segments_segment_add')}")
        count = page.locator("#rule-estimate [data-role=count]")
        expect(count).to_have_text("4")  # no condition yet: every profile
        page.locator("#id_name").fill("French customers")
        page.get_by_role("button", name="Add condition to the top group").click()
        page.get_by_label("Field of condition 1", exact=True).select_option("attributes.country")
        page.get_by_label("Operator of condition 1", exact=True).select_option("eq")
        page.get_by_label("Value of condition 1", exact=True).fill("FR")
        expect(count).to_have_text("2")
        expect(page.locator("#rule-estimate li[data-channel=email]")).to_have_text("Email: 2")
        expect(page.locator("#rule-live-preview").get_by_role("link")).to_have_text(["ann", "bob"])
        page.get_by_role("button", name="Save", exact=True).click()
        page.wait_for_url(f"{live_server.url}{reverse('admin:segments_segment_changelist')}")
        assert Segment.objects.get(name="French customers").rules == {
            "all": [{"field": "attributes.country", "op": "eq", "value": "FR"}]
        }

        # 2. A campaign with an email and an SMS; the SMS's unclosed {% if %} is refused on
        # its field at save, then fixed.
        page.goto(f"{live_server.url}{reverse('admin:campaigns_campaign_add')}")
        page.fill("#id_name", "Spring in France")
        page.select_option("#id_segment", label="French customers")
        page.select_option("#id_actions-0-channel", "email")
        page.select_option("#id_actions-0-preset", label="Newsletter (Email)")
        page.fill("#id_actions-0-subject", "Spring for {{ profile.first_name }}")
        page.fill("#id_actions-0-body", "Hello {{ profile.first_name }}, our spring offers.")
        page.locator(".add-row a").click()
        page.select_option("#id_actions-1-channel", "sms")
        page.select_option("#id_actions-1-preset", label="Shop SMS (SMS)")
        page.fill("#id_actions-1-body", UNCLOSED_IF)
        page.click("input[name=_continue]")
        sms_body_cell = page.locator("td", has=page.locator("#id_actions-1-body"))
        expect(sms_body_cell.locator(".errorlist")).to_contain_text("endif")
        email_body_cell = page.locator("td", has=page.locator("#id_actions-0-body"))
        expect(email_body_cell.locator(".errorlist")).to_have_count(0)
        assert not Campaign.objects.filter(name="Spring in France").exists()
        page.fill("#id_actions-1-body", FIXED)
        page.click("input[name=_continue]")
        page.wait_for_selector(".messagelist .success")
        campaign = Campaign.objects.get(name="Spring in France")
        draft = campaign.draft_version
        assert draft is not None
        assert sorted((a.channel, a.body) for a in draft.actions.all()) == [
            ("email", "Hello {{ profile.first_name }}, our spring offers."),
            ("sms", FIXED),
        ]

        # 3. The preview, for a profile found by its email.
        page.get_by_role("link", name="Preview for a profile").click()
        page.get_by_label("Profile: email or external id (or how it starts)").fill(
            "ann@example.com"
        )
        page.get_by_role("button", name="Find and preview").click()
        expect(page.locator("#preview-profile")).to_have_text("ann")
        email = page.locator('section[data-channel="email"]')
        expect(email.locator('[data-role="subject"]')).to_have_text("Spring for Ann")
        sms = page.locator('section[data-channel="sms"]')
        expect(sms.locator('[data-role="body"]')).to_have_text("Hi Ann, spring is here!")
        expect(sms.locator('[data-role="sms-segments"]')).to_have_text("1")

        # 4. A proof to the test profile: it reaches the sinks, its outcome shows on the page.
        page.goto(f"{live_server.url}{change_url(campaign)}")
        expect(page.locator("#proofs")).to_contain_text("No proof sent yet.")
        page.get_by_role("button", name="Send proof").click()
        expect(page.locator(".messagelist")).to_contain_text("(2 messages) to tester")
        proof_emails = sink.wait_for(1, channel="email", timeout=WORKER_S)
        proof_sms = sink.wait_for(1, channel="sms", timeout=WORKER_S)
        assert [(e["to"], e["headers"]["Subject"]) for e in proof_emails] == [
            ("me@example.com", "[Proof] Spring for Tess")
        ]
        assert [(m["to"], m["json"]["text"]) for m in proof_sms] == [
            (tester.phone, "Hi Tess, spring is here!")
        ]
        wait_until(
            lambda: not ProofSend.objects.filter(status=ProofStatus.PENDING).exists(),
            timeout=WORKER_S,
            message="the worker never recorded the proof's outcome",
        )
        page.locator('#proofs[data-pending="false"]').wait_for(timeout=WORKER_S * 1000)
        outcomes = [
            row.locator("[data-outcome]").inner_text()
            for row in page.locator("#proofs tbody tr").all()
        ]
        assert outcomes == ["Sent", "Sent"]

        # 5. The review page, its warnings acknowledged, the activation confirmed with the
        # number of recipients; the campaign completes and the customers get their messages.
        page.get_by_role("button", name="Save and activate").click()
        page.wait_for_url(at(review_url(campaign)))
        expect(page.locator('[data-role="segment"]')).to_have_text("French customers (2 profiles)")
        expect(page.locator('[data-role="reach"][data-channel="email"]')).to_contain_text(
            "2 profiles"
        )
        expect(page.locator('[data-role="reach"][data-channel="sms"]')).to_contain_text(
            "2 profiles"
        )
        codes = page.locator('[data-role="checks"] li').evaluate_all(
            "items => items.map(i => i.dataset.code)"
        )
        # Two customers only, and a marketing email with no unsubscribe link configured.
        assert codes == ["tiny_audience", "no_unsubscribe_link"]
        for code in codes:
            page.get_by_label(f"I have read the “{code}” warning").check()
        page.get_by_role("button", name="Activate: send to 2 profiles").click()
        page.wait_for_url(at(change_url(campaign)))
        expect(page.locator(".messagelist")).to_contain_text(
            "Activation of “Spring in France” started"
        )
        # The page follows the campaign by itself, without a reload, until it completes.
        badge = page.locator("#lifecycle-badge")
        expect(badge).to_have_text("Completed", timeout=WORKER_S * 1000)
        expect(page.locator("#report-notice")).to_contain_text("The campaign is now Completed")
        expect(page.locator("#report-summary")).to_contain_text(
            "Nothing more will be sent: 4 sent, 0 failed, 0 skipped."
        )
        assert Campaign.objects.get(pk=campaign.pk).status == CampaignStatus.COMPLETED
        emails = sink.wait_for(3, channel="email", timeout=WORKER_S)
        texts = sink.wait_for(3, channel="sms", timeout=WORKER_S)

        real_emails = sorted(
            (e["to"], e["headers"]["Subject"]) for e in emails if e["to"] != tester.email
        )
        assert real_emails == [
            ("ann@example.com", "Spring for Ann"),
            ("bob@example.com", "Spring for Bob"),
        ]
        real_texts = sorted((m["to"], m["json"]["text"]) for m in texts if m["to"] != tester.phone)
        assert real_texts == sorted(
            [(ann.phone, "Hi Ann, spring is here!"), (bob.phone, "Hi Bob, spring is here!")]
        )

        # 6. A second campaign whose segment matches nobody: the review warns of the empty
        # audience; acknowledged, the activation goes through with nobody to send to.
        nobody = SegmentFactory.create(
            name="Japanese customers",
            rules={"all": [{"field": "attributes.country", "op": "eq", "value": "JP"}]},
        )
        empty = make_campaign(
            name="Spring in Japan", segment=nobody, actions=[sms_action(body="Haru desu")]
        )
        page.goto(f"{live_server.url}{change_url(empty)}")
        page.get_by_role("button", name="Save and activate").click()
        page.wait_for_url(at(review_url(empty)))
        expect(page.locator('[data-role="reach"][data-channel="sms"]')).to_have_text(
            re.compile(r"^0 profiles")
        )
        empty_codes = page.locator('[data-role="checks"] li').evaluate_all(
            "items => items.map(i => i.dataset.code)"
        )
        assert empty_codes == ["empty_audience"]
        confirm = page.get_by_role("button", name="Activate: send to 0 profiles")
        confirm.click()  # the warning is not ticked: the browser keeps the form
        assert page.url.endswith(review_url(empty))
        assert Campaign.objects.get(pk=empty.pk).status == CampaignStatus.DRAFT
        page.get_by_label("I have read the “empty_audience” warning").check()
        confirm.click()
        page.wait_for_url(at(change_url(empty)))
        expect(page.locator(".messagelist")).to_contain_text(
            "Activation of “Spring in Japan” started"
        )
        expect(badge).to_have_text("Completed", timeout=WORKER_S * 1000)
        assert Campaign.objects.get(pk=empty.pk).status == CampaignStatus.COMPLETED

        # Nobody outside the segments got anything: the proofs and the first campaign only.
        assert len(sink.received("email")) == 3
        assert len(sink.received("sms")) == 3
