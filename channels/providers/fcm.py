"""Push through Firebase Cloud Messaging's HTTP v1 API, authenticated as a service account.

``POST {api_url}/v1/projects/{project_id}/messages:send``, one request per device token
(FCM v1 has no multicast), over one kept-alive ``google.auth`` session per batch. The
session carries an OAuth 2 access token that google-auth obtains from the key's
``token_uri`` with a JWT signed by the service account's private key, and obtains again
when it expires or FCM answers 401. The credentials are loaded once per key file per
process, so the token outlives a batch.

Where the key is, which project, and the API's base URL are settings (``SALVO_FCM``, from
the environment), never a preset's. Answers are classified by FCM's error codes
(``errorCode`` in the error's details, ``status`` otherwise):

* ``UNAVAILABLE``, ``INTERNAL``, ``QUOTA_EXCEEDED`` (429, 5xx), timeouts and connection
  errors: ``TransientProviderError`` (``Retry-After`` honoured);
* ``UNREGISTERED`` (the app was uninstalled or the token expired) and ``INVALID_ARGUMENT``
  naming the token: ``PermanentProviderError`` that suppresses the token (the engine
  records a ``rejected`` event with reason ``invalid_address``), since no later message
  can reach it;
* anything else (``SENDER_ID_MISMATCH``, ``THIRD_PARTY_AUTH_ERROR``, another invalid
  argument): permanent, the token kept.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import google.auth.exceptions
import requests
from django.conf import settings
from google.auth.transport.requests import AuthorizedSession
from google.oauth2 import service_account

from channels.choices import ChannelKind, SuppressionReason

from . import (
    OutboundMessage,
    PermanentProviderError,
    ProviderBackend,
    SendResult,
    TransientProviderError,
)
from .http import MAX_REASON_CHARS, parse_retry_after, request_failure

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
# FCM's error codes that say the token reaches no device any more.
UNREACHABLE_TOKEN_CODES = frozenset({"UNREGISTERED"})
# The field of an INVALID_ARGUMENT's violation that blames the token, not the message.
TOKEN_FIELD = "message.token"
TRANSIENT_CODES = frozenset({"UNAVAILABLE", "INTERNAL", "QUOTA_EXCEEDED"})
# The data key that carries Salvo's delivery id to the app, as anymail metadata does.
DELIVERY_ID_KEY = "salvo_delivery_id"


@functools.cache
def _credentials(key_text: str) -> service_account.Credentials:
    """The service account of a key file's content, one per process (its token is reused
    until it expires)."""
    return service_account.Credentials.from_service_account_info(
        json.loads(key_text), scopes=[FCM_SCOPE]
    )


def service_account_credentials(path: str) -> service_account.Credentials:
    """The credentials of the key file at ``path``; ``TransientProviderError`` (the operator
    can fix it, and the messages wait) when it is missing or not a service-account key."""
    if not path:
        raise TransientProviderError("FCM is not configured: set SALVO_FCM_CREDENTIALS_FILE.")
    try:
        return _credentials(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise TransientProviderError(f"Cannot read the FCM key file {path}: {error}") from error
    except (ValueError, KeyError) as error:
        raise TransientProviderError(
            f"{path} is not a service-account key file: {error}"
        ) from error


def fcm_refusal(
    status: int, body: Any, *, retry_after: float | None = None
) -> TransientProviderError | PermanentProviderError:
    """The error for a message FCM refused with ``status`` and its JSON error ``body``."""
    error = body.get("error") if isinstance(body, Mapping) else None
    error = error if isinstance(error, Mapping) else {}
    details = [d for d in error.get("details") or () if isinstance(d, Mapping)]
    code = next(
        (str(d["errorCode"]) for d in details if d.get("errorCode")),
        str(error.get("status") or status),
    )
    blames_token = any(
        v.get("field") == TOKEN_FIELD
        for d in details
        for v in d.get("fieldViolations") or ()
        if isinstance(v, Mapping)
    )
    reason = f"FCM {code}: {error.get('message') or status}"[:MAX_REASON_CHARS]
    if code in TRANSIENT_CODES or status in (408, 429) or status >= 500:
        return TransientProviderError(reason, retry_after=retry_after)
    unreachable = code in UNREACHABLE_TOKEN_CODES or (code == "INVALID_ARGUMENT" and blames_token)
    return PermanentProviderError(
        reason, suppress=SuppressionReason.INVALID_ADDRESS if unreachable else ""
    )


class FcmPushBackend(ProviderBackend):
    """One ``messages:send`` per token over the batch's authorized session."""

    channels = frozenset({ChannelKind.PUSH})
    provider: ClassVar[str] = "fcm"

    session: AuthorizedSession | None = None
    send_url: str = ""

    def open(self) -> None:
        if self.session is not None:
            return
        config = settings.SALVO_FCM
        credentials = service_account_credentials(config["credentials_file"])
        project_id = config["project_id"] or credentials.project_id
        if not project_id:
            raise TransientProviderError(
                "FCM has no project: set SALVO_FCM_PROJECT_ID or use a key that names one."
            )
        self.send_url = f"{config['api_url'].rstrip('/')}/v1/projects/{project_id}/messages:send"
        self.session = AuthorizedSession(
            credentials, refresh_timeout=settings.SALVO_PROVIDER_TIMEOUT_S
        )

    def close(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.close()

    def payload_for(self, message: OutboundMessage) -> dict[str, Any]:
        notification = {"body": message.body}
        if message.subject:
            notification["title"] = message.subject
        return {
            "message": {
                "token": message.to,
                "notification": notification,
                "data": {DELIVERY_ID_KEY: str(message.delivery_id)},
            }
        }

    def send(self, message: OutboundMessage) -> SendResult:
        opened_here = self.session is None
        self.open()
        assert self.session is not None
        try:
            answer = self.session.post(
                self.send_url,
                json=self.payload_for(message),
                timeout=settings.SALVO_PROVIDER_TIMEOUT_S,
            )
        except requests.RequestException as error:
            raise request_failure("FCM", error) from error
        except google.auth.exceptions.GoogleAuthError as error:
            raise TransientProviderError(f"No FCM access token: {error}") from error
        finally:
            if opened_here:
                self.close()
        try:
            body = answer.json()
        except ValueError:
            body = None
        if answer.ok:
            name = body.get("name") if isinstance(body, Mapping) else None
            return SendResult(provider_message_id=str(name or ""))
        raise fcm_refusal(
            answer.status_code,
            body,
            retry_after=parse_retry_after(answer.headers.get("Retry-After")),
        )
