"""The live estimate: exact on a small table and on SQLite, sampled (and saying so, with its
95% margin) on a large PostgreSQL table; the margin's arithmetic on known populations; and
every door that shows it."""

from __future__ import annotations

import json
import math
import random

import pytest
from django.db import connection
from django.urls import reverse

from segments import selectors
from segments.models import Profile
from segments.selectors import Estimate, sampled_total
from tests.segments.factories import ProfileFactory, SegmentFactory

FRENCH = {"field": "attributes.country", "op": "eq", "value": "FR"}
PROFILES = 12_000
postgres_only = pytest.mark.skipif(connection.vendor != "postgresql", reason="needs PostgreSQL")


# --- the margin's arithmetic -------------------------------------------------------------


def test_a_sample_of_pages_holding_the_same_count_has_the_textbook_margin():
    # 200 pages drawn with f = 0.1, each holding 10 counted rows: Σy/f = 20,000 and
    # Var = (1 − f)/f² · Σy² = 0.9 / 0.01 · 200 · 100 = 1,800,000 (sd 1,341.6), so the
    # margin is 1.96 · 1,341.6 = 2,629.6, rounded up to two significant digits.
    found = sampled_total([10] * 200, 0.1)
    assert found.total == 20_000
    assert 1.96 * math.sqrt(1_800_000) == pytest.approx(2_629.6, abs=0.1)
    assert found.margin == 2_700
    assert found.pages == 200


def test_every_page_drawn_is_exact_and_nothing_seen_is_zero():
    assert sampled_total([3, 4, 5], 1.0) == selectors.SampledTotal(12, 0, 3)
    assert sampled_total([], 0.05) == selectors.SampledTotal(0, 0, 0)


def test_the_margin_rounds_up_and_the_total_to_the_same_step():
    found = sampled_total([7, 9, 11, 13] * 50, 0.02)  # total 25,000, margin ≈ 4,984
    assert found.margin % 100 == 0
    assert found.total % 100 == 0
    assert found.margin >= 1.96 * math.sqrt(
        0.98 / 0.02**2 * sum(y * y for y in [7, 9, 11, 13]) * 50
    )


def test_the_95_percent_interval_covers_the_truth_95_times_in_100():
    """Draw pages as TABLESAMPLE SYSTEM does (each on its own, with probability f) from a
    table whose pages hold very different counts (clustered data, half-empty and empty
    pages): the interval holds the true total in about 95% of 2,000 draws."""
    rng = random.Random(15)
    pages = [0] * 1_000 + [rng.randint(0, 30) for _ in range(3_000)] + [40] * 1_000
    truth = sum(pages)
    fraction = 0.05
    covered = 0
    for _ in range(2_000):
        drawn = [y for y in pages if rng.random() < fraction and y]
        found = sampled_total(drawn, fraction)
        covered += abs(found.total - truth) <= found.margin
    assert 0.93 <= covered / 2_000 <= 0.97


def test_an_estimate_reads_as_exact_or_sampled():
    assert str(Estimate(1234)) == "1,234"
    assert str(Estimate(1_234_000, exact=False, margin=8_000)) == "≈ 1,234,000 ± 8,000 (sampled)"
    assert Estimate(5, exact=False, margin=2).as_dict() == {
        "count": 5,
        "exact": False,
        "margin": 2,
    }


# --- sampled or exact, in the database -------------------------------------------------------


def _profiles(n: int = PROFILES) -> None:
    """`n` profiles, one in three French, as one insert; then ANALYZE, which tells the
    planner (and the estimate) how many rows the table holds."""
    Profile.objects.bulk_create(
        Profile(
            external_id=f"p-{i:06d}",
            email=f"p-{i}@example.com",
            attributes={"country": "FR" if i % 3 == 0 else "DE"},
            consent_email=i % 4 != 0,
        )
        for i in range(n)
    )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {Profile._meta.db_table}")


@pytest.fixture
def sampling(settings):
    """Sampling from a thousand rows on: half the test table's pages (a hundred or so,
    enough for the margin to be a normal one)."""
    settings.SALVO_SEGMENT_ESTIMATE_SAMPLE_ABOVE = 1_000
    settings.SALVO_SEGMENT_ESTIMATE_SAMPLE_ROWS = PROFILES // 2
    return settings


@postgres_only
@pytest.mark.django_db
def test_a_large_table_is_sampled_and_the_margin_holds_the_exact_count(sampling):
    _profiles()
    segment = SegmentFactory.create(rules=FRENCH)

    estimate = selectors.segment_estimate(segment=segment)

    exact = selectors.segment_count(segment=segment)
    assert exact == PROFILES // 3
    assert not estimate.exact
    assert 0 < estimate.margin < exact / 2
    assert abs(estimate.count - exact) <= estimate.margin
    # The same sample each time: the figure does not flicker while rules are edited.
    assert selectors.segment_estimate(segment=segment) == estimate


@postgres_only
@pytest.mark.django_db
def test_reach_is_sampled_with_its_own_margins(sampling):
    _profiles()
    segment = SegmentFactory.create(rules=FRENCH)

    found = selectors.segment_reach(segment=segment)

    assert found["exact"] is False
    email = Profile.objects.filter(
        attributes__country="FR", consent_email=True
    ).count()  # one French profile in four has no email consent
    assert abs(found["reach"]["email"] - email) <= found["reach_margin"]["email"]
    # Nobody has a push token: seen in no page, the figure is 0 with at least the rule of
    # three's bound, never "0 ± 0".
    assert found["reach"]["push"] == 0
    assert found["reach_margin"]["push"] > 0


@postgres_only
@pytest.mark.django_db
def test_below_the_threshold_static_lists_and_rare_segments_are_exact(settings, sampling):
    _profiles()
    rare = SegmentFactory.create(
        rules={"field": "external_id", "op": "in", "value": ["p-000003", "p-000006"]}
    )
    assert selectors.segment_estimate(segment=rare) == Estimate(2)
    static = SegmentFactory.create(kind="static", rules={})
    static.members.set(Profile.objects.all()[:10])
    assert selectors.segment_estimate(segment=static) == Estimate(10)

    settings.SALVO_SEGMENT_ESTIMATE_SAMPLE_ABOVE = PROFILES * 2
    assert selectors.segment_estimate(segment=SegmentFactory.create(rules=FRENCH)) == Estimate(
        PROFILES // 3
    )


@pytest.mark.django_db
def test_sqlite_counts_exactly_whatever_the_settings(sampling):
    if connection.vendor != "sqlite":
        pytest.skip("SQLite has no TABLESAMPLE")
    _profiles(600)
    assert selectors.segment_estimate(segment=SegmentFactory.create(rules=FRENCH)) == Estimate(200)


# --- the doors ---------------------------------------------------------------------------------


@postgres_only
@pytest.mark.django_db
def test_every_door_says_the_figure_is_sampled_with_its_margin(sampling, admin_client, api_client):
    _profiles()
    segment = SegmentFactory.create(rules=FRENCH)
    estimate = selectors.segment_estimate(segment=segment)
    assert not estimate.exact

    api = api_client.get(f"/api/segments/{segment.pk}/estimate/").json()
    assert api == estimate.as_dict()

    form = admin_client.get(reverse("admin:segments_segment_estimate", args=[segment.pk]))
    assert form.json() == estimate.as_dict()

    page = admin_client.get(reverse("admin:segments_segment_change", args=[segment.pk]))
    assert f"<strong>≈ {estimate.count:,} ± {estimate.margin:,}</strong>" in page.content.decode()
    assert "profiles match now (sampled" in page.content.decode()

    live = admin_client.post(
        reverse("admin:segments_segment_rules_estimate"),
        data=json.dumps({"rules": FRENCH}),
        content_type="application/json",
    ).json()
    assert (live["count"], live["exact"], live["margin"]) == (
        estimate.count,
        False,
        estimate.margin,
    )
    assert set(live["reach_margin"]) == set(live["reach"])


@pytest.mark.django_db
def test_every_door_says_an_exact_figure_is_exact(admin_client, api_client):
    ProfileFactory.create_batch(2, attributes={"country": "FR"})
    segment = SegmentFactory.create(rules=FRENCH)
    exact = {"count": 2, "exact": True, "margin": 0}
    assert api_client.get(f"/api/segments/{segment.pk}/estimate/").json() == exact
    url = reverse("admin:segments_segment_estimate", args=[segment.pk])
    assert admin_client.get(url).json() == exact
    live = admin_client.post(
        reverse("admin:segments_segment_rules_estimate"),
        data=json.dumps({"rules": FRENCH}),
        content_type="application/json",
    ).json()
    assert (live["count"], live["exact"], live["margin"]) == (2, True, 0)
    assert live["reach_margin"] == dict.fromkeys(live["reach"], 0)
