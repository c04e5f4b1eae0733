"""Development backend: every message becomes one log line; nothing leaves the machine."""

from __future__ import annotations

import logging

from channels.choices import ChannelKind

from . import OutboundMessage, ProviderBackend, SendResult

logger = logging.getLogger("salvo.providers.console")


class ConsoleBackend(ProviderBackend):
    """Logs each message (channel, recipient, subject, first line of the body) and accepts it."""

    channels = frozenset(ChannelKind.values)

    def send(self, message: OutboundMessage) -> SendResult:
        first_line = message.body.strip().splitlines()[0] if message.body.strip() else ""
        logger.info(
            "%s to %s [delivery %s] %s%s",
            message.channel,
            message.to,
            message.delivery_id,
            f"{message.subject!r}: " if message.subject else "",
            first_line[:120],
        )
        return SendResult(provider_message_id=f"console-{message.delivery_id}")
