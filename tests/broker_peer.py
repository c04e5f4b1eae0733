"""A producer or a consumer of a kombu transport, run as its own process by the broker tests.

    python -m tests.broker_peer produce --transport T --folder F --count N
    python -m tests.broker_peer consume --transport T --folder F --out FILE [--hold N]

Needs neither Django nor a database. The producer puts ``{"n": i}`` for i in [0, count),
then creates ``F/produced``. A consumer appends every ``n`` it receives to ``--out`` (one per
line, flushed) after acknowledging it, and exits once the producer is done and the queue
stayed empty for a while. With ``--hold N`` it takes N messages, writes them to ``--out``
without acknowledging them, and waits to be killed (a worker that dies mid-task).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from queue import Empty
from typing import Any

from kombu import Connection

QUEUE = "peer"
IDLE_EXIT_S = 3.0


def transport_options(folder: Path) -> dict[str, Any]:
    """The same layout as the embedded default's settings: one folder is both ends."""
    for name in ("queue", "control", "processed"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "control_folder": str(folder / "control"),
        "processed_folder": str(folder / "processed"),
        "store_processed": False,
        "polling_interval": 0.01,
    }


def connect(transport: str, folder: Path) -> Connection:
    return Connection(
        "filesystem://", transport=transport, transport_options=transport_options(folder)
    )


def produce(transport: str, folder: Path, count: int) -> None:
    with connect(transport, folder) as connection:
        queue = connection.SimpleQueue(QUEUE)
        for n in range(count):
            queue.put({"n": n})
        queue.close()
    (folder / "produced").touch()


def consume(transport: str, folder: Path, out: Path, hold: int) -> None:
    with connect(transport, folder) as connection, out.open("a") as received:
        queue = connection.SimpleQueue(QUEUE)
        if hold:
            for _ in range(hold):
                message = queue.get(timeout=30)
                received.write(f"{message.payload['n']}\n")
                received.flush()
            (out.parent / f"{out.name}.holding").touch()
            time.sleep(600)  # until killed, acknowledging nothing
            return
        idle_since = time.monotonic()
        while True:
            try:
                message = queue.get(timeout=0.2)
            except Empty:
                done = (folder / "produced").exists()
                if done and time.monotonic() - idle_since > IDLE_EXIT_S:
                    break
                continue
            message.ack()
            received.write(f"{message.payload['n']}\n")
            received.flush()
            idle_since = time.monotonic()
        queue.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.broker_peer")
    parser.add_argument("role", choices=["produce", "consume"])
    parser.add_argument("--transport", required=True)
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--hold", type=int, default=0)
    args = parser.parse_args()
    if args.role == "produce":
        produce(args.transport, args.folder, args.count)
    else:
        consume(args.transport, args.folder, args.out, args.hold)


if __name__ == "__main__":
    main()
