"""Read-only queries over profiles, segments and audience snapshots.

Every audience is one SQL query: `segment_profiles` is the single place that turns a
segment (rules or static list) into a queryset, and everything else (estimate, preview,
freeze, snapshot) builds on it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.models import Count, Max, Min, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.db.models.sql.datastructures import BaseTable

from config.permissions import require_perms

from .choices import SegmentKind, channel_consent_field
from .models import (
    ADDRESS_FIELDS,
    AudienceMember,
    AudienceSnapshot,
    Profile,
    Segment,
)
from .rules import compile_rules

PREVIEW_LIMIT = 20
MAX_PREVIEW_LIMIT = 100
# A segment's members are profiles: seeing them needs both.
PREVIEW_PERMISSIONS = ("segments.view_segment", "segments.view_profile")


def profile_list(*, search: str = "") -> QuerySet[Profile]:
    queryset = Profile.objects.all()
    if search:
        queryset = queryset.filter(
            Q(external_id__istartswith=search)
            | Q(email__istartswith=search)
            | Q(phone__startswith=search)
        )
    return queryset


def segment_profiles(*, segment: Segment) -> QuerySet[Profile]:
    """The segment's members as one query: compiled rules, or the static list.

    Raises `segments.rules.RuleError` when a rule segment's stored tree is invalid.
    """
    if segment.kind == SegmentKind.STATIC:
        return Profile.objects.filter(static_segments=segment)
    return Profile.objects.filter(compile_rules(segment.rules))


def segment_count(*, segment: Segment) -> int:
    """Exactly how many profiles the segment holds right now (one COUNT in the database):
    what a review or an activation counts."""
    return segment_profiles(segment=segment).count()


@dataclass(frozen=True)
class Estimate:
    """How many profiles a segment holds: exactly, or estimated from a sample of the
    profiles table, give or take `margin` (the half-width of a 95% confidence interval;
    0 when exact)."""

    count: int
    exact: bool = True
    margin: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "exact": self.exact, "margin": self.margin}

    def __str__(self) -> str:
        if self.exact:
            return f"{self.count:,}"
        return f"≈ {self.count:,} ± {self.margin:,} (sampled)"


def segment_estimate(*, segment: Segment) -> Estimate:
    """How many profiles the segment holds right now, as the segment's pages and the
    builder's live figure show it: sampled on a large profiles table
    (`estimate_sample_percent`), exact otherwise."""
    found = segment_reach(segment=segment, channels=())
    return Estimate(found["count"], exact=found["exact"], margin=found["margin"])


@dataclass(frozen=True)
class ReachRule:
    """What a profile must hold for a message on a channel to reach it: the consent column
    that must be true (None: no consent asked) and the address column that must not be
    blank (None: the channel has no address column, e.g. a webhook goes to its preset's
    URL). The one rule of reach, read two ways: as a condition the database counts
    (``condition``, for reviews and reach counts) and over one recipient's values already
    read (``consent_given``, ``address_of``, for the delivery engine's per-row check)."""

    consent: str | None
    address: str | None

    def condition(self) -> Q:
        condition = Q()
        if self.consent:
            condition &= Q(**{self.consent: True})
        if self.address:
            condition &= Q(**{f"{self.address}__isnull": False}) & ~Q(**{self.address: ""})
        return condition

    def consent_given(self, values: Mapping[str, Any]) -> bool:
        return self.consent is None or bool(values[self.consent])

    def address_of(self, values: Mapping[str, Any]) -> Any:
        """The recipient's address on the channel (blank or None: none); None when the
        channel has no address column."""
        return values[self.address] if self.address else None


def reach_rule(channel: str, *, consent_required: bool) -> ReachRule:
    """The reach rule of a message on `channel`: the channel's address present and, when
    consent is required (a marketing message on a channel with consent), that consent
    given."""
    consent = channel_consent_field(channel) if consent_required else None
    return ReachRule(consent=consent, address=ADDRESS_FIELDS.get(channel))


def reachable_on(channel: str, *, consent_required: bool) -> Q:
    """The profiles a message on `channel` can reach, as one condition the database counts
    (``reach_rule``). What the delivery engine skips as "no address" or "opted out" is what
    this leaves out: both read the same rule."""
    return reach_rule(channel, consent_required=consent_required).condition()


def segment_reach(*, segment: Segment, channels: tuple[str, ...] | None = None) -> dict[str, Any]:
    """`{"count", "exact", "margin", "reach": {channel: n}, "reach_margin": {channel: m}}`:
    how many profiles the segment holds and, per consent channel (`channels`, default all),
    how many of them a marketing message can reach there (`reachable_on`). One aggregate
    over the segment's query: over every profile (`exact` true, margins 0), or, when the
    profiles table is large (`estimate_sample_percent`), over a sample of its pages scaled
    up, each figure with its 95% margin (`sampled_total`)."""
    channels = tuple(ADDRESS_FIELDS) if channels is None else channels
    reachable = {
        channel: Count("id", filter=reachable_on(channel, consent_required=True))
        for channel in channels
    }
    members = segment_profiles(segment=segment)
    percent = None if segment.kind == SegmentKind.STATIC else estimate_sample_percent()
    if percent is not None:
        sampled = _sampled_reach(members, percent, reachable)
        if sampled is not None:
            return sampled
    totals = members.aggregate(count=Count("id"), **reachable)
    return {
        "count": totals["count"],
        "exact": True,
        "margin": 0,
        "reach": {channel: totals[channel] for channel in channels},
        "reach_margin": dict.fromkeys(channels, 0),
    }


# --- sampled estimates ----------------------------------------------------------------------

# The sample is drawn with the same seed every time: the same rules give the same figure
# while the marketer edits others, and two segments are compared on the same profiles.
SAMPLE_SEED = 15
# A figure the sample saw in fewer pages than this is not one a normal approximation
# describes: the count is then made exactly, and a reach figure gets at least the "rule of
# three" bound (below).
MIN_SAMPLED_PAGES = 30
# z for a two-sided 95% interval.
Z_95 = 1.96


def profile_table_rows() -> int:
    """How many rows the profiles table holds, as PostgreSQL's planner reckons it: the
    density of the last VACUUM/ANALYZE (`pg_class.reltuples / relpages`) times the pages
    the table holds now, so rows added since are counted. 0 on SQLite or before the first
    ANALYZE. One catalogue read, whatever the table's size."""
    if connection.vendor != "postgresql":
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT reltuples, relpages, "
            "pg_relation_size(oid) / current_setting('block_size')::int "
            "FROM pg_class WHERE oid = %s::regclass",
            [Profile._meta.db_table],
        )
        reltuples, relpages, pages = cursor.fetchone()
    if reltuples <= 0 or relpages <= 0:
        return 0
    return round(reltuples / relpages * pages)


def estimate_sample_percent() -> float | None:
    """The percentage of the profiles table's pages a live estimate reads, or None for an
    exact count: None on SQLite and while the table holds at most
    `SALVO_SEGMENT_ESTIMATE_SAMPLE_ABOVE` rows; else enough pages for about
    `SALVO_SEGMENT_ESTIMATE_SAMPLE_ROWS` rows, whatever the table's size (the estimate then
    costs the same at 2M or 50M profiles)."""
    rows = profile_table_rows()
    if rows <= int(settings.SALVO_SEGMENT_ESTIMATE_SAMPLE_ABOVE):
        return None
    percent = 100 * int(settings.SALVO_SEGMENT_ESTIMATE_SAMPLE_ROWS) / rows
    # Reading more than half the pages saves too little to be worth a margin.
    return percent if percent <= 50 else None


@dataclass(frozen=True)
class SampledTotal:
    total: int
    margin: int
    pages: int  # how many sampled pages held at least one counted row


def sampled_total(page_counts: list[int] | tuple[int, ...], fraction: float) -> SampledTotal:
    """A table's total from the counts of the pages a sample drew, each page drawn on its
    own with probability `fraction` (PostgreSQL's TABLESAMPLE SYSTEM): the
    Horvitz-Thompson estimate `Σy / f`, and the half-width of its 95% interval from the
    unbiased estimate of its variance under that design, `(1 − f) / f² · Σy²`.

    Pages, not rows, are the units drawn: rows of one page come together, so the margin
    is that of a sample of pages (wider than the same number of rows drawn one by one
    would give). It holds whatever the rows' order in the table, empty or half-empty pages
    included, as the number of pages drawn is not taken as known. Pages with no counted
    row add nothing to either sum, so only those with one need be listed. Rounded: the
    margin up to two significant digits, the total to the same step."""
    total = sum(page_counts) / fraction
    variance = (1 - fraction) / fraction**2 * sum(y * y for y in page_counts)
    margin = Z_95 * math.sqrt(variance)
    if margin <= 0:
        return SampledTotal(round(total), 0, len(page_counts))
    step = 10 ** max(0, math.floor(math.log10(margin)) - 1)
    return SampledTotal(
        round(total / step) * step, math.ceil(margin / step) * step, len(page_counts)
    )


class _SampledProfiles(BaseTable):
    """The profiles table in a FROM clause, read through `TABLESAMPLE SYSTEM (percent)`
    with the fixed seed."""

    def __init__(self, table_name: str, alias: str | None, percent: float) -> None:
        super().__init__(table_name, alias)
        self.percent = percent

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        sql, params = super().as_sql(compiler, connection)
        return (
            f"{sql} TABLESAMPLE SYSTEM (%s) REPEATABLE (%s)",
            [*params, self.percent, SAMPLE_SEED],
        )

    def relabeled_clone(self, change_map: dict[str | None, str]) -> _SampledProfiles:
        alias = change_map.get(self.table_alias, self.table_alias)
        return self.__class__(self.table_name, alias, self.percent)


def _sampled_reach(
    members: QuerySet[Profile], percent: float, reachable: dict[str, Count]
) -> dict[str, Any] | None:
    """`segment_reach`'s answer from the pages `TABLESAMPLE SYSTEM (percent)` draws: per
    page drawn, the rows the rules match and those reachable on each channel, summed
    inside the database. None when the sample saw the segment in too few pages
    (`MIN_SAMPLED_PAGES`) to say more than a count would."""
    sampled = members.order_by()
    alias = sampled.query.get_initial_alias()
    table_name = sampled.query.alias_map[alias].table_name
    sampled.query.alias_map[alias] = _SampledProfiles(table_name, alias, percent)
    table = connection.ops.quote_name(alias)
    counts = {"count": Count("id"), **reachable}
    grouped = (
        sampled.annotate(page=RawSQL(f"({table}.ctid::text::point)[0]", ()))
        .values("page")
        .annotate(**{f"n_{name}": value for name, value in counts.items()})
    )
    sql, params = grouped.query.sql_with_params()
    names = list(counts)
    sums = ", ".join(f"array_agg(n_{name})" for name in names)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {sums} FROM ({sql}) AS pages", params)
        arrays = cursor.fetchone()
    fraction = percent / 100
    figures = {
        name: sampled_total([y for y in (values or []) if y], fraction)
        for name, values in zip(names, arrays, strict=True)
    }
    count = figures.pop("count")
    if count.pages < MIN_SAMPLED_PAGES:
        return None
    rows_per_page = count.total * fraction / count.pages
    floor = math.ceil(3 / fraction * rows_per_page)  # the rule of three, in pages
    return {
        "count": count.total,
        "exact": False,
        "margin": count.margin,
        "reach": {name: figure.total for name, figure in figures.items()},
        "reach_margin": {
            name: figure.margin if figure.pages >= MIN_SAMPLED_PAGES else max(figure.margin, floor)
            for name, figure in figures.items()
        },
    }


class EstimateTimeout(Exception):
    """The database spent longer than `SALVO_SEGMENT_ESTIMATE_TIMEOUT_MS` on an estimate."""


@contextmanager
def estimate_time_limit() -> Iterator[None]:
    """Stop the queries run inside after `SALVO_SEGMENT_ESTIMATE_TIMEOUT_MS` milliseconds
    and raise `EstimateTimeout`: what keeps a live estimate, asked again and again while
    rules are typed, from running long on a large table. PostgreSQL: the transaction's
    `statement_timeout`. SQLite: a progress handler that interrupts the statement."""
    limit_ms = int(settings.SALVO_SEGMENT_ESTIMATE_TIMEOUT_MS)
    try:
        if connection.vendor == "postgresql":
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(limit_ms)])
                yield
        else:
            connection.ensure_connection()
            raw = connection.connection
            deadline = time.monotonic() + limit_ms / 1000
            # Called every 1,000 virtual-machine instructions; a true answer interrupts.
            raw.set_progress_handler(lambda: time.monotonic() > deadline, 1000)
            try:
                yield
            finally:
                raw.set_progress_handler(None, 0)
    except OperationalError as error:
        cause = str(error.__cause__ or error).lower()
        if "statement timeout" in cause or "interrupted" in cause:
            raise EstimateTimeout(
                f"The estimate took longer than {limit_ms:,} ms "
                "(SALVO_SEGMENT_ESTIMATE_TIMEOUT_MS); narrow the rules."
            ) from error
        raise


def segment_preview(*, segment: Segment, user: Any, limit: int = PREVIEW_LIMIT) -> list[Profile]:
    """A sample of the segment's members: the first `limit` (at most 100) by id, with every
    profile's data. `PermissionDenied` unless `user` may see segments and profiles (None:
    the system)."""
    require_perms(user, *PREVIEW_PERMISSIONS, to="see a segment's members")
    limit = max(1, min(limit, MAX_PREVIEW_LIMIT))
    return list(segment_profiles(segment=segment).order_by("id")[:limit])


def profile_id_ranges(*, chunk_size: int = 100_000) -> list[tuple[int, int]]:
    """Half-open profile-id ranges `[low, high)` covering every profile, `chunk_size` ids
    wide: the slices `audience_snapshot_create(profile_id_range=…)` resolves one by one."""
    bounds = Profile.objects.aggregate(low=Min("id"), high=Max("id"))
    if bounds["low"] is None:
        return []
    low, high = int(bounds["low"]), int(bounds["high"]) + 1
    return [(start, min(start + chunk_size, high)) for start in range(low, high, chunk_size)]


def audience_member_page(
    *, snapshot: AudienceSnapshot, after_key: int = 0, limit: int = 500
) -> list[tuple[int, int]]:
    """Up to `limit` `(key, profile_id)` pairs with key > `after_key`, in key order
    (keyset pagination on the (snapshot, key) primary key: every page costs the same)."""
    rows = (
        AudienceMember.objects.filter(snapshot=snapshot, key__gt=after_key)
        .order_by("key")
        .values_list("key", "profile_id")[:limit]
    )
    return [(int(key), int(profile_id)) for key, profile_id in rows]


def audience_member_batches(
    *, snapshot: AudienceSnapshot, batch_size: int = 500, after_key: int = 0
) -> Iterator[list[int]]:
    """Stream the snapshot's profile ids in batches of `batch_size`, each member once."""
    while True:
        page = audience_member_page(snapshot=snapshot, after_key=after_key, limit=batch_size)
        if not page:
            return
        yield [profile_id for _key, profile_id in page]
        after_key = page[-1][0]


def audience_member_ids_between(
    *, snapshot: AudienceSnapshot, first_key: int, last_key: int
) -> list[int]:
    """Profile ids of members with `first_key <= key <= last_key`: a batch a task can name
    by its key range alone (keys run 1…size for a snapshot resolved without overlaps)."""
    return list(
        AudienceMember.objects.filter(snapshot=snapshot, key__gte=first_key, key__lte=last_key)
        .order_by("key")
        .values_list("profile_id", flat=True)
    )


# `profile_attribute_keys` reads the attributes of this many of the newest profiles, and
# lists at most this many keys: a fixed cost whatever the number of profiles.
ATTRIBUTE_KEYS_SAMPLE = 1000
ATTRIBUTE_KEYS_MAX = 200


def profile_attribute_keys(
    *, sample: int = ATTRIBUTE_KEYS_SAMPLE, limit: int = ATTRIBUTE_KEYS_MAX
) -> list[str]:
    """The top-level attribute keys of the newest `sample` profiles, sorted, at most
    `limit` of them: the keys seen in the data, for the lists that offer them to insert
    or to pick. One query over at most `sample` rows read by the primary key's index, the
    keys drawn out inside the database; a key that only older profiles hold is not
    listed."""
    table = connection.ops.quote_name(Profile._meta.db_table)
    newest = f"SELECT attributes FROM {table} ORDER BY id DESC LIMIT %s"
    if connection.vendor == "postgresql":
        sql = (
            f"SELECT DISTINCT k FROM ({newest}) p, jsonb_object_keys(CASE WHEN "
            "jsonb_typeof(p.attributes) = 'object' THEN p.attributes ELSE '{}' END) k "
            "ORDER BY k LIMIT %s"
        )
    else:
        sql = (
            f"SELECT DISTINCT j.key FROM ({newest}) p, json_each(CASE WHEN "
            "json_type(p.attributes) = 'object' THEN p.attributes ELSE '{}' END) j "
            "ORDER BY j.key LIMIT %s"
        )
    with connection.cursor() as cursor:
        cursor.execute(sql, [sample, limit])
        return [str(key) for (key,) in cursor.fetchall()]
