"""Email through an email service provider's HTTP API, by django-anymail's own backends.

One class per ESP (``PostmarkBackend``, ``SendGridBackend``…), each naming anymail's
backend for it; a preset chooses one in its ``backend`` field, or ``SALVO_EMAIL_BACKEND``
makes one the default. Credentials and API URLs are anymail's settings (``ANYMAIL``,
filled from the environment in ``config.settings``), never the database.

A batch opens one anymail connection (one ``requests`` session, its connections kept
alive) and sends every message of every chunk over it. Each message carries:

* anymail metadata ``salvo_delivery_id`` (the tracking webhooks give it back);
* the ``X-Salvo-Delivery-Id`` header, the idempotency key every Salvo email carries;
* the message's own headers (``List-Unsubscribe``, ``List-Unsubscribe-Post``).

Batch sending: anymail sends one message with several ``to`` as the ESP's batch call
(Postmark's ``/email/batch``, SendGrid's personalizations), each recipient getting its own
metadata and headers (``merge_metadata``, ``merge_headers``), but the same subject and
body: anymail carries per-recipient content only as merge fields of a template stored at
the ESP. So messages whose rendered content is the same go as one batch call (of at most
``batch_size`` recipients, each address once); a personalised message, the common case,
goes alone, over the same kept-alive connection; except with SendGrid, which substitutes
merge fields without a stored template, so that its batch carries personalised content
too (``SendGridBackend``). Measured to the local sink (``bench_delivery``, 20,000
profiles × email + SMS on PostgreSQL, 2 workers): 745 deliveries/s with Postmark (a request
per email), 3,503/s with SendGrid (a request per 1,000 emails at most), beside 4,920/s and
4,474/s through Salvo's generic HTTP batch API in the same runs.

A batch the ESP refuses as a whole for a reason that retrying cannot cure (SendGrid answers
400 when one address is invalid) is sent again one message at a time, so only the refused
recipients fail.

Outcomes: a recipient anymail reports ``sent`` or ``queued`` is sent (its message id kept);
``rejected``, ``invalid`` or ``failed`` is a ``PermanentProviderError`` with the ESP's
answer; a timeout, a connection error, 408, 429 and 5xx are ``TransientProviderError``
(``Retry-After`` honoured). Amazon SES needs boto3, which Salvo does not install: it is
not registered here.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import ClassVar

import requests
from anymail.exceptions import AnymailError, AnymailRequestsAPIError
from anymail.message import AnymailMessage
from django.core.mail import get_connection
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
from .email import DELIVERY_ID_HEADER, preset_sender
from .http import MAX_REASON_CHARS, classify_status, parse_retry_after

__all__ = [
    "DELIVERY_ID_METADATA",
    "BrevoBackend",
    "EspBackend",
    "MailgunBackend",
    "PostmarkBackend",
    "ResendBackend",
    "SendGridBackend",
    "SparkPostBackend",
]

# The anymail metadata key that carries the delivery id (read back from tracking webhooks).
DELIVERY_ID_METADATA = "salvo_delivery_id"
# SendGrid's limit on the substitutions of one personalization (its documented maximum).
SENDGRID_SUBSTITUTIONS_MAX_BYTES = 10_000
# anymail's recipient statuses that mean the ESP took the message.
_ACCEPTED = frozenset({"sent", "queued"})


def _reason(text: str) -> str:
    return " ".join(text.split())[:MAX_REASON_CHARS]


def _api_error(error: AnymailRequestsAPIError, esp: str) -> ProviderError:
    """A refused or failed request: the ESP's status and answer, classified for retry."""
    response = error.response
    if response is None or error.status_code is None:  # timeout, connection refused…
        cause = error.__cause__ or error
        return TransientProviderError(_reason(f"{esp} cannot be reached: {cause}"))
    return classify_status(
        response.status_code,
        _reason(f"{esp} answered {response.status_code}: {response.text}"),
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )


def _said_about(answer: requests.Response | None, address: str) -> str:
    """What the ESP's answer says about ``address``: its own result in a batch answer
    (Postmark's list of results), else the whole answer."""
    if answer is None:
        return ""
    try:
        results = answer.json()
    except ValueError:
        return answer.text
    if isinstance(results, list):
        for result in results:
            said = json.dumps(result)
            if address.lower() in said.lower():
                return str(result.get("Message", said)) if isinstance(result, dict) else said
    return answer.text


class EspBackend(ProviderBackend):
    """Sends email through anymail's backend for one ESP (``anymail_backend``); each
    concrete subclass names its ESP and serves email."""

    # anymail's email backend for the ESP, e.g. "anymail.backends.postmark.EmailBackend".
    anymail_backend: ClassVar[str] = ""
    # Recipients of one batch call; 1: anymail's batch send is not used for this ESP.
    batch_size: ClassVar[int] = 1

    connection: BaseEmailBackend | None = None

    @property
    def esp(self) -> str:
        return type(self).__name__.removesuffix("Backend")

    def open(self) -> None:
        """Start the batch's HTTP session (missing credentials raise
        ``ImproperlyConfigured``: anymail reads them when the connection is made)."""
        if self.connection is not None:
            return
        # Each recipient's status is read here, so anymail must not raise when all refuse.
        connection = get_connection(
            self.anymail_backend, fail_silently=False, ignore_recipient_status=True
        )
        connection.open()
        self.connection = connection

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()

    @functools.cached_property
    def _sender(self) -> str:
        return preset_sender(self.preset)

    def content_key(self, message: OutboundMessage) -> tuple[str, ...]:
        """Messages of one key may share a batch call: by default, one rendered content."""
        return (message.subject, message.body, message.html_body)

    def batch_email(self, messages: Sequence[OutboundMessage]) -> AnymailMessage:
        """One anymail message to every recipient of ``messages`` (of one content key),
        with its content; recipients, headers and metadata are added by the caller."""
        first = messages[0]
        email = AnymailMessage(subject=first.subject, body=first.body)
        if first.html_body:
            email.attach_alternative(first.html_body, "text/html")
        return email

    def _email(self, messages: Sequence[OutboundMessage]) -> AnymailMessage:
        email = self.batch_email(messages)
        email.from_email = self._sender
        email.to = [message.to for message in messages]
        email.reply_to = [self.preset.reply_to] if self.preset.reply_to else []
        headers = {
            message.to: {**message.headers, DELIVERY_ID_HEADER: str(message.delivery_id)}
            for message in messages
        }
        metadata = {
            message.to: {DELIVERY_ID_METADATA: str(message.delivery_id)} for message in messages
        }
        if len(messages) == 1:
            email.extra_headers = headers[messages[0].to]
            email.metadata = metadata[messages[0].to]
        else:
            email.merge_headers = headers
            email.merge_metadata = metadata
        return email

    def _send_email(self, messages: Sequence[OutboundMessage]) -> list[SendResult | ProviderError]:
        """Send one anymail message to ``messages``' recipients: each one's outcome."""
        if self.connection is None:
            self.open()
        assert self.connection is not None
        try:
            email = self._email(messages)
            self.connection.send_messages([email])
        except AnymailRequestsAPIError as error:
            outcome = _api_error(error, self.esp)
            if len(messages) > 1 and isinstance(outcome, PermanentProviderError):
                # Refused as a whole: alone, only the refused recipients fail.
                return [self._send_email([message])[0] for message in messages]
            return [outcome] * len(messages)
        except (AnymailError, ValueError) as error:  # an address or header anymail refuses
            return [PermanentProviderError(_reason(f"Cannot build the email: {error}"))] * len(
                messages
            )
        except requests.RequestException as error:
            return [TransientProviderError(_reason(f"{self.esp} cannot be reached: {error}"))] * (
                len(messages)
            )
        statuses = email.anymail_status.recipients
        answer = email.anymail_status.esp_response
        outcomes: list[SendResult | ProviderError] = []
        for message in messages:
            status = statuses.get(message.to)
            if status is not None and status.status in _ACCEPTED:
                outcomes.append(SendResult(provider_message_id=str(status.message_id or "")))
            elif status is None or status.status == "unknown":
                outcomes.append(
                    TransientProviderError(f"{self.esp} gave no status for {message.to}.")
                )
            else:
                said = _said_about(answer, message.to)
                outcomes.append(
                    PermanentProviderError(
                        _reason(f"{self.esp}: {message.to} {status.status}: {said}")
                    )
                )
        return outcomes

    def _batches(self, messages: Sequence[OutboundMessage]) -> list[list[int]]:
        """Positions of ``messages`` grouped into batch calls: one content key, each
        address once, at most ``batch_size``; in the order of their first message."""
        batches: list[list[int]] = []
        open_batch: dict[tuple[str, ...], tuple[list[int], set[str]]] = {}
        for position, message in enumerate(messages):
            content = self.content_key(message)
            address = message.to.lower()
            batch = open_batch.get(content)
            if batch is None or address in batch[1] or len(batch[0]) >= self.batch_size:
                batch = ([], set())
                open_batch[content] = batch
                batches.append(batch[0])
            batch[0].append(position)
            batch[1].add(address)
        return batches

    def send(self, message: OutboundMessage) -> SendResult:
        outcome = self.send_batch([message])[0]
        if isinstance(outcome, ProviderError):
            raise outcome
        return outcome

    def send_batch(self, messages: Sequence[OutboundMessage]) -> list[SendResult | ProviderError]:
        outcomes: list[SendResult | ProviderError | None] = [None] * len(messages)
        opened_here = self.connection is None
        if opened_here and messages:
            self.open()
        try:
            for batch in self._batches(messages):
                sent = self._send_email([messages[position] for position in batch])
                for position, outcome in zip(batch, sent, strict=True):
                    outcomes[position] = outcome
        finally:
            if opened_here:
                self.close()
        return [outcome for outcome in outcomes if outcome is not None]


class PostmarkBackend(EspBackend):
    """Postmark (``ANYMAIL["POSTMARK_SERVER_TOKEN"]``, ``POSTMARK_API_URL``); a batch of
    one content goes to ``/email/batch``, at most 500 messages per call (Postmark's limit)."""

    channels = frozenset({ChannelKind.EMAIL})
    anymail_backend = "anymail.backends.postmark.EmailBackend"
    batch_size = 500


class SendGridBackend(EspBackend):
    """SendGrid v3 (``SENDGRID_API_KEY``, ``SENDGRID_API_URL``): a batch is one
    ``/mail/send`` with a personalization per recipient, at most 1000 (SendGrid's limit).

    SendGrid substitutes per-personalization values in the subject, the content and the
    headers without a stored template, so personalised messages share a batch too: the
    content is ``-salvo_subject-``, ``-salvo_text-`` (``-salvo_html-``) and each
    recipient's rendered content is its merge data. A message whose content passes
    SendGrid's 10,000 bytes of substitutions per personalization goes alone."""

    channels = frozenset({ChannelKind.EMAIL})
    anymail_backend = "anymail.backends.sendgrid.EmailBackend"
    batch_size = 1000

    def content_key(self, message: OutboundMessage) -> tuple[str, ...]:
        size = sum(
            len(part.encode()) for part in (message.subject, message.body, message.html_body)
        )
        if size > SENDGRID_SUBSTITUTIONS_MAX_BYTES:
            return super().content_key(message)
        return ("substituted", "html" if message.html_body else "")

    def batch_email(self, messages: Sequence[OutboundMessage]) -> AnymailMessage:
        if len(messages) == 1:
            return super().batch_email(messages)
        email = AnymailMessage(subject="-salvo_subject-", body="-salvo_text-")
        if messages[0].html_body:
            email.attach_alternative("-salvo_html-", "text/html")
        email.merge_data = {
            message.to: {
                "salvo_subject": message.subject,
                "salvo_text": message.body,
                **({"salvo_html": message.html_body} if message.html_body else {}),
            }
            for message in messages
        }
        email.esp_extra = {"merge_field_format": "-{}-"}
        return email


# ESPs sent one message per recipient: anymail's batch send is there for them too, but no
# local emulation of their API checks it, so Salvo does not rely on it.
class MailgunBackend(EspBackend):
    """Mailgun (``MAILGUN_API_KEY``, ``MAILGUN_API_URL``, ``MAILGUN_SENDER_DOMAIN``)."""

    channels = frozenset({ChannelKind.EMAIL})
    anymail_backend = "anymail.backends.mailgun.EmailBackend"


class SparkPostBackend(EspBackend):
    """SparkPost (``SPARKPOST_API_KEY``, ``SPARKPOST_API_URL``)."""

    channels = frozenset({ChannelKind.EMAIL})
    anymail_backend = "anymail.backends.sparkpost.EmailBackend"


class BrevoBackend(EspBackend):
    """Brevo, formerly Sendinblue (``BREVO_API_KEY``, ``BREVO_API_URL``)."""

    channels = frozenset({ChannelKind.EMAIL})
    anymail_backend = "anymail.backends.brevo.EmailBackend"


class ResendBackend(EspBackend):
    """Resend (``RESEND_API_KEY``, ``RESEND_API_URL``)."""

    channels = frozenset({ChannelKind.EMAIL})
    anymail_backend = "anymail.backends.resend.EmailBackend"
