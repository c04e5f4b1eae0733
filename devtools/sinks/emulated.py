"""What the sink writes down for one message to an emulated provider API (``twilio``,
``fcm``): the fields every attempt has, as the generic endpoints write them, and the
provider's name, message id or error code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import SinkServer


def record_attempt(
    sink: SinkServer,
    *,
    channel: str,
    provider: str,
    delivery_id: str | None,
    to: str,
    attempt: int,
    status: int,
    message_id: str | None,
    error_code: object = None,
    content: dict[str, Any],
) -> None:
    """Record one attempt, accepted when the provider named a message; ``content`` (the
    request's path, headers, body…) only when the sink keeps content."""
    record: dict[str, Any] = {
        "channel": channel,
        "provider": provider,
        "delivery_id": delivery_id,
        "to": to,
        "status": status,
        "accepted": message_id is not None,
        "attempt": attempt,
    }
    if message_id is not None:
        record["message_id"] = message_id
    else:
        record["error_code"] = error_code
    if sink.content:
        record |= content
    sink._record(**record)
