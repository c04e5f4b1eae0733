"""Read-only queries over profiles, segments and audience snapshots.

Every audience is one SQL query: `segment_profiles` is the single place that turns a
segment (rules or static list) into a queryset, and everything else (estimate, preview,
freeze, snapshot) builds on it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.models import Count, Max, Min, Q, QuerySet

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


def segment_estimate(*, segment: Segment) -> int:
    """How many profiles the segment holds right now (one COUNT in the database)."""
    return segment_profiles(segment=segment).count()


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


def segment_reach(*, segment: Segment) -> dict[str, Any]:
    """`{"count": N, "reach": {channel: n}}`: how many profiles the segment holds and, per
    consent channel, how many of them a marketing message can reach there
    (`reachable_on`). One aggregate over the same query as `segment_estimate`."""
    reachable = {
        channel: Count("id", filter=reachable_on(channel, consent_required=True))
        for channel in ADDRESS_FIELDS
    }
    totals = segment_profiles(segment=segment).aggregate(count=Count("id"), **reachable)
    return {
        "count": totals["count"],
        "reach": {channel: totals[channel] for channel in ADDRESS_FIELDS},
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
