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

Which backends exist is the registry's to say, and only the registry imports them: the
shipped backends, the channels' defaults in ``settings.SALVO_PROVIDER_BACKENDS`` and the
extra dotted paths of ``settings.SALVO_PROVIDER_EXTRA_BACKENDS``, each imported once, when the
registry is first read. A backend class declares the channels it serves (``channels``); a
preset may name any registered backend that serves its channel (``backend_problem`` says why
not), and otherwise uses its channel's default. A path that came from a request is looked up,
never imported.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from channels.choices import ChannelKind

if TYPE_CHECKING:
    from channels.models import MessagePreset

__all__ = [
    "OutboundMessage",
    "PermanentProviderError",
    "ProviderBackend",
    "ProviderError",
    "SendResult",
    "TransientProviderError",
    "backend_choices",
    "backend_path",
    "backend_problem",
    "get_backend",
    "provider_backends",
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
    """Retrying cannot help: invalid address, refused recipient, other 4xx.

    ``suppress`` is the ``channels.choices.SuppressionReason`` the refusal says of the
    address itself ('' when it says nothing): a number that does not exist, a push token
    the app no longer has, a recipient who opted out at the provider. The delivery engine
    records it as a ``rejected`` delivery event, which puts the address on the list."""

    def __init__(self, reason: str, *, suppress: str = "") -> None:
        super().__init__(reason)
        self.suppress = suppress


class ProviderBackend:
    """Base class of every backend; subclasses implement ``send`` and, if they hold a
    connection, ``open``/``close``. Usable as a context manager (open on enter, close on exit).

    A concrete backend names the channels it serves in ``channels``; a class that serves none
    (this one, the HTTP bases) cannot be registered nor chosen by a preset.
    """

    channels: ClassVar[frozenset[str]] = frozenset()
    # The provider's name on the delivery events its refusals imply ('' : the class name).
    provider: ClassVar[str] = ""

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


# The backends Salvo ships, registered whatever the settings say.
SHIPPED_BACKENDS: tuple[str, ...] = (
    "channels.providers.console.ConsoleBackend",
    "channels.providers.locmem.LocmemBackend",
    "channels.providers.email.EmailBackend",
    "channels.providers.esp.PostmarkBackend",
    "channels.providers.esp.SendGridBackend",
    "channels.providers.esp.MailgunBackend",
    "channels.providers.esp.SparkPostBackend",
    "channels.providers.esp.BrevoBackend",
    "channels.providers.esp.ResendBackend",
    "channels.providers.esp.SesBackend",
    "channels.providers.http.SmsBackend",
    "channels.providers.http.PushBackend",
    "channels.providers.http.WebhookBackend",
    "channels.providers.twilio.TwilioSmsBackend",
    "channels.providers.fcm.FcmPushBackend",
)


def _registered_class(path: str, setting: str) -> type[ProviderBackend]:
    """Import one backend named by the code or the settings (never by a request)."""
    try:
        backend_class = import_string(path)
    except (ImportError, ValueError) as exc:
        raise ImproperlyConfigured(f"{setting}: cannot import {path!r}: {exc}") from exc
    if not (isinstance(backend_class, type) and issubclass(backend_class, ProviderBackend)):
        raise ImproperlyConfigured(f"{setting}: {path} is not a ProviderBackend subclass.")
    unknown = set(backend_class.channels) - set(ChannelKind.values)
    if not backend_class.channels or unknown:
        raise ImproperlyConfigured(
            f"{setting}: {path} declares no channels it serves"
            if not backend_class.channels
            else f"{setting}: {path} declares unknown channels {sorted(unknown)}"
        )
    return backend_class


@functools.cache
def provider_backends() -> dict[str, type[ProviderBackend]]:
    """Every backend a preset may use, by dotted path, imported once per process (and again
    only when a test overrides the settings it is built from)."""
    registry = {path: _registered_class(path, "SHIPPED_BACKENDS") for path in SHIPPED_BACKENDS}
    for channel, path in settings.SALVO_PROVIDER_BACKENDS.items():
        backend_class = registry.get(path) or _registered_class(path, "SALVO_PROVIDER_BACKENDS")
        if channel not in backend_class.channels:
            raise ImproperlyConfigured(
                f"SALVO_PROVIDER_BACKENDS: {path} does not serve {channel}; it serves "
                f"{', '.join(sorted(backend_class.channels))}."
            )
        registry[path] = backend_class
    for path in settings.SALVO_PROVIDER_EXTRA_BACKENDS:
        registry[path] = registry.get(path) or _registered_class(
            path, "SALVO_PROVIDER_EXTRA_BACKENDS"
        )
    return registry


@receiver(setting_changed)
def _forget_registry(*, setting: str, **kwargs: Any) -> None:
    if setting in ("SALVO_PROVIDER_BACKENDS", "SALVO_PROVIDER_EXTRA_BACKENDS"):
        provider_backends.cache_clear()


def backend_choices(channel: str | None = None) -> list[tuple[str, str]]:
    """``(path, label)`` of the registered backends serving ``channel`` (all without one),
    sorted by path; the label names the class and the channels it serves."""
    return [
        (path, f"{backend_class.__name__} ({', '.join(sorted(backend_class.channels))})")
        for path, backend_class in sorted(provider_backends().items())
        if channel is None or channel in backend_class.channels
    ]


def backend_problem(path: str, *, channel: str) -> str:
    """Why a preset of ``channel`` cannot use the backend at ``path`` ('' when it can).
    Looks the path up in the registry: nothing is imported."""
    backend_class = provider_backends().get(path)
    if backend_class is None:
        return (
            f"{path} is not a registered provider backend; choose one of "
            f"{', '.join(p for p, _ in backend_choices(channel))} (settings list others in "
            "SALVO_PROVIDER_EXTRA_BACKENDS)."
        )
    if channel not in backend_class.channels:
        return (
            f"{path} does not serve {channel} presets; it serves "
            f"{', '.join(sorted(backend_class.channels))}."
        )
    return ""


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


def get_backend(preset: MessagePreset) -> ProviderBackend:
    """A new, not yet opened backend for the preset's channel, from the registry."""
    path = backend_path(preset)
    backend_class = provider_backends().get(path)
    if backend_class is None:
        raise ImproperlyConfigured(
            f"Preset “{preset.name}” names {path}, which is not a registered provider backend "
            "(see SALVO_PROVIDER_EXTRA_BACKENDS)."
        )
    return backend_class(preset)
