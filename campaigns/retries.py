"""When to try again: the retry and back-off policy, as plain functions of their inputs.

Two things are retried. A delivery that a provider refused for now (a transient error) is
tried again after an exponential back-off, or after the provider's ``Retry-After`` when it
asks for longer, up to ``SALVO_DELIVERY_MAX_ATTEMPTS`` attempts. A step of the engine that
raised (planning a chunk, sending a batch, activating a campaign) is run again the same
way up to ``SALVO_STEP_MAX_ATTEMPTS`` attempts, after which it stays failed and shows its
error. The engine reads the settings and the clock; these functions only compute.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from channels.providers import (
    PermanentProviderError,
    ProviderError,
    SendResult,
    TransientProviderError,
)

from .choices import DeliveryReason, DeliveryStatus


def backoff_delay(
    *, attempt: int, base_s: float, cap_s: float, retry_after_s: float | None = None
) -> float:
    """Seconds to wait after the `attempt`-th failed attempt (1 for the first): the base
    doubled after each failure, at most `cap_s`; never less than what the other side asked
    for (`retry_after_s`, e.g. an HTTP ``Retry-After``), itself at most `cap_s`."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, not {attempt!r}.")
    doubled = min(cap_s, base_s * 2 ** (attempt - 1))
    asked = min(cap_s, retry_after_s or 0.0)
    return max(doubled, asked, 0.0)


def retry_at(
    *,
    now: dt.datetime,
    attempt: int,
    base_s: float,
    cap_s: float,
    retry_after_s: float | None = None,
) -> dt.datetime:
    """The moment the next attempt is due, `backoff_delay` after `now`."""
    delay = backoff_delay(attempt=attempt, base_s=base_s, cap_s=cap_s, retry_after_s=retry_after_s)
    return now + dt.timedelta(seconds=delay)


def attempts_left(*, attempt: int, max_attempts: int) -> bool:
    """Whether another attempt may follow the `attempt`-th one."""
    return attempt < max_attempts


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently something is tried: at most `max_attempts` attempts,
    waiting `backoff_delay(base_s, cap_s)` between two."""

    max_attempts: int
    base_s: float
    cap_s: float

    def delay(self, *, attempt: int, retry_after_s: float | None = None) -> float:
        return backoff_delay(
            attempt=attempt, base_s=self.base_s, cap_s=self.cap_s, retry_after_s=retry_after_s
        )

    def may_retry(self, *, attempt: int) -> bool:
        return attempts_left(attempt=attempt, max_attempts=self.max_attempts)


@dataclass(frozen=True)
class Outcome:
    """What becomes of a delivery after an attempt: its status, the text to record (the
    provider's message id when sent, else the reason), the reason's code when it was not
    sent (`DeliveryReason`, empty when sent) and, while pending, when to retry."""

    status: str
    text: str
    next_attempt_at: dt.datetime | None = None
    reason: str = ""


def provider_answer_outcome(
    answer: SendResult | ProviderError, *, attempt: int, now: dt.datetime, policy: RetryPolicy
) -> Outcome:
    """What a provider's answer to the `attempt`-th attempt means: sent; refused for good
    (failed); or, for a transient error, pending until a retry after the back-off (or the
    provider's ``Retry-After``), or failed once the policy's attempts are used up."""
    if isinstance(answer, SendResult):
        return Outcome(DeliveryStatus.SENT, answer.provider_message_id or "")
    if isinstance(answer, PermanentProviderError):
        return Outcome(DeliveryStatus.FAILED, answer.reason, reason=DeliveryReason.PROVIDER_REFUSED)
    # A bare ProviderError: the backend did not say whether it may pass later, so try.
    retry_after = answer.retry_after if isinstance(answer, TransientProviderError) else None
    if not policy.may_retry(attempt=attempt):
        return Outcome(
            DeliveryStatus.FAILED,
            f"Gave up after {attempt} attempts: {answer.reason}",
            reason=DeliveryReason.GAVE_UP,
        )
    due = retry_at(
        now=now,
        attempt=attempt,
        base_s=policy.base_s,
        cap_s=policy.cap_s,
        retry_after_s=retry_after,
    )
    return Outcome(
        DeliveryStatus.PENDING,
        answer.reason,
        next_attempt_at=due,
        reason=DeliveryReason.PROVIDER_ERROR,
    )
