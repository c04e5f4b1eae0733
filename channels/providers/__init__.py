"""Pluggable provider backends, one per channel, chosen like Django's ``EMAIL_BACKEND``.

A backend carries already-rendered messages to one provider. The delivery engine opens it
once per batch and hands it a chunk of messages at a time::

    with get_backend(preset) as backend:
        for message, outcome in zip(chunk, backend.send_batch(chunk), strict=True):
            if isinstance(outcome, TransientProviderError):   # retry later (retry_after)
                ...
            elif isinstance(outcome, PermanentProviderError):  # failed, with outcome.reason
                ...
            else:                                              # a SendResult: sent
                ...

``send_batch`` answers one outcome per message, in order. Its default calls ``send`` for
each message, so a backend only needs ``send``; backends of providers with a bulk API
override it to carry the whole chunk in one request.

``settings.SALVO_PROVIDER_BACKENDS`` maps each channel to a dotted path; a preset may
override it with its own ``backend``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from channels.models import MessagePreset

__all__ = [
    "OutboundMessage",
    "PermanentProviderError",
    "ProviderBackend",
    "ProviderError",
    "SendResult",
    "TransientProviderError",
    "backend_path",
    "get_backend",
    "import_backend",
]


@dataclass(frozen=True)
class OutboundMessage:
    """One rendered message for one recipient on one channel."""

    delivery_id: int  # idempotency key for providers that accept one
    channel: str  # a channels.choices.ChannelKind value
    to: str  # email address, E.164 phone, push token, or webhook URL
    subject: str  # email subject / push title ('' for sms/webhook)
    body: str  # text body
    html_body: str = ""  # email only, optional
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. List-Unsubscribe
    payload: Mapping[str, Any] = field(default_factory=dict)  # webhook JSON extras


@dataclass(frozen=True)
class SendResult:
    provider_message_id: str


class ProviderError(Exception):
    """The provider did not accept the message; ``reason`` is what to show and record."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientProviderError(ProviderError):
    """Worth retrying: timeouts, connection errors, 5xx, 429, SMTP 4xx."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class PermanentProviderError(ProviderError):
    """Retrying cannot help: invalid address, refused recipient, other 4xx."""


class ProviderBackend:
    """Base class of every backend; subclasses implement ``send`` and, if they hold a
    connection, ``open``/``close``. Usable as a context manager (open on enter, close on exit).
    """

    def __init__(self, preset: MessagePreset) -> None:
        self.preset = preset

    def open(self) -> None:
        """Acquire whatever the batch reuses (SMTP connection, HTTP connection pool)."""

    def send(self, message: OutboundMessage) -> SendResult:
        raise NotImplementedError

    def send_batch(self, messages: Sequence[OutboundMessage]) -> list[SendResult | ProviderError]:
        """One outcome per message, in order: a ``SendResult`` or the ``ProviderError`` that
        refused it. Never raises for one message's failure."""
        outcomes: list[SendResult | ProviderError] = []
        for message in messages:
            try:
                outcomes.append(self.send(message))
            except ProviderError as error:
                outcomes.append(error)
        return outcomes

    def close(self) -> None:
        """Release what ``open`` acquired; safe to call twice or without ``open``."""

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def backend_path(preset: MessagePreset) -> str:
    """The dotted path of the backend that carries this preset's messages."""
    if preset.backend:
        return preset.backend
    try:
        return settings.SALVO_PROVIDER_BACKENDS[preset.channel]
    except KeyError:
        raise ImproperlyConfigured(
            f"SALVO_PROVIDER_BACKENDS has no backend for channel {preset.channel!r}."
        ) from None


def import_backend(path: str) -> type[ProviderBackend]:
    """Import a backend class by dotted path; ImportError / TypeError name the problem."""
    backend_class = import_string(path)
    if not (isinstance(backend_class, type) and issubclass(backend_class, ProviderBackend)):
        raise TypeError(f"{path} is not a ProviderBackend subclass.")
    return backend_class


def get_backend(preset: MessagePreset) -> ProviderBackend:
    """A new, not yet opened backend for the preset's channel."""
    return import_backend(backend_path(preset))(preset)
