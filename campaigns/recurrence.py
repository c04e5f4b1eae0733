"""A recurring campaign's schedule: its occurrences and their words. Pure: no database.

A recurrence is stored on the version as JSON::

    {"every": "day" | "week" | "month", "interval": n, "at": "HH:MM",
     "weekdays": ["monday", …],   # "week" only, at least one
     "month_days": [1, 15, 31]}   # "month" only, at least one

read in the version's ``time_zone``, with the version's ``start_at`` (the first occurrence
is the first at or after it; the activation time when it is empty) and ``end_at`` (the last
is the last at or before it; none: for ever).

Clock times are exact across daylight-saving changes: "09:00" stays 09:00 local time. A
local time that does not exist on a day (the clock jumps from 02:00 to 03:00) moves forward
by the jump (02:30 becomes 03:30); one that happens twice (the clock goes back) takes the
first. A month day a month lacks (29–31) is skipped that month, not moved.

The interval counts periods from the start: every 2 weeks runs in the start's week, the
third week, the fifth…; every 3 months in the start's month, three months later…

Weekdays are English day names in lower case (``monday`` … ``sunday``), never numbers:
they read the same in the JSON, the admin and the words, with no doubt about where a week
begins.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
import zoneinfo
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError

EVERY = ("day", "week", "month")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# An interval beyond this is a schedule nobody means (every 100 months is 8 years apart).
INTERVAL_MAX = 99
# How many periods in a row may pass with no occurrence before the search gives up: month
# day 31 every 12 months from a February never comes.
EMPTY_PERIODS_MAX = 48
KEYS = ("every", "interval", "at", "weekdays", "month_days")
_AT = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class Recurrence:
    """A validated recurrence (see the module docstring)."""

    every: str
    interval: int
    at: dt.time
    weekdays: tuple[int, ...] = ()  # 0 = Monday, as date.weekday()
    month_days: tuple[int, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """The stored form, with every key: what the doors read back."""
        return {
            "every": self.every,
            "interval": self.interval,
            "at": self.at.strftime("%H:%M"),
            "weekdays": [WEEKDAYS[d] for d in self.weekdays],
            "month_days": list(self.month_days),
        }


def recurrence_parse(data: Any) -> Recurrence:
    """The recurrence `data` describes, or a ``ValidationError`` keyed by the recurrence's
    keys (``at``, ``weekdays``…) saying what is wrong with each."""
    if not isinstance(data, Mapping):
        raise ValidationError(
            {"every": ["The recurrence must be an object with “every” and “at”."]}
        )
    errors: dict[str, list[str]] = {}
    unknown = sorted(set(data) - set(KEYS))
    for key in unknown:
        errors.setdefault(str(key), []).append(f"Unknown key; a recurrence has {', '.join(KEYS)}.")
    every = data.get("every")
    if every not in EVERY:
        errors["every"] = [f"Choose one of {', '.join(EVERY)}."]
    interval = data.get("interval", 1)
    if isinstance(interval, bool) or not isinstance(interval, int):
        errors["interval"] = ["A whole number of periods, from 1."]
    elif not 1 <= interval <= INTERVAL_MAX:
        errors["interval"] = [f"Between 1 and {INTERVAL_MAX}."]
    at_text = data.get("at")
    match = _AT.match(at_text) if isinstance(at_text, str) else None
    if match is None:
        errors["at"] = ["A clock time as HH:MM, from 00:00 to 23:59."]
    weekdays = _weekdays(data.get("weekdays") or [], errors)
    month_days = _month_days(data.get("month_days") or [], errors)
    if every == "week" and not weekdays and "weekdays" not in errors:
        errors["weekdays"] = ["A weekly recurrence needs at least one weekday."]
    if every != "week" and weekdays:
        errors["weekdays"] = ["Weekdays are for a weekly recurrence only."]
    if every == "month" and not month_days and "month_days" not in errors:
        errors["month_days"] = ["A monthly recurrence needs at least one day of the month."]
    if every != "month" and month_days:
        errors["month_days"] = ["Days of the month are for a monthly recurrence only."]
    if errors:
        raise ValidationError(errors)
    assert match is not None
    assert isinstance(every, str)
    assert isinstance(interval, int)
    return Recurrence(
        every=every,
        interval=interval,
        at=dt.time(int(match[1]), int(match[2])),
        weekdays=weekdays,
        month_days=month_days,
    )


def _weekdays(values: Any, errors: dict[str, list[str]]) -> tuple[int, ...]:
    if not isinstance(values, list) or not all(v in WEEKDAYS for v in values):
        errors["weekdays"] = [f"A list of day names: {', '.join(WEEKDAYS)}."]
        return ()
    return tuple(sorted({WEEKDAYS.index(v) for v in values}))


def _month_days(values: Any, errors: dict[str, list[str]]) -> tuple[int, ...]:
    valid = isinstance(values, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 31 for v in values
    )
    if not valid:
        errors["month_days"] = ["A list of days of the month, from 1 to 31."]
        return ()
    return tuple(sorted(set(values)))


# --- occurrences ---------------------------------------------------------------------


def local_moment(day: dt.date, at: dt.time, zone: dt.tzinfo) -> dt.datetime:
    """`at` on `day` in `zone`, as an aware UTC time: a time skipped by a clock change moves
    forward by the change, a repeated one takes its first instance (fold=0 reads both so)."""
    local = dt.datetime.combine(day, at, tzinfo=zone)
    return local.astimezone(dt.UTC)


def _period_days(rule: Recurrence, first: dt.date, period: int) -> list[dt.date]:
    """The days of the `period`-th period (0 is the start's) that the rule runs on."""
    step = period * rule.interval
    if rule.every == "day":
        return [first + dt.timedelta(days=step)]
    if rule.every == "week":
        monday = first - dt.timedelta(days=first.weekday()) + dt.timedelta(weeks=step)
        return [monday + dt.timedelta(days=d) for d in rule.weekdays]
    months = first.year * 12 + first.month - 1 + step
    year, month = divmod(months, 12)
    length = calendar.monthrange(year, month + 1)[1]
    return [dt.date(year, month + 1, d) for d in rule.month_days if d <= length]


def occurrences(
    rule: Recurrence,
    *,
    zone: str,
    start: dt.datetime,
    end: dt.datetime | None = None,
    after: dt.datetime | None = None,
) -> Iterator[dt.datetime]:
    """The rule's occurrences (aware, UTC) at or after `start`, at or before `end`, and
    strictly after `after` when given, in order. Stops at `end`, or when
    EMPTY_PERIODS_MAX periods in a row have none."""
    tz = zoneinfo.ZoneInfo(zone)
    first = start.astimezone(tz).date()
    lower = max(start, after) if after is not None else start
    period = _period_of(rule, first, lower.astimezone(tz).date())
    empty = 0
    while empty < EMPTY_PERIODS_MAX:
        moments = [local_moment(day, rule.at, tz) for day in _period_days(rule, first, period)]
        period += 1
        if end is not None and moments and min(moments) > end:
            return
        found = [
            m
            for m in moments
            if m >= start and (after is None or m > after) and (end is None or m <= end)
        ]
        empty = 0 if found else empty + 1
        yield from found


def _period_of(rule: Recurrence, first: dt.date, day: dt.date) -> int:
    """The period that holds `day` (or the one before, never below 0): where to begin the
    search for occurrences after `day` without walking every period since the start."""
    if rule.every == "day":
        span = (day - first).days
    elif rule.every == "week":
        mondays = (day - dt.timedelta(days=day.weekday())) - (
            first - dt.timedelta(days=first.weekday())
        )
        span = mondays.days // 7
    else:
        span = (day.year - first.year) * 12 + day.month - first.month
    return max(0, span // rule.interval - 1)


def next_occurrences(
    rule: Recurrence,
    *,
    zone: str,
    start: dt.datetime,
    end: dt.datetime | None = None,
    after: dt.datetime | None = None,
    count: int = 1,
) -> list[dt.datetime]:
    """The first `count` occurrences (see ``occurrences``)."""
    found = []
    for moment in occurrences(rule, zone=zone, start=start, end=end, after=after):
        found.append(moment)
        if len(found) >= count:
            break
    return found


# --- words -----------------------------------------------------------------------------


_ORDINAL_SUFFIX = {1: "st", 2: "nd", 3: "rd"}


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else _ORDINAL_SUFFIX.get(n % 10, "th")
    return f"{n}{suffix}"


def _listed(words: list[str]) -> str:
    *others, last = words
    return f"{', '.join(others)} and {last}" if others else last


def _plural(rule: Recurrence, unit: str) -> str:
    if rule.interval == 1:
        return unit
    if rule.interval == 2:
        return f"other {unit}"
    return f"{rule.interval} {unit}s"


def date_words(moment: dt.datetime, zone: str) -> str:
    """ "31 March 2027" in `zone`."""
    local = moment.astimezone(zoneinfo.ZoneInfo(zone))
    return f"{local.day} {calendar.month_name[local.month]} {local.year}"


def moment_words(moment: dt.datetime, zone: str) -> str:
    """ "Monday 4 January 2027 at 09:00" in `zone`."""
    local = moment.astimezone(zoneinfo.ZoneInfo(zone))
    return f"{calendar.day_name[local.weekday()]} {date_words(moment, zone)} at {local:%H:%M}"


def recurrence_words(rule: Recurrence, *, zone: str, end: dt.datetime | None = None) -> str:
    """ "every Monday at 09:00 (Europe/Paris), until 31 March 2027"."""
    at = rule.at.strftime("%H:%M")
    if rule.every == "day":
        when = "every day" if rule.interval == 1 else f"every {_plural(rule, 'day')}"
    elif rule.every == "week":
        days = _listed([calendar.day_name[d] for d in rule.weekdays])
        when = f"every {days}" if rule.interval == 1 else f"{days}, every {_plural(rule, 'week')}"
    else:
        days = _listed([_ordinal(d) for d in rule.month_days])
        when = (
            f"every month on the {days}"
            if rule.interval == 1
            else (f"on the {days}, every {_plural(rule, 'month')}")
        )
        short = [d for d in rule.month_days if d > 28]
        if short:
            when += (
                f" (skipped in months without a {_ordinal(max(short))})"
                if len(short) == 1
                else (" (skipped in months without that day)")
            )
    words = f"{when} at {at} ({zone})"
    if end is not None:
        words += f", until {date_words(end, zone)}"
    return words
