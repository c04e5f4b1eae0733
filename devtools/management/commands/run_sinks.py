from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from devtools import sinks


class Command(BaseCommand):
    help = (
        "Run the local SMTP and HTTP sinks that record every message sent to them "
        "(for development, tests and benchmarks); Ctrl-C stops them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sinks.add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        sinks.serve(options, announce=self.stdout)
