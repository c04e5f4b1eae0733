"""A campaign's deliveries as CSV, streamed: the API's `?format=csv` and the admin's
"Export CSV" send the same file.

The header row is `DELIVERY_COLUMNS`; times are ISO 8601 in UTC with microseconds
(`2026-11-29T18:59:04.123456Z`), a missing value is an empty cell, lines end with "\\n".
On PostgreSQL the database writes the rows itself (`COPY (query) TO STDOUT`, CSV) and the
process passes its blocks on as they come: the 2M rows of a 1M × 2-channel campaign never
become Python objects. On SQLite the rows come from its cursor `EXPORT_CHUNK_ROWS` at a
time through Python's csv module. Either way the process holds one block or chunk, however
large the campaign.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterator
from typing import Any

from django.db import connections
from django.db.models import QuerySet
from django.http import StreamingHttpResponse

from .models import Campaign, Delivery
from .selectors import DELIVERY_COLUMNS

# Rows fetched from the cursor, and written out, at a time (SQLite).
EXPORT_CHUNK_ROWS = 2000
# Bytes of PostgreSQL's CSV gathered before they are sent on (its blocks are small).
EXPORT_BLOCK_BYTES = 256 * 1024
# The columns that hold a time, written as ISO 8601 in UTC.
TIME_COLUMNS = ("sent_at", "updated_at")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
TIME_FORMAT_SQL = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'


def _header() -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(DELIVERY_COLUMNS)
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime(TIME_FORMAT)
    return value


def _written_by_python(rows: QuerySet[Delivery]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    chunk: list[list[Any]] = []
    for row in rows.values_list(*DELIVERY_COLUMNS).iterator(chunk_size=EXPORT_CHUNK_ROWS):
        chunk.append([_cell(value) for value in row])
        if len(chunk) == EXPORT_CHUNK_ROWS:
            writer.writerows(chunk)
            chunk.clear()
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    writer.writerows(chunk)
    yield buffer.getvalue().encode()


def _copied_by_postgresql(rows: QuerySet[Delivery]) -> Iterator[bytes]:
    query, params = rows.values_list(*DELIVERY_COLUMNS).query.sql_with_params()
    columns = ", ".join(
        f"to_char(d.{name} AT TIME ZONE 'UTC', '{TIME_FORMAT_SQL}')"
        if name in TIME_COLUMNS
        else f"d.{name}"
        for name in DELIVERY_COLUMNS
    )
    copy_sql = f"COPY (SELECT {columns} FROM ({query}) AS d) TO STDOUT (FORMAT csv)"
    connection = connections[rows.db]
    with connection.cursor() as cursor, cursor.cursor.copy(copy_sql, params) as copy:
        pending: list[bytes] = []
        size = 0
        for block in copy:
            pending.append(bytes(block))
            size += len(block)
            if size >= EXPORT_BLOCK_BYTES:
                yield b"".join(pending)
                pending.clear()
                size = 0
        yield b"".join(pending)


def deliveries_csv(rows: QuerySet[Delivery]) -> Iterator[bytes]:
    """The header, then `DELIVERY_COLUMNS` of each row of `rows` (`campaign_deliveries`),
    a block at a time."""
    yield _header().encode()
    if connections[rows.db].vendor == "postgresql":
        yield from _copied_by_postgresql(rows)
    else:
        yield from _written_by_python(rows)


def deliveries_csv_response(
    *, campaign: Campaign, rows: QuerySet[Delivery]
) -> StreamingHttpResponse:
    """`deliveries_csv` as a download named after the campaign."""
    response = StreamingHttpResponse(deliveries_csv(rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="campaign-{campaign.pk}-deliveries.csv"'
    )
    return response
