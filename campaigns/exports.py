"""A campaign's deliveries as CSV, streamed: the API's `?format=csv` and the admin's
"Export CSV" send the same file.

Rows come from the database through a server-side cursor (PostgreSQL) or SQLite's own
cursor, `EXPORT_CHUNK_ROWS` at a time, and leave as text as soon as they are written, so
the process holds one chunk whatever the campaign's size.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

from django.db.models import QuerySet
from django.http import StreamingHttpResponse

from .models import Campaign, Delivery
from .selectors import DELIVERY_COLUMNS

# Rows fetched from the cursor, and written out, at a time.
EXPORT_CHUNK_ROWS = 2000


def deliveries_csv(rows: QuerySet[Delivery]) -> Iterator[str]:
    """The header, then `DELIVERY_COLUMNS` of each row of `rows` (`campaign_deliveries`),
    a chunk of lines at a time. Empty values are empty cells; times are ISO 8601."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(DELIVERY_COLUMNS)
    chunk: list[tuple[object, ...]] = []
    for row in rows.values_list(*DELIVERY_COLUMNS).iterator(chunk_size=EXPORT_CHUNK_ROWS):
        chunk.append(row)
        if len(chunk) == EXPORT_CHUNK_ROWS:
            writer.writerows(chunk)
            chunk.clear()
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    writer.writerows(chunk)
    yield buffer.getvalue()


def deliveries_csv_response(
    *, campaign: Campaign, rows: QuerySet[Delivery]
) -> StreamingHttpResponse:
    """`deliveries_csv` as a download named after the campaign."""
    response = StreamingHttpResponse(deliveries_csv(rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="campaign-{campaign.pk}-deliveries.csv"'
    )
    return response
