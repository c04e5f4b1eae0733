"""The sink process's two loopback servers on one asyncio loop, sharing what they count
and record: an SMTP sink (``devtools.sinks.smtp``) and an HTTP sink for the SMS, push,
webhook and bulk APIs (see ``devtools.sinks`` for what each answers)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import IO, Any

from .esp import esp_api
from .fcm import FcmEmulation
from .idset import AttemptCounter, IdSet, as_id
from .rules import FailureRules
from .smtp import SmtpOptions, SmtpServer, SmtpStats
from .twilio import TwilioEmulation

DELIVERY_ID_HEADER = "X-Salvo-Delivery-Id"
HEALTH_PATH = "/_sink/health"
SMTP_COUNTERS_PATH = "/_sink/smtp"
# Keys of an HTTP JSON body that name the recipient, by channel convention.
_RECIPIENT_KEYS = ("to", "token")
_HTTP_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad Request"}
_HTTP_REASONS |= {
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    422: "Unprocessable Entity",
}
_HTTP_REASONS |= {429: "Too Many Requests"}
_HTTP_REASONS |= {431: "Request Header Fields Too Large", 503: "Service Unavailable"}


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
    # Where the FCM emulation writes its service account's key file (None: no FCM).
    fcm_key_file: Path | None = None
    # The SMTP server's options: PIPELINING, CHUNKING, STARTTLS, AUTH, limits (devtools.sinks.smtp).
    smtp_options: SmtpOptions = field(default_factory=SmtpOptions)
    # Accepted messages, their recipients, and second emails of one delivery id.
    smtp_messages: int = 0
    smtp_recipients: int = 0
    smtp_duplicates: int = 0
    _smtp: SmtpServer | None = None
    # Attempts per (channel, key), for the failure rules and the records.
    _attempts: AttemptCounter = field(default_factory=AttemptCounter)
    # The idempotency keys accepted per channel, as a provider keeps them: a repeat is
    # answered with the first answer, whose message id is made from the key (so only
    # "accepted already" is remembered, a bit per key: memory flat in the messages).
    _accepted: dict[str, IdSet] = field(default_factory=dict)
    _sequence: int = 0
    # HTTP requests read and not yet answered: how many a client has in flight at once.
    http_in_flight: int = 0
    _recorder: Recorder | None = None
    _servers: list[asyncio.base_events.Server] = field(default_factory=list)
    # Providers' own APIs, each answering the paths it serves (devtools.sinks.twilio, .fcm).
    _emulations: list[TwilioEmulation | FcmEmulation] = field(default_factory=list)

    def _attempt(self, channel: str, key: str) -> int:
        return self._attempts.add(channel, key)

    def _next_id(self) -> str:
        self._sequence += 1
        return f"sink-{os.getpid()}-{self._sequence}"

    def _message_id(self, channel: str, key: str | None) -> str:
        """The id of an accepted message: made from its idempotency key, so that a repeat
        gets the same one without the sink keeping it; a sequence number without a key."""
        if key is None:
            return self._next_id()
        if as_id(key) is None:
            key = hashlib.blake2b(key.encode(), digest_size=10).hexdigest()
        return f"sink-{os.getpid()}-{channel}-{key}"

    def _accepted_already(self, channel: str, key: str | None) -> bool:
        accepted = self._accepted.get(channel)
        return key is not None and accepted is not None and key in accepted

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
        self._recorder = Recorder(self.record)
        self._smtp = SmtpServer(_SmtpHandler(self), self.smtp_options)
        self.smtp_port = await self._smtp.start(self.host, self.smtp_port)
        http = await asyncio.start_server(self._serve_http, self.host, self.http_port)
        self._servers = [http]
        self.http_port = http.sockets[0].getsockname()[1]
        self._emulations = [TwilioEmulation(self)]
        if self.fcm_key_file is not None:
            fcm = FcmEmulation(self, key_file=self.fcm_key_file)
            fcm.write_service_account()
            self._emulations.append(fcm)

    async def stop(self) -> None:
        if self._smtp is not None:
            self._smtp.close()  # 421 to every open session
        for server in self._servers:
            server.close()
        if self._recorder is not None:
            self._recorder.close()

    def smtp_counters(self) -> dict[str, Any]:
        """What the SMTP sink counted: accepted messages and their recipients, duplicates
        by delivery id, sessions, and commands a client sent early without PIPELINING."""
        stats = self._smtp.stats if self._smtp is not None else SmtpStats()
        return {
            "messages": self.smtp_messages,
            "recipients": self.smtp_recipients,
            "duplicates": self.smtp_duplicates,
            "sessions": stats.sessions,
            "early_commands": stats.early_commands,
            "early_verbs": stats.early_verbs[:100],
        }

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
        self.http_in_flight += 1
        try:
            status, answer, extra_headers = await self._answer_http(
                method, target, headers, body, peer
            )
        finally:
            self.http_in_flight -= 1
        await self._write_response(writer, status, answer, extra_headers, keep_alive)
        return keep_alive

    async def _write_response(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        answer: Any,
        extra_headers: dict[str, str],
        keep_alive: bool,
    ) -> None:
        # An emulated API that speaks XML (SNS's) answers bytes and names their type.
        content_type = extra_headers.pop("Content-Type", "application/json")
        if isinstance(answer, bytes):
            payload = answer
        else:
            payload = b"" if answer is None else json.dumps(answer).encode()
        lines = [
            f"HTTP/1.1 {status} {_HTTP_REASONS.get(status, 'Status')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(payload)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
            *(f"{name}: {value}" for name, value in extra_headers.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        await writer.drain()

    async def _answer_http(
        self, method: str, target: str, headers: dict[str, str], body: bytes, peer: str
    ) -> tuple[int, Any, dict[str, str]]:
        path = target.split("?", 1)[0]
        if path == HEALTH_PATH:
            return 200, {"ok": True}, {}
        if path == SMTP_COUNTERS_PATH:
            return 200, self.smtp_counters(), {}
        for emulation in self._emulations:
            if emulation.serves(path):
                return await emulation.answer(method, path, headers, body, peer)
        if method != "POST":
            return 404, {"error": f"{method} {path} is not a sink endpoint"}, {}
        esp = esp_api(path)
        if esp is not None:  # an email service provider's own API (devtools.sinks.esp)
            return await esp(self, path, headers, body)
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
        repeat = self._accepted_already(channel, delivery_id)
        if repeat:
            status, answer = 200, {"id": self._message_id(channel, delivery_id)}
        elif self.rules.rejects(recipient):
            status, answer = 400, {"error": f"Invalid recipient {recipient}"}
        elif self.rules.fails(recipient, attempt):
            status, answer = 503, {"error": "Service temporarily unavailable"}
        elif self.rules.throttles(recipient, attempt):
            status, answer = 429, {"error": "Too many requests"}
            extra["Retry-After"] = f"{self.rules.retry_after_s:g}"
        else:
            status, answer = 200, {"id": self._message_id(channel, delivery_id)}
        record = self._attempt_record(channel, delivery_id, recipient, attempt, answer, status)
        self._remember(channel, delivery_id, record, repeat=repeat)
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
        self, channel: str, key: str | None, record: dict[str, Any], *, repeat: bool
    ) -> None:
        """Remember that an idempotency key was accepted; mark a repeat."""
        if repeat:
            record["repeat"] = True
        elif key is not None and record["accepted"]:
            self._accepted.setdefault(channel, IdSet()).add(key)

    def _outcome(
        self, channel: str, key: str | None, recipient: str, attempt: int
    ) -> dict[str, Any]:
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
        return {"status": 200, "id": self._message_id(channel, key)}

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
            repeat = self._accepted_already(channel, delivery_id)
            result: dict[str, Any]
            if repeat:
                result = {"status": 200, "id": self._message_id(channel, delivery_id)}
            else:
                result = self._outcome(channel, delivery_id, recipient, attempt)
            status = result["status"]
            record = self._attempt_record(channel, delivery_id, recipient, attempt, result, status)
            self._remember(channel, delivery_id, record, repeat=repeat)
            if self.content:
                record |= {"path": path, "headers": headers, "peer": peer, "json": item}
            results.append(result)
            records.append(record)
        self._record_many(records)
        return 200, {"results": results}, {}


class _SmtpHandler:
    """The SMTP server's hooks (``devtools.sinks.smtp.SmtpHandler``): refuse, delay or
    accept each recipient and message per the rules; count and record what arrived, the
    records of one read written together."""

    def __init__(self, sink: SinkServer) -> None:
        self.sink = sink
        self._pending: list[dict[str, Any]] = []
        # Delivery ids accepted once: a bit per integer id (devtools.sinks.idset).
        self._accepted_ids = IdSet()

    def recipient_refusal(self, address: str) -> str | None:
        if not self.sink.rules.rejects(address):
            return None
        self._pending.append(
            {"channel": "email", "delivery_id": None, "to": address, "status": 550}
            | {"accepted": False}
        )
        return f"550 5.1.1 <{address}>: Recipient address rejected"

    def message(
        self, peer: str, mail_from: str, recipients: list[str], content: bytes
    ) -> str | Awaitable[str]:
        headers = None
        if self.sink.content:
            headers = BytesHeaderParser(policy=default_policy).parsebytes(content)
            delivery_id = headers.get(DELIVERY_ID_HEADER)
        else:
            delivery_id = _delivery_id(content)
        recipient = ",".join(recipients)
        attempt = self.sink._attempt("email", delivery_id or recipient)
        delay = self.sink.rules.delay_for(recipient)
        if delay:
            return self._answer_later(
                delay, peer, mail_from, recipients, content, delivery_id, attempt
            )
        return self._answer(peer, mail_from, recipients, content, delivery_id, attempt, headers)

    async def _answer_later(
        self,
        delay: float,
        peer: str,
        mail_from: str,
        recipients: list[str],
        content: bytes,
        delivery_id: str | None,
        attempt: int,
    ) -> str:
        await asyncio.sleep(delay)
        headers = None
        if self.sink.content:
            headers = BytesHeaderParser(policy=default_policy).parsebytes(content)
        return self._answer(peer, mail_from, recipients, content, delivery_id, attempt, headers)

    def _answer(
        self,
        peer: str,
        mail_from: str,
        recipients: list[str],
        content: bytes,
        delivery_id: str | None,
        attempt: int,
        headers: Message | None,
    ) -> str:
        sink, rules = self.sink, self.sink.rules
        recipient = ",".join(recipients)
        if rules.fails(recipient, attempt) or rules.throttles(recipient, attempt):
            status, reply = 451, "451 4.3.0 Temporary failure, try again later"
        else:
            message_id = sink._next_id()
            status, reply = 250, f"250 2.0.0 OK queued as {message_id}"
            sink.smtp_messages += 1
            sink.smtp_recipients += len(recipients)
            if delivery_id is not None and not self._accepted_ids.add(delivery_id):
                sink.smtp_duplicates += 1
        record: dict[str, Any] = {
            "channel": "email",
            "delivery_id": delivery_id,
            "to": recipient,
            "status": status,
            "accepted": status == 250,
            "attempt": attempt,
        }
        if headers is not None:
            record["peer"] = peer
            record["mail_from"] = mail_from
            record["headers"] = {name: str(value) for name, value in headers.items()}
            record["raw"] = content.decode("utf-8", errors="replace")
        self._pending.append(record)
        return reply

    def flush(self) -> None:
        if self._pending:
            self.sink._record_many(self._pending)
            self._pending = []


_DELIVERY_ID_LINE = b"\n" + DELIVERY_ID_HEADER.encode() + b":"


def _delivery_id(content: bytes) -> str | None:
    """The ``X-Salvo-Delivery-Id`` header's value, found by a byte search in the header
    block: what a million-message benchmark can afford, where parsing costs ~30 µs."""
    end = content.find(b"\r\n\r\n")
    block = b"\n" + (content if end < 0 else content[: end + 2])
    start = block.find(_DELIVERY_ID_LINE)
    if start < 0:  # another client may spell the name in another case
        start = block.lower().find(_DELIVERY_ID_LINE.lower())
        if start < 0:
            return None
    start += len(_DELIVERY_ID_LINE)
    value = block[start : block.find(b"\n", start)].strip()
    return value.decode("ascii", errors="replace") or None
