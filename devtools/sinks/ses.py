"""The HTTP sink's emulation of Amazon SES v2's ``SendEmail`` as django-anymail calls it
through boto3 (``channels.providers.esp.SesBackend``), under ``/ses/``: boto3's
``endpoint_url`` is ``<sink>/ses`` (``ses_client_params``, ``ses_env``).

* ``POST /ses/v2/email/outbound-emails``: anymail sends each message as
  ``{"Destination": {"ToAddresses": [...]}, "Content": {"Raw": {"Data": <base64 MIME>}}}``
  (never ``Content.Simple``: it builds the MIME message itself, its headers included, and
  puts its metadata in an ``X-Metadata`` JSON header). 200 ``{"MessageId": …}``.
* ``POST /ses/`` with ``Action=ConfirmSubscription`` (Amazon SNS's query API, which anymail's
  SES webhook calls, through the same ``endpoint_url``, to confirm a subscription):
  recorded as ``{"channel": "sns", …}`` and answered with SNS's XML.

Every request must carry AWS Signature Version 4 for ``SES_ACCESS_KEY_ID`` /
``SES_SECRET_ACCESS_KEY`` in ``SES_REGION``: the sink recomputes the signature with
botocore's own ``SigV4Auth`` over the request it received (the headers it names as signed,
the body's hash); a wrong one is SES's 403 ``SignatureDoesNotMatch``, an unknown key
``UnrecognizedClientException``. Errors answer as SES does: the code in the
``x-amzn-ErrorType`` header, ``{"message": …}`` in the body (what boto3 reads into its
``ClientError``).

Refusal rules as for the other ESPs: a rejected recipient is ``MessageRejected`` (400), a
flaky one ``ServiceUnavailable`` (503), a throttled one ``TooManyRequestsException`` (429,
without ``Retry-After``: SES sends none). Each recipient is recorded as the other ESP
emulations record theirs (``devtools.sinks.esp``), its delivery id from the
``X-Salvo-Delivery-Id`` header or the metadata, so a message sent twice is a duplicate.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import urllib.parse
import uuid
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from .esp import SES_PREFIX, Answer, _delay, _json, _record, _whole_request_failure

if TYPE_CHECKING:
    from .server import SinkServer

SES_SEND_PATH = "/ses/v2/email/outbound-emails"
SES_REGION = "eu-west-1"
SES_ACCESS_KEY_ID = "AKIASINKEXAMPLE00001"
SES_SECRET_ACCESS_KEY = "sink-secret-access-key"
# The service name SES v2 signs with (also SNS's own, for the confirmation).
_SIGNING_NAMES = {"email": "ses", "sns": "sns"}
# Headers anymail's MIME message carries of its own; the rest are the sender's.
_MESSAGE_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "reply-to",
        "x-metadata",
        "x-tag",
    }
)


def _error(status: int, code: str, message: str) -> Answer:
    return status, {"message": message}, {"x-amzn-ErrorType": f"{code}:"}


def _signature_refusal(
    headers: dict[str, str], path: str, body: bytes, *, service: str
) -> Answer | None:
    """None when the request carries a valid SigV4 signature for the sink's key, else
    the refusal SES answers."""
    authorization = headers.get("authorization", "")
    algorithm, _, fields = authorization.partition(" ")
    parts = dict(part.strip().partition("=")[::2] for part in fields.split(",") if "=" in part)
    credential = parts.get("Credential", "").split("/")
    amz_date = headers.get("x-amz-date", "")
    if algorithm != "AWS4-HMAC-SHA256" or len(credential) != 5 or not amz_date:
        return _error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    key_id, _date, region, signing_name, _ = credential
    if key_id != SES_ACCESS_KEY_ID:
        return _error(
            403,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    signed = parts.get("SignedHeaders", "").split(";")
    request = AWSRequest(
        method="POST",
        url=f"http://{headers.get('host', '')}{path}",
        headers={name: headers.get(name, "") for name in signed},
        data=body,
    )
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(
        Credentials(SES_ACCESS_KEY_ID, SES_SECRET_ACCESS_KEY), signing_name, SES_REGION
    )
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if region != SES_REGION or signing_name != service or parts.get("Signature") != expected:
        return _error(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. "
            "Consult the service documentation for details.",
        )
    return None


def _text(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    if part is None or part.get_content_subtype() != subtype:
        return ""
    return str(part.get_content())


def _raw_content(raw: bytes) -> dict[str, Any]:
    """The message as the recipient gets it: sender, subject, bodies, the sender's own
    headers, and anymail's metadata (its ``X-Metadata`` header)."""
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return {
        "from": str(message.get("From", "")),
        "subject": str(message.get("Subject", "")),
        "text": _text(message, "plain"),
        "html": _text(message, "html"),
        "reply_to": str(message.get("Reply-To", "")),
        "headers": {
            # A header folded right after its colon keeps the fold's blank: not the value's.
            name: str(value).strip()
            for name, value in message.items()
            if name.lower() not in _MESSAGE_HEADERS
        },
        "metadata": _json(str(message.get("X-Metadata", ""))) or {},
    }


async def ses(sink: SinkServer, path: str, headers: dict[str, str], body: bytes) -> Answer:
    if path.rstrip("/") == SES_PREFIX.rstrip("/"):
        return _sns_confirm(sink, path, headers, body)
    refusal = _signature_refusal(headers, path, body, service="ses")
    if refusal is not None:
        return refusal
    if path != SES_SEND_PATH:
        return _error(404, "NotFoundException", f"No SES API at {path}")
    data = _json(body)
    raw = ((data or {}).get("Content") or {}).get("Raw") or {}
    recipients = ((data or {}).get("Destination") or {}).get("ToAddresses") or []
    if not isinstance(data, dict) or not raw.get("Data") or not recipients:
        return _error(400, "BadRequestException", "Destination and Content.Raw are required")
    content = _raw_content(base64.b64decode(raw["Data"]))
    content["tags"] = {
        str(tag.get("Name")): str(tag.get("Value")) for tag in data.get("EmailTags") or []
    }
    received = [(str(recipient), content) for recipient in recipients]
    await _delay(sink, [recipient for recipient, _ in received])
    failure = _whole_request_failure(sink, received)
    if failure is not None:
        failure = (
            _error(429, "TooManyRequestsException", "Maximum sending rate exceeded.")
            if failure[0] == 429
            else _error(503, "ServiceUnavailable", "Service is unavailable. Try again later.")
        )
    refused = [recipient for recipient, _ in received if sink.rules.rejects(recipient)]
    if failure is None and refused:
        failure = _error(
            400,
            "MessageRejected",
            "Email address is not verified. The following identities failed the check in "
            f"region {SES_REGION.upper()}: {', '.join(refused)}",
        )
    if failure is not None:
        _record(sink, "ses", path, [(r, c, failure[0], "") for r, c in received])
        return failure
    message_id = f"0102{uuid.uuid4().hex}-{uuid.uuid4()}-000000"
    _record(sink, "ses", path, [(r, c, 200, message_id) for r, c in received])
    return 200, {"MessageId": message_id}, {}


def _sns_confirm(sink: SinkServer, path: str, headers: dict[str, str], body: bytes) -> Answer:
    """SNS's ``ConfirmSubscription`` (its query API: a form in, XML out)."""
    refusal = _signature_refusal(headers, path, body, service="sns")
    if refusal is not None:
        return refusal
    form = dict(urllib.parse.parse_qsl(body.decode()))
    if form.get("Action") != "ConfirmSubscription":
        return _error(400, "InvalidAction", f"Unknown action {form.get('Action')!r}")
    topic = form.get("TopicArn", "")
    subscription = f"{topic}:{uuid.uuid4()}"
    sink._record(
        channel="sns",
        delivery_id=None,
        to=topic,
        status=200,
        accepted=True,
        attempt=1,
        token=form.get("Token", ""),
        message_id=subscription,
    )
    answer = (
        '<ConfirmSubscriptionResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
        f"<ConfirmSubscriptionResult><SubscriptionArn>{escape(subscription)}</SubscriptionArn>"
        f"</ConfirmSubscriptionResult><ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId>"
        "</ResponseMetadata></ConfirmSubscriptionResponse>"
    )
    return 200, answer.encode(), {"Content-Type": "text/xml"}


def ses_client_params(http_url: str) -> dict[str, str]:
    """anymail's ``AMAZON_SES_CLIENT_PARAMS`` that send to this emulation, credentials
    included (as a test's settings; a process started by a test gets ``ses_env``)."""
    return {
        "region_name": SES_REGION,
        "endpoint_url": f"{http_url}{SES_PREFIX.rstrip('/')}",
        "aws_access_key_id": SES_ACCESS_KEY_ID,
        "aws_secret_access_key": SES_SECRET_ACCESS_KEY,
    }


def ses_env(http_url: str) -> dict[str, str]:
    """The same as environment variables: Salvo's region and endpoint, AWS's own for the
    credentials (boto3 reads them itself)."""
    return {
        "AMAZON_SES_REGION": SES_REGION,
        "AMAZON_SES_ENDPOINT_URL": f"{http_url}{SES_PREFIX.rstrip('/')}",
        "AWS_ACCESS_KEY_ID": SES_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SES_SECRET_ACCESS_KEY,
    }
