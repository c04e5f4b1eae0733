"""Reading profile files (CSV, JSON lines) row by row, with flat memory.

This module only parses and checks rows; `services.profiles_import` writes them.

File-level problems (binary data, not UTF-8, a line longer than `MAX_LINE_BYTES`, a CSV
without an `external_id` column, an unterminated quote) raise `ImportRefused`: the whole
file is refused and nothing is imported. Row-level problems (a bad email, malformed JSON
on one line…) reject that row only, with its line number and reason.

Rows hold only what the file says: an absent key (JSON lines) or an empty cell (CSV)
leaves the stored value unchanged, and a new profile gets the field's default.
"""

from __future__ import annotations

import csv
import json
import re
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import IO, Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from .choices import ConsentChannel, ImportFormat
from .models import E164_PATTERN, validate_e164
from .rules import ATTRIBUTE_KEY

MAX_LINE_BYTES = 1024 * 1024
TEXT_LIMITS = {
    "external_id": 255,
    "email": 254,
    "phone": 32,
    "push_token": 512,
    "locale": 16,
    "time_zone": 64,
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
    """One profile as a file row states it; a field not in `values` is "not given"."""

    __slots__ = ("attributes", "consent", "external_id", "line", "values")

    def __init__(
        self,
        line: int,
        external_id: str,
        values: dict[str, str],
        attributes: dict[str, Any] | None,
        consent: dict[str, bool],
    ) -> None:
        self.line = line
        self.external_id = external_id
        self.values = values
        self.attributes = attributes
        self.consent = consent

    def merge(self, later: Row) -> None:
        """A later row for the same profile wins for every field it gives."""
        self.line = later.line
        self.values.update(later.values)
        if later.attributes is not None:
            self.attributes = {**(self.attributes or {}), **later.attributes}
        self.consent.update(later.consent)


@dataclass
class Rejected:
    line: int
    reason: str


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
    """Decoded lines of a binary stream with their numbers, refusing what is not text."""

    def __init__(self, stream: IO[bytes], max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.stream = stream
        self.max_line_bytes = max_line_bytes
        self.line = 0
        self.bytes_read = 0

    def __iter__(self) -> Iterator[str]:
        while True:
            raw = self.stream.readline(self.max_line_bytes + 1)
            if not raw:
                return
            self.line += 1
            self.bytes_read += len(raw)
            if self.line == 1:
                if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                    raise ImportRefused("The file is UTF-16 text; save it as UTF-8 and retry.")
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if len(raw) > self.max_line_bytes:
                raise ImportRefused(
                    f"Line {self.line} is longer than {self.max_line_bytes // 1024} KiB: "
                    "this is not a CSV or JSON-lines file of profiles."
                )
            if b"\x00" in raw:
                raise ImportRefused(
                    f"Line {self.line} contains NUL bytes: this is a binary file, "
                    "not CSV or JSON lines."
                )
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ImportRefused(
                    f"Line {self.line} is not UTF-8 text (byte {error.start + 1}): a binary "
                    "file, or text in another encoding? Save it as UTF-8 and retry."
                ) from error


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
    attributes: dict[str, Any] | None,
    consent: dict[str, bool],
) -> Row:
    """A row from stripped, non-empty text values (an empty value says nothing: it leaves
    the stored one as it is)."""
    external_id = values.pop("external_id", "")
    if not external_id:
        raise ValueError("external_id: missing or empty")
    if len(external_id) > TEXT_LIMITS["external_id"]:
        raise ValueError(f"external_id: at most {TEXT_LIMITS['external_id']} characters")
    _check_values(values)
    return Row(line, external_id, values, attributes, consent)


# --- JSON lines -------------------------------------------------------------------------

JSON_KEYS = {*TEXT_LIMITS, "attributes", "consent"}


def _json_row(line: int, text: str) -> Row:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"invalid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError("each line must be a JSON object")
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
        value = value.strip()
        if value:
            values[name] = value
    if attributes is not None:
        attributes = _without_nulls(attributes)
    return _make_row(line, values, attributes, consent)


def jsonl_rows(reader: LineReader) -> Iterator[Row | Rejected]:
    for text in reader:
        if not text.strip():
            continue
        try:
            yield _json_row(reader.line, text)
        except ValueError as error:
            yield Rejected(reader.line, str(error))


# --- CSV --------------------------------------------------------------------------------


def _csv_scalar(value: str) -> Any:
    """Typed attribute values from text: whole numbers, decimals and true/false; "007"
    and everything else stays a string."""
    first = value[0]
    if first.isdigit() or first == "-":
        if INTEGER.match(value):
            return int(value)
        if DECIMAL.match(value):
            return float(value)
    elif first in "tTfF":
        lowered = value.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
    return value


def _csv_columns(header: list[str]) -> list[tuple[str, str]]:
    """(kind, name) per column: ("field", email), ("consent", sms), ("attribute", age)."""
    columns: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for raw in header:
        name = raw.strip()
        lowered = name.lower()
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


class CsvLayout:
    """Which cell positions hold fields, attributes and consents (each in column order)."""

    __slots__ = ("attributes", "consents", "fields", "width")

    def __init__(self, columns: list[tuple[str, str]]) -> None:
        self.width = len(columns)
        self.fields = [(i, name) for i, (kind, name) in enumerate(columns) if kind == "field"]
        self.attributes = [(i, key) for i, (kind, key) in enumerate(columns) if kind == "attribute"]
        self.consents = [(i, name) for i, (kind, name) in enumerate(columns) if kind == "consent"]


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
    attributes: dict[str, Any] = {}
    for i, key in layout.attributes:
        cell = cells[i].strip()
        if cell:
            attributes[key] = _csv_scalar(cell)
    consent: dict[str, bool] = {}
    for i, name in layout.consents:
        cell = cells[i].strip()
        if cell:
            word = cell.lower()
            if word not in TRUE_WORDS and word not in FALSE_WORDS:
                raise ValueError(f"consent_{name}: use true or false, got {cell!r}")
            consent[name] = word in TRUE_WORDS
    return _make_row(line, values, attributes or None, consent)


def csv_rows(reader: LineReader) -> Iterator[Row | Rejected]:
    records = csv.reader(reader)
    layout: CsvLayout | None = None
    while True:
        start = reader.line + 1
        try:
            cells = next(records)
        except StopIteration:
            break
        except csv.Error as error:
            raise ImportRefused(
                f"Line {start}: {error} (an unterminated quote?); the file cannot be read."
            ) from error
        if not cells or all(not c.strip() for c in cells):
            continue
        if layout is None:
            layout = CsvLayout(_csv_columns(cells))
            continue
        try:
            yield _csv_row(start, layout, cells)
        except ValueError as error:
            yield Rejected(start, str(error))
    if layout is None:
        raise ImportRefused("The file is empty: a CSV import needs a header line.")


def read_rows(stream: IO[bytes], *, format: str) -> tuple[LineReader, Iterator[Row | Rejected]]:
    reader = LineReader(stream)
    if format == ImportFormat.CSV:
        return reader, csv_rows(reader)
    if format == ImportFormat.JSONL:
        return reader, jsonl_rows(reader)
    raise ImportRefused(f"Unknown format {format!r}; use csv or jsonl.")
