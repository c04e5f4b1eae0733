"""The suppression list at send time: an address a provider reported as bounced, complained
or unsubscribed is skipped by every later campaign with the reason ``suppressed`` (a
transactional campaign only for an address that cannot be reached), and events are
recorded once however often a provider sends them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import override_settings
from django.utils import timezone

from campaigns import selectors
from campaigns.choices import CampaignType, DeliveryReason, DeliveryStatus, EventKind
from campaigns.events import ProviderEvent, events_record
from campaigns.models import Campaign, Delivery, DeliveryEvent
from channels.choices import SuppressionReason, SuppressionSource
from channels.models import Suppression
from devtools.sinks import RunningSinks, running_sinks
from tests.campaigns.delivery_support import drive, make_profile
from tests.campaigns.factories import email_action, make_live_campaign, sms_action


@pytest.fixture
def sinks() -> Iterator[RunningSinks]:
    with running_sinks() as sink, override_settings(**sink.provider_settings()):
        yield sink


def outcomes(campaign: Campaign, channel: str) -> dict[int, tuple[str, str]]:
    rows = Delivery.objects.filter(execution__campaign=campaign, action__channel=channel)
    return {r.profile_id: (r.status, r.reason) for r in rows}


def event(kind: str, recipient: str, *, event_id: str, channel: str = "email") -> ProviderEvent:
    return ProviderEvent(
        provider="postmark",
        event_id=event_id,
        kind=kind,
        channel=channel,
        occurred_at=timezone.now(),
        recipient=recipient,
        detail="550 5.1.1 mailbox unavailable",
    )


SENT = (DeliveryStatus.SENT, "")
SUPPRESSED = (DeliveryStatus.SKIPPED, DeliveryReason.SUPPRESSED)


@pytest.mark.django_db
def test_a_hard_bounced_address_is_skipped_by_the_next_campaign_whatever_its_case(sinks):
    bounced, kept = make_profile(email="Ana@Example.com"), make_profile()
    recorded = events_record(events=[event(EventKind.BOUNCED, "ana@example.COM", event_id="e1")])
    assert (recorded.recorded, recorded.duplicates) == (1, 0)
    entry = Suppression.objects.get()
    assert (entry.channel, entry.address, entry.reason, entry.source) == (
        "email",
        "ana@example.com",
        SuppressionReason.HARD_BOUNCE,
        SuppressionSource.PROVIDER,
    )

    campaign = make_live_campaign(actions=[email_action(), sms_action()])
    drive(campaign)

    assert outcomes(campaign, "email") == {bounced.pk: SUPPRESSED, kept.pk: SENT}
    assert outcomes(campaign, "sms") == {bounced.pk: SENT, kept.pk: SENT}  # email only
    assert [m["to"] for m in sinks.received("email")] == [kept.email]
    report = selectors.campaign_report(campaign=campaign)
    assert report["by_reason"] == {"email": {DeliveryReason.SUPPRESSED: 1}}


@pytest.mark.django_db
def test_a_complaint_stops_marketing_but_not_a_transactional_message_a_bounce_stops_both(sinks):
    complained, bounced = make_profile(), make_profile()
    events_record(
        events=[
            event(EventKind.COMPLAINED, complained.email, event_id="c1"),
            event(EventKind.BOUNCED, bounced.email, event_id="b1"),
        ]
    )
    receipt = make_live_campaign(type=CampaignType.TRANSACTIONAL, actions=[email_action()])
    drive(receipt)
    assert outcomes(receipt, "email") == {complained.pk: SENT, bounced.pk: SUPPRESSED}


@pytest.mark.django_db
def test_an_event_sent_twice_is_recorded_once_and_a_later_one_keeps_the_first_entry(sinks):
    profile = make_profile()
    first = event(EventKind.BOUNCED, profile.email, event_id="same")
    assert events_record(events=[first, first]).recorded == 1
    again = events_record(
        events=[first, event(EventKind.COMPLAINED, profile.email, event_id="later")]
    )
    assert (again.recorded, again.duplicates) == (1, 1)
    assert DeliveryEvent.objects.count() == 2
    assert Suppression.objects.get().reason == SuppressionReason.HARD_BOUNCE


@pytest.mark.django_db
def test_an_opened_or_delivered_event_suppresses_nothing(sinks):
    profile = make_profile()
    events_record(
        events=[
            event(EventKind.DELIVERED, profile.email, event_id="d1"),
            event(EventKind.OPENED, profile.email, event_id="o1"),
        ]
    )
    assert not Suppression.objects.exists()
    campaign = make_live_campaign(actions=[email_action()])
    drive(campaign)
    assert outcomes(campaign, "email") == {profile.pk: SENT}
