"""The column-wise CSV path against the row-by-row one, on generated files.

A CSV batch is checked, typed and rendered a column at a time (`segments.imports`,
`segments.services`); each row can also go alone through `_csv_row`. Both must keep the
same rows with the same values, reject the same lines for the same reasons, and write the
same text.
"""

import csv
import io
import random

import pytest

from segments import imports, services
from segments.imports import Rejected, Row, RowBatch, read_rows

CELLS = {
    "external_id": ["u1", "u2", "u3", "u4", "", " u5 ", "u\u20036", "x" * 256, "u\\7"],
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
def test_batches_keep_and_reject_what_the_row_by_row_path_does(seed, monkeypatch):
    rng = random.Random(seed)
    if seed % 2:
        # Small blocks: files switch from split lines to the csv module mid-way.
        monkeypatch.setattr(imports, "BLOCK_BYTES", 64)
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


def new_profile_line(row: Row) -> str:
    """The reference profile-table COPY line of one new profile."""
    consents = []
    for channel in ("email", "sms", "push"):
        given = row.consent.get(channel)
        if given is None:
            consents += ["t", "\\N", ""]
        else:
            consents += ["t" if given else "f", "now", "import"]
    values = [
        row.external_id,
        *(row.values.get(name, "") for name in services.TEXT_COLUMNS),
        row.attributes_json() or "{}",
    ]
    fields = [*map(services._copy_escape, values), *consents, "now", "now"]
    return "\t".join(fields) + "\n"


@pytest.mark.parametrize("seed", range(3))
def test_batches_render_the_text_the_rows_render(seed):
    rng = random.Random(100 + seed)
    checked = 0
    for _ in range(200):
        text = random_csv(rng)
        for batch in column_wise(text, batch_rows=rng.choice([3, 10_000]))[2]:
            rows = batch.rows()
            assert services._batch_copy_text(batch) == services._copy_text(rows), text
            expected = "".join(new_profile_line(row) for row in rows)
            assert services._new_profiles_copy_text(batch) == expected, text
            checked += 1
    assert checked > 100
