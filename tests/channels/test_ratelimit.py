"""The shared token bucket, on the database and on Redis, under concurrency."""

import shutil
import socket
import subprocess
import threading
import time
import uuid

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings

from channels import ratelimit
from channels.models import RateLimitBucket


def unique_key() -> str:
    return f"test:{uuid.uuid4().hex}"


def send_in_threads(*, key: str, rate: float, burst: float, threads: int, duration: float):
    """Each thread sends as fast as the limiter lets it; returns every send time."""
    sent: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    stop_at = time.monotonic() + duration

    def worker() -> None:
        try:
            while True:
                wait = ratelimit.acquire(key=key, rate_per_s=rate, burst=burst)
                if time.monotonic() + wait > stop_at:
                    return
                time.sleep(wait)
                with lock:
                    sent.append(time.monotonic())
        except BaseException as exc:  # surfaced in the test thread
            errors.append(exc)
        finally:
            connection.close()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert not errors, errors
    return sorted(sent)


def most_in_any_window(times: list[float], window: float) -> int:
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] > window:
            start += 1
        most = max(most, end - start + 1)
    return most


def assert_rate_respected(times, *, rate, burst, duration):
    # Admitted in any window ≤ rate × window + burst (+1 for a send landing on the edge).
    for window in (0.1, 0.25, 0.5):
        assert most_in_any_window(times, window) <= rate * window + burst + 1, window
    # …and the limiter does let the rate through, so the bound above is not trivially met.
    assert len(times) >= rate * duration * 0.6


@pytest.mark.django_db
def test_a_full_bucket_admits_a_burst_then_asks_to_wait():
    key = unique_key()
    waits = [ratelimit.acquire(key=key, rate_per_s=10, burst=3) for _ in range(5)]
    assert waits[:3] == [0, 0, 0]
    # Reservations queue up: the 4th waits one interval, the 5th two.
    assert waits[3] == pytest.approx(0.1, abs=0.02)
    assert waits[4] == pytest.approx(0.2, abs=0.02)
    if not settings.CELERY_BROKER_URL.startswith("redis"):
        # The database backend keeps the bucket in a row; with Redis it lives in Redis.
        assert RateLimitBucket.objects.get(key=key).level == pytest.approx(-2, abs=0.2)


@pytest.mark.django_db
def test_the_bucket_refills_at_the_rate():
    key = unique_key()
    assert ratelimit.acquire(key=key, rate_per_s=50, burst=1) == 0
    time.sleep(0.05)  # 2.5 tokens' worth, capped at the burst of 1
    assert ratelimit.acquire(key=key, rate_per_s=50, burst=1) == 0
    assert ratelimit.acquire(key=key, rate_per_s=50, burst=1) > 0


@pytest.mark.django_db
def test_several_tokens_at_once_wait_for_all_of_them():
    key = unique_key()
    assert ratelimit.acquire(key=key, rate_per_s=100, tokens=100) == 0
    assert ratelimit.acquire(key=key, rate_per_s=100, tokens=50) == pytest.approx(0.5, abs=0.05)


def assert_tokens_given_back_serve_the_next_caller() -> None:
    key = unique_key()
    assert ratelimit.acquire(key=key, rate_per_s=10, tokens=10) == 0
    assert ratelimit.acquire(key=key, rate_per_s=10, tokens=10) == pytest.approx(1, abs=0.05)
    # The second caller will come back later instead of waiting: the next one is not
    # queued behind its reservation...
    ratelimit.give_back(key=key, rate_per_s=10, tokens=10)
    assert ratelimit.acquire(key=key, rate_per_s=10, tokens=5) == pytest.approx(0.5, abs=0.05)
    # ...and giving back never fills the bucket beyond its burst.
    ratelimit.give_back(key=key, rate_per_s=10, tokens=100)
    assert ratelimit.acquire(key=key, rate_per_s=10, tokens=10) == 0
    assert ratelimit.acquire(key=key, rate_per_s=10, tokens=1) > 0


@pytest.mark.django_db
def test_tokens_given_back_serve_the_next_caller():
    assert_tokens_given_back_serve_the_next_caller()


def test_redis_tokens_given_back_serve_the_next_caller(redis_url):
    with override_settings(CELERY_BROKER_URL=redis_url):
        assert_tokens_given_back_serve_the_next_caller()


@pytest.mark.parametrize(
    ("rate", "tokens", "burst"), [(0, 1, None), (-1, 1, None), (1, 0, None), (1, 1, 0)]
)
def test_nonsense_arguments_are_refused(rate, tokens, burst):
    with pytest.raises(ValueError, match="must be"):
        ratelimit.acquire(key="k", rate_per_s=rate, tokens=tokens, burst=burst)


@pytest.mark.django_db(transaction=True)
def test_database_bucket_holds_under_concurrent_threads():
    rate, burst, duration = 40, 4, 1.0
    times = send_in_threads(key=unique_key(), rate=rate, burst=burst, threads=4, duration=duration)
    assert_rate_respected(times, rate=rate, burst=burst, duration=duration)


@pytest.fixture(scope="module")
def redis_url():
    if str(settings.CELERY_BROKER_URL).startswith("redis://"):
        yield settings.CELERY_BROKER_URL
        return
    if not shutil.which("redis-server"):
        pytest.skip("no Redis broker configured and no redis-server to start")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 5
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=5)


def test_redis_bucket_admits_a_burst_then_asks_to_wait(redis_url):
    key = unique_key()
    with override_settings(CELERY_BROKER_URL=redis_url):
        waits = [ratelimit.acquire(key=key, rate_per_s=10, burst=3) for _ in range(5)]
    assert waits[:3] == [0, 0, 0]
    assert waits[3] == pytest.approx(0.1, abs=0.02)
    assert waits[4] == pytest.approx(0.2, abs=0.02)


def test_redis_bucket_holds_under_concurrent_threads(redis_url):
    rate, burst, duration = 100, 5, 1.0
    with override_settings(CELERY_BROKER_URL=redis_url):
        times = send_in_threads(
            key=unique_key(), rate=rate, burst=burst, threads=6, duration=duration
        )
    assert_rate_respected(times, rate=rate, burst=burst, duration=duration)
