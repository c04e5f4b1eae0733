"""The shared token bucket, on each backend named explicitly, alone and across processes.

Every test runs once per backend (`SALVO_RATELIMIT_BACKEND=database`, then `redis`),
whatever the broker. No test needs the machine to be fast: a bucket's answer is checked
against bounds computed from the time that really passed between the calls (the refill of
that time can only shorten a wait), or it depends on no time at all.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings
from django.test import override_settings

from channels import ratelimit
from channels.models import RateLimitBucket
from config.processes import child_process_env
from tests.conftest import BASE_DIR
from tests.settings_loader import PRODUCTION_REQUIRED, PRODUCTION_URLS, load_settings, refusal

# Float noise in a wait computed from clock readings (the Redis script replies in text).
EPS = 1e-4
SENDER_READY_TIMEOUT_S = 60.0
SENDER_DONE_TIMEOUT_S = 60.0


def unique_key() -> str:
    return f"test:{uuid.uuid4().hex}"


@pytest.fixture(params=["database", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """The bucket's backend for this run of the test, set explicitly."""
    overrides = {"SALVO_RATELIMIT_BACKEND": request.param}
    if request.param == "redis":
        overrides["SALVO_RATELIMIT_REDIS_URL"] = request.getfixturevalue("redis_url")
    with override_settings(**overrides):
        yield request.param


def assert_wait(wait: float, *, told: float, since: float) -> None:
    """`wait` is `told` (what the bucket owes when no time passes) less the refill of the
    time that did pass since `since`, the moment before the calls began."""
    elapsed = time.monotonic() - since
    assert max(0.0, told - elapsed) - EPS <= wait <= told + EPS, (wait, told, elapsed)


# --- one caller ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_bucket_lives_where_the_setting_says(backend):
    key = unique_key()

    ratelimit.acquire(key=key, rate_per_s=10)

    in_database = RateLimitBucket.objects.filter(key=key).exists()
    assert in_database == (backend == "database")
    if backend == "redis":
        server = redis.Redis.from_url(settings.SALVO_RATELIMIT_REDIS_URL)
        assert server.exists(f"salvo:ratelimit:{key}") == 1


@pytest.mark.django_db
def test_a_full_bucket_admits_a_burst_then_queues_reservations(backend):
    key, started = unique_key(), time.monotonic()

    waits = [ratelimit.acquire(key=key, rate_per_s=2, burst=3) for _ in range(5)]

    assert waits[:3] == [0, 0, 0]
    # Each reservation queues behind the earlier ones: half a second more each.
    assert_wait(waits[3], told=0.5, since=started)
    assert_wait(waits[4], told=1.0, since=started)


@pytest.mark.django_db
def test_the_bucket_refills_at_the_rate(backend):
    key, started = unique_key(), time.monotonic()
    assert ratelimit.acquire(key=key, rate_per_s=10, tokens=5, burst=5) == 0

    time.sleep(0.2)  # at least 2 tokens come back
    wait = ratelimit.acquire(key=key, rate_per_s=10, tokens=5, burst=5)

    assert_wait(wait, told=0.5, since=started)
    assert wait <= 0.3 + EPS


@pytest.mark.django_db
def test_the_bucket_never_holds_more_than_its_burst(backend):
    key = unique_key()
    assert ratelimit.acquire(key=key, rate_per_s=10, burst=5) == 0

    time.sleep(0.3)  # 3 tokens' worth: 7 without the cap, 5 with it
    wait = ratelimit.acquire(key=key, rate_per_s=10, tokens=7, burst=5)

    assert wait == pytest.approx(0.2, abs=EPS)


@pytest.mark.django_db
def test_several_tokens_at_once_wait_for_all_of_them(backend):
    key, started = unique_key(), time.monotonic()
    assert ratelimit.acquire(key=key, rate_per_s=10, tokens=10) == 0

    wait = ratelimit.acquire(key=key, rate_per_s=10, tokens=5)

    assert_wait(wait, told=0.5, since=started)


@pytest.mark.django_db
def test_tokens_given_back_serve_the_next_caller(backend):
    key, started = unique_key(), time.monotonic()
    assert ratelimit.acquire(key=key, rate_per_s=10, tokens=10) == 0
    assert_wait(ratelimit.acquire(key=key, rate_per_s=10, tokens=10), told=1.0, since=started)

    # The second caller will come back later instead of waiting: the next one is not
    # queued behind its reservation...
    ratelimit.give_back(key=key, rate_per_s=10, tokens=10)
    assert_wait(ratelimit.acquire(key=key, rate_per_s=10, tokens=5), told=0.5, since=started)

    # ...and giving back never fills the bucket beyond its burst (10 tokens).
    ratelimit.give_back(key=key, rate_per_s=10, tokens=100)
    wait = ratelimit.acquire(key=key, rate_per_s=10, tokens=12)
    assert wait == pytest.approx(0.2, abs=EPS)


@pytest.mark.parametrize(
    ("rate", "tokens", "burst"), [(0, 1, None), (-1, 1, None), (1, 0, None), (1, 1, 0)]
)
def test_nonsense_arguments_are_refused(rate, tokens, burst):
    with pytest.raises(ValueError, match="must be"):
        ratelimit.acquire(key="k", rate_per_s=rate, tokens=tokens, burst=burst)


# --- the setting ----------------------------------------------------------------------------

AMQP = {"CELERY_BROKER_URL": "amqp://salvo@127.0.0.1:1//"}


@pytest.mark.parametrize(
    ("variables", "backend_name", "redis_at"),
    [
        ({}, "database", ""),
        (PRODUCTION_URLS, "redis", PRODUCTION_URLS["CELERY_BROKER_URL"]),
        ({**PRODUCTION_URLS, **AMQP}, "database", ""),
        (
            {**PRODUCTION_URLS, **AMQP, "SALVO_RATELIMIT_REDIS_URL": "redis://127.0.0.1:2/3"},
            "redis",
            "redis://127.0.0.1:2/3",
        ),
        (
            {**PRODUCTION_URLS, "SALVO_RATELIMIT_BACKEND": "database"},
            "database",
            PRODUCTION_URLS["CELERY_BROKER_URL"],
        ),
    ],
    ids=["embedded", "redis-broker", "amqp-broker", "amqp-and-redis-url", "told-database"],
)
def test_the_buckets_follow_a_redis_broker_unless_told(tmp_path, variables, backend_name, redis_at):
    loaded = load_settings({**variables, **PRODUCTION_REQUIRED}, tmp_path)

    assert loaded["SALVO_RATELIMIT_BACKEND"] == backend_name
    assert loaded["SALVO_RATELIMIT_REDIS_URL"] == redis_at


@pytest.mark.parametrize(
    ("variables", "says"),
    [
        ({"SALVO_RATELIMIT_BACKEND": "memcached"}, "choose redis or database"),
        # The embedded default's broker is no Redis: the buckets have no Redis to live in.
        ({"SALVO_RATELIMIT_BACKEND": "redis"}, "set SALVO_RATELIMIT_REDIS_URL"),
        (
            {**PRODUCTION_URLS, **AMQP, **PRODUCTION_REQUIRED, "SALVO_RATELIMIT_BACKEND": "redis"},
            "set SALVO_RATELIMIT_REDIS_URL",
        ),
    ],
    ids=["unknown", "redis-on-the-embedded-default", "redis-beside-amqp"],
)
def test_a_backend_the_settings_cannot_use_stops_the_start_with_the_reason(
    tmp_path, variables, says
):
    assert says in refusal(variables, tmp_path)


# --- several processes -------------------------------------------------------------------------


def send_from_processes(
    *, key: str, rate: float, burst: float, processes: int, duration: float
) -> list[tuple[float, float]]:
    """Start `processes` senders (tests/channels/bucket_sender.py) on one bucket, let them go
    together once all are ready, and return every send as the interval of moments the
    bucket can have allowed it."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        **child_process_env(),
        "SALVO_RATELIMIT_BACKEND": settings.SALVO_RATELIMIT_BACKEND,
        "SALVO_RATELIMIT_REDIS_URL": settings.SALVO_RATELIMIT_REDIS_URL,
    }
    command = [sys.executable, "-m", "tests.channels.bucket_sender"]
    command += [key, str(rate), str(burst), str(duration)]
    senders = [
        subprocess.Popen(
            command,
            cwd=BASE_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for sender in senders:
            assert sender.stdout is not None
            started, _, _ = select.select([sender.stdout], [], [], SENDER_READY_TIMEOUT_S)
            assert started, f"a sender was not ready within {SENDER_READY_TIMEOUT_S:g}s"
            assert sender.stdout.readline().strip() == "ready", "a sender failed to start"
        for sender in senders:
            assert sender.stdin is not None
            sender.stdin.write("go\n")
            sender.stdin.flush()
        sends: list[tuple[float, float]] = []
        for sender in senders:
            output, _ = sender.communicate(timeout=SENDER_DONE_TIMEOUT_S)
            assert sender.returncode == 0, output
            sends += [(lo, hi) for lo, hi in json.loads(output)]
        return sorted(sends)
    finally:
        for sender in senders:
            if sender.poll() is None:
                sender.kill()
                sender.wait()


def most_surely_inside(sends: list[tuple[float, float]], window: float) -> int:
    """The most sends that any `window`-second span surely holds: those whose whole
    interval of possible moments lies inside it (so scheduling delays never add any)."""
    most = 0
    for start, _ in sends:
        inside = sum(1 for lo, hi in sends if lo >= start and hi <= start + window + EPS)
        most = max(most, inside)
    return most


@pytest.mark.django_db(transaction=True)
def test_the_bucket_holds_across_processes(backend):
    rate, burst = 20, 4

    sends = send_from_processes(key=unique_key(), rate=rate, burst=burst, processes=3, duration=1.5)

    # The bucket went on giving tokens after its burst...
    assert len(sends) > burst
    # ...and never more than rate × window + burst in any window, all processes together.
    span = sends[-1][1] - sends[0][0]
    for window in (0.1, 0.25, 0.5, 1.0, span):
        assert most_surely_inside(sends, window) <= rate * window + burst, window
