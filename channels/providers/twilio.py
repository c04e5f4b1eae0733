"""SMS through Twilio's Messages API, with Twilio's own client (``twilio.rest.Client``).

One client per batch: its ``requests`` session keeps the connection to Twilio alive from
one message to the next (Twilio has no bulk endpoint for messages). The account's
credentials come from the settings (``SALVO_TWILIO``, from the environment), never from a
preset; the preset's ``sms_sender_id`` is the ``From``, and a configured Messaging Service
goes with every message. With ``SALVO_PUBLIC_URL`` set, each message asks Twilio to report
its fate to Salvo's status callback (``campaigns.webhooks.twilio``), the delivery id in the
callback's query.

Twilio's answers are classified as the other HTTP providers' are: a timeout, a connection
error, 429 and 5xx are worth retrying (``Retry-After`` honoured); any other refusal is
permanent, with Twilio's own message and error code. Some codes say something of the number
itself (``SUPPRESSION_BY_ERROR_CODE``): a refusal with one of them asks the engine to put
the number on the suppression list, and so does a status callback carrying one.
"""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar

import requests
from django.conf import settings
from django.urls import reverse
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from channels.choices import ChannelKind, SuppressionReason

from . import (
    OutboundMessage,
    PermanentProviderError,
    ProviderBackend,
    SendResult,
    TransientProviderError,
)
from .http import MAX_REASON_CHARS, parse_retry_after, request_failure

# Twilio error codes that say the number cannot be messaged, synchronous (the Messages API
# refused it) or asynchronous (a status callback's ErrorCode): what each puts on the
# suppression list. 30003/30005/30006: unreachable handset, unknown number, landline or
# unreachable carrier; 21211/21614: not a valid (mobile) number; 21610: the recipient
# replied STOP. 30007 (carrier filtering) is about the message, not the number: none.
SUPPRESSION_BY_ERROR_CODE: dict[int, str] = {
    21211: SuppressionReason.INVALID_ADDRESS,
    21614: SuppressionReason.INVALID_ADDRESS,
    30003: SuppressionReason.INVALID_ADDRESS,
    30005: SuppressionReason.INVALID_ADDRESS,
    30006: SuppressionReason.INVALID_ADDRESS,
    21610: SuppressionReason.UNSUBSCRIBED,
}

# The query parameter of the status callback's URL that carries the delivery id.
CALLBACK_DELIVERY_PARAM = "delivery"


def status_callback_url(delivery_id: int) -> str:
    """Where Twilio reports the message's status ('' without ``SALVO_PUBLIC_URL``)."""
    if not settings.SALVO_PUBLIC_URL:
        return ""
    path = reverse("twilio-status")
    return f"{settings.SALVO_PUBLIC_URL}{path}?{CALLBACK_DELIVERY_PARAM}={delivery_id}"


class _HttpClient(TwilioHttpClient):
    """Twilio's HTTP client, keeping the last answer so that a refusal's ``Retry-After``
    can be read (Twilio's exceptions carry the status and body, not the headers)."""

    last_response: Response | None = None

    def request(self, *args: Any, **kwargs: Any) -> Response:
        self.last_response = None
        self.last_response = super().request(*args, **kwargs)
        return self.last_response


class TwilioSmsBackend(ProviderBackend):
    """One ``Messages.create`` per message, over one kept-alive session per batch."""

    channels = frozenset({ChannelKind.SMS})
    provider: ClassVar[str] = "twilio"

    client: Client | None = None
    http_client: _HttpClient | None = None

    def open(self) -> None:
        if self.client is not None:
            return
        config = settings.SALVO_TWILIO
        if not (config["account_sid"] and config["auth_token"]):
            raise TransientProviderError(
                "Twilio is not configured: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN."
            )
        self.http_client = _HttpClient(
            timeout=settings.SALVO_PROVIDER_TIMEOUT_S,
            logger=logging.getLogger("twilio.http_client"),
        )
        self.client = Client(
            config["account_sid"],
            config["auth_token"],
            http_client=self.http_client,
            # Region and edge come from here only, not from TWILIO_REGION/TWILIO_EDGE.
            environment={},
        )
        # The REST API's base URL: Twilio's, or an emulation's (the local sink).
        self.client.api.base_url = config["api_url"].rstrip("/")

    def close(self) -> None:
        http_client, self.client, self.http_client = self.http_client, None, None
        if http_client is not None and http_client.session is not None:
            http_client.session.close()

    def send(self, message: OutboundMessage) -> SendResult:
        opened_here = self.client is None
        self.open()
        assert self.client is not None
        options: dict[str, Any] = {"to": message.to, "body": message.body}
        if self.preset.sms_sender_id:
            options["from_"] = self.preset.sms_sender_id
        if settings.SALVO_TWILIO["messaging_service_sid"]:
            options["messaging_service_sid"] = settings.SALVO_TWILIO["messaging_service_sid"]
        callback = status_callback_url(message.delivery_id)
        if callback:
            options["status_callback"] = callback
        try:
            created = self.client.messages.create(**options)
        except (TwilioRestException, TwilioServiceException) as error:
            raise self._refusal(error) from error
        except requests.RequestException as error:
            raise request_failure("Twilio", error) from error
        finally:
            if opened_here:
                self.close()
        return SendResult(provider_message_id=str(created.sid))

    def _refusal(
        self, error: TwilioRestException | TwilioServiceException
    ) -> TransientProviderError | PermanentProviderError:
        """The refusal, with Twilio's own message (the exception's text prefixes the
        client's) and the answer's ``Retry-After``."""
        answer = self.http_client.last_response if self.http_client is not None else None
        try:
            body = json.loads(answer.text) if answer is not None else None
        except ValueError:
            body = None
        text = body.get("message") if isinstance(body, dict) else None
        return twilio_refusal(
            status=int(error.status),
            code=error.code,
            text=str(text or getattr(error, "msg", "") or getattr(error, "detail", "") or ""),
            retry_after=parse_retry_after(
                answer.headers.get("Retry-After") if answer is not None and answer.headers else None
            ),
        )


def twilio_refusal(
    *, status: int, code: int | None, text: str, retry_after: float | None = None
) -> TransientProviderError | PermanentProviderError:
    """The error for a message Twilio refused with ``status`` and its error ``code``."""
    reason = f"Twilio {code or status}: {text}"[:MAX_REASON_CHARS]
    if status in (408, 429) or status >= 500:
        return TransientProviderError(reason, retry_after=retry_after)
    return PermanentProviderError(reason, suppress=SUPPRESSION_BY_ERROR_CODE.get(code or 0, ""))
