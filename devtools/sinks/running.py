"""The sinks run in a child process for the length of a ``with`` block: its ports, what it
received, and the settings that send every channel to it."""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import twilio
from .esp import anymail_settings
from .records import count_duplicates, iter_records, read_records
from .rules import FailureRules
from .server import SMTP_COUNTERS_PATH
from .ses import ses_client_params, ses_env

SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_API_BACKEND = "channels.providers.email_api.BatchEmailBackend"
# The email service providers the HTTP sink emulates, and the backend that sends to each.
ESP_BACKENDS = {
    "mailgun": "channels.providers.esp.MailgunBackend",
    "postmark": "channels.providers.esp.PostmarkBackend",
    "sendgrid": "channels.providers.esp.SendGridBackend",
    "ses": "channels.providers.esp.SesBackend",
}
# The checkout's root, where ``python -m devtools.sinks`` finds the package.
BASE_DIR = Path(__file__).resolve().parents[2]


@dataclass
class RunningSinks:
    """A sink process started by ``running_sinks``: its ports and what it received."""

    host: str
    smtp_port: int
    http_port: int
    record: Path
    # The FCM emulation's service-account key (devtools.sinks.fcm).
    fcm_key_file: Path
    # AUTH credentials the SMTP sink asks for ("" when it does not).
    smtp_user: str = ""
    smtp_password: str = ""
    # The sink process's id (its memory: /proc/<pid>/status).
    pid: int = 0

    def smtp_counters(self) -> dict[str, Any]:
        """The SMTP sink's counters: ``messages``, ``recipients``, ``duplicates``
        (accepted), ``sessions``, and ``early_commands`` / ``early_verbs`` (commands sent
        before the previous reply while PIPELINING was not advertised)."""
        url = f"{self.http_url}{SMTP_COUNTERS_PATH}"
        with urllib.request.urlopen(url, timeout=10) as response:
            counters: dict[str, Any] = json.load(response)
        return counters

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def webhook_url(self) -> str:
        """A URL to give a webhook preset."""
        return f"{self.http_url}/webhook"

    def attempts(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Every attempt, accepted or not."""
        return [r for r in read_records(self.record) if channel in (None, r["channel"])]

    def received(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Accepted messages, each once: an HTTP repeat of an accepted idempotency key is
        left out (the provider dropped it)."""
        return [r for r in self.attempts(channel) if r["accepted"] and not r.get("repeat")]

    def repeats(self, channel: str | None = None) -> list[dict[str, Any]]:
        """HTTP requests that repeated an idempotency key already accepted."""
        return [r for r in self.attempts(channel) if r.get("repeat")]

    def duplicates(self) -> int:
        """Messages sent again after one was accepted (see ``count_duplicates``)."""
        return count_duplicates(iter_records(self.record))

    def wait_for(self, count: int, *, channel: str | None = None, timeout: float = 10.0) -> list:
        """The accepted messages once at least ``count`` arrived; raises ``TimeoutError``
        when they have not after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            received = self.received(channel)
            if len(received) >= count:
                return received
            if time.monotonic() > deadline:
                where = f" on {channel}" if channel else ""
                raise TimeoutError(
                    f"The sink received {len(received)} of {count} messages{where} in {timeout:g}s."
                )
            time.sleep(0.02)

    def provider_settings(self, *, email_api: bool = False, esp: str = "") -> dict[str, Any]:
        """Settings that send every channel to these sinks, for ``override_settings``; email
        over SMTP, with ``email_api`` through the HTTP batch email API, or with ``esp``
        (``mailgun``, ``postmark``, ``sendgrid``, ``ses``) through anymail to that ESP's
        emulated API."""
        return {
            "SALVO_PROVIDER_BACKENDS": {
                "email": ESP_BACKENDS[esp] if esp else "channels.providers.email.EmailBackend",
                "sms": "channels.providers.http.SmsBackend",
                "push": "channels.providers.http.PushBackend",
                "webhook": "channels.providers.http.WebhookBackend",
            },
            # pytest-django swaps EMAIL_BACKEND for locmem; the sink wants real SMTP.
            "EMAIL_BACKEND": EMAIL_API_BACKEND if email_api else SMTP_BACKEND,
            "EMAIL_HOST": self.host,
            "EMAIL_PORT": self.smtp_port,
            "EMAIL_HOST_USER": self.smtp_user,
            "EMAIL_HOST_PASSWORD": self.smtp_password,
            "EMAIL_USE_TLS": False,
            "EMAIL_USE_SSL": False,
            "SALVO_SMS_PROVIDER": {"url": f"{self.http_url}/sms", "api_key": "sink-key"},
            "SALVO_PUSH_PROVIDER": {"url": f"{self.http_url}/push", "api_key": "sink-key"},
            "SALVO_EMAIL_API": {"url": f"{self.http_url}/email", "api_key": "sink-key"},
            "ANYMAIL": anymail_settings(self.http_url)
            | {
                "REQUESTS_TIMEOUT": 10.0,
                "AMAZON_SES_CLIENT_PARAMS": ses_client_params(self.http_url),
            },
            # The sinks listen on loopback, which production refuses webhooks to.
            "SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": True,
            # Presets that name the Twilio or FCM backend reach the sink's emulations.
            "SALVO_TWILIO": {
                "account_sid": twilio.ACCOUNT_SID,
                "auth_token": twilio.AUTH_TOKEN,
                "messaging_service_sid": "",
                "api_url": self.http_url,
            },
            "SALVO_FCM": {
                "credentials_file": str(self.fcm_key_file),
                "project_id": "",
                "api_url": self.http_url,
            },
        }

    def provider_env(self, *, email_api: bool = False, esp: str = "") -> dict[str, str]:
        """The same as environment variables, for worker processes started by tests."""
        return {
            "EMAIL_BACKEND": EMAIL_API_BACKEND if email_api else SMTP_BACKEND,
            "SALVO_EMAIL_API_URL": f"{self.http_url}/email",
            "SALVO_EMAIL_API_KEY": "sink-key",
            **anymail_settings(self.http_url),
            **ses_env(self.http_url),
            "SALVO_EMAIL_BACKEND": (
                ESP_BACKENDS[esp] if esp else "channels.providers.email.EmailBackend"
            ),
            "SALVO_SMS_BACKEND": "channels.providers.http.SmsBackend",
            "SALVO_PUSH_BACKEND": "channels.providers.http.PushBackend",
            "SALVO_WEBHOOK_BACKEND": "channels.providers.http.WebhookBackend",
            "EMAIL_URL": f"smtp://{self.host}:{self.smtp_port}",
            "SALVO_SMS_API_URL": f"{self.http_url}/sms",
            "SALVO_SMS_API_KEY": "sink-key",
            "SALVO_PUSH_API_URL": f"{self.http_url}/push",
            "SALVO_PUSH_API_KEY": "sink-key",
            "SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
            "TWILIO_ACCOUNT_SID": twilio.ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": twilio.AUTH_TOKEN,
            "SALVO_TWILIO_API_URL": self.http_url,
            "SALVO_FCM_CREDENTIALS_FILE": str(self.fcm_key_file),
            "SALVO_FCM_API_URL": self.http_url,
        }


@contextlib.contextmanager
def running_sinks(
    *,
    record: Path | str | None = None,
    content: bool = True,
    host: str = "127.0.0.1",
    startup_timeout: float = 10.0,
    smtp_pipelining: bool = True,
    smtp_chunking: bool = False,
    smtp_tls: tuple[Path | str, Path | str] | None = None,
    smtp_auth: tuple[str, str] | None = None,
    smtp_size_limit: int | None = None,
    smtp_max_recipients: int | None = None,
    **rules: Any,
) -> Iterator[RunningSinks]:
    """Run the sinks in a child process on free loopback ports until the block ends.

    ``rules`` are ``FailureRules`` fields (``reject="bad"``, ``flaky="retry"``,
    ``flaky_times=2``…). Without ``record`` the attempts go to a temporary file. The SMTP
    sink advertises PIPELINING unless ``smtp_pipelining`` is false, CHUNKING (RFC 3030 BDAT)
    when ``smtp_chunking`` is true, offers STARTTLS with ``smtp_tls`` (certificate and key
    files) and AUTH with ``smtp_auth`` (user, password).
    """
    # Imported here: the sink's own process (``python -m devtools.sinks``) runs without
    # Django, and importing ``config`` starts the Celery application.
    from config.processes import stop_process

    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="salvo-sink-")))
        record = folder / "received.jsonl" if record is None else record
        fcm_key_file = folder / "fcm-service-account.json"
        command = [sys.executable, "-m", "devtools.sinks", "--host", host, "--record", str(record)]
        command += ["--smtp-port", "0", "--http-port", "0", "--fcm-key-file", str(fcm_key_file)]
        command += FailureRules(**rules).as_args() + ([] if content else ["--no-content"])
        if not smtp_pipelining:
            command.append("--smtp-no-pipelining")
        if smtp_chunking:
            command.append("--smtp-chunking")
        if smtp_tls is not None:
            command += ["--smtp-tls-cert", str(smtp_tls[0]), "--smtp-tls-key", str(smtp_tls[1])]
        if smtp_auth is not None:
            command += ["--smtp-auth", ":".join(smtp_auth)]
        if smtp_size_limit is not None:
            command += ["--smtp-size-limit", str(smtp_size_limit)]
        if smtp_max_recipients is not None:
            command += ["--smtp-max-recipients", str(smtp_max_recipients)]
        process = subprocess.Popen(
            command,
            cwd=BASE_DIR,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            ready = _read_ready_line(process, startup_timeout)
            yield RunningSinks(
                host=host,
                smtp_port=ready["smtp_port"],
                http_port=ready["http_port"],
                record=Path(record),
                fcm_key_file=fcm_key_file,
                smtp_user=smtp_auth[0] if smtp_auth else "",
                smtp_password=smtp_auth[1] if smtp_auth else "",
                pid=process.pid,
            )
        finally:
            stop_process(process, grace_s=5)
            if process.stdout:
                process.stdout.close()


def _read_ready_line(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The JSON line the child prints once both servers listen."""
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if readable else ""
    if not line.endswith("\n"):
        if process.poll() is not None:
            raise RuntimeError(f"The sink process exited with status {process.returncode}.")
        raise RuntimeError(f"The sink process did not start within {timeout:g}s.")
    return json.loads(line)
