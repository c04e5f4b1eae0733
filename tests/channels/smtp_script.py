"""A scripted SMTP server on loopback for the wire path's tests: real sockets, replies from
a script, and a record of every command line with whether it arrived before the reply to
the command before it was written (a pipelined command).

The server keeps RFC 5321's state: a MAIL inside an open transaction is refused (503), so
is a RCPT without MAIL or a DATA without an accepted recipient (554, or 503 without MAIL).
Scripted replies, by recipient (``rcpt``: its RCPT's reply, ``data``: its DATA's,
``end``: its end of data's) or by the number of the MAIL command (``mail``, counted from
0 over the server's life).

With ``chunking`` the server advertises CHUNKING (RFC 3030) and takes ``BDAT <n> [LAST]``
and its n octets as they are. Like Postfix's smtpd, a BDAT without an accepted recipient
is answered 554 (503 without MAIL) and leaves the transaction open, and so does a
recipient's ``data`` refusal (given to its BDAT LAST); its ``end`` reply is the BDAT
LAST's otherwise, and ends the transaction.

A reply of ``"421 …"`` is written and the connection closed; ``DROP`` closes it without a
reply.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

DROP = "drop"


@dataclass
class Line:
    connection: int
    text: str  # a command line, or "<content>" for a message's content and its final dot
    early: bool  # arrived before the reply to the command before it was written


@dataclass
class Received:
    connection: int
    mail_from: str
    rcpt_to: str
    content: bytes  # as the client meant it: CRLF line ends, dots unstuffed


@dataclass
class SmtpScript:
    pipelining: bool = True
    chunking: bool = False
    mail: dict[int, str] = field(default_factory=dict)
    rcpt: dict[str, str] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)
    end: dict[str, str] = field(default_factory=dict)
    # DATA's reply when no recipient was accepted: a 354 makes the client send a lone dot.
    data_without_recipients: str = "554 5.5.1 No valid recipients"
    lines: list[Line] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    quits: int = 0
    mails: int = 0
    port: int = 0

    def commands(self, connection: int | None = None) -> list[str]:
        return [
            line.text for line in self.lines if connection is None or line.connection == connection
        ]

    def delivered(self) -> list[str]:
        return [message.rcpt_to for message in self.received]


class _Session(asyncio.Protocol):
    def __init__(self, script: SmtpScript) -> None:
        self.script = script
        script.connections += 1
        self.number = script.connections
        self.buffer = b""
        self.replies = 0  # replies written to commands (the greeting is not one)
        self.commands = 0  # commands (and contents) read
        self.mail_from: str | None = None
        self.rcpt_to: list[str] = []
        self.in_data = False
        self.content: list[bytes] = []
        self.closed = False
        # A BDAT's octets still to come (None: none), whether it is the LAST, its refusal.
        self.bdat_left: int | None = None
        self.bdat_last = False
        self.bdat_refusal: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"220 scripted ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        replies_before = self.replies  # how many replies this chunk's sender could have read
        self.buffer += data
        while not self.closed:
            if self.bdat_left is not None:
                taken = self.buffer[: self.bdat_left]
                self.buffer = self.buffer[len(taken) :]
                self.content.append(taken)
                self.bdat_left -= len(taken)
                if self.bdat_left:
                    return
                self.bdat_left = None
                self._end_of_chunk()
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            if self.in_data:
                if line == b".":
                    self._end_of_data(early=replies_before < self.commands)
                else:
                    self.content.append(line[1:] if line.startswith(b".") else line)
                continue
            text = line.decode("ascii", errors="replace")
            early = replies_before < self.commands
            self.commands += 1
            self.script.lines.append(Line(self.number, text, early))
            self._command(text)

    def _reply(self, reply: str) -> None:
        self.replies += 1
        if reply == DROP:
            self._close()
            return
        self.transport.write(reply.encode() + b"\r\n")
        if reply.startswith("421") or reply.startswith("221"):
            self._close()

    def _close(self) -> None:
        self.closed = True
        self.transport.close()

    def _command(self, text: str) -> None:
        verb = text[:4].upper()
        script = self.script
        if verb == "EHLO":
            extensions = ["SIZE 10000000", "8BITMIME"]
            if script.pipelining:
                extensions.insert(0, "PIPELINING")
            if script.chunking:
                extensions.append("CHUNKING")
            lines = ["scripted", *extensions]
            self.replies += 1
            self.transport.write(
                "".join(
                    f"250{'-' if n < len(lines) - 1 else ' '}{line}\r\n"
                    for n, line in enumerate(lines)
                ).encode()
            )
        elif verb == "HELO" or verb == "NOOP":
            self._reply("250 OK")
        elif verb == "QUIT":
            script.quits += 1
            self._reply("221 Bye")
        elif verb == "RSET":
            self.mail_from, self.rcpt_to, self.content = None, [], []
            self._reply("250 OK")
        elif verb == "MAIL":
            number = script.mails
            script.mails += 1
            if self.mail_from is not None:
                self._reply("503 5.5.1 Nested MAIL command")
                return
            reply = script.mail.get(number, "250 2.1.0 OK")
            if reply.startswith("250"):
                self.mail_from = text.partition("<")[2].partition(">")[0]
            self._reply(reply)
        elif verb == "RCPT":
            if self.mail_from is None:
                self._reply("503 5.5.1 Need MAIL command")
                return
            address = text.partition("<")[2].partition(">")[0]
            reply = script.rcpt.get(address, "250 2.1.5 OK")
            if reply.startswith("25"):
                self.rcpt_to.append(address)
            self._reply(reply)
        elif verb == "DATA":
            if self.mail_from is None:
                self._reply("503 5.5.1 Need MAIL command")
            elif not self.rcpt_to:
                reply = script.data_without_recipients
                if reply.startswith("354"):
                    self.in_data, self.content = True, []
                self._reply(reply)
            else:
                reply = script.data.get(self.rcpt_to[0], "354 End data with <CR><LF>.<CR><LF>")
                # A refused DATA leaves the transaction open: the client must RSET.
                if reply.startswith("354"):
                    self.in_data, self.content = True, []
                self._reply(reply)
        elif verb == "BDAT" and script.chunking:
            words = text.split()
            if len(words) not in (2, 3) or not words[1].isdigit():
                self._reply("501 5.5.4 Syntax: BDAT size [LAST]")
                return
            if self.mail_from is None:
                self.bdat_refusal = "503 5.5.1 Need MAIL command"
            elif not self.rcpt_to:
                self.bdat_refusal = "554 5.5.1 No valid recipients"
            else:
                self.bdat_refusal = None
            self.bdat_left = int(words[1])
            self.bdat_last = len(words) == 3 and words[2].upper() == "LAST"
            if self.bdat_left == 0:
                self.bdat_left = None
                self._end_of_chunk()
        else:
            self._reply("500 5.5.2 Unknown command")

    def _end_of_chunk(self) -> None:
        if self.bdat_refusal is not None:
            self.content = []
            self._reply(self.bdat_refusal)
            return
        if not self.bdat_last:
            self._reply(f"250 2.0.0 {len(self.content[-1])} octets received")
            return
        recipient = self.rcpt_to[0]
        refused = self.script.data.get(recipient, "354")
        if not refused.startswith("354"):
            self.content = []
            self._reply(refused)  # the transaction stays open: the client must RSET
            return
        reply = self.script.end.get(recipient, "250 2.0.0 OK queued")
        if reply.startswith("250"):
            self.script.received.append(
                Received(self.number, self.mail_from or "", recipient, b"".join(self.content))
            )
        self.content = []
        self.mail_from, self.rcpt_to = None, []
        self._reply(reply)

    def _end_of_data(self, *, early: bool) -> None:
        self.commands += 1
        self.script.lines.append(Line(self.number, "<content>", early))
        self.in_data = False
        if not self.rcpt_to:
            self.mail_from = None
            self._reply("554 5.5.1 No valid recipients" if self.content else "250 Nothing sent")
            return
        recipient = self.rcpt_to[0]
        reply = self.script.end.get(recipient, "250 2.0.0 OK queued")
        if reply.startswith("250"):
            self.script.received.append(
                Received(
                    self.number,
                    self.mail_from or "",
                    recipient,
                    b"".join(line + b"\r\n" for line in self.content),
                )
            )
        self.mail_from, self.rcpt_to = None, []
        self._reply(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True


@contextmanager
def scripted_smtp(script: SmtpScript | None = None) -> Iterator[SmtpScript]:
    """Serve `script` on a loopback port (``script.port``) from a thread of its own."""
    script = script or SmtpScript()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    server: asyncio.Server | None = None
    sessions: list[_Session] = []

    def session() -> _Session:
        sessions.append(_Session(script))
        return sessions[-1]

    async def start() -> None:
        nonlocal server
        server = await loop.create_server(session, "127.0.0.1", 0)
        script.port = server.sockets[0].getsockname()[1]
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=5)
    ready.wait(5)
    try:
        yield script
    finally:

        async def stop() -> None:
            assert server is not None
            server.close()
            # As a server that shuts down: a client's kept session ends now, rather than
            # waiting out its timeout for a QUIT's reply.
            for open_session in sessions:
                if not open_session.closed:
                    open_session.transport.close()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
