"""Opt-outs that come back from providers withdraw the person's consent, not only suppress
the address: an ESP's unsubscribe or spam complaint (anymail's webhooks, posted as SendGrid
posts them), Twilio's "opted out" error, and a STOP texted to the sending number (Twilio's
inbound webhook, signed with Twilio's own validator). The profile then shows it at the API
and the admin, and the next marketing campaign skips it for its consent."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from twilio.request_validator import RequestValidator

from campaigns.choices import DeliveryReason, DeliveryStatus, EventKind
from campaigns.events import ProviderEvent, events_record
from campaigns.models import Campaign, Delivery, DeliveryEvent
from channels.choices import SuppressionReason, SuppressionSource
from channels.models import Suppression
from devtools.sinks import RunningSinks, running_sinks
from devtools.sinks import twilio as twilio_sink
from segments.choices import ConsentSource
from segments.models import ConsentKeyword, Profile
from tests.campaigns.delivery_support import drive, make_profile
from tests.campaigns.factories import email_action, make_live_campaign, sms_action
from tests.channels.factories import MessagePresetFactory

SECRET = "sendgrid-hook:Zk3pQ8vR2mW7xT4n"
SENDGRID = "/anymail/sendgrid/tracking/"
PUBLIC_URL = "https://salvo.example"
INBOUND = "/webhooks/twilio/inbound/"
TWILIO = "channels.providers.twilio.TwilioSmsBackend"
SENDING_NUMBER = "+15005550006"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


@pytest.fixture
def sink() -> Iterator[RunningSinks]:
    with (
        running_sinks() as running,
        override_settings(
            **running.provider_settings(),
            SALVO_PUBLIC_URL=PUBLIC_URL,
            ANYMAIL_WEBHOOK_SECRET=[SECRET],
        ),
    ):
        yield running


# --- the doors a test reads consent at ---------------------------------------------------


def consent(profile: Profile, channel: str) -> tuple[bool, str]:
    profile = Profile.objects.get(pk=profile.pk)
    return getattr(profile, f"consent_{channel}"), getattr(profile, f"consent_{channel}_source")


def api_consent(api_client, profile: Profile, channel: str) -> tuple[bool, str]:
    body = api_client.get(f"/api/profiles/{profile.pk}/").json()
    return body["consent"][channel], body["consent_changes"][channel]["source"]


def admin_rows(admin_client, profile: Profile) -> dict[str, str]:
    """The source of each channel's last consent change, as the profile's admin page shows
    it in its consent history."""
    page = admin_client.get(f"/admin/segments/profile/{profile.pk}/change/").content.decode()
    rows = re.findall(r"<tr><td>([^<]+)</td><td>[^<]*</td><td>([^<]+)</td></tr>", page)
    return dict(rows)


def outcomes(campaign: Campaign) -> dict[int, tuple[str, str]]:
    rows = Delivery.objects.filter(execution__campaign=campaign)
    return {row.profile_id: (row.status, row.reason) for row in rows}


# --- an ESP's unsubscribe or complaint --------------------------------------------------------


def sendgrid_post(events: list[dict[str, Any]]) -> int:
    headers = {"Authorization": "Basic " + base64.b64encode(SECRET.encode()).decode()}
    body = json.dumps(events)
    return (
        Client().post(SENDGRID, body, content_type="application/json", headers=headers).status_code
    )


def sendgrid_event(row: Delivery | None, email: str, name: str, event_id: str) -> dict[str, Any]:
    # https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event (custom
    # arguments arrive as keys of each event)
    event = {
        "email": email,
        "timestamp": 1764505090,
        "event": name,
        "sg_event_id": event_id,
        "sg_message_id": f"sg-{row.pk if row else 0}.filter0001",
        "category": ["campaign"],
    }
    if row is not None:
        event["salvo_delivery_id"] = str(row.pk)
    return event


def email_sent(*profiles: Profile) -> dict[int, Delivery]:
    campaign = make_live_campaign(actions=[email_action()])
    drive(campaign)
    return {row.profile_id: row for row in Delivery.objects.filter(execution__campaign=campaign)}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "kind", "reason"),
    [
        ("unsubscribe", EventKind.UNSUBSCRIBED, SuppressionReason.UNSUBSCRIBED),
        ("spamreport", EventKind.COMPLAINED, SuppressionReason.COMPLAINT),
    ],
)
def test_an_esp_unsubscribe_or_complaint_withdraws_the_profiles_consent(
    sink, api_client, admin_client, name, kind, reason
):
    person, other = make_profile(), make_profile()
    rows = email_sent(person, other)
    assert api_consent(api_client, person, "email") == (True, "")

    assert sendgrid_post([sendgrid_event(rows[person.pk], person.email, name, "sg-1")]) == 200

    assert DeliveryEvent.objects.get().kind == kind
    entry = Suppression.objects.get()
    assert (entry.address, entry.reason) == (person.email, reason)
    assert api_consent(api_client, person, "email") == (False, ConsentSource.PROVIDER)
    assert api_consent(api_client, person, "sms") == (True, "")  # only the event's channel
    assert api_consent(api_client, other, "email") == (True, "")
    assert admin_rows(admin_client, person)["Email"] == "Provider (unsubscribe or complaint)"
    assert admin_rows(admin_client, person)["SMS"] == "—"
    assert admin_rows(admin_client, other)["Email"] == "—"

    # The next marketing campaign skips them, for their consent even once the address is
    # taken off the list (or changed).
    entry.delete()
    received = len(sink.received("email"))
    following = make_live_campaign(actions=[email_action()])
    drive(following)
    assert outcomes(following) == {
        person.pk: (DeliveryStatus.SKIPPED, DeliveryReason.OPTED_OUT),
        other.pk: (DeliveryStatus.SENT, ""),
    }
    assert [m["to"] for m in sink.received("email")[received:]] == [other.email]


@pytest.mark.django_db
def test_a_duplicated_unsubscribe_withdraws_consent_once(sink, api_client):
    """The person unsubscribes at the ESP, then consents again through the API: the ESP's
    retry of the same event changes nothing."""
    person = make_profile()
    rows = email_sent(person)
    event = sendgrid_event(rows[person.pk], person.email, "unsubscribe", "sg-u")
    assert sendgrid_post([event]) == 200
    withdrawn_at = Profile.objects.get(pk=person.pk).consent_email_changed_at
    assert withdrawn_at is not None
    answer = api_client.patch(
        f"/api/profiles/{person.pk}/", {"consent": {"email": True}}, format="json"
    )
    assert answer.status_code == 200, answer.content

    assert sendgrid_post([event]) == 200

    assert DeliveryEvent.objects.count() == 1
    assert consent(person, "email") == (True, ConsentSource.API)


@pytest.mark.django_db
def test_an_unsubscribe_without_a_delivery_only_suppresses(sink):
    person = make_profile()
    email_sent(person)

    assert sendgrid_post([sendgrid_event(None, person.email, "unsubscribe", "sg-x")]) == 200

    assert Suppression.objects.get().address == person.email
    assert consent(person, "email") == (True, "")


@pytest.mark.django_db
def test_ordinary_events_cost_their_inserts_and_touch_no_consent(sink):
    person = make_profile()
    row = email_sent(person)[person.pk]
    now = timezone.now()
    events = [
        ProviderEvent(
            provider="sendgrid",
            event_id=f"sg-{kind}",
            kind=kind,
            channel="email",
            occurred_at=now,
            delivery_id=row.pk,
            recipient=person.email,
        )
        for kind in (EventKind.DELIVERED, EventKind.OPENED, EventKind.CLICKED)
    ]
    with CaptureQueriesContext(connection) as queries:
        assert events_record(events=events).recorded == 3
    statements = [
        q["sql"]
        for q in queries.captured_queries
        if not q["sql"].upper().startswith(("SAVEPOINT", "RELEASE", "BEGIN"))
    ]
    # The events' INSERT, then the report's counters (campaigns.engagement): the delivery's
    # first events, its profile's, and the counters' upsert; no UPDATE of anything.
    assert len(statements) == 4, statements
    assert 'INSERT INTO "campaigns_deliveryevent"' in statements[0]
    assert all(sql.startswith(("INSERT", "WITH")) for sql in statements), statements
    assert consent(person, "email") == (True, "")


# --- Twilio: "opted out" at send, and keywords texted to the number ------------------------


def twilio_campaign() -> Campaign:
    preset = MessagePresetFactory(channel="sms", backend=TWILIO, sms_sender_id=SENDING_NUMBER)
    return make_live_campaign(actions=[sms_action(preset=preset)])


def signed_post(client, path: str, params: dict[str, str], *, token: str = twilio_sink.AUTH_TOKEN):
    """POST as Twilio does: form-encoded, signed over the full public URL and the fields."""
    signature = RequestValidator(token).compute_signature(f"{PUBLIC_URL}{path}", params)
    return client.post(
        path,
        urlencode(params),
        content_type="application/x-www-form-urlencoded",
        headers={"X-Twilio-Signature": signature},
    )


def text(client, phone: str, body: str, sid: str, **extra: str):
    """What Twilio posts to the number's messaging webhook when `phone` texts `body` to it."""
    # https://www.twilio.com/docs/messaging/guides/webhook-request
    params = {
        "MessageSid": sid,
        "SmsSid": sid,
        "SmsMessageSid": sid,
        "AccountSid": twilio_sink.ACCOUNT_SID,
        "MessagingServiceSid": "MG" + "0" * 32,
        "From": phone,
        "To": SENDING_NUMBER,
        "Body": body,
        "NumMedia": "0",
        "NumSegments": "1",
        "ApiVersion": "2010-04-01",
        **extra,
    }
    return signed_post(client, INBOUND, params)


def sid(n: int) -> str:
    return f"SM{n:032d}"


def sms_suppressions() -> list[tuple[str, str, str]]:
    return sorted(
        Suppression.objects.filter(channel="sms").values_list("address", "reason", "source")
    )


@pytest.mark.django_db
def test_twilios_opted_out_error_withdraws_sms_consent_an_invalid_number_does_not(client, sink):
    opted_out, invalid = make_profile(), make_profile()
    drive(twilio_campaign())
    records = {r["to"]: r for r in sink.received("sms")}
    for profile, status, code in ((opted_out, "failed", 21610), (invalid, "undelivered", 30005)):
        record = records[profile.phone]
        callback = record["form"]["StatusCallback"].removeprefix(PUBLIC_URL)
        params = {"MessageSid": record["message_id"], "MessageStatus": status, "To": profile.phone}
        assert signed_post(client, callback, {**params, "ErrorCode": str(code)}).status_code == 204

    assert consent(opted_out, "sms") == (False, ConsentSource.PROVIDER)
    assert consent(opted_out, "email") == (True, "")
    assert consent(invalid, "sms") == (True, "")


@pytest.mark.django_db
def test_stop_suppresses_the_number_and_withdraws_consent_of_its_profiles(client, sink):
    ana = make_profile(phone="+15005550101")
    twin = make_profile(phone="+15005550101")  # two profiles share the number
    kept = make_profile(phone="+15005550102")

    answer = text(client, "+15005550101", "Stop", sid(1))

    assert answer.status_code == 200
    assert answer["Content-Type"].startswith("text/xml")
    assert answer.content.decode() == EMPTY_TWIML
    assert sms_suppressions() == [
        ("+15005550101", SuppressionReason.UNSUBSCRIBED, SuppressionSource.PROVIDER)
    ]
    assert Suppression.objects.get().detail == "twilio: STOP texted to the sending number"
    for profile in (ana, twin):
        assert consent(profile, "sms") == (False, ConsentSource.SMS_KEYWORD)
        assert consent(profile, "email") == (True, "")
    assert consent(kept, "sms") == (True, "")

    received = len(sink.received("sms"))
    following = twilio_campaign()
    drive(following)
    assert outcomes(following) == {
        ana.pk: (DeliveryStatus.SKIPPED, DeliveryReason.OPTED_OUT),
        twin.pk: (DeliveryStatus.SKIPPED, DeliveryReason.OPTED_OUT),
        kept.pk: (DeliveryStatus.SENT, ""),
    }
    assert [r["to"] for r in sink.received("sms")[received:]] == [kept.phone]


@pytest.mark.django_db
@pytest.mark.parametrize("keyword", ["STOPALL", "unsubscribe", " cancel ", "END", "Quit", "OPTOUT"])
def test_each_of_twilios_opt_out_keywords_opts_out(client, sink, keyword):
    profile = make_profile(phone="+15005550111")
    assert text(client, profile.phone, keyword, sid(2)).status_code == 200
    assert consent(profile, "sms") == (False, ConsentSource.SMS_KEYWORD)
    assert [reason for _, reason, _ in sms_suppressions()] == [SuppressionReason.UNSUBSCRIBED]


@pytest.mark.django_db
def test_an_advanced_opt_out_keyword_of_the_services_own_list_opts_out(client, sink):
    profile = make_profile(phone="+15005550112")
    assert text(client, profile.phone, "ARRET", sid(3), OptOutType="STOP").status_code == 200
    assert consent(profile, "sms") == (False, ConsentSource.SMS_KEYWORD)
    assert Suppression.objects.get().detail == "twilio: ARRET texted to the sending number"


@pytest.mark.django_db
def test_start_lifts_only_an_unsubscribed_suppression_and_gives_consent_back(client, sink):
    back = make_profile(phone="+15005550121")
    invalid = make_profile(phone="+15005550122")
    text(client, back.phone, "STOP", sid(10))
    text(client, invalid.phone, "STOP", sid(11))
    Suppression.objects.filter(address=invalid.phone).update(
        reason=SuppressionReason.INVALID_ADDRESS
    )
    Suppression.objects.create(
        channel="sms", address="+15005550123", reason=SuppressionReason.HARD_BOUNCE,
        source=SuppressionSource.PROVIDER, created_at=timezone.now(),
    )  # fmt: skip

    for phone, keyword, n in ((back.phone, "START", 12), (invalid.phone, "yes", 13)):
        answer = text(client, phone, keyword, sid(n))
        assert (answer.status_code, answer.content.decode()) == (200, EMPTY_TWIML)
    text(client, "+15005550123", "UNSTOP", sid(14))

    assert sms_suppressions() == [
        (invalid.phone, SuppressionReason.INVALID_ADDRESS, SuppressionSource.PROVIDER),
        ("+15005550123", SuppressionReason.HARD_BOUNCE, SuppressionSource.PROVIDER),
    ]
    assert consent(back, "sms") == (True, ConsentSource.SMS_KEYWORD)
    assert consent(invalid, "sms") == (True, ConsentSource.SMS_KEYWORD)


@pytest.mark.django_db
@pytest.mark.parametrize("body", ["HELP", "INFO", "STOP PLEASE", "Thanks!", ""])
def test_help_and_other_messages_change_nothing(client, sink, body):
    profile = make_profile(phone="+15005550131")
    answer = text(client, profile.phone, body, sid(20))
    assert (answer.status_code, answer.content.decode()) == (200, EMPTY_TWIML)
    assert not Suppression.objects.exists()
    assert not ConsentKeyword.objects.exists()
    assert consent(profile, "sms") == (True, "")


@pytest.mark.django_db
@pytest.mark.parametrize("token", ["another-token", ""])
def test_a_forged_or_unsigned_inbound_post_is_refused_and_changes_nothing(client, sink, token):
    profile = make_profile(phone="+15005550141")
    params = {"MessageSid": sid(30), "From": profile.phone, "To": SENDING_NUMBER, "Body": "STOP"}
    if token:
        answer = signed_post(client, INBOUND, params, token=token)
    else:
        answer = client.post(
            INBOUND, urlencode(params), content_type="application/x-www-form-urlencoded"
        )

    assert answer.status_code == 403
    assert not Suppression.objects.exists()
    assert consent(profile, "sms") == (True, "")
    assert client.get(INBOUND).status_code == 405


@pytest.mark.django_db
def test_a_redelivered_inbound_message_changes_nothing_a_second_time(client, sink):
    """STOP, then START; Twilio's retry of the STOP comes after: the number stays
    subscribed, and a retried START after a new STOP does not undo it."""
    profile = make_profile(phone="+15005550151")
    text(client, profile.phone, "STOP", sid(40))
    text(client, profile.phone, "START", sid(41))
    answer = text(client, profile.phone, "STOP", sid(40))

    assert (answer.status_code, answer.content.decode()) == (200, EMPTY_TWIML)
    assert not Suppression.objects.exists()
    assert consent(profile, "sms") == (True, ConsentSource.SMS_KEYWORD)

    text(client, profile.phone, "STOP", sid(42))
    text(client, profile.phone, "START", sid(41))
    assert sms_suppressions() == [
        (profile.phone, SuppressionReason.UNSUBSCRIBED, SuppressionSource.PROVIDER)
    ]
    assert consent(profile, "sms") == (False, ConsentSource.SMS_KEYWORD)
    assert ConsentKeyword.objects.count() == 3
