"""What any route of the import (the Python reader, or a stage checked in SQL) must keep:
the file's physical line numbers, the encodings and marks the reader accepts or refuses,
profiles named twice, and one bad row among many good ones.

These run on SQLite and on PostgreSQL (`DATABASE_URL=postgres://…`), the doors' report
(`ImportSummary.as_dict`) being what they compare.
"""

import io

import pytest

from segments import services
from segments.imports import ImportRefused
from segments.models import Profile
from tests.segments.factories import ProfileFactory

pytestmark = pytest.mark.django_db

BOM = b"\xef\xbb\xbf"


def run_import(data: bytes | str, **kwargs):
    if isinstance(data, str):
        data = data.encode()
    return services.profiles_import(user=None, stream=io.BytesIO(data), **kwargs)


def rejections(summary) -> list[tuple[int, str]]:
    return [(item["line"], item["reason"]) for item in summary.as_dict()["rejections"]]


def good_lines(count: int, *, start: int = 0) -> list[str]:
    return [f"u{i},u{i}@example.com,{i % 90}" for i in range(start, start + count)]


# --- physical lines ----------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["\n", "\r\n"])
def test_rows_after_quoted_cells_spanning_lines_keep_their_physical_line(end):
    lines = [
        "external_id,email,note",
        "a,a@example.com,plain",
        'b,b@example.com,"first' + end + "second" + end + 'third"',  # lines 3-5
        "c,not-an-email,x",  # line 6
        'd,d@example.com,"one, ""quoted"", comma' + end + 'and a line"',  # lines 7-8
        "",  # line 9
        'e,also-bad,"starts here' + end + 'ends here"',  # lines 10-11: rejected at 10
        "f,f@example.com,last",  # line 12
    ]
    summary = run_import(end.join(lines) + end, format="csv")

    assert rejections(summary) == [
        (6, "email: Enter a valid email address. Got 'not-an-email'."),
        (10, "email: Enter a valid email address. Got 'also-bad'."),
    ]
    assert (summary.created, summary.updated, summary.rejected) == (4, 0, 2)
    assert (summary.lines, summary.header_lines, summary.blank_lines) == (12, 1, 1)
    assert summary.continuation_lines == 4
    notes = dict(Profile.objects.values_list("external_id", "attributes__note"))
    assert notes["b"] == f"first{end}second{end}third"
    assert notes["d"] == f'one, "quoted", comma{end}and a line'


def test_a_row_with_too_few_cells_after_a_long_quoted_cell_names_its_first_line():
    note = "\n".join(f"part {i}" for i in range(50))
    text = f'external_id,email,note\nu1,u1@example.com,"{note}"\nu2,u2@example.com\n'
    summary = run_import(text, format="csv")
    assert rejections(summary) == [(52, "expected 3 fields, found 2")]
    assert summary.continuation_lines == 49


@pytest.mark.parametrize("quoted_before", [False, True], ids=["unquoted", "after a quoted cell"])
@pytest.mark.parametrize("chunk_rows", [25_000, 7_777])
def test_a_bad_row_at_the_100000th_line_among_good_ones(quoted_before, chunk_rows):
    lines = ["external_id,email,age", *good_lines(100_001)]
    bad = 99_999  # the 100,000th line
    if quoted_before:
        # A quoted cell on lines 11-12: every later row's line counts its second line.
        lines[10] = 'u9,u9@example.com,"nine\nand a half"'
        bad -= 1
    lines[bad] = "bad-1,not-an-email,3"
    text = "\n".join(lines) + "\n"

    summary = run_import(text, format="csv", chunk_rows=chunk_rows)

    assert rejections(summary) == [
        (100_000, "email: Enter a valid email address. Got 'not-an-email'.")
    ]
    assert summary.rejected == 1
    assert summary.lines == text.count("\n")
    assert (
        summary.rows
        == summary.created + summary.rejected
        == summary.lines - 1 - (1 if quoted_before else 0)
    )
    assert not Profile.objects.filter(external_id="bad-1").exists()
    assert Profile.objects.count() == summary.created


# --- marks and encodings -----------------------------------------------------------------------


def test_a_byte_order_mark_is_not_part_of_the_header_and_counts_no_line():
    text = "external_id,email\nu1,u1@example.com\nu2,nope\n"
    summary = run_import(BOM + text.encode(), format="csv")
    assert (summary.created, summary.lines, summary.header_lines) == (1, 3, 1)
    assert rejections(summary) == [(3, "email: Enter a valid email address. Got 'nope'.")]


def test_a_byte_order_mark_before_json_lines():
    summary = run_import(BOM + b'{"external_id": "u1"}\n{"external_id": "u2", "email": "x"}\n')
    assert summary.created == 1
    assert [line for line, _ in rejections(summary)] == [2]


def test_utf8_text_is_kept_as_written():
    text = 'external_id,email,city,note\nü1,ue@zürich.example,Zürich,"日本語\nпривет"\n'
    summary = run_import(text.encode(), format="csv")
    assert (summary.created, summary.rejected) == (1, 0), rejections(summary)
    profile = Profile.objects.get(external_id="ü1")
    assert profile.email == "ue@zürich.example"
    assert profile.attributes == {"city": "Zürich", "note": "日本語\nпривет"}


@pytest.mark.parametrize("line", [2, 5_000, 30_002])
def test_a_latin1_byte_refuses_the_file_naming_its_line(line):
    ProfileFactory.create(external_id="before")
    rows = [f"u{i},Zurich".encode() for i in range(30_001)]
    rows[line - 2] = f"u{line},".encode() + "Zürich".encode("latin-1")
    content = b"external_id,city\n" + b"\n".join(rows) + b"\n"

    with pytest.raises(ImportRefused) as error:
        run_import(content, format="csv", chunk_rows=1_000)

    assert error.value.messages[0].startswith(f"Line {line} is not UTF-8 text (byte ")
    assert list(Profile.objects.values_list("external_id", flat=True)) == ["before"]


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_with_its_mark_is_refused(encoding):
    mark = b"\xff\xfe" if encoding.endswith("le") else b"\xfe\xff"
    content = mark + "external_id\nu1\n".encode(encoding)
    with pytest.raises(ImportRefused) as error:
        run_import(content, format="csv")
    assert error.value.messages == ["The file is UTF-16 text; save it as UTF-8 and retry."]
    assert not Profile.objects.exists()


# --- profiles named twice ----------------------------------------------------------------------


@pytest.mark.parametrize("chunk_rows", [2, 25_000])
def test_profiles_named_twice_or_more_in_a_file(chunk_rows):
    ProfileFactory.create(external_id="stored", email="old@example.com", attributes={"k": 1})
    text = (
        "external_id,email,plan,age\n"
        "a,a1@example.com,free,\n"  # 2
        "b,b@example.com,,\n"  # 3
        "a,,pro,30\n"  # 4: a later row wins for what it gives
        "stored,,gold,\n"  # 5
        "a,not-an-email,team,\n"  # 6: rejected, the earlier rows stand
        " a ,a2@example.com,,\n"  # 7: the same id once stripped
        "stored,new@example.com,,\n"  # 8
    )
    summary = run_import(text, format="csv", chunk_rows=chunk_rows)

    assert rejections(summary) == [(6, "email: Enter a valid email address. Got 'not-an-email'.")]
    # a and b created, stored updated; the repeats of a and stored are updates too.
    assert (summary.created, summary.updated, summary.rejected) == (2, 4, 1)
    a = Profile.objects.get(external_id="a")
    assert (a.email, a.attributes) == ("a2@example.com", {"plan": "pro", "age": 30})
    stored = Profile.objects.get(external_id="stored")
    assert (stored.email, stored.attributes) == ("new@example.com", {"k": 1, "plan": "gold"})
    assert Profile.objects.count() == 3


def test_a_profile_named_in_many_chunks_counts_one_creation():
    lines = ["external_id,n"] + [f"same,{i}" for i in range(1, 1001)]
    summary = run_import("\n".join(lines) + "\n", format="csv", chunk_rows=100)
    assert (summary.created, summary.updated, summary.rejected) == (1, 999, 0)
    assert Profile.objects.get().attributes == {"n": 1000}
