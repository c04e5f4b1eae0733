"""When a delivery may go: at a clock time in each recipient's own time zone, and never
inside quiet hours.

Local time. A version with ``in_recipient_time_zone`` sends at the date and clock time of
its run (``Execution.scheduled_for``: a one-shot campaign's start, a recurring campaign's
occurrence) as read in the version's ``time_zone``, in each recipient's zone: 09:00 in
Paris for a Parisian, 09:00 in Los Angeles for a Californian, 09:00 in the version's zone
for a profile without a valid zone. ``recipient_due_times`` turns the run into one due
moment per IANA zone, each computed by ``zoneinfo`` (so exact across DST changes; a clock
time that does not exist that day, inside a spring-forward gap, is read with the offset
before the change, i.e. one hour later on the wall); planning writes it on every row in
the database's INSERT … SELECT (``sql.insert_deliveries``) as ``next_attempt_at`` with the
reason ``recipient_time``, by joining the profile's zone with that small table: no Python
runs per recipient. **A recipient whose moment has already passed when its row is planned
is due at once** (no reason, no wait): a campaign activated at 10:00 Paris time for 09:00
sends to Paris now and to New York at 09:00 there. The campaign goes Live when the
earliest zone on earth reaches the clock time (``go_live_at``, UTC+14: up to 26 hours
before the last zone) and stays Live until the last row is done. A waiting row is pending
and not tried (its first attempt is counted when it goes); its batch comes back when it is
due (``window.range_wait``, at most SALVO_DELIVERY_WAIT_MAX_S at a time), and the stall
check knows it waits (``Execution.waiting_until``). Stop halts the execution: waiting rows
are never sent.

Quiet hours. A preset, or a version (which then replaces its presets' hours), may set
quiet hours, read in the recipient's zone (the version's for a profile without one): a
start and an end clock time, crossing midnight when the end comes first (21:00–08:00). A
marketing delivery that comes due inside them is not rendered nor sent: it waits, pending
with the reason ``quiet_hours``, until their end in the recipient's zone, and the wait is
not counted as an attempt (``quiet_hours_hold``, called by ``sending`` just before a chunk
renders). Transactional campaigns ignore quiet hours, and so do proofs and previews, which
a person asks for now.

The decisions (``recipient_due_times``, ``go_live_at``, ``quiet_hours_until``) are plain
functions of their inputs, testable without a database.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..choices import CampaignKind, CampaignType, DeliveryReason

if TYPE_CHECKING:
    from ..models import CampaignVersion, Execution
    from .policy import Due

# How far ahead of a clock time read in one zone another zone reaches it: UTC+14
# (Kiritimati) against UTC-12, rounded up. Only a bound for the scheduler's query; the
# moment itself is computed exactly (``go_live_at``).
LOCAL_TIME_LEAD = dt.timedelta(hours=27)

UTC = dt.UTC


@functools.cache
def known_zones() -> frozenset[str]:
    """Every IANA zone name this machine knows: a profile's zone outside them is unknown
    and the version's is used."""
    return frozenset(zoneinfo.available_timezones())


def zone_or(name: str, fallback: str) -> zoneinfo.ZoneInfo:
    """The zone called `name`, or `fallback`'s when `name` is blank or unknown."""
    return zoneinfo.ZoneInfo(name if name in known_zones() else fallback)


# --- local time ------------------------------------------------------------------------


def wall_clock(moment: dt.datetime, zone: str) -> dt.datetime:
    """The date and clock time (naive) that `moment` shows in `zone`."""
    return moment.astimezone(zoneinfo.ZoneInfo(zone)).replace(tzinfo=None)


def due_in_zone(wall: dt.datetime, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    """The moment (UTC) when `zone`'s clock shows `wall`; in a DST gap, with the offset
    before the change (fold 0)."""
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


@dataclass(frozen=True)
class RecipientDueTimes:
    """When each recipient of a local-time run is due: by zone name, and for recipients
    whose zone is blank or unknown. None means due at once (the moment has passed)."""

    by_zone: Mapping[str, dt.datetime | None]
    default: dt.datetime | None

    def due(self, zone_name: str) -> dt.datetime | None:
        return self.by_zone.get(zone_name, self.default)

    def as_json(self, adapt: Any) -> str:
        """The zone table as one JSON parameter, ``[[name, due], …]``, each time written
        by `adapt` (the database's own form)."""
        rows = [[name, adapt(due) if due else None] for name, due in sorted(self.by_zone.items())]
        return json.dumps(rows, separators=(",", ":"), default=str)


def recipient_due_times(
    *, scheduled_for: dt.datetime, zone: str, now: dt.datetime
) -> RecipientDueTimes:
    """Each zone's moment for a run scheduled for `scheduled_for`, whose clock time is read
    in `zone` (the version's); moments at or before `now` are None (due at once)."""
    wall = wall_clock(scheduled_for, zone)

    def future(moment: dt.datetime) -> dt.datetime | None:
        return moment if moment > now else None

    by_zone = {name: future(due_in_zone(wall, zoneinfo.ZoneInfo(name))) for name in known_zones()}
    return RecipientDueTimes(by_zone, future(due_in_zone(wall, zoneinfo.ZoneInfo(zone))))


def execution_due_times(execution: Execution, *, now: dt.datetime) -> RecipientDueTimes | None:
    """The due times of a run's recipients, or None when its version sends at one moment
    for all (not in the recipients' zones). Reads the run's ``scheduled_for`` (its start
    when unset) and its version: a recurring occurrence plans the same way."""
    version = execution.version
    if not version.in_recipient_time_zone:
        return None
    scheduled_for = execution.scheduled_for or version.start_at or execution.started_at
    return recipient_due_times(scheduled_for=scheduled_for, zone=version.time_zone, now=now)


def earliest_local(wall: dt.datetime) -> dt.datetime:
    """The first moment any zone's clock shows `wall`."""
    return min(due_in_zone(wall, zoneinfo.ZoneInfo(name)) for name in known_zones())


def run_starts_at(version: CampaignVersion, moment: dt.datetime) -> dt.datetime:
    """When the version's run for `moment` (a start, an occurrence) begins: at `moment`,
    or, sending in the recipients' zones, when the earliest zone on earth reaches the
    clock time `moment` shows in the version's zone."""
    if not version.in_recipient_time_zone:
        return moment
    return earliest_local(wall_clock(moment, version.time_zone))


def _one_shot(version: CampaignVersion) -> bool:
    return bool(version.campaign.kind == CampaignKind.ONE_SHOT)


def go_live_at(version: CampaignVersion) -> dt.datetime | None:
    """When a version's campaign goes Live, if it has a start: a one-shot version's run
    starts then (``run_starts_at`` its start); a recurring campaign goes Live at its start,
    and each occurrence's run begins at its own ``run_starts_at``."""
    if version.start_at is None:
        return None
    if not _one_shot(version):
        return version.start_at
    return run_starts_at(version, version.start_at)


def latest_local(version: CampaignVersion) -> dt.datetime | None:
    """When the last zone reaches a local-time one-shot version's start (None otherwise)."""
    if version.start_at is None or not version.in_recipient_time_zone or not _one_shot(version):
        return None
    wall = wall_clock(version.start_at, version.time_zone)
    return max(due_in_zone(wall, zoneinfo.ZoneInfo(name)) for name in known_zones())


# --- quiet hours -------------------------------------------------------------------------


@dataclass(frozen=True)
class QuietHours:
    start: dt.time
    end: dt.time

    def __str__(self) -> str:
        return f"{self.start:%H:%M}–{self.end:%H:%M}"


def quiet_hours_of(*sources: Any) -> QuietHours | None:
    """The quiet hours of the first of `sources` (a version, then a preset) that sets them."""
    for source in sources:
        start = getattr(source, "quiet_hours_start", None)
        end = getattr(source, "quiet_hours_end", None)
        if start is not None and end is not None:
            return QuietHours(start, end)
    return None


def quiet_hours_until(
    now: dt.datetime, *, zone: zoneinfo.ZoneInfo, quiet: QuietHours
) -> dt.datetime | None:
    """When the quiet hours that `now` falls in end, in `zone` (UTC); None outside them.
    Start included, end excluded; an end before the start crosses midnight."""
    local = now.astimezone(zone)
    clock = local.time().replace(tzinfo=None)
    day = local.date()
    if quiet.start < quiet.end:
        if not quiet.start <= clock < quiet.end:
            return None
        end_day = day
    elif clock >= quiet.start:
        end_day = day + dt.timedelta(days=1)
    elif clock < quiet.end:
        end_day = day
    else:
        return None
    return due_in_zone(dt.datetime.combine(end_day, quiet.end), zone)


@dataclass(frozen=True)
class QuietHoursRule:
    """The quiet hours one chunk's sender applies: none for a transactional campaign."""

    quiet: QuietHours
    fallback_zone: str

    def until(self, profile: Mapping[str, Any] | None, *, now: dt.datetime) -> dt.datetime | None:
        """When the recipient's quiet hours end, if `now` falls in them."""
        if profile is None:  # a deleted profile is skipped, at once
            return None
        zone = zone_or(str(profile.get("time_zone") or ""), self.fallback_zone)
        return quiet_hours_until(now, zone=zone, quiet=self.quiet)


def quiet_hours_rule(*, campaign_type: str, version_id: int, preset: Any) -> QuietHoursRule | None:
    """The quiet hours a marketing campaign's sends with one version's action keep (the
    version's, else the action's preset's), or None. One query."""
    if campaign_type != CampaignType.MARKETING:
        return None
    from ..models import CampaignVersion

    version = CampaignVersion.objects.only("time_zone", "quiet_hours_start", "quiet_hours_end").get(
        pk=version_id
    )
    quiet = quiet_hours_of(version, preset)
    return QuietHoursRule(quiet, version.time_zone) if quiet else None


def quiet_hours_text(until: dt.datetime) -> str:
    return f"Quiet hours in the recipient's time zone until {until:%Y-%m-%d %H:%M} UTC."


def quiet_hours_hold(
    due: Sequence[Due],
    *,
    execution_id: int,
    rule: QuietHoursRule | None,
    now: dt.datetime,
    claim: Any = None,
) -> list[Due]:
    """Put back the rows whose recipient is inside quiet hours now, pending until they end
    (reason ``quiet_hours``, not counted as an attempt; on SQLite their claim released);
    return the others, to render and send."""
    if rule is None or not due:
        return list(due)
    from .sql import waiting_record

    go: list[Due] = []
    held: list[tuple[int, dt.datetime]] = []
    for row in due:
        until = rule.until(row.profile, now=now)
        if until is None:
            go.append(row)
        else:
            held.append((row.delivery_id, until))
    if held:
        waiting_record(
            held,
            execution_id=execution_id,
            reason=DeliveryReason.QUIET_HOURS,
            text=quiet_hours_text,
            claim=claim,
        )
    return go


# --- in words ------------------------------------------------------------------------------


def schedule_words(version: CampaignVersion) -> list[str]:
    """What a version's local time and quiet hours mean, one sentence each, as the review,
    the admin and ``campaign show`` say them (times in UTC)."""
    lines = []
    first, last = go_live_at(version), latest_local(version)
    if version.start_at is not None and first is not None and last is not None:
        wall = wall_clock(version.start_at, version.time_zone)
        lines.append(
            f"Sent at {wall:%H:%M} on {wall:%Y-%m-%d} in each recipient's time zone "
            f"({version.time_zone} for profiles without one), from {first:%Y-%m-%d %H:%M} "
            f"to {last:%Y-%m-%d %H:%M} UTC."
        )
    elif version.in_recipient_time_zone:
        lines.append(
            "Sent at each run's clock time in each recipient's time zone "
            f"({version.time_zone} for profiles without one)."
        )
    quiet = quiet_hours_of(version)
    if quiet is not None:
        lines.append(
            f"Quiet hours {quiet} in each recipient's time zone: marketing messages due then "
            "wait for their end (instead of the presets' quiet hours)."
        )
    return lines
