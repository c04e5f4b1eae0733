"""The local sink servers: recording, failure rules, and the run_sinks command."""

import http.client
import json
import select
import smtplib
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from config.processes import stop_process
from devtools.bench.processes import rss_mb
from devtools.sinks import (
    FailureRules,
    count_duplicates,
    count_duplicates_in,
    first_accepted_at,
    iter_records,
    read_records,
    record_end,
    running_sinks,
)
from devtools.sinks import rules_from_options as parse_rules

BASE_DIR = Path(__file__).resolve().parents[2]


def rules_from(**options) -> FailureRules:
    defaults = {"reject": "", "flaky": "", "throttle": "", "slow": ""}
    return parse_rules(defaults | options)


def http_request(port: int, path: str, payload=None, *, key: str = "", method: str = "POST"):
    """Status, headers and JSON answer of one request to the HTTP sink."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        body = json.dumps(payload).encode() if payload is not None else None
        connection.request(method, path, body=body, headers={"Idempotency-Key": key} if key else {})
        response = connection.getresponse()
        return response.status, response.headers, json.loads(response.read())
    finally:
        connection.close()


def smtp_send(port: int, *, to: str, delivery_id: str) -> None:
    message = EmailMessage()
    message["From"] = "news@example.com"
    message["To"] = to
    message["Subject"] = "Hello"
    message["X-Salvo-Delivery-Id"] = delivery_id
    message.set_content("Hi")
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
        client.send_message(message)


def test_failure_rules_are_read_from_the_command_line_form():
    rules = rules_from(
        reject="^bad", flaky="retry:2", throttle="busy:3:1.5", slow="http://x:80/slow:0.5"
    )
    assert rules == FailureRules(
        reject="^bad",
        flaky="retry",
        flaky_times=2,
        throttle="busy",
        throttle_times=3,
        retry_after_s=1.5,
        slow="http://x:80/slow",
        slow_s=0.5,
    )
    assert rules_from(flaky="retry") == FailureRules(flaky="retry", flaky_times=1)


def test_sink_records_smtp_and_http_and_counts_duplicates():
    with running_sinks() as sink:
        assert http_request(sink.http_port, "/_sink/health", method="GET")[2] == {"ok": True}
        smtp_send(sink.smtp_port, to="ann@example.com", delivery_id="7")
        smtp_send(sink.smtp_port, to="ann@example.com", delivery_id="7")
        status, _headers, answer = http_request(
            sink.http_port, "/sms", {"to": "+33600000000"}, key="8"
        )
        assert status == 200
        assert answer["id"].startswith("sink-")

        assert [(r["channel"], r["delivery_id"]) for r in sink.received()] == [
            ("email", "7"),
            ("email", "7"),
            ("sms", "8"),
        ]
        assert sink.duplicates() == 1
        assert sink.received("sms")[0]["json"] == {"to": "+33600000000"}


def test_http_sink_answers_a_repeated_idempotency_key_with_the_first_answer():
    with running_sinks(flaky="retry") as sink:
        first = http_request(sink.http_port, "/webhook", {"n": 1}, key="21")
        again = http_request(sink.http_port, "/webhook", {"n": 1}, key="21")
        # A key whose first attempt failed is not a repeat when it finally goes through.
        failed = http_request(sink.http_port, "/sms", {"to": "+33-retry"}, key="22")
        accepted = http_request(sink.http_port, "/sms", {"to": "+33-retry"}, key="22")
        bulk = {"messages": [{"to": "+33611", "idempotency_key": "21"}]}
        status, _headers, answer = http_request(sink.http_port, "/sms/batch", bulk)
        bulk_again = http_request(sink.http_port, "/sms/batch", bulk)[2]

        assert (first[0], again[0]) == (200, 200)
        assert again[2] == first[2], "a repeat gets the first answer, not a new message id"
        assert (failed[0], accepted[0]) == (503, 200)
        assert status == 200
        assert bulk_again == answer
        assert [(r["channel"], r["delivery_id"]) for r in sink.received()] == [
            ("webhook", "21"),
            ("sms", "22"),
            ("sms", "21"),  # the key is the provider's per channel (endpoint)
        ]
        assert [(r["channel"], r["delivery_id"]) for r in sink.repeats()] == [
            ("webhook", "21"),
            ("sms", "21"),
        ]
        assert sink.duplicates() == 2


def test_wait_for_fails_loudly_when_the_messages_never_come():
    with running_sinks() as sink:
        http_request(sink.http_port, "/sms", {"to": "+1"}, key="1")
        assert len(sink.wait_for(1, channel="sms")) == 1
        with pytest.raises(TimeoutError, match=r"received 1 of 2 messages on sms in 0\.2s"):
            sink.wait_for(2, channel="sms", timeout=0.2)


def test_failure_rules_apply_per_delivery_over_real_sockets():
    with running_sinks(
        reject="bad", flaky="retry", flaky_times=2, throttle="busy", retry_after_s=3
    ) as sink:

        def push(token: str, key: str):
            return http_request(sink.http_port, "/push", {"token": token}, key=key)

        assert push("bad-token", "1")[0] == 400
        assert [push("retry-token", "2")[0] for _ in range(3)] == [503, 503, 200]
        # A different delivery to the same recipient starts its own count.
        assert push("retry-token", "3")[0] == 503
        status, headers, _answer = push("busy-token", "4")
        assert (status, headers["Retry-After"]) == (429, "3")

        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp_send(sink.smtp_port, to="bad@example.com", delivery_id="5")
        with pytest.raises(smtplib.SMTPDataError) as excinfo:
            smtp_send(sink.smtp_port, to="retry@example.com", delivery_id="6")
        assert excinfo.value.smtp_code == 451

        statuses = [(r["to"], r["status"]) for r in sink.attempts()]
        assert ("bad@example.com", 550) in statuses
        assert [r["delivery_id"] for r in sink.received()] == ["2"]


def test_without_content_the_record_keeps_ids_only(tmp_path):
    record = tmp_path / "received.jsonl"
    with running_sinks(record=record, content=False) as sink:
        smtp_send(sink.smtp_port, to="ann@example.com", delivery_id="9")
        http_request(sink.http_port, "/sms", {"to": "+1"}, key="10")
        records = sink.wait_for(2)
    assert {tuple(sorted(r)) for r in records} == {
        ("accepted", "at", "attempt", "channel", "delivery_id", "status", "to"),
        ("accepted", "at", "attempt", "channel", "delivery_id", "message_id", "status", "to"),
    }
    assert read_records(record) == records
    assert count_duplicates(records) == 0


def test_a_record_is_read_as_a_stream_from_where_a_run_began(tmp_path):
    record = tmp_path / "received.jsonl"
    assert (record_end(record), list(iter_records(record))) == (0, [])

    def write(*records: dict) -> None:
        with record.open("a") as file:
            # As the sink writes them: compact JSON.
            file.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in records)

    def sent(channel: str, delivery_id, at: float, accepted: bool = True) -> dict:
        return {"channel": channel, "delivery_id": delivery_id, "accepted": accepted, "at": at}

    write(sent("sms", "7", 1.0), sent("sms", "8", 2.0, accepted=False))
    start = record_end(record)
    write(sent("sms", "8", 3.0, accepted=False), sent("sms", "7", 4.0), sent("email", "7", 5.0))
    write(sent("sms", "07", 6.0), sent("sms", "9000000000", 7.0), sent("sms", "9000000000", 8.0))
    # Lines of other shapes: an emulated provider's, a numeric id, a quote in an address.
    write({"channel": "sms", "provider": "twilio", "delivery_id": "7", "accepted": True, "at": 9})
    write({"channel": "push", "delivery_id": 7, "to": 'a"b', "accepted": True, "at": 10})
    write({"channel": "push", "delivery_id": "7", "to": "x", "accepted": True, "at": 11})
    write({"channel": "fcm-token", "delivery_id": None, "accepted": True, "at": 12})
    complete = record.stat().st_size
    with record.open("a") as file:
        file.write('{"channel": "sms", "deliv')  # a line the sink is still writing

    assert record_end(record) == complete
    assert [r["at"] for r in iter_records(record, start)] == [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert first_accepted_at(record, start) == 4.0
    assert first_accepted_at(record, complete) is None
    # sms 7 three times, sms 9000000000 and push 7 twice; email 7, sms "07" are other keys.
    assert count_duplicates(iter_records(record)) == 4
    assert count_duplicates(read_records(record)) == 4
    assert count_duplicates_in(record) == 4
    assert count_duplicates_in(record, start) == 3


def test_the_sink_keeps_its_memory_flat_in_the_messages_it_accepts(tmp_path):
    """A benchmark of 10M profiles × 2 channels sends ~20M messages a run: what the sink
    remembers of each (an idempotency key accepted, an attempt) must not grow with them."""
    connection: http.client.HTTPConnection

    def send(first: int, count: int) -> list:
        results = []
        for start in range(first, first + count, 1000):
            messages = [
                {"to": f"+3360{n:07d}", "body": "Hi", "idempotency_key": 5_000_000 + n}
                for n in range(start, start + 1000)
            ]
            connection.request("POST", "/sms/batch", body=json.dumps({"messages": messages}))
            response = connection.getresponse()
            assert response.status == 200
            results += json.loads(response.read())["results"]
        return results

    with running_sinks(record=tmp_path / "received.jsonl", content=False) as sink:
        connection = http.client.HTTPConnection("127.0.0.1", sink.http_port, timeout=30)
        try:
            first = send(0, 20_000)
            before = rss_mb(sink.pid)
            send(20_000, 180_000)
            after = rss_mb(sink.pid)
            assert before > 0, "the sink process is gone"
            assert after > 0, "the sink process is gone"
            # An idempotent repeat still gets the first answer, after 200,000 others.
            assert send(0, 1000) == first[:1000]
        finally:
            connection.close()
        assert sink.duplicates() == 1000
    assert after - before < 15, f"the sink grew from {before:.0f} MB to {after:.0f} MB"


def test_run_sinks_command_serves_until_stopped(tmp_path):
    record = tmp_path / "received.jsonl"
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "run_sinks",
            "--smtp-port",
            "0",
            "--http-port",
            "0",
            "--record",
            str(record),
            "--reject",
            "nobody",
        ],
        cwd=BASE_DIR,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert select.select([process.stdout], [], [], 20)[0], "run_sinks did not start"
        ready = json.loads(process.stdout.readline())
        smtp_send(ready["smtp_port"], to="ann@example.com", delivery_id="11")
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp_send(ready["smtp_port"], to="nobody@example.com", delivery_id="12")
    finally:
        assert stop_process(process, grace_s=10) == 0
        if process.stdout:
            process.stdout.close()
    assert [(r["to"], r["accepted"]) for r in read_records(record)] == [
        ("ann@example.com", True),
        ("nobody@example.com", False),
    ]
