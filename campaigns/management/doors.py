"""What the campaigns app's commands share: the user a command acts as, and a refusal said
in one line (a command's non-zero exit)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError, CommandParser


def command_user(username: str | None) -> Any:
    """The user named by ``--user`` (their permissions apply), or None for the system."""
    if username is None:
        return None
    try:
        return get_user_model().objects.get(username=username)
    except get_user_model().DoesNotExist:
        raise CommandError(f"User “{username}” does not exist.") from None


def one_line(error: ValidationError) -> str:
    """A service's refusal as one line: each field with its messages."""
    if hasattr(error, "error_dict"):
        return " ".join(
            f"{field}: {' '.join(messages)}" for field, messages in error.message_dict.items()
        )
    return " ".join(error.messages)


def acting_user_options() -> CommandParser:
    """The ``--user`` option of every subcommand (a parent parser, ``parents=[…]``)."""
    options = CommandParser(add_help=False)
    options.add_argument(
        "--user",
        metavar="USERNAME",
        help="Act as this user (their permissions apply); default: the system.",
    )
    return options
