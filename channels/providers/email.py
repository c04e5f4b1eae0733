"""Email through Django's email machinery (``EMAIL_BACKEND``, SMTP by default).

One connection carries a whole batch: ``open`` connects, each ``send`` reuses it, ``close``
says QUIT. A connection that breaks mid-batch is dropped and the next ``send`` reconnects.

``send_batch`` hands a chunk to the Django backend at once when that backend reports an
outcome per message (``channels.providers.email_api.BatchEmailBackend``, an HTTP batch API:
what a high-volume sender uses); over SMTP, whose ``send_messages`` stops at the first
refusal without saying which messages went, it sends one message at a time on the one
connection.
"""

from __future__ import annotations

import contextlib
import functools
import smtplib
from collections.abc import Sequence
from email.utils import formataddr, make_msgid
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.mail.backends.base import BaseEmailBackend

from channels.choices import ChannelKind

from . import (
    OutboundMessage,
    PermanentProviderError,
    ProviderBackend,
    ProviderError,
    SendResult,
    TransientProviderError,
)

if TYPE_CHECKING:
    from channels.models import MessagePreset

DELIVERY_ID_HEADER = "X-Salvo-Delivery-Id"
DJANGO_SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"


def smtp_refusal(
    code: int | None, message: bytes | str
) -> TransientProviderError | PermanentProviderError:
    """What an SMTP server's refusal means for its message, with the server's text as the
    reason (``SMTP 550: …``): RFC 5321's 4xx is a temporary failure, 5xx (or anything
    unexpected) a permanent one. Django's smtplib path and Salvo's own SMTP session read
    replies by this one rule."""
    text = message.decode(errors="replace") if isinstance(message, bytes) else str(message)
    reason = f"SMTP {code}: {text}" if code else text
    if code is not None and 400 <= code < 500:
        return TransientProviderError(reason)
    return PermanentProviderError(reason)


def preset_sender(preset: MessagePreset) -> str:
    """The preset's From: its address, with its display name when it has one."""
    if preset.from_name:
        return formataddr((preset.from_name, preset.from_email))
    return preset.from_email


class EmailBackend(ProviderBackend):
    """Sends multipart (text + optional HTML) email from the preset's sender."""

    channels = frozenset({ChannelKind.EMAIL})

    connection: BaseEmailBackend | None = None

    def __new__(cls, preset: MessagePreset) -> EmailBackend:
        # Over Django's SMTP backend, the wire path (channels.providers.smtp) sends instead.
        if cls is EmailBackend and settings.EMAIL_BACKEND == DJANGO_SMTP_BACKEND:
            from .smtp.backend import SmtpEmailBackend

            return super().__new__(SmtpEmailBackend)
        return super().__new__(cls)

    def open(self) -> None:
        """Connect once for the batch; raises ``TransientProviderError`` when the server
        cannot be reached (the whole batch should be retried later).
        """
        if self.connection is not None:
            return
        connection = get_connection(fail_silently=False)
        try:
            connection.open()
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientProviderError(f"Cannot connect to the mail server: {exc}") from exc
        self.connection = connection

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is None:
            return
        # The server may have gone away first: then there is nothing left to release.
        with contextlib.suppress(smtplib.SMTPException, OSError):
            connection.close()

    def _sender(self) -> str:
        return preset_sender(self.preset)

    @functools.cached_property
    def _sender_text(self) -> str:
        return self._sender()

    @functools.cached_property
    def _reply_to(self) -> list[str] | None:
        return [self.preset.reply_to] if self.preset.reply_to else None

    @functools.cached_property
    def _message_id_template(self) -> str:
        """``make_msgid``'s form (time, random, an id string, the sender's domain), drawn
        once per backend: the delivery id in it already makes every message's id unique."""
        domain = self.preset.from_email.rpartition("@")[2] or None
        return make_msgid(idstring="salvo.{}", domain=domain)

    def build_message(self, message: OutboundMessage) -> EmailMultiAlternatives:
        message_id = self._message_id_template.format(message.delivery_id)
        email = EmailMultiAlternatives(
            subject=message.subject,
            body=message.body,
            from_email=self._sender_text,
            to=[message.to],
            reply_to=self._reply_to,
            headers={
                **message.headers,
                "Message-ID": message_id,
                DELIVERY_ID_HEADER: str(message.delivery_id),
            },
        )
        if message.html_body:
            email.attach_alternative(message.html_body, "text/html")
        return email

    def _build(self, message: OutboundMessage) -> EmailMultiAlternatives:
        try:
            return self.build_message(message)
        except ValueError as exc:  # e.g. a header with a newline in it
            raise PermanentProviderError(f"Cannot build the email: {exc}") from exc

    def send(self, message: OutboundMessage) -> SendResult:
        email = self._build(message)
        opened_here = self.connection is None
        self.open()
        try:
            return self._send_open(email)
        finally:
            if opened_here:
                self.close()

    def send_batch(self, messages: Sequence[OutboundMessage]) -> list[SendResult | ProviderError]:
        outcomes: list[SendResult | ProviderError | None] = [None] * len(messages)
        emails: list[tuple[int, EmailMultiAlternatives]] = []
        for position, message in enumerate(messages):
            try:
                emails.append((position, self._build(message)))
            except ProviderError as error:
                outcomes[position] = error
        opened_here = self.connection is None
        try:
            if emails:
                self.open()
            for position, outcome in self._send_built(emails):
                outcomes[position] = outcome
        except ProviderError as error:  # the server cannot be reached: all wait
            for position, _ in emails:
                outcomes[position] = error
        finally:
            if opened_here:
                self.close()
        return [outcome for outcome in outcomes if outcome is not None]

    def _send_built(
        self, emails: Sequence[tuple[int, EmailMultiAlternatives]]
    ) -> list[tuple[int, SendResult | ProviderError]]:
        connection = self.connection
        assert connection is not None
        if getattr(connection, "reports_each_message", False):
            # One request for the chunk; the backend leaves each message's outcome on it.
            with contextlib.suppress(ProviderError):
                connection.send_messages([email for _, email in emails])
            missing = TransientProviderError("The email backend gave no outcome.")
            return [
                (position, getattr(email, "salvo_outcome", missing)) for position, email in emails
            ]
        results: list[tuple[int, SendResult | ProviderError]] = []
        for position, email in emails:
            try:
                results.append((position, self._send_open(email)))
            except ProviderError as error:
                results.append((position, error))
        return results

    def _send_open(self, email: EmailMultiAlternatives) -> SendResult:
        """Send on the open connection (reconnecting if it was dropped)."""
        self.open()
        assert self.connection is not None
        try:
            self.connection.send_messages([email])
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()), (None, b"recipient refused"))
            raise smtp_refusal(code, text) from exc
        except smtplib.SMTPResponseException as exc:
            # Sender refused, data refused…: the server answered, so the session is usable.
            raise smtp_refusal(exc.smtp_code, exc.smtp_error) from exc
        except ValueError as exc:  # an address Django cannot encode
            raise PermanentProviderError(f"Invalid address: {exc}") from exc
        except (smtplib.SMTPException, OSError) as exc:
            # Disconnected or timed out: this connection is unusable, the next send reconnects.
            self._drop_connection()
            raise TransientProviderError(f"Mail server connection failed: {exc}") from exc
        return SendResult(provider_message_id=email.extra_headers["Message-ID"].strip("<>"))

    def _drop_connection(self) -> None:
        connection, self.connection = self.connection, None
        smtp = getattr(connection, "connection", None)
        if smtp is not None:
            with contextlib.suppress(OSError):
                smtp.close()
