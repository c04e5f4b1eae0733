"""Writing the rows an import has read: staging each chunk and upserting it set-wise.

`reading` turns a file into `Row`s and `RowBatch`es; this module writes a chunk of them
into a temporary stage table (COPY on PostgreSQL, executemany on SQLite) and upserts the
stage into the profile table in one statement per vendor, adding the profiles to the
import's static segment. `services.profiles_import` is the entry point: it holds the
permissions, the transaction and the reading loop, and calls `write_chunk` per chunk.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.utils import timezone

from ..choices import ConsentChannel, ConsentSource, consent_field
from ..models import PROFILE_TEXT_FIELDS, Profile, Segment
from ..validators import AttributeLimits, attributes_size, attributes_size_problem
from .reading import CHANNELS, SPECIAL_CHARACTERS, Piece, Rejected, Row, RowBatch, join_rows

STAGE = "salvo_profile_import"
# The profile's text columns besides the key, as the model has them.
TEXT_COLUMNS = tuple(name for name in PROFILE_TEXT_FIELDS if name != "external_id")
STAGE_COLUMNS = (
    "external_id",
    *TEXT_COLUMNS,
    "attributes",
    "attribute_reset",
    *(consent_field(channel) for channel in CHANNELS),
)


def create_stage(cursor: Any, vendor: str) -> None:
    json_type = "jsonb" if vendor == "postgresql" else "text"
    cursor.execute(f"DROP TABLE IF EXISTS {STAGE}")
    # The chunk's rows are distinct already; SQLite's UPDATE … FROM plans better with the key.
    key = "" if vendor == "postgresql" else " PRIMARY KEY"
    texts = "".join(f"{name} text, " for name in TEXT_COLUMNS)
    consents = ", ".join(f"{consent_field(channel)} boolean" for channel in CHANNELS)
    cursor.execute(
        f"CREATE TEMPORARY TABLE {STAGE} (external_id varchar(255){key}, {texts}"
        f"attributes {json_type}, attribute_reset text, {consents})"
    )


def _stage_values(row: Row) -> tuple[Any, ...]:
    values, consent = row.values, row.consent
    return (
        row.external_id,
        *(values.get(name) for name in TEXT_COLUMNS),
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
            *(values.get(name, "") for name in TEXT_COLUMNS),
            row.attributes_json() or "",
            "",
            *(COPY_BOOLEAN[consent.get(channel)] for channel in CHANNELS),
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


def stage_data(
    vendor: str, part: list[Row] | RowBatch, *, new: bool = True
) -> str | NewProfiles | list[tuple[Any, ...]]:
    """What `write_chunk` writes: COPY text on PostgreSQL, parameter rows on SQLite.
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


def write_chunk(
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


def transaction_now() -> Any:
    """The time every row of an import is written at: on PostgreSQL the transaction's
    start time, the value of `now` there."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT now()")
            return cursor.fetchone()[0]
    return connection.ops.adapt_datetimefield_value(timezone.now())
