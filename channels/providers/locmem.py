"""In-memory backend for tests that run the delivery code in the test process."""

from __future__ import annotations

from channels.choices import ChannelKind

from . import OutboundMessage, ProviderBackend, SendResult

# Every message sent through any LocmemBackend of this process, in order.
outbox: list[OutboundMessage] = []


class LocmemBackend(ProviderBackend):
    """Appends each message to ``channels.providers.locmem.outbox`` and accepts it."""

    channels = frozenset(ChannelKind.values)

    def send(self, message: OutboundMessage) -> SendResult:
        outbox.append(message)
        return SendResult(provider_message_id=f"locmem-{message.delivery_id}")
