"""The retry and back-off policy (campaigns.retries), by its parameters alone."""

import datetime as dt

import pytest

from campaigns.choices import DeliveryStatus
from campaigns.retries import (
    RetryPolicy,
    backoff_delay,
    provider_answer_outcome,
    retry_at,
)
from channels.providers import (
    PermanentProviderError,
    ProviderError,
    SendResult,
    TransientProviderError,
)

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=dt.UTC)
POLICY = RetryPolicy(max_attempts=4, base_s=5.0, cap_s=60.0)


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "retry_after", "expected"),
    [
        (1, 5.0, 600.0, None, 5.0),  # the base after the first failure
        (2, 5.0, 600.0, None, 10.0),  # doubled after each failure
        (4, 5.0, 600.0, None, 40.0),
        (8, 5.0, 600.0, None, 600.0),  # 640 s, capped
        (30, 5.0, 600.0, None, 600.0),  # no overflow however many attempts
        (1, 0.3, 600.0, None, 0.3),
        (1, 5.0, 600.0, 30.0, 30.0),  # the provider asks for longer: it gets it
        (3, 5.0, 600.0, 1.0, 20.0),  # the provider asks for less: the back-off stands
        (1, 5.0, 60.0, 3600.0, 60.0),  # a Retry-After beyond the cap is capped too
        (2, 5.0, 600.0, 0.0, 10.0),
    ],
)
def test_backoff_delay(attempt, base, cap, retry_after, expected):
    assert (
        backoff_delay(attempt=attempt, base_s=base, cap_s=cap, retry_after_s=retry_after)
        == expected
    )


def test_attempts_count_from_one():
    with pytest.raises(ValueError, match="attempt counts from 1"):
        backoff_delay(attempt=0, base_s=5.0, cap_s=60.0)


def test_retry_at_is_the_delay_after_now():
    assert retry_at(now=NOW, attempt=3, base_s=5.0, cap_s=60.0) == NOW + dt.timedelta(seconds=20)
    assert retry_at(
        now=NOW, attempt=1, base_s=5.0, cap_s=60.0, retry_after_s=42.5
    ) == NOW + dt.timedelta(seconds=42.5)


@pytest.mark.parametrize(("attempt", "may_retry"), [(1, True), (3, True), (4, False), (5, False)])
def test_a_policy_allows_max_attempts_in_all(attempt, may_retry):
    assert POLICY.may_retry(attempt=attempt) is may_retry


def test_a_sent_message_keeps_the_providers_id():
    outcome = provider_answer_outcome(SendResult("msg-1"), attempt=1, now=NOW, policy=POLICY)

    assert (outcome.status, outcome.text, outcome.next_attempt_at) == (
        DeliveryStatus.SENT,
        "msg-1",
        None,
    )


def test_a_permanent_refusal_fails_at_once_whatever_the_attempts_left():
    answer = PermanentProviderError("550 no such mailbox")

    outcome = provider_answer_outcome(answer, attempt=1, now=NOW, policy=POLICY)

    assert (outcome.status, outcome.text, outcome.next_attempt_at) == (
        DeliveryStatus.FAILED,
        "550 no such mailbox",
        None,
    )


@pytest.mark.parametrize(
    ("attempt", "retry_after", "wait_s"),
    [(1, None, 5.0), (2, None, 10.0), (3, None, 20.0), (1, 45.0, 45.0), (2, 600.0, 60.0)],
)
def test_a_transient_error_waits_for_the_backoff_or_the_providers_retry_after(
    attempt, retry_after, wait_s
):
    answer = TransientProviderError("503 busy", retry_after=retry_after)

    outcome = provider_answer_outcome(answer, attempt=attempt, now=NOW, policy=POLICY)

    assert outcome.status == DeliveryStatus.PENDING
    assert outcome.text == "503 busy"
    assert outcome.next_attempt_at == NOW + dt.timedelta(seconds=wait_s)


def test_a_transient_error_on_the_last_attempt_gives_up():
    answer = TransientProviderError("503 busy", retry_after=1.0)

    outcome = provider_answer_outcome(answer, attempt=4, now=NOW, policy=POLICY)

    assert (outcome.status, outcome.text, outcome.next_attempt_at) == (
        DeliveryStatus.FAILED,
        "Gave up after 4 attempts: 503 busy",
        None,
    )


def test_an_error_the_backend_did_not_classify_is_retried():
    outcome = provider_answer_outcome(
        ProviderError("something odd"), attempt=1, now=NOW, policy=POLICY
    )

    assert outcome.status == DeliveryStatus.PENDING
    assert outcome.next_attempt_at == NOW + dt.timedelta(seconds=5)
