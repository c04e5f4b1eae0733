"""The delivery benchmark, end to end, against the naive design in the same run.

    manage.py bench_delivery --profiles 1000000 --channels email,sms [--workers 2]
                             [--naive-profiles 5000] [--smtp-profiles 100000]
                             [--esp mailgun|postmark|sendgrid|ses|none] [--esp-profiles N]
                             [--history-deliveries 20000000]

Meant for PostgreSQL + Redis (`make services`); it runs on the embedded default too, slowly.
It generates the profiles (kept between runs), starts the local sink servers and a worker
with N processes, activates a campaign and measures, from activation to Completed:
deliveries per second, time from Live to the first message at a sink, and the peak RSS of
each worker process (sampled from /proc). Then, on a smaller audience, the naive design —
one Celery task per recipient that renders, sends and saves one row — as a ratio. It counts
messages accepted twice for one delivery id at the sinks.

Email goes through the HTTP batch email API (``channels.providers.email_api``), as a
high-volume sender's would. A separate run sends one personalised email action over SMTP
(``--smtp-profiles``, default 100,000, at most ``--profiles``) to the sink's own SMTP server
(``devtools.sinks.smtp``, which advertises PIPELINING), with the same worker processes, and
adds `smtp_messages_per_s` (messages the sink accepted per second, activation to Completed),
`smtp_first_message_s` and `smtp_duplicates` to the JSON (null without the run: no email in
``--channels``, or ``--smtp-profiles 0``); then the same run with the sink advertising
CHUNKING too, so that the client sends pipelined BDAT (RFC 3030):
`smtp_chunking_messages_per_s` and `smtp_chunking_first_message_s` (its duplicates counted in
`smtp_duplicates`). And the same audience once
more (``--esp-profiles``, default ``--profiles``) with email through django-anymail's own
backend for an ESP (``--esp``, default Mailgun, whose batch call carries personalised
content, as SendGrid's does; Postmark's carries one content only) to the sink's emulation
of that ESP's API (``devtools.sinks.esp``), printed beside the generic HTTP figure of the
same run and added to the JSON as `esp`, `esp_deliveries_per_s` and `esp_worker_peak_rss_mb`.

Then the server time of the campaign's report, ``GET /api/campaigns/{id}/report/``, of its
admin change page, ``GET /admin/campaigns/campaign/{id}/change/`` (with its live report),
and of that page's refresh, ``GET /admin/campaigns/campaign/{id}/report/`` (JSON), once it
has completed: each the median of a few requests through Django's request handler in this
process, as a logged-in superuser (middleware, view, queries, templates; no network). The
same pages of a campaign to 1,000 profiles × the same channels, which the same worker
completes next, are timed with them (the `_1k` keys): the requests go round the pages in
turn once the worker has stopped, both campaigns' rows in the tables, so a page whose time
grows with the deliveries shows as a gap between the two sizes.

And the CSV export of its deliveries, ``GET /api/campaigns/{id}/deliveries/?format=csv``,
from a web process of its own (``manage.py runserver``, DEBUG off) over loopback: rows per
second from the request to the last byte, and the peak RSS of that process while it
streams (sampled from /proc).

Human lines first; the last line is one JSON object with exactly the keys `profiles`,
`channels`, `deliveries_per_s`, `first_message_s`, `worker_peak_rss_mb`,
`naive_deliveries_per_s`, `naive_ratio`, `duplicates`, `report_ms`, `admin_page_ms`,
`admin_report_ms`, `report_ms_1k`, `admin_page_ms_1k`, `admin_report_ms_1k`,
`export_rows_per_s`, `export_peak_rss_mb`, `bench_peak_rss_mb` and `sink_peak_rss_mb` (the
peak memory of this process and of the sink's, flat in the number of messages), and (unless
`--no-cap-runs`) the frequency caps' figures `deliveries_per_s_marketing`,
`deliveries_per_s_with_cap` and `cap_cost_pct`: the same audience sent by a marketing
campaign twice more, without and then with one active cap rule that nobody reaches
(``caps``; the issue's target: the check costs at most 15%), the SMTP runs' five keys
(above), with an ESP run its three, and the history's two (below).

With ``--history-deliveries N`` (PostgreSQL only), N delivery rows of a year of earlier
campaigns (``history``: 365 Completed campaigns, one a day, email and SMS to the bench
profiles, with their counters and provider events) are in the tables first, generated inside
PostgreSQL and kept between runs (a new N inserts or deletes only the difference; 0, the
default, drops them, so that the figures without history are measured without). Every figure
is then measured with that history present, and the JSON adds `history_deliveries`,
`bytes_per_delivery` (the delivery table's size on disk, heap, indexes and TOAST, over its
rows), and `retention_drop_s` with `retention_partition_drop_s`: retention dropping a month
of expired deliveries as large as the history's, generated for it, with their events (and of
that time, the partitions' detach and drop).

``DeliveryBenchmark`` (``delivery``) runs it; ``data`` generates the profiles and campaigns,
``processes`` starts and samples the worker and the web process, ``pages`` times the pages.
"""

from .delivery import DeliveryBenchmark
from .errors import BenchmarkError

__all__ = ["BenchmarkError", "DeliveryBenchmark"]
