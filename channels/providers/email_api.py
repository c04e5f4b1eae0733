"""A Django email backend for an HTTP batch-sending API, in the style of an ESP's.

High-volume senders do not speak SMTP to their email service provider: they post batches
of rendered messages to its HTTP API (SendGrid, Mailgun, Postmark, SES all have one).
``BatchEmailBackend`` is such a backend for Django (``EMAIL_BACKEND``), so
``channels.providers.email.EmailBackend`` — and any ``send_mail`` — can use it::

    EMAIL_BACKEND = "channels.providers.email_api.BatchEmailBackend"
    SALVO_EMAIL_API = {"url": "https://esp.example/v1/email", "api_key": "…"}

``send_messages`` posts ``{"messages": [{from, to, cc, bcc, reply_to, subject, text, html,
headers, idempotency_key}, …]}`` to ``{url}/batch`` and reads one result per message, like
the SMS bulk API (see ``channels.providers.http``). As django-anymail does, each message
gets its outcome as an attribute, ``message.salvo_outcome`` (a ``SendResult`` or a
``ProviderError``); ``send_messages`` returns how many were accepted and, unless
``fail_silently``, raises the first error.

The idempotency key is the message's ``X-Salvo-Delivery-Id`` header (set by the delivery
engine), which is then not sent as a header.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend

from . import OutboundMessage, ProviderError, SendResult
from .email import DELIVERY_ID_HEADER
from .http import BulkHttpProviderBackend

__all__ = ["BatchEmailBackend"]


class _EmailApi(BulkHttpProviderBackend):
    """The bulk HTTP client behind ``BatchEmailBackend`` (not a provider of its own)."""

    settings_name = "SALVO_EMAIL_API"

    def __init__(self) -> None:  # no preset: the Django backend has none
        pass

    def payload_for(self, message: OutboundMessage) -> dict[str, Any]:
        return dict(message.payload)


def _payload(email: EmailMessage) -> dict[str, Any]:
    html = ""
    for content, mimetype in getattr(email, "alternatives", None) or []:
        if mimetype == "text/html":
            html = str(content)
    headers = {str(k): str(v) for k, v in email.extra_headers.items()}
    headers.pop(DELIVERY_ID_HEADER, None)
    return {
        "from": email.from_email,
        "to": list(email.to),
        "cc": list(email.cc),
        "bcc": list(email.bcc),
        "reply_to": list(email.reply_to),
        "subject": str(email.subject),
        "text": str(email.body),
        "html": html,
        "headers": headers,
    }


def _idempotency_key(email: EmailMessage) -> int:
    value = str(email.extra_headers.get(DELIVERY_ID_HEADER, ""))
    if value.isdigit():
        return int(value)
    # Not from the delivery engine (e.g. Django's own mail): a provider remembers keys across
    # requests, so a fixed one would make it drop the next such email as a repeat. A random
    # negative key never meets a delivery id.
    return -(uuid.uuid4().int >> 66) - 1


class BatchEmailBackend(BaseEmailBackend):
    """Posts every message of a ``send_messages`` call in one request (or a few, of at most
    ``_EmailApi.max_batch``), over one kept-alive connection per open/close."""

    # Tells channels.providers.email.EmailBackend to read ``salvo_outcome`` per message.
    reports_each_message = True

    def __init__(self, fail_silently: bool = False, **kwargs: Any) -> None:
        super().__init__(fail_silently=fail_silently)
        self.api = _EmailApi()

    def open(self) -> bool:
        if self.api.pool is not None:
            return False
        self.api.open()
        return True

    def close(self) -> None:
        self.api.close()

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        if not email_messages:
            return 0
        opened_here = self.open()
        try:
            outbound = [
                OutboundMessage(
                    delivery_id=_idempotency_key(email),
                    channel="email",
                    to=",".join(email.to),
                    subject=str(email.subject),
                    body=str(email.body),
                    payload=_payload(email),
                )
                for email in email_messages
            ]
            outcomes = self.api.send_batch(outbound)
        finally:
            if opened_here:
                self.close()
        accepted = 0
        first_error: ProviderError | None = None
        for email, outcome in zip(email_messages, outcomes, strict=True):
            email.salvo_outcome = outcome  # type: ignore[attr-defined]
            if isinstance(outcome, SendResult):
                accepted += 1
            elif first_error is None:
                first_error = outcome
        if first_error is not None and not self.fail_silently:
            raise first_error
        return accepted
