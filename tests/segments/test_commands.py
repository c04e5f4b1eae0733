import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from segments.models import Profile

pytestmark = pytest.mark.django_db


def test_import_profiles_command(tmp_path):
    path = tmp_path / "people.jsonl"
    path.write_text('{"external_id": "u1"}\n\n{"external_id": "u2", "email": "bad"}\n')
    out, err = StringIO(), StringIO()
    call_command("import_profiles", str(path), stdout=out, stderr=err)
    assert "3 lines: 0 header, 1 blank, 0 continued, 2 rows." in out.getvalue()
    assert "2 rows: 1 created, 0 updated, 1 rejected" in out.getvalue()
    assert "line 3: email:" in out.getvalue()
    assert "100.0%" in err.getvalue()
    assert Profile.objects.count() == 1


def test_import_profiles_refuses_an_unreadable_file(tmp_path):
    path = tmp_path / "photo.csv"
    path.write_bytes(b"\x89PNG\x00\x00")
    with pytest.raises(CommandError, match="Nothing was imported"):
        call_command("import_profiles", str(path), "--no-progress", stdout=StringIO())
    with pytest.raises(CommandError, match="Cannot open"):
        call_command("import_profiles", str(tmp_path / "missing.csv"), stdout=StringIO())
    assert not Profile.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_bench_audience_prints_one_json_line_last(tmp_path):
    out, err = StringIO(), StringIO()
    call_command("bench_audience", "--profiles", "50", stdout=out, stderr=err)
    last = json.loads(out.getvalue().strip().splitlines()[-1])
    assert set(last) == {
        "profiles",
        "import_rows_per_s",
        "import_peak_rss_mb",
        "estimate_s",
        "count_s",
        "snapshot_rows_per_s",
    }
    assert last["profiles"] == 50
    assert not Profile.objects.filter(external_id__startswith="bench-").exists()
