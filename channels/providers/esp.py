"""Email through an email service provider's HTTP API, by django-anymail's own backends.

One class per ESP (``PostmarkBackend``, ``SendGridBackend``…), each naming anymail's
backend for it; a preset chooses one in its ``backend`` field, or ``SALVO_EMAIL_BACKEND``
makes one the default. Credentials and API URLs are anymail's settings (``ANYMAIL``,
filled from the environment in ``config.settings``), never the database.

A batch opens an anymail connection (a ``requests`` session, its connections kept alive)
and sends every message of every chunk over it; more connections as concurrent calls need
them (below). Each message carries:

* anymail metadata ``salvo_delivery_id`` (the tracking webhooks give it back);
* the ``X-Salvo-Delivery-Id`` header, the idempotency key every Salvo email carries;
* the message's own headers (``List-Unsubscribe``, ``List-Unsubscribe-Post``).

Batch sending: anymail sends one message with several ``to`` as the ESP's batch call
(Postmark's ``/email/batch``, SendGrid's personalizations, Mailgun's recipient variables),
each recipient getting its own metadata and headers (``merge_metadata``, ``merge_headers``).
Per-recipient content needs the ESP to substitute merge fields without a stored template:
Mailgun (``%recipient.<name>%``) and SendGrid (``-<name>-``) do, so their batch carries
each recipient's rendered subject, text and HTML as merge data (``MailgunBackend``,
``SendGridBackend``). With the others only messages whose rendered content is the same go
as one batch call; a personalised message, the common case, goes alone, over a
kept-alive connection, beside other calls (concurrency, below). A batch never holds one
address twice, nor messages with different header names. Measured to the local sink
(``bench_delivery``, 20,000 profiles × email + SMS on PostgreSQL, 2 workers; each figure
beside Salvo's generic HTTP batch API in the same run, as the machine's load varies between
runs): 7,312 deliveries/s with Mailgun (9,538/s), 4,636/s with SendGrid (7,141/s), both a
request per 1,000 emails at most; 745/s with Postmark, a request per personalised email
(4,920/s); 623/s with Amazon SES, a signed ``SendEmail`` per email (9,196/s). Those two
were one request after the other; 8 at a time, in runs beside one at a time on the same
loaded machine: Postmark 888/s → 1,757/s, SES 311/s → 502/s, then bound by the CPU (the
README's benchmark section).

Concurrency: a chunk's calls (a batch call, or a personalised message alone) go
``SALVO_ESP_CONCURRENCY`` at a time (default 8; 1: one after the other), from a pool of
threads the batch keeps until it closes. The time of a call is spent waiting for the ESP,
and anymail and boto3 are blocking clients, so threads overlap the waits. Each call in
flight has a connection no other call is using (a ``requests.Session`` is not documented
thread-safe); Amazon SES's calls share the one boto3 client, which is. Nothing else of
Salvo's runs in those threads (no database: the engine records the outcomes). The chunk is
all that may be in flight, and a rate-limited preset's chunk is at most the tokens the
engine reserved for it (one second's worth of its rate), so concurrency never sends faster
than the preset allows. Once the ESP throttles a call (429, SES's throttling codes:
``EspThrottledError``), the calls of the batch not yet started are not made: their messages
come back transient with the same ``Retry-After``, and those in flight end with their own
answer. Outcomes come back in the batch's order whatever the order of the answers, and
``send_batch`` returns only when every call has ended.

A batch the ESP refuses as a whole for a reason that retrying cannot cure (SendGrid and
Mailgun answer 400 when one address is invalid) is sent again one message at a time, so
only the refused recipients fail.

Outcomes: a recipient anymail reports ``sent`` or ``queued`` is sent (its message id kept);
``rejected``, ``invalid`` or ``failed`` is a ``PermanentProviderError`` with the ESP's
answer; a timeout, a connection error, 408, 429 and 5xx are ``TransientProviderError``
(``Retry-After`` honoured; a 429 is an ``EspThrottledError``). A bug in one call is
logged and makes that call's messages transient, the others keeping their outcomes. Amazon
SES goes through boto3 rather than ``requests``: its errors are mapped the same way from
boto3's ``ClientError`` (``SesBackend``).
"""

from __future__ import annotations

import functools
import json
import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import requests
from anymail.exceptions import AnymailAPIError, AnymailError, AnymailRequestsAPIError
from anymail.message import AnymailMessage
from botocore.exceptions import NoCredentialsError
from django.conf import settings
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
    "EspThrottledError",
    "MailgunBackend",
    "PostmarkBackend",
    "ResendBackend",
    "SendGridBackend",
    "SesBackend",
    "SparkPostBackend",
]

# The anymail metadata key that carries the delivery id (read back from tracking webhooks).
DELIVERY_ID_METADATA = "salvo_delivery_id"
# SendGrid's limit on the substitutions of one personalization (its documented maximum).
SENDGRID_SUBSTITUTIONS_MAX_BYTES = 10_000
# The rendered content of one Mailgun batch call, all recipients together: well under the
# 25 MB Mailgun accepts per message, leaving room for the JSON of the recipient variables.
MAILGUN_BATCH_MAX_BYTES = 10_000_000
# SES's error codes for a sending rate or quota exceeded (v2 answers 429, v1 400): retried.
SES_THROTTLING_CODES = frozenset({"TooManyRequestsException", "Throttling", "ThrottlingException"})
# anymail's recipient statuses that mean the ESP took the message.
_ACCEPTED = frozenset({"sent", "queued"})

logger = logging.getLogger(__name__)


class EspThrottledError(TransientProviderError):
    """The ESP refused a call for its sending rate (HTTP 429, SES's throttling codes): the
    messages of the batch not yet sent wait as long (``send_batch``) rather than add to it."""


def _content_bytes(message: OutboundMessage) -> int:
    return sum(len(part.encode()) for part in (message.subject, message.body, message.html_body))


def _reason(text: str) -> str:
    return " ".join(text.split())[:MAX_REASON_CHARS]


def _api_error(error: AnymailRequestsAPIError, esp: str) -> ProviderError:
    """A refused or failed request: the ESP's status and answer, classified for retry."""
    response = error.response
    if response is None or error.status_code is None:  # timeout, connection refused…
        cause = error.__cause__ or error
        return TransientProviderError(_reason(f"{esp} cannot be reached: {cause}"))
    reason = _reason(f"{esp} answered {response.status_code}: {response.text}")
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if response.status_code == 429:
        return EspThrottledError(reason, retry_after=retry_after)
    return classify_status(response.status_code, reason, retry_after=retry_after)


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
    # The ESP's syntax for a per-recipient substitution in a batch call without a stored
    # template ("-{}-" for SendGrid), empty when it has none: batches then share one content.
    substitution: ClassVar[str] = ""
    # A message whose content passes this many bytes does not go by substitution.
    substitution_max_bytes: ClassVar[int] = 0
    # The rendered content one batch call may carry by substitution, all recipients together.
    batch_max_bytes: ClassVar[int | None] = None

    # Whether one anymail connection may carry calls from several threads at once: not
    # over requests (a ``requests.Session`` is not documented thread-safe, psf/requests#2766),
    # so each call in flight has its own connection, handed from call to call.
    shares_connection: ClassVar[bool] = False

    # The first connection, opened by ``open``; the others, opened as concurrent calls
    # need them, wait in ``_idle`` between calls, and ``close`` closes them all.
    connection: BaseEmailBackend | None = None
    _opened: list[BaseEmailBackend]
    _idle: queue.SimpleQueue[BaseEmailBackend]
    _pool: ThreadPoolExecutor | None = None

    @property
    def esp(self) -> str:
        return type(self).__name__.removesuffix("Backend")

    def open(self) -> None:
        """Start the batch's HTTP session (missing credentials raise
        ``ImproperlyConfigured``: anymail reads them when the connection is made)."""
        if self.connection is not None:
            return
        self._opened, self._idle = [], queue.SimpleQueue()
        self.connection = self._new_connection()
        self._idle.put(self.connection)

    def _new_connection(self) -> BaseEmailBackend:
        # Each recipient's status is read here, so anymail must not raise when all refuse.
        connection = get_connection(
            self.anymail_backend,
            fail_silently=False,
            ignore_recipient_status=True,
            **self.connection_options(),
        )
        connection.open()
        self._opened.append(connection)
        return connection

    def _borrow(self) -> BaseEmailBackend:
        """A connection no other call is using (the one shared where ``shares_connection``),
        opened when every connection is busy: at most one per call in flight."""
        assert self.connection is not None
        if self.shares_connection:
            return self.connection
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self._new_connection()

    def _give_back(self, connection: BaseEmailBackend) -> None:
        if not self.shares_connection:
            self._idle.put(connection)

    def connection_options(self) -> dict[str, object]:
        """Options of anymail's backend beyond its settings (none but for SES)."""
        return {}

    def api_error(self, error: AnymailAPIError) -> ProviderError:
        """A request the ESP refused or that failed, classified for retry."""
        if isinstance(error, AnymailRequestsAPIError):
            return _api_error(error, self.esp)
        # anymail could not read the ESP's answer, or refused the message itself.
        return PermanentProviderError(_reason(f"Cannot build the email: {error}"))

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        if self.connection is None:
            return
        self.connection = None
        for connection in self._opened:
            connection.close()
        self._opened.clear()

    @functools.cached_property
    def _sender(self) -> str:
        return preset_sender(self.preset)

    def content_key(self, message: OutboundMessage) -> tuple[str, ...]:
        """Messages of one key may share a batch call: one rendered content (any content
        where the ESP substitutes it per recipient, unless too big for that), one set of
        header names (so that no recipient gets another's header as an empty one)."""
        headers = tuple(sorted(name.lower() for name in message.headers))
        if self.substitution and _content_bytes(message) <= self.substitution_max_bytes:
            return ("substituted", "html" if message.html_body else "", *headers)
        return (message.subject, message.body, message.html_body, *headers)

    def batch_email(self, messages: Sequence[OutboundMessage]) -> AnymailMessage:
        """One anymail message to every recipient of ``messages`` (of one content key),
        with its content; recipients, headers and metadata are added by the caller. With
        several recipients and an ESP that substitutes, the content is made of merge
        fields and each recipient's rendered content is its merge data."""
        first = messages[0]
        if len(messages) == 1 or not self.substitution:
            email = AnymailMessage(subject=first.subject, body=first.body)
            if first.html_body:
                email.attach_alternative(first.html_body, "text/html")
            return email
        field = self.substitution.format
        email = AnymailMessage(subject=field("salvo_subject"), body=field("salvo_text"))
        if first.html_body:
            email.attach_alternative(field("salvo_html"), "text/html")
        email.merge_data = {
            message.to: {
                "salvo_subject": message.subject,
                "salvo_text": message.body,
                **({"salvo_html": message.html_body} if message.html_body else {}),
            }
            for message in messages
        }
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

    def _send_email(
        self, messages: Sequence[OutboundMessage], connection: BaseEmailBackend
    ) -> list[SendResult | ProviderError]:
        """Send one anymail message to ``messages``' recipients over ``connection``: each
        one's outcome."""
        try:
            email = self._email(messages)
            connection.send_messages([email])
        except AnymailAPIError as error:
            outcome = self.api_error(error)
            if len(messages) > 1 and isinstance(outcome, PermanentProviderError):
                # Refused as a whole: alone, only the refused recipients fail.
                return [self._send_email([message], connection)[0] for message in messages]
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
        address once, at most ``batch_size`` recipients and ``batch_max_bytes`` of
        substituted content; in the order of their first message."""
        batches: list[list[int]] = []
        # content key -> (positions, addresses, bytes of content)
        open_batch: dict[tuple[str, ...], tuple[list[int], set[str], list[int]]] = {}
        for position, message in enumerate(messages):
            content = self.content_key(message)
            address = message.to.lower()
            size = _content_bytes(message) if self.batch_max_bytes else 0
            batch = open_batch.get(content)
            if (
                batch is None
                or address in batch[1]
                or len(batch[0]) >= self.batch_size
                or (self.batch_max_bytes and batch[2][0] + size > self.batch_max_bytes)
            ):
                batch = ([], set(), [0])
                open_batch[content] = batch
                batches.append(batch[0])
            batch[0].append(position)
            batch[1].add(address)
            batch[2][0] += size
        return batches

    def send(self, message: OutboundMessage) -> SendResult:
        outcome = self.send_batch([message])[0]
        if isinstance(outcome, ProviderError):
            raise outcome
        return outcome

    def send_batch(self, messages: Sequence[OutboundMessage]) -> list[SendResult | ProviderError]:
        """Every message's outcome, in order. The batch's calls (``_batches``) go up to
        ``SALVO_ESP_CONCURRENCY`` at a time, each on a connection no other call is using;
        once the ESP throttles one, the calls not yet started are not made (``_send_call``).
        Returns only when every call has ended."""
        opened_here = self.connection is None
        if opened_here and messages:
            self.open()
        try:
            calls = self._batches(messages)
            throttle = _Throttle()
            self._sender  # noqa: B018 -- read once here, not by each thread at once

            def send(call: list[int]) -> list[SendResult | ProviderError]:
                return self._send_call([messages[position] for position in call], throttle)

            concurrency = min(settings.SALVO_ESP_CONCURRENCY, len(calls))
            if concurrency > 1:
                sent = list(self._thread_pool().map(send, calls))
            else:
                sent = [send(call) for call in calls]
        finally:
            if opened_here:
                self.close()
        outcomes: list[SendResult | ProviderError | None] = [None] * len(messages)
        for call, answers in zip(calls, sent, strict=True):
            for position, outcome in zip(call, answers, strict=True):
                outcomes[position] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    def _send_call(
        self, messages: list[OutboundMessage], throttle: _Throttle
    ) -> list[SendResult | ProviderError]:
        """One call's outcomes; without the call when the ESP throttled an earlier one of
        the batch (what is in flight ends with its own answer). Never raises: a bug in one
        call (logged) leaves the others' outcomes as they are."""
        if throttle.first is not None:
            waiting = _reason(f"Not sent: {self.esp} throttled the batch: {throttle.first}")
            return [EspThrottledError(waiting, retry_after=throttle.first.retry_after)] * len(
                messages
            )
        connection = None
        try:
            connection = self._borrow()
            outcomes = self._send_email(messages, connection)
        except Exception as error:
            logger.exception("%s backend failed on a call of %d messages", self.esp, len(messages))
            failed = TransientProviderError(_reason(f"{type(error).__name__}: {error}"))
            outcomes = [failed] * len(messages)
        finally:
            if connection is not None:
                self._give_back(connection)
        throttle.note(outcomes)
        return outcomes

    def _thread_pool(self) -> ThreadPoolExecutor:
        """The batch's threads, SALVO_ESP_CONCURRENCY at most, started as calls need them
        and ended by ``close``."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=settings.SALVO_ESP_CONCURRENCY, thread_name_prefix="salvo-esp"
            )
        return self._pool


class _Throttle:
    """The first answer of a batch's calls that says the ESP throttles (one per batch)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.first: EspThrottledError | None = None

    def note(self, outcomes: Sequence[SendResult | ProviderError]) -> None:
        throttled = next((o for o in outcomes if isinstance(o, EspThrottledError)), None)
        if throttled is not None:
            with self._lock:
                if self.first is None:
                    self.first = throttled


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
    SendGrid's 10,000 bytes of substitutions per personalization goes alone. anymail 15
    no longer supports SendGrid officially (it warns ``AnymailNotSupportedWarning`` when
    the connection opens); Mailgun does the same batching with official support."""

    channels = frozenset({ChannelKind.EMAIL})
    anymail_backend = "anymail.backends.sendgrid.EmailBackend"
    batch_size = 1000
    substitution = "-{}-"
    substitution_max_bytes = SENDGRID_SUBSTITUTIONS_MAX_BYTES

    def batch_email(self, messages: Sequence[OutboundMessage]) -> AnymailMessage:
        email = super().batch_email(messages)
        if email.merge_data:
            email.esp_extra = {"merge_field_format": self.substitution}
        return email


class MailgunBackend(EspBackend):
    """Mailgun (``MAILGUN_API_KEY``, ``MAILGUN_API_URL``, ``MAILGUN_SENDER_DOMAIN``, else
    the domain of the preset's sender): a batch is one ``/<domain>/messages`` to at most
    1000 recipients (Mailgun's limit) with ``recipient-variables``.

    Mailgun substitutes ``%recipient.<name>%`` anywhere in a batch message, so personalised
    messages share a batch: the content is ``%recipient.salvo_subject%``… and each
    recipient's rendered content is its merge data (anymail's ``merge_data``); its
    ``salvo_delivery_id`` (``merge_metadata``) and its headers (``merge_headers``) reach
    Mailgun the same way, as ``v:`` and ``h:`` fields whose values are recipient
    variables, so each recipient gets its own ``X-Salvo-Delivery-Id`` and
    ``List-Unsubscribe``. A batch carries at most ``MAILGUN_BATCH_MAX_BYTES`` of rendered
    content (Mailgun accepts messages up to 25 MB; the recipient variables are JSON, whose
    escapes may double non-ASCII text), and a bigger message goes alone."""

    channels = frozenset({ChannelKind.EMAIL})
    anymail_backend = "anymail.backends.mailgun.EmailBackend"
    batch_size = 1000
    substitution = "%recipient.{}%"
    substitution_max_bytes = MAILGUN_BATCH_MAX_BYTES
    batch_max_bytes = MAILGUN_BATCH_MAX_BYTES


# ESPs sent one message per recipient: anymail's batch send is there for them too, but no
# local emulation of their API checks it, so Salvo does not rely on it.
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


class SesBackend(EspBackend):
    """Amazon SES through its v2 API (anymail's backend, with boto3): the region and the
    endpoint from ``ANYMAIL["AMAZON_SES_CLIENT_PARAMS"]`` (``AMAZON_SES_REGION``,
    ``AMAZON_SES_ENDPOINT_URL``), the credentials as boto3 finds them (``AWS_ACCESS_KEY_ID``
    and ``AWS_SECRET_ACCESS_KEY``, or an instance role), an optional configuration set
    (``AMAZON_SES_CONFIGURATION_SET_NAME``) for the events SES publishes to SNS.

    One ``SendEmail`` call per message, over the batch's one boto3 client (its connections
    kept alive): anymail sends SES's bulk call, ``SendBulkEmail``, only for a template
    stored at SES (``template_id``), and without one it refuses ``merge_headers`` and
    ``merge_data``, so a per-recipient ``X-Salvo-Delivery-Id`` and ``List-Unsubscribe``
    could not go in one call. Each message is raw MIME built by anymail: Salvo's headers
    travel as headers, and the metadata (``salvo_delivery_id``) as anymail's
    ``X-Metadata`` JSON header, which SES's notifications give back in ``mail.headers``;
    the delivery id is also an SES message tag, given back in ``mail.tags``.

    boto3's own retries are off and its timeouts are Salvo's: a throttled or failed call
    comes back at once as a ``TransientProviderError`` and is retried by Salvo's back-off,
    like every other provider's (boto3 retrying inside would hide attempts and hold the
    worker). Errors: SES's code and message from boto3's ``ClientError``; throttling (429
    ``TooManyRequestsException``, v1's 400 ``Throttling``) and 5xx are transient,
    ``MessageRejected``, an invalid address, a bad signature (403) are permanent; no answer
    at all (connection refused, timeout) is transient."""

    channels = frozenset({ChannelKind.EMAIL})
    anymail_backend = "anymail.backends.amazon_ses.EmailBackend"
    # boto3's clients are thread-safe once made (its documentation's advice: one client
    # shared by the threads; the caveat, custom botocore event hooks, anymail registers
    # none), and anymail's SES backend keeps no state of a send but its client: the
    # concurrent calls share one, whose connection pool holds one connection per call.
    shares_connection = True

    @property
    def esp(self) -> str:
        return "Amazon SES"

    def _email(self, messages: Sequence[OutboundMessage]) -> AnymailMessage:
        email = super()._email(messages)
        # The delivery id as an SES message tag too: SES gives tags back in every event it
        # publishes, headers (anymail's X-Metadata) only if its event destination includes
        # them (campaigns.webhooks.anymail reads either).
        email.esp_extra = {
            "EmailTags": [{"Name": DELIVERY_ID_METADATA, "Value": str(messages[0].delivery_id)}]
        }
        return email

    def connection_options(self) -> dict[str, object]:
        params = dict(settings.ANYMAIL.get("AMAZON_SES_CLIENT_PARAMS") or {})
        timeout = settings.SALVO_PROVIDER_TIMEOUT_S
        params["config"] = {
            **(params.get("config") or {}),
            "retries": {"total_max_attempts": 1},
            "connect_timeout": timeout,
            "read_timeout": timeout,
            # botocore's default is 10: more concurrent calls would each open a connection
            # and drop it afterwards.
            "max_pool_connections": max(10, settings.SALVO_ESP_CONCURRENCY),
        }
        return {"client_params": params}

    def api_error(self, error: AnymailAPIError) -> ProviderError:
        answer = error.response if isinstance(error.response, dict) else None
        if isinstance(error.__cause__, NoCredentialsError):  # retried once they are set
            return TransientProviderError(
                f"{self.esp}: boto3 found no AWS credentials (set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or give the machine a role)."
            )
        if answer is None or "Error" not in answer:  # no answer: unreachable, timed out…
            cause = error.__cause__ or error
            return TransientProviderError(_reason(f"{self.esp} cannot be reached: {cause}"))
        code = str(answer["Error"].get("Code", ""))
        meta = answer.get("ResponseMetadata") or {}
        status = int(meta.get("HTTPStatusCode") or 400)
        reason = _reason(
            f"{self.esp} answered {status} {code}: {answer['Error'].get('Message', '')}"
        )
        retry_after = parse_retry_after((meta.get("HTTPHeaders") or {}).get("retry-after"))
        if code in SES_THROTTLING_CODES:
            return EspThrottledError(reason, retry_after=retry_after)
        return classify_status(status, reason, retry_after=retry_after)
