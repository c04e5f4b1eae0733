"""`manage.py frequency_cap list|add|remove|exempt`: the frequency cap rules, and a
campaign's exemption, for scripts; through ``campaigns.caps`` as the admin and the API."""

from __future__ import annotations

import json
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from campaigns import caps
from campaigns.api.caps import FrequencyCapSerializer
from campaigns.choices import FREQUENCY_CAP_MAX_LIMIT, CapPeriod

# One refusal in one line, worded as the campaign command words it.
from campaigns.management.doors import command_user, one_line
from campaigns.models import Campaign, FrequencyCap
from channels.choices import ChannelKind
from config.permissions import require_perms


class Command(BaseCommand):
    help = "List, add and remove frequency caps; exempt a campaign from them."

    def add_arguments(self, parser: CommandParser) -> None:
        common = CommandParser(add_help=False)
        common.add_argument(
            "--user",
            metavar="USERNAME",
            help="Act as this user (their permissions apply); default: the system.",
        )
        commands = parser.add_subparsers(dest="operation", required=True, metavar="OPERATION")
        listing = commands.add_parser("list", parents=[common], help="The rules, by name.")
        listing.add_argument("--json", action="store_true", help="JSON output.")
        add = commands.add_parser(
            "add",
            parents=[common],
            help="A rule: at most LIMIT marketing messages per profile per rolling PERIOD.",
        )
        add.add_argument("name")
        add.add_argument(
            "--limit",
            type=int,
            required=True,
            help=f"Messages per profile within the period, 1 to {FREQUENCY_CAP_MAX_LIMIT}.",
        )
        add.add_argument(
            "--period",
            required=True,
            choices=CapPeriod.values,
            help="day = the last 24 hours, week = 7 days, month = 30 days.",
        )
        add.add_argument(
            "--channel", default="", choices=ChannelKind.values, help="Default: all channels."
        )
        add.add_argument("--inactive", action="store_true", help="Keep it without applying it.")
        remove = commands.add_parser("remove", parents=[common], help="Delete a rule by name.")
        remove.add_argument("name")
        exempt = commands.add_parser(
            "exempt",
            parents=[common],
            help="Exempt a campaign from the caps (its sends still count for the others).",
        )
        exempt.add_argument("campaign", type=int, help="Campaign id.")
        exempt.add_argument("--off", action="store_true", help="End its exemption instead.")

    def handle(self, *args: Any, **options: Any) -> None:
        user = command_user(options.pop("user"))
        operation = options.pop("operation")
        try:
            getattr(self, f"{operation}_rules")(user=user, **options)
        except PermissionDenied as error:
            raise CommandError(str(error)) from error
        except ValidationError as error:
            raise CommandError(one_line(error)) from error

    def list_rules(self, *, user: Any, json: bool = False, **options: Any) -> None:
        require_perms(user, caps.VIEW_CAP, to="list caps")
        rules = caps.frequency_cap_list()
        if json:
            self.stdout.write(_json(FrequencyCapSerializer(rules, many=True).data))
            return
        if not rules:
            self.stdout.write("No frequency caps.")
        for rule in rules:
            scope = rule.get_channel_display() if rule.channel else "all channels"
            state = "active" if rule.active else "inactive"
            self.stdout.write(
                f"{rule.name}: at most {rule.limit} per {rule.get_period_display()}, "
                f"{scope}, {state}"
            )

    def add_rules(
        self,
        *,
        user: Any,
        name: str,
        limit: int,
        period: str,
        channel: str,
        inactive: bool,
        **options: Any,
    ) -> None:
        data = {"name": name, "limit": limit, "period": period, "channel": channel}
        rule = caps.frequency_cap_create(user=user, data={**data, "active": not inactive})
        self.stdout.write(f"Frequency cap {rule.pk} “{rule.name}” added.")

    def remove_rules(self, *, user: Any, name: str, **options: Any) -> None:
        rule = FrequencyCap.objects.filter(name=name).first()
        if rule is None:
            raise CommandError(f"No frequency cap is named “{name}”.")
        caps.frequency_cap_delete(rule=rule, user=user)
        self.stdout.write(f"Frequency cap “{name}” removed.")

    def exempt_rules(self, *, user: Any, campaign: int, off: bool, **options: Any) -> None:
        found = Campaign.objects.filter(pk=campaign).first()
        if found is None:
            raise CommandError(f"Campaign {campaign} does not exist.")
        found = caps.campaign_cap_exemption_set(campaign=found, user=user, exempt=not off)
        state = "exempt from" if found.frequency_cap_exempt else "subject to"
        self.stdout.write(f"Campaign {found.pk} “{found.name}” is {state} the frequency caps.")


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)
