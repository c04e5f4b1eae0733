"""`manage.py import_profiles FILE [--format csv|jsonl] [--segment NAME]`."""

import gc
import os
import sys
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from segments import services
from segments.choices import ImportFormat


class Command(BaseCommand):
    # A data command run from scripts and cron: the system checks (URLs, admin, models)
    # are for deployments, and loading what they inspect took a third of a second per run.
    requires_system_checks: list[str] = []
    help = (
        "Upsert profiles by external_id from a CSV or JSON-lines file. Good rows are kept and "
        "bad rows listed with their line numbers; an unreadable file imports nothing and "
        "exits non-zero."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="Path of the CSV or JSON-lines file ('-' for stdin).")
        parser.add_argument("--format", choices=ImportFormat.values, help="Default: guessed.")
        parser.add_argument(
            "--segment", default="", help="Also add the profiles to this static segment."
        )
        parser.add_argument("--no-progress", action="store_true", help="No progress bar on stderr.")

    def handle(self, *args: Any, **options: Any) -> None:
        # A one-shot process: the objects Django has loaded so far live as long as it does,
        # so the collector need not walk them again and again while rows stream through
        # (a tenth of the import's CPU otherwise).
        gc.freeze()
        path = options["file"]
        try:
            stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
        except OSError as error:
            raise CommandError(f"Cannot open {path}: {error.strerror}.") from error
        total = 0 if path == "-" else os.fstat(stream.fileno()).st_size

        def progress(done: int, rows: int) -> None:
            if total:
                width = 30
                filled = int(width * done / total)
                bar = "#" * filled + "-" * (width - filled)
                self.stderr.write(f"\r[{bar}] {100 * done / total:5.1f}%  {rows:,} rows", ending="")
            else:
                self.stderr.write(f"\r{rows:,} rows", ending="")
            self.stderr.flush()

        try:
            with stream:
                summary = services.profiles_import(
                    user=None,  # a staff command acts as the system
                    stream=stream,
                    format=options["format"],
                    filename=path,
                    segment_name=options["segment"].strip(),
                    on_progress=progress if not options["no_progress"] else None,
                )
        except ValidationError as error:
            raise CommandError(
                f"{path}: {' '.join(error.messages)} Nothing was imported."
            ) from error
        finally:
            if not options["no_progress"]:
                self.stderr.write("")
        self.stdout.write(
            f"{summary.rows:,} rows: {summary.created:,} created, {summary.updated:,} updated, "
            f"{summary.rejected:,} rejected"
            + (f"; all in static segment “{summary.segment}”" if summary.segment else "")
            + "."
        )
        self.stdout.write(
            f"{summary.lines:,} lines: {summary.header_lines:,} header, "
            f"{summary.blank_lines:,} blank, {summary.continuation_lines:,} continued, "
            f"{summary.rows:,} rows."
        )
        for rejected in summary.rejections:
            self.stdout.write(f"  line {rejected.line}: {rejected.reason}")
        if summary.rejected > len(summary.rejections):
            self.stdout.write(f"  … and {summary.rejected - len(summary.rejections):,} more.")
