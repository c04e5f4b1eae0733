"""Provider backends against the local sink servers, over real sockets."""

import email
import http.server
import logging
import re
import socket
import threading
from email.message import EmailMessage
from email.policy import default as default_policy

import pytest
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.test import override_settings

from channels.choices import ChannelKind
from channels.models import MessagePreset
from channels.providers import (
    OutboundMessage,
    PermanentProviderError,
    SendResult,
    TransientProviderError,
    get_backend,
)
from channels.providers.console import ConsoleBackend
from channels.providers.email import EmailBackend
from channels.providers.http import (
    PushBackend,
    SmsBackend,
    WebhookBackend,
    verify_webhook_signature,
)
from devtools.sinks import running_sinks
from tests.channels.factories import MessagePresetFactory

# A slow recipient's answer comes long after the client gave up, however busy the machine;
# the client's timeout leaves room for a loaded machine to connect and greet first.
SLOW_ANSWER_S = 5.0
CLIENT_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def sink():
    with running_sinks(
        reject="invalid",
        flaky="flaky",
        flaky_times=1,
        throttle="throttled",
        throttle_times=5,
        retry_after_s=7,
        slow="slow",
        slow_s=SLOW_ANSWER_S,
    ) as running:
        yield running


@pytest.fixture
def sink_settings(sink):
    with override_settings(**sink.provider_settings()):
        yield sink


_ids = iter(range(1_000_000, 2_000_000))


def message(channel=ChannelKind.SMS, to="+33600000001", **fields) -> OutboundMessage:
    fields.setdefault("subject", "")
    fields.setdefault("body", "Hello")
    return OutboundMessage(delivery_id=next(_ids), channel=channel, to=to, **fields)


def preset(channel, **fields) -> MessagePreset:
    return MessagePresetFactory.build(channel=channel, **fields)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def parsed_email(record) -> EmailMessage:
    return email.message_from_string(record["raw"], policy=default_policy)


# --- choosing a backend ------------------------------------------------------------------


def test_backend_comes_from_settings_per_channel_and_preset_can_override():
    with override_settings(SALVO_PROVIDER_BACKENDS={"sms": "channels.providers.http.SmsBackend"}):
        assert isinstance(get_backend(preset(ChannelKind.SMS)), SmsBackend)
        overridden = preset(ChannelKind.SMS, backend="channels.providers.console.ConsoleBackend")
        assert isinstance(get_backend(overridden), ConsoleBackend)


def test_embedded_default_backends_never_leave_the_machine(caplog):
    for channel in ChannelKind.values:
        assert isinstance(get_backend(preset(channel)), ConsoleBackend)
    caplog.set_level(logging.INFO, logger="salvo.providers.console")
    with get_backend(preset(ChannelKind.EMAIL)) as backend:
        result = backend.send(message(ChannelKind.EMAIL, to="ann@example.com", subject="Hi"))
    assert result.provider_message_id.startswith("console-")
    assert "ann@example.com" in caplog.text
    assert "'Hi'" in caplog.text


@pytest.mark.django_db
def test_preset_backend_must_be_a_registered_provider_backend():
    bad = preset(ChannelKind.SMS, backend="channels.providers.nope.Missing")
    with pytest.raises(ValidationError) as excinfo:
        bad.full_clean()
    assert "not a registered provider backend" in str(excinfo.value.message_dict["backend"])
    not_a_backend = preset(ChannelKind.SMS, backend="channels.models.MessagePreset")
    with pytest.raises(ValidationError):
        not_a_backend.full_clean()


@pytest.mark.django_db
def test_preset_rate_limit_must_be_positive():
    with pytest.raises(ValidationError) as excinfo:
        preset(ChannelKind.SMS, rate_limit_per_second=0).full_clean()
    assert "rate_limit_per_second" in excinfo.value.message_dict
    preset(ChannelKind.SMS, rate_limit_per_second=2.5).full_clean()


# --- email ---------------------------------------------------------------------------


def test_email_arrives_with_text_and_html_parts_and_headers(sink_settings):
    sender = preset(
        ChannelKind.EMAIL,
        from_name="Salvo News",
        from_email="news@example.com",
        reply_to="help@example.com",
    )
    outbound = message(
        ChannelKind.EMAIL,
        to="ann@example.com",
        subject="Spring sale",
        body="Hello Ann",
        html_body="<p>Hello <b>Ann</b></p>",
        headers={"List-Unsubscribe": "<https://example.com/u/1>"},
    )
    with get_backend(sender) as backend:
        result = backend.send(outbound)

    [record] = [r for r in sink_settings.received("email") if r["to"] == "ann@example.com"]
    assert record["delivery_id"] == str(outbound.delivery_id)
    received = parsed_email(record)
    assert received["Subject"] == "Spring sale"
    assert received["From"] == "Salvo News <news@example.com>"
    assert received["Reply-To"] == "help@example.com"
    assert received["List-Unsubscribe"] == "<https://example.com/u/1>"
    assert received["Message-ID"].strip().strip("<>") == result.provider_message_id
    text_part, html_part = received.get_body(("plain",)), received.get_body(("html",))
    assert text_part is not None
    assert html_part is not None
    assert text_part.get_content().strip() == "Hello Ann"
    assert html_part.get_content().strip() == "<p>Hello <b>Ann</b></p>"


def test_email_batch_reuses_one_connection(sink_settings):
    recipients = [f"batch{n}@example.com" for n in range(3)]
    with EmailBackend(preset(ChannelKind.EMAIL)) as backend:
        for to in recipients:
            backend.send(message(ChannelKind.EMAIL, to=to, subject="s"))
    records = [r for r in sink_settings.received("email") if r["to"] in recipients]
    assert len(records) == 3
    assert len({r["peer"] for r in records}) == 1


def test_refused_email_recipient_is_permanent_and_the_batch_goes_on(sink_settings):
    with EmailBackend(preset(ChannelKind.EMAIL)) as backend:
        with pytest.raises(PermanentProviderError) as excinfo:
            backend.send(message(ChannelKind.EMAIL, to="invalid@example.com", subject="s"))
        backend.send(message(ChannelKind.EMAIL, to="after-refusal@example.com", subject="s"))
    assert "550" in excinfo.value.reason
    assert "Recipient address rejected" in excinfo.value.reason
    assert [r["to"] for r in sink_settings.received("email")].count("after-refusal@example.com")


def test_email_4xx_is_transient_and_a_retry_gets_through(sink_settings):
    outbound = message(ChannelKind.EMAIL, to="flaky@example.com", subject="s")
    with EmailBackend(preset(ChannelKind.EMAIL)) as backend:
        with pytest.raises(TransientProviderError) as excinfo:
            backend.send(outbound)
        backend.send(outbound)
    assert "451" in excinfo.value.reason
    accepted = [r for r in sink_settings.received("email") if r["to"] == "flaky@example.com"]
    assert len(accepted) == 1


def test_unreachable_mail_server_is_transient():
    with override_settings(
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=free_port(),
    ):
        backend = EmailBackend(preset(ChannelKind.EMAIL))
        with pytest.raises(TransientProviderError, match="Cannot connect"):
            backend.open()
        with pytest.raises(TransientProviderError):
            backend.send(message(ChannelKind.EMAIL, to="ann@example.com"))


def test_email_server_timeout_is_transient_and_the_next_message_reconnects(sink_settings):
    backend = EmailBackend(preset(ChannelKind.EMAIL))
    with override_settings(EMAIL_TIMEOUT=CLIENT_TIMEOUT_S):
        backend.open()  # this connection gives up on a silent server after CLIENT_TIMEOUT_S
    try:
        with pytest.raises(TransientProviderError, match="timed out"):
            backend.send(message(ChannelKind.EMAIL, to="slow@example.com", subject="s"))
        # The timed-out connection was dropped: the next message reconnects, with the
        # default timeout.
        backend.send(message(ChannelKind.EMAIL, to="after-timeout@example.com", subject="s"))
    finally:
        backend.close()
    recipients = [r["to"] for r in sink_settings.received("email")]
    assert recipients.count("after-timeout@example.com") == 1


# --- HTTP providers --------------------------------------------------------------------


def test_sms_is_posted_with_idempotency_key_and_api_key(sink_settings):
    outbound = message(ChannelKind.SMS, to="+33611111111", body="Code 1234")
    with get_backend(preset(ChannelKind.SMS, sms_sender_id="SALVO")) as backend:
        result = backend.send(outbound)

    [record] = [r for r in sink_settings.received("sms") if r["to"] == "+33611111111"]
    assert record["json"] == {"from": "SALVO", "to": "+33611111111", "text": "Code 1234"}
    assert record["headers"]["idempotency-key"] == str(outbound.delivery_id)
    assert record["headers"]["authorization"] == "Bearer sink-key"
    assert result == SendResult(provider_message_id=record["message_id"])


def test_http_batch_reuses_one_connection(sink_settings):
    phones = [f"+3362222222{n}" for n in range(3)]
    with SmsBackend(preset(ChannelKind.SMS)) as backend:
        for phone in phones:
            backend.send(message(ChannelKind.SMS, to=phone))
    records = [r for r in sink_settings.received("sms") if r["to"] in phones]
    assert len(records) == 3
    assert len({r["peer"] for r in records}) == 1


def test_push_carries_app_token_title_and_body(sink_settings):
    with PushBackend(preset(ChannelKind.PUSH, push_app_id="com.example.app")) as backend:
        backend.send(message(ChannelKind.PUSH, to="tok-123", subject="Sale", body="Now on"))
    [record] = [r for r in sink_settings.received("push") if r["to"] == "tok-123"]
    assert record["json"] == {
        "app_id": "com.example.app",
        "token": "tok-123",
        "title": "Sale",
        "body": "Now on",
    }


def test_http_5xx_is_transient_then_the_retry_succeeds(sink_settings):
    outbound = message(ChannelKind.SMS, to="+33600flaky")
    with SmsBackend(preset(ChannelKind.SMS)) as backend:
        with pytest.raises(TransientProviderError) as excinfo:
            backend.send(outbound)
        backend.send(outbound)
    assert excinfo.value.reason.startswith("HTTP 503")
    attempts = [r["status"] for r in sink_settings.attempts("sms") if r["to"] == "+33600flaky"]
    assert attempts == [503, 200]


def test_http_429_is_transient_and_honours_retry_after(sink_settings):
    with (
        PushBackend(preset(ChannelKind.PUSH)) as backend,
        pytest.raises(TransientProviderError) as excinfo,
    ):
        backend.send(message(ChannelKind.PUSH, to="throttled-token"))
    assert excinfo.value.retry_after == 7
    assert excinfo.value.reason == "HTTP 429: Too many requests"


def test_http_4xx_is_permanent_with_the_providers_reason(sink_settings):
    with (
        SmsBackend(preset(ChannelKind.SMS)) as backend,
        pytest.raises(PermanentProviderError) as excinfo,
    ):
        backend.send(message(ChannelKind.SMS, to="+336invalid"))
    assert excinfo.value.reason == "HTTP 400: Invalid recipient +336invalid"


def test_http_timeout_is_transient(sink_settings):
    with (
        override_settings(SALVO_PROVIDER_TIMEOUT_S=CLIENT_TIMEOUT_S),
        SmsBackend(preset(ChannelKind.SMS)) as backend,
        pytest.raises(TransientProviderError, match=re.escape(f"within {CLIENT_TIMEOUT_S:g}s")),
    ):
        backend.send(message(ChannelKind.SMS, to="+336slow"))


def test_unreachable_http_provider_is_transient():
    with (
        override_settings(
            SALVO_SMS_PROVIDER={"url": f"http://127.0.0.1:{free_port()}/sms", "api_key": ""}
        ),
        pytest.raises(TransientProviderError, match="Cannot reach"),
    ):
        SmsBackend(preset(ChannelKind.SMS)).send(message(ChannelKind.SMS))


def test_webhook_is_signed_and_carries_profile_data(sink_settings):
    hook = preset(ChannelKind.WEBHOOK, webhook_url=f"{sink_settings.webhook_url}/crm")
    outbound = message(
        ChannelKind.WEBHOOK,
        to="",
        subject="Welcome",
        body="Hi Ann",
        payload={"external_id": "ann", "first_name": "Ann"},
    )
    with override_settings(SALVO_WEBHOOK_SECRET="s3cret"), WebhookBackend(hook) as backend:
        backend.send(outbound)

    [record] = [
        r
        for r in sink_settings.received("webhook")
        if r["delivery_id"] == str(outbound.delivery_id)
    ]
    assert record["path"] == "/webhook/crm"
    assert record["json"] == {
        "delivery_id": outbound.delivery_id,
        "profile": {"external_id": "ann", "first_name": "Ann"},
        "subject": "Welcome",
        "body": "Hi Ann",
    }
    headers = record["headers"]
    assert verify_webhook_signature(
        secret="s3cret",
        timestamp=headers["x-salvo-timestamp"],
        body=record["raw"].encode(),
        signature=headers["x-salvo-signature"],
    )
    assert not verify_webhook_signature(
        secret="other",
        timestamp=headers["x-salvo-timestamp"],
        body=record["raw"].encode(),
        signature=headers["x-salvo-signature"],
    )


def test_the_sink_counts_a_delivery_sent_twice_as_a_duplicate(sink_settings):
    before = sink_settings.duplicates()
    outbound = message(ChannelKind.SMS, to="+33633333333")
    with SmsBackend(preset(ChannelKind.SMS)) as backend:
        backend.send(outbound)
        backend.send(outbound)
    assert sink_settings.duplicates() == before + 1


# --- bulk APIs ----------------------------------------------------------------------------


def test_sms_bulk_request_answers_each_message_on_its_own(sink_settings):
    messages = [
        message(ChannelKind.SMS, to="+33630000001", body="One"),
        message(ChannelKind.SMS, to="+33630000002-invalid", body="Two"),
        message(ChannelKind.SMS, to="+33630000003-flaky", body="Three"),
        message(ChannelKind.SMS, to="+33630000004-throttled", body="Four"),
    ]
    with SmsBackend(preset(ChannelKind.SMS, sms_sender_id="SALVO")) as backend:
        ok, refused, flaky, throttled = backend.send_batch(messages)

    assert isinstance(ok, SendResult)
    assert isinstance(refused, PermanentProviderError)
    assert "HTTP 400" in refused.reason
    assert "Invalid recipient" in refused.reason
    assert isinstance(flaky, TransientProviderError)
    assert "HTTP 503" in flaky.reason
    assert isinstance(throttled, TransientProviderError)
    assert throttled.retry_after == 7
    attempts = [r for r in sink_settings.attempts("sms") if r["to"].startswith("+3363000000")]
    assert [r["path"] for r in attempts] == ["/sms/batch"] * 4
    assert len({r["peer"] for r in attempts}) == 1
    # Each message carries its delivery id as its idempotency key.
    assert [r["delivery_id"] for r in attempts] == [str(m.delivery_id) for m in messages]
    assert attempts[0]["json"] == {
        "from": "SALVO",
        "to": "+33630000001",
        "text": "One",
        "idempotency_key": str(messages[0].delivery_id),
    }
    assert attempts[0]["headers"]["authorization"] == "Bearer sink-key"
    assert ok == SendResult(provider_message_id=attempts[0]["message_id"])


def test_push_bulk_request_carries_every_message(sink_settings):
    tokens = [f"bulk-token-{n}" for n in range(3)]
    with PushBackend(preset(ChannelKind.PUSH, push_app_id="com.example.app")) as backend:
        outcomes = backend.send_batch(
            [message(ChannelKind.PUSH, to=t, subject="Title", body="Body") for t in tokens]
        )
    assert all(isinstance(o, SendResult) for o in outcomes)
    records = [r for r in sink_settings.received("push") if r["to"] in tokens]
    assert sorted(r["to"] for r in records) == tokens
    assert records[0]["json"]["app_id"] == "com.example.app"


def test_a_bulk_request_that_times_out_makes_every_message_transient(sink_settings):
    messages = [message(to="+33640000001"), message(to="+33640000002-slow")]
    with (
        override_settings(SALVO_PROVIDER_TIMEOUT_S=CLIENT_TIMEOUT_S),
        SmsBackend(preset(ChannelKind.SMS)) as backend,
    ):
        outcomes = backend.send_batch(messages)
    assert all(isinstance(o, TransientProviderError) for o in outcomes)
    assert "No answer" in outcomes[0].reason


def test_a_bulk_request_answered_5xx_is_transient_and_4xx_permanent_for_all():
    answers = iter([(503, b'{"error": "down"}'), (401, b'{"error": "bad key"}')])

    class Provider(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            status, body = next(answers)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Retry-After", "3")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Provider)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/sms"
    try:
        with (
            override_settings(SALVO_SMS_PROVIDER={"url": url, "api_key": ""}),
            SmsBackend(preset(ChannelKind.SMS)) as backend,
        ):
            down = backend.send_batch([message(), message()])
            refused = backend.send_batch([message(), message()])
    finally:
        server.shutdown()
        server.server_close()
    assert all(isinstance(o, TransientProviderError) for o in down)
    assert down[0].reason == "HTTP 503: down"
    assert down[0].retry_after == 3
    assert all(isinstance(o, PermanentProviderError) for o in refused)
    assert refused[1].reason == "HTTP 401: bad key"


def test_unreachable_bulk_provider_is_transient_for_every_message():
    url = f"http://127.0.0.1:{free_port()}/sms"
    with override_settings(SALVO_SMS_PROVIDER={"url": url, "api_key": ""}):
        outcomes = SmsBackend(preset(ChannelKind.SMS)).send_batch([message(), message()])
    assert all(isinstance(o, TransientProviderError) for o in outcomes)


def test_default_send_batch_calls_send_for_each_message(sink_settings):
    # Webhooks stay one request per recipient, over one connection.
    urls = [f"{sink_settings.http_url}/webhook/{n}" for n in range(2)]
    with WebhookBackend(preset(ChannelKind.WEBHOOK)) as backend:
        outcomes = backend.send_batch(
            [message(ChannelKind.WEBHOOK, to=url, payload={"n": 1}) for url in urls]
            + [message(ChannelKind.WEBHOOK, to=f"{sink_settings.http_url}/webhook/invalid")]
        )
    assert [type(o) for o in outcomes] == [SendResult, SendResult, PermanentProviderError]
    records = [r for r in sink_settings.attempts("webhook") if r["path"].startswith("/webhook/")]
    assert len({r["peer"] for r in records[-3:]}) == 1


def test_smtp_send_batch_sends_each_message_and_refuses_one(sink_settings):
    with EmailBackend(preset(ChannelKind.EMAIL, from_email="news@example.com")) as backend:
        outcomes = backend.send_batch(
            [
                message(ChannelKind.EMAIL, to="smtp-batch-1@example.com", subject="S"),
                message(ChannelKind.EMAIL, to="smtp-batch-invalid@example.com", subject="S"),
                message(ChannelKind.EMAIL, to="smtp-batch-2@example.com", subject="S"),
            ]
        )
    assert [type(o) for o in outcomes] == [SendResult, PermanentProviderError, SendResult]
    received = [r["to"] for r in sink_settings.received("email")]
    assert {"smtp-batch-1@example.com", "smtp-batch-2@example.com"} <= set(received)


# --- the HTTP batch email API ---------------------------------------------------------------


@pytest.fixture
def email_api_settings(sink):
    with override_settings(**sink.provider_settings(email_api=True)):
        yield sink


def test_email_batch_api_posts_both_parts_and_list_unsubscribe(email_api_settings):
    sender = preset(
        ChannelKind.EMAIL,
        from_email="news@example.com",
        from_name="News",
        reply_to="help@example.com",
    )
    unsubscribe = "<mailto:help@example.com?subject=unsubscribe>"
    messages = [
        message(
            ChannelKind.EMAIL,
            to=f"api-{n}@example.com",
            subject=f"Hello {n}",
            body=f"Text {n}",
            html_body=f"<p>HTML {n}</p>",
            headers={"List-Unsubscribe": unsubscribe},
        )
        for n in range(2)
    ] + [message(ChannelKind.EMAIL, to="api-invalid@example.com", subject="S")]
    with EmailBackend(sender) as backend:
        first, second, refused = backend.send_batch(messages)

    assert isinstance(first, SendResult)
    assert isinstance(second, SendResult)
    assert isinstance(refused, PermanentProviderError)
    assert "HTTP 400" in refused.reason
    attempts = [r for r in email_api_settings.attempts("email") if r["to"].startswith("api-")]
    assert [r["path"] for r in attempts] == ["/email/batch"] * 3
    assert [r["delivery_id"] for r in attempts] == [str(m.delivery_id) for m in messages]
    sent = attempts[0]["json"]
    assert sent["from"] == "News <news@example.com>"
    assert sent["to"] == ["api-0@example.com"]
    assert sent["reply_to"] == ["help@example.com"]
    assert (sent["subject"], sent["text"], sent["html"]) == ("Hello 0", "Text 0", "<p>HTML 0</p>")
    assert sent["headers"]["List-Unsubscribe"] == unsubscribe
    assert f"salvo.{messages[0].delivery_id}@" in sent["headers"]["Message-ID"]
    assert first == SendResult(provider_message_id=attempts[0]["message_id"])


def test_email_batch_api_is_a_django_email_backend(email_api_settings):
    sent = send_mail("Hi", "Body", "from@example.com", ["api-django@example.com"])
    assert sent == 1
    [record] = [
        r for r in email_api_settings.received("email") if r["to"] == "api-django@example.com"
    ]
    assert record["json"]["subject"] == "Hi"
    with pytest.raises(PermanentProviderError):
        send_mail("Hi", "Body", "from@example.com", ["api-invalid@example.com"])
    assert (
        send_mail("Hi", "B", "f@example.com", ["api-invalid@example.com"], fail_silently=True) == 0
    )


def test_email_batch_api_unreachable_is_transient_for_every_message():
    url = f"http://127.0.0.1:{free_port()}/email"
    with override_settings(
        EMAIL_BACKEND="channels.providers.email_api.BatchEmailBackend",
        SALVO_EMAIL_API={"url": url, "api_key": ""},
    ):
        outcomes = EmailBackend(preset(ChannelKind.EMAIL)).send_batch(
            [
                message(ChannelKind.EMAIL, to="a@example.com"),
                message(ChannelKind.EMAIL, to="b@example.com"),
            ]
        )
    assert all(isinstance(o, TransientProviderError) for o in outcomes)
