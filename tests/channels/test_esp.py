"""Email through django-anymail's own ESP backends, to the sink's emulation of Mailgun's,
Postmark's and SendGrid's HTTP APIs over real sockets: what each ESP received, batch calls,
refusals, retries, and a whole campaign sent through a preset that chooses an ESP."""

from __future__ import annotations

import json

import pytest
import requests
from django.test import override_settings
from django.urls import reverse

from campaigns.choices import DeliveryStatus
from campaigns.models import Delivery
from channels.choices import ChannelKind
from channels.providers import (
    OutboundMessage,
    PermanentProviderError,
    SendResult,
    TransientProviderError,
    get_backend,
)
from channels.providers.esp import (
    SENDGRID_SUBSTITUTIONS_MAX_BYTES,
    MailgunBackend,
    PostmarkBackend,
    SendGridBackend,
)
from devtools.sinks import RunningSinks, running_sinks
from devtools.sinks.esp import SINK_API_KEY
from devtools.sinks.running import ESP_BACKENDS
from tests.campaigns.delivery_support import drive, make_profile, time_passes
from tests.campaigns.factories import email_action, make_live_campaign
from tests.channels.factories import MessagePresetFactory
from tests.channels.provider_support import module_sink, outbound
from tests.channels.test_providers import CLIENT_TIMEOUT_S, SLOW_ANSWER_S, free_port

ESPS = pytest.mark.parametrize("esp", ["mailgun", "postmark", "sendgrid"])
# With Amazon SES (tests/channels/test_ses.py has its own): what every ESP shares.
ALL_ESPS = pytest.mark.parametrize("esp", ["mailgun", "postmark", "sendgrid", "ses"])
# What each ESP says of a refused recipient, kept as the delivery's error.
ESP_REFUSAL = {
    "mailgun": 'Mailgun answered 400: {"message": "to parameter is not a valid address.',
    "postmark": "marked as inactive.",
    "sendgrid": 'SendGrid answered 400: {"errors": [{"message": "Does not contain a valid',
    "ses": "Amazon SES answered 400 MessageRejected",
}
UNSUBSCRIBE = {
    "List-Unsubscribe": "<https://salvo.example.com/u/abc>, <mailto:help@example.com>",
    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
}


sink = module_sink(
    reject="invalid", flaky_times=1, retry_after_s=7, slow="slow", slow_s=SLOW_ANSWER_S
)


def message(to: str, subject: str = "Hello", body: str = "Text", **fields) -> OutboundMessage:
    return outbound("email", to, subject=subject, body=body, **fields)


def sender(esp: str):
    return MessagePresetFactory.build(
        channel=ChannelKind.EMAIL,
        from_name="News",
        from_email="news@example.com",
        reply_to="help@example.com",
        backend=ESP_BACKENDS[esp],
    )


def received_by(sink: RunningSinks, *messages: OutboundMessage) -> list[dict]:
    """What the ESP accepted of these messages, in the order sent."""
    ids = [str(m.delivery_id) for m in messages]
    found = {r["delivery_id"]: r for r in sink.received("email") if r["delivery_id"] in ids}
    return [found[i] for i in ids if i in found]


def attempts_of(sink: RunningSinks, sent: OutboundMessage) -> list[dict]:
    return [r for r in sink.attempts("email") if r["delivery_id"] == str(sent.delivery_id)]


def test_postmark_sends_one_batch_call_per_content_with_each_recipients_headers(sink):
    same = [message(f"pm-{n}@example.com", headers=UNSUBSCRIBE) for n in range(3)]
    personal = message("pm-own@example.com", "Hi Ana", "Just for you", html_body="<p>Ana</p>")

    with (
        override_settings(**sink.provider_settings(esp="postmark")),
        get_backend(sender("postmark")) as backend,
    ):
        assert isinstance(backend, PostmarkBackend)
        outcomes = backend.send_batch([*same, personal])

    records = received_by(sink, *same, personal)
    assert [r["path"] for r in records] == ["/postmark/email/batch"] * 3 + ["/postmark/email"]
    assert [r["to"] for r in records] == [m.to for m in (*same, personal)]
    assert outcomes == [SendResult(provider_message_id=r["message_id"]) for r in records]
    first = records[0]
    assert (first["from"], first["reply_to"]) == ("News <news@example.com>", "help@example.com")
    assert (first["subject"], first["text"], first["html"]) == ("Hello", "Text", "")
    assert first["headers"] == {**UNSUBSCRIBE, "X-Salvo-Delivery-Id": str(same[0].delivery_id)}
    assert first["metadata"] == {"salvo_delivery_id": str(same[0].delivery_id)}
    own = records[3]
    assert (own["subject"], own["text"], own["html"]) == ("Hi Ana", "Just for you", "<p>Ana</p>")
    assert own["headers"] == {"X-Salvo-Delivery-Id": str(personal.delivery_id)}
    assert own["metadata"] == {"salvo_delivery_id": str(personal.delivery_id)}


def test_sendgrid_carries_personalised_messages_in_one_request(sink):
    messages = [
        message(f"sg-{n}@example.com", f"Hello {n}", f"Text {n}", html_body=f"<p>{n}</p>",
                headers=UNSUBSCRIBE)
        for n in range(3)
    ]  # fmt: skip

    with (
        override_settings(**sink.provider_settings(esp="sendgrid")),
        get_backend(sender("sendgrid")) as backend,
    ):
        assert isinstance(backend, SendGridBackend)
        outcomes = backend.send_batch(messages)

    records = received_by(sink, *messages)
    # One request: SendGrid's X-Message-Id is the request's, shared by its personalizations.
    assert len({r["message_id"] for r in records}) == 1
    assert [r["path"] for r in records] == ["/sendgrid/v3/mail/send"] * 3
    assert all(isinstance(outcome, SendResult) and outcome.provider_message_id
               for outcome in outcomes)  # fmt: skip
    for n, (sent, record) in enumerate(zip(messages, records, strict=True)):
        assert record["to"] == sent.to
        assert (record["subject"], record["text"], record["html"]) == (
            f"Hello {n}",
            f"Text {n}",
            f"<p>{n}</p>",
        )
        assert record["headers"] == {**UNSUBSCRIBE, "X-Salvo-Delivery-Id": str(sent.delivery_id)}
        assert record["metadata"]["salvo_delivery_id"] == str(sent.delivery_id)
        assert record["from"] == "news@example.com"


def test_mailgun_carries_personalised_messages_in_one_request_with_each_recipients_headers(sink):
    messages = [
        message(f"mg-{n}@example.com", f"Hello {n} % 100%", f"Text {n}",
                html_body=f"<p>{n}</p>", headers=UNSUBSCRIBE)
        for n in range(3)
    ]  # fmt: skip
    # Without List-Unsubscribe (a transactional message): in a call of its own, so that
    # no recipient of the batch gets an empty List-Unsubscribe.
    plain = message("mg-plain@example.com", "Receipt", "Paid", html_body="<p>Paid</p>")

    with (
        override_settings(**sink.provider_settings(esp="mailgun")),
        get_backend(sender("mailgun")) as backend,
    ):
        assert isinstance(backend, MailgunBackend)
        outcomes = backend.send_batch([messages[0], plain, *messages[1:]])

    records = received_by(sink, *messages, plain)
    batch, alone = records[:3], records[3]
    # One request: Mailgun's id is the request's, shared by its recipients.
    assert len({r["message_id"] for r in batch}) == 1
    assert alone["message_id"] not in {r["message_id"] for r in batch}
    assert {r["path"] for r in records} == {"/mailgun/v3/example.com/messages"}
    assert outcomes == [
        SendResult(provider_message_id=r["message_id"]) for r in (batch[0], alone, *batch[1:])
    ]
    for n, (sent, record) in enumerate(zip(messages, batch, strict=True)):
        assert record["to"] == sent.to
        assert (record["subject"], record["text"], record["html"]) == (
            f"Hello {n} % 100%",
            f"Text {n}",
            f"<p>{n}</p>",
        )
        assert record["headers"] == {**UNSUBSCRIBE, "X-Salvo-Delivery-Id": str(sent.delivery_id)}
        assert record["metadata"] == {"salvo_delivery_id": str(sent.delivery_id)}
        assert (record["from"], record["reply_to"]) == (
            "News <news@example.com>",
            "help@example.com",
        )
    assert (alone["subject"], alone["text"], alone["html"]) == ("Receipt", "Paid", "<p>Paid</p>")
    assert alone["headers"] == {"X-Salvo-Delivery-Id": str(plain.delivery_id)}
    assert alone["metadata"] == {"salvo_delivery_id": str(plain.delivery_id)}


def test_a_mailgun_batch_holds_at_most_its_bytes_of_content(sink, monkeypatch):
    monkeypatch.setattr(MailgunBackend, "batch_max_bytes", 2 * len(b"Hello 0Text 0"))
    messages = [message(f"mg-bytes-{n}@example.com", f"Hello {n}", f"Text {n}") for n in range(3)]

    with override_settings(**sink.provider_settings(esp="mailgun")):
        outcomes = get_backend(sender("mailgun")).send_batch(messages)

    records = received_by(sink, *messages)
    assert [r["text"] for r in records] == ["Text 0", "Text 1", "Text 2"]
    first, second, third = (r["message_id"] for r in records)
    assert first == second != third
    assert all(isinstance(outcome, SendResult) for outcome in outcomes)


@ESPS
def test_a_refused_recipient_fails_with_the_esps_message_and_the_others_are_sent(sink, esp):
    good = [message(f"{esp}-ok-{n}@example.com") for n in range(2)]
    refused = message(f"{esp}-invalid@example.com")

    with (
        override_settings(**sink.provider_settings(esp=esp)),
        get_backend(sender(esp)) as backend,
    ):
        first, bad, second = backend.send_batch([good[0], refused, good[1]])

    assert isinstance(first, SendResult)
    assert isinstance(second, SendResult)
    assert isinstance(bad, PermanentProviderError)
    says = {
        "mailgun": 'Mailgun answered 400: {"message": "to parameter is not a valid address.',
        "postmark": "marked as inactive",
        "sendgrid": 'SendGrid answered 400: {"errors": [{"message": "Does not contain a valid',
    }[esp]
    assert says in bad.reason
    assert [r["to"] for r in received_by(sink, *good, refused)] == [m.to for m in good]


@ESPS
def test_a_5xx_is_transient_and_the_retry_gets_through(sink, esp):
    flaky = message(f"{esp}-flaky@example.com")

    with (
        override_settings(**sink.provider_settings(esp=esp)),
        get_backend(sender(esp)) as backend,
    ):
        first = backend.send_batch([flaky])[0]
        retried = backend.send_batch([flaky])[0]

    assert isinstance(first, TransientProviderError)
    assert "answered 503" in first.reason
    assert isinstance(retried, SendResult)
    assert [r["status"] for r in attempts_of(sink, flaky)] == [503, 200]


@ESPS
def test_a_429_is_transient_and_honours_retry_after(sink, esp):
    throttled = message(f"{esp}-throttled@example.com")

    with override_settings(**sink.provider_settings(esp=esp)):
        outcome = get_backend(sender(esp)).send_batch([throttled])[0]

    assert isinstance(outcome, TransientProviderError)
    assert outcome.retry_after == 7
    assert "answered 429" in outcome.reason


@ESPS
def test_a_timeout_is_transient(sink, esp):
    slow = message(f"{esp}-slow@example.com")
    settings = sink.provider_settings(esp=esp)
    settings["ANYMAIL"] = settings["ANYMAIL"] | {"REQUESTS_TIMEOUT": CLIENT_TIMEOUT_S}

    with override_settings(**settings):
        outcome = get_backend(sender(esp)).send_batch([slow])[0]

    assert isinstance(outcome, TransientProviderError)
    assert "cannot be reached" in outcome.reason
    assert not received_by(sink, slow)


@ESPS
def test_an_unreachable_esp_is_transient_for_every_message(sink, esp):
    settings = sink.provider_settings(esp=esp)
    url_setting = {
        "mailgun": "MAILGUN_API_URL",
        "postmark": "POSTMARK_API_URL",
        "sendgrid": "SENDGRID_API_URL",
    }[esp]
    settings["ANYMAIL"] = settings["ANYMAIL"] | {url_setting: f"http://127.0.0.1:{free_port()}/"}
    messages = [message(f"{esp}-nowhere-{n}@example.com", f"Hi {n}") for n in range(2)]

    with override_settings(**settings):
        outcomes = get_backend(sender(esp)).send_batch(messages)

    assert all(isinstance(outcome, TransientProviderError) for outcome in outcomes), outcomes


@ESPS
def test_the_esp_refuses_a_wrong_key_and_nothing_is_delivered(sink, esp):
    settings = sink.provider_settings(esp=esp)
    key = {
        "mailgun": "MAILGUN_API_KEY",
        "postmark": "POSTMARK_SERVER_TOKEN",
        "sendgrid": "SENDGRID_API_KEY",
    }[esp]
    settings["ANYMAIL"] = settings["ANYMAIL"] | {key: "not-the-key"}
    sent = message(f"{esp}-wrong-key@example.com")

    with override_settings(**settings):
        outcome = get_backend(sender(esp)).send_batch([sent])[0]

    assert isinstance(outcome, PermanentProviderError)
    assert "answered 401" in outcome.reason
    assert not attempts_of(sink, sent)


@ALL_ESPS
def test_the_sink_counts_an_email_sent_twice_as_a_duplicate(esp):
    sent = message(f"{esp}-twice@example.com")
    with running_sinks() as own_sink, override_settings(**own_sink.provider_settings(esp=esp)):
        with get_backend(sender(esp)) as backend:
            backend.send_batch([sent])
            backend.send_batch([sent])

        assert own_sink.duplicates() == 1
        assert len(own_sink.received("email")) == 2  # an ESP has no idempotency key


@pytest.mark.django_db
@ALL_ESPS
def test_a_campaign_goes_out_through_the_presets_esp_and_retries_what_failed(esp):
    ana, flaky, refused = (
        make_profile(email="ana@example.com"),
        make_profile(email="flaky@example.com"),
        make_profile(email="invalid@example.com"),
    )
    preset = MessagePresetFactory(channel=ChannelKind.EMAIL, backend=ESP_BACKENDS[esp])
    with (
        running_sinks(reject="invalid", flaky="flaky", flaky_times=1) as sink,
        # The channel's default stays SMTP: the preset alone chooses the ESP.
        override_settings(**sink.provider_settings(), SALVO_PUBLIC_URL="https://salvo.test"),
    ):
        campaign = make_live_campaign(
            actions=[email_action(preset=preset, body="Hi {{ profile.external_id }}")]
        )
        execution = drive(campaign)
        time_passes(execution, 3600)
        drive(campaign)

        rows = {
            row.profile_id: row for row in Delivery.objects.filter(execution__campaign=campaign)
        }
        received = {r["to"]: r for r in sink.received("email")}

    assert rows[ana.pk].status == rows[flaky.pk].status == DeliveryStatus.SENT
    assert rows[flaky.pk].attempts == 2
    assert rows[refused.pk].status == DeliveryStatus.FAILED
    assert ESP_REFUSAL[esp] in rows[refused.pk].error
    assert set(received) == {ana.email, flaky.email}
    mail = received[ana.email]
    assert mail["esp"] == esp
    assert mail["text"] == f"Hi {ana.external_id}"
    assert mail["metadata"]["salvo_delivery_id"] == str(rows[ana.pk].pk)
    assert mail["headers"]["X-Salvo-Delivery-Id"] == str(rows[ana.pk].pk)
    assert mail["headers"]["List-Unsubscribe"].startswith("<https://salvo.test/")
    assert mail["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert rows[ana.pk].provider_message_id
    assert rows[ana.pk].provider_message_id in {
        str(mail.get("message_id")),
        *(str(v) for v in mail["metadata"].values()),
    }


@pytest.mark.django_db
def test_the_admin_offers_the_esp_backends_for_an_email_preset(admin_client):
    preset = MessagePresetFactory.create(channel=ChannelKind.EMAIL)

    page = admin_client.get(reverse("admin:channels_messagepreset_change", args=[preset.pk]))

    choices = [value for value, _ in page.context["adminform"].form.fields["backend"].choices]
    assert set(ESP_BACKENDS.values()) <= set(choices)
    assert "channels.providers.esp.MailgunBackend" in choices


def test_one_address_twice_in_a_chunk_goes_in_two_calls_and_both_arrive(sink):
    # Two profiles may share an address; an ESP's batch call names each address once.
    first, again = message("pm-shared@example.com"), message("pm-shared@example.com")

    with override_settings(**sink.provider_settings(esp="postmark")):
        outcomes = get_backend(sender("postmark")).send_batch([first, again])

    records = received_by(sink, first, again)
    assert [r["path"] for r in records] == ["/postmark/email", "/postmark/email"]
    assert outcomes == [SendResult(provider_message_id=r["message_id"]) for r in records]


def test_sendgrid_sends_content_past_its_substitution_limit_alone(sink):
    big = message("sg-big@example.com", "Big", "x" * (SENDGRID_SUBSTITUTIONS_MAX_BYTES + 1))
    small = [message(f"sg-small-{n}@example.com", f"Hi {n}") for n in range(2)]

    with override_settings(**sink.provider_settings(esp="sendgrid")):
        get_backend(sender("sendgrid")).send_batch([small[0], big, small[1]])

    records = received_by(sink, small[0], big, small[1])
    assert [r["to"] for r in records] == [small[0].to, big.to, small[1].to]
    assert records[1]["text"] == big.body
    # One request per X-Message-Id: the small ones share theirs, the big one has its own.
    assert records[0]["message_id"] == records[2]["message_id"] != records[1]["message_id"]


def test_the_mailgun_emulation_reads_a_multipart_form_and_answers_as_mailgun(sink):
    # anymail posts URL-encoded fields unless there are attachments; Mailgun's own
    # examples (curl -F) post multipart/form-data, which the emulation reads the same.
    url = f"{sink.http_url}/mailgun/v3/example.com/messages"
    fields = [
        ("from", "News <news@example.com>"),
        ("to", "Ana <mg-form-a@example.com>"),
        ("to", "mg-form-b@example.com"),
        ("subject", "Hi %recipient.name%"),
        ("text", "Your code: %recipient.code%"),
        ("h:X-Salvo-Delivery-Id", "%recipient.id%"),
        ("v:campaign", "spring"),
        ("recipient-variables", json.dumps({
            "mg-form-a@example.com": {"name": "Ana", "code": "A1", "id": "7000001"},
            "mg-form-b@example.com": {"name": "Bo", "code": "B2", "id": "7000002"},
        })),
    ]  # fmt: skip
    multipart = [(name, (None, value)) for name, value in fields]

    refused = requests.post(url, files=multipart, auth=("api", "not-the-key"), timeout=5)
    answer = requests.post(url, files=multipart, auth=("api", SINK_API_KEY), timeout=5)

    assert refused.status_code == 401
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    queued = answer.json()
    assert queued["message"] == "Queued. Thank you."
    assert queued["id"].startswith("<")
    assert queued["id"].endswith("@example.com>")
    records = {
        r["to"]: r for r in sink.received("email") if r["delivery_id"] in {"7000001", "7000002"}
    }
    assert set(records) == {"mg-form-a@example.com", "mg-form-b@example.com"}
    ana, bo = records["mg-form-a@example.com"], records["mg-form-b@example.com"]
    assert (ana["subject"], ana["text"]) == ("Hi Ana", "Your code: A1")
    assert (bo["subject"], bo["text"]) == ("Hi Bo", "Your code: B2")
    assert ana["metadata"] == bo["metadata"] == {"campaign": "spring"}
    assert ana["message_id"] == bo["message_id"] == queued["id"]


def test_the_mailgun_emulation_refuses_a_body_that_is_not_a_form(sink):
    answer = requests.post(
        f"{sink.http_url}/mailgun/v3/example.com/messages",
        json={"to": "mg-json@example.com"},
        auth=("api", SINK_API_KEY),
        timeout=5,
    )

    assert answer.status_code == 400
    assert "form" in answer.json()["message"]
    assert not [r for r in sink.attempts("email") if r["to"] == "mg-json@example.com"]
