"""The embedded default's zero-server broker, between real processes on one folder.

These run on either profile: they name the embedded default's transport themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from django.conf import settings

from tests.conftest import wait_until

BASE_DIR = Path(__file__).resolve().parent.parent
TRANSPORT = settings.EMBEDDED_BROKER_TRANSPORT
MESSAGES = 5000


def peer(role: str, folder: Path, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "tests.broker_peer", role, "--transport", TRANSPORT]
    return subprocess.Popen(
        [*command, "--folder", str(folder), *args],
        cwd=BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 120) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"{process.args!r} failed:\n{output}"
    return output


def numbers(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


@pytest.mark.timeout(240)
def test_every_message_is_received_exactly_once_between_processes(tmp_path):
    consumers = [peer("consume", tmp_path, "--out", str(tmp_path / f"got{i}")) for i in (1, 2)]
    producer = peer("produce", tmp_path, "--count", str(MESSAGES))

    finish(producer)
    outputs = [finish(consumer) for consumer in consumers]

    received = Counter(numbers(tmp_path / "got1") + numbers(tmp_path / "got2"))
    assert sorted(received) == list(range(MESSAGES)), "messages lost"
    assert [n for n, times in received.items() if times > 1] == [], "messages received twice"
    assert all("Traceback" not in output for output in outputs), outputs


def test_messages_taken_by_a_consumer_that_died_are_delivered_again(tmp_path):
    producer = peer("produce", tmp_path, "--count", "20")
    finish(producer)
    holder = peer("consume", tmp_path, "--out", str(tmp_path / "held"), "--hold", "3")
    wait_until(lambda: (tmp_path / "held.holding").exists(), timeout=60, message="no hold")
    held = numbers(tmp_path / "held")
    assert len(held) == 3

    holder.kill()  # SIGKILL: no warm shutdown gives the messages back
    holder.wait(timeout=10)
    consumer = peer("consume", tmp_path, "--out", str(tmp_path / "got"))
    finish(consumer)

    assert sorted(numbers(tmp_path / "got")) == list(range(20))


def _queue(folder: Path):
    from kombu import Connection

    from tests.broker_peer import QUEUE, transport_options

    connection = Connection(
        "filesystem://", transport=TRANSPORT, transport_options=transport_options(folder)
    )
    return connection, connection.SimpleQueue(QUEUE)


def _message_text(queue: Any, n: int) -> str:
    """What kombu writes in a message file for ``{"n": n}``."""
    channel = queue.channel
    message = channel.prepare_message(
        json.dumps({"n": n}), content_type="application/json", content_encoding="utf-8"
    )
    message["properties"]["delivery_info"] = {}
    channel._inplace_augment_message(message, "", "peer")
    return json.dumps(message)


def _write_message(folder: Path, queue: Any, n: int) -> Path:
    """A message file as another writer would leave it."""
    path = folder / "queue" / f"{n}_{uuid.uuid4()}.peer.msg"
    path.write_text(_message_text(queue, n))
    return path


def test_a_message_taken_without_acknowledgement_is_gone_for_good(tmp_path):
    """``no_ack``: taking the message is its acknowledgement, as on any AMQP broker; it does
    not come back when the connection that took it closes (a purge or a peek uses this)."""
    from tests.broker_peer import QUEUE

    connection, queue = _queue(tmp_path)
    with connection:
        _write_message(tmp_path, queue, 1)
        taken = connection.default_channel.basic_get(QUEUE, no_ack=True)
        assert taken is not None
        assert json.loads(taken.body) == {"n": 1}
        queue.close()
    connection, queue = _queue(tmp_path)
    with connection:
        with pytest.raises(Empty):
            queue.get(timeout=0.5)
        queue.close()
    assert [p.name for p in (tmp_path / "queue").rglob("*.msg")] == []


def test_a_file_caught_half_written_is_read_again_later_not_lost(tmp_path):
    connection, queue = _queue(tmp_path)
    with connection:
        _write_message(tmp_path, queue, 1)
        # Another writer's file, caught before its content arrived (kombu#1551).
        early = tmp_path / "queue" / f"0_{uuid.uuid4()}.peer.msg"
        early.write_text("")

        first = queue.get(timeout=5)
        first.ack()
        assert first.payload == {"n": 1}
        assert early.exists(), "the unreadable file was not put back in the queue"
        with pytest.raises(Empty):
            queue.get(timeout=0.5)

        early.write_text(_message_text(queue, 0))
        second = queue.get(timeout=5)
        second.ack()
        assert second.payload == {"n": 0}
        assert not early.exists()
        queue.close()


def test_a_file_unreadable_for_too_long_is_quarantined_with_a_log_line(tmp_path, caplog):
    from config.broker import UNREADABLE_GRACE_S

    connection, queue = _queue(tmp_path)
    with connection:
        broken = tmp_path / "queue" / f"0_{uuid.uuid4()}.peer.msg"
        broken.write_text('{"body": "half of a mess')
        written = time.time() - UNREADABLE_GRACE_S - 1
        os.utime(broken, (written, written))
        _write_message(tmp_path, queue, 1)

        message = queue.get(timeout=5)
        message.ack()
        queue.close()

    assert message.payload == {"n": 1}
    quarantined = tmp_path / "queue" / ".quarantine" / broken.name
    assert quarantined.read_text() == '{"body": "half of a mess'
    assert f"Broker message {broken.name} unreadable" in caplog.text


def test_with_the_priority_order_an_earlier_queue_is_always_read_first(tmp_path):
    """Salvo's workers read their queues in order ("priority", settings): a run's first
    batch goes before a backlog queued earlier. (kombu's own order takes turns.)"""
    from kombu import Connection, Consumer, Exchange, Producer, Queue

    from tests.broker_peer import transport_options

    options = {**transport_options(tmp_path), "queue_order_strategy": "priority"}
    urgent, backlog = (Queue(name, Exchange(name), routing_key=name) for name in ("a", "b"))
    received: list[str] = []
    with Connection("filesystem://", transport=TRANSPORT, transport_options=options) as conn:
        producer = Producer(conn.default_channel)
        for queue in (urgent, backlog):
            queue(conn.default_channel).declare()
        for n in range(3):  # the backlog is older than the urgent messages
            producer.publish({"n": f"b{n}"}, exchange=backlog.exchange, routing_key="b")
        for n in range(3):
            producer.publish({"n": f"a{n}"}, exchange=urgent.exchange, routing_key="a")

        def take(body: dict[str, str], message: Any) -> None:
            received.append(body["n"])
            message.ack()

        with Consumer(conn.channel(), queues=[urgent, backlog], callbacks=[take]):
            while len(received) < 6:
                conn.drain_events(timeout=5)

    # Within one queue, messages of one millisecond come in any order, as with kombu's.
    assert [n[0] for n in received] == ["a", "a", "a", "b", "b", "b"]
    assert sorted(received) == ["a0", "a1", "a2", "b0", "b1", "b2"]
