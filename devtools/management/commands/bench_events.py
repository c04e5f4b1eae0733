"""``manage.py bench_events``: the event ingestion benchmark (devtools.bench.events says
what it measures); human lines first, the summary as one JSON line last."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from devtools.bench import BenchmarkError
from devtools.bench.events import FORMATS, EventBenchmark


class Command(BaseCommand):
    help = "Benchmark providers' tracking webhooks posted to the real web server."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--events", type=int, default=1_000_000)
        parser.add_argument("--clients", type=int, default=8, help="Concurrent clients.")
        parser.add_argument(
            "--format",
            choices=FORMATS,
            default="postmark",
            help="postmark: one event per POST; sendgrid: --per-post events per POST.",
        )
        parser.add_argument("--per-post", type=int, default=100, help="SendGrid's batch size.")
        parser.add_argument(
            "--duplicates", type=float, default=0.05, help="Share of posts sent twice."
        )
        parser.add_argument(
            "--attach",
            action="store_true",
            help="Attach each event to a sent delivery of a campaign of its own (written "
            "first), and time that campaign's report after the run (report_ms).",
        )

    def say(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def handle(self, *args: Any, **options: Any) -> None:
        if min(options["events"], options["clients"], options["per_post"]) < 1:
            raise CommandError("--events, --clients and --per-post must be at least 1.")
        if not 0 <= options["duplicates"] < 1:
            raise CommandError("--duplicates must be from 0 to below 1.")
        try:
            summary = EventBenchmark(say=self.say).run(
                events=options["events"],
                clients=options["clients"],
                format=options["format"],
                per_post=options["per_post"],
                duplicates=options["duplicates"],
                attach=options["attach"],
            )
        except BenchmarkError as error:
            raise CommandError(str(error)) from error
        self.say(json.dumps(summary))
