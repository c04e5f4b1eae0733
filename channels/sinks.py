"""Local sink servers: where tests and benchmarks send real email and HTTP traffic.

One process, one asyncio loop, two loopback servers:

* an SMTP sink (aiosmtpd) for ``channels.providers.email.EmailBackend``;
* an HTTP sink for the SMS, push and webhook backends (any ``POST /<channel>…``), with the
  bulk endpoints of the SMS, push and email HTTP APIs (``POST /<channel>/batch`` with
  ``{"messages": [...]}``, answered with one result per message: see
  ``channels.providers.http``); each message of a bulk request is recorded, and failure
  rules apply, on its own.

Every attempt is appended to a JSON-lines record file (``channel``, ``delivery_id``, ``to``,
``status``, ``accepted``, and with ``content`` the headers and body), so other processes can
count what arrived and find duplicates by delivery id.

The HTTP sink honours ``Idempotency-Key`` (per message ``idempotency_key`` in a bulk
request) as real providers do: a key it has already accepted is answered with the first
answer again and is not a new message. Such a repeat is still recorded, with
``"repeat": true``: ``received()`` leaves repeats out (what the recipient got), while
``repeats()`` and ``duplicates()`` count them (what was sent twice). The SMTP sink, like
SMTP itself, has no idempotency key: a repeat there is a second email.

The sinks can be told to fail, per recipient pattern (a regular expression searched in the
address, phone, token or URL path):

* ``reject``: HTTP 400 / SMTP 550 (permanent);
* ``flaky`` (``PATTERN:K``): HTTP 503 / SMTP 451 for the first K attempts of each delivery;
* ``throttle`` (``PATTERN:K:S``): HTTP 429 with ``Retry-After: S`` / SMTP 451, first K attempts;
* ``slow`` (``PATTERN:S``): answer after S seconds (to trip client timeouts).

Start it with ``manage.py run_sinks`` (or ``python -m channels.sinks``), or in tests::

    with running_sinks(reject="invalid") as sink:
        with override_settings(**sink.provider_settings()):
            ...
        assert len(sink.received(channel="sms")) == 3

This module needs neither Django nor a database, so the sink starts fast in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from django.core.management.base import OutputWrapper

DELIVERY_ID_HEADER = "X-Salvo-Delivery-Id"
HEALTH_PATH = "/_sink/health"
SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_API_BACKEND = "channels.providers.email_api.BatchEmailBackend"
# Keys of an HTTP JSON body that name the recipient, by channel convention.
_RECIPIENT_KEYS = ("to", "token")
_HTTP_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests"}
_HTTP_REASONS |= {431: "Request Header Fields Too Large", 503: "Service Unavailable"}


@dataclass(frozen=True)
class FailureRules:
    """How the sinks misbehave, by recipient pattern; empty patterns never match."""

    reject: str = ""
    flaky: str = ""
    flaky_times: int = 1
    throttle: str = ""
    throttle_times: int = 1
    retry_after_s: float = 1.0
    slow: str = ""
    slow_s: float = 5.0

    @staticmethod
    def _matches(pattern: str, recipient: str) -> bool:
        return bool(pattern) and re.search(pattern, recipient) is not None

    def rejects(self, recipient: str) -> bool:
        return self._matches(self.reject, recipient)

    def fails(self, recipient: str, attempt: int) -> bool:
        return self._matches(self.flaky, recipient) and attempt <= self.flaky_times

    def throttles(self, recipient: str, attempt: int) -> bool:
        return self._matches(self.throttle, recipient) and attempt <= self.throttle_times

    def delay_for(self, recipient: str) -> float:
        return self.slow_s if self._matches(self.slow, recipient) else 0.0

    def as_args(self) -> list[str]:
        args = []
        if self.reject:
            args += ["--reject", self.reject]
        if self.flaky:
            args += ["--flaky", f"{self.flaky}:{self.flaky_times}"]
        if self.throttle:
            args += ["--throttle", f"{self.throttle}:{self.throttle_times}:{self.retry_after_s}"]
        if self.slow:
            args += ["--slow", f"{self.slow}:{self.slow_s}"]
        return args


class Recorder:
    """Appends one JSON line per attempt; every line is flushed so readers see it at once."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()

    def write_many(self, records: list[dict[str, Any]]) -> None:
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        self._file.write("".join(dumps(record) + "\n" for record in records))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass
class SinkServer:
    record: Path
    rules: FailureRules = field(default_factory=FailureRules)
    host: str = "127.0.0.1"
    smtp_port: int = 0
    http_port: int = 0
    # Keep headers and bodies in the record (tests); off for benchmarks of millions.
    content: bool = True
    _attempts: Counter[tuple[str, str]] = field(default_factory=Counter)
    # The first accepted answer per (channel, idempotency key), as a provider keeps it.
    _accepted: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    _sequence: int = 0
    _recorder: Recorder | None = None
    _servers: list[asyncio.base_events.Server] = field(default_factory=list)

    def _attempt(self, channel: str, key: str) -> int:
        self._attempts[(channel, key)] += 1
        return self._attempts[(channel, key)]

    def _next_id(self) -> str:
        self._sequence += 1
        return f"sink-{os.getpid()}-{self._sequence}"

    def _record(self, **record: Any) -> None:
        assert self._recorder is not None
        record["at"] = time.time()
        self._recorder.write(record)

    def _record_many(self, records: list[dict[str, Any]]) -> None:
        assert self._recorder is not None
        now = time.time()
        for record in records:
            record["at"] = now
        self._recorder.write_many(records)

    async def start(self) -> None:
        from aiosmtpd.smtp import SMTP

        self._recorder = Recorder(self.record)
        handler = _SmtpHandler(self)
        smtp = await asyncio.get_running_loop().create_server(
            lambda: SMTP(handler, hostname="salvo-sink", ident="Salvo sink"),
            self.host,
            self.smtp_port,
        )
        http = await asyncio.start_server(self._serve_http, self.host, self.http_port)
        self._servers = [smtp, http]
        self.smtp_port = smtp.sockets[0].getsockname()[1]
        self.http_port = http.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        if self._recorder is not None:
            self._recorder.close()

    # --- HTTP ------------------------------------------------------------------------

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._serve_one_request(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away, e.g. after its own timeout
        except asyncio.CancelledError:
            pass  # the sink is shutting down with this connection still open
        finally:
            writer.close()

    async def _serve_one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        except asyncio.LimitOverrunError:
            await self._write_response(writer, 431, {"error": "headers too large"}, {}, False)
            return False
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        body = await reader.readexactly(length) if length else b""
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        peer = "{}:{}".format(*writer.get_extra_info("peername")[:2])
        status, answer, extra_headers = await self._answer_http(method, target, headers, body, peer)
        await self._write_response(writer, status, answer, extra_headers, keep_alive)
        return keep_alive

    async def _write_response(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        answer: dict[str, Any],
        extra_headers: dict[str, str],
        keep_alive: bool,
    ) -> None:
        payload = json.dumps(answer).encode()
        lines = [
            f"HTTP/1.1 {status} {_HTTP_REASONS.get(status, 'Status')}",
            "Content-Type: application/json",
            f"Content-Length: {len(payload)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
            *(f"{name}: {value}" for name, value in extra_headers.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        await writer.drain()

    async def _answer_http(
        self, method: str, target: str, headers: dict[str, str], body: bytes, peer: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        path = target.split("?", 1)[0]
        if path == HEALTH_PATH:
            return 200, {"ok": True}, {}
        if method != "POST":
            return 404, {"error": f"{method} {path} is not a sink endpoint"}, {}
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        data = data if isinstance(data, dict) else {}
        channel = path.strip("/").split("/", 1)[0] or "http"
        if path.rstrip("/").endswith("/batch") and isinstance(data.get("messages"), list):
            return await self._answer_batch(channel, path, headers, data["messages"], peer)
        recipient = next((str(data[k]) for k in _RECIPIENT_KEYS if data.get(k)), path)
        delivery_id = headers.get("idempotency-key") or (
            str(data["delivery_id"]) if "delivery_id" in data else None
        )
        attempt = self._attempt(channel, delivery_id or recipient)
        delay = self.rules.delay_for(recipient)
        if delay:
            await asyncio.sleep(delay)
        extra: dict[str, str] = {}
        first_answer = self._accepted.get((channel, delivery_id)) if delivery_id else None
        if first_answer is not None:
            status, answer = 200, first_answer
        elif self.rules.rejects(recipient):
            status, answer = 400, {"error": f"Invalid recipient {recipient}"}
        elif self.rules.fails(recipient, attempt):
            status, answer = 503, {"error": "Service temporarily unavailable"}
        elif self.rules.throttles(recipient, attempt):
            status, answer = 429, {"error": "Too many requests"}
            extra["Retry-After"] = f"{self.rules.retry_after_s:g}"
        else:
            status, answer = 200, {"id": self._next_id()}
        record = self._attempt_record(channel, delivery_id, recipient, attempt, answer, status)
        self._remember(channel, delivery_id, answer, record, repeat=first_answer is not None)
        if self.content:
            record |= {"path": path, "headers": headers, "raw": body.decode(errors="replace")}
            # The client's address shows whether a batch reused one connection.
            record["peer"] = peer
            record["json"] = data
        self._record(**record)
        return status, answer, extra

    @staticmethod
    def _attempt_record(
        channel: str,
        delivery_id: str | None,
        recipient: str,
        attempt: int,
        answer: dict[str, Any],
        status: int,
    ) -> dict[str, Any]:
        """What the sink writes down for one message attempt, single or bulk."""
        record: dict[str, Any] = {
            "channel": channel,
            "delivery_id": delivery_id,
            "to": recipient,
            "status": status,
            "accepted": status == 200,
            "attempt": attempt,
        }
        if status == 200:
            record["message_id"] = answer["id"]
        return record

    def _remember(
        self,
        channel: str,
        key: str | None,
        answer: dict[str, Any],
        record: dict[str, Any],
        *,
        repeat: bool,
    ) -> None:
        """Keep an accepted message's answer under its idempotency key; mark a repeat."""
        if repeat:
            record["repeat"] = True
        elif key is not None and record["accepted"]:
            self._accepted[(channel, key)] = answer

    def _outcome(self, recipient: str, attempt: int) -> dict[str, Any]:
        """One bulk message's result, by the same rules as a single request."""
        if self.rules.rejects(recipient):
            return {"status": 400, "error": f"Invalid recipient {recipient}"}
        if self.rules.fails(recipient, attempt):
            return {"status": 503, "error": "Service temporarily unavailable"}
        if self.rules.throttles(recipient, attempt):
            return {
                "status": 429,
                "error": "Too many requests",
                "retry_after": self.rules.retry_after_s,
            }
        return {"status": 200, "id": self._next_id()}

    async def _answer_batch(
        self, channel: str, path: str, headers: dict[str, str], messages: list[Any], peer: str
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        items = [item if isinstance(item, dict) else {} for item in messages]
        recipients = []
        for item in items:
            to = next((item[k] for k in _RECIPIENT_KEYS if item.get(k)), path)
            recipients.append(",".join(map(str, to)) if isinstance(to, list) else str(to))
        # A slow recipient holds up the whole request, as one slow provider call would.
        delay = max((self.rules.delay_for(r) for r in recipients), default=0.0)
        if delay:
            await asyncio.sleep(delay)
        results, records = [], []
        for item, recipient in zip(items, recipients, strict=True):
            key = item.get("idempotency_key")
            delivery_id = str(key) if key is not None else None
            attempt = self._attempt(channel, delivery_id or recipient)
            first = self._accepted.get((channel, delivery_id)) if delivery_id else None
            result = first if first is not None else self._outcome(recipient, attempt)
            status = result["status"]
            record = self._attempt_record(channel, delivery_id, recipient, attempt, result, status)
            self._remember(channel, delivery_id, result, record, repeat=first is not None)
            if self.content:
                record |= {"path": path, "headers": headers, "peer": peer, "json": item}
            results.append(result)
            records.append(record)
        self._record_many(records)
        return 200, {"results": results}, {}


class _SmtpHandler:
    """aiosmtpd handler hooks: refuse, delay or accept each message per the rules."""

    def __init__(self, sink: SinkServer) -> None:
        self.sink = sink

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self.sink.rules.rejects(address):
            self.sink._record(
                channel="email", delivery_id=None, to=address, status=550, accepted=False
            )
            return f"550 5.1.1 <{address}>: Recipient address rejected"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.content
        headers = BytesHeaderParser(policy=default_policy).parsebytes(content)
        delivery_id = headers.get(DELIVERY_ID_HEADER)
        recipient = ",".join(envelope.rcpt_tos)
        attempt = self.sink._attempt("email", delivery_id or recipient)
        rules = self.sink.rules
        delay = rules.delay_for(recipient)
        if delay:
            await asyncio.sleep(delay)
        if rules.fails(recipient, attempt) or rules.throttles(recipient, attempt):
            status, reply = 451, "451 4.3.0 Temporary failure, try again later"
        else:
            message_id = self.sink._next_id()
            status, reply = 250, f"250 2.0.0 OK queued as {message_id}"
        record: dict[str, Any] = {
            "channel": "email",
            "delivery_id": delivery_id,
            "to": recipient,
            "status": status,
            "accepted": status == 250,
            "attempt": attempt,
        }
        if self.sink.content:
            record["peer"] = "{}:{}".format(*session.peer[:2])
            record["mail_from"] = envelope.mail_from
            record["headers"] = {name: str(value) for name, value in headers.items()}
            record["raw"] = content.decode("utf-8", errors="replace")
        self.sink._record(**record)
        return reply


# --- Reading a record file ---------------------------------------------------------------


def read_records(path: Path | str) -> list[dict[str, Any]]:
    """Every attempt recorded so far (a line still being written is left for next time)."""
    records = []
    try:
        with Path(path).open(encoding="utf-8") as file:
            for line in file:
                if line.endswith("\n"):
                    records.append(json.loads(line))
    except FileNotFoundError:
        pass
    return records


def count_duplicates(records: list[dict[str, Any]]) -> int:
    """Messages sent again after one was accepted for the same (channel, delivery id): the
    repeats an idempotent provider dropped, and the second emails SMTP delivered."""
    counts = Counter(
        (record["channel"], record["delivery_id"])
        for record in records
        if record["accepted"] and record.get("delivery_id") is not None
    )
    return sum(count - 1 for count in counts.values() if count > 1)


@dataclass
class RunningSinks:
    """A sink process started by ``running_sinks``: its ports and what it received."""

    host: str
    smtp_port: int
    http_port: int
    record: Path

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
        return count_duplicates(read_records(self.record))

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

    def provider_settings(self, *, email_api: bool = False) -> dict[str, Any]:
        """Settings that send every channel to these sinks, for ``override_settings``; email
        over SMTP, or with ``email_api`` through the HTTP batch email API."""
        return {
            "SALVO_PROVIDER_BACKENDS": {
                "email": "channels.providers.email.EmailBackend",
                "sms": "channels.providers.http.SmsBackend",
                "push": "channels.providers.http.PushBackend",
                "webhook": "channels.providers.http.WebhookBackend",
            },
            # pytest-django swaps EMAIL_BACKEND for locmem; the sink wants real SMTP.
            "EMAIL_BACKEND": EMAIL_API_BACKEND if email_api else SMTP_BACKEND,
            "EMAIL_HOST": self.host,
            "EMAIL_PORT": self.smtp_port,
            "EMAIL_HOST_USER": "",
            "EMAIL_HOST_PASSWORD": "",
            "EMAIL_USE_TLS": False,
            "EMAIL_USE_SSL": False,
            "SALVO_SMS_PROVIDER": {"url": f"{self.http_url}/sms", "api_key": "sink-key"},
            "SALVO_PUSH_PROVIDER": {"url": f"{self.http_url}/push", "api_key": "sink-key"},
            "SALVO_EMAIL_API": {"url": f"{self.http_url}/email", "api_key": "sink-key"},
            # The sinks listen on loopback, which production refuses webhooks to.
            "SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": True,
        }

    def provider_env(self, *, email_api: bool = False) -> dict[str, str]:
        """The same as environment variables, for worker processes started by tests."""
        return {
            "EMAIL_BACKEND": EMAIL_API_BACKEND if email_api else SMTP_BACKEND,
            "SALVO_EMAIL_API_URL": f"{self.http_url}/email",
            "SALVO_EMAIL_API_KEY": "sink-key",
            "SALVO_EMAIL_BACKEND": "channels.providers.email.EmailBackend",
            "SALVO_SMS_BACKEND": "channels.providers.http.SmsBackend",
            "SALVO_PUSH_BACKEND": "channels.providers.http.PushBackend",
            "SALVO_WEBHOOK_BACKEND": "channels.providers.http.WebhookBackend",
            "EMAIL_URL": f"smtp://{self.host}:{self.smtp_port}",
            "SALVO_SMS_API_URL": f"{self.http_url}/sms",
            "SALVO_SMS_API_KEY": "sink-key",
            "SALVO_PUSH_API_URL": f"{self.http_url}/push",
            "SALVO_PUSH_API_KEY": "sink-key",
            "SALVO_WEBHOOK_ALLOW_PRIVATE_ADDRESSES": "true",
        }


@contextlib.contextmanager
def running_sinks(
    *,
    record: Path | str | None = None,
    content: bool = True,
    host: str = "127.0.0.1",
    startup_timeout: float = 10.0,
    **rules: Any,
) -> Iterator[RunningSinks]:
    """Run the sinks in a child process on free loopback ports until the block ends.

    ``rules`` are ``FailureRules`` fields (``reject="bad"``, ``flaky="retry"``,
    ``flaky_times=2``…). Without ``record`` the attempts go to a temporary file.
    """
    # Imported here: the sink's own process (``python -m channels.sinks``) runs without
    # Django, and importing ``config`` starts the Celery application.
    from config.processes import stop_process

    with contextlib.ExitStack() as stack:
        if record is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="salvo-sink-"))
            record = Path(folder) / "received.jsonl"
        command = [sys.executable, "-m", "channels.sinks", "--host", host, "--record", str(record)]
        command += ["--smtp-port", "0", "--http-port", "0"]
        command += FailureRules(**rules).as_args() + ([] if content else ["--no-content"])
        process = subprocess.Popen(
            command,
            cwd=Path(__file__).resolve().parent.parent,
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


# --- Command line --------------------------------------------------------------------


def _pattern_with_numbers(value: str, count: int) -> tuple[str, list[float]]:
    """``PATTERN[:N[:M]]`` → pattern and up to ``count`` numbers (split from the right, so
    the pattern itself may contain colons).
    """
    parts = value.rsplit(":", count)
    numbers: list[float] = []
    while len(parts) > 1:
        try:
            numbers.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    return ":".join(parts), numbers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``manage.py run_sinks`` and ``python -m channels.sinks``."""
    env = os.environ.get
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, default=int(env("SALVO_SINK_SMTP_PORT", "1025")))
    parser.add_argument("--http-port", type=int, default=int(env("SALVO_SINK_HTTP_PORT", "8025")))
    parser.add_argument(
        "--record",
        default=env("SALVO_SINK_RECORD", "var/sink-received.jsonl"),
        help="JSON-lines file that gets one line per attempt.",
    )
    parser.add_argument(
        "--no-content", action="store_true", help="Record ids and status only (benchmarks)."
    )
    parser.add_argument("--reject", default=env("SALVO_SINK_REJECT", ""), metavar="PATTERN")
    parser.add_argument("--flaky", default=env("SALVO_SINK_FLAKY", ""), metavar="PATTERN[:K]")
    parser.add_argument(
        "--throttle", default=env("SALVO_SINK_THROTTLE", ""), metavar="PATTERN[:K[:SECONDS]]"
    )
    parser.add_argument("--slow", default=env("SALVO_SINK_SLOW", ""), metavar="PATTERN[:SECONDS]")


def rules_from_options(options: dict[str, Any]) -> FailureRules:
    flaky, flaky_numbers = _pattern_with_numbers(options["flaky"] or "", 1)
    throttle, throttle_numbers = _pattern_with_numbers(options["throttle"] or "", 2)
    slow, slow_numbers = _pattern_with_numbers(options["slow"] or "", 1)
    defaults = FailureRules()
    return FailureRules(
        reject=options["reject"] or "",
        flaky=flaky,
        flaky_times=int(flaky_numbers[0]) if flaky_numbers else defaults.flaky_times,
        throttle=throttle,
        throttle_times=int(throttle_numbers[0]) if throttle_numbers else defaults.throttle_times,
        retry_after_s=throttle_numbers[1] if len(throttle_numbers) > 1 else defaults.retry_after_s,
        slow=slow,
        slow_s=slow_numbers[0] if slow_numbers else defaults.slow_s,
    )


def serve(options: dict[str, Any], *, announce: TextIO | OutputWrapper = sys.stdout) -> None:
    """Run the sinks until SIGINT/SIGTERM; print one JSON line with the ports once ready."""

    async def main() -> None:
        sink = SinkServer(
            record=Path(options["record"]),
            rules=rules_from_options(options),
            host=options["host"],
            smtp_port=options["smtp_port"],
            http_port=options["http_port"],
            content=not options["no_content"],
        )
        await sink.start()
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopped.set)
        ready = {"smtp_port": sink.smtp_port, "http_port": sink.http_port}
        announce.write(json.dumps(ready | {"record": str(sink.record)}) + "\n")
        announce.flush()
        await stopped.wait()
        await sink.stop()

    asyncio.run(main())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m channels.sinks", description=__doc__)
    add_arguments(parser)
    serve(vars(parser.parse_args()))
