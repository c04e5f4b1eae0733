"""One SMTP connection that carries many messages, pipelined when the server allows it.

The handshake is Django's own SMTP backend's ``open()`` (smtplib: connect, implicit TLS,
STARTTLS, AUTH, with Django's settings and SSL context), then EHLO. From there the session
writes the transactions itself on smtplib's socket and reads the replies through
smtplib's reader, so that smtplib's QUIT still works at the end.

RFC 3030 chunking, when the EHLO reply advertises CHUNKING and PIPELINING: each message is
MAIL FROM, RCPT TO and ``BDAT <octets> LAST`` followed by its content as it is (no dot
stuffing, no final dot), so nothing waits for a 354: a window of messages goes in one
write, and the next window is written before the previous one's replies are read (at
most two windows unanswered, so that neither side can block on full socket buffers).
As the replies are not known when a message is written, and a transaction refused at
RCPT or BDAT may stay open on the server (Postfix's smtpd keeps it open until RSET, as
after a refused DATA), every message but a session's first in a clean state opens with
RSET: one more command and reply per message, and no round trip.

RFC 2920 pipelining, when the EHLO reply advertises PIPELINING (and not CHUNKING): MAIL
FROM, RCPT TO and DATA go in one write; after the 354, the message's content and its
final dot go in the same write as the next message's MAIL, RCPT and DATA (§3.1: the
content may open a group), so a message costs about one round trip. Without PIPELINING,
one command at a time.

Each reply keeps its meaning for its message: 4xx is transient, 5xx permanent, with the
server's text, whether the refusal comes at MAIL, RCPT, DATA, BDAT or the end of data. The
first refusal of a transaction is its reason (the 503s that follow a refused MAIL only
echo it). RSET goes out only when a transaction is open (MAIL was accepted, then RCPT or
DATA refused); a refused end of data closes the transaction by itself.

A 421 reply, a timeout or a lost connection end the session (``lost`` says why): a
message whose content was written but whose reply was not read is transient (the server
may have taken it); the messages whose content was not written are ``UNSENT``, safe to
send again on a new connection. With chunking, every content written but not answered is
in doubt after a lost connection; after a 421 (the server closes, and reads nothing
after the command it answers) a message refused 421 before its BDAT, and the ones after
it, are ``UNSENT``, a 421 to its BDAT leaves it in doubt.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import smtplib
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.core.mail.backends.smtp import EmailBackend as DjangoSmtpBackend

from .. import ProviderError, TransientProviderError
from ..email import smtp_refusal

__all__ = [
    "Envelope",
    "SmtpSession",
    "Wire",
    "WireOutcome",
    "crlf_content",
    "wire_address",
]

_MAXLINE = 8192  # smtplib's longest reply line
_DATA = b"DATA\r\n"
_RSET = b"RSET\r\n"
# Chunking: a window of at most this many messages or (about) bytes goes in one write.
_WINDOW_MESSAGES = 32
_WINDOW_BYTES = 256 * 1024
_BARE_EOL = re.compile(rb"\r\n|\r|\n")
# An envelope address: printable ASCII (a quoted local part may hold spaces), no brackets.
_ADDRESS = re.compile(rb"[\x20-\x3b\x3d\x3f-\x7e]+")


class Wire(enum.Enum):
    ACCEPTED = "accepted"  # the end of data was answered 2xx
    UNSENT = "unsent"  # the content never left: safe to send on another connection


WireOutcome = Wire | ProviderError


@dataclass(frozen=True, slots=True)
class Envelope:
    """One transaction's wire parts: ``wire_address``es and ``crlf_content`` (the session
    dot-stuffs it for DATA, sends it as it is after BDAT)."""

    sender: bytes
    recipient: bytes
    content: bytes


def wire_address(address: str) -> bytes:
    """The bytes between the brackets of MAIL FROM or RCPT TO; ``ValueError`` for an address
    that is not printable ASCII or would break the command line."""
    raw = address.encode("ascii")  # UnicodeEncodeError is a ValueError
    if _ADDRESS.fullmatch(raw) is None:
        raise ValueError(f"Invalid envelope address {address!r}")
    return raw


def crlf_content(message: bytes) -> bytes:
    """The message as BDAT carries it: CRLF line ends (a bare CR or LF becomes CRLF, RFC
    5321 §2.3.8), the last line ended too."""
    crlf = message.count(b"\r\n")
    if crlf != message.count(b"\n") or crlf != message.count(b"\r"):
        message = _BARE_EOL.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message


def _dot_stuffed(content: bytes) -> bytes:
    # A line that starts with a dot gets a second one (§4.5.2), then the final dot.
    if b"\r\n." in content:
        content = content.replace(b"\r\n.", b"\r\n..")
    if content.startswith(b"."):
        content = b"." + content
    return content + b".\r\n"


class _Lost(Exception):
    """The server closed the session (421) or spoke out of protocol."""

    def __init__(self, message: str, *, closing: bool = False) -> None:
        super().__init__(message)
        self.closing = closing  # a 421: the server read nothing after the command it answers


def _text(raw: bytes) -> str:
    """A reply's text, its lines without their codes."""
    return "\n".join(
        line[4:].strip(b" \t").decode(errors="replace") for line in raw.splitlines() if line
    )


def _reason(code: int, raw: bytes) -> str:
    """What the reply says, as the email backend says it: ``SMTP 550: text``."""
    return smtp_refusal(code, _text(raw)).reason


def _refusal(code: int, raw: bytes) -> ProviderError:
    return smtp_refusal(code, _text(raw))


def connection_settings(backend: DjangoSmtpBackend) -> tuple[Any, ...]:
    """What makes two SMTP connections interchangeable: Django's backend's settings."""
    return (
        backend.host,
        backend.port,
        backend.username,
        backend.password,
        backend.use_tls,
        backend.use_ssl,
        backend.timeout,
        backend.ssl_certfile,
        backend.ssl_keyfile,
    )


class SmtpSession:
    """An open, greeted (and, per the settings, encrypted and authenticated) connection."""

    def __init__(self, django_backend: DjangoSmtpBackend, key: tuple[Any, ...]) -> None:
        smtp = django_backend.connection
        assert smtp is not None
        smtp.ehlo_or_helo_if_needed()
        self._django_backend = django_backend
        self.key = key
        self.pid = os.getpid()
        self.pipelining = smtp.has_extn("pipelining")
        self.chunking = self.pipelining and smtp.has_extn("chunking")
        self._open = False  # chunking: a transaction may be open on the server (RSET first)
        self._size = smtp.has_extn("size")
        sock, reader = smtp.sock, smtp.file
        # Greeted: connected, and smtplib has read replies.
        assert sock is not None
        assert reader is not None
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # One write per group, then wait for its replies: never hold a segment back.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock: socket.socket = sock
        self._readline = reader.readline
        self.last_used = time.monotonic()
        self.lost = ""  # why the connection ended, once it has

    @classmethod
    def connect(cls, django_backend: DjangoSmtpBackend, key: tuple[Any, ...]) -> SmtpSession:
        """Django's handshake; raises ``smtplib.SMTPException`` or ``OSError``."""
        try:
            django_backend.open()
            return cls(django_backend, key)
        except BaseException:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                django_backend.close()
            raise

    # --- sending ------------------------------------------------------------------------

    def deliver(self, envelopes: Sequence[Envelope]) -> list[WireOutcome]:
        """One outcome per envelope, in order; after a lost connection the messages not
        written are ``Wire.UNSENT`` and ``lost`` says why."""
        outcomes: list[WireOutcome] = [Wire.UNSENT] * len(envelopes)
        if self.lost:
            return outcomes
        if self.chunking:
            self._deliver_chunked(envelopes, outcomes)
        elif self.pipelining:
            self._deliver_pipelined(envelopes, outcomes)
        else:
            self._deliver_one_command_at_a_time(envelopes, outcomes)
        self.last_used = time.monotonic()
        return outcomes

    def _mail(self, envelope: Envelope) -> bytes:
        # RFC 1870: the message's size, without the stuffed dots and the final one.
        if self._size:
            return b"MAIL FROM:<%b> SIZE=%d\r\n" % (envelope.sender, len(envelope.content))
        return b"MAIL FROM:<%b>\r\n" % envelope.sender

    def _reply(self) -> tuple[int, bytes]:
        """The next reply's code and raw lines; ``_Lost`` on 421 or out of protocol."""
        readline = self._readline
        raw = line = readline(_MAXLINE + 1)
        while line[3:4] == b"-":
            line = readline(_MAXLINE + 1)
            raw += line
        if not line.endswith(b"\n"):
            raise _Lost("Connection unexpectedly closed" if not line else "Reply line too long")
        code = line[:3]
        if not code.isdigit() or code != raw[:3]:
            raise _Lost(f"Malformed reply {raw[:80]!r}")
        number = int(code)
        if number == 421:
            raise _Lost(_reason(number, raw), closing=True)
        return number, raw

    def _deliver_pipelined(
        self, envelopes: Sequence[Envelope], outcomes: list[WireOutcome]
    ) -> None:
        write = self._sock.sendall
        reply = self._reply
        tail = b""  # written first in the next write: the last 354's content and final dot
        queued = -1  # whose content `tail` holds (-1: none)
        queued_abort = False  # `tail` is a lone dot: the transaction was refused, yet got 354
        in_flight = -1  # whose content was written, its end-of-data reply not read yet
        reset = False  # a transaction is open: RSET opens the next group
        try:
            for index, envelope in enumerate(envelopes):
                group = tail + (_RSET if reset else b"") + self._mail(envelope)
                in_flight, abort, queued, tail = queued, queued_abort, -1, b""
                write(group + b"RCPT TO:<%b>\r\n" % envelope.recipient + _DATA)
                if in_flight >= 0:
                    code, raw = reply()
                    if not abort:
                        outcomes[in_flight] = (
                            Wire.ACCEPTED if code // 100 == 2 else _refusal(code, raw)
                        )
                    in_flight = -1
                if reset:
                    code, raw = reply()
                    if code // 100 != 2:
                        raise _Lost(f"RSET refused: {_reason(code, raw)}")
                    reset = False
                mail = reply()
                rcpt = reply()
                data = reply()
                if mail[0] // 100 != 2:
                    refusal: tuple[int, bytes] | None = mail
                elif rcpt[0] // 100 != 2:
                    refusal = rcpt
                elif data[0] != 354:
                    refusal = data
                else:
                    refusal = None
                if refusal is not None:
                    outcomes[index] = _refusal(*refusal)
                if data[0] == 354:
                    # Go ahead: the content, or a lone dot when MAIL or RCPT was refused.
                    queued, queued_abort = index, refusal is not None
                    tail = b".\r\n" if queued_abort else _dot_stuffed(envelope.content)
                else:
                    reset = mail[0] // 100 == 2
            if queued >= 0:
                in_flight, abort = queued, queued_abort
                write(tail)
                code, raw = reply()
                if not abort:
                    outcomes[in_flight] = Wire.ACCEPTED if code // 100 == 2 else _refusal(code, raw)
                in_flight = -1
        except (OSError, _Lost) as error:
            if in_flight >= 0 and outcomes[in_flight] is Wire.UNSENT:
                outcomes[in_flight] = self._in_doubt(error)
            self._lose(error)

    def _deliver_chunked(self, envelopes: Sequence[Envelope], outcomes: list[WireOutcome]) -> None:
        """RFC 3030 BDAT, pipelined: windows of whole transactions, each written before the
        previous window's replies are read."""
        write = self._sock.sendall
        reply = self._reply
        count = len(envelopes)
        reset_first = self._open  # the previous call's last transaction may be open
        self._open = self._open or count > 0  # until the last reply says otherwise
        windows: list[int] = []  # where each written window ends, its replies not read
        written = 0  # the messages before this one were written (or began to be)
        answered = 0  # the messages before this one had all their replies read
        at_bdat = False  # the reply being read is the BDAT's
        try:
            while answered < count:
                if written < count:
                    parts: list[bytes] = []
                    size = 0
                    for envelope in envelopes[written : written + _WINDOW_MESSAGES]:
                        content = envelope.content
                        parts.append(
                            (_RSET if written or reset_first else b"")
                            + self._mail(envelope)
                            + b"RCPT TO:<%b>\r\nBDAT %d LAST\r\n"
                            % (envelope.recipient, len(content))
                        )
                        written += 1
                        if len(content) >= _WINDOW_BYTES:
                            # A large message goes as it is, not copied into the window.
                            write(b"".join(parts))
                            parts = []
                            write(content)
                            break
                        parts.append(content)
                        size += len(content)
                        if size >= _WINDOW_BYTES:
                            break
                    windows.append(written)
                    if parts:
                        write(b"".join(parts))
                    if len(windows) < 2 and written < count:
                        continue  # a second window goes before the first one's replies
                for current in range(answered, windows.pop(0)):
                    at_bdat = False
                    if current or reset_first:
                        code, raw = reply()
                        if code // 100 != 2:
                            raise _Lost(f"RSET refused: {_reason(code, raw)}")
                    mail = reply()
                    if mail[0] // 100 != 2:
                        outcomes[current] = _refusal(*mail)
                    rcpt = reply()
                    if rcpt[0] // 100 != 2 and outcomes[current] is Wire.UNSENT:
                        outcomes[current] = _refusal(*rcpt)
                    at_bdat = True
                    code, raw = reply()
                    accepted = code // 100 == 2
                    if outcomes[current] is Wire.UNSENT:
                        outcomes[current] = Wire.ACCEPTED if accepted else _refusal(code, raw)
                    # Refused at RCPT or BDAT after an accepted MAIL: it may still be open.
                    self._open = mail[0] // 100 == 2 and not accepted
                    answered = current + 1
        except (OSError, _Lost) as error:
            # Written, not answered: in doubt. After a 421 the server read no further: only
            # a 421 to a BDAT leaves its message in doubt, the rest is unsent.
            in_doubt = written
            if isinstance(error, _Lost) and error.closing:
                in_doubt = answered + 1 if at_bdat else answered
            for index in range(answered, in_doubt):
                if outcomes[index] is Wire.UNSENT:
                    outcomes[index] = self._in_doubt(error)
            self._lose(error)

    def _deliver_one_command_at_a_time(
        self, envelopes: Sequence[Envelope], outcomes: list[WireOutcome]
    ) -> None:
        current, content_written = -1, False
        try:
            for index, envelope in enumerate(envelopes):
                current, content_written = index, False
                code, raw = self._command(self._mail(envelope))
                if code // 100 != 2:
                    outcomes[index] = _refusal(code, raw)
                    continue
                code, raw = self._command(b"RCPT TO:<%b>\r\n" % envelope.recipient)
                if code // 100 == 2:
                    code, raw = self._command(_DATA)
                    if code == 354:
                        content_written = True
                        code, raw = self._command(_dot_stuffed(envelope.content))
                        outcomes[index] = Wire.ACCEPTED if code // 100 == 2 else _refusal(code, raw)
                        continue
                outcomes[index] = _refusal(code, raw)
                code, raw = self._command(_RSET)
                if code // 100 != 2:
                    raise _Lost(f"RSET refused: {_reason(code, raw)}")
        except (OSError, _Lost) as error:
            if content_written and outcomes[current] is Wire.UNSENT:
                outcomes[current] = self._in_doubt(error)
            self._lose(error)

    def _command(self, line: bytes) -> tuple[int, bytes]:
        self._sock.sendall(line)
        return self._reply()

    @staticmethod
    def _in_doubt(error: Exception) -> TransientProviderError:
        # The content left but its reply never came: the server may have taken it.
        return TransientProviderError(f"Mail server connection failed: {error}")

    # --- ending ---------------------------------------------------------------------------

    def _lose(self, error: Exception) -> None:
        self.lost = str(error) or type(error).__name__
        smtp, self._django_backend.connection = self._django_backend.connection, None
        if smtp is not None:
            smtp.close()

    def forget(self) -> None:
        """Let go without a word: the connection belongs to another process (a fork)."""
        self.lost = self.lost or "Left to the process that opened it"
        self._django_backend.connection = None

    def quit(self) -> None:
        """Say QUIT and close, whatever state the server is in."""
        self.lost = self.lost or "Closed"
        with contextlib.suppress(smtplib.SMTPException, OSError):
            self._django_backend.close()
