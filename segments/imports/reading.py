"""Reading profile files (CSV, JSON lines) with flat memory.

This module only parses and checks rows; `writing` writes them for
`services.profiles_import`. JSON lines come one `Row` at a time. CSV rows come in
`RowBatch`es checked column by column (each check one C-level pass over a column, which is
what makes an import of 50,000 rows a second possible in Python); a row a column check
does not pass goes through the row-by-row checks, which reject it with its line number and
reason or keep it.

File-level problems (binary data, not UTF-8, a line longer than `MAX_LINE_BYTES`, a CSV
without an `external_id` column, an attribute column whose key is over the length limit, a
quote that never closes or closes in the middle of a cell) raise `ImportRefused`: the
whole file is refused and nothing is imported, the message naming the line. A quote that
does not close makes every later line's cells uncertain (the csv module would read the
rest of the file into one cell, or up to some later quote), so no row after it can be
trusted: the file is refused with the line where the quote opened, to be fixed and sent
again (an import is an upsert, so sending it again is safe). Row-level problems (a bad
email, an unsafe external id, attributes over a limit, malformed JSON on one line…)
reject that row only, with its line number and reason.

Every line is accounted for: the reader counts the header, blank lines and the further
lines of rows whose quoted cells span lines; each other line starts a row that is created,
updated or rejected.

Rows hold only what the file says: an absent key (JSON lines) or an empty cell (CSV)
leaves the stored value unchanged, and a new profile gets the field's default.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import math
import operator
import re
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache, partial
from typing import IO, Any, NamedTuple

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from ..choices import ConsentChannel, ImportFormat
from ..models import E164_PATTERN, PROFILE_TEXT_FIELDS, profile_column, validate_e164
from ..rules import ATTRIBUTE_KEY
from ..validators import (
    EXTERNAL_ID_UNSAFE,
    AttributeLimits,
    JsonTooDeep,
    attributes_problem,
    attributes_size_problem,
    check_json_nesting,
    external_id_problem,
    shown,
    text_problem,
)

MAX_LINE_BYTES = 1024 * 1024
# Files are read and decoded this many bytes at a time (then completed to a whole line).
BLOCK_BYTES = 256 * 1024
# Each text column's length limit, the model's.
TEXT_LIMITS: dict[str, int] = {
    name: int(profile_column(name).max_length or 0) for name in PROFILE_TEXT_FIELDS
}
# Profile fields an import does not set, and why: a file names them and is told so,
# rather than having them stored as free attributes of the same name.
NOT_IMPORTED = {
    "is_test": "an import does not flag test profiles; flag them on the profile's admin "
    "page or with the API (`is_test`)",
}
TRUE_WORDS = {"true", "t", "yes", "y", "1"}
FALSE_WORDS = {"false", "f", "no", "n", "0"}
INTEGER = re.compile(r"^-?(0|[1-9]\d{0,17})$")
DECIMAL = re.compile(r"^-?(0|[1-9]\d*)\.\d+$")
PHONE_PUNCTUATION = re.compile(r"[\s().-]")
E164 = re.compile(E164_PATTERN)
# Addresses of the everyday shape pass without Django's slower validator (which decides
# for everything else): dot-atom local part, hostname labels, an alphabetic TLD.
PLAIN_EMAIL = re.compile(
    r"^[A-Za-z0-9_%+'-]+(\.[A-Za-z0-9_%+'-]+)*@"
    r"([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
CHANNELS: tuple[str, ...] = tuple(ConsentChannel.values)


class ImportRefused(ValidationError):
    """The file cannot be read as a whole; nothing was imported."""


class Row:
    """One profile as a file row states it; a field not in `values` is "not given".

    `attributes` maps each given attribute's JSON member prefix (`"age":`) to its value
    as JSON text (`30`): rows are written as text, and encoding each value once while
    parsing costs far less than dumping a dict per row.
    """

    __slots__ = ("attributes", "consent", "external_id", "line", "rows", "values")

    def __init__(
        self,
        line: int,
        external_id: str,
        values: dict[str, str],
        attributes: dict[str, str] | None,
        consent: dict[str, bool],
    ) -> None:
        self.line = line
        self.external_id = external_id
        self.values = values
        self.attributes = attributes
        self.consent = consent
        # The file's rows this one stands for (more once later rows are merged into it).
        self.rows = 1

    def merge(self, later: Row) -> None:
        """A later row for the same profile wins for every field it gives."""
        self.line = later.line
        self.rows += later.rows
        self.values.update(later.values)
        if later.attributes is not None:
            self.attributes = {**(self.attributes or {}), **later.attributes}
        self.consent.update(later.consent)

    def attributes_json(self) -> str | None:
        """The given attributes as one JSON object, or None when the row gives none."""
        if self.attributes is None:
            return None
        return "{" + ",".join([key + value for key, value in self.attributes.items()]) + "}"

    def attribute_keys_json(self) -> str | None:
        """The given attribute keys, each set to null, as one JSON object."""
        if self.attributes is None:
            return None
        return "{" + ",".join([key + "null" for key in self.attributes]) + "}"


def json_member(key: str) -> str:
    """`"key":`, the start of a JSON object member."""
    return json.dumps(key) + ":"


@dataclass
class Rejected:
    line: int
    reason: str
    # The file's rows rejected: more than one when rows naming the same profile were
    # merged before the write that refused them.
    rows: int = 1


# What text formats escape (COPY's text format among them).
SPECIAL_CHARACTERS = re.compile(r"[\\\t\n\r]")


class AttributeColumn(NamedTuple):
    """An attribute's cells in a `RowBatch`: "" where a row gives nothing; otherwise the
    value's JSON text, or, when `quoted`, text whose JSON is the cell in double quotes
    (nothing in it needs escaping), so that the quotes can go in a template.

    `dense`: every row gives a value. `special`: a cell's JSON may hold one of the
    `SPECIAL_CHARACTERS`.
    """

    member: str
    cells: list[str]
    quoted: bool
    dense: bool
    special: bool

    def json_cells(self) -> list[str]:
        if not self.quoted:
            return self.cells
        return [f'"{cell}"' if cell else "" for cell in self.cells]


# A piece of text rows built column-wise: the same text in every row, or each row's own.
Piece = str | list[str]


def _piece_columns(size: int, pieces: Sequence[Piece]) -> list[Iterable[str]]:
    merged: list[Piece] = []
    for piece in pieces:
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] += piece
        elif piece != "":
            merged.append(piece)
    return [itertools.repeat(p, size) if isinstance(p, str) else p for p in merged]


def join_rows(size: int, pieces: Sequence[Piece]) -> str:
    """The `size` rows' texts, each the concatenation of `pieces`, joined: one `join`
    for the lot, with no string and no `format` call per row."""
    return "".join(itertools.chain.from_iterable(zip(*_piece_columns(size, pieces), strict=True)))


def row_texts(size: int, pieces: Sequence[Piece]) -> list[str]:
    """Each row's concatenation of `pieces`."""
    return list(map("".join, zip(*_piece_columns(size, pieces), strict=True)))


class RowBatch:
    """Good rows of a CSV file, column by column, each column checked and typed in one
    pass (see `_csv_batch`). A cell is "" where the row gives nothing; external ids are
    distinct within a batch.

    `columns` holds "external_id", the text fields and "consent_<channel>" ("t", "f");
    `attributes` holds one `AttributeColumn` per attribute column. `special`: a cell of
    `columns` may hold one of the `SPECIAL_CHARACTERS` (when not, nothing is escaped).
    `lines`: each row's line in the file.
    """

    __slots__ = ("attributes", "columns", "lines", "size", "special")

    def __init__(
        self,
        size: int,
        columns: dict[str, list[str]],
        attributes: list[AttributeColumn],
        *,
        lines: Sequence[int],
        special: bool = True,
    ) -> None:
        self.size = size
        self.columns = columns
        self.attributes = attributes
        self.lines = lines
        self.special = special

    def attributes_pieces(
        self, cells: Callable[[AttributeColumn], list[str]] = operator.attrgetter("cells")
    ) -> list[Piece] | None:
        """When every row gives every attribute (the usual file): the rows' JSON objects
        as pieces for `join_rows`, so that each object is written as part of its row.
        `cells` gives the pieces of a column's cells."""
        if not self.attributes or not all(column.dense for column in self.attributes):
            return None
        pieces: list[Piece] = ["{"]
        for i, column in enumerate(self.attributes):
            pieces.append(("," if i else "") + column.member + ('"' if column.quoted else ""))
            pieces.append(cells(column))
            if column.quoted:
                pieces.append('"')
        pieces.append("}")
        return pieces

    def attributes_json(self) -> list[str] | None:
        """Each row's attributes as one JSON object ("" when it gives none)."""
        if not self.attributes:
            return None
        pieces = self.attributes_pieces()
        if pieces is not None:
            return row_texts(self.size, pieces)
        members = [column.member for column in self.attributes]
        values = [column.json_cells() for column in self.attributes]
        return [
            "{" + ",".join([m + v for m, v in zip(members, row, strict=True) if v]) + "}"
            if any(row)
            else ""
            for row in zip(*values, strict=True)
        ]

    def rows(self) -> list[Row]:
        """The same rows one by one."""
        fields = [(name, self.columns[name]) for name in TEXT_LIMITS if name in self.columns]
        fields = [(name, column) for name, column in fields if name != "external_id"]
        consents = [
            (channel, self.columns[f"consent_{channel}"])
            for channel in CHANNELS
            if f"consent_{channel}" in self.columns
        ]
        attribute_columns = [(column.member, column.json_cells()) for column in self.attributes]
        rows = []
        for i, external_id in enumerate(self.columns["external_id"]):
            attributes = {m: column[i] for m, column in attribute_columns if column[i]}
            rows.append(
                Row(
                    0,
                    external_id,
                    {name: column[i] for name, column in fields if column[i]},
                    attributes or None,
                    {channel: column[i] == "t" for channel, column in consents if column[i]},
                )
            )
        return rows


@cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def normalize_phone(value: str) -> str:
    """Drop the spaces, dots, dashes and brackets people type inside phone numbers."""
    return PHONE_PUNCTUATION.sub("", value)


def guess_format(*, filename: str = "", head: bytes = b"") -> str:
    name = filename.lower()
    if name.endswith(".csv"):
        return ImportFormat.CSV
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return ImportFormat.JSONL
    return (
        ImportFormat.JSONL
        if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{")
        else (ImportFormat.CSV)
    )


class LineReader:
    """Decoded lines of a binary stream, refusing what is not text.

    `blocks()` yields the text a block of whole lines at a time: a clean block is checked
    and decoded in one go; a block with a problem is read again line by line, so the
    first bad line is the one reported.
    """

    def __init__(self, stream: IO[bytes], max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.stream = stream
        self.max_line_bytes = max_line_bytes
        # Lines and bytes handed out so far.
        self.line = 0
        self.bytes_read = 0
        # The lines that start no row, as the parsers find them: the CSV header, blank
        # lines (or rows of empty cells), and the further lines of a row whose quoted
        # cell spans lines. Every other line starts a row.
        self.header_lines = 0
        self.blank_lines = 0
        self.continuation_lines = 0

    def blocks(self) -> Iterator[str]:
        block_bytes = min(BLOCK_BYTES, self.max_line_bytes)
        while True:
            raw = self.stream.read(block_bytes)
            if not raw:
                return
            if not raw.endswith(b"\n"):
                raw += self.stream.readline(self.max_line_bytes + 1)
            self.bytes_read += len(raw)
            if self.line == 0:
                if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                    raise ImportRefused("The file is UTF-16 text; save it as UTF-8 and retry.")
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            text = None
            if len(raw) <= self.max_line_bytes and b"\x00" not in raw:
                with contextlib.suppress(UnicodeDecodeError):
                    text = raw.decode("utf-8")
            if text is None:
                text = self._decode_lines(raw)
            self.line += text.count("\n") + (not text.endswith("\n"))
            yield text

    def _decode_lines(self, raw: bytes) -> str:
        """Decode line by line, raising `ImportRefused` for the first line that is not text."""
        texts = []
        for number, line in enumerate(io.BytesIO(raw), start=self.line + 1):
            if len(line) > self.max_line_bytes:
                raise ImportRefused(
                    f"Line {number} is longer than {self.max_line_bytes // 1024} KiB: "
                    "this is not a CSV or JSON-lines file of profiles."
                )
            if b"\x00" in line:
                raise ImportRefused(
                    f"Line {number} contains NUL bytes: this is a binary file, "
                    "not CSV or JSON lines."
                )
            try:
                texts.append(line.decode("utf-8"))
            except UnicodeDecodeError as error:
                raise ImportRefused(
                    f"Line {number} is not UTF-8 text (byte {error.start + 1}): a binary "
                    "file, or text in another encoding? Save it as UTF-8 and retry."
                ) from error
        return "".join(texts)


def _check_values(values: dict[str, str]) -> None:
    """Check and normalise the given text fields in place; ValueError names the first bad one."""
    for name, value in values.items():
        if name == "phone" and not E164.match(value):
            value = values[name] = normalize_phone(value)
        if len(value) > TEXT_LIMITS[name]:
            raise ValueError(f"{name}: at most {TEXT_LIMITS[name]} characters, got {len(value)}")
        try:
            if name == "email" and not PLAIN_EMAIL.match(value):
                validate_email(value)
            elif name == "phone" and not E164.match(value):
                validate_e164(value)
        except ValidationError as error:
            raise ValueError(f"{name}: {' '.join(error.messages)} Got {value!r}.") from error
        if name == "time_zone" and value not in _time_zones():
            raise ValueError(f"time_zone: unknown time zone {value!r} (use an IANA name)")


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _make_row(
    line: int,
    values: dict[str, str],
    attributes: dict[str, str] | None,
    consent: dict[str, bool],
) -> Row:
    """A row from stripped, non-empty text values (an empty value says nothing: it leaves
    the stored one as it is)."""
    external_id = values.pop("external_id", "")
    if not external_id:
        raise ValueError("external_id: missing or empty")
    if len(external_id) > TEXT_LIMITS["external_id"]:
        raise ValueError(f"external_id: at most {TEXT_LIMITS['external_id']} characters")
    unsafe = external_id_problem(external_id)
    if unsafe:
        raise ValueError(f"external_id: {unsafe}")
    _check_values(values)
    return Row(line, external_id, values, attributes, consent)


# --- JSON lines -------------------------------------------------------------------------

JSON_KEYS = {*TEXT_LIMITS, "attributes", "consent"}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is too large a number")
    return value


# PostgreSQL's JSON has no NaN or Infinity, which Python's JSON reader would accept.
_decode_json = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float).decode


def _json_row(line: int, text: str, limits: AttributeLimits) -> Row:
    try:
        check_json_nesting(text)
    except JsonTooDeep as error:
        raise ValueError(f"the line is {error}") from error
    try:
        data = _decode_json(text)
    except ValueError as error:
        raise ValueError(f"invalid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError("each line must be a JSON object")
    not_imported = sorted(set(data) & set(NOT_IMPORTED))
    if not_imported:
        raise ValueError(f"{not_imported[0]}: {NOT_IMPORTED[not_imported[0]]}")
    unknown = sorted(set(data) - JSON_KEYS)
    if unknown:
        raise ValueError(f'unknown field(s) {", ".join(unknown)}; put free data under "attributes"')
    attributes = data.get("attributes")
    if attributes is not None and not isinstance(attributes, dict):
        raise ValueError("attributes: must be an object")
    consent_data = data.get("consent") or {}
    if not isinstance(consent_data, dict):
        raise ValueError('consent: must be an object such as {"email": true}')
    consent: dict[str, bool] = {}
    for channel, allowed in consent_data.items():
        if channel not in CHANNELS:
            raise ValueError(f"consent: unknown channel {channel!r}")
        if not isinstance(allowed, bool):
            raise ValueError(f"consent.{channel}: must be true or false")
        consent[channel] = allowed
    values: dict[str, str] = {}
    for name in TEXT_LIMITS:
        value = data.get(name)
        if value is None:
            continue
        if name == "external_id" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError(f"{name}: expected a string, got {json.dumps(value)[:40]}")
        # (A JSON escape can give what a UTF-8 file cannot: NUL, a lone surrogate. An
        # external id has its own check.)
        problem = text_problem(value) if name != "external_id" else None
        if problem:
            raise ValueError(f"{name}: text {problem}")
        value = value.strip()
        if value:
            values[name] = value
    members = None
    if attributes is not None:
        attributes = _without_nulls(attributes)
        problem = attributes_problem(attributes, limits)
        if problem:
            raise ValueError(problem)
        members = {json_member(key): json.dumps(value) for key, value in attributes.items()}
    return _make_row(line, values, members, consent)


def _lines(text: str) -> io.StringIO:
    # Split at "\n" only, as the file's lines are (str.splitlines also splits at "\r",
    # form feeds and more, which may sit inside quoted CSV cells).
    return io.StringIO(text, newline="\n")


def jsonl_rows(reader: LineReader) -> Iterator[Row | Rejected]:
    line = 0
    limits = AttributeLimits.from_settings()
    for block in reader.blocks():
        for text in _lines(block):
            line += 1
            if not text.strip():
                reader.blank_lines += 1
                continue
            try:
                yield _json_row(line, text, limits)
            except ValueError as error:
                yield Rejected(line, str(error))


# --- CSV --------------------------------------------------------------------------------


_json_string = json.encoder.encode_basestring


def _csv_json(value: str) -> str:
    """A cell as JSON text: whole numbers, decimals and true/false are typed; "007" and
    everything else stays a string."""
    first = value[0]
    if first.isdigit() or first == "-":
        if INTEGER.match(value):
            return str(int(value))
        if DECIMAL.match(value):
            number = float(value)
            if math.isfinite(number):
                return repr(number)
    elif first in "tTfF":
        lowered = value.lower()
        if lowered in ("true", "false"):
            return lowered
    return _json_string(value)


def _csv_columns(header: Sequence[str]) -> list[tuple[str, str]]:
    """(kind, name) per column: ("field", email), ("consent", sms), ("attribute", age)."""
    columns: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    max_key_length = AttributeLimits.from_settings().max_key_length
    for raw in header:
        name = raw.strip()
        lowered = name.lower()
        if lowered in NOT_IMPORTED:
            raise ImportRefused(f"Column {name!r}: {NOT_IMPORTED[lowered]}.")
        if lowered in TEXT_LIMITS:
            column = ("field", lowered)
        elif lowered.replace(".", "_") in {f"consent_{c}" for c in CHANNELS}:
            column = ("consent", lowered[len("consent_") :])
        else:
            key = name.removeprefix("attributes.")
            if not ATTRIBUTE_KEY.match(key):
                raise ImportRefused(
                    f"Column {name!r} is neither a profile field nor a valid attribute key "
                    '(letters, digits, "_" and "-", starting with a letter).'
                )
            if len(key) > max_key_length:
                raise ImportRefused(
                    f"Column “{shown(key)}”: attribute keys are at most {max_key_length} "
                    "characters."
                )
            column = ("attribute", key)
        if column in seen:
            raise ImportRefused(f"Column {name!r} appears twice in the header.")
        seen.add(column)
        columns.append(column)
    if ("field", "external_id") not in seen:
        raise ImportRefused(
            "The CSV header has no external_id column (found: "
            + ", ".join(h.strip() for h in header)[:200]
            + ")."
        )
    return columns


# UTF-8 bytes of a cell's JSON text per character of the cell, at most (a control
# character becomes `\u001b`): what bounds a row's attributes size before it is rendered.
JSON_BYTES_PER_CHARACTER = 6


class CsvLayout:
    """Which cell positions hold fields, attributes and consents (each in column order),
    and the attribute limits the file's rows are checked against."""

    __slots__ = ("attributes", "attributes_overhead", "consents", "fields", "limits", "width")

    def __init__(
        self, columns: list[tuple[str, str]], limits: AttributeLimits | None = None
    ) -> None:
        self.width = len(columns)
        self.fields = [(i, name) for i, (kind, name) in enumerate(columns) if kind == "field"]
        self.attributes = [
            (i, json_member(key)) for i, (kind, key) in enumerate(columns) if kind == "attribute"
        ]
        self.consents = [(i, name) for i, (kind, name) in enumerate(columns) if kind == "consent"]
        self.limits = limits or AttributeLimits.from_settings()
        # The bytes of a row's attributes object besides its cells' JSON: braces, members,
        # commas and quotes.
        self.attributes_overhead = 2 + sum(len(member) + 3 for _, member in self.attributes)

    def attributes_may_exceed(self, characters: int) -> bool:
        """Whether attribute cells of `characters` characters in all may make a row's
        attributes larger than the limit (when not, no row needs measuring)."""
        bound = self.attributes_overhead + JSON_BYTES_PER_CHARACTER * characters
        return bound > self.limits.max_bytes


def _csv_row(line: int, layout: CsvLayout, cells: list[str]) -> Row:
    # Grouping the columns by kind keeps this per-row loop short: it is most of an import's
    # Python time. Each group keeps column order, so the first bad cell is still the one
    # reported.
    if len(cells) != layout.width:
        raise ValueError(f"expected {layout.width} fields, found {len(cells)}")
    values: dict[str, str] = {}
    for i, name in layout.fields:
        cell = cells[i].strip()
        if cell:
            values[name] = cell
    attributes: dict[str, str] = {}
    for i, member in layout.attributes:
        cell = cells[i].strip()
        if cell:
            attributes[member] = _csv_json(cell)
    consent: dict[str, bool] = {}
    for i, name in layout.consents:
        cell = cells[i].strip()
        if cell:
            word = cell.lower()
            if word not in TRUE_WORDS and word not in FALSE_WORDS:
                raise ValueError(f"consent_{name}: use true or false, got {cell!r}")
            consent[name] = word in TRUE_WORDS
    row = _make_row(line, values, attributes or None, consent)
    if attributes and layout.attributes_may_exceed(sum(map(len, attributes.values()))):
        size = len((row.attributes_json() or "").encode())
        if size > layout.limits.max_bytes:
            raise ValueError(attributes_size_problem(size, layout.limits))
    return row


def _blank(cells: Sequence[str]) -> bool:
    return not "".join(cells).strip()


# Whole columns of cells joined by NUL (which a file never holds), checked by one regex.
_INT = r"(?:0|-?[1-9]\d{0,17})"
INT_COLUMN = re.compile(rf"{_INT}?(?:\x00{_INT}?)*")
BOOL_COLUMN = re.compile(r"(?:true|false)?(?:\x00(?:true|false)?)*")
# Cells that stay strings and need no JSON escaping, so that their JSON is '"' + cell + '"'.
_TEXT = (
    r"(?!(?:-?(?:0|[1-9]\d*)(?:\.\d+)?|(?i:true|false))(?:\x00|\Z))"
    r'[^\x00-\x1f"\\]+'
)
TEXT_COLUMN = re.compile(rf"(?:{_TEXT})?(?:\x00(?:{_TEXT})?)*")
# ISO dates, common in exported files, are text of that kind: this pattern says so faster.
_DATE = r"\d{4}-\d\d-\d\d"
DATE_COLUMN = re.compile(rf"(?:{_DATE})?(?:\x00(?:{_DATE})?)*+")
# (For `fullmatch`.)
EMAIL_OR_EMPTY = re.compile(f"(?:{PLAIN_EMAIL.pattern})?")
E164_OR_EMPTY = re.compile(f"(?:{E164.pattern})?")
_EMAIL = PLAIN_EMAIL.pattern.removeprefix("^").removesuffix("$")
_PHONE = E164.pattern.removeprefix("^").removesuffix("$")
# Whole columns: with `*+`, a bad cell fails the match without retrying the ones before.
EMAIL_COLUMN = re.compile(rf"(?:{_EMAIL})?(?:\x00(?:{_EMAIL})?)*+")
E164_COLUMN = re.compile(rf"(?:{_PHONE})?(?:\x00(?:{_PHONE})?)*+")
CONSENT_TEXT = {"": "", **dict.fromkeys(TRUE_WORDS, "t"), **dict.fromkeys(FALSE_WORDS, "f")}


def _has_empty(cells: list[str], joined: str) -> bool:
    """Whether a cell is empty, from the cells joined by NUL."""
    if len(cells) == 1:
        return not joined
    return joined.startswith("\x00") or joined.endswith("\x00") or "\x00\x00" in joined


def _attribute_column(member: str, cells: list[str], joined: str) -> AttributeColumn:
    dense = not _has_empty(cells, joined)
    if INT_COLUMN.fullmatch(joined) or BOOL_COLUMN.fullmatch(joined):
        return AttributeColumn(member, cells, quoted=False, dense=dense, special=False)
    if DATE_COLUMN.fullmatch(joined) or TEXT_COLUMN.fullmatch(joined):
        return AttributeColumn(member, cells, quoted=True, dense=dense, special=False)
    json_cells = [_csv_json(cell) if cell else "" for cell in cells]
    special = bool(SPECIAL_CHARACTERS.search("\x00".join(json_cells)))
    return AttributeColumn(member, json_cells, quoted=False, dense=dense, special=special)


def _failing(flags: list[Any]) -> set[int]:
    """Positions of the falsy flags."""
    if all(flags):
        return set()
    return {i for i, flag in enumerate(flags) if not flag}


def _plain_columns(lines: list[str], width: int) -> tuple[list[list[str]], str] | None:
    """The columns of unquoted lines and their text, when each has `width` cells: the
    batch is split at commas in one go and cut into columns by slicing, with no list per
    row."""
    commas = list(map(str.count, lines, itertools.repeat(",")))
    if commas.count(width - 1) != len(lines):
        return None
    text = ",".join(lines)
    cells = text.split(",")
    return [cells[i::width] for i in range(width)], text


def _stripped(column: list[str]) -> tuple[list[str], str]:
    """The cells stripped, as the row-by-row path strips them, and joined by NUL; a
    column without any whitespace (most) is kept as it is, found by one split."""
    joined = "\x00".join(column)
    if len(joined.split(maxsplit=1)[0] if joined else "") == len(joined):
        return column, joined
    column = list(map(str.strip, column))
    return column, "\x00".join(column)


def _csv_batch(
    layout: CsvLayout,
    records: list[str] | list[list[str]],
    starts: Sequence[int],
    reader: LineReader,
) -> Iterator[Row | RowBatch | Rejected]:
    """The records (unquoted lines, or cells from the csv module) as one `RowBatch` of
    the rows every column check passes, then, in file order, the others through
    `_csv_row`: rejected with its reason, or kept as a `Row` when only the column checks'
    fast patterns missed it (an unusual valid email, a phone number to normalise), or
    counted as a blank line."""
    width = layout.width
    slow: set[int] = set()
    plain = bool(records) and isinstance(records[0], str)
    split = _plain_columns(records, width) if plain else None  # type: ignore[arg-type]
    if split is not None:
        raw, text = split
        special = "\\" in text or "\t" in text
    else:
        if plain:
            records = [line.split(",") for line in records]  # type: ignore[union-attr]
        cells_of: list[list[str]] = records  # type: ignore[assignment]
        if any(len(cells) != width for cells in cells_of):
            slow = {i for i, cells in enumerate(cells_of) if len(cells) != width}
            padded = [cells if len(cells) == width else [""] * width for cells in cells_of]
        else:
            padded = cells_of
        raw = [list(column) for column in zip(*padded, strict=True)]
    columns, joined = map(list, zip(*map(_stripped, raw), strict=True))
    if split is None:
        special = any(SPECIAL_CHARACTERS.search(joined[i]) for i, _ in layout.fields)
    texts: dict[str, list[str]] = {}
    zones = _time_zones() | {""}
    for i, name in layout.fields:
        column = texts[name] = columns[i]
        # E.164 numbers and time zone names are shorter than their columns' limits.
        long_cells_possible = True
        if name == "external_id":
            if "" in column:
                slow |= _failing(column)
            # (The cells are joined by NUL, which a file never holds: see LineReader.)
            if EXTERNAL_ID_UNSAFE.search(joined[i].replace("\x00", "")):
                slow |= _failing([not EXTERNAL_ID_UNSAFE.search(cell) for cell in column])
        elif name == "email" and not EMAIL_COLUMN.fullmatch(joined[i]):
            slow |= _failing(list(map(EMAIL_OR_EMPTY.fullmatch, column)))
        elif name == "phone":
            if E164_COLUMN.fullmatch(joined[i]):
                long_cells_possible = False
            else:
                slow |= _failing(list(map(E164_OR_EMPTY.fullmatch, column)))
        elif name == "time_zone":
            if zones.issuperset(column):
                long_cells_possible = False
            else:
                slow |= _failing(list(map(zones.__contains__, column)))
        if long_cells_possible and max(map(len, column)) > TEXT_LIMITS[name]:
            slow |= {j for j, cell in enumerate(column) if len(cell) > TEXT_LIMITS[name]}
    for i, name in layout.consents:
        words = list(map(CONSENT_TEXT.get, map(str.lower, columns[i])))
        if None in words:
            slow |= _failing([word is not None for word in words])
        texts[f"consent_{name}"] = [word or "" for word in words]
    attributes = [
        _attribute_column(member, columns[i], joined[i]) for i, member in layout.attributes
    ]
    if layout.attributes:
        # Whether some row's attributes may be over the size limit, bounded by its cells'
        # length: by the longest line (one pass) for split lines, else column by column.
        cells_of_attributes = [columns[i] for i, _ in layout.attributes]
        if split is not None:
            longest = max(map(len, records))
        else:
            longest = sum(max(map(len, cells)) for cells in cells_of_attributes)
        if layout.attributes_may_exceed(longest):
            # The rows that may be are measured one by one, by `_csv_row`.
            lengths = map(sum, zip(*map(partial(map, len), cells_of_attributes), strict=True))
            slow |= {j for j, n in enumerate(lengths) if layout.attributes_may_exceed(n)}
    ids = texts["external_id"]
    if len(set(ids)) != len(ids):
        # A profile named twice: the rows go one by one, so the later one is merged.
        slow = set(range(len(records)))
    lines = starts
    if slow:
        keep = [j for j in range(len(records)) if j not in slow]
        texts = {name: [column[j] for j in keep] for name, column in texts.items()}
        attributes = [
            column._replace(cells=[column.cells[j] for j in keep]) for column in attributes
        ]
        lines = [starts[j] for j in keep]
    if texts["external_id"]:
        yield RowBatch(len(texts["external_id"]), texts, attributes, lines=lines, special=special)
    for j in sorted(slow):
        record = records[j]
        cells = record.split(",") if isinstance(record, str) else record
        try:
            yield _csv_row(starts[j], layout, cells)
        except ValueError as error:
            if _blank(cells):
                reader.blank_lines += 1
            else:
                yield Rejected(starts[j], str(error))


def _csv_records(
    reader: LineReader,
) -> Iterator[tuple[Sequence[int], list[str] | list[list[str]]]]:
    """(first line of each record, records), a block at a time.

    A block without quotes or lone carriage returns comes as its lines, to be split at
    commas (much faster than the csv module, with the same result); from the first block
    with either, the csv module reads the rest of the file (a quoted cell may span lines,
    and blocks), and each record comes as its list of cells.
    """
    line = 0
    blocks = reader.blocks()
    limit = csv.field_size_limit()
    for text in blocks:
        unquoted = '"' not in text
        if unquoted and "\r" in text and text.count("\r") == text.count("\r\n"):
            # Only Windows line ends, outside any quotes: the csv module drops them too.
            text = text.replace("\r\n", "\n")
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        if not unquoted or "\r" in text or max(map(len, lines), default=0) > limit:
            yield from _quoted_records(itertools.chain([text], blocks), line, reader)
            return
        yield range(line + 1, line + 1 + len(lines)), lines
        line += len(lines)


def _quoted_records(
    texts: Iterable[str], line: int, reader: LineReader
) -> Iterator[tuple[Sequence[int], list[list[str]]]]:
    # The lines of the record being read (the csv module reads no further than a
    # record's end), to say where a quote that does not close opened.
    record_lines: list[str] = []

    def lines() -> Iterator[str]:
        for text in texts:
            for physical in _lines(text):
                record_lines.append(physical)
                yield physical

    # `strict`: a quote closing in the middle of a cell (`"a"b`) and a quote still open
    # at the end of the file are errors, not cells swallowing the lines that follow.
    records = csv.reader(lines(), strict=True)
    while True:
        start = line + records.line_num + 1
        record_lines.clear()
        try:
            cells = next(records)
        except StopIteration:
            return
        except csv.Error as error:
            raise ImportRefused(_unreadable_record(record_lines, start, error)) from error
        reader.continuation_lines += len(record_lines) - 1
        yield (start,), [cells]


def _unreadable_record(lines: list[str], start: int, error: csv.Error) -> str:
    """Why the csv module could not read the record of `lines` starting on line `start`,
    naming the line where the quote at fault opened."""
    opened, closed = _last_quote(lines, start)
    if opened is None:
        return f"Line {start}: {error}; the file cannot be read."
    if closed is not None:
        return (
            f"Line {opened}: a quote opened on this line closes on line {closed} in the "
            "middle of a cell; the file cannot be read."
        )
    if "field larger than field limit" in str(error):
        return (
            f"Line {opened}: a quote opened on this line does not close within "
            f"{csv.field_size_limit():,} characters; the file cannot be read."
        )
    return f"Line {opened}: a quote opened on this line never closes; the file cannot be read."


def _last_quote(lines: list[str], start: int) -> tuple[int | None, int | None]:
    """Where the last quoted cell of a record's lines opened (None: no quoted cell), and
    where it closed with more of the cell after the quote (None: it did not), reading
    cells as the csv module does: a quote opens a cell only at the cell's start, and `""`
    inside a quoted cell is a quote. Only called for a record that failed to read."""
    opened = None
    state = "start"  # of a cell; then "plain", "quoted", or "quote" (one in a quoted cell)
    for number, text in enumerate(lines, start=start):
        for char in text:
            if state == "quoted":
                if char == '"':
                    state = "quote"
            elif char in ",\r\n":
                state = "start"
            elif state == "start":
                if char == '"':
                    state, opened = "quoted", number
                else:
                    state = "plain"
            elif state == "quote":
                if char != '"':
                    return opened, number
                state = "quoted"
    return opened, None


def csv_rows(reader: LineReader, batch_rows: int) -> Iterator[Row | RowBatch | Rejected]:
    layout: CsvLayout | None = None
    # Unquoted lines, or records from the csv module: a batch holds one kind.
    batch: list[Any] = []
    starts: list[int] = []
    for block_starts, records in _csv_records(reader):
        if layout is None:
            for k, record in enumerate(records):
                cells = record.split(",") if isinstance(record, str) else record
                if not _blank(cells):
                    layout = CsvLayout(_csv_columns(cells))
                    reader.blank_lines += k
                    reader.header_lines += 1
                    records = records[k + 1 :]
                    block_starts = block_starts[k + 1 :]
                    break
            else:
                reader.blank_lines += len(records)
                continue
        if batch and records and isinstance(records[0], str) != isinstance(batch[0], str):
            yield from _csv_batch(layout, batch, starts, reader)
            batch, starts = [], []
        batch.extend(records)
        starts.extend(block_starts)
        while len(batch) >= batch_rows:
            yield from _csv_batch(layout, batch[:batch_rows], starts[:batch_rows], reader)
            del batch[:batch_rows], starts[:batch_rows]
    if layout is None:
        raise ImportRefused("The file is empty: a CSV import needs a header line.")
    if batch:
        yield from _csv_batch(layout, batch, starts, reader)


def read_rows(
    stream: IO[bytes], *, format: str, batch_rows: int = 10_000
) -> tuple[LineReader, Iterator[Row | RowBatch | Rejected]]:
    """The file's rows: CSV in batches of up to `batch_rows` checked rows (plus the rows
    the batch checks set aside), JSON lines one by one."""
    reader = LineReader(stream)
    if format == ImportFormat.CSV:
        return reader, csv_rows(reader, batch_rows)
    if format == ImportFormat.JSONL:
        return reader, jsonl_rows(reader)
    raise ImportRefused(f"Unknown format {format!r}; use csv or jsonl.")
