"""SMS through Twilio's own client to the sink's emulation of Twilio's Messages API, over
real sockets: what Twilio receives, and how its answers become outcomes."""

import base64

import pytest
from django.test import override_settings

from channels.choices import ChannelKind, SuppressionReason
from channels.providers import (
    OutboundMessage,
    PermanentProviderError,
    SendResult,
    TransientProviderError,
    backend_choices,
)
from channels.providers.twilio import TwilioSmsBackend
from devtools.sinks import twilio as twilio_sink
from tests.channels.provider_support import module_sink, outbound, preset_backend

TWILIO = "channels.providers.twilio.TwilioSmsBackend"


sink = module_sink(reject="invalid", retry_after_s=7)


@pytest.fixture
def sink_settings(sink):
    with override_settings(**sink.provider_settings(), SALVO_PUBLIC_URL="https://salvo.example"):
        yield sink


def sms(to: str, body: str = "Hello") -> OutboundMessage:
    return outbound(ChannelKind.SMS, to, body=body)


def twilio_backend(**preset_fields) -> TwilioSmsBackend:
    return preset_backend("sms", TWILIO, TwilioSmsBackend, **preset_fields)


def test_the_twilio_backend_is_registered_for_sms_only():
    assert TWILIO in dict(backend_choices("sms"))
    assert TWILIO not in dict(backend_choices("email"))


def test_a_batch_goes_through_twilios_client_on_one_connection_with_its_status_callback(
    sink_settings,
):
    messages = [sms("+33600000001", "Un"), sms("+33600000002", "Deux")]
    with twilio_backend(sms_sender_id="+15005550006") as backend:
        outcomes = backend.send_batch(messages)

    assert all(isinstance(o, SendResult) for o in outcomes)
    received = [
        r for r in sink_settings.received("sms") if r["to"] in ("+33600000001", "+33600000002")
    ]
    assert [r["form"]["Body"] for r in received] == ["Un", "Deux"]
    assert [o.provider_message_id for o in outcomes] == [r["message_id"] for r in received]
    assert all(o.provider_message_id.startswith("SM") for o in outcomes)
    for record, message in zip(received, messages, strict=True):
        assert record["path"] == f"/2010-04-01/Accounts/{twilio_sink.ACCOUNT_SID}/Messages.json"
        assert record["form"]["From"] == "+15005550006"
        assert record["form"]["StatusCallback"] == (
            f"https://salvo.example/webhooks/twilio/status/?delivery={message.delivery_id}"
        )
        assert record["delivery_id"] == str(message.delivery_id)
        assert record["headers"]["user-agent"].startswith("twilio-python/")
        credentials = f"{twilio_sink.ACCOUNT_SID}:{twilio_sink.AUTH_TOKEN}".encode()
        assert (
            record["headers"]["authorization"] == f"Basic {base64.b64encode(credentials).decode()}"
        )
    assert len({r["peer"] for r in received}) == 1  # one session for the batch


def test_without_a_public_url_no_status_callback_is_asked_and_a_service_goes_along(sink):
    settings = sink.provider_settings()
    settings["SALVO_TWILIO"]["messaging_service_sid"] = "MG" + "1" * 32
    with override_settings(**settings, SALVO_PUBLIC_URL=""):
        outcome = twilio_backend().send(sms("+33600000003"))
    record = next(r for r in sink.received("sms") if r["message_id"] == outcome.provider_message_id)
    assert "StatusCallback" not in record["form"]
    assert record["form"]["MessagingServiceSid"] == "MG" + "1" * 32
    assert record["form"]["From"] == "SALVO"


@pytest.mark.parametrize(
    ("to", "code", "suppress"),
    [
        ("+15005550001", 21211, SuppressionReason.INVALID_ADDRESS),
        ("+15005550009", 21614, SuppressionReason.INVALID_ADDRESS),
        ("+15005550004", 21610, SuppressionReason.UNSUBSCRIBED),
        ("+15005550002", 21612, ""),
        ("+33invalid", 21211, SuppressionReason.INVALID_ADDRESS),
    ],
)
def test_twilios_refusals_are_permanent_and_say_what_they_suppress(
    sink_settings, to, code, suppress
):
    [outcome] = twilio_backend().send_batch([sms(to)])
    assert isinstance(outcome, PermanentProviderError)
    assert outcome.reason.startswith(f"Twilio {code}: ")
    assert outcome.suppress == suppress


def test_a_busy_or_throttling_twilio_is_transient_with_its_retry_after(sink_settings):
    flaky, throttled = twilio_backend().send_batch([sms("+33flaky1"), sms("+33throttled")])
    assert isinstance(flaky, TransientProviderError)
    assert flaky.reason.startswith("Twilio 20503: ")
    assert isinstance(throttled, TransientProviderError)
    assert (throttled.reason, throttled.retry_after) == ("Twilio 20429: Too Many Requests", 7)


def test_wrong_credentials_are_refused_permanently_with_twilios_message(sink):
    settings = sink.provider_settings()
    settings["SALVO_TWILIO"]["auth_token"] = "not-the-token"
    with override_settings(**settings):
        [outcome] = twilio_backend().send_batch([sms("+33600000004")])
    assert isinstance(outcome, PermanentProviderError)
    assert (outcome.reason, outcome.suppress) == ("Twilio 20003: Authenticate", "")


def test_an_unreachable_twilio_and_missing_credentials_are_transient(sink):
    settings = sink.provider_settings()
    settings["SALVO_TWILIO"]["api_url"] = "http://127.0.0.1:9"  # discard: nobody listens
    with override_settings(**settings):
        [outcome] = twilio_backend().send_batch([sms("+33600000005")])
    assert isinstance(outcome, TransientProviderError)
    assert outcome.reason.startswith("Cannot reach Twilio: ")

    settings["SALVO_TWILIO"]["account_sid"] = ""
    refused = pytest.raises(TransientProviderError, match="set TWILIO_ACCOUNT_SID")
    with override_settings(**settings), refused:
        twilio_backend().open()
