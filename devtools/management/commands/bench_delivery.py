"""``manage.py bench_delivery``: the delivery benchmark (devtools.bench says what it
measures); human lines first, the summary as one JSON line last."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from channels.choices import ChannelKind
from devtools.bench import BenchmarkError, DeliveryBenchmark
from devtools.bench.history import postgres_required
from devtools.sinks.running import ESP_BACKENDS


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
            help="Audience of the email-over-SMTP run, one personalised email each (default: "
            "100000, at most --profiles; 0 skips).",
        )
        parser.add_argument(
            "--esp",
            choices=[*ESP_BACKENDS, "none"],
            default="mailgun",
            help="The ESP whose emulated API a run with email through anymail sends to "
            "(none skips it).",
        )
        parser.add_argument(
            "--esp-profiles",
            type=int,
            default=None,
            help="Audience of the run with email through anymail, among the main run's profiles "
            "(default: --profiles; 0 skips).",
        )
        parser.add_argument("--timeout", type=float, default=3600.0)
        parser.add_argument(
            "--no-cap-runs",
            action="store_true",
            help="Skip the frequency caps' two marketing runs (without and with one rule).",
        )

        parser.add_argument(
            "--history-deliveries",
            type=int,
            default=0,
            help="Delivery rows of earlier campaigns (about one a day over a year) in the "
            "tables while the runs are measured, kept between runs (PostgreSQL only; 0 "
            "drops them).",
        )

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
            smtp_n = min(100_000, n)
        esp_n = n if options["esp_profiles"] is None else options["esp_profiles"]
        if not 0 <= esp_n <= n:
            # The run through anymail sends to the main run's profiles again.
            raise CommandError(f"--esp-profiles must be from 0 to --profiles ({n}), not {esp_n}.")
        if ChannelKind.EMAIL not in channels:
            smtp_n = esp_n = 0
        history = options["history_deliveries"]
        if history < 0:
            raise CommandError("--history-deliveries must be 0 or more.")
        if history and (refused := postgres_required("--history-deliveries")):
            raise CommandError(refused)
        if options["esp"] == "none":
            esp_n = 0
        benchmark = DeliveryBenchmark(
            say=self.say,
            workers=options["workers"],
            timeout=options["timeout"],
            cap_runs=not options["no_cap_runs"],
            esp=options["esp"],
            history_deliveries=history,
        )
        try:
            summary = benchmark.run(
                profiles=n,
                channels=channels,
                naive_profiles=naive_n,
                smtp_profiles=smtp_n,
                esp_profiles=esp_n,
            )
        except BenchmarkError as error:
            raise CommandError(str(error)) from error
        self.say(json.dumps(summary))
