"""A small, fast SMTP server for the sink: one ``asyncio.Protocol`` per connection that
parses the bytes it is given and answers all the commands of one read in one write.

It speaks EHLO/HELO, MAIL, RCPT, DATA, BDAT, RSET, NOOP and QUIT, advertises PIPELINING
(RFC 2920), 8BITMIME, ENHANCEDSTATUSCODES and SIZE, CHUNKING (RFC 3030) when told to,
STARTTLS with an SSL context and AUTH PLAIN/LOGIN with credentials (MAIL before AUTH is
then refused with 530). ``BDAT <n> [LAST]`` chunks are taken as they are (any number per
message, no dot-unstuffing) under DATA's rules and limits; a BDAT that cannot be taken
(no MAIL: 503, no accepted recipient: 554, over SIZE: 552, CHUNKING not advertised: 500)
still has its n octets read and dropped, and ends the transaction. It keeps RFC
5321's limits: a line over 1000 octets (CRLF included) is answered 500, a message over
SIZE 552, a recipient past the limit 452. On shutdown open sessions get 421.

Without PIPELINING it notices a client that pipelines anyway: a command that arrived
before the previous reply was written is counted in ``SmtpStats.early_commands`` (and its
verb kept), so tests can assert that a client sends one command at a time.

What happens to each recipient and message is the ``SmtpHandler``'s business (the sink's
failure rules and records, ``devtools.sinks.server``); this module knows only SMTP.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Protocol

# RFC 5321 4.5.3.1.6: a text line is at most 1000 octets, CRLF included.
MAX_LINE = 1000
DEFAULT_SIZE_LIMIT = 32 * 1024 * 1024
# RFC 5321 4.5.3.1.8 asks for at least 100; a campaign's email has one.
DEFAULT_MAX_RECIPIENTS = 100
_END_OF_DATA = b"\r\n.\r\n"


class SmtpHandler(Protocol):
    """What the server asks of its owner, per recipient and per message."""

    def recipient_refusal(self, address: str) -> str | None:
        """The reply refusing this recipient (``550 …``), or None to accept it."""

    def message(
        self, peer: str, mail_from: str, recipients: list[str], content: bytes
    ) -> str | Awaitable[str]:
        """The reply to a message's end of data (what ``DATA`` carried, dot-unstuffed);
        an awaitable when the answer must wait (a slow recipient)."""

    def flush(self) -> None:
        """Write down what the last calls decided, before their replies go out."""


@dataclass
class SmtpStats:
    """What the server counts across its sessions."""

    sessions: int = 0
    # Commands that arrived before the previous reply was written, without PIPELINING.
    early_commands: int = 0
    early_verbs: list[str] = field(default_factory=list)


@dataclass
class SmtpOptions:
    hostname: str = "salvo-sink"
    pipelining: bool = True
    # RFC 3030 BDAT: off by default, so that the main SMTP figure is DATA's.
    chunking: bool = False
    size_limit: int = DEFAULT_SIZE_LIMIT
    max_recipients: int = DEFAULT_MAX_RECIPIENTS
    # STARTTLS is offered with a context, AUTH PLAIN and LOGIN with credentials.
    ssl_context: ssl.SSLContext | None = None
    credentials: dict[str, str] = field(default_factory=dict)


class SmtpServer:
    """The listening server and its open sessions (so that shutdown can say 421)."""

    def __init__(self, handler: SmtpHandler, options: SmtpOptions | None = None) -> None:
        self.handler = handler
        self.options = options or SmtpOptions()
        self.stats = SmtpStats()
        self.sessions: set[SmtpSession] = set()
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: SmtpSession(self), host, port)
        return int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.shut_down()


class SmtpSession(asyncio.Protocol):
    """One client's connection: a state machine over the bytes received."""

    def __init__(self, server: SmtpServer) -> None:
        self.server = server
        self.options = server.options
        self.handler = server.handler
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self._buffer = bytearray()
        self._replies: list[bytes] = []
        # A reply is awaited (a slow message, STARTTLS): hold the buffer until it is done.
        self._busy = False
        self._closing = False
        # A command line over MAX_LINE was answered before its end arrived: skip to it.
        self._overlong = False
        self._greeted = False
        self._tls = False
        self._authenticated = False
        # The transaction: None until MAIL.
        self._mail_from: str | None = None
        self._recipients: list[str] = []
        self._in_data = False
        # Where the search for the end of data resumes (no rescan of what was searched).
        self._data_scan = 0
        # A BDAT's octets still to come (None: no BDAT open), whether it is the LAST, the
        # reply refusing it (its octets are dropped), and the message's chunks so far.
        self._bdat_left: int | None = None
        self._bdat_last = False
        self._bdat_refusal: str | None = None
        self._chunks: list[bytes] = []
        self._chunks_size = 0
        # An AUTH exchange in progress: (mechanism, user so far) for LOGIN, or PLAIN.
        self._auth: tuple[str, str | None] | None = None

    # --- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else ""
        self.server.sessions.add(self)
        self.server.stats.sessions += 1
        transport.write(f"220 {self.options.hostname} ESMTP Salvo sink\r\n".encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.sessions.discard(self)
        self._closing = True

    def data_received(self, data: bytes) -> None:
        if self._busy:
            if not self._in_data and self._bdat_left is None and not self.options.pipelining:
                self._early(bytes(data))
            self._buffer += data
            return
        self._buffer += data
        self._process()

    def shut_down(self) -> None:
        if self.transport is not None and not self._closing:
            self.transport.write(b"421 4.3.2 Service shutting down\r\n")
            self.transport.close()
        self._closing = True

    # --- the state machine ----------------------------------------------------------

    def _process(self) -> None:
        """Handle every complete command and message in the buffer, then write the
        replies in one go (after the handler has written down what they say)."""
        buffer = self._buffer
        while not self._closing and not self._busy:
            if self._bdat_left is not None:
                if not self._take_chunk():
                    break
                self._check_one_at_a_time()
                continue
            if self._in_data:
                if not self._take_message():
                    break
                self._check_one_at_a_time()
                continue
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) >= MAX_LINE:
                    # Answered now; the rest of the line, when it comes, is dropped.
                    del buffer[:]
                    if not self._overlong:
                        self._overlong = True
                        self._reply("500 5.5.2 Line too long")
                break
            line = bytes(buffer[: end + 1])
            del buffer[: end + 1]
            if self._overlong:
                self._overlong = False
                continue
            if len(line) > MAX_LINE:
                self._reply("500 5.5.2 Line too long")
                continue
            self._command(line.rstrip(b"\r\n").decode("utf-8", errors="replace"))
            self._check_one_at_a_time()
        self._write_replies()

    def _check_one_at_a_time(self) -> None:
        """Without PIPELINING, bytes already here when a reply is due (the next command,
        or a message's content before its 354) were sent before the client read it."""
        if (
            self._buffer
            and not self.options.pipelining
            and not self._busy
            and self._bdat_left is None  # a chunk's octets follow its BDAT at once
        ):
            self._early(bytes(self._buffer[:64]))

    def _early(self, data: bytes) -> None:
        stats = self.server.stats
        stats.early_commands += 1
        if len(stats.early_verbs) < 1000:  # enough to say which; a benchmark's run has more
            verb = (data.split(None, 1) or [b""])[0].upper()
            stats.early_verbs.append(verb.decode(errors="replace"))

    def _reply(self, text: str) -> None:
        self._replies.append(text.encode() + b"\r\n")

    def _write_replies(self) -> None:
        if self._replies:
            self.handler.flush()
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(b"".join(self._replies))
            self._replies.clear()

    def _command(self, line: str) -> None:
        if self._auth is not None:
            self._auth_continue(line)
            return
        verb, _, argument = line.partition(" ")
        verb = verb.upper()
        handler = _COMMANDS.get(verb)
        if handler is None:
            self._reply(f"502 5.5.1 Command {verb or '(empty)'} not implemented")
            return
        handler(self, argument.strip())

    def _ehlo(self, argument: str) -> None:
        if not argument:
            self._reply("501 5.5.4 Syntax: EHLO hostname")
            return
        self._greeted = True
        self._reset()
        lines = [self.options.hostname, f"SIZE {self.options.size_limit}", "8BITMIME"]
        if self.options.pipelining:
            lines.append("PIPELINING")
        if self.options.chunking:
            lines.append("CHUNKING")
        lines.append("ENHANCEDSTATUSCODES")
        if self.options.ssl_context is not None and not self._tls:
            lines.append("STARTTLS")
        if self.options.credentials and not self._authenticated:
            lines.append("AUTH PLAIN LOGIN")
        for line in lines[:-1]:
            self._reply(f"250-{line}")
        self._reply(f"250 {lines[-1]}")

    def _helo(self, argument: str) -> None:
        if not argument:
            self._reply("501 5.5.4 Syntax: HELO hostname")
            return
        self._greeted = True
        self._reset()
        self._reply(f"250 {self.options.hostname}")

    def _mail(self, argument: str) -> None:
        if not self._greeted:
            self._reply("503 5.5.1 Error: send HELO first")
        elif self.options.credentials and not self._authenticated:
            self._reply("530 5.7.0 Authentication required")
        elif self._mail_from is not None:
            self._reply("503 5.5.1 Error: nested MAIL command")
        elif not argument.upper().startswith("FROM:"):
            self._reply("501 5.5.4 Syntax: MAIL FROM:<address>")
        else:
            address, parameters = _path_and_parameters(argument[5:])
            size = parameters.get("SIZE", "0")
            if address is None or not size.isdigit():
                self._reply("501 5.5.4 Syntax: MAIL FROM:<address>")
            elif int(size) > self.options.size_limit:
                self._reply("552 5.3.4 Message size exceeds fixed maximum message size")
            else:
                self._mail_from = address
                self._reply("250 2.1.0 OK")

    def _rcpt(self, argument: str) -> None:
        if self._mail_from is None:
            self._reply("503 5.5.1 Error: need MAIL command")
            return
        if not argument.upper().startswith("TO:"):
            self._reply("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        address, _ = _path_and_parameters(argument[3:])
        if not address:
            self._reply("501 5.5.4 Syntax: RCPT TO:<address>")
        elif len(self._recipients) >= self.options.max_recipients:
            self._reply("452 4.5.3 Too many recipients")
        else:
            refusal = self.handler.recipient_refusal(address)
            if refusal is not None:
                self._reply(refusal)
            else:
                self._recipients.append(address)
                self._reply("250 2.1.5 OK")

    def _data(self, argument: str) -> None:
        if argument:
            self._reply("501 5.5.4 Syntax: DATA")
        elif self._mail_from is None:
            self._reply("503 5.5.1 Error: need MAIL command")
        elif self._chunks:
            self._reply("503 5.5.1 Error: DATA after BDAT")
        elif not self._recipients:
            # RFC 2920: a pipelined DATA after refused recipients is refused, not 354; the
            # transaction ends, so that the client's next MAIL starts another.
            self._reset()
            self._reply("554 5.5.1 Error: no valid recipients")
        else:
            self._in_data = True
            self._data_scan = 0
            self._reply("354 End data with <CR><LF>.<CR><LF>")

    def _take_message(self) -> bool:
        """The message in the buffer, if its end of data arrived; False while it has not."""
        buffer = self._buffer
        if buffer.startswith(b".\r\n"):
            end, content = 0, b""
            consumed = 3
        else:
            end = buffer.find(_END_OF_DATA, self._data_scan)
            if end < 0:
                self._data_scan = max(0, len(buffer) - 4)
                return False
            content = bytes(buffer[: end + 2])
            consumed = end + 5
        del buffer[:consumed]
        self._in_data = False
        mail_from, recipients = self._mail_from or "", self._recipients
        self._reset()
        if len(content) > self.options.size_limit:
            self._reply("552 5.3.4 Message size exceeds fixed maximum message size")
            return True
        if _has_long_line(content):
            self._reply("500 5.5.2 Line too long")
            return True
        # RFC 5321 4.5.2: the first dot of a line that starts with one goes.
        if b"\r\n." in content:
            content = content.replace(b"\r\n.", b"\r\n")
        if content.startswith(b"."):
            content = content[1:]
        self._message(mail_from, recipients, content)
        return True

    def _message(self, mail_from: str, recipients: list[str], content: bytes) -> None:
        """A whole message (DATA's or the BDATs'): the handler's reply, now or awaited."""
        answer = self.handler.message(self.peer, mail_from, recipients, content)
        if isinstance(answer, str):
            self._reply(answer)
        else:
            self._wait_for(answer)

    def _bdat(self, argument: str) -> None:
        """RFC 3030: the n octets that follow are the message's next chunk."""
        words = argument.split()
        if (
            not 1 <= len(words) <= 2
            or not words[0].isdigit()
            or (len(words) == 2 and words[1].upper() != "LAST")
        ):
            # The size is unknown: what follows is read as commands.
            self._reply("501 5.5.4 Syntax: BDAT size [LAST]")
            return
        size = int(words[0])
        if not self.options.chunking:
            refusal: str | None = "500 5.5.1 Error: BDAT without CHUNKING"
        elif self._mail_from is None:
            refusal = "503 5.5.1 Error: need MAIL command"
        elif not self._recipients:
            refusal = "554 5.5.1 Error: no valid recipients"
        elif self._chunks_size + size > self.options.size_limit:
            refusal = "552 5.3.4 Message size exceeds fixed maximum message size"
        else:
            refusal = None
        self._bdat_left, self._bdat_last, self._bdat_refusal = size, len(words) == 2, refusal
        if refusal is not None:
            self._reset()  # the transaction fails; the next chunks get 503

    def _take_chunk(self) -> bool:
        """Take what the buffer holds of the open BDAT's octets; True once they are all in
        and the chunk is answered."""
        buffer, left = self._buffer, self._bdat_left
        assert left is not None
        if len(buffer) < left:
            if self._bdat_refusal is None:
                self._chunks.append(bytes(buffer))
                self._chunks_size += len(buffer)
            self._bdat_left = left - len(buffer)
            del buffer[:]
            return False
        if self._bdat_refusal is None:
            self._chunks.append(bytes(buffer[:left]))
            self._chunks_size += left
        del buffer[:left]
        self._bdat_left = None
        if self._bdat_refusal is not None:
            self._reply(self._bdat_refusal)
        elif not self._bdat_last:
            self._reply(f"250 2.0.0 {self._chunks_size} octets received")
        else:
            chunks, mail_from, recipients = self._chunks, self._mail_from or "", self._recipients
            self._reset()
            content = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if _has_long_line(content):
                self._reply("500 5.5.2 Line too long")
            else:
                self._message(mail_from, recipients, content)
        return True

    def _wait_for(self, answer: Awaitable[str]) -> None:
        """Hold the session until the awaited reply is known, then carry on."""
        self._busy = True

        async def wait() -> None:
            try:
                reply = await answer
            except Exception:
                reply = "451 4.3.0 Internal error"
            self._busy = False
            self._reply(reply)
            self._process()

        asyncio.get_running_loop().create_task(wait())

    def _rset(self, argument: str) -> None:
        self._reset()
        self._reply("250 2.0.0 OK")

    def _noop(self, argument: str) -> None:
        self._reply("250 2.0.0 OK")

    def _quit(self, argument: str) -> None:
        self._reply("221 2.0.0 Bye")
        self._write_replies()
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def _starttls(self, argument: str) -> None:
        context = self.options.ssl_context
        if context is None or self._tls:
            self._reply("502 5.5.1 Command STARTTLS not implemented")
            return
        self._reply("220 2.0.0 Ready to start TLS")
        self._write_replies()
        self._busy = True
        del self._buffer[:]  # RFC 3207: what the client sent before the handshake is void

        async def handshake() -> None:
            loop = asyncio.get_running_loop()
            assert self.transport is not None
            try:
                transport = await loop.start_tls(self.transport, self, context, server_side=True)
            except (OSError, ssl.SSLError):
                self._closing = True
                self.transport.close()
                return
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            self._tls = True
            self._greeted = False
            self._reset()
            self._busy = False
            self._process()

        asyncio.get_running_loop().create_task(handshake())

    def _auth_start(self, argument: str) -> None:
        if not self.options.credentials:
            self._reply("502 5.5.1 Command AUTH not implemented")
            return
        if not self._greeted:
            self._reply("503 5.5.1 Error: send EHLO first")
            return
        if self._authenticated:
            self._reply("503 5.5.1 Already authenticated")
            return
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        if mechanism == "PLAIN":
            if initial:
                self._auth_plain(initial)
            else:
                self._auth = ("PLAIN", None)
                self._reply("334 ")
        elif mechanism == "LOGIN":
            if initial:
                self._auth = ("LOGIN", None)
                self._auth_continue(initial)
            else:
                self._auth = ("LOGIN", None)
                self._reply("334 VXNlcm5hbWU6")  # "Username:"
        else:
            self._reply("504 5.5.4 Unrecognized authentication type")

    def _auth_continue(self, line: str) -> None:
        assert self._auth is not None
        mechanism, user = self._auth
        if line == "*":
            self._auth = None
            self._reply("501 5.7.0 Authentication cancelled")
            return
        try:
            decoded = base64.b64decode(line, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            self._auth = None
            self._reply("501 5.5.2 Cannot decode the response")
            return
        if mechanism == "PLAIN":
            self._auth = None
            self._auth_plain(line)
        elif user is None:
            self._auth = ("LOGIN", decoded)
            self._reply("334 UGFzc3dvcmQ6")  # "Password:"
        else:
            self._auth = None
            self._auth_check(user, decoded)

    def _auth_plain(self, encoded: str) -> None:
        try:
            _, user, password = base64.b64decode(encoded, validate=True).decode().split("\0")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            self._reply("501 5.5.2 Cannot decode the response")
            return
        self._auth_check(user, password)

    def _auth_check(self, user: str, password: str) -> None:
        if self.options.credentials.get(user) == password:
            self._authenticated = True
            self._reply("235 2.7.0 Authentication successful")
        else:
            self._reply("535 5.7.8 Authentication credentials invalid")

    def _reset(self) -> None:
        self._mail_from = None
        self._recipients = []
        self._chunks = []
        self._chunks_size = 0


def _has_long_line(content: bytes) -> bool:
    """Whether a line of the content is over MAX_LINE octets, its CRLF included: a jump
    to the last line end in each window of MAX_LINE octets (a few per message, where
    splitting into lines costs more than the rest of the message's handling)."""
    start, size = 0, len(content)
    while size - start > MAX_LINE:
        end = content.rfind(b"\n", start, start + MAX_LINE)
        if end < 0:
            return True
        start = end + 1
    return False


def _path_and_parameters(text: str) -> tuple[str | None, dict[str, str]]:
    """``<address> KEY=VALUE…`` → the address (None when malformed) and the parameters."""
    text = text.strip()
    if text.startswith("<"):
        close = text.find(">")
        if close < 0:
            return None, {}
        address, rest = text[1:close], text[close + 1 :]
    else:
        address, _, rest = text.partition(" ")
    parameters = {}
    for word in rest.split():
        key, _, value = word.partition("=")
        parameters[key.upper()] = value
    return address, parameters


_COMMANDS = {
    "EHLO": SmtpSession._ehlo,
    "HELO": SmtpSession._helo,
    "MAIL": SmtpSession._mail,
    "RCPT": SmtpSession._rcpt,
    "DATA": SmtpSession._data,
    "BDAT": SmtpSession._bdat,
    "RSET": SmtpSession._rset,
    "NOOP": SmtpSession._noop,
    "QUIT": SmtpSession._quit,
    "STARTTLS": SmtpSession._starttls,
    "AUTH": SmtpSession._auth_start,
}
