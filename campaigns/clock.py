"""The time every scheduling decision reads: when a campaign starts, when an occurrence of
a recurring campaign is due, late or skipped.

In production it is ``django.utils.timezone.now()``. A test moves it on without sleeping:
SALVO_TEST_CLOCK_FILE names a file holding a number of seconds added to the real time,
read at every call, so a real scheduler and worker started with it follow the test's
clock as it writes the file. The settings refuse that variable unless DEBUG is on, and
the test process itself (whose DEBUG the test runner turns off) sets it only by
``override_settings``: a production process never reads a clock file.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from django.conf import settings
from django.utils import timezone


def clock_offset() -> dt.timedelta:
    """How far ahead of the real time the clock runs: zero unless a test set a clock file
    (a missing or empty file is zero)."""
    path = settings.SALVO_TEST_CLOCK_FILE
    if not path:
        return dt.timedelta(0)
    try:
        text = Path(path).read_text().strip()
    except FileNotFoundError:
        return dt.timedelta(0)
    return dt.timedelta(seconds=float(text or 0))


def now() -> dt.datetime:
    """The current time for scheduling decisions (aware, UTC)."""
    return timezone.now() + clock_offset()


def clock_set(path: Path, *, ahead: dt.timedelta) -> None:
    """Make the clock that reads `path` run `ahead` of the real time (for tests)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(str(ahead.total_seconds()))
    temporary.replace(path)  # atomic: a reader never sees a half-written number
