"""The HTTP sink's emulation of email service providers' send APIs, as django-anymail
calls them (``channels.providers.esp``), so tests and benchmarks run anymail's real code:

* Postmark under ``/postmark/`` (``POSTMARK_API_URL=<sink>/postmark/``): ``POST email``
  (one message) and ``POST email/batch`` (a JSON list of messages, one result each, in
  order), authenticated by ``X-Postmark-Server-Token``;
* SendGrid v3 under ``/sendgrid/v3/`` (``SENDGRID_API_URL=<sink>/sendgrid/v3/``):
  ``POST mail/send`` with one personalization per recipient (its ``substitutions``
  applied to the subject, content and headers, as SendGrid does), authenticated by
  ``Authorization: Bearer``; 202 with an ``X-Message-Id`` header, no body;
* Mailgun under ``/mailgun/v3/`` (``MAILGUN_API_URL=<sink>/mailgun/v3``): ``POST
  <domain>/messages``, a multipart/form-data or URL-encoded form (repeated ``to``;
  ``recipient-variables`` substituted as ``%recipient.<name>%`` in the subject, bodies,
  ``h:`` headers and ``v:`` variables, each recipient's own), authenticated by HTTP basic
  ``api:<key>``; 200 with ``{"id": "<…@domain>", "message": "Queued. Thank you."}``, 400
  ``{"message": …}`` for a bad request or an invalid address, 401 for a wrong key;
* Amazon SES v2 under ``/ses/``, signed with AWS Signature Version 4: ``devtools.sinks.ses``.

Each recipient is recorded as the other sinks record a message (channel ``email``, its
delivery id from the ``X-Salvo-Delivery-Id`` header or the ``salvo_delivery_id``
metadata) and ``in_flight``, the HTTP requests the sink was serving as it answered (the
most over a client's records is how many requests it had in flight at once), with ``esp``,
``subject``, ``text``, ``html``, ``headers`` and ``metadata`` when the sink keeps content.
Like SMTP and unlike the sink's own API, these ESPs know no idempotency key: a message sent
twice is delivered twice, and ``duplicates()`` counts it.

The failure rules answer as each ESP does: a rejected recipient is Postmark's "inactive
recipient" (error 406: HTTP 422 alone, or its result in a batch), SendGrid's and Mailgun's
400 for the whole request; a flaky or throttled recipient fails its whole request (503, or 429 with
``Retry-After``), since neither API reports a retryable error per message.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email.parser
import email.policy
import email.utils
import json
import re
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import SinkServer

# The key every ESP emulation accepts (``RunningSinks.provider_settings`` sends it).
SINK_API_KEY = "sink-key"
DELIVERY_ID_HEADER = "X-Salvo-Delivery-Id"
DELIVERY_ID_METADATA = "salvo_delivery_id"
POSTMARK_PREFIX = "/postmark/"
SENDGRID_PREFIX = "/sendgrid/v3/"
MAILGUN_PREFIX = "/mailgun/v3/"
# Amazon SES v2 (and SNS's subscription confirmation): devtools.sinks.ses.
SES_PREFIX = "/ses/"
# Mailgun's limit on the recipients of one batch call.
MAILGUN_BATCH_MAX_RECIPIENTS = 1000

# (status, JSON answer or None for no body, extra response headers)
Answer = tuple[int, Any, dict[str, str]]


def _json(body: bytes | str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _delivery_id(headers: Mapping[str, str], metadata: Mapping[str, Any]) -> str | None:
    for name, value in headers.items():
        if name.lower() == DELIVERY_ID_HEADER.lower():
            return str(value)
    key = metadata.get(DELIVERY_ID_METADATA)
    return str(key) if key is not None else None


def _attempt_key(recipient: str, content: Mapping[str, Any]) -> str:
    """What the sink counts attempts by: the delivery id, else the address."""
    return _delivery_id(content["headers"], content["metadata"]) or recipient


def _whole_request_failure(
    sink: SinkServer, received: list[tuple[str, dict[str, Any]]]
) -> Answer | None:
    """503 or 429 for the request when a recipient of it is flaky or throttled (this
    attempt counted for each message by ``_record``), as an ESP's overloaded front end
    answers."""
    for recipient, content in received:
        attempt = sink._attempts.count("email", _attempt_key(recipient, content)) + 1
        if sink.rules.fails(recipient, attempt):
            return 503, {"ErrorCode": 500, "Message": "Service temporarily unavailable"}, {}
        if sink.rules.throttles(recipient, attempt):
            retry_after = {"Retry-After": f"{sink.rules.retry_after_s:g}"}
            return 429, {"ErrorCode": 429, "Message": "Rate limit exceeded"}, retry_after
    return None


def _record(
    sink: SinkServer, esp: str, path: str, received: list[tuple[str, dict[str, Any], int, str]]
) -> None:
    """One record per recipient: (address, content, HTTP status of it, message id)."""
    records = []
    for recipient, content, status, message_id in received:
        delivery_id = _delivery_id(content["headers"], content["metadata"])
        record: dict[str, Any] = {
            "channel": "email",
            "delivery_id": delivery_id,
            "to": recipient,
            "status": status,
            "accepted": status == 200,
            "attempt": sink._attempt("email", delivery_id or recipient),
            # Requests the sink was serving as it answered this one, itself included: the
            # most over a client's requests is how many it had in flight at once.
            "in_flight": sink.http_in_flight,
        }
        if message_id:
            record["message_id"] = message_id
        if sink.content:
            record |= {"esp": esp, "path": path, **content}
        records.append(record)
    sink._record_many(records)


def _postmark_content(message: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "from": message.get("From", ""),
        "subject": message.get("Subject", ""),
        "text": message.get("TextBody", ""),
        "html": message.get("HtmlBody", ""),
        "reply_to": message.get("ReplyTo", ""),
        "headers": {h["Name"]: h["Value"] for h in message.get("Headers") or []},
        "metadata": dict(message.get("Metadata") or {}),
    }


def _postmark_result(sink: SinkServer, message: Mapping[str, Any]) -> dict[str, Any]:
    """Postmark's answer to one message: accepted, or its inactive recipient refused."""
    to = str(message.get("To", ""))
    now = dt.datetime.now(dt.UTC).isoformat()
    if sink.rules.rejects(to):
        return {
            "ErrorCode": 406,
            "Message": "You tried to send to a recipient that has been marked as inactive.\n"
            f"Found inactive addresses: {to.lower()}.\n"
            "Inactive recipients are ones that have generated a hard bounce or a spam "
            "complaint.",
        }
    message_id = str(uuid.uuid4())
    return {"To": to, "SubmittedAt": now, "MessageID": message_id, "ErrorCode": 0, "Message": "OK"}


async def postmark(sink: SinkServer, path: str, headers: dict[str, str], body: bytes) -> Answer:
    if headers.get("x-postmark-server-token") != SINK_API_KEY:
        return (
            401,
            {"ErrorCode": 10, "Message": "Request does not contain a valid Server token."},
            {},
        )
    endpoint = path.removeprefix(POSTMARK_PREFIX).rstrip("/")
    data = _json(body)
    if endpoint == "email/batch" and isinstance(data, list):
        messages, batch = data, True
    elif endpoint == "email" and isinstance(data, dict):
        messages, batch = [data], False
    else:
        return 422, {"ErrorCode": 402, "Message": f"Invalid JSON for {endpoint}"}, {}
    recipients = [str(message.get("To", "")) for message in messages]
    await _delay(sink, recipients)
    contents = [_postmark_content(message) for message in messages]
    failure = _whole_request_failure(sink, list(zip(recipients, contents, strict=True)))
    if failure is not None:
        statuses = [failure[0]] * len(messages)
        results: list[dict[str, Any]] = []
    else:
        results = [_postmark_result(sink, message) for message in messages]
        statuses = [200 if result["ErrorCode"] == 0 else 422 for result in results]
    message_ids = [result.get("MessageID", "") for result in results] or [""] * len(messages)
    _record(
        sink, "postmark", path, list(zip(recipients, contents, statuses, message_ids, strict=True))
    )
    if failure is not None:
        return failure
    if batch:
        return 200, results, {}
    return (200 if results[0]["ErrorCode"] == 0 else 422), results[0], {}


def _substituted(text: str, substitutions: Mapping[str, Any]) -> str:
    """SendGrid's substitutions: each tag replaced by its personalization's value."""
    if not substitutions or not text:
        return text
    pattern = re.compile("|".join(re.escape(tag) for tag in substitutions))
    return pattern.sub(lambda match: str(substitutions[match.group(0)] or ""), text)


def _sendgrid_messages(data: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(recipient, content as delivered) for every ``to`` of every personalization."""
    content = {part.get("type"): part.get("value", "") for part in data.get("content") or []}
    sender = data.get("from") or {}
    received = []
    for personalization in data.get("personalizations") or []:
        substitutions = personalization.get("substitutions") or {}

        def sub(text: str, substitutions: Mapping[str, Any] = substitutions) -> str:
            return _substituted(text, substitutions)

        headers = {**(data.get("headers") or {}), **(personalization.get("headers") or {})}
        metadata = {**(data.get("custom_args") or {}), **(personalization.get("custom_args") or {})}
        for to in personalization.get("to") or []:
            received.append(
                (
                    str(to.get("email", "")),
                    {
                        "from": sender.get("email", ""),
                        "subject": sub(personalization.get("subject", data.get("subject", ""))),
                        "text": sub(content.get("text/plain", "")),
                        "html": sub(content.get("text/html", "")),
                        "reply_to": (data.get("reply_to") or {}).get("email", ""),
                        "headers": {name: sub(str(value)) for name, value in headers.items()},
                        "metadata": metadata,
                    },
                )
            )
    return received


async def sendgrid(sink: SinkServer, path: str, headers: dict[str, str], body: bytes) -> Answer:
    if headers.get("authorization") != f"Bearer {SINK_API_KEY}":
        message = "The provided authorization grant is invalid, expired, or revoked"
        return 401, {"errors": [{"message": message, "field": None, "help": None}]}, {}
    data = _json(body)
    if path.removeprefix(SENDGRID_PREFIX) != "mail/send" or not isinstance(data, dict):
        return 404, {"errors": [{"message": "Not found", "field": None, "help": None}]}, {}
    received = _sendgrid_messages(data)
    recipients = [recipient for recipient, _ in received]
    await _delay(sink, recipients)
    failure = _whole_request_failure(sink, received)
    refused = [n for n, recipient in enumerate(recipients) if sink.rules.rejects(recipient)]
    if failure is None and refused:
        error = {
            "message": "Does not contain a valid address.",
            "field": f"personalizations.{refused[0]}.to.0.email",
            "help": "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html",
        }
        failure = 400, {"errors": [error]}, {}
    if failure is not None:
        _record(sink, "sendgrid", path, [(r, c, failure[0], "") for r, c in received])
        return failure
    message_id = uuid.uuid4().hex[:22]
    _record(sink, "sendgrid", path, [(r, c, 200, message_id) for r, c in received])
    return 202, None, {"X-Message-Id": message_id}


def _form(headers: Mapping[str, str], body: bytes) -> list[tuple[str, str]] | None:
    """The fields of a form as Mailgun reads it, multipart/form-data or URL-encoded (anymail
    posts the latter unless there are attachments), each repeated field in order."""
    content_type = headers.get("content-type", "")
    if content_type.startswith("application/x-www-form-urlencoded"):
        return urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
    if not content_type.startswith("multipart/form-data"):
        return None
    parsed = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    if not parsed.is_multipart():
        return None
    fields = []
    for part in parsed.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str) and part.get_filename() is None:
            fields.append((name, part.get_content()))
    return fields


_RECIPIENT_VARIABLE = re.compile(r"%recipient\.([^%]+)%")


def _mailgun_messages(fields: list[tuple[str, str]]) -> list[tuple[str, dict[str, Any]]]:
    """(recipient, content as delivered) for every ``to``: with ``recipient-variables`` (a
    batch) each recipient's ``%recipient.<name>%`` replaced by its own value (an unknown
    name by nothing), as Mailgun does in the subject, the bodies, ``h:`` headers and ``v:``
    variables."""
    single: dict[str, str] = {}
    for name, value in fields:
        single.setdefault(name, value)
    variables = _json(single.get("recipient-variables", "")) or {}
    received = []
    for to in (value for name, value in fields if name == "to"):
        address = email.utils.parseaddr(to)[1]
        own = variables.get(address) or {}

        def sub(text: str, own: Mapping[str, Any] = own) -> str:
            return _RECIPIENT_VARIABLE.sub(lambda match: str(own.get(match.group(1), "")), text)

        headers = {name[2:]: sub(value) for name, value in single.items() if name[:2] == "h:"}
        received.append(
            (
                address,
                {
                    "from": single.get("from", ""),
                    "subject": sub(single.get("subject", "")),
                    "text": sub(single.get("text", "")),
                    "html": sub(single.get("html", "")),
                    "reply_to": headers.pop("Reply-To", ""),
                    "headers": headers,
                    "metadata": {
                        name[2:]: sub(value) for name, value in single.items() if name[:2] == "v:"
                    },
                },
            )
        )
    return received


async def mailgun(sink: SinkServer, path: str, headers: dict[str, str], body: bytes) -> Answer:
    expected = base64.b64encode(f"api:{SINK_API_KEY}".encode()).decode()
    if headers.get("authorization") != f"Basic {expected}":
        return 401, {"message": "Invalid private key"}, {}
    domain, _, endpoint = path.removeprefix(MAILGUN_PREFIX).partition("/")
    if endpoint.rstrip("/") != "messages" or not domain:
        return 404, {"message": "Not Found"}, {}
    fields = _form(headers, body)
    if fields is None:
        return 400, {"message": "Expected a multipart/form-data or URL-encoded form"}, {}
    received = _mailgun_messages(fields)
    if not received:
        return 400, {"message": "'to' parameter is missing"}, {}
    if len(received) > MAILGUN_BATCH_MAX_RECIPIENTS:
        return 400, {"message": "Too many recipients"}, {}
    recipients = [recipient for recipient, _ in received]
    await _delay(sink, recipients)
    failure = _whole_request_failure(sink, received)
    if failure is None and any(sink.rules.rejects(recipient) for recipient in recipients):
        message = "to parameter is not a valid address. please check documentation"
        failure = 400, {"message": message}, {}
    if failure is not None:
        _record(sink, "mailgun", path, [(r, c, failure[0], "") for r, c in received])
        return failure
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    message_id = f"<{now}.{uuid.uuid4().hex[:16]}@{domain}>"
    _record(sink, "mailgun", path, [(r, c, 200, message_id) for r, c in received])
    return 200, {"id": message_id, "message": "Queued. Thank you."}, {}


async def _delay(sink: SinkServer, recipients: list[str]) -> None:
    # A slow recipient holds up the whole request, as one slow provider call would.
    delay = max((sink.rules.delay_for(recipient) for recipient in recipients), default=0.0)
    if delay:
        await asyncio.sleep(delay)


async def amazon_ses(sink: SinkServer, path: str, headers: dict[str, str], body: bytes) -> Answer:
    """Amazon SES v2, in a module of its own that builds on this one's helpers."""
    from .ses import ses

    return await ses(sink, path, headers, body)


EspApi = Callable[["SinkServer", str, dict[str, str], bytes], Awaitable[Answer]]
ESP_APIS: dict[str, EspApi] = {
    POSTMARK_PREFIX: postmark,
    SENDGRID_PREFIX: sendgrid,
    MAILGUN_PREFIX: mailgun,
    SES_PREFIX: amazon_ses,
}


def esp_api(path: str) -> EspApi | None:
    """The emulated ESP API that serves ``path``, if any."""
    # boto3 posts SNS's query API to the endpoint itself: "/ses", without the slash.
    return next((api for prefix, api in ESP_APIS.items() if f"{path}/".startswith(prefix)), None)


def anymail_settings(http_url: str) -> dict[str, str]:
    """anymail's settings (or environment variables) that send to these emulations."""
    return {
        "POSTMARK_SERVER_TOKEN": SINK_API_KEY,
        "POSTMARK_API_URL": f"{http_url}{POSTMARK_PREFIX}",
        "SENDGRID_API_KEY": SINK_API_KEY,
        "SENDGRID_API_URL": f"{http_url}{SENDGRID_PREFIX}",
        "MAILGUN_API_KEY": SINK_API_KEY,
        "MAILGUN_API_URL": f"{http_url}{MAILGUN_PREFIX}",
    }
