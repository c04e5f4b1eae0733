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
anymail metadata (``salvo_delivery_id``), as Salvo's messages carry it; the ids name no
stored delivery (the events table keeps no constraint to it), so a run needs no campaign
of a million first. A share `--duplicates` of the events is posted a second time (a
provider's retry). Bounces, complaints and unsubscribes put their addresses on the
suppression list, as they would.

It prints one JSON line with
* ``format``: which webhook and how many events a post;
* ``events_per_s``: events posted (duplicates included) per second, from the first post to
  the last answer;
* ``duplicates_ignored``: events posted that were recorded already (it checks that it is
  the number of second posts, and that every other event was recorded once);
* ``web_peak_rss_mb``: the peak resident memory of any web worker process (sampled from
  /proc), and ``web_workers``.
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
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db import connection

from campaigns.models import DeliveryEvent

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


def _postmark(kind: str, n: int, run: str, at: str, id_base: int) -> dict[str, Any]:
    common = {
        "MessageStream": "outbound",
        "MessageID": f"bench-{run}-{n}",
        "Metadata": {"salvo_delivery_id": str(FIRST_DELIVERY_ID + n)},
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


def _sendgrid(kind: str, n: int, run: str, at: int) -> dict[str, Any]:
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
        "salvo_delivery_id": str(FIRST_DELIVERY_ID + n),
    }
    if kind in ("bounced", "soft_bounced"):
        event["type"] = "bounce" if kind == "bounced" else "blocked"
        event["reason"] = "550 5.1.1 no such user"
    if kind == "clicked":
        event["url"] = "https://example.com/offer"
    return event


@dataclass
class EventBenchmark:
    """One benchmark run: ``run`` says its human lines through ``say`` and returns the
    summary (the JSON line's keys)."""

    say: Callable[[str], None]

    def run(
        self, *, events: int, clients: int, format: str, per_post: int, duplicates: float
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
        posts = self._posts(events, format, per_post, duplicates, run)
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
        return {
            "format": described,
            "events": posted,
            "events_per_s": round(posted / took, 1),
            "duplicates_ignored": posted - recorded,
            "web_peak_rss_mb": round(max(peak.values(), default=0.0), 1),
            "web_workers": len(peak),
        }

    def _posts(
        self, events: int, format: str, per_post: int, duplicates: float, run: str
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
                    batch.append(
                        _postmark(kind, n, run, at.isoformat().replace("+00:00", "Z"), id_base)
                    )
                else:
                    batch.append(_sendgrid(kind, n, run, int(at.timestamp())))
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
