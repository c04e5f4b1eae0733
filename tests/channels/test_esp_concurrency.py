"""An ESP backend's calls within a chunk go SALVO_ESP_CONCURRENCY at a time, to the sink's
Postmark and SES emulations over real sockets: the sink answers slowly and counts the
requests it serves at once (``in_flight`` in its records), so what is measured is overlap,
not time. Each message keeps its own outcome, in order; a throttled call stops the calls not
yet started; a rate-limited preset never has more in flight than its rate grants; and the
setting's bad values stop the process at startup."""

from __future__ import annotations

import pytest
from django.test import override_settings

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
from channels.providers.esp import EspThrottledError
from devtools.sinks import RunningSinks
from devtools.sinks.running import ESP_BACKENDS
from tests.campaigns.delivery_support import drive, make_profile
from tests.campaigns.factories import email_action, make_live_campaign
from tests.channels.factories import MessagePresetFactory
from tests.channels.provider_support import module_sink
from tests.channels.test_esp import attempts_of, message, sender
from tests.settings_loader import refusal, run_python

# Long enough that every call of a round is in flight together on a loaded machine, short
# enough that a sequential batch of a dozen stays a few seconds.
SLOW_S = 0.3
# Personalised messages: one call each, for both ESPs (Postmark's batch takes one content).
PER_MESSAGE_ESPS = pytest.mark.parametrize("esp", ["postmark", "ses"])

SHOW_CONCURRENCY = "from django.conf import settings; print(settings.SALVO_ESP_CONCURRENCY)"

sink = module_sink(reject="invalid", retry_after_s=7, slow="slow", slow_s=SLOW_S)


def personalised(esp: str, label: str, count: int) -> list[OutboundMessage]:
    return [
        message(f"{esp}-{label}-{n}@example.com", f"Hello {n}", f"Only for you, {n}")
        for n in range(count)
    ]


def esp_settings(sink: RunningSinks, esp: str, concurrency: int) -> dict:
    return sink.provider_settings(esp=esp) | {"SALVO_ESP_CONCURRENCY": concurrency}


def most_in_flight(records: list[dict]) -> int:
    """The most requests the sink served at once while it answered these."""
    return max(record["in_flight"] for record in records)


@PER_MESSAGE_ESPS
@pytest.mark.parametrize("concurrency", [1, 4])
def test_personalised_messages_go_concurrency_at_a_time_each_once(sink, esp, concurrency):
    messages = personalised(esp, f"slow-{concurrency}", 12)

    with override_settings(**esp_settings(sink, esp, concurrency)):
        outcomes = get_backend(sender(esp)).send_batch(messages)

    records = [attempts_of(sink, sent) for sent in messages]
    # Each message once, with its own content, and its own answer in the batch's order.
    assert [len(attempts) for attempts in records] == [1] * len(messages)
    assert [(r[0]["to"], r[0]["subject"]) for r in records] == [(m.to, m.subject) for m in messages]
    assert outcomes == [SendResult(provider_message_id=r[0]["message_id"]) for r in records]
    # Concurrency 1 is one after the other; 4 is 4 at once, never more.
    assert most_in_flight([r[0] for r in records]) == concurrency


@PER_MESSAGE_ESPS
def test_each_message_keeps_its_own_outcome_among_refusals_and_failures(sink, esp):
    # Every one slow: they are in flight together, answered out of order.
    batch = [
        message(f"{esp}-slow-mixed-ok-0@example.com", "Hi 0"),
        message(f"{esp}-slow-mixed-invalid@example.com", "Hi 1"),
        message(f"{esp}-slow-mixed-flaky@example.com", "Hi 2"),
        message(f"{esp}-slow-mixed-ok-1@example.com", "Hi 3"),
        message(f"{esp}-slow-mixed-invalid-2@example.com", "Hi 4"),
        message(f"{esp}-slow-mixed-ok-2@example.com", "Hi 5"),
    ]

    with override_settings(**esp_settings(sink, esp, 4)):
        outcomes = get_backend(sender(esp)).send_batch(batch)

    ok = [attempts_of(sink, batch[n]) for n in (0, 3, 5)]
    assert [outcomes[n] for n in (0, 3, 5)] == [
        SendResult(provider_message_id=attempts[0]["message_id"]) for attempts in ok
    ]
    refusal_text = {"postmark": "marked as inactive", "ses": "answered 400 MessageRejected"}[esp]
    for n in (1, 4):
        assert isinstance(outcomes[n], PermanentProviderError)
        assert refusal_text in outcomes[n].reason
        assert batch[n].to in outcomes[n].reason
    assert isinstance(outcomes[2], TransientProviderError)
    assert "answered 503" in outcomes[2].reason
    assert not isinstance(outcomes[2], EspThrottledError)
    assert [len(attempts_of(sink, sent)) for sent in batch] == [1] * len(batch)
    assert most_in_flight([attempts_of(sink, sent)[0] for sent in batch]) == 4


@PER_MESSAGE_ESPS
def test_once_the_esp_throttles_the_calls_not_yet_started_wait_and_are_not_sent(sink, esp):
    # Two at a time: the slow call goes first and is in flight while the one beside it is
    # throttled at once; no thread is free before that 429, so the rest start after it and
    # none of them is made.
    in_flight = message(f"{esp}-slow-beside@example.com", "Hi 0")
    throttled = message(f"{esp}-throttled@example.com", "Hi 1")
    rest = personalised(esp, "after-the-429", 4)

    with override_settings(**esp_settings(sink, esp, 2)):
        outcomes = get_backend(sender(esp)).send_batch([in_flight, throttled, *rest])

    beside, first, *held = outcomes
    assert isinstance(first, EspThrottledError)
    assert "answered 429" in first.reason
    # Postmark says when to come back; SES sends no Retry-After (Salvo's back-off decides).
    assert first.retry_after == {"postmark": 7, "ses": None}[esp]
    assert beside == SendResult(provider_message_id=attempts_of(sink, in_flight)[0]["message_id"])
    for outcome in held:
        assert isinstance(outcome, EspThrottledError)
        assert outcome.retry_after == first.retry_after
        assert outcome.reason.startswith(
            f"Not sent: {'Amazon SES' if esp == 'ses' else 'Postmark'}"
        )
        assert "answered 429" in outcome.reason
    assert [len(attempts_of(sink, sent)) for sent in (in_flight, throttled)] == [1, 1]
    assert not [a for sent in rest for a in attempts_of(sink, sent)]


@pytest.mark.django_db
def test_a_rate_limited_preset_has_no_more_in_flight_than_its_rate_grants(sink):
    # 2 messages a second: the engine reserves 2 tokens per chunk of 2, so 2 at most go at
    # once whatever SALVO_ESP_CONCURRENCY allows.
    profiles = [make_profile(email=f"slow-limited-{n}@example.com") for n in range(6)]
    preset = MessagePresetFactory(
        channel=ChannelKind.EMAIL, backend=ESP_BACKENDS["postmark"], rate_limit_per_second=2
    )
    with override_settings(**esp_settings(sink, "postmark", 8)):
        campaign = make_live_campaign(
            actions=[email_action(preset=preset, body="Hi {{ profile.external_id }}")]
        )
        drive(campaign)

    rows = Delivery.objects.filter(execution__campaign=campaign)
    assert {row.status for row in rows} == {DeliveryStatus.SENT}
    records = [r for r in sink.attempts("email") if r["to"].startswith("slow-limited-")]
    assert sorted(r["to"] for r in records) == sorted(p.email for p in profiles)
    assert most_in_flight(records) == 2


@pytest.mark.parametrize("value", ["0", "-1", "eight", "1.5", "65", ""])
def test_a_concurrency_that_is_not_1_to_64_refuses_to_start(tmp_path, value):
    line = refusal({"SALVO_ESP_CONCURRENCY": value}, tmp_path)
    assert f"SALVO_ESP_CONCURRENCY is {value!r}" in line


@pytest.mark.parametrize(("value", "read"), [(None, 8), ("1", 1), ("64", 64)])
def test_a_concurrency_from_1_to_64_is_read_and_8_is_the_default(tmp_path, value, read):
    env = {} if value is None else {"SALVO_ESP_CONCURRENCY": value}
    done = run_python(["-c", SHOW_CONCURRENCY], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(read)]
