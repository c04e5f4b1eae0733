"""Benchmark the delivery engine end to end, against the naive design in the same run.

    manage.py bench_delivery --profiles 1000000 --channels email,sms [--workers 2]
                             [--naive-profiles 5000] [--smtp-profiles 10000]

Meant for PostgreSQL + Redis (`make services`); it runs on the embedded default too, slowly.
It generates the profiles (kept between runs), starts the local sink servers and a worker
with N processes, activates a campaign and measures, from activation to Completed:
deliveries per second, time from Live to the first message at a sink, and the peak RSS of
each worker process (sampled from /proc). Then, on a smaller audience, the naive design —
one Celery task per recipient that renders, sends and saves one row — as a ratio. It counts
messages accepted twice for one delivery id at the sinks.

Email goes through the HTTP batch email API (``channels.providers.email_api``), as a
high-volume sender's would; a separate run over SMTP on a smaller audience is printed as a
human line (not in the JSON), so that both figures are known.

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
`export_rows_per_s`, `export_peak_rss_mb`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.db.models import NOT_PROVIDED
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from campaigns import services
from campaigns.choices import CampaignStatus, CampaignType, DeliveryStatus, ExecutionStatus
from campaigns.models import Campaign, Delivery, DeliveryCount, DeliveryTimeline, Execution
from campaigns.review import review_warning_codes
from channels.choices import ChannelKind
from channels.models import MessagePreset
from config.processes import stop_process
from devtools.sinks import RunningSinks, count_duplicates, read_records, running_sinks
from segments.choices import SegmentKind
from segments.models import Profile, Segment

BASE_DIR = Path(settings.BASE_DIR)
# Requests of each page timed after a run (the median is printed).
PAGE_SAMPLES = 7
# The small campaign whose pages are timed beside the big one's (the `_1k` keys).
SMALL_PROFILES = 1000
CONTENT: dict[str, tuple[str, str]] = {
    ChannelKind.EMAIL: (
        "Hello {{ profile.first_name|default:'there' }}",
        "Hi {{ profile.external_id }}, news for you.",
    ),
    ChannelKind.SMS: ("", "Hi {{ profile.first_name|default:'there' }}: news at example.com"),
    ChannelKind.PUSH: ("News", "Hi {{ profile.first_name|default:'there' }}"),
    ChannelKind.WEBHOOK: ("", "{{ profile.external_id }}"),
}
PRESET_FIELDS: dict[str, dict[str, str]] = {
    ChannelKind.EMAIL: {"from_email": "bench@example.com", "from_name": "Bench"},
    ChannelKind.SMS: {"sms_sender_id": "BENCH"},
    ChannelKind.PUSH: {"push_app_id": "com.example.bench"},
    ChannelKind.WEBHOOK: {},
}


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


class Command(BaseCommand):
    help = "Benchmark delivery end to end (and the naive one-task-per-recipient design)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--profiles", type=int, default=100_000)
        parser.add_argument("--channels", default="email,sms")
        parser.add_argument("--workers", type=int, default=2, help="Worker processes.")
        parser.add_argument(
            "--naive-profiles",
            type=int,
            default=None,
            help="Audience of the naive run (default: 1%% of --profiles, 500 to 5000; 0 skips).",
        )
        parser.add_argument(
            "--smtp-profiles",
            type=int,
            default=None,
            help="Audience of the email-over-SMTP run (default: 1%% of --profiles, 1000 to "
            "10000; 0 skips).",
        )
        parser.add_argument("--timeout", type=float, default=3600.0)

    def say(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def handle(self, *args: Any, **options: Any) -> None:
        n = options["profiles"]
        channels = [c.strip() for c in options["channels"].split(",") if c.strip()]
        unknown = sorted(set(channels) - set(ChannelKind.values))
        if unknown or not channels:
            raise CommandError(
                f"--channels: unknown {', '.join(unknown) or 'none'}; "
                f"choose from {', '.join(ChannelKind.values)}."
            )
        if n < 1 or options["workers"] < 1:
            raise CommandError("--profiles and --workers must be at least 1.")
        naive_n = options["naive_profiles"]
        if naive_n is None:
            naive_n = max(500, min(5000, n // 100))
        smtp_n = options["smtp_profiles"]
        if smtp_n is None:
            smtp_n = max(1000, min(10_000, n // 100))
        if ChannelKind.EMAIL not in channels:
            smtp_n = 0
        if connection.vendor != "postgresql" or not settings.CELERY_BROKER_URL.startswith("redis"):
            self.say(
                "warning: the targets are for PostgreSQL + Redis (eval $(make services-env)); "
                f"running on {connection.vendor} + {settings.CELERY_BROKER_URL.split(':')[0]}."
            )
        self._cleanup()
        started = time.monotonic()
        self._ensure_profiles("bench-", n)
        self._ensure_profiles("small-", SMALL_PROFILES)
        if naive_n:
            self._ensure_profiles("naive-", naive_n)
        if smtp_n:
            self._ensure_profiles("smtp-", smtp_n)
        self.say(f"profiles ready in {time.monotonic() - started:.1f}s")
        self._purge_broker()
        with tempfile.TemporaryDirectory(prefix="salvo-bench-") as folder:
            record = Path(folder) / "sink.jsonl"
            with (
                running_sinks(record=record, content=False) as sink,
                self._worker(sink, options["workers"], Path(folder), email_api=True) as worker,
            ):
                big, result = self._run_engine(
                    "bench-", n, channels, sink, worker, options["timeout"]
                )
                small = self._run_small(channels, sink, worker, options["timeout"])
                naive = (
                    self._run_naive(naive_n, channels, sink, worker, options["timeout"])
                    if naive_n
                    else 0.0
                )
            # With the worker stopped, both campaigns' rows in the tables.
            pages = self._page_ms({"": big, "_1k": small})
            smtp: dict[str, float] = {}
            if smtp_n:
                with (
                    running_sinks(record=record, content=False) as sink,
                    self._worker(sink, options["workers"], Path(folder), email_api=False) as worker,
                ):
                    _, smtp = self._run_engine(
                        "smtp-", smtp_n, channels, sink, worker, options["timeout"]
                    )
            duplicates = count_duplicates(read_records(record))
        summary = {
            "profiles": n,
            "channels": channels,
            "deliveries_per_s": round(result["deliveries_per_s"], 1),
            "first_message_s": round(result["first_message_s"], 3),
            "worker_peak_rss_mb": round(result["rss_mb"], 1),
            "naive_deliveries_per_s": round(naive, 1),
            "naive_ratio": round(result["deliveries_per_s"] / naive, 1) if naive else None,
            "duplicates": duplicates,
            **{key: round(ms, 1) for key, ms in pages.items()},
            "export_rows_per_s": round(result["export_rows_per_s"], 1),
            "export_peak_rss_mb": round(result["export_rss_mb"], 1),
        }
        self.say(f"naive design: {naive:.1f} deliveries/s on {naive_n} profiles")
        if smtp:
            self.say(
                f"email over SMTP instead of the HTTP batch API: "
                f"{smtp['deliveries_per_s']:.0f} deliveries/s on {smtp_n} profiles × "
                f"{len(channels)} channels (first message {smtp['first_message_s']:.3f}s)"
            )
        self.say(f"duplicates at the sinks: {duplicates}")
        self.say(json.dumps(summary))

    # --- data ---------------------------------------------------------------------------

    def _cleanup(self) -> None:
        """Drop the delivery rows of earlier runs (the campaigns stay, Completed)."""
        earlier = Execution.objects.filter(campaign__name__startswith="bench-delivery ")
        Delivery.objects.filter(execution__in=earlier).delete()
        DeliveryCount.objects.filter(execution__in=earlier).delete()
        DeliveryTimeline.objects.filter(execution__in=earlier).delete()

    def _ensure_profiles(self, prefix: str, n: int) -> None:
        """Exactly n profiles named prefix0000001…, generated inside the database."""
        width = 8
        Profile.objects.filter(external_id__startswith=prefix).filter(
            external_id__gt=f"{prefix}{n:0{width}d}"
        ).delete()
        have = Profile.objects.filter(external_id__startswith=prefix).count()
        if have >= n:
            return
        self.say(f"generating {n - have} {prefix}profiles…")
        known = {
            "external_id": f"'{prefix}' || {self._pad('g', width)}",
            "email": f"'{prefix}' || g || '@example.com'",
            "phone": f"'+336' || {self._pad('g', 8)}",
            "push_token": f"'token-{prefix}' || g",
            "locale": "'en'",
            "time_zone": "'Europe/Paris'",
            "attributes": '\'{"first_name": "Ada", "country": "FR"}\'',
            "created_at": "CURRENT_TIMESTAMP",
            "updated_at": "CURRENT_TIMESTAMP",
        }
        columns, expressions = [], []
        for field in Profile._meta.concrete_fields:
            if field.primary_key:
                continue
            if field.name in known:
                expression = known[field.name]
            elif field.null:
                expression = "NULL"
            elif field.default is not NOT_PROVIDED and not callable(field.default):
                value = field.default
                expression = (
                    ("TRUE" if value else "FALSE")
                    if isinstance(value, bool)
                    else repr(str(value)).replace('"', "'")
                )
            else:
                expression = "''"
            columns.append(connection.ops.quote_name(field.column))
            expressions.append(expression)
        table = connection.ops.quote_name(Profile._meta.db_table)
        select = f"SELECT {', '.join(expressions)}"
        if connection.vendor == "postgresql":
            source = "FROM generate_series(%s, %s) AS g"
        else:
            source = (
                "FROM (WITH RECURSIVE s(g) AS (SELECT %s UNION ALL SELECT g + 1 FROM s "
                "WHERE g < %s) SELECT g FROM s) WHERE true"
            )
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) {select} {source} "
            "ON CONFLICT (external_id) DO NOTHING"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [1, n])
            if connection.vendor == "postgresql":
                cursor.execute(f"ANALYZE {table}")

    @staticmethod
    def _pad(expression: str, width: int) -> str:
        if connection.vendor == "postgresql":
            return f"lpad({expression}::text, {width}, '0')"
        return f"substr('{'0' * width}' || {expression}, -{width}, {width})"

    def _segment(self, prefix: str, n: int) -> Segment:
        segment, _ = Segment.objects.update_or_create(
            name=f"bench {prefix}{n}",
            defaults={
                "kind": SegmentKind.RULES,
                "rules": {"all": [{"field": "external_id", "op": "startswith", "value": prefix}]},
            },
        )
        return segment

    def _campaign(self, prefix: str, n: int, channels: list[str], sink: RunningSinks) -> Campaign:
        actions = []
        for channel in channels:
            fields = dict(PRESET_FIELDS[channel])
            if channel == ChannelKind.WEBHOOK:
                fields["webhook_url"] = sink.webhook_url
            preset, _ = MessagePreset.objects.update_or_create(
                name=f"bench {channel}", defaults={"channel": channel, **fields}
            )
            subject, body = CONTENT[channel]
            actions.append({"channel": channel, "preset": preset, "subject": subject, "body": body})
        return services.campaign_create(
            user=None,
            name=f"bench-delivery {prefix}{n} {timezone.now().isoformat()}",
            type=CampaignType.TRANSACTIONAL,
            segment=self._segment(prefix, n),
            actions=actions,
        )

    # --- processes ----------------------------------------------------------------------

    def _purge_broker(self) -> None:
        from config.celery import app

        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(app.conf.task_default_queue)  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def _worker(
        self, sink: RunningSinks, processes: int, folder: Path, *, email_api: bool
    ) -> Iterator[int]:
        log = folder / f"worker-{'api' if email_api else 'smtp'}.log"
        env = {
            **os.environ,
            **sink.provider_env(email_api=email_api),
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "PYTHONUNBUFFERED": "1",
            # Measure workers as production runs them: DEBUG off (no query log kept).
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50),
        }
        command = [
            sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "prefork",
            "--concurrency", str(processes), "--without-gossip", "--without-mingle",
            "--without-heartbeat", "--loglevel", "info", "--hostname", f"bench{os.getpid()}@%h",
        ]  # fmt: skip
        with log.open("ab") as output:
            process = subprocess.Popen(
                command, cwd=BASE_DIR, env=env, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while "ready." not in log.read_text(errors="replace"):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise CommandError(f"the worker did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
            self.say(f"worker ready: {processes} processes (pid {process.pid})")
            yield process.pid
        finally:
            stop_process(process, grace_s=20, group=True)

    # --- runs ---------------------------------------------------------------------------

    def _run_engine(
        self,
        prefix: str,
        n: int,
        channels: list[str],
        sink: RunningSinks,
        worker: int,
        timeout: float,
    ) -> tuple[Campaign, dict[str, float]]:
        campaign = self._campaign(prefix, n, channels, sink)
        already = len(read_records(sink.record))
        self.say(f"activating a campaign to {n} profiles × {len(channels)} channels…")
        activated_at, rss = self._activate_until_completed(campaign, worker, timeout)
        completed = campaign.transitions.get(name="complete").at.timestamp()
        live = campaign.transitions.filter(target=CampaignStatus.LIVE).get().at.timestamp()
        records = read_records(sink.record)[already:]
        first = min((r["at"] for r in records if r["accepted"]), default=completed)
        total = Delivery.objects.filter(execution__campaign=campaign).count()
        elapsed = completed - activated_at
        result = {
            "deliveries_per_s": total / elapsed if elapsed > 0 else 0.0,
            "first_message_s": first - live,
            "rss_mb": max(rss.values(), default=0.0),
        }
        self.say(
            f"engine ({prefix}): {total} deliveries in {elapsed:.1f}s = "
            f"{result['deliveries_per_s']:.0f}/s; "
            f"Live after {live - activated_at:.2f}s, first message "
            f"{result['first_message_s']:.3f}s after Live; "
            f"peak RSS per worker process {result['rss_mb']:.0f} MB "
            f"({', '.join(f'{v:.0f}' for v in rss.values())})"
        )
        export = self._export(campaign, Path(tempfile.gettempdir()))
        result["export_rows_per_s"], result["export_rss_mb"] = export
        self.say(
            f"CSV export of its {total} deliveries: {export[0]:.0f} rows/s, "
            f"web process peak RSS {export[1]:.0f} MB"
        )
        return campaign, result

    def _run_small(
        self, channels: list[str], sink: RunningSinks, worker: int, timeout: float
    ) -> Campaign:
        """A completed campaign to SMALL_PROFILES profiles, whose pages are timed."""
        campaign = self._campaign("small-", SMALL_PROFILES, channels, sink)
        self.say(
            f"activating a campaign to {SMALL_PROFILES} profiles × {len(channels)} channels "
            "(to time its pages)…"
        )
        self._activate_until_completed(campaign, worker, timeout)
        return campaign

    def _activate_until_completed(
        self, campaign: Campaign, worker: int, timeout: float
    ) -> tuple[float, dict[int, float]]:
        """Activate the campaign and wait for Completed: (the time of the activation, the
        peak RSS in MB of each of the worker's processes meanwhile)."""
        # A benchmark's synthetic campaign: its warnings (no unsubscribe link…) are known;
        # reviewing it (a count of the audience) is not part of the time measured.
        acknowledge = review_warning_codes(campaign=campaign)
        activated_at = time.time()
        services.campaign_activate(campaign=campaign, user=None, acknowledge=acknowledge)
        rss: dict[int, float] = {}
        last_report = time.monotonic()
        deadline = time.monotonic() + timeout
        while True:
            for pid in _children(worker):
                rss[pid] = max(rss.get(pid, 0.0), _rss_mb(pid))
            status = Campaign.objects.values_list("status", flat=True).get(pk=campaign.pk)
            if status == CampaignStatus.COMPLETED:
                break
            if status not in (CampaignStatus.ACTIVATING, CampaignStatus.LIVE):
                raise CommandError(f"the campaign ended {status}")
            if time.monotonic() > deadline:
                raise CommandError("the campaign did not complete in time")
            if time.monotonic() - last_report > 10:
                # The execution's cursors, not a count: counting millions of rows every few
                # seconds would take CPU from what is measured.
                cursor = Execution.objects.filter(campaign=campaign).values_list(
                    "dispatched_through", "planned_through", "audience_max_profile_id"
                )
                dispatched, planned, top = next(iter(cursor), (0, 0, 0))
                self.say(
                    f"  … after {time.time() - activated_at:.0f}s: dispatched through profile "
                    f"{dispatched}, planned through {planned} of {top}"
                )
                last_report = time.monotonic()
            time.sleep(0.2)
        return activated_at, rss

    def _bench_user(self) -> Any:
        from django.contrib.auth import get_user_model

        user, _ = get_user_model().objects.get_or_create(
            username="bench-report", defaults={"is_superuser": True, "is_staff": True}
        )
        return user

    def _export(self, campaign: Campaign, folder: Path) -> tuple[float, float]:
        """Stream the campaign's deliveries as CSV from a web process of its own, as a
        superuser with a token: (rows per second, the process's peak RSS in MB)."""
        from rest_framework.authtoken.models import Token

        token, _ = Token.objects.get_or_create(user=self._bench_user())
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50),
        }
        command = [
            sys.executable, "manage.py", "runserver", "--noreload", "--nothreading",
            f"127.0.0.1:{port}",
        ]  # fmt: skip
        log = folder / f"salvo-bench-web-{os.getpid()}.log"
        with log.open("ab") as output:
            server = subprocess.Popen(
                command, cwd=BASE_DIR, env=env, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        peak = 0.0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _rss_mb(server.pid))
                time.sleep(0.05)

        try:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                if server.poll() is not None or time.monotonic() > deadline:
                    raise CommandError(f"the web process did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/campaigns/{campaign.pk}/deliveries/?format=csv",
                headers={"Authorization": f"Token {token.key}", "Host": "localhost"},
            )
            lines = 0
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=600) as response:
                while block := response.read(1 << 20):
                    lines += block.count(b"\n")
            elapsed = time.perf_counter() - started
            done.set()
            sampler.join()
        finally:
            done.set()
            stop_process(server, grace_s=20)
        rows = lines - 1  # the header
        return rows / elapsed, peak

    def _page_ms(self, campaigns: dict[str, Campaign]) -> dict[str, float]:
        """The server time, in milliseconds, of each campaign's report, admin change page
        and that page's refresh: ``report_ms``, ``admin_page_ms`` and ``admin_report_ms``,
        each + suffix, for each suffix → campaign; each the median of PAGE_SAMPLES requests,
        printed as a line. The requests go round the pages in turn, so that all of them meet
        the same moments of the machine."""
        hosts = [h for h in settings.ALLOWED_HOSTS if h and h != "*" and not h.startswith(".")]
        client = Client(HTTP_HOST=hosts[0] if hosts else "localhost")
        client.force_login(self._bench_user())
        pages = {}
        for suffix, campaign in campaigns.items():
            pages[f"report_ms{suffix}"] = (campaign, f"/api/campaigns/{campaign.pk}/report/")
            pages[f"admin_page_ms{suffix}"] = (
                campaign,
                reverse("admin:campaigns_campaign_change", args=[campaign.pk]),
            )
            pages[f"admin_report_ms{suffix}"] = (
                campaign,
                reverse("admin:campaigns_campaign_report", args=[campaign.pk]),
            )
        samples: dict[str, list[float]] = {key: [] for key in pages}
        for _ in range(PAGE_SAMPLES):
            for key, (_, url) in pages.items():
                samples[key].append(self._get_ms(client, url))
        medians = {key: statistics.median(times) for key, times in samples.items()}
        totals = {
            campaign.pk: Delivery.objects.filter(execution__campaign=campaign).count()
            for campaign in campaigns.values()
        }
        for key, (campaign, url) in pages.items():
            self.say(
                f"{key} = {medians[key]:.1f} ms: GET {url} ({totals[campaign.pk]} deliveries), "
                f"median of {PAGE_SAMPLES}"
            )
        return medians

    def _get_ms(self, client: Client, url: str) -> float:
        """The server time of one GET of url in milliseconds, through Django's request
        handler in this process."""
        started = time.perf_counter()
        response = client.get(url, secure=settings.SECURE_SSL_REDIRECT)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise CommandError(f"{url} answered {response.status_code}")
        return elapsed * 1000

    def _run_naive(
        self, n: int, channels: list[str], sink: RunningSinks, worker: int, timeout: float
    ) -> float:
        from devtools.tasks import naive_delivery_task

        campaign = self._campaign("naive-", n, channels, sink)
        version = campaign.draft_version
        assert version is not None
        execution = Execution.objects.create(
            campaign=campaign,
            version=version,
            planning_done=True,
            status=ExecutionStatus.COMPLETED,
        )
        profile_ids = list(
            Profile.objects.filter(external_id__startswith="naive-")
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        actions = list(version.actions.values_list("pk", flat=True))
        self.say(f"naive design: {len(profile_ids)} profiles × {len(actions)} channels…")
        started = time.time()
        for profile_id in profile_ids:
            for action_id in actions:
                naive_delivery_task.delay(execution.pk, action_id, profile_id)
        expected = len(profile_ids) * len(actions)
        deadline = time.monotonic() + timeout
        while True:
            done = Delivery.objects.filter(execution=execution, status=DeliveryStatus.SENT).count()
            if done >= expected:
                break
            if time.monotonic() > deadline:
                raise CommandError(f"the naive run did not finish in time ({done}/{expected})")
            time.sleep(0.2)
        elapsed = time.time() - started
        return expected / elapsed
