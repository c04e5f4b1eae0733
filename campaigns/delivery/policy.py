"""The delivery engine's decisions, as plain functions of their inputs: who is reached,
when to try again, and what a provider's answer means. No query runs here; the engine
reads the rows, the settings and the clock, and these functions only decide.

Eligibility. A recipient is reached when the channel's reach rule admits it: its consent
given (a marketing campaign on a channel with consent) and its address present, or, for a
channel with no address column (a webhook), the preset's URL set. That rule is
``segments.selectors.reach_rule``, the same one the reviews and reach counts turn into a
database condition (``reachable_on``, ``reachable_profiles``): the per-row check
(``recipient_skip``) reads the rule's columns, it does not restate them.

Retries. Two things are retried. A delivery that a provider refused for now (a transient
error) is tried again after an exponential back-off, or after the provider's
``Retry-After`` when it asks for longer, up to ``SALVO_DELIVERY_MAX_ATTEMPTS`` attempts. A
step of the engine that raised (planning a chunk, sending a batch, activating a campaign)
is run again the same way up to ``SALVO_STEP_MAX_ATTEMPTS`` attempts, after which it stays
failed and shows its error.

Outcomes. A provider's answer becomes sent, failed (refused for good, or given up) or
pending until its retry (``provider_answer_outcome``).

Also here: the plain values the engine's rooms pass each other (a batch, a due row, a
row's outcome).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db.models import Q

from channels.providers import (
    PermanentProviderError,
    ProviderError,
    SendResult,
    TransientProviderError,
)
from channels.rendering import RenderError
from segments.selectors import ReachRule, reach_rule

from ..choices import CampaignType, DeliveryReason, DeliveryStatus

# --- eligibility --------------------------------------------------------------------------


def recipient_rule(channel: str, *, campaign_type: str) -> ReachRule:
    """The reach rule of a campaign's sends on `channel`: a marketing campaign skips
    profiles opted out of a channel with consent; a transactional one (a legal notice)
    sends regardless; no channel reaches a profile without its address."""
    return reach_rule(channel, consent_required=campaign_type == CampaignType.MARKETING)


def consent_column(channel: str, *, campaign_type: str) -> str | None:
    """The consent column a recipient must have true for this channel, if any."""
    return recipient_rule(channel, campaign_type=campaign_type).consent


def recipient_address(profile: Mapping[str, Any], *, rule: ReachRule, webhook_url: str = "") -> Any:
    """Where a message to the recipient goes: its address column, or the preset's URL for
    a channel without one (a webhook). Blank or None: nowhere."""
    return rule.address_of(profile) if rule.address else webhook_url


def recipient_skip(
    profile: Mapping[str, Any] | None, *, rule: ReachRule, webhook_url: str = ""
) -> str:
    """Why the recipient is not sent to (a ``DeliveryReason``: the profile is gone, it
    opted out, it has no address), or "" when it is reached. `profile` holds the columns
    the engine reads (``PROFILE_VALUES``)."""
    if profile is None:
        return DeliveryReason.PROFILE_DELETED
    if not rule.consent_given(profile):
        return DeliveryReason.OPTED_OUT
    if not recipient_address(profile, rule=rule, webhook_url=webhook_url):
        return DeliveryReason.NO_ADDRESS
    return ""


def reachable_profiles(*, channel: str, campaign_type: str, webhook_url: str = "") -> Q:
    """The profiles `recipient_skip` does not skip, as one condition the database counts
    (a value: building it runs no query). A webhook goes to the preset's URL, for every
    profile or none."""
    rule = recipient_rule(channel, campaign_type=campaign_type)
    condition = rule.condition()
    if rule.address is None and not webhook_url:
        condition &= Q(pk__isnull=True)  # no profile: a condition every database can count
    return condition


# --- retries and back-off -----------------------------------------------------------------


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


# --- texts --------------------------------------------------------------------------------


def render_error_text(error: RenderError) -> str:
    """What a delivery (and a preview) says when its content cannot be rendered."""
    return f"Cannot render: {error}"


PLANNING_STEP = "Planning the audience"


def error_text(error: BaseException) -> str:
    """An exception as a person reads it: its type and its message(s)."""
    messages = getattr(error, "messages", None)  # a ValidationError holds a list
    detail = "; ".join(map(str, messages)) if isinstance(messages, list) else str(error)
    return f"{type(error).__name__}: {detail}"[:10_000]


# --- the values the engine passes around --------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """One action's recipients with profile ids in [first_profile_id, last_profile_id]."""

    execution_id: int
    action_id: int
    first_profile_id: int
    last_profile_id: int

    def as_args(self) -> tuple[int, int, int, int]:
        return (self.execution_id, self.action_id, self.first_profile_id, self.last_profile_id)


@dataclass
class Due:
    """A pending delivery of the batch that this worker holds until its outcome is
    recorded (PostgreSQL: locked by the chunk's transaction; SQLite: claimed)."""

    delivery_id: int
    attempt: int  # the attempt about to be made: 1 for the first
    # The recipient's data as read (attributes still JSON text on both databases, decoded
    # for each recipient on its own); None once the profile is gone.
    profile: dict[str, Any] | None


@dataclass
class DeliveryOutcome:
    delivery_id: int
    status: str
    text: str = ""  # the provider's message id when sent, else the reason
    next_attempt_at: dt.datetime | None = None  # a pending row's retry time
    reason: str = ""  # why it was not sent (DeliveryReason); empty when sent
