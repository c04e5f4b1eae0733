"""Audience domain functions: profiles, consent, imports, segments and snapshots.

The admin, the REST API and the management commands change audience data through these
functions only. Bad input raises `ValidationError` (HTTP 400, a form error, a command
error) and leaves the data as it was. The segment functions and the import check the user's
permissions (`PermissionDenied`; `user=None` is the system); profile edits are checked by
the doors, which are the only callers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from django.core.exceptions import EmptyResultSet, ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from config.permissions import require_perms

from .choices import ADDRESS_FIELDS, ConsentChannel, ConsentSource, ImportFormat, SegmentKind
from .imports import (
    ImportRefused,
    Rejected,
    Row,
    RowBatch,
    guess_format,
    normalize_phone,
    read_rows,
)
from .imports.writing import STAGE, create_stage, stage_data, transaction_now, write_chunk
from .models import (
    PROFILE_DATA_FIELDS,
    AudienceMember,
    AudienceSnapshot,
    ConsentKeyword,
    Profile,
    Segment,
    consent_field,
)
from .rules import rule_errors
from .selectors import segment_profiles
from .validators import AttributeLimits

SEGMENT_FIELDS = ("name", "description", "kind", "rules")
SNAPSHOT_WORK_MEM = "128MB"
# Rows per chunk written (and per CSV batch checked): each chunk costs a few round trips
# and a hand-over between the threads, during which the database waits.
IMPORT_CHUNK_ROWS = 25_000
# The writing thread takes the GIL back once per round trip and per block of COPY data:
# the default 5 ms switch interval left the database idle for about a fifth of an import.
IMPORT_SWITCH_INTERVAL_S = 0.001
MAX_REPORTED_REJECTIONS = 1000


# --- profiles ---------------------------------------------------------------------------


def _check_time_zone(profile: Profile) -> None:
    from .imports.reading import _time_zones

    if profile.time_zone and profile.time_zone not in _time_zones():
        raise ValidationError(
            {"time_zone": f"Unknown time zone “{profile.time_zone}”; use an IANA name."}
        )


def _apply_profile(
    profile: Profile,
    data: Mapping[str, Any],
    consent: Mapping[str, bool] | None,
    source: str,
    *,
    validate_unique: bool = True,
) -> None:
    unknown = sorted(set(data) - set(PROFILE_DATA_FIELDS))
    if unknown:
        raise ValidationError({name: "Unknown profile field." for name in unknown})
    for name, value in data.items():
        if name == "phone" and isinstance(value, str):
            value = normalize_phone(value.strip())
        elif name == "attributes" and not isinstance(value, dict):
            raise ValidationError({"attributes": "Attributes must be a JSON object."})
        setattr(profile, name, value)
    now = timezone.now()
    for channel, allowed in (consent or {}).items():
        if channel not in ConsentChannel.values:
            raise ValidationError({"consent": f"Unknown channel “{channel}”."})
        if not isinstance(allowed, bool):
            raise ValidationError({"consent": f"consent.{channel} must be true or false."})
        profile.set_consent(channel, allowed, source=source, at=now)
    profile.full_clean(validate_unique=validate_unique)
    _check_time_zone(profile)


def profile_data_apply(
    profile: Profile,
    *,
    data: Mapping[str, Any],
    consent: Mapping[str, bool] | None = None,
    source: str = ConsentSource.API,
) -> None:
    """Check `data` and `consent` as ``profile_create``/``profile_update`` do and set them
    on `profile`, without saving it nor asking the database whether its external_id is
    taken: for callers that write many profiles at once and know which ids exist (an API
    trigger's recipients). Raises ``ValidationError`` keyed by field."""
    _apply_profile(profile, data, consent, source, validate_unique=False)


@transaction.atomic
def profile_create(
    *,
    data: Mapping[str, Any],
    consent: Mapping[str, bool] | None = None,
    source: str = ConsentSource.API,
) -> Profile:
    profile = Profile()
    _apply_profile(profile, data, consent, source)
    profile.save()
    return profile


@transaction.atomic
def profile_update(
    *,
    profile: Profile,
    data: Mapping[str, Any],
    consent: Mapping[str, bool] | None = None,
    source: str = ConsentSource.API,
) -> Profile:
    profile = Profile.objects.select_for_update().get(pk=profile.pk)
    _apply_profile(profile, data, consent, source)
    profile.save()
    return profile


@transaction.atomic
def profile_unsubscribe(*, profile_id: int, channel: str) -> bool:
    """Withdraw a profile's marketing consent for one channel, as its unsubscribe link
    asks. Returns whether it changed; a second click, or a profile deleted since, changes
    nothing."""
    profile = Profile.objects.select_for_update().filter(pk=profile_id).first()
    if profile is None:
        return False
    if not profile.set_consent(channel, False, source=ConsentSource.UNSUBSCRIBE, at=timezone.now()):
        return False
    field = consent_field(channel)
    profile.save(update_fields=[field, f"{field}_changed_at", f"{field}_source", "updated_at"])
    return True


# --- consent a person gave or withdrew at a provider --------------------------------------


def consent_withdraw(
    *, profile_ids: Iterable[int] | QuerySet[Any, Any], channel: str, source: str
) -> int:
    """Withdraw the profiles' marketing consent for one channel: an opt-out a provider
    reported (``campaigns.events``: an ESP's unsubscribe or spam complaint, Twilio's "opted
    out"). One UPDATE (``profile_ids`` may be a subquery); the time and source change only
    for the profiles that consented. How many changed."""
    return _consent_set(Profile.objects.filter(pk__in=profile_ids), channel, False, source)


def consent_keyword_apply(
    *, provider: str, message_id: str, channel: str, address: str, keyword: str, allowed: bool
) -> ConsentKeyword | None:
    """Set the marketing consent of every profile at ``address`` on the channel as a
    person's keyword text asked (STOP: withdrawn, START: given again; source
    ``sms_keyword``), and keep the message. None, changing nothing, for a message applied
    before (the provider's retry of its webhook): the unique (provider, message_id)
    decides, also between two retries at once.

    The address is matched as profiles store it: a phone number without the spaces, dots,
    dashes and brackets people type (``profile_update``, the import)."""
    column = ADDRESS_FIELDS[ConsentChannel(channel)]
    address = address.strip()
    if column == "phone":
        address = normalize_phone(address)
    row = ConsentKeyword(
        provider=provider,
        message_id=message_id,
        channel=channel,
        address=address,
        keyword=keyword[:32],
        allowed=allowed,
        received_at=timezone.now(),
    )
    with transaction.atomic():
        try:
            with transaction.atomic():
                row.save(force_insert=True)
        except IntegrityError:
            return None
        if address:
            profiles = Profile.objects.filter(**{column: address})
            _consent_set(profiles, channel, allowed, ConsentSource.SMS_KEYWORD)
    return row


def _consent_set(profiles: QuerySet[Profile], channel: str, allowed: bool, source: str) -> int:
    """Set the channel's consent of the profiles that hold the other value, with the time
    and the source of the change (as ``Profile.set_consent`` does for one), in one UPDATE."""
    column = consent_field(channel)
    now = timezone.now()
    return profiles.exclude(**{column: allowed}).update(
        **{
            column: allowed,
            f"{column}_changed_at": now,
            f"{column}_source": source,
            "updated_at": now,
        }
    )


# --- segments ---------------------------------------------------------------------------


def _check_segment(segment: Segment) -> None:
    if segment.kind == SegmentKind.STATIC and segment.rules:
        raise ValidationError({"rules": "A static segment has no rules; leave them empty."})
    if segment.kind == SegmentKind.RULES:
        errors = rule_errors(segment.rules)
        if errors:
            raise ValidationError({"rules": errors})
    segment.full_clean(exclude=["rules"])


@transaction.atomic
def segment_create(
    *,
    user: Any,
    name: str,
    kind: str = SegmentKind.RULES,
    rules: Any = None,
    description: str = "",
) -> Segment:
    require_perms(user, "segments.add_segment", to="create a segment")
    segment = Segment(
        name=name,
        kind=kind,
        rules={} if rules is None else rules,
        description=description,
    )
    _check_segment(segment)
    segment.save()
    return segment


@transaction.atomic
def segment_update(*, segment: Segment, user: Any, data: Mapping[str, Any]) -> Segment:
    require_perms(user, "segments.view_segment", "segments.change_segment", to="edit a segment")
    unknown = sorted(set(data) - set(SEGMENT_FIELDS))
    if unknown:
        raise ValidationError({name: "Unknown segment field." for name in unknown})
    segment = Segment.objects.select_for_update().get(pk=segment.pk)
    if "kind" in data and data["kind"] != segment.kind:
        raise ValidationError(
            {"kind": "A segment's kind cannot change; create a new segment (or freeze this one)."}
        )
    for name, value in data.items():
        setattr(segment, name, value)
    _check_segment(segment)
    segment.save()
    return segment


def _select_sql(queryset: Any) -> tuple[str, tuple[Any, ...]] | None:
    """The queryset's SELECT and parameters, or None when it can match nothing."""
    try:
        sql, params = queryset.query.sql_with_params()
    except EmptyResultSet:
        return None
    return sql, tuple(params)


@transaction.atomic
def segment_freeze(*, segment: Segment, user: Any, name: str) -> Segment:
    """A new static segment holding the segment's current members, copied inside the
    database with one INSERT … SELECT. Reads the segment: needs its view permission."""
    require_perms(user, "segments.view_segment", to="freeze a segment")
    frozen = segment_create(
        user=user,
        name=name,
        kind=SegmentKind.STATIC,
        description=f"Members of “{segment.name}” frozen at {timezone.now():%Y-%m-%d %H:%M} UTC.",
    )
    select = _select_sql(segment_profiles(segment=segment).order_by().values("id"))
    if select is not None:
        through = Segment.members.through._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {through} (segment_id, profile_id) "
                f"SELECT %s, members.id FROM ({select[0]}) AS members",
                (frozen.pk, *select[1]),
            )
    return frozen


# --- audience snapshots -----------------------------------------------------------------


@transaction.atomic
def audience_snapshot_create(
    *,
    segment: Segment,
    profile_id_range: tuple[int, int] | None = None,
    snapshot: AudienceSnapshot | None = None,
) -> AudienceSnapshot:
    """Materialise the segment's members into a snapshot with one INSERT … SELECT.

    Without `snapshot`, a new snapshot is created. With `profile_id_range=(low, high)`
    only profiles with `low <= id < high` are added, so a large audience can be resolved
    slice by slice (see `selectors.profile_id_ranges`) into the same snapshot while the
    first slices are already being delivered. Keys continue from the snapshot's size, in
    profile-id order, so the members a slice added are the keys after the size it found.

    Slices go in ascending profile-id order: a slice adds only profiles above the last
    member, so adding one twice (or a slice below what is in) adds nothing the second time.
    """
    fresh = snapshot is None
    if snapshot is None:
        snapshot = AudienceSnapshot.objects.create(segment=segment, size=0)
    else:
        # Serialises concurrent slices of one snapshot, so their keys never collide.
        snapshot = AudienceSnapshot.objects.select_for_update().get(pk=snapshot.pk)
    queryset = segment_profiles(segment=segment).order_by()
    if profile_id_range is not None:
        low, high = profile_id_range
        if low >= high:
            raise ValidationError(f"Empty profile id range [{low}, {high}).")
        queryset = queryset.filter(id__gte=low, id__lt=high)
    if not fresh:
        # The last key holds the highest profile id: one read of the primary key, where a
        # unique index on (snapshot, profile) to skip members already in would cost every
        # member of every snapshot a second index entry.
        last = (
            AudienceMember.objects.filter(snapshot=snapshot)
            .order_by("-key")
            .values_list("profile_id", flat=True)
            .first()
        )
        if last is not None:
            queryset = queryset.filter(id__gt=last)
    select = _select_sql(queryset.values("id"))
    added = 0
    if select is not None:
        table = AudienceMember._meta.db_table
        sql = (
            f"INSERT INTO {table} (snapshot_id, key, profile_id) "
            "SELECT %s, %s + ROW_NUMBER() OVER (ORDER BY audience.id), audience.id "
            f"FROM ({select[0]}) AS audience"
        )
        with connection.cursor() as cursor:
            postgres = connection.vendor == "postgresql"
            if postgres:
                # Numbering a rule segment's members sorts their ids: in memory rather
                # than on disk (the default 4 MB spills beyond ~100,000 members). Only
                # for this statement: the caller's transaction may go on.
                cursor.execute(
                    "SELECT current_setting('work_mem'), set_config('work_mem', %s, true)",
                    [SNAPSHOT_WORK_MEM],
                )
                work_mem = cursor.fetchone()[0]
            cursor.execute(sql, (snapshot.pk, snapshot.size, *select[1]))
            added = max(cursor.rowcount, 0)
            if postgres:
                cursor.execute("SELECT set_config('work_mem', %s, true)", [work_mem])
    if added:
        snapshot.size += added
        snapshot.save(update_fields=["size"])
    return snapshot


# --- import -----------------------------------------------------------------------------


@dataclass
class ImportSummary:
    """What an import did, accounting for every line of the file:

        rows  = created + updated + rejected
        lines = header_lines + blank_lines + continuation_lines + rows

    Each row (a line that is not the header, not blank, and not a further line of a row
    whose quoted cell spans lines) is created, updated or rejected. A profile named twice
    in one file is created by its first row and updated by the next: the later row wins
    for every field it gives.
    """

    created: int = 0
    updated: int = 0
    rejected: int = 0
    rejections: list[Rejected] = field(default_factory=list)
    segment: str = ""
    lines: int = 0
    header_lines: int = 0
    blank_lines: int = 0
    continuation_lines: int = 0

    @property
    def rows(self) -> int:
        return self.created + self.updated + self.rejected

    def reject(self, item: Rejected) -> None:
        self.rejected += item.rows
        if len(self.rejections) < MAX_REPORTED_REJECTIONS:
            self.rejections.append(item)

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "header_lines": self.header_lines,
            "blank_lines": self.blank_lines,
            "continuation_lines": self.continuation_lines,
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "rejected": self.rejected,
            "rejections": [{"line": r.line, "reason": r.reason} for r in self.rejections],
            "rejections_truncated": self.rejected > len(self.rejections),
            "segment": self.segment or None,
        }


def _import_segment(name: str, user: Any) -> Segment:
    """The static segment an import fills: creating it needs the add permission, adding
    members to one that exists the change permission."""
    segment = Segment.objects.select_for_update().filter(name=name).first()
    if segment is None:
        return segment_create(user=user, name=name, kind=SegmentKind.STATIC)
    require_perms(user, "segments.change_segment", to="add members to a segment")
    if segment.kind != SegmentKind.STATIC:
        raise ValidationError(
            {"segment": f"Segment “{name}” is rule-based; import into a static segment."}
        )
    return segment


def profiles_import(
    *,
    user: Any,
    stream: IO[bytes],
    format: str | None = None,
    filename: str = "",
    segment_name: str = "",
    on_progress: Callable[[int, int], None] | None = None,
    chunk_rows: int = IMPORT_CHUNK_ROWS,
) -> ImportSummary:
    """Upsert profiles by `external_id` from a CSV or JSON-lines byte stream.

    Streams the file in chunks of `chunk_rows` rows (memory stays flat), staging each
    chunk in a temporary table (COPY on PostgreSQL) and upserting it set-wise (one
    INSERT … ON CONFLICT DO UPDATE on PostgreSQL, UPDATE … FROM then INSERT … SELECT on
    SQLite); on PostgreSQL a CSV chunk naming no stored profile is copied straight into
    the profile table. Good rows are kept and bad ones reported with their line numbers.
    A file that cannot be read (binary, not UTF-8, a huge line, no external_id column)
    raises `ImportRefused` and imports nothing: the whole import is one transaction.
    With `segment_name`, every imported profile also joins that static segment (created
    when missing). `on_progress(bytes_read, rows)` is called per chunk.

    Needs the add and change profile permissions, and those of the segment it fills.
    """
    require_perms(user, "segments.add_profile", "segments.change_profile", to="import profiles")
    if format is None:
        head = stream.read(64)
        stream.seek(0)
        format = guess_format(filename=filename, head=head)
    if format not in ImportFormat.values:
        raise ImportRefused(f"Unknown format “{format}”; use csv or jsonl.")
    vendor = connection.vendor
    limits = AttributeLimits.from_settings()
    summary = ImportSummary()
    with transaction.atomic():
        now = transaction_now()
        segment = _import_segment(segment_name, user) if segment_name else None
        summary.segment = segment.name if segment else ""
        reader, rows = read_rows(stream, format=format, batch_rows=chunk_rows)
        with connection.cursor() as cursor:
            create_stage(cursor, vendor)
            if vendor == "postgresql":
                # A chunk is a few thousand rows against up to millions of profiles: look
                # each one up by the external_id index rather than hashing the profile
                # table per chunk (the stage has no statistics, and gathering them per
                # chunk costs more than the lookups).
                cursor.execute("SET LOCAL enable_hashjoin = off")
                cursor.execute("SET LOCAL enable_mergejoin = off")
                # New profiles' attribute paths collect in the GIN index's pending list
                # and are merged into it in large sorted runs, not a few rows at a time.
                cursor.execute("SET LOCAL gin_pending_list_limit = '64MB'")
            chunk: dict[str, Row] = {}
            repeats = 0
            # On PostgreSQL a chunk is written by a second thread while this one parses
            # the next: the database works while Python reads (psycopg leaves the GIL
            # while it waits). One chunk at a time is in flight: the stage holds one.
            pool = ThreadPoolExecutor(max_workers=1) if vendor == "postgresql" else None
            writing: list[Future[tuple[int, int, list[Rejected]]]] = []
            switch_interval = sys.getswitchinterval()
            if pool is not None:
                sys.setswitchinterval(min(switch_interval, IMPORT_SWITCH_INTERVAL_S))

            # Whether the last chunk written named stored profiles: the next CSV batches
            # are then rendered for the upsert straight away (an update import), not for
            # the profile table, until a chunk holds new profiles only.
            updating = False

            def count(updated: int, created: int, rejected: list[Rejected]) -> None:
                nonlocal updating
                summary.created += created
                summary.updated += updated
                for item in rejected:
                    summary.reject(item)
                    # Its merged rows were counted as updates when the chunk was read.
                    summary.updated -= item.rows - 1
                updating = updated > 0 or bool(rejected)

            def settle() -> None:
                while writing:
                    count(*writing.pop().result())

            def write(part: list[Row] | RowBatch) -> None:
                # Rendered here, while the other thread may still be writing the last
                # chunk: that thread then only waits for the database.
                data = stage_data(vendor, part, new=not updating)
                settle()
                args = (cursor, vendor, now, data, segment, part, limits)
                if pool is None:
                    count(*write_chunk(*args))
                else:
                    writing.append(pool.submit(write_chunk, *args))

            def flush() -> None:
                nonlocal repeats
                if chunk:
                    write(list(chunk.values()))
                    summary.updated += repeats
                chunk.clear()
                repeats = 0
                if on_progress is not None:
                    on_progress(reader.bytes_read, summary.rows)

            try:
                for item in rows:
                    if isinstance(item, Rejected):
                        summary.reject(item)
                        continue
                    if isinstance(item, RowBatch):
                        # Rows read before the batch are written before it: a profile
                        # named in both gets the batch's (later) values.
                        flush()
                        write(item)
                        if on_progress is not None:
                            on_progress(reader.bytes_read, summary.rows)
                        continue
                    earlier = chunk.get(item.external_id)
                    if earlier is None:
                        chunk[item.external_id] = item
                    else:
                        earlier.merge(item)
                        repeats += 1
                    if len(chunk) >= chunk_rows:
                        flush()
                flush()
                settle()
            finally:
                if pool is not None:
                    # A refused file rolls the transaction back: never under a running write.
                    pool.shutdown(wait=True)
                    sys.setswitchinterval(switch_interval)
            if reader.line == 0:
                raise ImportRefused("The file is empty.")
            summary.lines = reader.line
            summary.header_lines = reader.header_lines
            summary.blank_lines = reader.blank_lines
            summary.continuation_lines = reader.continuation_lines
            cursor.execute(f"DROP TABLE IF EXISTS {STAGE}")
            if vendor == "postgresql":
                cursor.execute("SET LOCAL enable_hashjoin TO DEFAULT")
                cursor.execute("SET LOCAL enable_mergejoin TO DEFAULT")
    return summary
