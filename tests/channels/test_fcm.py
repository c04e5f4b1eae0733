"""Push through FCM HTTP v1 to the sink's emulation, over real sockets: the service
account's OAuth token obtained with google-auth from the key's token endpoint (the sink
verifies the JWT's signature), one ``messages:send`` per token, and FCM's answers."""

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.test import override_settings

from channels.choices import ChannelKind, SuppressionReason
from channels.providers import (
    OutboundMessage,
    PermanentProviderError,
    SendResult,
    TransientProviderError,
    backend_choices,
)
from channels.providers.fcm import FcmPushBackend
from devtools.sinks import fcm as fcm_sink
from tests.channels.provider_support import module_sink, outbound, preset_backend

FCM = "channels.providers.fcm.FcmPushBackend"


sink = module_sink(reject="uninstalled", retry_after_s=7)


@pytest.fixture
def sink_settings(sink):
    with override_settings(**sink.provider_settings()):
        yield sink


def push(token: str, title: str = "Hello", body: str = "Hi") -> OutboundMessage:
    return outbound(ChannelKind.PUSH, token, subject=title, body=body)


def fcm_backend() -> FcmPushBackend:
    return preset_backend("push", FCM, FcmPushBackend)


def grants(sink) -> list[dict]:
    return sink.attempts("fcm-token")


def test_the_fcm_backend_is_registered_for_push_only():
    assert FCM in dict(backend_choices("push"))
    assert FCM not in dict(backend_choices("sms"))


def test_a_batch_gets_one_token_and_sends_one_request_per_device_on_one_connection(
    sink_settings,
):
    granted = len(grants(sink_settings))
    messages = [push("device-token-a", "Sale", "Today"), push("device-token-b", "", "Only body")]
    with fcm_backend() as backend:
        outcomes = backend.send_batch(messages)

    assert all(isinstance(o, SendResult) for o in outcomes)
    received = [r for r in sink_settings.received("push") if r["to"].startswith("device-token-")]
    assert [r["json"]["message"] for r in received] == [
        {
            "token": "device-token-a",
            "notification": {"body": "Today", "title": "Sale"},
            "data": {"salvo_delivery_id": str(messages[0].delivery_id)},
        },
        {
            "token": "device-token-b",
            "notification": {"body": "Only body"},
            "data": {"salvo_delivery_id": str(messages[1].delivery_id)},
        },
    ]
    assert [r["path"] for r in received] == [
        f"/v1/projects/{fcm_sink.PROJECT_ID}/messages:send"
    ] * 2
    assert [o.provider_message_id for o in outcomes] == [r["message_id"] for r in received]
    assert len({r["peer"] for r in received}) == 1
    assert all(r["headers"]["authorization"].startswith("Bearer ya29.sink-") for r in received)
    # At most one grant: the token of an earlier test of this process is still good.
    assert len(grants(sink_settings)) - granted <= 1
    assert all(g["accepted"] for g in grants(sink_settings))

    with fcm_backend() as backend:  # a later batch reuses the token
        backend.send(push("device-token-c"))
    assert len(grants(sink_settings)) - granted <= 1


@pytest.mark.parametrize(
    ("token", "code", "suppress"),
    [
        ("uninstalled-app-token", "UNREGISTERED", SuppressionReason.INVALID_ADDRESS),
        ("not a token!", "INVALID_ARGUMENT", SuppressionReason.INVALID_ADDRESS),
    ],
)
def test_a_token_that_reaches_no_device_is_refused_permanently_and_suppressed(
    sink_settings, token, code, suppress
):
    [outcome] = fcm_backend().send_batch([push(token)])
    assert isinstance(outcome, PermanentProviderError)
    assert outcome.reason.startswith(f"FCM {code}: ")
    assert outcome.suppress == suppress


def test_another_project_is_refused_without_suppressing_the_token(sink):
    settings = sink.provider_settings()
    settings["SALVO_FCM"]["project_id"] = "someone-elses"
    with override_settings(**settings):
        [outcome] = fcm_backend().send_batch([push("device-token-d")])
    assert isinstance(outcome, PermanentProviderError)
    assert (outcome.reason, outcome.suppress) == ("FCM SENDER_ID_MISMATCH: SenderId mismatch", "")


def test_an_unavailable_or_throttling_fcm_is_transient_with_its_retry_after(sink_settings):
    flaky, throttled = fcm_backend().send_batch([push("flaky-token"), push("throttled-token")])
    assert isinstance(flaky, TransientProviderError)
    assert flaky.reason.startswith("FCM UNAVAILABLE: ")
    assert isinstance(throttled, TransientProviderError)
    assert throttled.reason.startswith("FCM QUOTA_EXCEEDED: ")
    assert throttled.retry_after == 7


def test_a_key_the_token_endpoint_does_not_know_gets_no_token_and_sends_nothing(sink, tmp_path):
    real = json.loads(sink.fcm_key_file.read_text())
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = real | {
        "private_key": other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    }
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    settings = sink.provider_settings()
    settings["SALVO_FCM"]["credentials_file"] = str(tmp_path / "forged.json")
    sent = len(sink.attempts("push"))
    with override_settings(**settings):
        [outcome] = fcm_backend().send_batch([push("device-token-e")])
    assert isinstance(outcome, TransientProviderError)
    assert "Invalid JWT Signature" in outcome.reason
    assert grants(sink)[-1]["error"] == "Invalid JWT Signature."
    assert len(sink.attempts("push")) == sent


def test_a_missing_key_file_or_an_unreachable_fcm_is_transient(sink, tmp_path):
    settings = sink.provider_settings()
    settings["SALVO_FCM"]["credentials_file"] = str(tmp_path / "absent.json")
    with override_settings(**settings):
        [outcome] = fcm_backend().send_batch([push("device-token-f")])
    assert isinstance(outcome, TransientProviderError)
    assert outcome.reason.startswith(f"Cannot read the FCM key file {tmp_path / 'absent.json'}")

    settings = sink.provider_settings()
    settings["SALVO_FCM"]["api_url"] = "http://127.0.0.1:9"
    with override_settings(**settings):
        [outcome] = fcm_backend().send_batch([push("device-token-g")])
    assert isinstance(outcome, TransientProviderError)
    assert outcome.reason.startswith("Cannot reach FCM: ")
