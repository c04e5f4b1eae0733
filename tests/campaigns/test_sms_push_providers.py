"""Campaigns through Twilio and FCM, chosen per preset, sent to the sink's emulations of
their APIs: what the recipients get, and a refusal that says the number or the token
reaches nobody put on the suppression list, so that the next campaign skips it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import override_settings

from campaigns import selectors
from campaigns.choices import CampaignType, DeliveryReason, DeliveryStatus, EventKind
from campaigns.models import Campaign, Delivery, DeliveryEvent
from channels.choices import SuppressionReason, SuppressionSource
from channels.models import Suppression
from devtools.sinks import RunningSinks, running_sinks
from tests.campaigns.delivery_support import drive, make_profile, time_passes
from tests.campaigns.factories import make_live_campaign, push_action, sms_action
from tests.channels.factories import MessagePresetFactory

TWILIO = "channels.providers.twilio.TwilioSmsBackend"
FCM = "channels.providers.fcm.FcmPushBackend"
# Twilio's test numbers: one that is not a valid number (21211), one that opted out (21610).
INVALID_NUMBER = "+15005550001"
OPTED_OUT_NUMBER = "+15005550004"


@pytest.fixture
def sink() -> Iterator[RunningSinks]:
    with (
        running_sinks(reject="uninstalled", flaky="flaky", flaky_times=1) as running,
        override_settings(**running.provider_settings(), SALVO_PUBLIC_URL="https://salvo.example"),
    ):
        yield running


def sms_and_push_campaign(**fields) -> Campaign:
    sms = MessagePresetFactory(channel="sms", backend=TWILIO, sms_sender_id="+15005550006")
    push = MessagePresetFactory(channel="push", backend=FCM)
    return make_live_campaign(
        actions=[sms_action(preset=sms), push_action(preset=push, subject="Sale")], **fields
    )


def outcomes(campaign: Campaign, channel: str) -> dict[int, tuple[str, str]]:
    rows = Delivery.objects.filter(execution__campaign=campaign, action__channel=channel)
    return {r.profile_id: (r.status, r.reason) for r in rows}


SENT = (DeliveryStatus.SENT, "")
REFUSED = (DeliveryStatus.FAILED, DeliveryReason.PROVIDER_REFUSED)
SUPPRESSED = (DeliveryStatus.SKIPPED, DeliveryReason.SUPPRESSED)


@pytest.mark.django_db
def test_a_campaign_reaches_phones_through_twilio_and_devices_through_fcm(sink):
    profiles = [make_profile() for _ in range(3)]
    campaign = sms_and_push_campaign()

    drive(campaign)

    assert outcomes(campaign, "sms") == {p.pk: SENT for p in profiles}
    assert outcomes(campaign, "push") == {p.pk: SENT for p in profiles}
    sms, push = sink.received("sms"), sink.received("push")
    assert sorted(r["to"] for r in sms) == sorted(p.phone for p in profiles)
    assert sorted(r["to"] for r in push) == sorted(p.push_token for p in profiles)
    assert {r["provider"] for r in sms + push} == {"twilio", "fcm"}
    assert {r["form"]["Body"] for r in sms} == {"Hi from Salvo"}
    assert {r["json"]["message"]["notification"]["title"] for r in push} == {"Sale"}
    deliveries = Delivery.objects.filter(execution__campaign=campaign)
    by_id = {str(d.pk): d.provider_message_id for d in deliveries}
    assert all(by_id[r["delivery_id"]] == r["message_id"] for r in sms + push)
    assert sink.duplicates() == 0
    assert not DeliveryEvent.objects.exists()


@pytest.mark.django_db
def test_a_passing_failure_of_either_provider_is_retried_and_sent_once(sink):
    profile = make_profile(phone="+33600flaky", push_token="flaky-device-token")
    campaign = sms_and_push_campaign()

    execution = drive(campaign)
    assert outcomes(campaign, "sms")[profile.pk][0] == DeliveryStatus.PENDING
    time_passes(execution, 3600)
    drive(campaign)

    assert outcomes(campaign, "sms") == {profile.pk: SENT}
    assert outcomes(campaign, "push") == {profile.pk: SENT}
    assert [r["status"] for r in sink.attempts("sms")] == [503, 201]
    assert [r["status"] for r in sink.attempts("push")] == [503, 200]


@pytest.mark.django_db
def test_numbers_and_tokens_refused_as_unreachable_are_suppressed_and_skipped_next_time(sink):
    invalid = make_profile(phone=INVALID_NUMBER, push_token="uninstalled-app-token")
    opted_out = make_profile(phone=OPTED_OUT_NUMBER)
    kept = make_profile()
    first = sms_and_push_campaign()

    drive(first)

    assert outcomes(first, "sms") == {invalid.pk: REFUSED, opted_out.pk: REFUSED, kept.pk: SENT}
    assert outcomes(first, "push") == {invalid.pk: REFUSED, opted_out.pk: SENT, kept.pk: SENT}
    refused = Delivery.objects.get(
        execution__campaign=first, profile=invalid, action__channel="sms"
    )
    assert refused.error.startswith("Twilio 21211: The 'To' number")
    assert sorted(
        DeliveryEvent.objects.values_list("provider", "kind", "channel", "recipient", "delivery_id")
    ) == sorted(
        [
            (
                "fcm",
                EventKind.REJECTED,
                "push",
                invalid.push_token,
                _delivery(first, invalid, "push"),
            ),
            ("twilio", EventKind.REJECTED, "sms", INVALID_NUMBER, refused.pk),
            (
                "twilio",
                EventKind.REJECTED,
                "sms",
                OPTED_OUT_NUMBER,
                _delivery(first, opted_out, "sms"),
            ),
        ]
    )
    assert sorted(Suppression.objects.values_list("channel", "address", "reason", "source")) == [
        ("push", invalid.push_token, SuppressionReason.INVALID_ADDRESS, SuppressionSource.PROVIDER),
        ("sms", INVALID_NUMBER, SuppressionReason.INVALID_ADDRESS, SuppressionSource.PROVIDER),
        ("sms", OPTED_OUT_NUMBER, SuppressionReason.UNSUBSCRIBED, SuppressionSource.PROVIDER),
    ]

    attempts = {channel: len(sink.attempts(channel)) for channel in ("sms", "push")}
    second = sms_and_push_campaign()
    drive(second)

    assert outcomes(second, "sms") == {
        invalid.pk: SUPPRESSED,
        opted_out.pk: SUPPRESSED,
        kept.pk: SENT,
    }
    assert outcomes(second, "push") == {invalid.pk: SUPPRESSED, opted_out.pk: SENT, kept.pk: SENT}
    assert [r["to"] for r in sink.attempts("sms")[attempts["sms"] :]] == [kept.phone]
    assert sorted(r["to"] for r in sink.attempts("push")[attempts["push"] :]) == sorted(
        [opted_out.push_token, kept.push_token]
    )
    report = selectors.campaign_report(campaign=second)
    assert report["by_reason"] == {
        "sms": {DeliveryReason.SUPPRESSED: 2},
        "push": {DeliveryReason.SUPPRESSED: 1},
    }

    # A receipt still goes to the number that opted out of marketing, not to the invalid one.
    receipt = sms_and_push_campaign(type=CampaignType.TRANSACTIONAL)
    drive(receipt)
    assert outcomes(receipt, "sms") == {
        invalid.pk: SUPPRESSED,
        opted_out.pk: REFUSED,  # Twilio refuses it again: the recipient replied STOP there
        kept.pk: SENT,
    }


def _delivery(campaign: Campaign, profile, channel: str) -> int:
    return Delivery.objects.get(
        execution__campaign=campaign, profile=profile, action__channel=channel
    ).pk
