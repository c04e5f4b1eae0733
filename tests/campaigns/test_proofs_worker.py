"""Proofs sent by a real Celery worker process to the local sinks (SMTP and HTTP), and a
real send after them: a proof never keeps a profile from the campaign's own delivery."""

from __future__ import annotations

from typing import Any

import pytest

from campaigns.choices import CampaignStatus, ProofStatus
from campaigns.models import Delivery, ProofSend
from campaigns.proofs import campaign_proof_request
from campaigns.selectors import campaign_report
from tests.campaigns.delivery_support import make_profile, sinks_and_worker, wait_for_status
from tests.campaigns.factories import (
    activate_acknowledged,
    email_action,
    make_campaign,
    sms_action,
)
from tests.conftest import wait_until

pytestmark = [pytest.mark.worker, pytest.mark.timeout(180)]


def test_a_worker_sends_the_proof_then_the_real_send_still_reaches_the_test_profile(
    celery_process_factory: Any,
) -> None:
    tester = make_profile(external_id="tester", is_test=True)
    make_profile(external_id="customer")
    campaign = make_campaign(
        actions=[
            email_action(subject="Spring {{ profile.external_id }}"),
            sms_action(body="Spring sale"),
        ]
    )
    with sinks_and_worker(celery_process_factory) as (sink, _, _):
        sends = campaign_proof_request(campaign=campaign, user=None)
        wait_until(
            lambda: not ProofSend.objects.filter(status=ProofStatus.PENDING).exists(),
            timeout=60,
            message="the worker never sent the proof",
        )
        emails = sink.wait_for(1, channel="email", timeout=30)
        assert [(e["to"], e["headers"]["Subject"]) for e in emails] == [
            (tester.email, "[Proof] Spring tester")
        ]
        proof_sms = sink.wait_for(1, channel="sms", timeout=30)
        assert [(m["to"], m["json"]["text"]) for m in proof_sms] == [(tester.phone, "Spring sale")]
        assert sorted(ProofSend.objects.values_list("status", flat=True)) == [
            ProofStatus.SENT,
            ProofStatus.SENT,
        ]
        assert {send.profile_id for send in sends} == {tester.pk}
        assert not Delivery.objects.exists()

        activate_acknowledged(campaign=campaign)
        wait_for_status(campaign, CampaignStatus.COMPLETED, timeout=120)
        # The tester got the real email and SMS too, each once, besides the proofs.
        emails = sink.wait_for(3, channel="email", timeout=30)
        sms = sink.wait_for(3, channel="sms", timeout=30)

    to_tester = [e for e in emails if e["to"] == tester.email]
    assert sorted(e["headers"]["Subject"] for e in to_tester) == [
        "Spring tester",
        "[Proof] Spring tester",
    ]
    # The real SMS was not taken for a repeat of the proof by the idempotent provider.
    assert [m["to"] for m in sms].count(tester.phone) == 2
    assert sink.repeats("sms") == []
    # Only the real sends are counted.
    report = campaign_report(campaign=campaign)
    assert report["total"] == 4
    assert report["by_status"]["sent"] == 4


def test_a_worker_sends_a_proof_of_variants_b_and_c_each_with_its_content(
    celery_process_factory: Any,
) -> None:
    tester = make_profile(external_id="tester", is_test=True)
    campaign = make_campaign(
        actions=[
            email_action(
                subject="A {{ profile.external_id }}",
                body="Text A",
                html_body="<p>HTML A</p>",
                variants=[
                    {
                        "share": 30,
                        "subject": "B {{ profile.external_id }}",
                        "body": "Text B",
                        "html_body": "<p>HTML B</p>",
                    },
                    {
                        "share": 20,
                        "subject": "C {{ profile.external_id }}",
                        "body": "Text C",
                        "html_body": "<p>HTML C</p>",
                    },
                ],
            ),
        ]
    )
    with sinks_and_worker(celery_process_factory) as (sink, _, _):
        campaign_proof_request(campaign=campaign, user=None, variants=["B", "C"])
        wait_until(
            lambda: not ProofSend.objects.filter(status=ProofStatus.PENDING).exists(),
            timeout=60,
            message="the worker never sent the proof",
        )
        emails = sink.wait_for(2, channel="email", timeout=30)
    received = sorted((e["to"], e["headers"]["Subject"], e["raw"]) for e in emails)
    assert [(to, subject) for to, subject, _ in received] == [
        (tester.email, "[Proof B] B tester"),
        (tester.email, "[Proof C] C tester"),
    ]
    assert "Text B" in received[0][2]
    assert "<p>HTML B</p>" in received[0][2]
    assert "Text C" in received[1][2]
    assert "<p>HTML C</p>" in received[1][2]
    assert sorted(ProofSend.objects.values_list("variant", "status")) == [
        ("B", ProofStatus.SENT),
        ("C", ProofStatus.SENT),
    ]
