"""The event ingestion benchmark: providers' tracking webhooks posted to the real web
server, as an ESP posts them.

    manage.py bench_events [--events 1000000] [--clients 8] [--format postmark|sendgrid]
                           [--per-post 100] [--duplicates 0.05]

Meant for PostgreSQL (`make services`). It starts the web server as production runs it
(gunicorn with ``config.gunicorn``, DEBUG off, a webhook secret of its own), then
`--clients` threads, each on one kept-alive connection, post the events to anymail's
tracking webhook with the basic auth an ESP is configured with:

* ``--format postmark`` (the default): Postmark's JSON, one event per POST, as Postmark
  sends them (``/anymail/postmark/tracking/``);
* ``--format sendgrid``: SendGrid's event webhook, ``--per-post`` events in each POST's
  JSON array, as SendGrid batches them (``/anymail/sendgrid/tracking/``).

The events are delivered, opened, clicked, bounced (hard and soft), complained and
unsubscribed in the proportions of ``MIX``, each for a delivery id of its own carried as
anymail metadata (``salvo_delivery_id``), as Salvo's messages carry it. By default the ids
name no stored delivery (the events table keeps no constraint to it, and such an event
counts in no report), so a run needs no campaign of a million first. With ``--attach``
each event names a sent email delivery of a campaign of its own, written beforehand in
SQL as a send leaves its rows (``--events`` deliveries), so the report's counters are
kept as they are in production; after the run the campaign's report is timed. A share
`--duplicates` of the events is posted a second time (a provider's retry). Bounces,
complaints and unsubscribes put their addresses on the suppression list, as they would.

It prints one JSON line with
* ``format``: which webhook and how many events a post;
* ``events_per_s``: events posted (duplicates included) per second, from the first post to
  the last answer;
* ``duplicates_ignored``: events posted that were recorded already (it checks that it is
  the number of second posts, and that every other event was recorded once);
* ``web_peak_rss_mb``: the peak resident memory of any web worker process (sampled from
  /proc), and ``web_workers``;
* with ``--attach``: ``report_ms``, the median of REPORT_SAMPLES ``campaign_report`` calls
  on the campaign the events were for (it checks that the report's engagement counts are
  the deliveries each kind of event named), and ``deliveries``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.client
import json
import os
import queue
import random
import secrets
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from campaigns import selectors, services
from campaigns.choices import CampaignType, DeliveryStatus
from campaigns.engagement import ENGAGEMENT_KINDS
from campaigns.models import (
    Campaign,
    ChannelAction,
    Delivery,
    DeliveryCount,
    DeliveryEvent,
    Execution,
)
from channels.choices import ChannelKind
from channels.models import MessagePreset
from segments.choices import SegmentKind
from segments.models import Segment

from .errors import BenchmarkError
from .processes import children, rss_mb
from .triggers import running_web_server

FORMATS = ("postmark", "sendgrid")
# Of every 100 events: what providers report, roughly, after a marketing send.
MIX: tuple[tuple[str, int], ...] = (
    ("delivered", 60),
    ("opened", 24),
    ("clicked", 10),
    ("bounced", 2),
    ("soft_bounced", 2),
    ("complained", 1),
    ("unsubscribed", 1),
)
KINDS = [kind for kind, share in MIX for _ in range(share)]
# Delivery ids start far above any stored delivery's (they name none).
FIRST_DELIVERY_ID = 9_000_000_000
# campaign_report calls timed after an --attach run (the median is printed).
REPORT_SAMPLES = 5
# Each --attach run's campaign is named so.
ATTACH_PREFIX = "bench-events "


def attached_deliveries(events: int, run: str) -> tuple[Campaign, list[int]]:
    """A campaign with `events` sent email deliveries, as a send leaves them (written inside
    the database: INSERT … SELECT, and their DeliveryCount), and their ids, one per event."""
    preset, _ = MessagePreset.objects.update_or_create(
        name="bench email", defaults={"channel": ChannelKind.EMAIL, "from_email": "b@example.com"}
    )
    segment, _ = Segment.objects.get_or_create(
        name="bench events (nobody)",
        defaults={
            "kind": SegmentKind.RULES,
            "rules": {"all": [{"field": "external_id", "op": "eq", "value": "-"}]},
        },
    )
    campaign = services.campaign_create(
        user=None,
        name=f"{ATTACH_PREFIX}{run} {timezone.now().isoformat()}",
        type=CampaignType.MARKETING,
        segment=segment,
        actions=[{"channel": ChannelKind.EMAIL, "preset": preset, "subject": "Hi", "body": "Hi"}],
    )
    version = campaign.draft_version
    assert version is not None
    action = ChannelAction.objects.get(version=version)
    series = (
        "generate_series(1, %s) AS s(g)"
        if connection.vendor == "postgresql"
        else "(WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < %s) "
        "SELECT g FROM s) AS s"
    )
    table = Delivery._meta.db_table
    with transaction.atomic():
        execution = Execution.objects.create(
            campaign=campaign, version=version, audience_size=events, planning_done=True
        )
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (execution_id, action_id, profile_id, status, version_id, "
                "reason, attempts, provider_message_id, error, sent_at, updated_at) "
                f"SELECT %s, %s, g, %s, %s, '', 1, '', '', %s, %s FROM {series}",
                [execution.pk, action.pk, DeliveryStatus.SENT, version.pk, timezone.now(),
                 timezone.now(), events],
            )  # fmt: skip
        DeliveryCount.objects.create(
            execution=execution, action=action, version=version, status=DeliveryStatus.SENT,
            count=events,
        )  # fmt: skip
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {table}")
    ids = list(
        Delivery.objects.filter(execution=execution)
        .order_by("profile_id")
        .values_list("pk", flat=True)
    )
    return campaign, ids


def report_ms(campaign: Campaign) -> float:
    """The median time of REPORT_SAMPLES reports of the campaign, in milliseconds."""
    times = []
    for _ in range(REPORT_SAMPLES):
        started = time.perf_counter()
        selectors.campaign_report(campaign=campaign)
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 1)


def _postmark(kind: str, n: int, run: str, at: str, id_base: int, delivery: int) -> dict[str, Any]:
    common = {
        "MessageStream": "outbound",
        "MessageID": f"bench-{run}-{n}",
        "Metadata": {"salvo_delivery_id": str(delivery)},
        "ServerID": 23,
        "Tag": "bench",
    }
    email = f"r{n}@bench-{run}.example.com"
    if kind in ("bounced", "soft_bounced", "complained"):
        kind_type = {"bounced": "HardBounce", "soft_bounced": "SoftBounce"}.get(
            kind, "SpamComplaint"
        )
        return {
            **common,
            "RecordType": "SpamComplaint" if kind == "complained" else "Bounce",
            "ID": id_base + n,
            "Type": kind_type,
            "Email": email,
            "BouncedAt": at,
            "Description": "The server was unable to deliver your message.",
            "Details": "smtp;550 5.1.1 no such user",
        }
    if kind == "unsubscribed":
        return {
            **common,
            "RecordType": "SubscriptionChange",
            "Recipient": email,
            "ChangedAt": at,
            "SuppressSending": True,
            "SuppressionReason": "ManualSuppression",
            "Origin": "Recipient",
        }
    record = {"delivered": "Delivery", "opened": "Open", "clicked": "Click"}[kind]
    event = {**common, "RecordType": record, "Recipient": email}
    if kind == "delivered":
        return {**event, "DeliveredAt": at, "Details": "smtp;250 2.0.0 OK"}
    event = {**event, "ReceivedAt": at, "UserAgent": "Mozilla/5.0", "FirstOpen": True}
    return {**event, "OriginalLink": "https://example.com/offer"} if kind == "clicked" else event


def _sendgrid(kind: str, n: int, run: str, at: int, delivery: int) -> dict[str, Any]:
    name = {
        "delivered": "delivered",
        "opened": "open",
        "clicked": "click",
        "bounced": "bounce",
        "soft_bounced": "bounce",
        "complained": "spamreport",
        "unsubscribed": "unsubscribe",
    }[kind]
    event: dict[str, Any] = {
        "email": f"r{n}@bench-{run}.example.com",
        "timestamp": at,
        "event": name,
        "smtp-id": f"<bench-{run}-{n}@bench>",
        "anymail_id": f"bench-{run}-{n}",
        "sg_event_id": f"bench-{run}-{n}",
        "sg_message_id": f"bench-{run}-{n}.filter",
        "salvo_delivery_id": str(delivery),
    }
    if kind in ("bounced", "soft_bounced"):
        event["type"] = "bounce" if kind == "bounced" else "blocked"
        event["reason"] = "550 5.1.1 no such user"
    if kind == "clicked":
        event["url"] = "https://example.com/offer"
    return event


# What each posted event reports, as Salvo records it (a soft bounce is no bounce).
_POSTMARK_KINDS = {
    "Delivery": "delivered",
    "Open": "opened",
    "Click": "clicked",
    "SpamComplaint": "complained",
    "SubscriptionChange": "unsubscribed",
}
_SENDGRID_KINDS = {
    "delivered": "delivered",
    "open": "opened",
    "click": "clicked",
    "spamreport": "complained",
    "unsubscribe": "unsubscribed",
}


def _kind_of(event: dict[str, Any]) -> tuple[str, str]:
    """(kind, delivery id) of a posted event."""
    if "RecordType" in event:
        record = event["RecordType"]
        if record == "Bounce":
            kind = "bounced" if event["Type"] == "HardBounce" else "soft_bounced"
        else:
            kind = _POSTMARK_KINDS[record]
        return kind, event["Metadata"]["salvo_delivery_id"]
    name = event["event"]
    if name == "bounce":
        kind = "bounced" if event["type"] == "bounce" else "soft_bounced"
    else:
        kind = _SENDGRID_KINDS[name]
    return kind, event["salvo_delivery_id"]


@dataclass
class EventBenchmark:
    """One benchmark run: ``run`` says its human lines through ``say`` and returns the
    summary (the JSON line's keys)."""

    say: Callable[[str], None]

    def run(
        self,
        *,
        events: int,
        clients: int,
        format: str,
        per_post: int,
        duplicates: float,
        attach: bool = False,
    ) -> dict[str, Any]:
        if connection.vendor != "postgresql":
            self.say(
                "warning: the target is for PostgreSQL (eval $(make services-env)); "
                f"running on {connection.vendor}."
            )
        if format == "postmark":
            per_post = 1
        run = f"{os.getpid()}x{secrets.token_hex(3)}"
        secret = f"bench:{secrets.token_urlsafe(24)}"
        campaign = None
        deliveries = [FIRST_DELIVERY_ID + n for n in range(events)]
        if attach:
            self.say(f"writing a campaign of {events:,} sent deliveries for the events…")
            campaign, deliveries = attached_deliveries(events, run)
        posts = self._posts(events, format, per_post, duplicates, run, deliveries)
        second = sum(len(batch) for batch, again in posts if again)
        posted = sum(len(batch) for batch, _ in posts)
        described = (
            "Postmark tracking webhook, one event per POST"
            if format == "postmark"
            else f"SendGrid event webhook, {per_post} events per POST"
        )
        self.say(
            f"posting {posted:,} events ({events:,} + {second:,} posted twice) to the "
            f"{described}, by {clients} clients…"
        )
        # The web server's secret (it inherits this process's environment), for this run.
        earlier = os.environ.get("ANYMAIL_WEBHOOK_SECRET")
        os.environ["ANYMAIL_WEBHOOK_SECRET"] = secret
        with (
            tempfile.TemporaryDirectory(prefix="salvo-bench-events-") as name,
            running_web_server(Path(name), say=self.say) as url,
        ):
            server = self._gunicorn_pid()
            started = time.time()
            peak = self._post_all(url, format, posts, clients, secret, server)
            took = time.time() - started
        if earlier is None:
            del os.environ["ANYMAIL_WEBHOOK_SECRET"]
        else:
            os.environ["ANYMAIL_WEBHOOK_SECRET"] = earlier
        recorded = DeliveryEvent.objects.filter(
            provider=format, provider_message_id__startswith=f"bench-{run}-"
        ).count()
        if recorded != events:
            raise BenchmarkError(
                f"{events:,} distinct events posted, {recorded:,} recorded: some were lost."
            )
        self.say(f"{posted:,} events in {took:.1f}s; {recorded:,} recorded")
        summary: dict[str, Any] = {
            "format": described,
            "events": posted,
            "events_per_s": round(posted / took, 1),
            "duplicates_ignored": posted - recorded,
            "web_peak_rss_mb": round(max(peak.values(), default=0.0), 1),
            "web_workers": len(peak),
        }
        if campaign is not None:
            self._check_counts(campaign, posts)
            summary["report_ms"] = report_ms(campaign)
            summary["deliveries"] = events
            self.say(f"report_ms = {summary['report_ms']} ms: campaign_report of {campaign.name}")
        return summary

    def _check_counts(
        self, campaign: Campaign, posts: list[tuple[list[dict[str, Any]], bool]]
    ) -> None:
        """The report's engagement counts are the deliveries each counted kind named."""
        named: dict[str, set[str]] = {}
        for batch, _ in posts:
            for event in batch:
                kind, delivery = _kind_of(event)
                if kind in ENGAGEMENT_KINDS:
                    named.setdefault(kind, set()).add(delivery)
        shown = selectors.campaign_report(campaign=campaign)["engagement"]["by_channel"]["email"]
        counts = {kind: shown[kind]["count"] for kind in ENGAGEMENT_KINDS}
        expected = {kind: len(named.get(kind, ())) for kind in ENGAGEMENT_KINDS}
        if counts != expected:
            raise BenchmarkError(f"the report counts {counts}, the events named {expected}.")

    def _posts(
        self,
        events: int,
        format: str,
        per_post: int,
        duplicates: float,
        run: str,
        deliveries: list[int],
    ) -> list[tuple[list[dict[str, Any]], bool]]:
        """Each post's events, in posting order, and whether it is a second post. A second
        post comes a little after its first, as a provider's retry does."""
        chooser = random.Random(events)
        # Postmark numbers its bounce events: a range of this run's own.
        id_base = secrets.randbelow(10**9) * 10**8
        now = dt.datetime.now(dt.UTC)
        batches: list[tuple[list[dict[str, Any]], bool]] = []
        for first in range(0, events, per_post):
            batch = []
            for n in range(first, min(events, first + per_post)):
                kind = chooser.choice(KINDS)
                at = now - dt.timedelta(seconds=n % 86_400)
                if format == "postmark":
                    stamp = at.isoformat().replace("+00:00", "Z")
                    batch.append(_postmark(kind, n, run, stamp, id_base, deliveries[n]))
                else:
                    batch.append(_sendgrid(kind, n, run, int(at.timestamp()), deliveries[n]))
            batches.append((batch, False))
            if chooser.random() < duplicates:
                batches.append((batch, True))
        return batches

    def _gunicorn_pid(self) -> int:
        """The web server's master process: this process's child running gunicorn."""
        for pid in children(os.getpid()):
            with contextlib.suppress(OSError):
                if b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
        raise BenchmarkError("cannot find the web server's process.")

    def _post_all(
        self,
        url: str,
        format: str,
        posts: list[tuple[list[dict[str, Any]], bool]],
        clients: int,
        secret: str,
        server: int,
    ) -> dict[int, float]:
        """`clients` threads post in turn, each on a connection it keeps; the peak RSS of
        each web worker meanwhile."""
        todo: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        for batch, _ in posts:
            todo.put(json.dumps(batch[0] if format == "postmark" else batch).encode())
        host, port = url.removeprefix("http://").split(":")
        headers = {
            "Authorization": "Basic " + base64.b64encode(secret.encode()).decode(),
            "Content-Type": "application/json",
            "Host": "localhost",
            "X-Forwarded-Proto": "https",
        }
        path = f"/anymail/{format}/tracking/"
        errors: list[str] = []

        def client() -> None:
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            while not errors:
                try:
                    body = todo.get_nowait()
                except queue.Empty:
                    break
                for attempt in range(3):
                    try:
                        conn.request("POST", path, body, headers)
                        response = conn.getresponse()
                        answer = response.read()
                        break
                    except (ConnectionError, http.client.HTTPException):
                        # The server closed a kept-alive connection: post again on a new one.
                        conn.close()
                        conn = http.client.HTTPConnection(host, int(port), timeout=60)
                        if attempt == 2:
                            raise
                if response.status != 200:
                    errors.append(f"{response.status}: {answer[:300]!r}")
            conn.close()

        peak: dict[int, float] = {}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                for pid in children(server):
                    peak[pid] = max(peak.get(pid, 0.0), rss_mb(pid))
                done.wait(0.5)

        sampler = threading.Thread(target=sample)
        sampler.start()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            done.set()
            sampler.join()
        if errors:
            raise BenchmarkError(f"a post was refused: {errors[0]}")
        return peak
