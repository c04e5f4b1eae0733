"""Counters kept in the database: rows of a model with a unique key and a ``count``, added to
by the transactions that change what they count (the engine's ``DeliveryCount`` and
``DeliveryTimeline``, the report's ``EngagementCount`` and ``GroupEngagementCount``, an
experiment's ``AssignmentCount``), so that progress and reports read a handful of rows
instead of counting millions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.db import connection


def counters_add(model: Any, key: Sequence[str], changes: Mapping[tuple[Any, ...], int]) -> None:
    """Add each change to the `count` of the counter whose `key` columns (those of the
    model's unique constraint) hold its key, creating the counter at need: one INSERT … ON
    CONFLICT DO UPDATE for them all. Zero changes are left out.

    Callers run it last in their transaction, so that the counter rows, which every worker
    updates, stay locked only for the commit; the rows go in the keys' order, so that two
    transactions never wait on each other in a cycle."""
    rows = [(*counter, n) for counter, n in sorted(changes.items()) if n]
    if not rows:
        return
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    columns = [quote(column) for column in key]
    count = quote("count")
    values = ", ".join([f"({', '.join(['%s'] * (len(key) + 1))})"] * len(rows))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({', '.join([*columns, count])}) VALUES {values} "
            f"ON CONFLICT ({', '.join(columns)}) "
            f"DO UPDATE SET {count} = {table}.{count} + excluded.{count}",
            [value for row in rows for value in row],
        )
