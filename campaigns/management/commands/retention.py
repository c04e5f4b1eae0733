"""`manage.py retention [--days N] [--dry-run]`: drop the deliveries of runs that ended more
than N days ago (default SALVO_RETENTION_DAYS), for cron and scripts; through
``campaigns.retention`` as the scheduler's hourly step."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from campaigns.exceptions import CampaignConflict
from campaigns.management.doors import acting_user_options, command_user, one_line
from campaigns.retention import deliveries_drop_expired


class Command(BaseCommand):
    help = (
        "Drop the deliveries (with their provider events and audiences) of runs that ended "
        "more than N days ago; the reports keep their counts. On PostgreSQL a month's "
        "partition at a time."
    )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        return super().create_parser(
            prog_name, subcommand, parents=[acting_user_options()], **kwargs
        )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            help="Keep this many days after a run ended (default: SALVO_RETENTION_DAYS).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Say what would go; drop nothing."
        )
        parser.add_argument("--json", action="store_true", help="JSON output.")

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["days"]
        if days is None:
            days = settings.SALVO_RETENTION_DAYS
            if not days:
                raise CommandError(
                    "Give --days, or set SALVO_RETENTION_DAYS: deliveries are kept for ever."
                )
        try:
            result = deliveries_drop_expired(
                days=days, user=command_user(options["user"]), dry_run=options["dry_run"]
            )
        except ValidationError as error:
            raise CommandError(one_line(error)) from None
        except (PermissionDenied, CampaignConflict) as error:
            raise CommandError(str(error)) from None
        if options["json"]:
            fields = (
                "days",
                "dry_run",
                "runs",
                "deliveries",
                "events",
                "audience",
                "partitions",
                "runs_held",
            )
            summary = {name: getattr(result, name) for name in fields}
            summary |= {
                "cutoff": result.cutoff.isoformat(),
                "seconds": round(result.seconds, 3),
                "drop_seconds": round(result.drop_seconds, 3),
            }
            self.stdout.write(json.dumps(summary))
        else:
            self.stdout.write(result.words())
