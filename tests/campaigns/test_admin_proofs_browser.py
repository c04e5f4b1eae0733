"""Send proof in a real browser, with a real worker sending to the local sinks: the button
on the campaign's page, the message saying where it went, the outcome appearing in the
page's proofs section by itself, and the email at the SMTP sink (every page checked with
axe-core by `admin_page`, again once the proofs section has refreshed itself)."""

from __future__ import annotations

from typing import Any

import pytest

from campaigns.choices import ProofStatus
from campaigns.models import ProofSend
from tests.campaigns.delivery_support import make_profile, sinks_and_worker
from tests.campaigns.doors import change_url
from tests.campaigns.factories import email_action, make_campaign, sms_action
from tests.conftest import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.timeout(240)]

# The SMTP sink holds the tester's email this long: the page answers and shows the proof
# being sent meanwhile (a slow provider never holds the web request).
SLOW_PROVIDER_S = 20


def test_send_proof_from_the_campaign_page_and_see_it_arrive(
    admin_page: Any, celery_process_factory: Any, live_server: Any
) -> None:
    page = admin_page
    make_profile(external_id="me", email="me@example.com", phone="", is_test=True)
    make_profile(external_id="customer", email="customer@example.com")
    campaign = make_campaign(
        name="Spring proof",
        actions=[
            email_action(subject="Spring for {{ profile.external_id }}"),
            sms_action(body="Spring sale"),
        ],
    )

    with sinks_and_worker(
        celery_process_factory,
        env={"SALVO_PROVIDER_TIMEOUT_S": str(SLOW_PROVIDER_S * 3)},
        slow="me@example.com",
        slow_s=SLOW_PROVIDER_S,
    ) as (sink, _, _):
        page.goto(f"{live_server.url}{change_url(campaign)}")
        assert page.locator("#proofs").inner_text().count("No proof sent yet.") == 1
        page.get_by_role("button", name="Send proof").click()
        page.locator(".messagelist", has_text="A proof of version 1").wait_for()
        assert "(2 messages) to me" in page.locator(".messagelist").inner_text()

        # The email waits for the slow provider; the SMS (no phone) is decided at once.
        assert page.locator('#proofs [data-status="pending"]').count() >= 1
        page.evaluate("window.salvoNotReloaded = true")
        emails = sink.wait_for(1, channel="email", timeout=60)
        wait_until(
            lambda: not ProofSend.objects.filter(status=ProofStatus.PENDING).exists(),
            timeout=60,
            message="the worker never recorded the proof's outcome",
        )
        # The section shows the outcome by itself: the page is not reloaded.
        page.locator('#proofs[data-pending="false"]').wait_for(timeout=30_000)

    assert page.evaluate("window.salvoNotReloaded") is True
    assert page.locator("#proofs-announce").inner_text() == "Every proof has its outcome."

    assert [(e["to"], e["headers"]["Subject"]) for e in emails] == [
        ("me@example.com", "[Proof] Spring for me")
    ]
    rows = page.locator("#proofs tbody tr")
    outcomes = {
        row.locator("td").nth(2).inner_text(): row.locator("[data-outcome]").inner_text()
        for row in rows.all()
    }
    # The tester has no phone: the page says the SMS was not sent, and why.
    assert outcomes == {"Email": "Sent", "SMS": "Not sent"}
    assert "No SMS address." in page.locator("#proofs").inner_text()
    assert sink.received("sms") == []
    page.check_now()
    page.screenshot(path="/tmp/salvo-admin-proofs.png", full_page=True)


def test_send_a_proof_of_variants_b_and_c_from_the_campaign_page(
    admin_page: Any, celery_process_factory: Any, live_server: Any
) -> None:
    page = admin_page
    make_profile(external_id="me", email="me@example.com", is_test=True)
    campaign = make_campaign(
        name="Spring test",
        actions=[
            email_action(
                subject="A for {{ profile.external_id }}",
                variants=[
                    {"share": 30, "subject": "B for {{ profile.external_id }}", "body": "B"},
                    {"share": 20, "subject": "C for {{ profile.external_id }}", "body": "C"},
                ],
            )
        ],
    )

    with sinks_and_worker(celery_process_factory) as (sink, _, _):
        page.goto(f"{live_server.url}{change_url(campaign)}")
        variants = page.get_by_role("group", name="Variants “Send proof” sends", exact=False)
        variants.get_by_label("B", exact=True).check()
        variants.get_by_label("C", exact=True).check()
        page.get_by_role("button", name="Send proof").click()
        page.locator(".messagelist", has_text="A proof of version 1").wait_for()
        assert "(2 messages) to me" in page.locator(".messagelist").inner_text()
        emails = sink.wait_for(2, channel="email", timeout=60)
        page.locator('#proofs[data-pending="false"]').wait_for(timeout=30_000)

    assert sorted(e["headers"]["Subject"] for e in emails) == [
        "[Proof B] B for me",
        "[Proof C] C for me",
    ]
    rows = page.locator("#proofs tbody tr")
    assert sorted(
        (row.locator("[data-variant]").inner_text(), row.locator("[data-outcome]").inner_text())
        for row in rows.all()
    ) == [("B", "Sent"), ("C", "Sent")]
    page.check_now()
    page.locator("#proofs").screenshot(path="/tmp/salvo-admin-proofs-variants.png")
