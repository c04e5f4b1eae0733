"""Salvo's own email writer (channels.providers.smtp.message) against Django's rendering of
the same message: both parsed with the ``email`` package, header by header and part by part."""

from __future__ import annotations

import email
import random
import re
import smtplib
from email.errors import HeaderParseError
from email.message import EmailMessage
from email.policy import default as default_policy

import pytest
from django.core.mail import EmailMultiAlternatives
from django.core.mail.message import sanitize_address
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.providers import OutboundMessage
from channels.providers.email import DELIVERY_ID_HEADER
from channels.providers.smtp.message import envelope_address, message_bytes
from devtools.sinks import running_sinks

SENDER = '"Salvo, Inc." <news@example.com>'
REPLY_TO = ["help@example.com"]
UNSUBSCRIBE = {
    "List-Unsubscribe": "<https://example.com/u/0123456789abcdef0123456789abcdef0123456789>, "
    "<mailto:unsubscribe@example.com?subject=unsubscribe-0123456789>",
    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
}
COMPARED_HEADERS = [
    "From",
    "To",
    "Reply-To",
    "Subject",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    DELIVERY_ID_HEADER,
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
]
# What Django's and Salvo's refusals say.
REFUSED = r"newlines|[Ii]nvalid address|not a header name|too long"
LINE_BREAKS = re.compile("[\x0b\x0c\x1c\x1d\x1e]")
PART_HEADERS = ["Content-Type", "Content-Transfer-Encoding"]
TEXT = "Hello Ada,\n\nYour order has shipped. " + "Tracking details follow. " * 36 + "\n"
HTML = "<html><body><p>Hello Ada,</p>" + "<p>Your order has shipped.</p>\n" * 96 + "</body></html>"


def outbound(
    *,
    subject: str = "Your order has shipped: three books and a very long umbrella",
    body: str = TEXT,
    html_body: str = HTML,
    to: str = "ada@example.com",
    headers: dict[str, str] | None = None,
    delivery_id: int = 42,
) -> OutboundMessage:
    return OutboundMessage(
        delivery_id=delivery_id,
        channel="email",
        to=to,
        subject=subject,
        body=body,
        html_body=html_body,
        headers=UNSUBSCRIBE if headers is None else headers,
    )


def message_id(message: OutboundMessage) -> str:
    return f"<176470.4242.salvo.{message.delivery_id}@example.com>"


def ours(
    message: OutboundMessage, sender: str = SENDER, reply_to: list[str] | None = None
) -> bytes:
    return message_bytes(
        message,
        sender=sender,
        reply_to=REPLY_TO if reply_to is None else reply_to,
        message_id=message_id(message),
    )


def djangos(
    message: OutboundMessage, sender: str = SENDER, reply_to: list[str] | None = None
) -> bytes:
    """What channels.providers.email.EmailBackend builds and Django's SMTP backend sends."""
    built = EmailMultiAlternatives(
        subject=message.subject,
        body=message.body,
        from_email=sender,
        to=[message.to],
        reply_to=REPLY_TO if reply_to is None else reply_to,
        headers={
            **message.headers,
            "Message-ID": message_id(message),
            DELIVERY_ID_HEADER: str(message.delivery_id),
        },
    )
    if message.html_body:
        built.attach_alternative(message.html_body, "text/html")
    # Django's SMTP backend checks both addresses before it sends.
    sanitize_address(sender, "utf-8")
    sanitize_address(message.to, "utf-8")
    data = built.message().as_bytes(linesep="\r\n")
    # smtplib ends the DATA with a line end when the message has none.
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def parse(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data, policy=default_policy)
    assert isinstance(parsed, EmailMessage)
    return parsed


def assert_wire_safe(data: bytes) -> None:
    head, _, _ = data.partition(b"\r\n\r\n")
    assert head.isascii(), head
    assert data.endswith(b"\r\n")
    lines = data.split(b"\r\n")
    assert max(map(len, lines)) <= 998
    assert b"\n" not in b"".join(lines), "a bare LF"
    assert b"\r" not in b"".join(lines), "a bare CR"


def assert_same_message(mine: bytes, reference: bytes) -> None:
    """The same headers after decoding, the same MIME tree, the same decoded payloads."""
    assert_wire_safe(mine)
    got, expected = parse(mine), parse(reference)
    assert not got.defects
    for name in COMPARED_HEADERS:
        values = [str(value) for value in got.get_all(name, [])]
        if name == "Content-Type" and got.is_multipart():  # the boundary is random
            values = [got.get_content_type()]
            assert [expected.get_content_type()] == values
            continue
        # Django's folding may leave the first line empty ("Subject: \r\n Grüße"), which
        # the parser reads as a leading space: leading white space is not compared.
        values = [value.lstrip() for value in values]
        assert values == [str(value).lstrip() for value in expected.get_all(name, [])], name
    assert got["Date"]
    got_parts, expected_parts = list(got.walk()), list(expected.walk())
    assert [p.get_content_type() for p in got_parts] == [
        p.get_content_type() for p in expected_parts
    ]
    for part, expected_part in zip(got_parts, expected_parts, strict=True):
        if part.is_multipart():
            continue
        for name in PART_HEADERS:
            assert part[name] == expected_part[name], name
        assert part.get_content_charset() == expected_part.get_content_charset() == "utf-8"
        assert part.get_content() == expected_part.get_content()


def test_an_ascii_message_with_html_matches_djangos() -> None:
    message = outbound()
    mine = ours(message)
    assert_same_message(mine, djangos(message))
    assert mine.startswith(b"Content-Type: multipart/alternative;")
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in mine
    assert mine.endswith(b"--\r\n")


def test_text_only_is_text_plain() -> None:
    message = outbound(html_body="")
    mine = ours(message)
    assert_same_message(mine, djangos(message))
    assert parse(mine).get_content_type() == "text/plain"
    assert parse(mine)["Content-Transfer-Encoding"] == "7bit"


@pytest.mark.parametrize("html_body", ["", "<p>Grüße</p>"])
def test_non_ascii_subject_names_bodies_and_domains(html_body: str) -> None:
    message = outbound(
        subject="Grüße aus Köln — 东京からのお知らせ 🎉",
        body="Hallo Jürgen,\nschöne Grüße.\n",
        html_body=html_body,
        to="jurgen@bücher.example",
    )
    sender = "Jürgen Ünd Söhne <news@bücher.de>"
    reply_to = ["Hilfe <hilfe@bücher.de>"]
    mine = ours(message, sender, reply_to)
    assert_same_message(mine, djangos(message, sender, reply_to))
    parsed = parse(mine)
    assert parsed["Subject"] == message.subject
    assert parsed["From"].addresses[0].display_name == "Jürgen Ünd Söhne"
    assert parsed["From"].addresses[0].domain == "xn--bcher-kva.de"
    assert parsed["To"].addresses[0].domain == "xn--bcher-kva.example"
    assert b"=?utf-8?" in mine
    assert (next(parsed.iter_parts()) if html_body else parsed)["Content-Transfer-Encoding"] == (
        "8bit"
    )


def test_a_non_ascii_local_part_is_encoded_as_django_encodes_it() -> None:
    message = outbound(to="jürgen@example.com")
    assert_same_message(ours(message), djangos(message))
    address = "jürgen@example.com"
    assert envelope_address(address) == sanitize_address(address, "utf-8")


@pytest.mark.parametrize(
    "subject",
    [
        " ".join(["subject"] * 38),  # 303 characters
        "x" * 300,  # no space to fold at
        " ".join(["Grüße"] * 50),
        "Grüße" * 60,
        "a" * 1200,  # longer than a line: encoded-words
        " leading  and double  spaces, trailing ",
    ],
)
def test_long_subjects_are_folded_within_the_line_limits(subject: str) -> None:
    message = outbound(subject=subject)
    mine = ours(message)
    assert_same_message(mine, djangos(message))
    assert parse(mine)["Subject"] == subject.lstrip()
    head = mine.partition(b"\r\n\r\n")[0].decode()
    subject_lines = re.search(r"\r\nSubject: .*?\r\n(?=\S)", head, re.DOTALL)
    assert subject_lines
    if " " in subject:  # folded at its spaces
        assert max(len(line) for line in subject_lines[0].split("\r\n")) <= 78


def test_a_long_display_name_is_folded() -> None:
    sender = "Ünïcödé " * 20 + "<news@example.com>"
    message = outbound()
    assert_same_message(ours(message, sender), djangos(message, sender))


@pytest.mark.parametrize(
    ("body", "html_body"),
    [
        ("a" * 999 + "\nshort\n", ""),
        ("short\n" + "é" * 500 + "\n", "<p>" + "x" * 2000 + "</p>"),
        ("ok", "é" * 600),
    ],
)
def test_lines_over_998_octets_go_quoted_printable(body: str, html_body: str) -> None:
    message = outbound(body=body, html_body=html_body)
    mine = ours(message)
    assert_same_message(mine, djangos(message))
    assert b"Content-Transfer-Encoding: quoted-printable" in mine


@pytest.mark.parametrize(("line", "encoding"), [("a" * 998, "7bit"), ("é" * 499, "8bit")])
def test_a_line_of_exactly_998_octets_stays_as_it_is(line: str, encoding: str) -> None:
    message = outbound(body=line + "\n", html_body="")
    mine = ours(message)
    assert_same_message(mine, djangos(message))
    assert parse(mine)["Content-Transfer-Encoding"] == encoding


@pytest.mark.parametrize("line_end", ["\n", "\r", "\r\n"])
def test_dots_from_lines_and_every_line_end(line_end: str) -> None:
    body = line_end.join([".", ".hidden", "From the start", "From ", "end", ""])
    message = outbound(body=body, html_body=line_end.join(["<p>", ".", "</p>"]))
    mine = ours(message)
    assert_same_message(mine, djangos(message))
    assert b"\r\n.hidden\r\nFrom the start\r\n" in mine  # not dot-stuffed, not mangled


def test_an_empty_text_body_leaves_only_the_html_part() -> None:
    message = outbound(body="")
    assert_same_message(ours(message), djangos(message))
    message = outbound(body="", html_body="")
    assert_same_message(ours(message), djangos(message))


def test_the_messages_headers_may_set_date_and_other_fields() -> None:
    message = outbound(headers={"Date": "Tue, 01 Dec 2026 10:00:00 -0000", "X-Tag": "a, b"})
    mine = ours(message)
    assert_same_message(mine, djangos(message))
    assert parse(mine).get_all("Date") == ["Tue, 01 Dec 2026 10:00:00 -0000"]
    message = outbound(headers={"To": "Other <other@example.com>", "Cc": "cc@example.com"})
    assert_same_message(ours(message), djangos(message))
    assert parse(ours(message))["Cc"] == "cc@example.com"


@pytest.mark.parametrize(
    "fields",
    [
        {"subject": "Hello\nBcc: victim@example.com"},
        {"subject": "Hello\rBcc: victim@example.com"},
        {"headers": {"List-Unsubscribe": "<https://x.example>\r\nBcc: victim@example.com"}},
        {"to": "ada@example.com\nBcc: victim@example.com"},
        {"to": "ada@example.com\rBcc: victim@example.com"},
        {"to": "ada@example.com, victim@example.com"},
        {"to": "ada@exa mple.com"},
        {"to": "ada@" + "x" * 64 + ".com"},
    ],
)
def test_header_injection_and_bad_addresses_are_refused_like_django(fields: dict) -> None:
    message = outbound(**fields)
    with pytest.raises(ValueError, match=REFUSED):
        djangos(message)
    with pytest.raises(ValueError, match=REFUSED):
        ours(message)


@pytest.mark.parametrize(
    ("sender", "reply_to"),
    [
        ("News\n <news@example.com>", REPLY_TO),
        (SENDER, ["help@example.com\nBcc: x@y.z"]),
        (SENDER, ["Hülfe <>"]),
        ("Ünd <news@>", REPLY_TO),
    ],
)
def test_a_bad_sender_or_reply_to_is_refused(sender: str, reply_to: list[str]) -> None:
    with pytest.raises(ValueError, match=REFUSED):
        djangos(outbound(), sender, reply_to)
    with pytest.raises(ValueError, match=REFUSED):
        ours(outbound(), sender, reply_to)


@pytest.mark.parametrize("separator", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e"])
def test_other_line_breaks_in_headers_are_refused(separator: str) -> None:
    # Django lets these through: its folding writes them as line ends, and the email package
    # fails (HeaderParseError, no ValueError) when what follows looks like a header.
    assert b"Hello\r\nworld\r\n" in djangos(outbound(subject=f"Hello{separator}world"))
    header_injection = f"Hello{separator}Bcc: victim@example.com"
    with pytest.raises(HeaderParseError):
        djangos(outbound(subject=header_injection))
    with pytest.raises(ValueError, match=REFUSED):
        ours(outbound(subject=header_injection))
    with pytest.raises(ValueError, match=REFUSED):
        ours(outbound(headers={"X-Campaign": header_injection}))
    with pytest.raises(ValueError, match=REFUSED):
        ours(outbound(), sender=f'"News{separator}" <news@example.com>')


@pytest.mark.parametrize("name", ["X-A\r\nBcc", "X-A: b", "X A", ""])
def test_a_header_name_that_is_none_is_refused(name: str) -> None:
    # Django writes these as they are; a name with a line end injects a header.
    with pytest.raises(ValueError, match=REFUSED):
        ours(outbound(headers={name: "v"}))


def test_a_header_word_longer_than_a_line_is_refused() -> None:
    with pytest.raises(ValueError, match=REFUSED):
        ours(outbound(headers={"List-Unsubscribe": "<https://x.example/" + "u" * 1000 + ">"}))


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("ada@example.com", "ada@example.com"),
        ("Ada <ada@example.com>", "ada@example.com"),
        ('"Lovelace, Ada" <ada@example.com>', "ada@example.com"),
        ("ada@bücher.de", "ada@xn--bcher-kva.de"),
        ("Jürgen <j.b+tag@münchen.example>", "j.b+tag@xn--mnchen-3ya.example"),
        ('"a b"@example.com', '"a b"@example.com'),
    ],
)
def test_envelope_addresses_are_what_django_sends(address: str, expected: str) -> None:
    # Django's SMTP backend gives smtplib sanitize_address's result; smtplib sends its address.
    assert envelope_address(address) == expected
    assert smtplib.quoteaddr(sanitize_address(address, "utf-8")) == f"<{expected}>"


@pytest.mark.parametrize("address", ["", "ada@", "ada@a..b", "a@b, c@d", "ada@" + "x" * 64])
def test_envelope_addresses_django_refuses_are_refused(address: str) -> None:
    with pytest.raises(ValueError, match=REFUSED):
        sanitize_address(address, "utf-8")
    with pytest.raises(ValueError, match=REFUSED):
        envelope_address(address)


@pytest.mark.parametrize("address", ["ada", "a@b\nc", "a@b\r", "<>", "not an address"])
def test_envelope_addresses_without_a_domain_or_with_a_line_end_are_refused(address: str) -> None:
    # Django lets these through ("a@b\nc" as "a@bc", "<>" with a TypeError); no server can
    # route them.
    with pytest.raises(ValueError, match=REFUSED):
        envelope_address(address)


def test_the_delivery_id_header_is_the_email_backends() -> None:
    data = ours(outbound(delivery_id=7))
    assert parse(data)[DELIVERY_ID_HEADER] == "7"
    assert parse(data)["Message-ID"] == "<176470.4242.salvo.7@example.com>"


# --- random input ---------------------------------------------------------------------

_label = st.text(st.sampled_from("abcxyzäöüßéñ東京-0"), min_size=1, max_size=12)
_local = st.text(st.sampled_from("abcz09.+_-ü"), min_size=1, max_size=12)
_texts = st.text(max_size=300) | st.text(st.sampled_from("ab \n\r.é東\x0b\u2028"), max_size=1200)


def _same_or_both_refused(message: OutboundMessage, sender: str, reply_to: list[str]) -> None:
    try:
        reference = djangos(message, sender, reply_to)
    except ValueError:
        with pytest.raises(ValueError, match=REFUSED):
            ours(message, sender, reply_to)
        return
    assert_same_message(ours(message, sender, reply_to), reference)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=st.text(max_size=200),
    name=st.text(max_size=60),
    local=_local,
    domain=st.lists(_label, min_size=1, max_size=3).map(".".join),
    body=_texts,
    html_body=_texts,
    header=st.text(max_size=120),
)
def test_random_input_renders_as_django_renders_it(
    subject: str, name: str, local: str, domain: str, body: str, html_body: str, header: str
) -> None:
    message = outbound(
        subject=subject,
        body=body,
        html_body=html_body,
        to=f"{local}@{domain}",
        headers={"X-Campaign": header, **UNSUBSCRIBE},
    )
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    sender = f'"{quoted}" <news@{domain}>' if name else f"news@{domain}"
    if LINE_BREAKS.search(subject + name + header):
        # Django's folding turns these into line ends; Salvo refuses them as it refuses CR, LF.
        with pytest.raises(ValueError, match=REFUSED):
            ours(message, sender, [f"help@{domain}"])
        return
    _same_or_both_refused(message, sender, [f"help@{domain}"])


def test_seeded_long_random_bodies() -> None:
    generator = random.Random(15)
    alphabet = "abcdefgh é€東\n\r\t.-=" + "x" * 20
    for _ in range(40):
        body = "".join(generator.choices(alphabet, k=generator.randrange(3000)))
        html = "".join(generator.choices(alphabet.replace("\n", ""), k=generator.randrange(3000)))
        subject = "".join(generator.choices(alphabet.replace("\n", "").replace("\r", ""), k=90))
        _same_or_both_refused(outbound(subject=subject, body=body, html_body=html), SENDER, [])


# --- through a real SMTP server -------------------------------------------------------


def test_the_bytes_survive_the_smtp_sink() -> None:
    messages = [
        outbound(delivery_id=1),
        outbound(
            delivery_id=2,
            subject="Grüße " * 30,
            body=".\n..\nFrom here\n" + "é" * 700,
            html_body="<p>東京</p>",
            to="jurgen@bücher.example",
        ),
        outbound(delivery_id=3, body="a" * 1500, html_body=""),
    ]
    sender = "Ünd Söhne <news@example.com>"
    with running_sinks(content=True) as sink:
        with smtplib.SMTP(sink.host, sink.smtp_port, timeout=10) as client:
            for message in messages:
                client.sendmail(
                    envelope_address(sender),
                    [envelope_address(message.to)],
                    ours(message, sender, REPLY_TO),
                )
        received = sink.wait_for(len(messages), channel="email")
    by_id = {record["delivery_id"]: record for record in received}
    for message in messages:
        record = by_id[str(message.delivery_id)]
        assert record["mail_from"] == "news@example.com"
        assert record["to"] == envelope_address(message.to)
        assert_same_message(record["raw"].encode("utf-8"), djangos(message, sender))
