"""Email through anymail's Amazon SES backend (boto3, SES v2) to the sink's SES emulation
over real sockets, every request signed with AWS Signature Version 4 and checked by the
sink: what SES received, SES's refusals as Salvo's failures, boto3's retries left to
Salvo's, and a campaign sent through a preset that chooses SES."""

from __future__ import annotations

import time

import requests
from django.test import override_settings

from channels.providers import (
    PermanentProviderError,
    SendResult,
    TransientProviderError,
    get_backend,
)
from channels.providers.esp import SesBackend
from devtools.sinks import RunningSinks
from tests.channels.provider_support import module_sink
from tests.channels.test_esp import UNSUBSCRIBE, attempts_of, message, sender
from tests.channels.test_providers import CLIENT_TIMEOUT_S, SLOW_ANSWER_S, free_port

sink = module_sink(reject="invalid", flaky_times=1, slow="slow", slow_s=SLOW_ANSWER_S)


def ses_sender():
    return sender("ses")


def ses_settings(sink: RunningSinks, **client_params: str) -> dict:
    settings = sink.provider_settings(esp="ses")
    params = settings["ANYMAIL"]["AMAZON_SES_CLIENT_PARAMS"] | client_params
    settings["ANYMAIL"] = settings["ANYMAIL"] | {"AMAZON_SES_CLIENT_PARAMS": params}
    return settings


def test_each_message_is_one_signed_send_email_with_its_own_content_headers_and_metadata(sink):
    messages = [
        message(f"ses-{n}@example.com", f"Hello {n} — ça va", f"Text {n} ü",
                html_body=f"<p>{n}</p>", headers=UNSUBSCRIBE)
        for n in range(2)
    ]  # fmt: skip
    plain = message("ses-plain@example.com", "Receipt", "Paid")

    with (
        override_settings(**sink.provider_settings(esp="ses")),
        get_backend(ses_sender()) as backend,
    ):
        assert isinstance(backend, SesBackend)
        outcomes = backend.send_batch([*messages, plain])

    records = [attempts_of(sink, sent)[0] for sent in (*messages, plain)]
    assert [r["path"] for r in records] == ["/ses/v2/email/outbound-emails"] * 3
    assert [r["status"] for r in records] == [200] * 3
    # One SendEmail per message: each has its own SES message id.
    assert len({r["message_id"] for r in records}) == 3
    assert outcomes == [SendResult(provider_message_id=r["message_id"]) for r in records]
    for n, (sent, record) in enumerate(zip(messages, records[:2], strict=True)):
        assert record["to"] == sent.to
        assert (record["subject"], record["text"], record["html"]) == (
            f"Hello {n} — ça va",
            f"Text {n} ü",
            f"<p>{n}</p>",
        )
        assert record["headers"] == {**UNSUBSCRIBE, "X-Salvo-Delivery-Id": str(sent.delivery_id)}
        assert record["metadata"] == {"salvo_delivery_id": str(sent.delivery_id)}
        # ...and as an SES message tag, which every SES event gives back.
        assert record["tags"] == {"salvo_delivery_id": str(sent.delivery_id)}
        assert (record["from"], record["reply_to"]) == (
            "News <news@example.com>",
            "help@example.com",
        )
    assert records[2]["headers"] == {"X-Salvo-Delivery-Id": str(plain.delivery_id)}


def test_a_refused_recipient_fails_with_ses_own_text_and_the_others_are_sent(sink):
    good, refused = message("ses-ok@example.com"), message("ses-invalid@example.com")

    with (
        override_settings(**sink.provider_settings(esp="ses")),
        get_backend(ses_sender()) as backend,
    ):
        sent, bad = backend.send_batch([good, refused])

    assert isinstance(sent, SendResult)
    assert isinstance(bad, PermanentProviderError)
    assert bad.reason == (
        "Amazon SES answered 400 MessageRejected: Email address is not verified. The "
        "following identities failed the check in region EU-WEST-1: ses-invalid@example.com"
    )


def test_throttling_is_transient_and_boto3_does_not_retry_it_itself(sink):
    throttled = message("ses-throttled@example.com")

    with override_settings(**sink.provider_settings(esp="ses")):
        outcome = get_backend(ses_sender()).send_batch([throttled])[0]

    assert isinstance(outcome, TransientProviderError)
    assert "answered 429 TooManyRequestsException: Maximum sending rate exceeded." in (
        outcome.reason
    )
    # One attempt: Salvo's back-off retries, not boto3 behind its back.
    assert [r["status"] for r in attempts_of(sink, throttled)] == [429]


def test_a_5xx_is_transient_and_the_retry_gets_through(sink):
    flaky = message("ses-flaky@example.com")

    with (
        override_settings(**sink.provider_settings(esp="ses")),
        get_backend(ses_sender()) as backend,
    ):
        first = backend.send_batch([flaky])[0]
        retried = backend.send_batch([flaky])[0]

    assert isinstance(first, TransientProviderError)
    assert "answered 503 ServiceUnavailable" in first.reason
    assert isinstance(retried, SendResult)
    assert [r["status"] for r in attempts_of(sink, flaky)] == [503, 200]


def test_the_sink_refuses_a_wrong_secret_by_its_sigv4_check_and_nothing_is_delivered(sink):
    sent = message("ses-wrong-secret@example.com")

    with override_settings(**ses_settings(sink, aws_secret_access_key="not-the-secret")):
        outcome = get_backend(ses_sender()).send_batch([sent])[0]

    assert isinstance(outcome, PermanentProviderError)
    assert outcome.reason.startswith("Amazon SES answered 403 SignatureDoesNotMatch:")
    assert not attempts_of(sink, sent)


def test_the_sink_refuses_an_unsigned_request_as_ses_does(sink):
    answer = requests.post(
        f"{sink.http_url}/ses/v2/email/outbound-emails", json={"Content": {}}, timeout=5
    )

    assert answer.status_code == 403
    assert answer.headers["x-amzn-ErrorType"].startswith("MissingAuthenticationTokenException")
    assert answer.json() == {"message": "Missing Authentication Token"}


def test_an_unreachable_ses_is_transient(sink):
    sent = message("ses-nowhere@example.com")

    with override_settings(**ses_settings(sink, endpoint_url=f"http://127.0.0.1:{free_port()}")):
        outcome = get_backend(ses_sender()).send_batch([sent])[0]

    assert isinstance(outcome, TransientProviderError)
    assert "Amazon SES cannot be reached" in outcome.reason


def test_a_timeout_is_transient_after_one_attempt(sink):
    slow = message("ses-slow@example.com")
    settings = sink.provider_settings(esp="ses") | {"SALVO_PROVIDER_TIMEOUT_S": CLIENT_TIMEOUT_S}

    with override_settings(**settings), get_backend(ses_sender()) as backend:
        started = time.monotonic()
        outcome = backend.send_batch([slow])[0]
        waited = time.monotonic() - started

    assert isinstance(outcome, TransientProviderError)
    assert "Amazon SES cannot be reached: Read timeout" in outcome.reason
    # One read timeout: boto3 does not try again by itself, Salvo's back-off decides.
    assert CLIENT_TIMEOUT_S <= waited < 2 * CLIENT_TIMEOUT_S


def test_without_aws_credentials_the_message_waits_for_them(sink, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role here
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    settings = sink.provider_settings(esp="ses")
    params = dict(settings["ANYMAIL"]["AMAZON_SES_CLIENT_PARAMS"])
    del params["aws_access_key_id"], params["aws_secret_access_key"]
    settings["ANYMAIL"] = settings["ANYMAIL"] | {"AMAZON_SES_CLIENT_PARAMS": params}
    sent = message("ses-no-credentials@example.com")

    with override_settings(**settings):
        outcome = get_backend(ses_sender()).send_batch([sent])[0]

    assert isinstance(outcome, TransientProviderError)
    assert "no AWS credentials" in outcome.reason
    assert not attempts_of(sink, sent)
