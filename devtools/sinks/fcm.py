"""The sink's emulation of Firebase Cloud Messaging HTTP v1 and of the OAuth 2 token
endpoint its service accounts authenticate at, for ``channels.providers.fcm`` driven by
google-auth.

At start the sink makes a service account of its own: an RSA key (``cryptography``) written
as a Google service-account key file (``write_service_account``) whose ``token_uri`` is the
sink's ``TOKEN_PATH``. Salvo loads that file as it would a real key.

* ``POST /oauth2/token``: the JWT-bearer grant. The assertion's RS256 signature is verified
  with the key's public half, and its issuer, audience, scope and expiry are checked, as
  Google does; the answer is an access token (``expires_in`` an hour), or
  ``invalid_grant``. Each grant is recorded on channel ``fcm-token``.
* ``POST /v1/projects/{project}/messages:send``: needs a token the sink issued and the key's
  project. Each message is recorded on channel ``push`` with the delivery id of its
  ``data.salvo_delivery_id``. A token that is not a well-formed registration token is
  FCM's ``INVALID_ARGUMENT`` on ``message.token``; the failure rules apply to the token:
  ``reject`` is ``UNREGISTERED`` (404), ``flaky`` ``UNAVAILABLE`` (503), ``throttle``
  ``QUOTA_EXCEEDED`` (429 with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .emulated import record_attempt

if TYPE_CHECKING:
    from .server import SinkServer

TOKEN_PATH = "/oauth2/token"
PROJECT_ID = "salvo-sink"
CLIENT_EMAIL = f"salvo-sink@{PROJECT_ID}.iam.gserviceaccount.com"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
# The audience Google's token endpoint expects in an assertion (google-auth names it
# whatever the key's token_uri), or the endpoint's own URL.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SEND_PATH = re.compile(r"^/v1/projects/(?P<project>[^/]+)/messages:send$")
# What a registration token is made of (FCM's are ~150 such characters).
WELL_FORMED_TOKEN = re.compile(r"^[A-Za-z0-9_:\-]{8,4096}$")
ACCESS_TOKEN_LIFETIME_S = 3600
# How far ahead of the sink's clock an assertion's issue time may be.
MAX_CLOCK_SKEW_S = 300


def fcm_error(status: int, code: str, message: str, **extra: Any) -> dict[str, Any]:
    """FCM's JSON body of a refusal: the gRPC status and, in the details, FCM's own code."""
    details: list[dict[str, Any]] = [
        {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}
    ]
    if extra.get("field"):
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": extra["field"], "description": message}],
            }
        )
    grpc_status = {404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED"}.get(status, code)
    return {
        "error": {"code": status, "message": message, "status": grpc_status, "details": details}
    }


def _unpadded_b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FcmEmulation:
    def __init__(self, sink: SinkServer, *, key_file: Path) -> None:
        self.sink = sink
        self.key_file = key_file
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.issued: set[str] = set()

    @property
    def token_uri(self) -> str:
        return f"http://{self.sink.host}:{self.sink.http_port}{TOKEN_PATH}"

    def write_service_account(self) -> None:
        """The key file a Google Cloud console would give for this service account."""
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        key = {
            "type": "service_account",
            "project_id": PROJECT_ID,
            "private_key_id": secrets.token_hex(20),
            "private_key": pem.decode(),
            "client_email": CLIENT_EMAIL,
            "client_id": "100000000000000000001",
            "token_uri": self.token_uri,
        }
        self.key_file.parent.mkdir(parents=True, exist_ok=True)
        self.key_file.write_text(json.dumps(key, indent=2), encoding="utf-8")

    def serves(self, path: str) -> bool:
        return path == TOKEN_PATH or SEND_PATH.match(path) is not None

    async def answer(
        self, method: str, path: str, headers: dict[str, str], body: bytes, peer: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        if method != "POST":
            return 405, fcm_error(405, "INVALID_ARGUMENT", f"{method} is not allowed"), {}
        if path == TOKEN_PATH:
            return self._grant(body)
        return await self._send(path, headers, body, peer)

    # --- the token endpoint -------------------------------------------------------------

    def _grant(self, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        form = {k: v[0] for k, v in parse_qs(body.decode(errors="replace")).items()}
        problem = (
            "unsupported grant_type"
            if form.get("grant_type") != JWT_BEARER
            else self._assertion_problem(form.get("assertion", ""))
        )
        record: dict[str, Any] = {"channel": "fcm-token", "delivery_id": None, "to": CLIENT_EMAIL}
        if problem:
            self.sink._record(**record, status=400, accepted=False, error=problem)
            return 400, {"error": "invalid_grant", "error_description": problem}, {}
        token = "ya29.sink-" + secrets.token_urlsafe(24)
        self.issued.add(token)
        self.sink._record(**record, status=200, accepted=True)
        answer = {"access_token": token, "expires_in": ACCESS_TOKEN_LIFETIME_S}
        return 200, answer | {"token_type": "Bearer"}, {}

    def _assertion_problem(self, assertion: str) -> str:
        """What is wrong with the JWT assertion ('' when Google would grant it)."""
        try:
            header_b64, claims_b64, signature_b64 = assertion.split(".")
            header = json.loads(_unpadded_b64decode(header_b64))
            claims = json.loads(_unpadded_b64decode(claims_b64))
            signature = _unpadded_b64decode(signature_b64)
        except ValueError:
            return "Malformed JWT assertion."
        if header.get("alg") != "RS256":
            return "The assertion is not signed with RS256."
        try:
            self.private_key.public_key().verify(
                signature,
                f"{header_b64}.{claims_b64}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            return "Invalid JWT Signature."
        now = time.time()
        if claims.get("iss") != CLIENT_EMAIL:
            return f"Unknown service account {claims.get('iss')!r}."
        if claims.get("aud") not in (GOOGLE_TOKEN_AUDIENCE, self.token_uri):
            return f"Invalid JWT audience {claims.get('aud')!r}."
        if FCM_SCOPE not in str(claims.get("scope", "")).split():
            return "The assertion does not ask for the firebase.messaging scope."
        issued, expires = claims.get("iat"), claims.get("exp")
        if not (
            isinstance(issued, int | float)
            and isinstance(expires, int | float)
            and issued <= now + MAX_CLOCK_SKEW_S
            and expires > now
            and expires - issued <= ACCESS_TOKEN_LIFETIME_S
        ):
            return "Invalid JWT: token must be a short-lived token and in a reasonable timeframe."
        return ""

    # --- messages:send --------------------------------------------------------------------

    async def _send(
        self, path: str, headers: dict[str, str], body: bytes, peer: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        match = SEND_PATH.match(path)
        assert match is not None
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        message = data.get("message") if isinstance(data, dict) else None
        message = message if isinstance(message, dict) else {}
        token = str(message.get("token") or "")
        payload = message.get("data")
        delivery_id = payload.get("salvo_delivery_id") if isinstance(payload, dict) else None
        attempt = self.sink._attempt("push", delivery_id or token or path)
        rules = self.sink.rules
        delay = rules.delay_for(token)
        if delay:
            await asyncio.sleep(delay)
        bearer = headers.get("authorization", "").removeprefix("Bearer ").strip()
        extra: dict[str, str] = {}
        if bearer not in self.issued:
            message_text = "Request had invalid authentication credentials."
            status, answer = 401, fcm_error(401, "UNAUTHENTICATED", message_text)
        elif match["project"] != PROJECT_ID:
            status, answer = 403, fcm_error(403, "SENDER_ID_MISMATCH", "SenderId mismatch")
        elif not WELL_FORMED_TOKEN.match(token):
            text = "The registration token is not a valid FCM registration token"
            status, answer = 400, fcm_error(400, "INVALID_ARGUMENT", text, field="message.token")
        elif rules.rejects(token):
            status, answer = 404, fcm_error(404, "UNREGISTERED", "Requested entity was not found.")
        elif rules.fails(token, attempt):
            status, answer = 503, fcm_error(503, "UNAVAILABLE", "The service is unavailable.")
        elif rules.throttles(token, attempt):
            text = "Quota exceeded for sending messages."
            status, answer = 429, fcm_error(429, "QUOTA_EXCEEDED", text)
            extra["Retry-After"] = f"{rules.retry_after_s:g}"
        else:
            message_id = f"0:{time.time_ns()}%{secrets.token_hex(8)}"
            status, answer = 200, {"name": f"projects/{PROJECT_ID}/messages/{message_id}"}
        record_attempt(
            self.sink,
            channel="push",
            provider="fcm",
            delivery_id=delivery_id,
            to=token,
            attempt=attempt,
            status=status,
            message_id=answer["name"] if status == 200 else None,
            error_code=None if status == 200 else answer["error"]["details"][0]["errorCode"],
            content={"path": path, "headers": headers, "peer": peer, "json": data},
        )
        return status, answer, extra
