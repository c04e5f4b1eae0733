"""The SMTP sink (devtools.sinks.smtp) over real sockets: pipelined sessions, a client that
pipelines without the extension, STARTTLS and AUTH through smtplib, the failure rules,
duplicates, and RFC 5321's limits."""

import smtplib
import socket
import ssl

import pytest

from devtools.sinks import running_sinks
from tests.tls_support import self_signed_certificate


def raw_message(delivery_id: str, to: str, body: str = "Hi there") -> bytes:
    return (
        f"From: news@example.com\r\nTo: {to}\r\nSubject: Hello\r\n"
        f"X-Salvo-Delivery-Id: {delivery_id}\r\n\r\n{body}\r\n"
    ).encode()


def transaction(to: str) -> bytes:
    return b"MAIL FROM:<news@example.com>\r\nRCPT TO:<" + to.encode() + b">\r\nDATA\r\n"


class RawClient:
    """A socket that writes whole command groups and reads replies in order."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.file = self.socket.makefile("rb")
        assert self.reply()[0] == 220

    def send(self, data: bytes) -> None:
        self.socket.sendall(data)

    def reply(self) -> tuple[int, list[str]]:
        """One (possibly multi-line) reply: its code and its lines."""
        lines = []
        while True:
            line = self.file.readline().decode()
            assert line.endswith("\r\n"), line
            lines.append(line[4:-2])
            if line[3] == " ":
                return int(line[:3]), lines

    def replies(self, count: int) -> list[int]:
        return [self.reply()[0] for _ in range(count)]

    def close(self) -> None:
        self.file.close()
        self.socket.close()


def test_a_pipelined_session_gets_its_replies_in_order_and_every_message_is_recorded():
    with running_sinks() as sink:
        client = RawClient(sink.smtp_port)
        client.send(b"EHLO client.example\r\n")
        code, lines = client.reply()
        assert code == 250
        assert {"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"} <= set(lines)
        assert "SIZE 33554432" in lines
        # Three whole transactions in one write: each DATA's content right behind it.
        data = b"".join(
            transaction(f"p{i}@example.com")
            + raw_message(f"d{i}", f"p{i}@example.com", body=".dot\r\n..two")
            + b".\r\n"
            for i in range(3)
        )
        client.send(data + b"NOOP\r\nRSET\r\nQUIT\r\n")
        codes = client.replies(3 * 4 + 3)
        client.close()
        counters = sink.smtp_counters()
        received = sink.received("email")

    assert codes == [250, 250, 354, 250] * 3 + [250, 250, 221]
    assert [r["to"] for r in received] == [f"p{i}@example.com" for i in range(3)]
    assert [r["delivery_id"] for r in received] == ["d0", "d1", "d2"]
    assert {r["peer"] for r in received} == {received[0]["peer"]}
    assert received[0]["mail_from"] == "news@example.com"
    assert received[0]["headers"]["Subject"] == "Hello"
    # Dot-unstuffed: a line's leading dot was doubled on the wire.
    assert received[0]["raw"].endswith("\r\n\r\ndot\r\n.two\r\n")
    assert counters | {"early_verbs": []} == {
        "messages": 3,
        "recipients": 3,
        "duplicates": 0,
        "sessions": 1,
        "early_commands": 0,
        "early_verbs": [],
    }


def test_without_content_the_delivery_id_is_found_and_duplicates_are_counted():
    with running_sinks(content=False) as sink:
        client = RawClient(sink.smtp_port)
        client.send(b"EHLO client.example\r\n")
        client.reply()
        messages = [("a@example.com", "7"), ("b@example.com", "8"), ("a@example.com", "7")]
        for to, delivery_id in messages:
            client.send(transaction(to))
            assert client.replies(3) == [250, 250, 354]
            # A header spelled in another case is found too.
            header = b"x-salvo-delivery-id" if to.startswith("b") else b"X-Salvo-Delivery-Id"
            client.send(
                b"Subject: s\r\n" + header + b": " + delivery_id.encode() + b"\r\n\r\nHi\r\n.\r\n"
            )
            assert client.replies(1) == [250]
        client.close()
        counters = sink.smtp_counters()

        assert [r["delivery_id"] for r in sink.received("email")] == ["7", "8", "7"]
        assert "raw" not in sink.received("email")[0]
        assert sink.duplicates() == 1
    assert (counters["messages"], counters["recipients"], counters["duplicates"]) == (3, 3, 1)


def test_the_rules_refuse_at_rcpt_and_fail_at_the_end_of_data_in_a_pipelined_session():
    with running_sinks(reject="invalid", flaky="retry", flaky_times=1) as sink:
        client = RawClient(sink.smtp_port)
        client.send(b"EHLO client.example\r\n")
        client.reply()
        # One message to a good and a refused recipient, one to a refused one alone (its
        # DATA refused, so no content follows), one flaky: pipelined, groups ending in DATA.
        client.send(
            b"MAIL FROM:<n@example.com>\r\nRCPT TO:<ok@example.com>\r\n"
            b"RCPT TO:<invalid@example.com>\r\nDATA\r\n"
        )
        first = client.replies(4)
        client.send(
            raw_message("1", "ok@example.com")
            + b".\r\nMAIL FROM:<n@example.com>\r\nRCPT TO:<invalid-2@example.com>\r\nDATA\r\n"
        )
        second = client.replies(4)
        client.send(b"MAIL FROM:<n@example.com>\r\nRCPT TO:<retry@example.com>\r\nDATA\r\n")
        third = client.replies(3)
        client.send(raw_message("3", "retry@example.com") + b".\r\nQUIT\r\n")
        fourth = [client.reply() for _ in range(2)]
        client.close()
        attempts = sink.attempts("email")

    assert first == [250, 250, 550, 354]
    assert second == [250, 250, 550, 554]
    assert third == [250, 250, 354]
    assert fourth[0] == (451, ["4.3.0 Temporary failure, try again later"])
    assert [(r["to"], r["status"]) for r in attempts] == [
        ("invalid@example.com", 550),
        ("ok@example.com", 250),
        ("invalid-2@example.com", 550),
        ("retry@example.com", 451),
    ]


def test_without_pipelining_a_pipelining_client_is_counted_and_smtplib_is_not():
    with running_sinks(smtp_pipelining=False) as sink:
        with smtplib.SMTP("127.0.0.1", sink.smtp_port, timeout=5) as one_at_a_time:
            one_at_a_time.ehlo()
            assert not one_at_a_time.has_extn("pipelining")
            for i in range(3):
                to = f"s{i}@example.com"
                one_at_a_time.sendmail("n@example.com", [to], raw_message(f"s{i}", to))
        polite = sink.smtp_counters()

        client = RawClient(sink.smtp_port)
        client.send(b"EHLO client.example\r\n")
        client.reply()
        client.send(transaction("e@example.com"))
        assert client.replies(3) == [250, 250, 354]
        client.send(raw_message("e", "e@example.com") + b".\r\nQUIT\r\n")
        assert client.replies(2) == [250, 221]
        client.close()
        rude = sink.smtp_counters()

    assert polite["early_commands"] == 0
    assert polite["messages"] == 3
    # RCPT and DATA came before MAIL's and RCPT's replies; QUIT before the message's.
    assert rude["early_commands"] == 3
    assert rude["early_verbs"] == ["RCPT", "DATA", "QUIT"]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_starttls_and_auth_through_smtplib(tmp_path, mechanism):
    cert_file, key_file = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(cafile=str(cert_file))
    with running_sinks(smtp_tls=(cert_file, key_file), smtp_auth=("sender", "s3cret")) as sink:
        with smtplib.SMTP("localhost", sink.smtp_port, timeout=5) as client:
            client.ehlo()
            assert client.has_extn("starttls")
            # Before AUTH, MAIL is refused.
            assert client.mail("n@example.com")[0] == 530
            client.rset()
            client.starttls(context=context)
            client.ehlo()
            assert not client.has_extn("starttls")
            assert client.sock.version() is not None  # TLS is on
            client.user, client.password = "sender", "wrong"
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
            client.user, client.password = "sender", "s3cret"
            # LOGIN without an initial response goes through both 334 prompts.
            code, _ = client.auth(
                mechanism,
                getattr(client, f"auth_{mechanism.lower()}"),
                initial_response_ok=mechanism == "PLAIN",
            )
            assert code == 235
            client.sendmail("n@example.com", ["t@example.com"], raw_message("t1", "t@example.com"))
        received = sink.received("email")

    assert [(r["to"], r["delivery_id"]) for r in received] == [("t@example.com", "t1")]


def test_the_limits_of_rfc_5321():
    with running_sinks(smtp_size_limit=2000, smtp_max_recipients=2) as sink:
        client = RawClient(sink.smtp_port)
        client.send(b"EHLO client.example\r\n")
        assert "SIZE 2000" in client.reply()[1]
        # A command line over 1000 octets, CRLF included.
        client.send(b"NOOP " + b"x" * 994 + b"\r\n")
        assert client.reply()[0] == 500
        client.send(b"NOOP " + b"x" * 993 + b"\r\n")
        assert client.reply()[0] == 250
        # One answered before its end came: the rest of it is not another command.
        client.send(b"NOOP " + b"x" * 2000)
        assert client.reply()[0] == 500
        client.send(b"x" * 500 + b"\r\nNOOP\r\n")
        assert client.reply()[0] == 250
        # A third recipient, and a SIZE declared over the limit.
        client.send(
            b"MAIL FROM:<n@example.com>\r\n"
            + b"".join(b"RCPT TO:<r%d@example.com>\r\n" % i for i in range(3))
            + b"RSET\r\nMAIL FROM:<n@example.com> SIZE=2001\r\n"
        )
        assert client.replies(6) == [250, 250, 250, 452, 250, 552]
        # A message over SIZE, and one with a content line over 1000 octets.
        for content, code in [((b"x" * 990 + b"\r\n") * 3, 552), (b"y" * 999 + b"\r\n", 500)]:
            client.send(transaction("r@example.com"))
            assert client.replies(3) == [250, 250, 354]
            client.send(b"Subject: big\r\n\r\n" + content + b".\r\n")
            assert client.reply()[0] == code
        client.send(b"QUIT\r\n")
        assert client.reply()[0] == 221
        client.close()
        assert sink.received("email") == []


def test_an_open_session_is_told_421_when_the_sink_stops():
    with running_sinks() as sink:
        client = RawClient(sink.smtp_port)
        client.send(b"EHLO client.example\r\n")
        client.reply()
    assert client.reply()[0] == 421
    client.close()


def bdat(content: bytes, *, last: bool = True) -> bytes:
    return b"BDAT %d%b\r\n" % (len(content), b" LAST" if last else b"") + content


def test_chunking_is_advertised_only_when_asked_and_bdat_without_it_is_refused():
    with running_sinks() as sink:
        client = RawClient(sink.smtp_port)
        client.send(b"EHLO client.example\r\n")
        assert "CHUNKING" not in client.reply()[1]
        # Refused, its octets read and dropped: the session stays in step.
        client.send(
            b"MAIL FROM:<n@example.com>\r\nRCPT TO:<r@example.com>\r\n"
            + bdat(raw_message("x", "r@example.com").replace(b"Hi there", b"NOOP"))
            + b"NOOP\r\n"
        )
        assert client.replies(4) == [250, 250, 500, 250]
        client.close()
        assert sink.received("email") == []


def test_pipelined_bdat_chunks_are_taken_as_they_are_under_the_rules_of_data():
    with running_sinks(smtp_chunking=True, reject="invalid", flaky="retry", flaky_times=1) as sink:
        client = RawClient(sink.smtp_port)
        client.send(b"EHLO client.example\r\n")
        _, lines = client.reply()
        assert {"CHUNKING", "PIPELINING"} <= set(lines)
        first = raw_message("c1", "a@example.com", body=".dot\r\n..two\r\n.")
        again = raw_message("c1", "a@example.com", body="BDAT 0 LAST\r\n.\r\nQUIT")
        mail = b"MAIL FROM:<n@example.com>\r\n"
        client.send(
            # Two chunks, the first one cut inside a line; dots stay as they are.
            mail
            + b"RCPT TO:<a@example.com>\r\n"
            + bdat(first[:50], last=False)
            + bdat(first[50:])
            # A refused recipient: its BDAT is read, dropped and refused (554).
            + mail
            + b"RCPT TO:<invalid@example.com>\r\n"
            + bdat(raw_message("c2", "invalid@example.com"))
            + b"RSET\r\n"
            # No MAIL: 503; then DATA after a BDAT chunk: 503.
            + bdat(raw_message("c3", "b@example.com"))
            + mail
            + b"RCPT TO:<b@example.com>\r\n"
            + bdat(b"Subject: s\r\n", last=False)
            + b"DATA\r\nRSET\r\n"
            # A flaky recipient's message: 451 at BDAT LAST; then the first one again.
            + mail
            + b"RCPT TO:<retry@example.com>\r\n"
            + bdat(raw_message("c4", "retry@example.com"))
            + mail
            + b"RCPT TO:<a@example.com>\r\n"
            # Commands and a lone dot inside a chunk are its content; then an empty LAST.
            + bdat(again, last=False)
            + bdat(b"")
            + b"QUIT\r\n"
        )
        codes = client.replies(4 + 4 + 1 + 5 + 3 + 4 + 1)
        client.close()
        counters = sink.smtp_counters()
        received = sink.received("email")
        attempts = sink.attempts("email")

    assert codes == [
        *(250, 250, 250, 250),
        *(250, 550, 554, 250),
        503,
        *(250, 250, 250, 503, 250),
        *(250, 250, 451),
        *(250, 250, 250, 250),
        221,
    ]
    assert [r["to"] for r in received] == ["a@example.com", "a@example.com"]
    assert [r["raw"].encode() for r in received] == [first, again]
    assert [(r["to"], r["status"]) for r in attempts] == [
        ("a@example.com", 250),
        ("invalid@example.com", 550),
        ("retry@example.com", 451),
        ("a@example.com", 250),
    ]
    assert (counters["messages"], counters["duplicates"], counters["early_commands"]) == (2, 1, 0)


def test_bdat_keeps_the_limits_of_data():
    with running_sinks(smtp_chunking=True, smtp_size_limit=2000) as sink:
        client = RawClient(sink.smtp_port)
        client.send(b"EHLO client.example\r\n")
        client.reply()
        mail = b"MAIL FROM:<n@example.com>\r\nRCPT TO:<r@example.com>\r\n"
        # Over SIZE across two chunks: the second is refused and ends the transaction.
        client.send(
            mail + bdat(b"x" * 1500 + b"\r\n", last=False) + bdat(b"y" * 600) + bdat(b"z\r\n")
        )
        assert client.replies(5) == [250, 250, 250, 552, 503]
        # A line over 1000 octets.
        client.send(mail + bdat(b"Subject: s\r\n\r\n" + b"y" * 999 + b"\r\n"))
        assert client.replies(3) == [250, 250, 500]
        client.send(b"QUIT\r\n")
        assert client.reply()[0] == 221
        client.close()
        assert sink.received("email") == []
