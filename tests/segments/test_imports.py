"""The column-wise CSV path against the row-by-row one, on generated files.

A CSV batch is checked, typed and rendered a column at a time (`segments.imports`);
each row can also go alone through `_csv_row`. Both must keep the same rows with the same
values, reject the same lines for the same reasons, and write the same text.
"""

import csv
import io
import json
import random
import re

import pytest

from segments import services
from segments.imports import ImportRefused, Rejected, Row, RowBatch, read_rows, writing
from segments.imports import reading as imports
from segments.models import Profile
from tests.segments.factories import ProfileFactory

CELLS = {
    "external_id": [
        *["u1", "u2", "u3", "u4", "", " u5 ", "u\u20036", "x" * 256, "u\\7", "u>8", "u\x1b9"]
    ],
    "email": ["a@example.com", "", "bad", " b@example.com", "o'hara@example.com", "x@y", "a@b.c\t"],
    "phone": ["+33612345678", "", "+33 6 12 34 56 78", "12", "(555) 123-4567"],
    "locale": ["fr", "", "de", "x" * 17, "fr\\x"],
    "time_zone": ["Europe/Paris", "", "Mars/Olympus", " UTC"],
    "consent_email": ["true", "false", "", "yes", "N", "maybe", " 1 "],
    "consent_sms": ["t", "", "0", "Y"],
    "age": ["30", "", "-0", "007", "1.5", "1e3", "-12", "abc", "True", "FALSE", "2026-11-29"],
    "plan": ["free", "", "pro team", "tab\there", "back\\slash", "été", " x", "\x1cy", "12"],
    "since": ["2026-11-29", "1999-01-01", ""],
    "note": ['say "hi"', "a,b", "two\nlines", "\x01", "ok"],
}
# Cells that make the csv module read the rest of the file.
QUOTED = {"note"}


def random_csv(rng: random.Random) -> str:
    names = rng.sample(sorted(CELLS), rng.randint(1, len(CELLS)))
    if "external_id" not in names:
        names.insert(rng.randrange(len(names) + 1), "external_id")
    lines = [",".join(names)]
    for _ in range(rng.randint(0, 30)):
        if rng.random() < 0.03:
            lines.append("")
            continue
        cells = [rng.choice(CELLS[name]) for name in names]
        if rng.random() < 0.05:
            cells = cells[:-1] if len(cells) > 1 else [*cells, "extra"]
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow(cells)
        lines.append(out.getvalue())
    end = "\r\n" if rng.random() < 0.1 else "\n"
    return end.join(lines) + end


def row_by_row(text: str) -> tuple[list[tuple], list[tuple[int, str]]]:
    """The reference: every record through the csv module and `_csv_row`."""
    records = csv.reader(io.StringIO(text, newline=""))
    layout = None
    kept, rejected = [], []
    while True:
        line = records.line_num + 1
        try:
            cells = next(records)
        except StopIteration:
            break
        if layout is None:
            if cells and "".join(cells).strip():
                layout = imports.CsvLayout(imports._csv_columns(cells))
            continue
        try:
            kept.append(described(imports._csv_row(line, layout, cells)))
        except ValueError as error:
            if "".join(cells).strip():
                rejected.append((line, str(error)))
    return kept, rejected


def described(row: Row) -> tuple:
    return (
        row.external_id,
        sorted(row.values.items()),
        sorted((row.attributes or {}).items()),
        sorted(row.consent.items()),
    )


def column_wise(text: str, batch_rows: int) -> tuple[list[tuple], list[tuple[int, str]], list]:
    _, items = read_rows(io.BytesIO(text.encode()), format="csv", batch_rows=batch_rows)
    kept, rejected, batches = [], [], []
    for item in items:
        if isinstance(item, Rejected):
            rejected.append((item.line, item.reason))
        elif isinstance(item, RowBatch):
            batches.append(item)
            kept += [described(row) for row in item.rows()]
        else:
            kept.append(described(item))
    return kept, rejected, batches


@pytest.mark.parametrize("seed", range(4))
def test_batches_keep_and_reject_what_the_row_by_row_path_does(seed, monkeypatch, settings):
    rng = random.Random(seed)
    if seed % 2:
        # Small blocks: files switch from split lines to the csv module mid-way.
        monkeypatch.setattr(imports, "BLOCK_BYTES", 64)
    if seed >= 2:
        # A size limit that some rows' attributes pass and others do not.
        settings.SALVO_PROFILE_ATTRIBUTES_MAX_BYTES = 60
    for _ in range(150):
        text = random_csv(rng)
        kept, rejected = row_by_row(text)
        batch_kept, batch_rejected, _ = column_wise(text, batch_rows=rng.choice([1, 4, 10_000]))
        assert sorted(batch_rejected) == sorted(rejected), text
        # Rows come batch first, then the rows a batch set aside: same rows, and for each
        # profile the same order (the later of two rows wins).
        assert sorted(batch_kept) == sorted(kept), text
        for external_id in {row[0] for row in kept}:
            assert [r for r in batch_kept if r[0] == external_id] == [
                r for r in kept if r[0] == external_id
            ], text


# --- the COPY text a batch renders, against what the file says ---------------------------

COPY_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def copy_field(text: str, null: str) -> str | None:
    """One field of COPY's text format as PostgreSQL reads it (PostgreSQL docs, COPY, "Text
    Format"): the NULL marker, or the text with its backslash sequences decoded."""
    if text == null:
        return None

    def unescape(match: re.Match[str]) -> str:
        sequence = match.group(1)
        if sequence[0] in COPY_ESCAPES:
            return COPY_ESCAPES[sequence[0]]
        if sequence[0] == "x":
            return chr(int(sequence[1:], 16))
        if sequence[0].isdigit():
            return chr(int(sequence, 8))
        return sequence

    return re.sub(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)", unescape, text)


def copy_rows(text: str, null: str) -> list[list[str | None]]:
    """The rows of COPY text: one a line, fields split at tabs (data tabs are escaped)."""
    assert text.endswith("\n") or not text
    return [[copy_field(f, null) for f in line.split("\t")] for line in text.split("\n")[:-1]]


def typed(cell: str) -> object:
    """What an attribute cell means, as the import documents it: whole numbers (up to 18
    digits) and decimals are numbers, true/false (any case) booleans, the rest text."""
    if re.fullmatch(r"-?(0|[1-9]\d{0,17})", cell):
        return int(cell)
    if re.fullmatch(r"-?(0|[1-9]\d*)\.\d+", cell):
        return float(cell)
    if cell.lower() in ("true", "false"):
        return cell.lower() == "true"
    return cell


CONSENT_WORDS = {"true": "t", "t": "t", "yes": "t", "y": "t", "1": "t"} | {
    "false": "f",
    "f": "f",
    "no": "f",
    "n": "f",
    "0": "f",
}
PROFILE_TEXT = ("email", "phone", "push_token", "locale", "time_zone")


def file_records(text: str) -> dict[str, dict[str, str]]:
    """Each data record of a CSV file with distinct ids, by its external id: the header's
    names (lower-cased for fields) to the stripped cells."""
    records = [r for r in csv.reader(io.StringIO(text, newline="")) if "".join(r).strip()]
    header = [name.strip() for name in records[0]]
    by_id = {}
    for cells in records[1:]:
        if len(cells) == len(header):
            record = {name: cell.strip() for name, cell in zip(header, cells, strict=True)}
            by_id[record["external_id"]] = record
    return by_id


def expected_profile(record: dict[str, str]) -> dict[str, object]:
    profile: dict[str, object] = {"external_id": record["external_id"]}
    profile |= {name: record.get(name, "") for name in PROFILE_TEXT}
    attributes = {
        name: typed(cell)
        for name, cell in record.items()
        if name not in ("external_id", *PROFILE_TEXT) and not name.startswith("consent_") and cell
    }
    profile["attributes"] = attributes
    profile |= {
        channel: CONSENT_WORDS[record[f"consent_{channel}"].lower()]
        if record.get(f"consent_{channel}")
        else None
        for channel in ("email", "sms", "push")
    }
    return profile


def new_profile_fields(fields: list[str | None]) -> dict[str, object]:
    """A decoded profile-table COPY row of `_new_profiles_copy_text`, in the same shape;
    checking on the way that the consent's time and source follow the given value."""
    profile: dict[str, object] = {"external_id": fields[0]}
    profile |= dict(zip(PROFILE_TEXT, fields[1:6], strict=True))
    profile["attributes"] = json.loads(fields[6] or "")
    for i, channel in enumerate(("email", "sms", "push")):
        value, at, source = fields[7 + 3 * i : 10 + 3 * i]
        given = at is not None
        assert (at, source) == (("now", "import") if given else (None, "")), fields
        profile[channel] = value if given else None
        assert value == (value if given else "t"), fields
    assert fields[16:] == ["now", "now"], fields
    return profile


def stage_fields(fields: list[str | None]) -> dict[str, object]:
    """A decoded stage COPY row (NULL written as an empty field), in the same shape."""
    profile: dict[str, object] = {"external_id": fields[0]}
    profile |= {name: value or "" for name, value in zip(PROFILE_TEXT, fields[1:6], strict=True)}
    profile["attributes"] = json.loads(fields[6]) if fields[6] is not None else {}
    assert fields[7] is None, fields  # attribute_reset: SQLite's alone
    profile |= dict(zip(("email", "sms", "push"), fields[8:11], strict=True))
    return profile


def random_csv_with_distinct_ids(rng: random.Random) -> str:
    """A random file whose external ids differ (each cell gets a suffix), so that each row
    of a batch is found in the file by its id."""
    text = random_csv(rng)
    lines = text.split("\n")
    header = next(csv.reader([lines[0].rstrip("\r")]))
    position = header.index("external_id")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for n, cells in enumerate(csv.reader(io.StringIO(text, newline="")), start=0):
        if n == 0:
            continue
        if len(cells) > position:
            cells[position] = f"{cells[position]}#{n}"
        writer.writerow(cells)
    return out.getvalue()


@pytest.mark.parametrize("seed", range(3))
def test_batches_render_the_text_the_file_says(seed):
    rng = random.Random(100 + seed)
    checked = 0
    for _ in range(200):
        text = random_csv_with_distinct_ids(rng)
        records = file_records(text)
        for batch in column_wise(text, batch_rows=rng.choice([3, 10_000]))[2]:
            rows = batch.rows()
            assert writing._batch_copy_text(batch) == writing._copy_text(rows), text
            new_profiles = copy_rows(writing._new_profiles_copy_text(batch), null="\\N")
            staged = copy_rows(writing._batch_copy_text(batch), null="")
            expected = [expected_profile(records[r.external_id]) for r in rows]
            assert [new_profile_fields(fields) for fields in new_profiles] == expected, text
            assert [stage_fields(fields) for fields in staged] == expected, text
            checked += 1
    assert checked > 100


# --- quotes that never close, and every line of a file accounted for -----------------------

LARGE = 30_010


def profile_lines(size: int, *, path: str) -> list[str]:
    """A CSV header and `size` data lines. On the "row by row" path each external id is
    named twice, so that every row is set aside from the column-wise batches and goes
    through the row-by-row checks (and the chunk's merge) instead."""
    lines = ["external_id,email,note"]
    for i in range(size):
        n = i // 2 if path == "row by row" else i
        lines.append(f"u{n},u{i}@example.com,note {i}")
    return lines


def run_import(text: str, **kwargs):
    return services.profiles_import(
        user=None, stream=io.BytesIO(text.encode()), format="csv", **kwargs
    )


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["batch", "row by row"])
@pytest.mark.parametrize("where", ["first row", "middle", "10 rows before the end", "last row"])
def test_an_unterminated_quote_refuses_the_file_with_the_line_it_opened(path, where):
    lines = profile_lines(LARGE, path=path)
    opened = {
        "first row": 2,
        "middle": LARGE // 2,
        "10 rows before the end": len(lines) - 10,
        "last row": len(lines),
    }[where]
    lines[opened - 1] = lines[opened - 1].rsplit(",", 1)[0] + ',"no closing quote'
    text = "\n".join(lines) + "\n"
    ProfileFactory.create(external_id="before")

    with pytest.raises(ImportRefused) as error:
        run_import(text)

    # The csv module gives up on a cell longer than its field size limit: the quote then
    # does not close within it, whether or not it would at the end of the file.
    after_quote = len(text) - text.index('"no closing quote') - 1
    if after_quote > csv.field_size_limit():
        why = f"does not close within {csv.field_size_limit():,} characters"
    else:
        why = "never closes"
    assert error.value.messages == [
        f"Line {opened}: a quote opened on this line {why}; the file cannot be read."
    ]
    assert list(Profile.objects.values_list("external_id", flat=True)) == ["before"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["batch", "row by row"])
def test_a_stray_quote_that_a_later_cell_closes_refuses_the_file(path):
    lines = profile_lines(100, path=path)
    lines[10] = 'x1,x1@example.com,"stray'
    # The stray quote reads on to this line's opening quote, where it closes mid-cell.
    lines[20] = 'x2,x2@example.com,"a proper cell"'

    with pytest.raises(ImportRefused) as error:
        run_import("\n".join(lines) + "\n")

    assert error.value.messages == [
        "Line 11: a quote opened on this line closes on line 21 in the middle of a cell; "
        "the file cannot be read."
    ]
    assert not Profile.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["batch", "row by row"])
def test_the_summary_accounts_for_every_line_of_a_large_file(path):
    lines = profile_lines(LARGE, path=path)
    header, data = lines[0], lines[1:]
    bad = {0, LARGE // 2, LARGE - 1}  # rows with a bad email: first, middle, last
    two_line_notes = {LARGE // 2 + 7, LARGE - 2}  # a quoted note on two lines
    rows = []
    for i, line in enumerate(data):
        external_id, _email, note = line.split(",")
        if i in bad:
            line = f"{external_id},not-an-email,{note}"
        if i in two_line_notes:
            line = f'{external_id},,"{note}\nits second line"'
        rows.append(line)
    blank_at = [0, LARGE // 3, len(rows)]  # after the header, in the middle, at the end
    for position in reversed(blank_at):
        rows.insert(position, "")
    text = "\n" + header + "\n" + "\n".join(rows) + "\n"  # and one before the header

    summary = run_import(text)

    accepted_ids = [data[i].split(",")[0] for i in range(LARGE) if i not in bad]
    assert summary.rejected == len(bad)
    assert (summary.created, summary.updated) == (
        len(set(accepted_ids)),
        len(accepted_ids) - len(set(accepted_ids)),
    )
    assert summary.rows == summary.created + summary.updated + summary.rejected == LARGE
    assert summary.lines == text.count("\n")
    assert (summary.header_lines, summary.blank_lines, summary.continuation_lines) == (
        1,
        len(blank_at) + 1,
        len(two_line_notes),
    )
    shown = summary.as_dict()
    assert shown["lines"] == (
        shown["header_lines"]
        + shown["blank_lines"]
        + shown["continuation_lines"]
        + shown["created"]
        + shown["updated"]
        + shown["rejected"]
    )
    assert Profile.objects.count() == len(set(accepted_ids))


@pytest.mark.django_db
def test_a_jsonl_summary_accounts_for_every_line():
    text = '{"external_id": "a"}\n\n{"external_id": "b"}\n   \n{oops\n{"external_id": "a"}'
    summary = services.profiles_import(user=None, stream=io.BytesIO(text.encode()), format="jsonl")
    assert (summary.created, summary.updated, summary.rejected) == (2, 1, 1)
    assert (summary.lines, summary.header_lines, summary.blank_lines) == (6, 0, 2)
    assert summary.continuation_lines == 0
