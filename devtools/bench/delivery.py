"""The delivery benchmark's runs: the engine on the big audience, a small campaign whose
pages are timed beside the big one's, the naive baseline, email over SMTP, and the big
audience again with email through anymail to an emulated ESP; then one summary (see
``devtools.bench``)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

from campaigns import services
from campaigns.choices import CampaignStatus, CampaignType, DeliveryStatus
from campaigns.models import Campaign, Delivery, Execution
from campaigns.review import review_warning_codes
from channels.choices import ChannelKind
from devtools.naive import naive_execution_create
from devtools.sinks import (
    RunningSinks,
    count_duplicates_in,
    first_accepted_at,
    record_end,
    running_sinks,
)
from devtools.tasks import naive_delivery_task
from segments.models import Profile

from .caps import cap_cost, cap_ledger_delete
from .data import campaign_create, earlier_runs_delete, profiles_ensure
from .errors import BenchmarkError
from .history import history_ensure, history_figures
from .pages import pages_ms, static_files_collect
from .processes import (
    broker_purge,
    children,
    csv_export_measure,
    peak_rss_mb,
    rss_mb,
    running_worker,
)

# The small campaign whose pages are timed beside the big one's (the `_1k` keys).
SMALL_PROFILES = 1000


@dataclass
class DeliveryBenchmark:
    """One benchmark run: ``run`` says its human lines through ``say`` and returns the
    summary (the JSON line's keys)."""

    say: Callable[[str], None]
    workers: int = 2
    timeout: float = 3600.0
    # The frequency caps' runs (devtools.bench.caps): two marketing campaigns to the same
    # audience, without and with one cap rule.
    cap_runs: bool = True
    # The ESP whose emulated API the run with email through anymail sends to (a key of
    # devtools.sinks.running.ESP_BACKENDS).
    esp: str = "mailgun"
    # Delivery rows of earlier campaigns kept in the tables while the runs are measured
    # (devtools.bench.history; PostgreSQL only): 0 measures with an empty history.
    history_deliveries: int = 0

    def run(
        self,
        *,
        profiles: int,
        channels: list[str],
        naive_profiles: int,
        smtp_profiles: int,
        esp_profiles: int = 0,
    ) -> dict[str, Any]:
        n = profiles
        if connection.vendor != "postgresql" or not settings.CELERY_BROKER_URL.startswith("redis"):
            self.say(
                "warning: the targets are for PostgreSQL + Redis (eval $(make services-env)); "
                f"running on {connection.vendor} + {settings.CELERY_BROKER_URL.split(':')[0]}."
            )
        cap_ledger_delete()
        earlier_runs_delete()
        static_files_collect()
        started = time.monotonic()
        profiles_ensure("bench-", n, say=self.say)
        if self.history_deliveries or connection.vendor == "postgresql":
            history_ensure(self.history_deliveries, say=self.say)
        profiles_ensure("small-", SMALL_PROFILES, say=self.say)
        if naive_profiles:
            profiles_ensure("naive-", naive_profiles, say=self.say)
        if smtp_profiles:
            profiles_ensure("smtp-", smtp_profiles, say=self.say)
        self.say(f"profiles ready in {time.monotonic() - started:.1f}s")
        broker_purge()
        with tempfile.TemporaryDirectory(prefix="salvo-bench-") as folder:
            record = Path(folder) / "sink.jsonl"
            with (
                running_sinks(record=record, content=False) as sink,
                self._worker(sink, Path(folder), email_api=True) as worker,
            ):
                big, result = self._run_engine("bench-", n, channels, sink, worker)
                capped: dict[str, float] = {}
                if self.cap_runs:

                    def marketing_run(label: str) -> tuple[Campaign, dict[str, float]]:
                        self.say(f"frequency caps: {label}")
                        return self._run_engine("bench-", n, channels, sink, worker, marketing=True)

                    capped = cap_cost(marketing_run, self.say)
                small = self._run_small(channels, sink, worker)
                naive = self._run_naive(naive_profiles, channels, sink) if naive_profiles else 0.0
                sink_peak = peak_rss_mb(sink.pid)
            # With the worker stopped, both campaigns' rows in the tables.
            pages = pages_ms({"": big, "_1k": small}, say=self.say)
            smtp: dict[str, float] = {}
            smtp_chunking: dict[str, Any] = {}
            if smtp_profiles:
                with (
                    running_sinks(record=record, content=False) as sink,
                    self._worker(sink, Path(folder), email_api=False) as worker,
                ):
                    smtp = self._run_smtp(smtp_profiles, sink, worker)
                    sink_peak = max(sink_peak, peak_rss_mb(sink.pid))
                smtp_chunking = self._run_smtp_chunking(smtp_profiles, record, Path(folder))
            through_esp: dict[str, float] = {}
            if esp_profiles:
                with (
                    running_sinks(record=record, content=False) as sink,
                    self._worker(sink, Path(folder), email_api=False, esp=self.esp) as worker,
                ):
                    self.say(f"email through anymail to the emulated {self.esp} API:")
                    _, through_esp = self._run_engine(
                        "bench-", esp_profiles, channels, sink, worker, measure_export=False
                    )
                    sink_peak = max(sink_peak, peak_rss_mb(sink.pid))
            # Streamed: the record has a line per attempt of every run (tens of millions).
            duplicates = count_duplicates_in(record)
        bench_peak = peak_rss_mb(os.getpid())
        self.say(f"naive design: {naive:.1f} deliveries/s on {naive_profiles} profiles")
        smtp_figures: dict[str, Any] = dict.fromkeys(
            (
                "smtp_messages_per_s",
                "smtp_first_message_s",
                "smtp_duplicates",
                "smtp_chunking_messages_per_s",
                "smtp_chunking_first_message_s",
            )
        )
        if smtp:
            self.say(
                f"email over SMTP to the sink: {smtp['messages_per_s']:.0f} messages/s "
                f"({smtp['messages']:.0f} accepted of {smtp_profiles} profiles, one personalised "
                f"email each; first message {smtp['first_message_s']:.3f}s after Live; "
                f"duplicates {smtp['duplicates']:.0f})"
            )
            smtp_figures = {
                "smtp_messages_per_s": round(smtp["messages_per_s"], 1),
                "smtp_first_message_s": round(smtp["first_message_s"], 3),
                "smtp_duplicates": int(smtp["duplicates"]),
            }
        if smtp_chunking:
            smtp_figures["smtp_duplicates"] += smtp_chunking.pop("duplicates")
            smtp_figures |= smtp_chunking
        esp_figures: dict[str, Any] = {}
        if through_esp:
            self.say(
                f"email through anymail ({self.esp}): {through_esp['deliveries_per_s']:.0f} "
                f"deliveries/s on {esp_profiles} profiles × {len(channels)} channels, beside "
                f"{result['deliveries_per_s']:.0f}/s through the generic HTTP batch API "
                f"(first message {through_esp['first_message_s']:.3f}s)"
            )
            esp_figures = {
                "esp": self.esp,
                "esp_deliveries_per_s": round(through_esp["deliveries_per_s"], 1),
                "esp_worker_peak_rss_mb": round(through_esp["rss_mb"], 1),
            }
        self.say(f"duplicates at the sinks: {duplicates}")
        self.say(
            f"peak RSS: this benchmark's process {bench_peak:.0f} MB, "
            f"the sink process {sink_peak:.0f} MB"
        )
        return {
            "profiles": n,
            "channels": channels,
            "deliveries_per_s": round(result["deliveries_per_s"], 1),
            "first_message_s": round(result["first_message_s"], 3),
            "worker_peak_rss_mb": round(result["rss_mb"], 1),
            "sink_peak_rss_mb": round(sink_peak, 1),
            "bench_peak_rss_mb": round(bench_peak, 1),
            "naive_deliveries_per_s": round(naive, 1),
            "naive_ratio": round(result["deliveries_per_s"] / naive, 1) if naive else None,
            "duplicates": duplicates,
            **{key: round(ms, 1) for key, ms in pages.items()},
            "export_rows_per_s": round(result["export_rows_per_s"], 1),
            "export_peak_rss_mb": round(result["export_rss_mb"], 1),
            **capped,
            **esp_figures,
            **smtp_figures,
            **history_figures(self.history_deliveries, say=self.say),
        }

    def _worker(
        self, sink: RunningSinks, folder: Path, *, email_api: bool, esp: str = ""
    ) -> AbstractContextManager[int]:
        return running_worker(
            sink, self.workers, folder, email_api=email_api, esp=esp, say=self.say
        )

    def _run_engine(
        self,
        prefix: str,
        n: int,
        channels: list[str],
        sink: RunningSinks,
        worker: int,
        *,
        marketing: bool = False,
        measure_export: bool = True,
    ) -> tuple[Campaign, dict[str, float]]:
        """A campaign to the n prefix… profiles, activated until Completed, with its rates;
        a transactional one, whose CSV export is measured too, unless `marketing` (the
        frequency caps' runs) or not `measure_export` (the run through an ESP): only timed."""
        kind = CampaignType.MARKETING if marketing else CampaignType.TRANSACTIONAL
        campaign = campaign_create(prefix, n, channels, sink, campaign_type=kind)
        # This run's lines of the sink's record begin here (earlier runs' are not read).
        start = record_end(sink.record)
        self.say(f"activating a campaign to {n} profiles × {len(channels)} channels…")
        activated_at, rss = self._activate_until_completed(campaign, worker)
        completed = campaign.transitions.get(name="complete").at.timestamp()
        live = campaign.transitions.filter(target=CampaignStatus.LIVE).get().at.timestamp()
        first = first_accepted_at(sink.record, start) or completed
        total = Delivery.objects.filter(execution__campaign=campaign).count()
        elapsed = completed - activated_at
        result = {
            "elapsed_s": elapsed,
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
        if marketing or not measure_export:
            return campaign, result
        export = csv_export_measure(campaign, Path(tempfile.gettempdir()))
        result["export_rows_per_s"], result["export_rss_mb"] = export
        self.say(
            f"CSV export of its {total} deliveries: {export[0]:.0f} rows/s, "
            f"web process peak RSS {export[1]:.0f} MB"
        )
        return campaign, result

    def _run_smtp(self, n: int, sink: RunningSinks, worker: int) -> dict[str, float]:
        """One personalised email action to the n smtp… profiles, over SMTP to the sink:
        the messages it accepted per second from activation to Completed (its own count,
        the sink being new for this run), the first message's wait, its duplicates."""
        self.say("email over SMTP (one email action):")
        _, result = self._run_engine(
            "smtp-", n, [ChannelKind.EMAIL], sink, worker, measure_export=False
        )
        counters = sink.smtp_counters()
        elapsed = result["elapsed_s"]
        return {
            "messages": counters["messages"],
            "messages_per_s": counters["messages"] / elapsed if elapsed > 0 else 0.0,
            "first_message_s": result["first_message_s"],
            "duplicates": counters["duplicates"],
        }

    def _run_smtp_chunking(self, n: int, record: Path, folder: Path) -> dict[str, Any]:
        """The SMTP run again, the sink advertising CHUNKING too (the client then sends
        pipelined BDAT): its figures, under their own keys, and its duplicates."""
        with (
            running_sinks(record=record, content=False, smtp_chunking=True) as sink,
            self._worker(sink, folder, email_api=False) as worker,
        ):
            self.say("email over SMTP with CHUNKING (BDAT):")
            figures = self._run_smtp(n, sink, worker)
        self.say(
            f"email over SMTP with CHUNKING: {figures['messages_per_s']:.0f} messages/s "
            f"({figures['messages']:.0f} accepted of {n}; first message "
            f"{figures['first_message_s']:.3f}s after Live; duplicates "
            f"{figures['duplicates']:.0f})"
        )
        return {
            "smtp_chunking_messages_per_s": round(figures["messages_per_s"], 1),
            "smtp_chunking_first_message_s": round(figures["first_message_s"], 3),
            "duplicates": int(figures["duplicates"]),
        }

    def _run_small(self, channels: list[str], sink: RunningSinks, worker: int) -> Campaign:
        """A completed campaign to SMALL_PROFILES profiles, whose pages are timed."""
        campaign = campaign_create("small-", SMALL_PROFILES, channels, sink)
        self.say(
            f"activating a campaign to {SMALL_PROFILES} profiles × {len(channels)} channels "
            "(to time its pages)…"
        )
        self._activate_until_completed(campaign, worker)
        return campaign

    def _activate_until_completed(
        self, campaign: Campaign, worker: int
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
        deadline = time.monotonic() + self.timeout
        while True:
            for pid in children(worker):
                rss[pid] = max(rss.get(pid, 0.0), rss_mb(pid))
            status = Campaign.objects.values_list("status", flat=True).get(pk=campaign.pk)
            if status == CampaignStatus.COMPLETED:
                break
            if status not in (CampaignStatus.ACTIVATING, CampaignStatus.LIVE):
                raise BenchmarkError(f"the campaign ended {status}")
            if time.monotonic() > deadline:
                raise BenchmarkError("the campaign did not complete in time")
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

    def _run_naive(self, n: int, channels: list[str], sink: RunningSinks) -> float:
        """The naive design on n profiles (devtools.naive): one task per recipient and
        channel, queued at once; deliveries per second until every row is sent."""
        campaign = campaign_create("naive-", n, channels, sink)
        execution = naive_execution_create(campaign=campaign)
        profile_ids = list(
            Profile.objects.filter(external_id__startswith="naive-")
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        actions = list(execution.version.actions.values_list("pk", flat=True))
        self.say(f"naive design: {len(profile_ids)} profiles × {len(actions)} channels…")
        started = time.time()
        for profile_id in profile_ids:
            for action_id in actions:
                naive_delivery_task.apply_async(
                    (execution.pk, action_id, profile_id), queue=settings.SALVO_DELIVERY_QUEUE
                )
        expected = len(profile_ids) * len(actions)
        deadline = time.monotonic() + self.timeout
        while True:
            done = Delivery.objects.filter(execution=execution, status=DeliveryStatus.SENT).count()
            if done >= expected:
                break
            if time.monotonic() > deadline:
                raise BenchmarkError(f"the naive run did not finish in time ({done}/{expected})")
            time.sleep(0.2)
        elapsed = time.time() - started
        return expected / elapsed
