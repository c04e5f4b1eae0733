"""A recurrence's occurrences and words (campaigns.recurrence): pure, by parameters."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.exceptions import ValidationError

from campaigns.recurrence import (
    INTERVAL_MAX,
    next_occurrences,
    occurrences,
    recurrence_parse,
    recurrence_words,
)

UTC = dt.UTC
PARIS = "Europe/Paris"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


def runs(data, *, start, zone=PARIS, end=None, after=None, count=5):
    return next_occurrences(
        recurrence_parse(data), zone=zone, start=start, end=end, after=after, count=count
    )


def test_a_weekly_recurrence_keeps_its_local_time_across_the_spring_change():
    found = runs(
        {"every": "week", "at": "09:00", "weekdays": ["monday"]}, start=utc(2027, 3, 15), count=3
    )
    # Paris moves from UTC+1 to UTC+2 on Sunday 28 March 2027: 09:00 stays 09:00.
    assert found == [utc(2027, 3, 15, 8), utc(2027, 3, 22, 8), utc(2027, 3, 29, 7)]


def test_a_time_the_clock_skips_moves_forward_and_a_repeated_one_takes_the_first():
    spring = runs({"every": "day", "at": "02:30"}, start=utc(2027, 3, 27), count=3)
    # 28 March 02:30 does not exist in Paris: it runs at 03:30 local (01:30 UTC).
    assert spring == [utc(2027, 3, 27, 1, 30), utc(2027, 3, 28, 1, 30), utc(2027, 3, 29, 0, 30)]
    autumn = runs({"every": "day", "at": "02:30"}, start=utc(2027, 10, 30, 12), count=2)
    # 31 October 02:30 happens twice (UTC+2, then UTC+1): the first, 00:30 UTC.
    assert autumn == [utc(2027, 10, 31, 0, 30), utc(2027, 11, 1, 1, 30)]


def test_month_days_a_month_lacks_are_skipped_not_moved():
    found = runs(
        {"every": "month", "at": "10:00", "month_days": [15, 31]},
        start=utc(2027, 1, 20),
        zone="UTC",
        count=5,
    )
    assert found == [
        utc(2027, 1, 31, 10),
        utc(2027, 2, 15, 10),
        utc(2027, 3, 15, 10),
        utc(2027, 3, 31, 10),
        utc(2027, 4, 15, 10),
    ]
    assert "skipped in months without a 31st" in recurrence_words(
        recurrence_parse({"every": "month", "at": "10:00", "month_days": [31]}), zone="UTC"
    )


def test_february_29th_comes_only_in_leap_years():
    found = runs(
        {"every": "month", "interval": 12, "at": "08:00", "month_days": [29]},
        start=utc(2027, 2, 1),
        zone="UTC",
        count=2,
    )
    assert found == [utc(2028, 2, 29, 8), utc(2032, 2, 29, 8)]


def test_an_interval_counts_periods_from_the_start():
    every_other_week = runs(
        {"every": "week", "interval": 2, "at": "09:00", "weekdays": ["tuesday", "friday"]},
        start=utc(2027, 1, 6),  # a Wednesday
        zone="UTC",
        count=4,
    )
    assert every_other_week == [
        utc(2027, 1, 8, 9),
        utc(2027, 1, 19, 9),
        utc(2027, 1, 22, 9),
        utc(2027, 2, 2, 9),
    ]
    every_third_day = runs(
        {"every": "day", "interval": 3, "at": "07:15"}, start=utc(2027, 1, 1), zone="UTC", count=3
    )
    assert every_third_day == [
        utc(2027, 1, 1, 7, 15),
        utc(2027, 1, 4, 7, 15),
        utc(2027, 1, 7, 7, 15),
    ]


def test_occurrences_stop_at_the_end_and_start_at_the_start():
    rule = recurrence_parse({"every": "day", "at": "09:00"})
    found = list(occurrences(rule, zone="UTC", start=utc(2027, 1, 1, 9), end=utc(2027, 1, 3, 9)))
    assert found == [utc(2027, 1, 1, 9), utc(2027, 1, 2, 9), utc(2027, 1, 3, 9)]
    late_start = runs(
        {"every": "day", "at": "09:00"}, start=utc(2027, 1, 1, 9, 1), zone="UTC", count=1
    )
    assert late_start == [utc(2027, 1, 2, 9)]


def test_after_a_moment_the_search_begins_near_it_not_at_the_start():
    found = runs(
        {"every": "day", "at": "09:00"},
        start=utc(2027, 1, 1),
        zone="UTC",
        after=utc(2035, 6, 1, 9),
        count=2,
    )
    assert found == [utc(2035, 6, 2, 9), utc(2035, 6, 3, 9)]


def test_a_rule_that_never_comes_ends_the_search():
    never = runs(
        {"every": "month", "interval": 12, "at": "09:00", "month_days": [31]},
        start=utc(2027, 2, 1),
        zone="UTC",
    )
    assert never == []


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        ({"every": "year", "at": "09:00"}, "every", "Choose one of day, week, month."),
        ({"every": "day", "at": "9h"}, "at", "A clock time as HH:MM"),
        ({"every": "day", "at": "24:00"}, "at", "A clock time as HH:MM"),
        (
            {"every": "day", "at": "09:00", "interval": 0},
            "interval",
            f"Between 1 and {INTERVAL_MAX}",
        ),
        ({"every": "day", "at": "09:00", "interval": 100}, "interval", "Between 1 and"),
        ({"every": "day", "at": "09:00", "interval": "2"}, "interval", "A whole number"),
        ({"every": "week", "at": "09:00"}, "weekdays", "at least one weekday"),
        ({"every": "week", "at": "09:00", "weekdays": [0]}, "weekdays", "A list of day names"),
        ({"every": "week", "at": "09:00", "weekdays": ["lundi"]}, "weekdays", "day names"),
        ({"every": "day", "at": "09:00", "weekdays": ["monday"]}, "weekdays", "weekly"),
        ({"every": "month", "at": "09:00"}, "month_days", "at least one day"),
        ({"every": "month", "at": "09:00", "month_days": [32]}, "month_days", "from 1 to 31"),
        ({"every": "day", "at": "09:00", "month_days": [1]}, "month_days", "monthly"),
        ({"every": "day", "at": "09:00", "hour": 9}, "hour", "Unknown key"),
    ],
)
def test_a_bad_recurrence_is_refused_on_its_key(data, key, message):
    with pytest.raises(ValidationError) as refused:
        recurrence_parse(data)
    assert message in " ".join(refused.value.message_dict[key])


@pytest.mark.parametrize(
    ("data", "end", "words"),
    [
        (
            {"every": "week", "at": "09:00", "weekdays": ["monday"]},
            utc(2027, 3, 31, 12),
            "every Monday at 09:00 (Europe/Paris), until 31 March 2027",
        ),
        ({"every": "day", "at": "07:30"}, None, "every day at 07:30 (Europe/Paris)"),
        ({"every": "day", "interval": 2, "at": "07:30"}, None, "every other day at 07:30"),
        (
            {"every": "week", "interval": 3, "at": "18:00", "weekdays": ["friday", "tuesday"]},
            None,
            "Tuesday and Friday, every 3 weeks at 18:00",
        ),
        (
            {"every": "month", "at": "08:00", "month_days": [1, 2, 3]},
            None,
            "every month on the 1st, 2nd and 3rd at 08:00",
        ),
    ],
)
def test_a_recurrence_in_words(data, end, words):
    assert words in recurrence_words(recurrence_parse(data), zone=PARIS, end=end)


def test_the_stored_form_names_every_key_and_weekdays_by_name():
    rule = recurrence_parse({"every": "week", "at": "09:05", "weekdays": ["sunday", "monday"]})
    assert rule.as_json() == {
        "every": "week",
        "interval": 1,
        "at": "09:05",
        "weekdays": ["monday", "sunday"],
        "month_days": [],
    }
