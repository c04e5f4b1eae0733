"""The API-trigger benchmark: recipients triggered through the real web server, delivered
by real workers to the sinks.

    manage.py bench_triggers [--recipients 200000] [--per-call 1000] [--clients 8]
                             [--workers 2] [--rate 0]

Meant for PostgreSQL + Redis (`make services`). It generates the recipients' profiles
(``trig-…``, kept between runs), starts the sinks, a Celery worker with `--workers`
processes sending to them, and the web server as production runs it (gunicorn with
``config.gunicorn``, DEBUG off), makes a Live API-triggered campaign (email + SMS, reading
``{{ context.order_id }}``), then `--clients` threads POST ``/api/campaigns/{id}/trigger/``
with `--per-call` existing recipients each, a context apiece, until every recipient is
triggered, and waits for every delivery to finish. ``--rate R`` offers R recipients a second
(call k leaves at k × per-call / R seconds, or as soon as a client is free after that)
instead of sending each call as soon as a client is free: latency is then measured at a
known load, not at whatever backlog a closed loop builds on a saturated machine.

It prints one JSON line with
* ``recipients_per_s``: recipients accepted (202) per second, from the first request to
  the last answer;
* ``first_message_ms_p50`` / ``_p99``: per call, from the moment its request left the
  client (on this machine: its arrival, give or take the loopback) to the first provider
  call of its deliveries at a sink (the sinks record each delivery id and time);
* ``answer_ms_p50`` / ``_p99``: per call, from its request leaving the client to its 202
  answer (the part of the first message's wait spent in the web server);
* ``deliveries_per_s``: deliveries finished per second, from the first request to the
  last message at a sink;
* ``duplicates``: messages the sinks accepted twice for one delivery id (0).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from campaigns import services
from campaigns.choices import CampaignKind, CampaignStatus, CampaignType, DeliveryStatus
from campaigns.models import Campaign, Delivery, DeliveryCount, Trigger
from channels.choices import ChannelKind
from channels.models import MessagePreset
from config.processes import stop_process
from devtools.sinks import RunningSinks, count_duplicates_in, iter_records, running_sinks

from .data import PRESET_FIELDS, bench_user, profiles_ensure
from .errors import BenchmarkError
from .processes import BASE_DIR, _production_like_env, broker_purge, running_worker

CAMPAIGN_PREFIX = "bench-triggers "
PROFILE_PREFIX = "trig-"
CONTENT: dict[str, tuple[str, str]] = {
    ChannelKind.EMAIL: ("Order {{ context.order_id }}", "Hi {{ profile.external_id }}, thanks."),
    ChannelKind.SMS: ("", "Order {{ context.order_id }} ships {{ context.when }}"),
}
GUNICORN = BASE_DIR / ".venv" / "bin" / "gunicorn"


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_web_server(folder: Path, *, say: Callable[[str], None]) -> Iterator[str]:
    """gunicorn as the Procfile starts it (``config.gunicorn``), DEBUG off, until the block
    ends: its base URL."""
    port = _free_port()
    env = {**_production_like_env(), "SALVO_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    log = folder / "gunicorn.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [str(GUNICORN), "-c", "python:config.gunicorn"],
            cwd=BASE_DIR,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchmarkError(f"the web server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        say(f"web server ready: gunicorn on port {port} (pid {process.pid})")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process, grace_s=20, group=True)


@dataclass
class Call:
    """One trigger call: its recipients' numbers, when its request left, its trigger."""

    first: int
    count: int
    due_at: float = 0.0  # with an offered rate: when to send it (0: at once)
    sent_at: float = 0.0
    answered_at: float = 0.0
    trigger_id: int = 0


@dataclass
class TriggerBenchmark:
    """One benchmark run: ``run`` says its human lines through ``say`` and returns the
    summary (the JSON line's keys)."""

    say: Callable[[str], None]
    workers: int = 2
    timeout: float = 3600.0

    def run(
        self, *, recipients: int, per_call: int, clients: int, rate: float = 0.0
    ) -> dict[str, Any]:
        if connection.vendor != "postgresql" or not settings.CELERY_BROKER_URL.startswith("redis"):
            self.say(
                "warning: the targets are for PostgreSQL + Redis (eval $(make services-env)); "
                f"running on {connection.vendor} + {settings.CELERY_BROKER_URL.split(':')[0]}."
            )
        self._earlier_runs_stop()
        profiles_ensure(PROFILE_PREFIX, recipients, say=self.say)
        broker_purge()
        from rest_framework.authtoken.models import Token

        token, _ = Token.objects.get_or_create(user=bench_user())
        with tempfile.TemporaryDirectory(prefix="salvo-bench-triggers-") as name:
            folder = Path(name)
            record = folder / "sink.jsonl"
            with (
                running_sinks(record=record, content=False) as sink,
                running_worker(sink, self.workers, folder, email_api=True, say=self.say),
                running_web_server(folder, say=self.say) as url,
            ):
                campaign = self._campaign(sink)
                calls = [
                    Call(first, min(per_call, recipients - first))
                    for first in range(0, recipients, per_call)
                ]
                pace = f", {rate:,.0f} recipients/s offered" if rate else ", as fast as answered"
                self.say(
                    f"triggering {recipients:,} recipients in {len(calls)} calls of "
                    f"{per_call:,} by {clients} clients{pace}…"
                )
                started = time.time()
                if rate:
                    for call in calls:
                        call.due_at = started + call.first / rate
                self._trigger_all(url, token.key, campaign, calls, clients)
                accepted_in = max(call.answered_at for call in calls) - started
                self.say(f"every call answered in {accepted_in:.1f}s; waiting for delivery…")
                self._wait_until_sent(campaign)
            summary = self._summary(campaign, calls, record, started, accepted_in, recipients)
        return {"offered_recipients_per_s": rate or None, **summary}

    def _earlier_runs_stop(self) -> None:
        """Stop the campaigns earlier runs left Live, so their batches send nothing."""
        for campaign in Campaign.objects.filter(
            name__startswith=CAMPAIGN_PREFIX, status=CampaignStatus.LIVE
        ):
            services.campaign_stop(campaign=campaign, user=None, reason="a new benchmark run")

    def _campaign(self, sink: RunningSinks) -> Campaign:
        actions = []
        for channel, (subject, body) in CONTENT.items():
            preset, _ = MessagePreset.objects.update_or_create(
                name=f"bench {channel}", defaults={"channel": channel, **PRESET_FIELDS[channel]}
            )
            actions.append({"channel": channel, "preset": preset, "subject": subject, "body": body})
        campaign = services.campaign_create(
            user=None,
            name=f"{CAMPAIGN_PREFIX}{timezone.now().isoformat()}",
            type=CampaignType.TRANSACTIONAL,
            kind=CampaignKind.API_TRIGGERED,
            segment=None,
            actions=actions,
        )
        from campaigns.review import review_warning_codes

        services.campaign_activate(
            campaign=campaign, user=None, acknowledge=review_warning_codes(campaign=campaign)
        )
        deadline = time.monotonic() + 60
        while Campaign.objects.get(pk=campaign.pk).status != CampaignStatus.LIVE:
            if time.monotonic() > deadline:
                raise BenchmarkError("the campaign did not go Live within 60 s.")
            time.sleep(0.1)
        return campaign

    def _trigger_all(
        self, url: str, token: str, campaign: Campaign, calls: list[Call], clients: int
    ) -> None:
        """`clients` threads take the calls in turn, each request timed from its sending."""
        todo: queue.Queue[Call] = queue.Queue()
        for call in calls:
            todo.put(call)
        errors: list[str] = []
        endpoint = f"{url}/api/campaigns/{campaign.pk}/trigger/"
        headers = {
            "Authorization": f"Token {token}",
            "Content-Type": "application/json",
            "Host": "localhost",
            "X-Forwarded-Proto": "https",
        }
        run = os.getpid()

        def client() -> None:
            while not errors:
                try:
                    call = todo.get_nowait()
                except queue.Empty:
                    return
                time.sleep(max(0.0, call.due_at - time.time()))
                body = json.dumps(
                    {
                        "idempotency_key": f"bench-{run}-{call.first}",
                        "recipients": [
                            {
                                "external_id": f"{PROFILE_PREFIX}{i:08d}",
                                "context": {"order_id": f"A{i}", "when": "today"},
                            }
                            for i in range(call.first + 1, call.first + call.count + 1)
                        ],
                    }
                ).encode()
                request = urllib.request.Request(endpoint, body, headers, method="POST")
                call.sent_at = time.time()
                try:
                    with urllib.request.urlopen(request, timeout=120) as response:
                        answer = json.loads(response.read())
                        status = response.status
                except urllib.error.HTTPError as error:
                    errors.append(f"{error.code}: {error.read()[:500]!r}")
                    return
                call.answered_at = time.time()
                if status != 202:
                    errors.append(f"{status}: {answer}")
                    return
                call.trigger_id = int(answer["id"])

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise BenchmarkError(f"a trigger call was refused: {errors[0]}")

    def _wait_until_sent(self, campaign: Campaign) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            pending = DeliveryCount.objects.filter(
                execution__campaign=campaign, status=DeliveryStatus.PENDING
            ).aggregate(n=Sum("count"))["n"]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise BenchmarkError(f"{pending} deliveries still pending after the timeout.")
            time.sleep(0.5)

    def _summary(
        self,
        campaign: Campaign,
        calls: list[Call],
        record_file: Path,
        started: float,
        accepted_in: float,
        recipients: int,
    ) -> dict[str, Any]:
        execution_of = dict(
            Trigger.objects.filter(campaign=campaign).values_list("execution_id", "pk")
        )
        trigger_of = {
            str(pk): execution_of[execution]
            for pk, execution in Delivery.objects.filter(execution__campaign=campaign).values_list(
                "pk", "execution_id"
            )
        }
        first_at: dict[int, float] = {}
        last = started
        # The sink's record, streamed (a line per attempt: not all kept at once).
        for record in iter_records(record_file):
            trigger = trigger_of.get(str(record.get("delivery_id")))
            if trigger is None:
                continue
            first_at[trigger] = min(first_at.get(trigger, record["at"]), record["at"])
            last = max(last, record["at"])
        waits = [
            (first_at[c.trigger_id] - c.sent_at) * 1000 for c in calls if c.trigger_id in first_at
        ]
        answers = [(c.answered_at - c.sent_at) * 1000 for c in calls]
        finished = Delivery.objects.filter(execution__campaign=campaign).exclude(
            status=DeliveryStatus.PENDING
        )
        total = finished.count()
        duplicates = count_duplicates_in(record_file)
        self.say(
            f"{total:,} deliveries in {last - started:.1f}s; first message after "
            f"{statistics.median(waits) if waits else 0:.0f} ms (median of {len(waits)} calls)"
        )
        return {
            "recipients": recipients,
            "recipients_per_s": round(recipients / accepted_in, 1) if accepted_in > 0 else 0.0,
            "first_message_ms_p50": round(_percentile(waits, 0.5), 1),
            "first_message_ms_p99": round(_percentile(waits, 0.99), 1),
            "answer_ms_p50": round(_percentile(answers, 0.5), 1),
            "answer_ms_p99": round(_percentile(answers, 0.99), 1),
            "deliveries_per_s": round(total / (last - started), 1) if last > started else 0.0,
            "duplicates": duplicates,
        }
