"""Amazon SES's events as SNS posts them to anymail's SES tracking webhook
(``/anymail/amazon_ses/tracking/``, HTTP basic auth): an email sent through SES to the
sink's emulation comes back as SES's event notifications naming the headers and tags the
message carried, and each becomes one delivery event (a repeated notification once),
attached to its delivery also before the send's record commits; bounces, complaints and
unsubscribes suppress the address and count in the report. A subscription confirmation
is confirmed through SNS's API (the sink's emulation), never by fetching its URL; a post
without the credentials records nothing. anymail does not verify SNS message signatures:
the basic auth is what authenticates a post."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client, override_settings

from campaigns import delivery, selectors
from campaigns.choices import DeliveryStatus, EventKind
from campaigns.models import Campaign, Delivery, DeliveryEvent
from channels.choices import ChannelKind, SuppressionReason, SuppressionSource
from channels.models import Suppression
from devtools.sinks import RunningSinks, running_sinks
from devtools.sinks.running import ESP_BACKENDS
from segments.models import Profile
from tests.campaigns.delivery_support import drive, make_profile, plan, send_all
from tests.campaigns.factories import email_action, make_live_campaign
from tests.channels.factories import MessagePresetFactory

SECRET = "ses-hook:Qv8rT2mW7xK4nZ3p"
SES = "/anymail/amazon_ses/tracking/"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:salvo-ses-events"


@pytest.fixture
def sinks() -> Iterator[RunningSinks]:
    with running_sinks() as sink, override_settings(**sink.provider_settings(esp="ses")):
        yield sink


@pytest.fixture(autouse=True)
def webhook_secret() -> Iterator[None]:
    with override_settings(ANYMAIL_WEBHOOK_SECRET=[SECRET]):
        yield


def sns_post(notification: dict[str, Any], *, auth: str | None = SECRET) -> int:
    """POST as SNS does: its headers name the message's type and id."""
    headers = {
        "x-amz-sns-message-type": notification["Type"],
        "x-amz-sns-message-id": notification["MessageId"],
        "x-amz-sns-topic-arn": TOPIC,
    }
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    body = json.dumps(notification)
    # SNS posts JSON as text/plain.
    return Client().post(SES, body, content_type="text/plain", headers=headers).status_code


def notification(ses_event: dict[str, Any], *, message_id: str | None = None) -> dict[str, Any]:
    # https://docs.aws.amazon.com/sns/latest/dg/sns-message-and-json-formats.html
    return {
        "Type": "Notification",
        "MessageId": message_id or str(uuid.uuid4()),
        "TopicArn": TOPIC,
        "Subject": "Amazon SES Email Event Notification",
        "Message": json.dumps(ses_event),
        "Timestamp": "2026-11-30T12:33:54.907Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLE",
        "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-x.pem",
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe",
    }


def mail_object(received: dict[str, Any]) -> dict[str, Any]:
    """SES's ``mail`` object for a message the sink received: its id, its recipient, the
    headers it carried (anymail's X-Metadata among them) and its message tags."""
    # https://docs.aws.amazon.com/ses/latest/dg/event-publishing-retrieving-sns-contents.html
    headers = [{"name": name, "value": value} for name, value in received["headers"].items()]
    headers.append({"name": "X-Metadata", "value": json.dumps(received["metadata"])})
    return {
        "timestamp": "2026-11-30T12:30:00.000Z",
        "source": "news@example.com",
        "sendingAccountId": "123456789012",
        "messageId": received["message_id"],
        "destination": [received["to"]],
        "headersTruncated": False,
        "headers": headers,
        "tags": {
            "ses:configuration-set": ["salvo"],
            **{name: [value] for name, value in received["tags"].items()},
        },
    }


def mail_for(row: Delivery, email: str) -> dict[str, Any]:
    """A ``mail`` object for a delivery not sent yet: its id in X-Metadata alone."""
    metadata = json.dumps({"salvo_delivery_id": str(row.pk)})
    return {
        "messageId": f"0102-ses-{row.pk}",
        "destination": [email],
        "headersTruncated": False,
        "headers": [{"name": "X-Metadata", "value": metadata}],
        "tags": {},
    }


def bounce(mail: dict[str, Any], *, kind: str = "Permanent") -> dict[str, Any]:
    return {
        "eventType": "Bounce",
        "bounce": {
            "bounceType": kind,
            "bounceSubType": "General",
            "bouncedRecipients": [
                {
                    "emailAddress": mail["destination"][0],
                    "action": "failed",
                    "status": "5.1.1",
                    "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                }
            ],
            "timestamp": "2026-11-30T12:33:54.000Z",
            "feedbackId": "0102-feedback",
            "reportingMTA": "dsn; e226-55.smtp-out.eu-west-1.amazonses.com",
        },
        "mail": mail,
    }


def events_of(mail: dict[str, Any]) -> list[dict[str, Any]]:
    """SES's other event types for one message, as its event publishing sends them."""
    to = mail["destination"][0]
    return [
        {"eventType": "Send", "send": {}, "mail": mail},
        {"eventType": "Delivery", "mail": mail, "delivery": {
            "timestamp": "2026-11-30T12:31:00.000Z", "processingTimeMillis": 546,
            "recipients": [to], "smtpResponse": "250 2.6.0 Message received",
            "reportingMTA": "e226-55.smtp-out.eu-west-1.amazonses.com"}},
        {"eventType": "DeliveryDelay", "mail": mail, "deliveryDelay": {
            "timestamp": "2026-11-30T12:30:30.000Z", "delayType": "TransientCommunicationFailure",
            "expirationTime": "2026-12-01T12:30:00.000Z",
            "delayedRecipients": [{"emailAddress": to, "status": "4.4.1",
                                   "diagnosticCode": "smtp; 421 4.4.1 Unable to connect"}]}},
        {"eventType": "Open", "mail": mail, "open": {
            "ipAddress": "203.0.113.9", "timestamp": "2026-11-30T12:40:00.000Z",
            "userAgent": "Mozilla/5.0"}},
        {"eventType": "Click", "mail": mail, "click": {
            "ipAddress": "203.0.113.9", "timestamp": "2026-11-30T12:41:00.000Z",
            "userAgent": "Mozilla/5.0", "link": "https://example.com/offer", "linkTags": {}}},
        {"eventType": "Complaint", "mail": mail, "complaint": {
            "complainedRecipients": [{"emailAddress": to}], "timestamp": "2026-11-30T13:00:00Z",
            "feedbackId": "0102-complaint", "complaintFeedbackType": "abuse",
            "userAgent": "ExampleCorp Feedback Loop (V0.01)"}},
    ]  # fmt: skip


def ses_campaign(*profiles: Profile) -> Campaign:
    preset = MessagePresetFactory(channel=ChannelKind.EMAIL, backend=ESP_BACKENDS["ses"])
    return make_live_campaign(actions=[email_action(preset=preset)])


def email_rows(campaign: Campaign) -> dict[str, Delivery]:
    rows = Delivery.objects.filter(execution__campaign=campaign).select_related("profile")
    return {row.profile.email: row for row in rows}


def kinds(row: Delivery) -> list[str]:
    return sorted(DeliveryEvent.objects.filter(delivery=row).values_list("kind", flat=True))


@pytest.mark.django_db
def test_ses_events_of_a_message_sent_through_ses_attach_to_its_delivery_once(sinks):
    engaged, bounced = make_profile(), make_profile()
    campaign = ses_campaign()
    drive(campaign)
    rows = email_rows(campaign)
    received = {r["to"]: r for r in sinks.received("email")}

    posts = [notification(event) for event in events_of(mail_object(received[engaged.email]))]
    hard = notification(bounce(mail_object(received[bounced.email])))
    for post in [*posts, hard, hard, *posts]:  # SNS posts again what it thinks failed
        assert sns_post(post) == 200

    # "Send" repeats the send's own outcome: not kept.
    assert kinds(rows[engaged.email]) == [
        "clicked", "complained", "deferred", "delivered", "opened"
    ]  # fmt: skip
    assert kinds(rows[bounced.email]) == [EventKind.BOUNCED]
    event = DeliveryEvent.objects.get(kind=EventKind.BOUNCED)
    assert (event.provider, event.provider_message_id) == (
        "amazon_ses",
        rows[bounced.email].provider_message_id,
    )
    assert event.event_id == f"{hard['MessageId']}/{bounced.email.lower()}"
    assert "550 5.1.1 user unknown" in event.detail
    delay = DeliveryEvent.objects.get(kind=EventKind.DEFERRED)
    assert delay.detail == "TransientCommunicationFailure — smtp; 421 4.4.1 Unable to connect"
    assert DeliveryEvent.objects.get(kind=EventKind.CLICKED).detail == "https://example.com/offer"
    suppressed = {
        entry.address: (entry.reason, entry.source) for entry in Suppression.objects.all()
    }
    assert suppressed == {
        bounced.email.lower(): (SuppressionReason.HARD_BOUNCE, SuppressionSource.PROVIDER),
        engaged.email.lower(): (SuppressionReason.COMPLAINT, SuppressionSource.PROVIDER),
    }
    email = selectors.campaign_report(campaign=campaign)["engagement"]["by_channel"]["email"]
    assert {kind: email[kind]["count"] for kind in email} == {
        "delivered": 1, "bounced": 1, "complained": 1, "unsubscribed": 0, "opened": 1,
        "clicked": 1, "converted": 0,
    }  # fmt: skip


@pytest.mark.django_db
def test_the_message_tag_finds_the_delivery_when_ses_sends_no_headers(sinks):
    profile = make_profile()
    campaign = ses_campaign()
    drive(campaign)
    row = email_rows(campaign)[profile.email]
    mail = mail_object(sinks.received("email")[0]) | {"headers": []}

    assert sns_post(notification(bounce(mail))) == 200

    assert kinds(row) == [EventKind.BOUNCED]


@pytest.mark.django_db
def test_a_transient_bounce_is_soft_and_suppresses_nothing(sinks):
    profile = make_profile()
    campaign = ses_campaign()
    drive(campaign)
    row = email_rows(campaign)[profile.email]
    mail = mail_object(sinks.received("email")[0])

    assert sns_post(notification(bounce(mail, kind="Transient"))) == 200

    assert kinds(row) == [EventKind.SOFT_BOUNCED]
    assert not Suppression.objects.exists()


@pytest.mark.django_db
def test_an_unsubscribe_through_ses_list_management_suppresses(sinks):
    profile = make_profile()
    campaign = ses_campaign()
    drive(campaign)
    row = email_rows(campaign)[profile.email]
    mail = mail_object(sinks.received("email")[0])
    event = {"eventType": "Subscription", "mail": mail, "subscription": {
        "contactList": "news", "timestamp": "2026-11-30T13:00:00Z",
        "source": "UnsubscribeHeader",
        "newTopicPreferences": {"unsubscribeAll": True, "topicSubscriptionStatus": []},
        "oldTopicPreferences": {"unsubscribeAll": False, "topicSubscriptionStatus": []},
    }}  # fmt: skip

    assert sns_post(notification(event)) == 200

    assert kinds(row) == [EventKind.UNSUBSCRIBED]
    entry = Suppression.objects.get()
    assert (entry.address, entry.reason) == (profile.email.lower(), SuppressionReason.UNSUBSCRIBED)


@pytest.mark.django_db
def test_a_bounce_that_arrives_before_the_send_is_recorded_is_attached_and_counted(sinks):
    profile, other = make_profile(), make_profile()
    campaign = ses_campaign()
    execution = plan(campaign)  # deliveries planned, nothing sent yet
    row = email_rows(campaign)[profile.email]
    assert row.status == DeliveryStatus.PENDING

    assert sns_post(notification(bounce(mail_for(row, profile.email)))) == 200
    send_all(execution)
    delivery.execution_complete_if_done(execution_id=execution.pk)

    row.refresh_from_db()
    assert (row.status, row.reason) == (DeliveryStatus.SKIPPED, "suppressed")
    assert kinds(row) == [EventKind.BOUNCED]
    assert [m["to"] for m in sinks.received("email")] == [other.email]
    report = selectors.campaign_report(campaign=campaign)
    assert report["by_reason"] == {"email": {"suppressed": 1}}
    assert report["engagement"]["by_channel"]["email"]["bounced"]["count"] == 1


@pytest.fixture
def planned(sinks) -> tuple[Profile, Delivery]:
    """A profile, and its email delivery of an SES campaign: planned, not sent yet."""
    profile = make_profile()
    campaign = ses_campaign()
    plan(campaign)
    return profile, email_rows(campaign)[profile.email]


@pytest.mark.django_db
@pytest.mark.parametrize("auth", ["ses-hook:wrong", "someone:" + SECRET.split(":")[1]])
def test_a_post_with_wrong_credentials_is_refused_and_records_nothing(planned, auth):
    profile, row = planned

    assert sns_post(notification(bounce(mail_for(row, profile.email))), auth=auth) == 400

    assert not DeliveryEvent.objects.exists()
    assert not Suppression.objects.exists()


@pytest.mark.django_db
def test_a_post_without_credentials_is_asked_for_them_as_sns_expects(planned):
    profile, row = planned

    # SNS sends basic auth only after a 401 that asks for it.
    assert sns_post(notification(bounce(mail_for(row, profile.email))), auth=None) == 401

    assert not DeliveryEvent.objects.exists()


@pytest.mark.django_db
def test_without_a_secret_set_every_post_is_refused(planned):
    profile, row = planned

    with override_settings(ANYMAIL_WEBHOOK_SECRET=[]):
        assert sns_post(notification(bounce(mail_for(row, profile.email))), auth=None) == 400

    assert not DeliveryEvent.objects.exists()


def subscription_confirmation() -> dict[str, Any]:
    return {
        "Type": "SubscriptionConfirmation",
        "MessageId": str(uuid.uuid4()),
        "Token": "2336412f37fb687f5d51e6e2425c464de12884c",
        "TopicArn": TOPIC,
        "Message": f"You have chosen to subscribe to the topic {TOPIC}.",
        # Never fetched: anymail confirms through SNS's API in the topic's region.
        "SubscribeURL": "http://169.254.169.254/latest/meta-data/",
        "Timestamp": "2026-11-30T12:00:00.000Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLE",
        "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-x.pem",
    }


@pytest.mark.django_db
def test_a_subscription_confirmation_is_confirmed_through_snss_api_not_its_url(sinks):
    confirmation = subscription_confirmation()

    assert sns_post(confirmation) == 200

    confirmed = sinks.attempts("sns")
    assert [(r["to"], r["token"], r["status"]) for r in confirmed] == [
        (TOPIC, confirmation["Token"], 200)
    ]


@pytest.mark.django_db
def test_a_subscription_confirmation_without_credentials_confirms_nothing(sinks):
    assert sns_post(subscription_confirmation(), auth="ses-hook:wrong") == 400

    assert not sinks.attempts("sns")
