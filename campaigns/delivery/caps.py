"""Frequency caps at send time: a marketing delivery whose profile already had as many
marketing messages as an active rule allows within its period is skipped
(``frequency_cap``), across every campaign and every worker at once.

The ledger. Every marketing message a worker is about to send is first *reserved*: a
``MarketingSend`` row (profile, channel, time, delivery id). The check counts these rows,
never the deliveries (no index by profile there), through the index on (profile, time).
A reservation whose message was not sent (skipped, failed, waiting for a retry) is
released when the chunk records its outcomes, so only sent messages stay counted.

Two campaigns sending to one person at the same moment cannot both pass a cap of 1, since
counting and reserving are serialised per profile:

* PostgreSQL: a short transaction on the sending thread's second connection takes a
  transaction-level advisory lock per group of CAP_LOCK_PROFILES consecutive profile ids
  of the chunk (in order, so two chunks never deadlock), counts, inserts the reservations
  and commits, before the chunk renders: no lock is held while the chunk waits for the
  provider, so the email and SMS chunks of one campaign, which reach the same profiles at
  the same moment, do not wait for each other. Grouping bounds the locks a transaction
  holds (32 for a chunk of 500 consecutive profiles, at most the chunk's size for a
  scattered one; PostgreSQL's lock table holds max_locks_per_transaction × max_connections
  of them in all). The chunk's own transaction gives back the reservations of what it did
  not send when it records the outcomes; if its worker is killed, the reservations stay
  and the row, sent again, finds its own (its delivery id) and counts once. Called inside a
  transaction (a caller's, as tests do), the reservations are made in it instead, since a
  second connection would not see what it has not committed.
* SQLite: the reservation is made in the short transaction that claims the chunk's rows
  (one writer at a time). A killed worker's reservations stay, under their delivery ids:
  the row is sent again once its claim expires, finds its own reservation and is not
  counted twice.

Between its reservation and its outcome a message counts for the others: a message that
then fails may have capped another campaign's message to the same person (never the
other way round).

Cost. Transactional campaigns, and every chunk while no rule is active, run no statement
at all: the rules are read once per batch (one small query). Otherwise a chunk costs one
lock statement (PostgreSQL), one look-up of its own reservations, one grouped count, one
insert of its reservations (and, on PostgreSQL, their commit) and, when some were not sent,
one delete; a chunk on a channel no active rule covers takes no lock and counts nothing,
it only records its sends, so that a rule added later counts them. Each sending thread
keeps a second connection open on PostgreSQL once a rule is active: count it against
``max_connections``.

Sends of a campaign exempt from the caps are recorded (they count for the others) but
never checked. Sends made while no rule at all was active were not recorded: the first
rule counts from when it became active.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections

from ..caps import active_frequency_caps
from ..choices import CAP_PERIOD_SECONDS, CampaignType, CapPeriod, DeliveryReason, DeliveryStatus
from ..models import Campaign, FrequencyCap, MarketingSend
from .policy import DeliveryOutcome, Due
from .sql import db_time, on_postgres, table_name

# The key space of the caps' per-profile locks among PostgreSQL advisory locks ("SCAP"),
# and how many consecutive profile ids share one lock.
CAP_LOCK_SPACE = 0x53434150
CAP_LOCK_PROFILES = 16

PERIOD_WORDS: dict[str, str] = {
    CapPeriod.DAY: "24 hours",
    CapPeriod.WEEK: "7 days",
    CapPeriod.MONTH: "30 days",
}
CAPPED_TEXT = (
    "The profile had {limit} {scope} marketing message(s) in the last {period} (“{name}”)."
)


def _ids_condition(column: str, ids: Sequence[int]) -> tuple[str, Any]:
    """``column`` among `ids`, as one parameter on either database."""
    if on_postgres():
        return f"{column} = ANY(%s)", list(ids)
    return f"{column} IN (SELECT value FROM json_each(%s))", json.dumps(list(ids))


_reservations = threading.local()


def _reservation_connection() -> Any:
    """This thread's second connection to the database, for the reservations' short
    transactions (PostgreSQL), opened on first use."""
    side = getattr(_reservations, "connection", None)
    if side is None:
        side = connections.create_connection(DEFAULT_DB_ALIAS)
        _reservations.connection = side
    return side


def _forget_reservation_connection() -> None:
    _reservations.__dict__.pop("connection", None)  # a forked child must open its own


os.register_at_fork(after_in_child=_forget_reservation_connection)


class CapCheck:
    """The caps of one action's batch: which of a chunk's recipients may be sent, and the
    reservations of those that may."""

    def __init__(self, *, channel: str, campaign: Campaign) -> None:
        self.channel = channel
        self.campaign = campaign
        self._rules: tuple[bool, list[FrequencyCap]] | None = None
        self.reserved: set[int] = set()
        # PostgreSQL, with no caller's transaction around the batch: reserve in a short
        # transaction of its own (``_transaction``).
        self.separate = on_postgres() and not connection.in_atomic_block

    def _read_rules(self) -> tuple[bool, list[FrequencyCap]]:
        """Read once, when the first chunk needs them (a preview or a review that builds a
        sender for each action never does): whether marketing sends are recorded (while any
        rule is active; none: nothing runs), and the rules that cap this channel's sends,
        unless the campaign is exempt."""
        if self._rules is None:
            marketing = self.campaign.type == CampaignType.MARKETING
            rules = active_frequency_caps() if marketing else []
            mine = [r for r in rules if r.channel in ("", self.channel)]
            self._rules = (bool(rules), [] if self.campaign.frequency_cap_exempt else mine)
        return self._rules

    @property
    def recording(self) -> bool:
        return self._read_rules()[0]

    @property
    def rules(self) -> list[FrequencyCap]:
        return self._read_rules()[1]

    def reserve(
        self, due: Sequence[Due], *, now: dt.datetime
    ) -> tuple[list[Due], list[DeliveryOutcome]]:
        """Split the chunk into the rows that may be sent, each now holding its reservation,
        and the outcomes of those a cap skips. Call inside the transaction that holds the
        rows (PostgreSQL: the chunk's; SQLite: the claim's)."""
        if not self.recording:
            return list(due), []
        present = [row for row in due if row.profile is not None]
        if not present:
            return list(due), []
        profile_ids = sorted({int(row.profile["id"]) for row in present})  # type: ignore[index]
        delivery_ids = [row.delivery_id for row in present]
        with self._transaction() as cursor:
            own = self._held(cursor, profile_ids, delivery_ids)
            counts = self._counts(cursor, profile_ids, delivery_ids, now=now) if self.rules else {}
            sendable, capped, reservations = self._decide(due, own, counts)
            self._insert(cursor, reservations, now=now)
        self.reserved.update(own)
        self.reserved.update(delivery_id for delivery_id, _ in reservations)
        return sendable, capped

    def _decide(
        self, due: Sequence[Due], own: set[int], counts: dict[int, list[int]]
    ) -> tuple[list[Due], list[DeliveryOutcome], list[tuple[int, int]]]:
        """The rows to send, the capped rows' outcomes, and the (delivery, profile)
        reservations to make."""
        sendable: list[Due] = []
        capped: list[DeliveryOutcome] = []
        reservations: list[tuple[int, int]] = []
        for row in due:
            if row.profile is None or row.delivery_id in own:
                sendable.append(row)  # a deleted profile is skipped by prepare; own: resent
                continue
            reached = self._reached(counts.get(int(row.profile["id"])))
            if reached is not None:
                capped.append(self._capped(row, reached))
                continue
            sendable.append(row)
            reservations.append((row.delivery_id, int(row.profile["id"])))
        return sendable, capped, reservations

    def release(self, outcomes: Sequence[DeliveryOutcome]) -> None:
        """Drop the reservations of the chunk's messages that were not sent (skipped,
        failed, or waiting for a retry): only sent messages stay counted. In the
        transaction that records the outcomes."""
        if not self.reserved:
            return
        unsent = [
            o.delivery_id
            for o in outcomes
            if o.status != DeliveryStatus.SENT and o.delivery_id in self.reserved
        ]
        self.reserved.difference_update(o.delivery_id for o in outcomes)
        if unsent:
            MarketingSend.objects.filter(delivery_id__in=unsent).delete()

    def forget(self, delivery_ids: Sequence[int]) -> None:
        """Drop the reservations of rows let go unsent (the campaign was stopped)."""
        held = [i for i in delivery_ids if i in self.reserved]
        self.reserved.difference_update(held)
        if held:
            MarketingSend.objects.filter(delivery_id__in=held).delete()

    # --- the statements ----------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """Where the reservations are made: on PostgreSQL a short transaction of the
        thread's second connection, committed at once, so that no lock is held while the
        chunk renders and waits for the provider; else (SQLite, or a caller's transaction
        around the batch, whose uncommitted rows another connection would not see) the
        transaction the chunk's rows are held in."""
        if not self.separate:
            with connection.cursor() as cursor:
                yield cursor
            return
        side = _reservation_connection()
        side.ensure_connection()
        side.set_autocommit(False)
        try:
            with side.cursor() as cursor:
                # No WAL flush of its own: the chunk's commit, later, flushes the log up to
                # and past this one, before any outcome of it is recorded.
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
                yield cursor
            side.commit()
        except BaseException:
            side.rollback()
            raise
        finally:
            side.set_autocommit(True)

    def _held(
        self, cursor: Any, profile_ids: Sequence[int], delivery_ids: Sequence[int]
    ) -> set[int]:
        """The chunk's rows that hold a reservation already: a row whose worker was killed
        after reserving it, sent again. Locks the profiles first on PostgreSQL."""
        if on_postgres() and self.rules:
            # One statement, the locks taken in key order: two chunks never deadlock.
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, k) FROM "
                "(SELECT DISTINCT ((p / %s) & 2147483647)::int AS k "
                "FROM unnest(%s::bigint[]) AS p ORDER BY 1) AS keys",
                [CAP_LOCK_SPACE, CAP_LOCK_PROFILES, list(profile_ids)],
            )
        condition, param = _ids_condition("delivery_id", delivery_ids)
        cursor.execute(
            f"SELECT delivery_id FROM {table_name(MarketingSend)} WHERE {condition}", [param]
        )
        return {int(delivery_id) for (delivery_id,) in cursor.fetchall()}

    def _insert(
        self, cursor: Any, reservations: Sequence[tuple[int, int]], *, now: dt.datetime
    ) -> None:
        """One INSERT of the chunk's reservations; a delivery's second one is ignored."""
        if not reservations:
            return
        table = table_name(MarketingSend)
        if on_postgres():
            source = "SELECT u.p, %s, %s, u.d FROM unnest(%s::bigint[], %s::bigint[]) AS u(d, p)"
            params: list[Any] = [
                self.channel,
                db_time(now),
                [d for d, _ in reservations],
                [p for _, p in reservations],
            ]
        else:
            # "WHERE true" keeps SQLite from reading ON CONFLICT as a join constraint.
            source = "SELECT value->>1, %s, %s, value->>0 FROM json_each(%s) WHERE true"
            params = [self.channel, db_time(now), json.dumps(list(reservations))]
        cursor.execute(
            f"INSERT INTO {table} (profile_id, channel, at, delivery_id) {source} "
            "ON CONFLICT (delivery_id) DO NOTHING",
            params,
        )

    def _counts(
        self,
        cursor: Any,
        profile_ids: Sequence[int],
        delivery_ids: Sequence[int],
        *,
        now: dt.datetime,
    ) -> dict[int, list[int]]:
        """Per profile of the chunk, its recorded sends within each rule's period and on
        its channel(s), besides the chunk's own reservations: one grouped query through
        the index on (profile, time)."""
        columns = []
        params: list[Any] = []
        for rule in self.rules:
            since = db_time(now - dt.timedelta(seconds=CAP_PERIOD_SECONDS[rule.period]))
            if rule.channel:
                columns.append("SUM(CASE WHEN at >= %s AND channel = %s THEN 1 ELSE 0 END)")
                params += [since, rule.channel]
            else:
                columns.append("SUM(CASE WHEN at >= %s THEN 1 ELSE 0 END)")
                params.append(since)
        longest = max(CAP_PERIOD_SECONDS[rule.period] for rule in self.rules)
        profiles, profiles_param = _ids_condition("profile_id", profile_ids)
        own, own_param = _ids_condition("delivery_id", delivery_ids)
        sql = (
            f"SELECT profile_id, {', '.join(columns)} FROM {table_name(MarketingSend)} "
            f"WHERE {profiles} AND at >= %s AND NOT ({own}) GROUP BY profile_id"
        )
        params += [profiles_param, db_time(now - dt.timedelta(seconds=longest)), own_param]
        cursor.execute(sql, params)
        return {int(pid): [int(n or 0) for n in sums] for pid, *sums in cursor.fetchall()}

    def _reached(self, counts: list[int] | None) -> FrequencyCap | None:
        """The first rule whose limit the profile's counted sends reach, if any."""
        if counts is None:
            return None
        for rule, count in zip(self.rules, counts, strict=True):
            if count >= rule.limit:
                return rule
        return None

    def _capped(self, row: Due, rule: FrequencyCap) -> DeliveryOutcome:
        text = CAPPED_TEXT.format(
            limit=rule.limit,
            scope=rule.get_channel_display() if rule.channel else "all-channel",
            period=PERIOD_WORDS[rule.period],
            name=rule.name,
        )
        return DeliveryOutcome(
            row.delivery_id, DeliveryStatus.SKIPPED, text, reason=DeliveryReason.FREQUENCY_CAP
        )
