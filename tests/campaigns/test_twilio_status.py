"""Twilio's status callbacks: a campaign sends through Twilio's client to the sink, and what
Twilio would post back to each message's StatusCallback URL (signed with the account's auth
token, computed with Twilio's own validator) becomes delivery events and suppressions; a
forged or unsigned callback is refused and records nothing."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlencode, urlsplit

import pytest
from django.test import override_settings
from twilio.request_validator import RequestValidator

from campaigns.choices import CampaignType, DeliveryReason, DeliveryStatus, EventKind
from campaigns.models import Campaign, Delivery, DeliveryEvent
from channels.choices import SuppressionReason, SuppressionSource
from channels.models import Suppression
from devtools.sinks import RunningSinks, running_sinks
from devtools.sinks import twilio as twilio_sink
from tests.campaigns.delivery_support import drive, make_profile, plan, send_all
from tests.campaigns.factories import make_live_campaign, sms_action
from tests.channels.factories import MessagePresetFactory

PUBLIC_URL = "https://salvo.example"
TWILIO = "channels.providers.twilio.TwilioSmsBackend"


@pytest.fixture
def sink() -> Iterator[RunningSinks]:
    with (
        running_sinks() as running,
        override_settings(**running.provider_settings(), SALVO_PUBLIC_URL=PUBLIC_URL),
    ):
        yield running


def twilio_campaign(**fields) -> Campaign:
    preset = MessagePresetFactory(channel="sms", backend=TWILIO, sms_sender_id="+15005550006")
    return make_live_campaign(actions=[sms_action(preset=preset)], **fields)


def status_params(record: dict, status: str, error_code: int | None = None) -> dict[str, str]:
    """What Twilio posts about the message the sink recorded."""
    params = {
        "AccountSid": twilio_sink.ACCOUNT_SID,
        "ApiVersion": "2010-04-01",
        "From": record["form"]["From"],
        "MessageSid": record["message_id"],
        "MessageStatus": status,
        "SmsSid": record["message_id"],
        "SmsStatus": status,
        "To": record["to"],
    }
    if error_code is not None:
        params["ErrorCode"] = str(error_code)
    return params


def post_callback(client, url: str, params: dict[str, str], *, signature: str | None = None):
    """POST as Twilio does: form-encoded, signed over the full URL and the fields."""
    if signature is None:
        signature = RequestValidator(twilio_sink.AUTH_TOKEN).compute_signature(url, params)
    parts = urlsplit(url)
    headers = {"X-Twilio-Signature": signature} if signature else {}
    return client.post(
        f"{parts.path}?{parts.query}",
        urlencode(params),
        content_type="application/x-www-form-urlencoded",
        headers=headers,
    )


def report(client, record: dict, status: str, error_code: int | None = None):
    url = record["form"]["StatusCallback"]
    return post_callback(client, url, status_params(record, status, error_code))


def sent_records(sink: RunningSinks) -> dict[str, dict]:
    """The sink's accepted messages by recipient number."""
    return {r["to"]: r for r in sink.received("sms")}


def outcomes(campaign: Campaign) -> dict[int, tuple[str, str]]:
    rows = Delivery.objects.filter(execution__campaign=campaign)
    return {row.profile_id: (row.status, row.reason) for row in rows}


def events() -> list[tuple[int | None, str, str, str]]:
    return sorted(
        DeliveryEvent.objects.values_list("delivery_id", "kind", "provider", "provider_message_id")
    )


@pytest.mark.django_db
def test_each_message_asks_for_its_status_and_a_signed_callback_records_the_delivery(client, sink):
    ana, bob = make_profile(), make_profile()
    campaign = twilio_campaign()
    drive(campaign)

    deliveries = {d.profile_id: d for d in Delivery.objects.filter(execution__campaign=campaign)}
    records = sent_records(sink)
    for profile in (ana, bob):
        delivery = deliveries[profile.pk]
        record = records[profile.phone]
        assert delivery.status == DeliveryStatus.SENT
        assert delivery.provider_message_id == record["message_id"]
        assert record["form"]["StatusCallback"] == (
            f"{PUBLIC_URL}/webhooks/twilio/status/?delivery={delivery.pk}"
        )

    assert report(client, records[ana.phone], "sent").status_code == 204
    assert not DeliveryEvent.objects.exists()  # a status on the way is no event
    answer = report(client, records[ana.phone], "delivered")

    assert answer.status_code == 204
    event = DeliveryEvent.objects.get()
    assert (event.delivery_id, event.kind, event.provider, event.channel) == (
        deliveries[ana.pk].pk,
        EventKind.DELIVERED,
        "twilio",
        "sms",
    )
    assert (event.provider_message_id, event.recipient) == (
        records[ana.phone]["message_id"],
        ana.phone,
    )
    assert not Suppression.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "signature",
    [
        "",  # no header
        "bm90IHRoZSBzaWduYXR1cmU=",
        RequestValidator("another-token").compute_signature(
            f"{PUBLIC_URL}/webhooks/twilio/status/?delivery=1", {"MessageStatus": "undelivered"}
        ),
    ],
)
def test_a_forged_or_unsigned_callback_is_refused_and_records_nothing(client, sink, signature):
    profile = make_profile()
    drive(twilio_campaign())
    record = sent_records(sink)[profile.phone]
    params = status_params(record, "undelivered", 30005)

    answer = post_callback(client, record["form"]["StatusCallback"], params, signature=signature)

    assert answer.status_code == 403
    assert answer.json() == {"detail": "The Twilio signature does not verify."}
    assert not DeliveryEvent.objects.exists()
    assert not Suppression.objects.exists()


@pytest.mark.django_db
def test_a_callback_signed_for_another_delivery_is_refused(client, sink):
    """The delivery id is in the signed URL: moving a signature to another URL breaks it."""
    ana, bob = make_profile(), make_profile()
    drive(twilio_campaign())
    records = sent_records(sink)
    params = status_params(records[ana.phone], "undelivered", 30005)
    signature = RequestValidator(twilio_sink.AUTH_TOKEN).compute_signature(
        records[ana.phone]["form"]["StatusCallback"], params
    )

    answer = post_callback(
        client, records[bob.phone]["form"]["StatusCallback"], params, signature=signature
    )

    assert answer.status_code == 403
    assert not DeliveryEvent.objects.exists()


@pytest.mark.django_db
def test_a_retried_callback_is_recorded_once_and_out_of_order_ones_each_once(client, sink):
    profile = make_profile()
    campaign = twilio_campaign()
    drive(campaign)
    record = sent_records(sink)[profile.phone]
    delivery = Delivery.objects.get(execution__campaign=campaign)

    for status in ("delivered", "delivered", "sent", "queued", "undelivered", "delivered"):
        assert report(client, record, status).status_code == 204

    assert events() == [
        (delivery.pk, EventKind.DELIVERED, "twilio", record["message_id"]),
        (delivery.pk, EventKind.SOFT_BOUNCED, "twilio", record["message_id"]),
    ]
    assert not Suppression.objects.exists()  # a soft bounce suppresses nothing


@pytest.mark.django_db
def test_a_callback_before_the_send_is_recorded_is_attached_to_its_delivery(client, sink):
    """Twilio may call back before the chunk that sent the message records its outcome:
    the event is attached by the delivery id the URL carries, whatever the row says yet."""
    profile = make_profile()
    campaign = twilio_campaign()
    execution = plan(campaign)
    delivery = Delivery.objects.get(execution=execution)
    url = f"{PUBLIC_URL}/webhooks/twilio/status/?delivery={delivery.pk}"
    early = {"MessageSid": "SM" + "e" * 32, "MessageStatus": "delivered", "To": profile.phone}

    assert post_callback(client, url, early).status_code == 204
    assert Delivery.objects.get(pk=delivery.pk).status == DeliveryStatus.PENDING
    send_all(execution)

    assert Delivery.objects.get(pk=delivery.pk).status == DeliveryStatus.SENT
    assert DeliveryEvent.objects.get().delivery_id == delivery.pk


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("status", "error_code", "kind", "reason"),
    [
        ("undelivered", 30003, EventKind.BOUNCED, SuppressionReason.INVALID_ADDRESS),
        ("undelivered", 30005, EventKind.BOUNCED, SuppressionReason.INVALID_ADDRESS),
        ("undelivered", 30006, EventKind.BOUNCED, SuppressionReason.INVALID_ADDRESS),
        ("failed", 21211, EventKind.BOUNCED, SuppressionReason.INVALID_ADDRESS),
        ("failed", 21610, EventKind.UNSUBSCRIBED, SuppressionReason.UNSUBSCRIBED),
    ],
)
def test_an_unreachable_or_opted_out_number_is_suppressed_and_skipped_next_time(
    client, sink, status, error_code, kind, reason
):
    unreachable, kept = make_profile(), make_profile()
    drive(twilio_campaign())
    report(client, sent_records(sink)[unreachable.phone], status, error_code)

    event = DeliveryEvent.objects.get()
    assert (event.kind, event.recipient) == (kind, unreachable.phone)
    entry = Suppression.objects.get()
    assert (entry.channel, entry.address, entry.reason, entry.source) == (
        "sms",
        unreachable.phone,
        reason,
        SuppressionSource.PROVIDER,
    )
    assert entry.detail == f"twilio: {status} (error {error_code})"

    received = len(sink.received("sms"))
    next_campaign = twilio_campaign()
    drive(next_campaign)

    # An opted-out number's profile withdrew its SMS consent too, which the engine reads
    # before the list (tests/campaigns/test_provider_optouts.py).
    skipped = (
        DeliveryReason.OPTED_OUT if kind == EventKind.UNSUBSCRIBED else DeliveryReason.SUPPRESSED
    )
    assert outcomes(next_campaign) == {
        unreachable.pk: (DeliveryStatus.SKIPPED, skipped),
        kept.pk: (DeliveryStatus.SENT, ""),
    }
    assert [r["to"] for r in sink.received("sms")[received:]] == [kept.phone]


@pytest.mark.django_db
def test_an_invalid_number_stops_receipts_too_an_opt_out_only_marketing(client, sink):
    invalid, opted_out = make_profile(), make_profile()
    drive(twilio_campaign())
    records = sent_records(sink)
    report(client, records[invalid.phone], "undelivered", 30005)
    report(client, records[opted_out.phone], "failed", 21610)

    receipt = twilio_campaign(type=CampaignType.TRANSACTIONAL)
    drive(receipt)

    assert outcomes(receipt) == {
        invalid.pk: (DeliveryStatus.SKIPPED, DeliveryReason.SUPPRESSED),
        opted_out.pk: (DeliveryStatus.SENT, ""),
    }


@pytest.mark.django_db
def test_a_callback_needs_a_post_and_a_configured_auth_token(client, sink):
    assert client.get("/webhooks/twilio/status/?delivery=1").status_code == 405
    url = f"{PUBLIC_URL}/webhooks/twilio/status/?delivery=1"
    params = {"MessageSid": "SM" + "0" * 32, "MessageStatus": "delivered"}
    with override_settings(
        SALVO_TWILIO={**sink.provider_settings()["SALVO_TWILIO"], "auth_token": ""}
    ):
        assert post_callback(client, url, params).status_code == 403
    assert not DeliveryEvent.objects.exists()
