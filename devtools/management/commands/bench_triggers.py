"""``manage.py bench_triggers``: the API-trigger benchmark (devtools.bench.triggers says
what it measures); human lines first, the summary as one JSON line last."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from devtools.bench import BenchmarkError
from devtools.bench.triggers import TriggerBenchmark


class Command(BaseCommand):
    help = "Benchmark API-triggered campaigns through the web server and real workers."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--recipients", type=int, default=200_000)
        parser.add_argument("--per-call", type=int, default=1000, help="Recipients per call.")
        parser.add_argument("--clients", type=int, default=8, help="Concurrent clients.")
        parser.add_argument("--workers", type=int, default=2, help="Worker processes.")
        parser.add_argument(
            "--rate",
            type=float,
            default=0.0,
            help="Recipients offered per second (0: each call as soon as a client is free).",
        )
        parser.add_argument("--timeout", type=float, default=3600.0)

    def say(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def handle(self, *args: Any, **options: Any) -> None:
        if min(options["recipients"], options["per_call"], options["clients"]) < 1:
            raise CommandError("--recipients, --per-call and --clients must be at least 1.")
        if options["rate"] < 0:
            raise CommandError("--rate must be 0 (as fast as answered) or more.")
        if options["workers"] < 1:
            raise CommandError("--workers must be at least 1.")
        benchmark = TriggerBenchmark(
            say=self.say, workers=options["workers"], timeout=options["timeout"]
        )
        try:
            summary = benchmark.run(
                recipients=options["recipients"],
                per_call=options["per_call"],
                clients=options["clients"],
                rate=options["rate"],
            )
        except BenchmarkError as error:
            raise CommandError(str(error)) from error
        self.say(json.dumps(summary))
