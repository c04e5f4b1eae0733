"""Audience domain functions: profiles, consent, imports, segments and snapshots.

The admin, the REST API and the management commands change audience data through these
functions only. Bad input raises `ValidationError` (HTTP 400, a form error, a command
error) and leaves the data as it was. The segment functions and the import check the user's
permissions (`PermissionDenied`; `user=None` is the system); profile edits are checked by
the doors, which are the only callers.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from django.core.exceptions import EmptyResultSet, ValidationError
from django.db import connection, transaction
from django.utils import timezone

from config.permissions import require_perms

from .choices import ConsentChannel, ConsentSource, ImportFormat, SegmentKind
from .imports import (
    CHANNELS,
    SPECIAL_CHARACTERS,
    ImportRefused,
    Piece,
    Rejected,
    Row,
    RowBatch,
    guess_format,
    join_rows,
    normalize_phone,
    read_rows,
)
from .models import (
    PROFILE_DATA_FIELDS,
    AudienceMember,
    AudienceSnapshot,
    Profile,
    Segment,
    consent_field,
)
from .rules import rule_errors
from .selectors import segment_profiles
from .validators import AttributeLimits, attributes_size, attributes_size_problem

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
    from .imports import _time_zones

    if profile.time_zone and profile.time_zone not in _time_zones():
        raise ValidationError(
            {"time_zone": f"Unknown time zone “{profile.time_zone}”; use an IANA name."}
        )


def _apply_profile(
    profile: Profile,
    data: Mapping[str, Any],
    consent: Mapping[str, bool] | None,
    source: str,
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
    profile.full_clean()
    _check_time_zone(profile)


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


STAGE = "salvo_profile_import"
STAGE_COLUMNS = (
    "external_id",
    "email",
    "phone",
    "push_token",
    "locale",
    "time_zone",
    "attributes",
    "attribute_reset",
    "consent_email",
    "consent_sms",
    "consent_push",
)
TEXT_COLUMNS = ("email", "phone", "push_token", "locale", "time_zone")


def _create_stage(cursor: Any, vendor: str) -> None:
    json_type = "jsonb" if vendor == "postgresql" else "text"
    cursor.execute(f"DROP TABLE IF EXISTS {STAGE}")
    # The chunk's rows are distinct already; SQLite's UPDATE … FROM plans better with the key.
    key = "" if vendor == "postgresql" else " PRIMARY KEY"
    cursor.execute(
        f"CREATE TEMPORARY TABLE {STAGE} (external_id varchar(255){key}, "
        "email text, phone text, push_token text, locale text, time_zone text, "
        f"attributes {json_type}, attribute_reset text, "
        "consent_email boolean, consent_sms boolean, consent_push boolean)"
    )


def _stage_values(row: Row) -> tuple[Any, ...]:
    values, consent = row.values, row.consent
    return (
        row.external_id,
        values.get("email"),
        values.get("phone"),
        values.get("push_token"),
        values.get("locale"),
        values.get("time_zone"),
        row.attributes_json(),
        # SQLite's json_patch merges nested objects; removing the keys first makes a
        # file's attribute replace the stored one whole, as PostgreSQL's `||` does.
        row.attribute_keys_json(),
        *(consent.get(channel) for channel in CHANNELS),
    )


COPY_BOOLEAN = {None: "", True: "t", False: "f"}
# Besides the tab separating columns, what COPY's text format needs escaped.
COPY_SPECIAL = re.compile(r"[\\\n\r]")


def _copy_escape(value: str) -> str:
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def _copy_text(rows: Iterable[Row]) -> str:
    """The rows as COPY text for the stage, NULL written as an empty field.

    A row never holds an empty value (an empty cell is "not given", i.e. NULL), so the
    empty field is free to mean NULL, and a row whose text needs no escaping (nearly
    all) is one `join`.
    """
    lines = []
    width = len(STAGE_COLUMNS)
    for row in rows:
        values, consent = row.values, row.consent
        fields = (
            row.external_id,
            values.get("email", ""),
            values.get("phone", ""),
            values.get("push_token", ""),
            values.get("locale", ""),
            values.get("time_zone", ""),
            row.attributes_json() or "",
            "",
            COPY_BOOLEAN[consent.get("email")],
            COPY_BOOLEAN[consent.get("sms")],
            COPY_BOOLEAN[consent.get("push")],
        )
        line = "\t".join(fields)
        if line.count("\t") != width - 1 or COPY_SPECIAL.search(line):
            line = "\t".join([_copy_escape(field) for field in fields])
        lines.append(line)
    lines.append("")
    return "\n".join(lines)


def _escaped(column: list[str], special: bool = True) -> list[str]:
    """A column of values, escaped for COPY's text format when one may hold a `special`
    character and does."""
    if special and SPECIAL_CHARACTERS.search("\x00".join(column)):
        return [_copy_escape(value) for value in column]
    return column


def _copy_lines(size: int, fields: list[list[Piece]]) -> str:
    """COPY text of `size` rows of tab-separated `fields`, each field the concatenation
    of its pieces (a text the same in every row, or a column of the rows' own)."""
    pieces: list[Piece] = []
    for pieces_of_field in fields:
        pieces += [*pieces_of_field, "\t"]
    pieces[-1] = "\n"
    return join_rows(size, pieces)


def _attributes_field(batch: RowBatch, absent: str) -> list[Piece]:
    pieces = batch.attributes_pieces(lambda column: _escaped(column.cells, column.special))
    if pieces is not None:
        return pieces
    attributes = batch.attributes_json()
    if attributes is None:
        return [absent]
    return [_escaped([text or absent for text in attributes] if absent else attributes)]


def _text_fields(batch: RowBatch, names: Iterable[str]) -> list[list[Piece]]:
    """The batch's columns `names` as fields, empty where the file has no such column."""
    fields: list[list[Piece]] = []
    for name in names:
        column = batch.columns.get(name)
        fields.append([""] if column is None else [_escaped(column, batch.special)])
    return fields


def _batch_copy_text(batch: RowBatch) -> str:
    """A CSV batch as COPY text for the stage (NULL written as an empty field)."""
    fields = _text_fields(batch, STAGE_COLUMNS)
    fields[STAGE_COLUMNS.index("attributes")] = _attributes_field(batch, "")
    return _copy_lines(batch.size, fields)


@dataclass
class NewProfiles:
    """A CSV batch on PostgreSQL, rendered as COPY text of whole profile rows: when none
    of its profiles exists yet (the usual bulk import), it is copied straight into the
    profile table, which costs the database about a fifth less than the stage and the
    upsert (see `_write_new_profiles`)."""

    batch: RowBatch
    text: str


def _new_profiles_copy_text(batch: RowBatch) -> str:
    # PostgreSQL reads `now` as the transaction's start time, which is the import's `now`
    # (see `profiles_import`), about a quarter of the cost of parsing a written time.
    at = "now"
    fields = _text_fields(batch, ["external_id", *TEXT_COLUMNS])
    fields.append(_attributes_field(batch, "{}"))
    source = ConsentSource.IMPORT.value
    for channel in ConsentChannel.values:
        consent = batch.columns.get(f"consent_{channel}")
        if consent is None:
            fields += [["t"], ["\\N"], [""]]
        elif "" not in consent:
            fields += [[consent], [at], [source]]
        else:
            fields.append([[word or "t" for word in consent]])
            fields.append([[at if word else "\\N" for word in consent]])
            fields.append([[source if word else "" for word in consent]])
    fields += [[at], [at]]
    return _copy_lines(batch.size, fields)


def _stage_data(
    vendor: str, part: list[Row] | RowBatch, *, new: bool = True
) -> str | NewProfiles | list[tuple[Any, ...]]:
    """What `_write_chunk` writes: COPY text on PostgreSQL, parameter rows on SQLite.
    A CSV batch expected to be `new` profiles is rendered for the profile table."""
    if vendor == "postgresql":
        if isinstance(part, RowBatch):
            if new:
                return NewProfiles(part, _new_profiles_copy_text(part))
            return _batch_copy_text(part)
        return _copy_text(part)
    rows = part.rows() if isinstance(part, RowBatch) else part
    return [_stage_values(row) for row in rows]


def _fill_stage(cursor: Any, vendor: str, data: str | list[tuple[Any, ...]]) -> None:
    columns = ", ".join(STAGE_COLUMNS)
    if isinstance(data, str):
        # TRUNCATE, not DELETE: deleted rows would stay in the stage until the import's
        # transaction ends, and each chunk's upsert would scan all the earlier ones.
        cursor.execute(f"TRUNCATE {STAGE}")
        with cursor.cursor.copy(f"COPY {STAGE} ({columns}) FROM STDIN WITH (NULL '')") as copy:
            copy.write(data)
    else:
        cursor.execute(f"DELETE FROM {STAGE}")
        marks = ", ".join(["%s"] * len(STAGE_COLUMNS))
        cursor.executemany(f"INSERT INTO {STAGE} ({columns}) VALUES ({marks})", data)


# (updated, created, the external ids of updated profiles whose attributes may now be
# over the size limit: their stored text is longer, which compact JSON never is.)
Upserted = tuple[int, int, list[str]]


def _upsert_stage(cursor: Any, vendor: str, now: Any, max_bytes: int) -> Upserted:
    """Write the staged rows to the profiles."""
    if vendor == "postgresql":
        return _upsert_stage_postgresql(cursor, now, max_bytes)
    return _upsert_stage_sqlite(cursor, now, max_bytes)


def _insert_select() -> tuple[list[str], list[str]]:
    """Columns and SELECT expressions creating profiles from the stage.

    On PostgreSQL this row is also what ON CONFLICT sees as `EXCLUDED`, where what the
    file did not give stays recognisable: blank text (an empty cell never reaches the
    stage), `{}` attributes and a blank consent source mean "not given".
    """
    columns = ["external_id", *TEXT_COLUMNS, "attributes"]
    selects = [
        "s.external_id",
        *(f"COALESCE(s.{name}, '')" for name in TEXT_COLUMNS),
        "COALESCE(s.attributes, '{}')",
    ]
    for channel in ConsentChannel.values:
        columns += [
            f"consent_{channel}",
            f"consent_{channel}_changed_at",
            f"consent_{channel}_source",
        ]
        given = f"s.consent_{channel} IS NOT NULL"
        selects += [
            f"COALESCE(s.consent_{channel}, TRUE)",
            f"CASE WHEN {given} THEN %(now)s END",
            f"CASE WHEN {given} THEN %(source)s ELSE '' END",
        ]
    columns += ["created_at", "updated_at"]
    selects += ["%(now)s", "%(now)s"]
    return columns, selects


def _upsert_stage_postgresql(cursor: Any, now: Any, max_bytes: int) -> Upserted:
    """One INSERT … ON CONFLICT DO UPDATE: one look-up in the external_id index per row
    (an UPDATE … FROM then an INSERT would take two)."""
    table = Profile._meta.db_table
    columns, selects = _insert_select()
    sets = [
        *(f"{name} = COALESCE(NULLIF(EXCLUDED.{name}, ''), p.{name})" for name in TEXT_COLUMNS),
        # `'{}'` (no attributes given) merges to the stored value unchanged.
        "attributes = p.attributes || EXCLUDED.attributes",
    ]
    for channel in ConsentChannel.values:
        given = f"EXCLUDED.consent_{channel}_source <> ''"
        changed = f"{given} AND EXCLUDED.consent_{channel} <> p.consent_{channel}"
        sets += [
            f"consent_{channel} = CASE WHEN {given} THEN EXCLUDED.consent_{channel} "
            f"ELSE p.consent_{channel} END",
            f"consent_{channel}_changed_at = CASE WHEN {changed} THEN %(now)s "
            f"ELSE p.consent_{channel}_changed_at END",
            f"consent_{channel}_source = CASE WHEN {changed} THEN %(source)s "
            f"ELSE p.consent_{channel}_source END",
        ]
    sets.append("updated_at = %(now)s")
    cursor.execute(
        f"WITH written AS (INSERT INTO {table} AS p ({', '.join(columns)}) "
        f"SELECT {', '.join(selects)} FROM {STAGE} AS s "
        f"ON CONFLICT (external_id) DO UPDATE SET {', '.join(sets)} "
        # xmax is 0 exactly on the rows this statement inserted (a new profile's
        # attributes are one row's, within the limits already).
        "RETURNING (p.xmax = 0) AS created, CASE WHEN p.xmax = 0 THEN NULL "
        "WHEN octet_length(p.attributes::text) > %(max_bytes)s THEN p.external_id END AS big) "
        "SELECT COUNT(*) FILTER (WHERE created), COUNT(*) FILTER (WHERE NOT created), "
        "array_agg(big) FILTER (WHERE big IS NOT NULL) FROM written",
        {"now": now, "source": ConsentSource.IMPORT.value, "max_bytes": max_bytes},
    )
    created, updated, big = cursor.fetchone()
    return int(updated), int(created), big or []


def _upsert_stage_sqlite(cursor: Any, now: Any, max_bytes: int) -> Upserted:
    """Update the profiles the stage names, then create the others."""
    table = Profile._meta.db_table
    merge = "json_patch(json_patch(p.attributes, s.attribute_reset), s.attributes)"
    consent_sets = []
    for channel in ConsentChannel.values:
        changed = f"s.consent_{channel} IS NOT NULL AND s.consent_{channel} <> p.consent_{channel}"
        consent_sets += [
            f"consent_{channel} = COALESCE(s.consent_{channel}, p.consent_{channel})",
            f"consent_{channel}_changed_at = CASE WHEN {changed} THEN %(now)s "
            f"ELSE p.consent_{channel}_changed_at END",
            f"consent_{channel}_source = CASE WHEN {changed} THEN %(source)s "
            f"ELSE p.consent_{channel}_source END",
        ]
    sets = [
        *(f"{name} = COALESCE(s.{name}, p.{name})" for name in TEXT_COLUMNS),
        f"attributes = CASE WHEN s.attributes IS NULL THEN p.attributes ELSE {merge} END",
        *consent_sets,
        "updated_at = %(now)s",
    ]
    params = {"now": now, "source": ConsentSource.IMPORT.value, "max_bytes": max_bytes}
    # (RETURNING sees the updated table alone, by its columns' bare names.)
    cursor.execute(
        f"UPDATE {table} AS p SET {', '.join(sets)} FROM {STAGE} AS s "
        "WHERE p.external_id = s.external_id RETURNING CASE "
        "WHEN length(CAST(attributes AS BLOB)) > %(max_bytes)s THEN external_id END",
        params,
    )
    returned = cursor.fetchall()
    updated = len(returned)
    big = [external_id for (external_id,) in returned if external_id is not None]
    columns, selects = _insert_select()
    cursor.execute(
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(selects)} "
        f"FROM {STAGE} AS s "
        f"WHERE NOT EXISTS (SELECT 1 FROM {table} AS p WHERE p.external_id = s.external_id)",
        params,
    )
    created = max(cursor.rowcount, 0)
    return updated, created, big


def _grown_over_limit(
    cursor: Any, vendor: str, big: list[str], part: list[Row] | RowBatch, limits: AttributeLimits
) -> list[tuple[str, int]]:
    """The profiles among `big` whose attributes, once this chunk's rows were merged into
    them (an import adds and replaces keys), are over the size limit: (external id,
    size). A row that gave no attributes left them as they were, and is not refused
    for what was stored before the limit."""
    gave = _ids_giving_attributes(part).intersection(big)
    if not gave:
        return []
    attributes = "attributes::text" if vendor == "postgresql" else "attributes"
    cursor.execute(
        f"SELECT external_id, {attributes} FROM {Profile._meta.db_table} "
        f"WHERE external_id IN ({', '.join(['%s'] * len(gave))})",
        sorted(gave),
    )
    sizes = [(eid, attributes_size(json.loads(text))) for eid, text in cursor.fetchall()]
    return sorted((eid, size) for eid, size in sizes if size > limits.max_bytes)


def _ids_giving_attributes(part: list[Row] | RowBatch) -> set[str]:
    if isinstance(part, RowBatch):
        given = [any(cells) for cells in zip(*(c.cells for c in part.attributes), strict=True)]
        return set(itertools.compress(part.columns["external_id"], given))
    return {row.external_id for row in part if row.attributes is not None}


def _rows_by_id(part: list[Row] | RowBatch) -> dict[str, tuple[int, int]]:
    """Each profile's (line, rows of the file it stands for) in a chunk."""
    if isinstance(part, RowBatch):
        ids = part.columns["external_id"]
        return {eid: (line, 1) for eid, line in zip(ids, part.lines, strict=True)}
    return {row.external_id: (row.line, row.rows) for row in part}


def _write_chunk(
    cursor: Any,
    vendor: str,
    now: Any,
    data: str | NewProfiles | list[tuple[Any, ...]],
    segment: Segment | None,
    part: list[Row] | RowBatch,
    limits: AttributeLimits,
) -> tuple[int, int, list[Rejected]]:
    """Stage and upsert one chunk of distinct profiles (`data`, rendered from `part`):
    (updated, created, rejected). A row whose attributes would make a stored profile's
    larger than the limit is rejected, and the others written."""
    if isinstance(data, NewProfiles):
        if _write_new_profiles(cursor, data, segment):
            return 0, data.batch.size, []
        data = _batch_copy_text(data.batch)
    _fill_stage(cursor, vendor, data)
    rejected: list[Rejected] = []
    cursor.execute("SAVEPOINT salvo_import_chunk")
    updated, created, big = _upsert_stage(cursor, vendor, now, limits.max_bytes)
    over = _grown_over_limit(cursor, vendor, big, part, limits) if big else []
    if over:
        # Rare: write the chunk again without the rows that would grow a profile over.
        cursor.execute("ROLLBACK TO SAVEPOINT salvo_import_chunk")
        cursor.execute(
            f"DELETE FROM {STAGE} WHERE external_id IN ({', '.join(['%s'] * len(over))})",
            [external_id for external_id, _ in over],
        )
        updated, created, _ = _upsert_stage(cursor, vendor, now, limits.max_bytes)
        rows = _rows_by_id(part)
        for external_id, size in over:
            line, count = rows[external_id]
            problem = attributes_size_problem(size, limits, merged=True)
            rejected.append(Rejected(line, problem, rows=count))
    cursor.execute("RELEASE SAVEPOINT salvo_import_chunk")
    if segment is not None:
        _add_stage_to_segment(cursor, vendor, segment)
    return updated, created, rejected


NEW_PROFILE_COLUMNS = (
    "external_id",
    *TEXT_COLUMNS,
    "attributes",
    *(
        f"consent_{channel}{suffix}"
        for channel in ConsentChannel.values
        for suffix in ("", "_changed_at", "_source")
    ),
    "created_at",
    "updated_at",
)


def _text_array(values: list[str]) -> tuple[str | list[str], str]:
    """A parameter and the SQL matching any of `values`: one newline-separated text
    (psycopg adapts a list of 10,000 strings one by one, in Python), or the list when a
    value holds a newline."""
    joined = "\n".join(values)
    if joined.count("\n") == len(values) - 1:
        return joined, "ANY(string_to_array(%s, E'\\n'))"
    return values, "ANY(%s)"


def _write_new_profiles(cursor: Any, data: NewProfiles, segment: Segment | None) -> bool:
    """COPY the batch into the profile table; False, with nothing written, when one of
    its profiles exists already (the unique index refuses it)."""
    from psycopg.errors import UniqueViolation  # PostgreSQL only

    table = Profile._meta.db_table
    columns = ", ".join(NEW_PROFILE_COLUMNS)
    # The driver's own cursor: Django's debug mode would keep each COPY in its log of
    # queries, and memory would grow with the file.
    raw = cursor.cursor
    raw.execute("SAVEPOINT salvo_new_profiles")
    try:
        with raw.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            copy.write(data.text)
    except UniqueViolation:
        raw.execute("ROLLBACK TO SAVEPOINT salvo_new_profiles")
        return False
    raw.execute("RELEASE SAVEPOINT salvo_new_profiles")
    if segment is not None:
        ids, id_list = _text_array(data.batch.columns["external_id"])
        through = Segment.members.through._meta.db_table
        raw.execute(
            f"INSERT INTO {through} (segment_id, profile_id) SELECT %s, p.id FROM {table} AS p "
            f"WHERE p.external_id = {id_list} ON CONFLICT DO NOTHING",
            (segment.pk, ids),
        )
    return True


def _add_stage_to_segment(cursor: Any, vendor: str, segment: Segment) -> None:
    through = Segment.members.through._meta.db_table
    insert = "INSERT" if vendor == "postgresql" else "INSERT OR IGNORE"
    conflict = " ON CONFLICT DO NOTHING" if vendor == "postgresql" else ""
    cursor.execute(
        f"{insert} INTO {through} (segment_id, profile_id) SELECT %s, p.id "
        f"FROM {Profile._meta.db_table} AS p JOIN {STAGE} AS s "
        f"ON s.external_id = p.external_id{conflict}",
        (segment.pk,),
    )


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


def _transaction_now() -> Any:
    """The time every row of an import is written at: on PostgreSQL the transaction's
    start time, the value of `now` there."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT now()")
            return cursor.fetchone()[0]
    return connection.ops.adapt_datetimefield_value(timezone.now())


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
        now = _transaction_now()
        segment = _import_segment(segment_name, user) if segment_name else None
        summary.segment = segment.name if segment else ""
        reader, rows = read_rows(stream, format=format, batch_rows=chunk_rows)
        with connection.cursor() as cursor:
            _create_stage(cursor, vendor)
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
                data = _stage_data(vendor, part, new=not updating)
                settle()
                args = (cursor, vendor, now, data, segment, part, limits)
                if pool is None:
                    count(*_write_chunk(*args))
                else:
                    writing.append(pool.submit(_write_chunk, *args))

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
