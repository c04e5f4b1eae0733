"""The suppression list: addresses that get no more messages on their channel.

Providers put addresses on it (a hard bounce, a complaint, an unsubscribe at the ESP, a
Twilio number that does not exist or opted out: ``campaigns.events``), and so do people
(the admin, the API, the command, an import). The delivery engine reads it once per chunk
(``suppressed_addresses``) and skips what it finds with the reason ``suppressed``.

An address is stored and looked up as ``normalized_address`` gives it. The first entry of
an address stands: a later event for it (a second bounce) neither duplicates nor rewrites
it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone

from config.permissions import require_perms

from .choices import (
    SUPPRESSES_TRANSACTIONAL,
    ChannelKind,
    SuppressionReason,
    normalized_address,
)
from .models import Suppression

# A provider's text beyond this is cut: it explains, it is not an archive.
SUPPRESSION_DETAIL_MAX_CHARS = 2000
# The longest address the list keeps (an email address's limit, RFC 5321: 320 characters).
SUPPRESSION_ADDRESS_MAX_CHARS = Suppression._meta.get_field("address").max_length or 320
# An import file's rows at most: written in one transaction, so a larger list is imported
# in several files. Its errors are listed up to SUPPRESSION_IMPORT_MAX_ERRORS lines.
SUPPRESSION_IMPORT_MAX_ROWS = 100_000
SUPPRESSION_IMPORT_MAX_ERRORS = 20
# The columns of an import file (a header line names them; reason and detail may be left
# out: "manual" and nothing).
SUPPRESSION_IMPORT_COLUMNS = ("channel", "address", "reason", "detail")

ADD_SUPPRESSION = "channels.add_suppression"
VIEW_SUPPRESSION = "channels.view_suppression"
DELETE_SUPPRESSION = "channels.delete_suppression"

# A webhook goes to the preset's URL, not to an address of the recipient's.
SUPPRESSIBLE_CHANNELS: frozenset[str] = frozenset(
    {ChannelKind.EMAIL, ChannelKind.SMS, ChannelKind.PUSH}
)


@dataclass(frozen=True)
class SuppressionEntry:
    channel: str
    address: str
    reason: str  # a SuppressionReason
    detail: str = ""


def suppressions_record(*, entries: Sequence[SuppressionEntry], source: str) -> None:
    """Put the addresses on the list, keeping any entry already there. One statement, safe
    against a concurrent writer of the same address (the unique index decides)."""
    now = timezone.now()
    rows = {
        (entry.channel, normalized_address(entry.channel, entry.address)): Suppression(
            channel=entry.channel,
            address=normalized_address(entry.channel, entry.address),
            reason=entry.reason,
            source=source,
            detail=entry.detail[:SUPPRESSION_DETAIL_MAX_CHARS],
            created_at=now,
        )
        for entry in entries
        if entry.channel in SUPPRESSIBLE_CHANNELS and entry.address.strip()
    }
    Suppression.objects.bulk_create(rows.values(), ignore_conflicts=True)


def suppressed_addresses(
    *, channel: str, addresses: Iterable[str], marketing: bool
) -> frozenset[str]:
    """Which of the addresses (as the profiles hold them) the channel's list suppresses for
    a marketing send, or for a transactional one (only ``SUPPRESSES_TRANSACTIONAL``
    reasons): one query on the list's unique index."""
    if channel not in SUPPRESSIBLE_CHANNELS:
        return frozenset()
    by_normal: dict[str, list[str]] = {}
    for address in addresses:
        if address:
            by_normal.setdefault(normalized_address(channel, address), []).append(address)
    if not by_normal:
        return frozenset()
    found = Suppression.objects.filter(channel=channel, address__in=by_normal)
    if not marketing:
        found = found.filter(reason__in=SUPPRESSES_TRANSACTIONAL)
    return frozenset(
        address
        for normal in found.values_list("address", flat=True)
        for address in by_normal[normal]
    )


def suppression_lift_unsubscribed(*, channel: str, address: str) -> int:
    """Take an address's ``unsubscribed`` entry off the list, as the person who opted out
    asked to receive again (an SMS opt-in keyword): an entry for any other reason (an
    invalid number, a bounce, a complaint, one added by hand) stays. How many (0 or 1)."""
    removed, _ = Suppression.objects.filter(
        channel=channel,
        address=normalized_address(channel, address),
        reason=SuppressionReason.UNSUBSCRIBED,
    ).delete()
    return removed


# --- people's doors: the admin, the API, the command, an import ------------------------------


class AlreadySuppressed(Exception):
    """The address is on its channel's list already (409 at the API)."""


@dataclass(frozen=True)
class SuppressionsImported:
    rows: int
    added: int
    already: int  # on the list before: kept as they were

    def as_dict(self) -> dict[str, int]:
        return {"rows": self.rows, "added": self.added, "already": self.already}


def suppression_clean(
    *, channel: str, address: str, reason: str, detail: str = ""
) -> SuppressionEntry:
    """The entry as the list keeps it (its address normalized), or ``ValidationError``
    naming each field at fault."""
    errors: dict[str, str] = {}
    if channel not in SUPPRESSIBLE_CHANNELS:
        names = ", ".join(sorted(SUPPRESSIBLE_CHANNELS))
        errors["channel"] = f"“{channel}” is not a channel with a suppression list ({names})."
    address = normalized_address(channel, address or "")
    if not address:
        errors["address"] = "An address is required."
    elif len(address) > SUPPRESSION_ADDRESS_MAX_CHARS:
        errors["address"] = f"At most {SUPPRESSION_ADDRESS_MAX_CHARS} characters."
    elif channel == ChannelKind.EMAIL:
        try:
            validate_email(address)
        except ValidationError:
            errors["address"] = f"“{address}” is not an email address."
    if reason not in SuppressionReason.values:
        errors["reason"] = f"“{reason}” is not a reason: {', '.join(SuppressionReason.values)}."
    if len(detail) > SUPPRESSION_DETAIL_MAX_CHARS:
        errors["detail"] = f"At most {SUPPRESSION_DETAIL_MAX_CHARS} characters."
    if errors:
        raise ValidationError(errors)
    return SuppressionEntry(channel=channel, address=address, reason=reason, detail=detail)


def suppression_add(
    *,
    user: Any,
    channel: str,
    address: str,
    source: str,
    reason: str = SuppressionReason.MANUAL,
    detail: str = "",
) -> Suppression:
    """Put one address on its channel's list, by a person (``source``: the door).
    ``AlreadySuppressed`` when it is there already: the entry there stays as it is."""
    require_perms(user, ADD_SUPPRESSION, to="suppress an address")
    entry = suppression_clean(channel=channel, address=address, reason=reason, detail=detail)
    try:
        with transaction.atomic():
            row = _entry_row(entry, source=source, user=user, at=timezone.now())
            row.save(force_insert=True)
            return row
    except IntegrityError as error:
        raise AlreadySuppressed(
            f"{entry.address} is already on the {ChannelKind(entry.channel).label} "
            "suppression list."
        ) from error


@transaction.atomic
def suppressions_remove(*, user: Any, suppressions: Iterable[Suppression]) -> int:
    """Take the entries off the list (their addresses get messages again); how many."""
    require_perms(user, DELETE_SUPPRESSION, to="remove an address from the suppression list")
    ids = [suppression.pk for suppression in suppressions]
    removed, _ = Suppression.objects.filter(pk__in=ids).delete()
    return removed


def suppressions_import(*, user: Any, stream: IO[bytes], source: str) -> SuppressionsImported:
    """Put a CSV file's addresses on the list (header: ``channel,address`` and optionally
    ``reason``, ``detail``), all of them or, when any line is wrong, none: the
    ``ValidationError`` lists the lines at fault ("line 7: address: …"). Addresses on the
    list already keep their entry."""
    require_perms(user, ADD_SUPPRESSION, to="import suppressions")
    entries = _import_entries(stream)
    with transaction.atomic():
        already = _already_listed(entries)
        now = timezone.now()
        Suppression.objects.bulk_create(
            [_entry_row(entry, source=source, user=user, at=now) for entry in entries],
            ignore_conflicts=True,
            batch_size=2000,
        )
    return SuppressionsImported(rows=len(entries), added=len(entries) - already, already=already)


def _entry_row(entry: SuppressionEntry, *, source: str, user: Any, at: Any) -> Suppression:
    return Suppression(
        channel=entry.channel,
        address=entry.address,
        reason=entry.reason,
        source=source,
        detail=entry.detail,
        created_at=at,
        created_by=user,
    )


def _already_listed(entries: Sequence[SuppressionEntry]) -> int:
    """How many of the entries' addresses the list holds: a query per channel and
    thousand addresses, on the list's unique index."""
    by_channel: dict[str, list[str]] = {}
    for entry in entries:
        by_channel.setdefault(entry.channel, []).append(entry.address)
    return sum(
        Suppression.objects.filter(channel=channel, address__in=addresses[at : at + 1000]).count()
        for channel, addresses in by_channel.items()
        for at in range(0, len(addresses), 1000)
    )


def _import_entries(stream: IO[bytes]) -> list[SuppressionEntry]:
    try:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
        reader = csv.reader(text)
        header = [name.strip().lower() for name in next(reader, [])]
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValidationError(f"line 1: the file is not CSV in UTF-8 ({error}).") from error
    missing = [name for name in ("channel", "address") if name not in header]
    unknown = [name for name in header if name not in SUPPRESSION_IMPORT_COLUMNS]
    if missing or unknown:
        raise ValidationError(
            "line 1: the header names the columns "
            + ", ".join(SUPPRESSION_IMPORT_COLUMNS)
            + " (reason and detail optional)"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
            + "."
        )
    entries: dict[tuple[str, str], SuppressionEntry] = {}
    errors: list[str] = []
    try:
        for cells in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(entries) + len(errors) >= SUPPRESSION_IMPORT_MAX_ROWS:
                raise ValidationError(
                    f"line {line}: more than {SUPPRESSION_IMPORT_MAX_ROWS:,} rows; "
                    "import the list in several files."
                )
            if len(cells) != len(header):
                errors.append(f"line {line}: {len(cells)} cells, the header names {len(header)}.")
                continue
            row = dict(zip(header, (cell.strip() for cell in cells), strict=True))
            try:
                entry = suppression_clean(
                    channel=row["channel"].lower(),
                    address=row["address"],
                    reason=row.get("reason") or SuppressionReason.MANUAL,
                    detail=row.get("detail", ""),
                )
            except ValidationError as error:
                fields = "; ".join(f"{f}: {' '.join(m)}" for f, m in error.message_dict.items())
                errors.append(f"line {line}: {fields}")
            else:
                entries.setdefault((entry.channel, entry.address), entry)
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValidationError(
            f"line {reader.line_num + 1}: the file is not CSV in UTF-8 ({error})."
        ) from error
    if errors:
        shown = errors[:SUPPRESSION_IMPORT_MAX_ERRORS]
        more = len(errors) - len(shown)
        raise ValidationError(
            [f"Nothing was imported: {len(errors)} line(s) are wrong.", *shown]
            + ([f"… and {more} more."] if more else [])
        )
    return list(entries.values())
