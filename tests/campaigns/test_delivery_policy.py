"""The delivery engine's pure policy (campaigns.delivery.policy), by its parameters alone:
who is reached, when to try again, what a provider's answer means. And the one reach rule
read both ways: the engine's per-row check agrees with the condition the reviews count,
for every channel, campaign type, consent and address."""

import datetime as dt
import itertools

import pytest

from campaigns.choices import CampaignType, DeliveryReason, DeliveryStatus
from campaigns.delivery import PROFILE_VALUES
from campaigns.delivery.policy import (
    RetryPolicy,
    backoff_delay,
    consent_column,
    provider_answer_outcome,
    reachable_profiles,
    recipient_rule,
    recipient_skip,
    retry_at,
)
from channels.choices import ChannelKind
from channels.providers import (
    PermanentProviderError,
    ProviderError,
    SendResult,
    TransientProviderError,
)
from segments.choices import ConsentChannel
from segments.models import ADDRESS_FIELDS, CONSENT_FIELDS, Profile
from segments.selectors import reachable_on
from tests.campaigns.delivery_support import make_profile

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


# --- eligibility --------------------------------------------------------------------------

WEBHOOK_URL = "https://hooks.example.com/salvo"
MARKETING = CampaignType.MARKETING
TRANSACTIONAL = CampaignType.TRANSACTIONAL


def profile_values(*, consent: bool = True, address: str = "set") -> dict[str, object]:
    """A recipient's values as the engine reads them: every consent `consent`, every
    address column set (or blank)."""
    values: dict[str, object] = dict.fromkeys(PROFILE_VALUES, "")
    values.update(id=1, external_id="user-1", attributes="{}")
    values.update(dict.fromkeys(CONSENT_FIELDS, consent))
    for column in ADDRESS_FIELDS.values():
        values[column] = f"{column}-value" if address == "set" else ""
    return values


@pytest.mark.parametrize(
    ("channel", "campaign_type", "consent", "address", "webhook_url", "skip"),
    [
        (ChannelKind.EMAIL, MARKETING, True, "set", "", ""),
        (ChannelKind.EMAIL, MARKETING, False, "set", "", DeliveryReason.OPTED_OUT),
        (ChannelKind.EMAIL, TRANSACTIONAL, False, "set", "", ""),  # a legal notice
        (ChannelKind.EMAIL, MARKETING, True, "blank", "", DeliveryReason.NO_ADDRESS),
        (ChannelKind.EMAIL, TRANSACTIONAL, False, "blank", "", DeliveryReason.NO_ADDRESS),
        # Opted out and no address: the opt-out is the reason shown.
        (ChannelKind.SMS, MARKETING, False, "blank", "", DeliveryReason.OPTED_OUT),
        (ChannelKind.SMS, MARKETING, True, "set", "", ""),
        (ChannelKind.PUSH, MARKETING, False, "set", "", DeliveryReason.OPTED_OUT),
        (ChannelKind.PUSH, TRANSACTIONAL, True, "blank", "", DeliveryReason.NO_ADDRESS),
        # A webhook has no consent and no address column: the preset's URL decides.
        (ChannelKind.WEBHOOK, MARKETING, False, "blank", WEBHOOK_URL, ""),
        (ChannelKind.WEBHOOK, MARKETING, True, "set", "", DeliveryReason.NO_ADDRESS),
    ],
)
def test_recipient_skip(channel, campaign_type, consent, address, webhook_url, skip):
    rule = recipient_rule(channel, campaign_type=campaign_type)
    values = profile_values(consent=consent, address=address)

    assert recipient_skip(values, rule=rule, webhook_url=webhook_url) == skip


@pytest.mark.parametrize("channel", ChannelKind.values)
@pytest.mark.parametrize("campaign_type", CampaignType.values)
def test_a_deleted_profile_is_skipped_on_every_channel(channel, campaign_type):
    rule = recipient_rule(channel, campaign_type=campaign_type)

    assert recipient_skip(None, rule=rule, webhook_url=WEBHOOK_URL) == (
        DeliveryReason.PROFILE_DELETED
    )


@pytest.mark.parametrize(
    ("channel", "campaign_type", "column"),
    [
        (ChannelKind.EMAIL, MARKETING, "consent_email"),
        (ChannelKind.SMS, MARKETING, "consent_sms"),
        (ChannelKind.PUSH, MARKETING, "consent_push"),
        (ChannelKind.WEBHOOK, MARKETING, None),  # no consent to ask
        (ChannelKind.EMAIL, TRANSACTIONAL, None),
        (ChannelKind.SMS, TRANSACTIONAL, None),
    ],
)
def test_consent_column(channel, campaign_type, column):
    assert consent_column(channel, campaign_type=campaign_type) == column


def _reach_cases():
    # Every channel × campaign type × consent × address × webhook URL.
    return itertools.product(
        ChannelKind.values, CampaignType.values, (True, False), ("set", "blank"), ("", WEBHOOK_URL)
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("channel", "campaign_type", "consent", "address", "webhook_url"), list(_reach_cases())
)
def test_the_engine_and_the_reviews_read_one_reach_rule(
    channel, campaign_type, consent, address, webhook_url
):
    """The per-row check the engine makes over a recipient's values, and the condition the
    reviews and reach counts give the database, decide the same for one stored profile."""
    blank = address == "blank"
    profile = make_profile(
        **dict.fromkeys(CONSENT_FIELDS, consent),
        **({column: "" for column in ADDRESS_FIELDS.values()} if blank else {}),
    )
    (values,) = Profile.objects.filter(pk=profile.pk).values(*PROFILE_VALUES)
    rule = recipient_rule(channel, campaign_type=campaign_type)
    condition = reachable_profiles(
        channel=channel, campaign_type=campaign_type, webhook_url=webhook_url
    )

    by_row = recipient_skip(values, rule=rule, webhook_url=webhook_url) == ""
    by_database = Profile.objects.filter(condition, pk=profile.pk).exists()

    assert by_row == by_database
    # The segments' own reach (what a segment's reach counts) agrees too, where the
    # channel has an address column (a webhook's reach is its preset's, not a profile's).
    if channel in ADDRESS_FIELDS:
        marketing = campaign_type == MARKETING
        on_channel = reachable_on(channel, consent_required=marketing)
        assert Profile.objects.filter(on_channel, pk=profile.pk).exists() == by_row
    # Not a rule that admits everyone or no one: consent and address both matter.
    expected = (not blank if channel in ADDRESS_FIELDS else bool(webhook_url)) and (
        consent or campaign_type != MARKETING or channel not in ConsentChannel.values
    )
    assert by_row == expected
