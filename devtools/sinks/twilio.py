"""The sink's emulation of Twilio's Messages API (``POST /2010-04-01/Accounts/{sid}/
Messages.json``), for ``channels.providers.twilio`` driven by Twilio's own client.

It checks the basic auth (``ACCOUNT_SID`` / ``AUTH_TOKEN``), reads the form Twilio's client
posts, and answers as Twilio does: ``201`` with the message resource (``sid`` ``SM…``,
status ``queued``), or Twilio's error body (``code``, ``message``, ``more_info``,
``status``). Twilio's magic test numbers answer their errors (``MAGIC_NUMBERS``), and the
sink's failure rules apply to the ``To`` number: ``reject`` is 21211 (not a valid number),
``flaky`` 503, ``throttle`` 429 with ``Retry-After``. Twilio has no idempotency key: a
message posted twice is two messages, as ``RunningSinks.duplicates`` counts.

Each attempt is recorded on channel ``sms`` with the delivery id read from the message's
``StatusCallback`` URL (``?delivery=``), and with ``content`` the posted form.
"""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from email.utils import formatdate
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from .emulated import record_attempt

if TYPE_CHECKING:
    from .server import SinkServer

# The sink's Twilio account: what provider settings pointed at it authenticate with.
ACCOUNT_SID = "AC" + "5a1f0" * 6 + "00"
AUTH_TOKEN = "sink-twilio-auth-token"
MESSAGES_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<sid>[^/]+)/Messages\.json$")
# Twilio's test numbers and the error each answers (www.twilio.com/docs/iam/test-credentials).
MAGIC_NUMBERS: dict[str, tuple[int, str]] = {
    "+15005550001": (21211, "The 'To' number +15005550001 is not a valid phone number."),
    "+15005550002": (21612, "The 'To' phone number is not currently reachable via SMS."),
    "+15005550004": (21610, "Attempt to send to unsubscribed recipient"),
    "+15005550009": (21614, "'To' number +15005550009 is not a valid mobile number"),
}


def twilio_error(status: int, code: int, message: str) -> dict[str, Any]:
    """Twilio's JSON body of a refusal."""
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def _authorized(headers: dict[str, str], sid: str) -> bool:
    scheme, _, encoded = headers.get("authorization", "").partition(" ")
    try:
        credentials = base64.b64decode(encoded).decode()
    except ValueError:
        return False
    # The account in the URL must be the one authenticated, as Twilio requires.
    return (
        scheme.lower() == "basic"
        and sid == ACCOUNT_SID
        and credentials == (f"{ACCOUNT_SID}:{AUTH_TOKEN}")
    )


class TwilioEmulation:
    def __init__(self, sink: SinkServer) -> None:
        self.sink = sink

    def serves(self, path: str) -> bool:
        return MESSAGES_PATH.match(path) is not None

    async def answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes, peer: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        match = MESSAGES_PATH.match(path)
        assert match is not None
        sid = match["sid"]
        if method != "POST":
            return 405, twilio_error(405, 20004, "Method not allowed"), {}
        form = {k: v[0] for k, v in parse_qs(body.decode(errors="replace")).items()}
        to = form.get("To", "")
        callback_query = parse_qs(urlsplit(form.get("StatusCallback", "")).query)
        delivery_id = next(iter(callback_query.get("delivery", [])), None)
        attempt = self.sink._attempt("sms", delivery_id or to or path)
        rules = self.sink.rules
        delay = rules.delay_for(to)
        if delay:
            await asyncio.sleep(delay)
        extra: dict[str, str] = {}
        if not _authorized(headers, sid):
            status, answer = 401, twilio_error(401, 20003, "Authenticate")
        elif not to:
            status, answer = 400, twilio_error(400, 21604, "A 'To' phone number is required.")
        elif not (form.get("From") or form.get("MessagingServiceSid")):
            status, answer = 400, twilio_error(400, 21603, "A 'From' phone number is required.")
        elif to in MAGIC_NUMBERS:
            status, answer = 400, twilio_error(400, *MAGIC_NUMBERS[to])
        elif rules.rejects(to):
            message = f"The 'To' number {to} is not a valid phone number."
            status, answer = 400, twilio_error(400, 21211, message)
        elif rules.fails(to, attempt):
            status, answer = 503, twilio_error(503, 20503, "Service Unavailable")
        elif rules.throttles(to, attempt):
            status, answer = 429, twilio_error(429, 20429, "Too Many Requests")
            extra["Retry-After"] = f"{rules.retry_after_s:g}"
        else:
            status, answer = 201, self._message(sid, form)
        record_attempt(
            self.sink,
            channel="sms",
            provider="twilio",
            delivery_id=delivery_id,
            to=to,
            attempt=attempt,
            status=status,
            message_id=answer["sid"] if status == 201 else None,
            error_code=answer.get("code"),
            content={"path": path, "headers": headers, "peer": peer, "form": form},
        )
        return status, answer, extra

    @staticmethod
    def _message(account_sid: str, form: dict[str, str]) -> dict[str, Any]:
        """The message resource Twilio answers a created message with."""
        sid = "SM" + uuid.uuid4().hex
        now = formatdate(usegmt=True)
        return {
            "sid": sid,
            "account_sid": account_sid,
            "api_version": "2010-04-01",
            "body": form.get("Body", ""),
            "date_created": now,
            "date_updated": now,
            "date_sent": None,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": form.get("From"),
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "status": "queued",
            "to": form.get("To"),
            "uri": f"/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json",
        }
