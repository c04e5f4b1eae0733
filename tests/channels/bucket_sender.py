"""One process sending as fast as a shared token bucket lets it, for test_ratelimit.

    python -m tests.channels.bucket_sender KEY RATE BURST DURATION

Sets Django up from the environment (the test database and SALVO_RATELIMIT_*), connects
to the bucket's store (a token of another key), prints ``ready``, waits for a line on stdin
(the test's go, once every sender is ready), then for DURATION seconds reserves one token
at a time and waits what it is told. It prints one JSON line: for each send, the earliest
and the latest moment (``time.monotonic()``, one clock for every process of the machine)
the bucket can have allowed it: the reservation's wait added to the time just before and
just after the call.
"""

from __future__ import annotations

import json
import sys
import time


def main(key: str, rate: float, burst: float, duration: float) -> None:
    import django

    django.setup()
    from django.db import connection

    from channels import ratelimit

    connection.ensure_connection()
    # Connect to the bucket's store (Redis connects, and loads its script, on first use)
    # before the go: on a loaded machine that first use took the whole test's duration.
    ratelimit.acquire(key=f"{key}:warm-up", rate_per_s=rate, burst=burst)
    print("ready", flush=True)
    sys.stdin.readline()
    stop_at = time.monotonic() + duration
    sends: list[tuple[float, float]] = []
    while True:
        before = time.monotonic()
        wait = ratelimit.acquire(key=key, rate_per_s=rate, burst=burst)
        after = time.monotonic()
        if after + wait > stop_at:
            break
        time.sleep(wait)
        sends.append((before + wait, after + wait))
    print(json.dumps(sends), flush=True)


if __name__ == "__main__":
    key, rate, burst, duration = sys.argv[1:]
    main(key, float(rate), float(burst), float(duration))
