"""The SMTP wire path (channels.providers.smtp) against a scripted server on loopback: what
each reply means for its recipient, pipelined or one command at a time, lost connections,
and the connection a worker process keeps between batches."""

from __future__ import annotations

import email
import os
import time
from collections.abc import Iterator
from email.policy import default as default_policy
from typing import Any

import pytest
from django.test import override_settings

from channels.choices import ChannelKind
from channels.providers import (
    OutboundMessage,
    PermanentProviderError,
    ProviderError,
    SendResult,
    TransientProviderError,
    get_backend,
)
from channels.providers.email import EmailBackend
from tests.channels.factories import MessagePresetFactory
from tests.channels.smtp_script import DROP, SmtpScript, scripted_smtp
from tests.conftest import wait_until
from tests.settings_loader import load_settings, refusal

SMTP_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
EMAIL_BACKEND = "channels.providers.email.EmailBackend"

_ids = iter(range(4_000_000, 5_000_000))


def smtp_settings(port: int, **extra):
    return override_settings(
        EMAIL_BACKEND=SMTP_BACKEND,
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=port,
        EMAIL_HOST_USER="",
        EMAIL_HOST_PASSWORD="",
        EMAIL_USE_TLS=False,
        EMAIL_USE_SSL=False,
        EMAIL_TIMEOUT=5.0,
        **extra,
    )


@pytest.fixture(autouse=True)
def no_kept_sessions() -> Iterator[None]:
    from channels.providers.smtp import sessions_close

    sessions_close()
    yield
    sessions_close()


def outbound(to: str, **fields) -> OutboundMessage:
    fields.setdefault("subject", "Spring sale")
    fields.setdefault("body", f"Hello {to}")
    return OutboundMessage(delivery_id=next(_ids), channel=ChannelKind.EMAIL, to=to, **fields)


def backend() -> EmailBackend:
    preset = MessagePresetFactory.build(
        channel=ChannelKind.EMAIL, backend=EMAIL_BACKEND, from_email="news@example.com"
    )
    found = get_backend(preset)
    assert isinstance(found, EmailBackend)
    return found


def send_batch(messages: list[OutboundMessage]) -> list[SendResult | ProviderError]:
    with backend() as sending:
        return sending.send_batch(messages)


# Every place a transaction can be refused, temporarily or for good, among accepted ones.
MIXED: dict[str, Any] = {
    "mail": {5: "550 5.7.1 Sender blocked for this one"},
    "rcpt": {
        "rcpt-550@example.com": "550 5.1.1 <rcpt-550@example.com>: Recipient unknown",
        "rcpt-451@example.com": "451 4.2.1 Mailbox busy",
    },
    "data": {"data-554@example.com": "554 5.7.0 Not from you"},
    "end": {
        "end-552@example.com": "552 5.3.4 Message too big",
        "end-451@example.com": "451 4.3.0 Try again later",
    },
}
MIXED_RECIPIENTS = [
    "ok-0@example.com",
    "rcpt-550@example.com",
    "ok-1@example.com",
    "rcpt-451@example.com",
    "ok-2@example.com",
    "mail-550@example.com",  # the sixth MAIL (number 5)
    "data-554@example.com",
    "end-552@example.com",
    "ok-3@example.com",
    "end-451@example.com",
    "ok-4@example.com",
]
MIXED_EXPECTED = [
    (SendResult, ""),
    (PermanentProviderError, "SMTP 550: 5.1.1 <rcpt-550@example.com>: Recipient unknown"),
    (SendResult, ""),
    (TransientProviderError, "SMTP 451: 4.2.1 Mailbox busy"),
    (SendResult, ""),
    (PermanentProviderError, "SMTP 550: 5.7.1 Sender blocked for this one"),
    (PermanentProviderError, "SMTP 554: 5.7.0 Not from you"),
    (PermanentProviderError, "SMTP 552: 5.3.4 Message too big"),
    (SendResult, ""),
    (TransientProviderError, "SMTP 451: 4.3.0 Try again later"),
    (SendResult, ""),
]


def described(outcomes: list[SendResult | ProviderError]) -> list[tuple[type, str]]:
    return [(type(o), o.reason if isinstance(o, ProviderError) else "") for o in outcomes]


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-at-a-time"])
def test_each_reply_keeps_its_meaning_for_its_recipient_and_later_messages_go(pipelining):
    # CHUNKING without PIPELINING: DATA, one command at a time.
    script = SmtpScript(pipelining=pipelining, chunking=not pipelining, **MIXED)
    with scripted_smtp(script) as server, smtp_settings(server.port):
        outcomes = send_batch([outbound(to) for to in MIXED_RECIPIENTS])

    assert described(outcomes) == MIXED_EXPECTED
    assert server.delivered() == [to for to in MIXED_RECIPIENTS if to.startswith("ok-")]
    assert server.connections == 1
    # RSET exactly where a transaction was left open: MAIL accepted, then RCPT or DATA
    # refused; never after a refused MAIL or a refused end of data.
    commands = server.commands()
    resets = [commands[n - 1] for n, line in enumerate(commands) if line == "RSET"]
    if pipelining:  # the refused transaction's RCPT and DATA went with its MAIL
        assert resets == ["DATA", "DATA", "DATA"]
    else:
        assert resets == [
            "RCPT TO:<rcpt-550@example.com>",
            "RCPT TO:<rcpt-451@example.com>",
            "DATA",
        ]
        # A refused MAIL (the sixth) is the end of it: the next MAIL follows.
        mails = [n for n, line in enumerate(commands) if line.startswith("MAIL")]
        assert commands[mails[5] + 1].startswith("MAIL")
    assert not any(line.startswith("503") for line in commands)
    assert not any(line.startswith("BDAT") for line in commands)


def test_chunked_each_reply_keeps_its_meaning_for_its_recipient_and_later_messages_go():
    # Refused at MAIL, RCPT (the BDAT then gets 503 or 554), BDAT (before or after the
    # content): every recipient gets its own reply's meaning, and the next messages go,
    # though the server (like Postfix) leaves a transaction open after a refused RCPT/BDAT.
    script = SmtpScript(chunking=True, **MIXED)
    with scripted_smtp(script) as server, smtp_settings(server.port):
        outcomes = send_batch([outbound(to) for to in MIXED_RECIPIENTS])

    assert described(outcomes) == MIXED_EXPECTED
    assert server.delivered() == [to for to in MIXED_RECIPIENTS if to.startswith("ok-")]
    assert server.connections == 1
    commands = [line for line in server.commands() if line != "QUIT"]
    verbs = [line.split(" ")[0] for line in commands]
    assert verbs[0].upper() == "EHLO"
    # RSET before every message but the first: the replies are not known when it is written.
    assert verbs[1:] == ["MAIL", "RCPT", "BDAT"] + ["RSET", "MAIL", "RCPT", "BDAT"] * 10
    assert "DATA" not in verbs


def test_chunked_the_next_batch_opens_with_rset_only_if_the_last_transaction_may_be_open():
    script = SmtpScript(chunking=True, data={"x@example.com": "554 5.7.0 No"})
    with scripted_smtp(script) as server, smtp_settings(server.port), backend() as sending:
        outcomes = [
            *sending.send_batch([outbound("x@example.com")]),
            *sending.send_batch([outbound("y@example.com")]),
            *sending.send_batch([outbound("z@example.com")]),
        ]

    assert described(outcomes) == [
        (PermanentProviderError, "SMTP 554: 5.7.0 No"),
        (SendResult, ""),
        (SendResult, ""),
    ]
    assert [line.split(" ")[0] for line in server.commands() if line != "QUIT"][1:] == [
        *("MAIL", "RCPT", "BDAT"),
        *("RSET", "MAIL", "RCPT", "BDAT"),  # x's refused BDAT left its transaction open
        *("MAIL", "RCPT", "BDAT"),
    ]


def test_chunked_messages_go_in_windows_that_wait_for_nothing():
    recipients = [f"c{n}@example.com" for n in range(100)]
    with scripted_smtp(SmtpScript(chunking=True)) as server, smtp_settings(server.port):
        outcomes = send_batch([outbound(to) for to in recipients])

    assert all(isinstance(o, SendResult) for o in outcomes)
    assert server.delivered() == recipients
    lines = [line for line in server.lines if line.text != "QUIT"]
    bdats = [line.text for line in lines if line.text.startswith("BDAT")]
    assert len(bdats) == 100
    assert all(text.endswith(" LAST") for text in bdats)
    # After EHLO, nothing waits for a reply within a window of 32 messages: only a window's
    # first command may arrive after the replies to the window before it were written (the
    # client writes the next window before it reads those replies, but a fast server may
    # have answered them by then).
    waited: list[tuple[str, int]] = []
    mails = 0
    for line in lines[1:]:
        verb = line.text.split(" ")[0]
        if not line.early:
            waited.append((verb, mails))
        mails += verb == "MAIL"
    assert waited[0] == ("MAIL", 0)
    assert all(verb == "RSET" and message % 32 == 0 for verb, message in waited[1:])
    assert not lines[0].early


def test_chunked_content_arrives_as_the_same_bytes_as_through_data():
    body = ".starts with a dot\n..two dots\nbare\rcarriage\n.\nend\n\u00e9t\u00e9 " + "x" * 2000
    received = []
    for chunking in (False, True):
        with scripted_smtp(SmtpScript(chunking=chunking)) as server, smtp_settings(server.port):
            message = OutboundMessage(
                delivery_id=4_999_999,
                channel=ChannelKind.EMAIL,
                to="same@example.com",
                subject="R\u00e9sum\u00e9",
                body=body,
            )
            [outcome] = send_batch([message])
        assert isinstance(outcome, SendResult)
        [one] = server.received
        received.append(one.content)
        assert any(line.startswith("BDAT") for line in server.commands()) is chunking

    through_data, through_bdat = received

    def steady(content: bytes) -> bytes:  # without the fields that change with the time
        lines = content.split(b"\r\n")
        return b"\r\n".join(n for n in lines if not n.startswith((b"Date:", b"Message-ID:")))

    assert steady(through_bdat).decode() == steady(through_data).decode()
    parsed = email.message_from_bytes(through_bdat, policy=default_policy)
    assert parsed["Subject"] == "R\u00e9sum\u00e9"
    text = parsed.get_body(("plain",))
    assert text is not None
    assert text.get_content().splitlines() == body.replace("\r", "\n").splitlines()


def test_chunked_a_421_sends_the_unanswered_rest_once_on_a_new_connection():
    recipients = [f"m{n}@example.com" for n in range(40)]  # two windows
    script = SmtpScript(chunking=True, mail={2: "421 4.3.2 Shutting down"})
    with scripted_smtp(script) as server, smtp_settings(server.port):
        outcomes = send_batch([outbound(to) for to in recipients])

    assert all(isinstance(o, SendResult) for o in outcomes)
    assert server.connections == 2
    assert server.delivered() == recipients  # each once
    assert [m.connection for m in server.received] == [1, 1] + [2] * 38


def test_chunked_a_lost_connection_leaves_every_written_unanswered_message_in_doubt():
    recipients = [f"d{n}@example.com" for n in range(4)]
    script = SmtpScript(chunking=True, end={"d1@example.com": DROP})
    with scripted_smtp(script) as server, smtp_settings(server.port):
        outcomes = send_batch([outbound(to) for to in recipients])

    # d2 and d3 went in the same write: the server may have taken them.
    assert [type(o) for o in outcomes] == [SendResult] + [TransientProviderError] * 3
    assert all(o.reason.startswith("Mail server connection failed: ") for o in outcomes[1:])
    assert server.delivered() == ["d0@example.com"]
    assert server.connections == 1


def test_pipelined_commands_go_in_one_write_with_the_previous_content():
    recipients = [f"p{n}@example.com" for n in range(20)]
    with scripted_smtp(SmtpScript(pipelining=True)) as server, smtp_settings(server.port):
        outcomes = send_batch([outbound(to) for to in recipients])

    assert all(isinstance(o, SendResult) for o in outcomes)
    lines = [line for line in server.lines if line.text not in ("QUIT",)]
    # After EHLO: the first MAIL waits for nothing; RCPT and DATA come with their MAIL;
    # each content waits for its 354, and the next MAIL, RCPT, DATA come with it.
    contents = [line for line in lines if line.text == "<content>"]
    assert len(contents) == 20
    assert not any(line.early for line in contents)
    transaction_lines = [
        line for line in lines if line.text.split(" ")[0] in ("MAIL", "RCPT", "DATA")
    ]
    assert [line.early for line in transaction_lines[:3]] == [False, True, True]
    assert all(line.early for line in transaction_lines[3:])
    # So a message costs one round trip: one write the server waits for per message.
    waited = [line for line in lines if not line.early and line.text != "<content>"]
    assert [line.text.split(" ")[0].upper() for line in waited] == ["EHLO", "MAIL"]


def test_a_refused_recipient_whose_data_still_gets_354_sends_a_lone_dot():
    recipients = ["one@example.com", "rcpt-550@example.com", "two@example.com"]
    script = SmtpScript(
        rcpt={"rcpt-550@example.com": "550 5.1.1 Unknown"}, data_without_recipients="354 Go on"
    )
    with scripted_smtp(script) as server, smtp_settings(server.port):
        outcomes = send_batch([outbound(to) for to in recipients])

    assert described(outcomes) == [
        (SendResult, ""),
        (PermanentProviderError, "SMTP 550: 5.1.1 Unknown"),
        (SendResult, ""),
    ]
    assert server.delivered() == ["one@example.com", "two@example.com"]
    assert "RSET" not in server.commands()  # the lone dot ended the transaction


def test_a_server_without_pipelining_never_sees_a_command_before_its_reply():
    recipients = ["one@example.com", "rcpt-550@example.com", "two@example.com"]
    script = SmtpScript(pipelining=False, rcpt={"rcpt-550@example.com": "550 5.1.1 Unknown"})
    with scripted_smtp(script) as server, smtp_settings(server.port):
        outcomes = send_batch([outbound(to) for to in recipients])

    assert [type(o) for o in outcomes] == [SendResult, PermanentProviderError, SendResult]
    assert server.lines
    assert not any(line.early for line in server.lines)
    assert server.delivered() == ["one@example.com", "two@example.com"]


def test_a_421_at_mail_sends_the_rest_once_on_a_new_connection():
    recipients = [f"m{n}@example.com" for n in range(4)]
    script = SmtpScript(mail={2: "421 4.3.2 Shutting down"})
    with scripted_smtp(script) as server, smtp_settings(server.port):
        outcomes = send_batch([outbound(to) for to in recipients])

    assert all(isinstance(o, SendResult) for o in outcomes)
    assert server.connections == 2
    assert server.delivered() == recipients  # each once
    assert [m.connection for m in server.received] == [1, 1, 2, 2]


@pytest.mark.parametrize("chunking", [False, True], ids=["data", "bdat"])
def test_a_421_at_the_end_of_data_is_transient_and_the_rest_go_on_a_new_connection(chunking):
    # Over BDAT, the 421 answers e1's BDAT: e1 is in doubt, e2 and e3 were never taken.
    recipients = [f"e{n}@example.com" for n in range(4)]
    script = SmtpScript(chunking=chunking, end={"e1@example.com": "421 4.3.2 Closing, try later"})
    with scripted_smtp(script) as server, smtp_settings(server.port):
        outcomes = send_batch([outbound(to) for to in recipients])

    assert [type(o) for o in outcomes] == [
        SendResult,
        TransientProviderError,
        SendResult,
        SendResult,
    ]
    assert "SMTP 421: 4.3.2 Closing, try later" in outcomes[1].reason
    assert server.delivered() == ["e0@example.com", "e2@example.com", "e3@example.com"]
    assert server.connections == 2


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-at-a-time"])
def test_a_connection_lost_after_the_content_leaves_that_message_transient(pipelining):
    recipients = [f"d{n}@example.com" for n in range(4)]
    script = SmtpScript(pipelining=pipelining, end={"d1@example.com": DROP})
    with scripted_smtp(script) as server, smtp_settings(server.port):
        outcomes = send_batch([outbound(to) for to in recipients])

    assert [type(o) for o in outcomes] == [
        SendResult,
        TransientProviderError,
        SendResult,
        SendResult,
    ]
    assert outcomes[1].reason.startswith("Mail server connection failed: ")
    assert server.delivered() == ["d0@example.com", "d2@example.com", "d3@example.com"]


def test_a_second_loss_in_one_chunk_leaves_the_unsent_messages_transient():
    recipients = [f"t{n}@example.com" for n in range(3)]
    # MAIL number 1 (t1, first connection) and number 2 (t1 again, second connection).
    script = SmtpScript(mail={1: "421 4.3.2 Busy", 2: "421 4.3.2 Still busy"})
    with scripted_smtp(script) as server, smtp_settings(server.port):
        outcomes = send_batch([outbound(to) for to in recipients])

    assert [type(o) for o in outcomes] == [
        SendResult,
        TransientProviderError,
        TransientProviderError,
    ]
    assert outcomes[2].reason == "Mail server connection failed: SMTP 421: 4.3.2 Still busy"
    assert server.connections == 2
    assert server.delivered() == ["t0@example.com"]


def test_the_next_batch_reuses_the_connection_and_shutdown_says_quit():
    from channels.providers.smtp import sessions_close

    with scripted_smtp() as server, smtp_settings(server.port):
        first = send_batch([outbound("b1@example.com")])
        second = send_batch([outbound("b2@example.com"), outbound("b3@example.com")])
        assert server.connections == 1
        assert server.quits == 0
        sessions_close()
        wait_until(lambda: server.quits == 1, timeout=5, message="QUIT at shutdown")

    assert [type(o) for o in first + second] == [SendResult] * 3
    assert server.delivered() == ["b1@example.com", "b2@example.com", "b3@example.com"]


def test_a_celery_pool_process_says_quit_as_it_shuts_down():
    from celery import signals

    with scripted_smtp() as server, smtp_settings(server.port):
        send_batch([outbound("s1@example.com")])
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
        wait_until(lambda: server.quits == 1, timeout=5, message="QUIT at the pool's shutdown")


def test_a_connection_idle_past_the_limit_is_closed_and_replaced():
    with scripted_smtp() as server, smtp_settings(server.port, SALVO_SMTP_IDLE_SECONDS=0.2):
        send_batch([outbound("i1@example.com")])
        time.sleep(0.3)
        send_batch([outbound("i2@example.com")])
        wait_until(lambda: server.quits == 1, timeout=5, message="the idle connection's QUIT")

    assert server.connections == 2
    assert [m.connection for m in server.received] == [1, 2]


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
def test_a_forked_child_opens_its_own_connection_and_leaves_its_parents_alone():
    with scripted_smtp() as server, smtp_settings(server.port):
        send_batch([outbound("parent-1@example.com")])
        pid = os.fork()
        if pid == 0:  # the child: a Celery pool process, forked after the parent sent
            try:
                [outcome] = send_batch([outbound("child@example.com")])
                os._exit(0 if isinstance(outcome, SendResult) else 1)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        send_batch([outbound("parent-2@example.com")])

    by_recipient = {m.rcpt_to: m.connection for m in server.received}
    assert by_recipient["parent-1@example.com"] == by_recipient["parent-2@example.com"]
    assert by_recipient["child@example.com"] != by_recipient["parent-1@example.com"]


def test_content_is_dot_stuffed_with_crlf_lines_and_arrives_as_written():
    body = ".starts with a dot\n..two dots\nbare\rcarriage\n.\nend"
    with scripted_smtp() as server, smtp_settings(server.port):
        [outcome] = send_batch([outbound("dots@example.com", body=body)])

    assert isinstance(outcome, SendResult)
    [received] = server.received
    # The lone "." line was stuffed, or the message would have ended there.
    parsed = email.message_from_bytes(received.content, policy=default_policy)
    assert parsed["Message-ID"].strip().strip("<>") == outcome.provider_message_id
    text = parsed.get_body(("plain",))
    assert text is not None
    assert text.get_content().splitlines() == body.replace("\r", "\n").splitlines()


def test_a_message_that_cannot_be_built_is_permanent_and_the_others_go():
    with scripted_smtp() as server, smtp_settings(server.port):
        outcomes = send_batch(
            [
                outbound("first@example.com"),
                outbound("not an address\r\nRSET"),
                outbound("last@example.com", headers={"X-Bad": "line\nbreak"}),
                outbound("fine@example.com"),
            ]
        )

    assert [type(o) for o in outcomes] == [
        SendResult,
        PermanentProviderError,
        PermanentProviderError,
        SendResult,
    ]
    assert all(o.reason.startswith("Cannot build the email: ") for o in outcomes[1:3])
    assert server.delivered() == ["first@example.com", "fine@example.com"]


def test_the_email_backend_takes_the_wire_path_only_over_djangos_smtp_backend():
    from channels.providers.smtp.backend import SmtpEmailBackend

    with override_settings(EMAIL_BACKEND=SMTP_BACKEND):
        assert isinstance(backend(), SmtpEmailBackend)
    for other in (
        "django.core.mail.backends.locmem.EmailBackend",
        "channels.providers.email_api.BatchEmailBackend",
    ):
        with override_settings(EMAIL_BACKEND=other):
            assert type(backend()) is EmailBackend


@pytest.mark.parametrize("value", ["-1", "301", "soon", "nan"])
def test_an_idle_limit_out_of_range_refuses_to_start(tmp_path, value):
    line = refusal({"SALVO_SMTP_IDLE_SECONDS": value}, tmp_path)

    assert line.endswith("from 0 (none) to 300.")
    assert load_settings({"SALVO_SMTP_IDLE_SECONDS": "0"}, tmp_path)["SALVO_EMBEDDED"] is True


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
def test_through_the_sink_every_message_arrives_once_as_it_was_built(chunking):
    from channels.providers.smtp.pool import session_take
    from devtools.sinks import running_sinks

    recipients = [f"k{n}@example.com" for n in range(70)]
    recipients[40] = "invalid@example.com"
    body = ".a dot\n..two\nend"
    with (
        running_sinks(smtp_chunking=chunking, reject="invalid") as sink,
        smtp_settings(sink.smtp_port),
    ):
        outcomes = send_batch([outbound(to, body=body) for to in recipients])
        received = sink.received("email")
        counters = sink.smtp_counters()
        kept = session_take()  # the session the batch used, kept for the next one
        kept.quit()
    assert kept.chunking is chunking

    assert [type(o) for o in outcomes] == [SendResult] * 40 + [PermanentProviderError] + [
        SendResult
    ] * 29
    assert outcomes[40].reason.startswith("SMTP 550: 5.1.1 <invalid@example.com>")
    accepted = [r for r in received if r["accepted"]]
    assert [r["to"] for r in accepted] == recipients[:40] + recipients[41:]
    assert (counters["messages"], counters["duplicates"], counters["sessions"]) == (69, 0, 1)
    for record in accepted[:3]:
        parsed = email.message_from_bytes(record["raw"].encode(), policy=default_policy)
        text = parsed.get_body(("plain",))
        assert text is not None
        assert text.get_content().splitlines() == body.splitlines()


def test_chunked_large_messages_go_whole_beside_small_ones():
    big = ("line of a long letter " * 3 + "\n") * 5000  # about 340 KB, over a window
    bodies = [big if n % 3 == 1 else f"small {n}" for n in range(7)]
    recipients = [f"l{n}@example.com" for n in range(7)]
    with scripted_smtp(SmtpScript(chunking=True)) as server, smtp_settings(server.port):
        messages = [outbound(to, body=b) for to, b in zip(recipients, bodies, strict=True)]
        outcomes = send_batch(messages)

    assert all(isinstance(o, SendResult) for o in outcomes)
    assert server.delivered() == recipients
    for message, body in zip(server.received, bodies, strict=True):
        text = email.message_from_bytes(message.content, policy=default_policy).get_body(("plain",))
        assert text is not None
        assert text.get_content().splitlines() == body.splitlines()
