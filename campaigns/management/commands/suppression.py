"""`manage.py suppression list|add|remove|import`: the suppression list, for scripts;
through ``channels.suppression`` as the admin and the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from campaigns.management.doors import acting_user_options, command_user, one_line
from channels import suppression
from channels.api.filtersets import SuppressionFilterSet
from channels.api.serializers import SuppressionSerializer
from channels.choices import SuppressionReason, SuppressionSource, normalized_address
from channels.models import Suppression
from config.permissions import require_perms

CHANNELS = sorted(suppression.SUPPRESSIBLE_CHANNELS)
# `list` prints at most this many entries unless told otherwise (newest first).
LIST_DEFAULT_LIMIT = 100


class Command(BaseCommand):
    help = "List, add, remove and import suppressed addresses."

    def add_arguments(self, parser: CommandParser) -> None:
        common = acting_user_options()
        commands = parser.add_subparsers(dest="operation", required=True, metavar="OPERATION")
        listing = commands.add_parser("list", parents=[common], help="Entries, newest first.")
        listing.add_argument("--channel", choices=CHANNELS)
        listing.add_argument("--reason", choices=SuppressionReason.values)
        listing.add_argument("--source", choices=SuppressionSource.values)
        listing.add_argument("--address", help="This address only.")
        listing.add_argument(
            "--limit", type=int, default=LIST_DEFAULT_LIMIT, help="At most this many (0: all)."
        )
        listing.add_argument("--json", action="store_true", help="JSON lines, as the API.")
        add = commands.add_parser("add", parents=[common], help="Suppress one address.")
        add.add_argument("channel", choices=CHANNELS)
        add.add_argument("address")
        add.add_argument("--reason", default=SuppressionReason.MANUAL)
        add.add_argument("--detail", default="", help="Why, for whoever reads the list.")
        remove = commands.add_parser(
            "remove", parents=[common], help="Take one address off its channel's list."
        )
        remove.add_argument("channel", choices=CHANNELS)
        remove.add_argument("address")
        load = commands.add_parser(
            "import",
            parents=[common],
            help="A CSV file (channel,address[,reason][,detail]): every row, or none.",
        )
        load.add_argument("file", type=Path)

    def handle(self, *args: Any, **options: Any) -> None:
        user = command_user(options.pop("user"))
        operation = options.pop("operation")
        try:
            getattr(self, f"{operation}_entries")(user=user, **options)
        except PermissionDenied as error:
            raise CommandError(str(error)) from error
        except ValidationError as error:
            raise CommandError(one_line(error)) from error
        except suppression.AlreadySuppressed as error:
            raise CommandError(str(error)) from error

    def list_entries(self, *, user: Any, limit: int, json: bool, **filters: Any) -> None:
        require_perms(user, suppression.VIEW_SUPPRESSION, to="list suppressions")
        query = SuppressionFilterSet(
            {
                k: v
                for k, v in filters.items()
                if k in ("channel", "reason", "source", "address") and v
            },
            queryset=Suppression.objects.all(),
        )
        if not query.is_valid():
            raise CommandError(" ".join(f"{f}: {' '.join(m)}" for f, m in query.errors.items()))
        rows = query.qs[:limit] if limit > 0 else query.qs
        for entry in rows:
            if json:
                self.stdout.write(_json(SuppressionSerializer(entry).data))
            else:
                self.stdout.write(
                    f"{entry.channel}  {entry.address}  {entry.reason}  {entry.source}  "
                    f"{entry.created_at.isoformat(timespec='seconds')}"
                )

    def add_entries(
        self, *, user: Any, channel: str, address: str, reason: str, detail: str, **_: Any
    ) -> None:
        entry = suppression.suppression_add(
            user=user,
            channel=channel,
            address=address,
            reason=reason,
            detail=detail,
            source=SuppressionSource.COMMAND,
        )
        self.stdout.write(f"Suppressed {entry.address} on {entry.get_channel_display()}.")

    def remove_entries(self, *, user: Any, channel: str, address: str, **_: Any) -> None:
        address = normalized_address(channel, address)
        entry = Suppression.objects.filter(channel=channel, address=address).first()
        if entry is None:
            raise CommandError(f"{address} is not on the {channel} suppression list.")
        suppression.suppressions_remove(user=user, suppressions=[entry])
        self.stdout.write(f"Removed {address} from the {channel} suppression list.")

    def import_entries(self, *, user: Any, file: Path, **_: Any) -> None:
        try:
            stream = file.open("rb")
        except OSError as error:
            raise CommandError(f"Cannot read {file}: {error.strerror}.") from error
        with stream:
            result = suppression.suppressions_import(
                user=user, stream=stream, source=SuppressionSource.IMPORT
            )
        self.stdout.write(
            f"Imported {file.name}: {result.rows} rows, {result.added} added, "
            f"{result.already} on the list already."
        )


def _json(data: Any) -> str:
    return json.dumps(data, default=str)
