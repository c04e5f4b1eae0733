"""Content experiments through the engine: each profile's group decided once from a stable
hash and stored, the holdout sent nothing (skipped with the reason ``holdout``), each
variant's content received by the sink, and the results compared with a two-proportion
z-test that names a winner only when the difference is significant."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

import factory
import pytest
from django.test import override_settings
from django.utils import timezone

from campaigns import selectors, services
from campaigns.choices import DeliveryReason, DeliveryStatus, EventKind
from campaigns.events import ProviderEvent, events_record
from campaigns.experiments import (
    BUCKETS,
    bucket_of,
    experiment_results,
    group_of,
    split_of,
    two_proportion_z_test,
)
from campaigns.models import Assignment, Campaign, Delivery, Variant
from devtools.sinks import RunningSinks, running_sinks
from segments.models import Profile
from tests.campaigns.delivery_support import drive, plan
from tests.campaigns.factories import email_action, make_live_campaign, sms_action
from tests.segments.factories import ProfileFactory, SegmentFactory


@pytest.fixture
def sinks() -> Iterator[RunningSinks]:
    with running_sinks() as sink, override_settings(**sink.provider_settings()):
        yield sink


def audience(prefix: str, size: int) -> list[Profile]:
    batch = ProfileFactory.build_batch(
        size, external_id=factory.Sequence(f"{prefix}{{:05d}}".format)
    )
    Profile.objects.bulk_create(batch)
    return list(Profile.objects.filter(external_id__startswith=prefix).order_by("pk"))


def segment_of(prefix: str) -> object:
    return SegmentFactory(
        rules={"all": [{"field": "external_id", "op": "startswith", "value": prefix}]}
    )


def groups(campaign: Campaign) -> dict[int, str]:
    return dict(Assignment.objects.filter(campaign=campaign).values_list("profile_id", "group"))


def ab_test(prefix: str, size: int, *, holdout: int = 20, **fields: object) -> Campaign:
    """A Live email + SMS A/B test to `size` new profiles: A and B each half of the tested
    audience, on both channels, and `holdout` % held back."""
    audience(prefix, size)
    return make_live_campaign(
        segment=segment_of(prefix),
        holdout_share=holdout,
        actions=[
            email_action(
                subject="Subject A",
                body="A for {{ profile.external_id }}",
                variants=[
                    {"share": 50, "subject": "Subject B", "body": "B for {{ profile.external_id }}"}
                ],
            ),
            sms_action(body="SMS A", variants=[{"share": 50, "body": "SMS B"}]),
        ],
        **fields,
    )


# --- assignment -----------------------------------------------------------------------


def test_a_bucket_is_a_stable_digest_of_campaign_and_profile():
    # The digest of "7:42", not Python's per-process salted hash: a literal pins it.
    assert bucket_of(7, 42) == bucket_of(7, 42) == 5_419
    assert bucket_of(7, 42) != bucket_of(8, 42)


def test_the_holdout_takes_the_first_buckets_and_the_variants_share_the_rest():
    split = split_of([30, 20])  # A 50, B 30, C 20
    assert split == (("A", 50), ("B", 30), ("C", 20))
    groups = Counter(group_of(b, holdout_share=10, split=split) for b in range(BUCKETS))
    assert groups == {"holdout": 1_000, "A": 4_500, "B": 2_700, "C": 1_800}


@pytest.mark.django_db
def test_assignments_are_stored_once_and_the_same_on_every_plan_and_run(sinks):
    campaign = ab_test("stable-", 60)
    first = groups(plan(campaign).campaign)
    assert len(first) == 60
    assert Counter(first.values()).keys() <= {"A", "B", "holdout"}
    # Planning again (a redelivered planning task, a re-plan) keeps every group…
    Assignment.objects.filter(campaign=campaign).update(assigned_at=timezone.now())
    plan(campaign)
    assert groups(campaign) == first
    # …and a group lost is decided again the same way, from the same hash.
    Assignment.objects.filter(campaign=campaign).delete()
    execution = campaign.executions.get()
    execution.planned_through, execution.planning_done = 0, False
    execution.snapshot = None
    execution.save()
    plan(campaign)
    assert groups(campaign) == first


@pytest.mark.django_db
def test_shares_are_respected_on_a_few_thousand_profiles():
    size = 4_000
    campaign = ab_test("shares-", size, holdout=10)
    plan(campaign)
    counts = Counter(groups(campaign).values())
    assert sum(counts.values()) == size
    # Each group's count is binomial: within 5 standard deviations of its expectation (a
    # false alarm less than once in a million runs; the hash is fixed, so it never flakes).
    for group, share in {"holdout": 0.10, "A": 0.45, "B": 0.45}.items():
        expected = size * share
        bound = 5 * math.sqrt(size * share * (1 - share))
        assert abs(counts[group] - expected) < bound, (group, counts)


# --- sending ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_ab_test_with_a_holdout_end_to_end(sinks):
    campaign = ab_test("e2e-", 40)
    execution = drive(campaign)
    assigned = groups(campaign)
    holdout = {p for p, g in assigned.items() if g == "holdout"}
    assert holdout
    assert {"A", "B"} <= set(assigned.values())

    # The holdout gets nothing, on any channel; its rows are skipped with the reason.
    rows = Delivery.objects.filter(execution=execution)
    for row in rows:
        if row.profile_id in holdout:
            assert (row.status, row.reason) == (DeliveryStatus.SKIPPED, DeliveryReason.HOLDOUT)
        else:
            assert row.status == DeliveryStatus.SENT
    received = {m["delivery_id"]: m for m in sinks.received("email")}
    sent_email = rows.filter(action__channel="email", status="sent")
    assert sorted(str(pk) for pk in sent_email.values_list("pk", flat=True)) == sorted(
        str(k) for k in received
    )
    # Each variant's content reaches its group, personalised.
    profiles = dict(Profile.objects.values_list("pk", "external_id"))
    for row in sent_email:
        message = received[str(row.pk)]
        group = assigned[row.profile_id]
        assert message["headers"]["Subject"] == f"Subject {group}"
        assert f"{group} for {profiles[row.profile_id]}" in message["raw"]
    sms_bodies = Counter(m["json"]["text"] for m in sinks.received("sms"))
    tested = Counter(g for g in assigned.values() if g != "holdout")
    assert sms_bodies == {"SMS A": tested["A"], "SMS B": tested["B"]}

    report = selectors.campaign_report(campaign=campaign)
    assert report["by_reason"] == {
        "email": {DeliveryReason.HOLDOUT: len(holdout)},
        "sms": {DeliveryReason.HOLDOUT: len(holdout)},
    }


@pytest.mark.django_db
def test_a_new_version_keeps_every_group_and_copies_the_variants(sinks):
    campaign = ab_test("copy-", 10)
    plan(campaign)
    before = groups(campaign)
    draft = services.campaign_modify(campaign=campaign, user=None)
    assert draft.holdout_share == 20
    copied = Variant.objects.filter(action__version=draft).values_list(
        "action__channel", "label", "share", "subject", "body"
    )
    assert sorted(copied) == [
        ("email", "B", 50, "Subject B", "B for {{ profile.external_id }}"),
        ("sms", "B", 50, "", "SMS B"),
    ]
    assert groups(campaign) == before


# --- results ----------------------------------------------------------------------------


def test_the_z_test_matches_a_worked_example():
    # 200 of 1,000 against 250 of 1,000: pooled p = 0.225, standard error
    # sqrt(0.225 × 0.775 × (2 / 1,000)) = 0.018675, z = -0.05 / 0.018675 = -2.6774, and the
    # two-sided p-value 2 × (1 − Φ(2.6774)) = 0.00742.
    test = two_proportion_z_test(200, 1_000, 250, 1_000)
    assert test is not None
    assert test.z == pytest.approx(-2.6774, abs=1e-4)
    assert test.p_value == pytest.approx(0.00742, abs=1e-5)
    assert two_proportion_z_test(0, 0, 1, 10) is None  # an empty group: no test
    assert two_proportion_z_test(0, 10, 0, 10) is None  # no variation: no test


def opened(campaign: Campaign, profile_ids: list[int]) -> None:
    """Each profile opened its email of the campaign once."""
    rows = Delivery.objects.filter(
        execution__campaign=campaign, action__channel="email", profile_id__in=profile_ids
    )
    events_record(
        events=[
            ProviderEvent(
                provider="salvo",
                event_id=f"open-{row.pk}",
                kind=EventKind.OPENED,
                channel="email",
                occurred_at=timezone.now(),
                delivery_id=row.pk,
            )
            for row in rows
        ]
    )


@pytest.mark.django_db
def test_a_winner_is_named_only_when_the_difference_is_significant(sinks):
    campaign = ab_test("win-", 400)
    drive(campaign)
    assigned = groups(campaign)
    a = [p for p, g in assigned.items() if g == "A"]
    b = [p for p, g in assigned.items() if g == "B"]

    # A few more opens for B than for A: not significant, no winner.
    opened(campaign, a[:10] + b[:14])
    results = experiment_results(campaign=campaign, metric="opened")
    assert results is not None
    by_group = {row["group"]: row for row in results["groups"]}
    assert (by_group["A"]["n"], by_group["A"]["count"]) == (len(a), 10)
    assert (by_group["B"]["n"], by_group["B"]["count"]) == (len(b), 14)
    assert results["comparison"]["best"] == "B"
    assert results["comparison"]["significant"] is False
    assert results["winner"] is None
    # Opens need a message: the holdout has none to compare with, and says so.
    assert results["holdout"]["n"] == len(assigned) - len(a) - len(b)
    assert results["holdout"]["rate"] is None
    assert by_group["B"]["lift"] is None
    assert "holdout gets none" in results["note"]

    # Most of B opening: B wins.
    opened(campaign, b[: len(b) * 3 // 4])
    results = experiment_results(campaign=campaign, metric="opened")
    assert results is not None
    assert results["comparison"]["significant"] is True
    assert results["comparison"]["p_value"] < 0.05
    assert results["winner"] == "B"
    assert experiment_results(campaign=campaign, metric="clicked")["winner"] is None  # type: ignore[index]


@pytest.mark.django_db
def test_a_campaign_without_an_experiment_has_no_results_and_no_assignments(sinks):
    audience("plain-", 5)
    campaign = make_live_campaign(segment=segment_of("plain-"), actions=[email_action()])
    drive(campaign)
    assert not Assignment.objects.exists()
    assert experiment_results(campaign=campaign) is None
    assert len(sinks.received("email")) == 5


@pytest.mark.django_db
def test_a_triggered_campaigns_recipients_are_assigned_and_get_their_variant(sinks):
    from campaigns.choices import CampaignKind
    from campaigns.triggers import trigger_create
    from tests.campaigns.delivery_support import send_all

    campaign = make_live_campaign(
        kind=CampaignKind.API_TRIGGERED,
        segment=None,
        holdout_share=30,
        actions=[sms_action(body="SMS A", variants=[{"share": 50, "body": "SMS B"}])],
    )
    result = trigger_create(
        campaign=campaign,
        user=None,
        recipients=[
            {"external_id": f"buyer-{i}", "profile": {"phone": f"+3361234{i:04d}"}}
            for i in range(30)
        ],
        idempotency_key="k",
    )
    send_all(result.trigger.execution)
    assigned = groups(campaign)
    assert len(assigned) == 30
    expected = Counter(g for g in assigned.values() if g != "holdout")
    bodies = Counter(m["json"]["text"] for m in sinks.received("sms"))
    assert bodies == {f"SMS {group}": n for group, n in expected.items()}
    assert sum(bodies.values()) == 30 - Counter(assigned.values())["holdout"]
