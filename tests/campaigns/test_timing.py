"""When a delivery may go (``campaigns.delivery.timing``): the pure decisions, by their
inputs, with no database."""

import datetime as dt
import zoneinfo

import pytest

from campaigns.delivery.timing import (
    QuietHours,
    due_in_zone,
    earliest_local,
    quiet_hours_until,
    recipient_due_times,
)

UTC = dt.UTC
PARIS = zoneinfo.ZoneInfo("Europe/Paris")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_each_zone_is_due_at_the_clock_time_of_the_start_across_a_dst_change():
    # 09:00 in Paris on 2027-03-28, the day Europe moves to summer time (UTC+2 from 01:00
    # UTC); Los Angeles has been on summer time (UTC-7) since 14 March.
    start = utc(2027, 3, 28, 7, 0)
    times = recipient_due_times(scheduled_for=start, zone="Europe/Paris", now=utc(2027, 3, 1))

    assert times.due("Europe/Paris") == utc(2027, 3, 28, 7, 0)
    assert times.due("Pacific/Kiritimati") == utc(2027, 3, 27, 19, 0)  # UTC+14
    assert times.due("America/Los_Angeles") == utc(2027, 3, 28, 16, 0)
    assert times.due("Europe/London") == utc(2027, 3, 28, 8, 0)  # BST from 01:00 UTC
    # A profile without a (known) zone is due in the version's.
    assert times.due("") == times.due("Mars/Olympus_Mons") == utc(2027, 3, 28, 7, 0)


def test_a_moment_already_passed_is_due_at_once():
    start = utc(2026, 12, 1, 8, 0)  # 09:00 in Paris
    times = recipient_due_times(
        scheduled_for=start, zone="Europe/Paris", now=utc(2026, 12, 1, 7, 30)
    )

    assert times.due("Pacific/Kiritimati") is None  # 09:00 there was hours ago
    assert times.due("Europe/Paris") == start
    assert times.due("America/Los_Angeles") == utc(2026, 12, 1, 17, 0)


def test_a_clock_time_inside_the_spring_forward_gap_is_read_before_the_change():
    # 02:30 does not exist in Paris on 2027-03-28: read with the winter offset, 01:30 UTC.
    assert due_in_zone(dt.datetime(2027, 3, 28, 2, 30), PARIS) == utc(2027, 3, 28, 1, 30)


def test_the_earliest_zone_reaches_a_clock_time_fourteen_hours_before_utc():
    assert earliest_local(dt.datetime(2026, 12, 1, 9, 0)) == utc(2026, 11, 30, 19, 0)


NIGHT = QuietHours(dt.time(21, 0), dt.time(8, 0))
LUNCH = QuietHours(dt.time(12, 0), dt.time(14, 0))


@pytest.mark.parametrize(
    ("quiet", "now", "until"),
    [
        # Paris is UTC+1 in December.
        (NIGHT, utc(2026, 12, 1, 21, 30), utc(2026, 12, 2, 7, 0)),  # 22:30: the next morning
        (NIGHT, utc(2026, 12, 2, 5, 0), utc(2026, 12, 2, 7, 0)),  # 06:00: this morning
        (NIGHT, utc(2026, 12, 1, 20, 0), utc(2026, 12, 2, 7, 0)),  # 21:00 sharp: inside
        (NIGHT, utc(2026, 12, 2, 7, 0), None),  # 08:00 sharp: over
        (NIGHT, utc(2026, 12, 2, 11, 0), None),  # noon
        (LUNCH, utc(2026, 12, 2, 11, 30), utc(2026, 12, 2, 13, 0)),
        (LUNCH, utc(2026, 12, 2, 13, 0), None),
        # The night the clocks go forward ends at 08:00 summer time: 06:00 UTC.
        (NIGHT, utc(2027, 3, 27, 23, 0), utc(2027, 3, 28, 6, 0)),
    ],
)
def test_quiet_hours_end_in_the_recipients_zone(quiet, now, until):
    assert quiet_hours_until(now, zone=PARIS, quiet=quiet) == until
