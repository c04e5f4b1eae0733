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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.utils import timezone

from .choices import SUPPRESSES_TRANSACTIONAL, ChannelKind, normalized_address
from .models import Suppression

# A provider's text beyond this is cut: it explains, it is not an archive.
SUPPRESSION_DETAIL_MAX_CHARS = 2000

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
