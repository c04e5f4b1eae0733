"""A token bucket shared by every worker process on every machine.

``acquire`` *reserves* tokens and says how long the caller must wait before using them::

    wait = acquire(key=f"preset:{preset.pk}", rate_per_s=preset.rate_limit_per_second)
    if wait:
        time.sleep(wait)   # or give_back(...) the tokens and retry the task later
    backend.send(message)

The bucket refills at ``rate_per_s`` up to ``burst`` tokens (one second's worth by default)
and may go below zero: each reservation queues behind the earlier ones, so callers that
wait what they are told never exceed ``rate × window + burst`` sends in any window. Tokens
reserved and then not used are lost, which only ever sends less. Acquire several tokens at
once (one per message of a chunk) to pay for the shared state once per chunk.

The bucket lives where ``SALVO_RATELIMIT_BACKEND`` says: in Redis (one atomic Lua script,
Redis server time, at ``SALVO_RATELIMIT_REDIS_URL``) or in the database (a
``RateLimitBucket`` row updated under a row lock; on SQLite an IMMEDIATE transaction). Call
it outside a long transaction: on the database the row stays locked until the enclosing
transaction ends.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from django.conf import settings
from django.db import transaction

from .models import RateLimitBucket

__all__ = ["acquire", "give_back"]

# KEYS[1]: bucket; ARGV: rate per second, burst, tokens, expiry margin (s).
# Redis's own clock keeps every machine on one time line; the reply is a string because
# Lua numbers are truncated to integers on the way out.
_REDIS_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'level', 'at')
local level = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
if now > at then
  level = math.min(burst, level + (now - at) * rate)
else
  now = at
end
level = math.min(burst, level - tokens)
redis.call('HSET', KEYS[1], 'level', tostring(level), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil((burst - level) / rate + tonumber(ARGV[4])))
if level >= 0 then
  return '0'
end
return tostring(-level / rate)
"""

_REDIS_KEY_PREFIX = "salvo:ratelimit:"


def _refill(level: float, elapsed: float, *, rate_per_s: float, burst: float) -> float:
    return min(burst, level + max(0.0, elapsed) * rate_per_s)


def _wait_for(level: float, rate_per_s: float) -> float:
    return 0.0 if level >= 0 else -level / rate_per_s


def _check(rate_per_s: float, tokens: int, burst: float | None) -> float:
    if not rate_per_s > 0:
        raise ValueError(f"rate_per_s must be positive, not {rate_per_s!r}.")
    if tokens < 1:
        raise ValueError(f"tokens must be at least 1, not {tokens!r}.")
    burst = max(1.0, rate_per_s) if burst is None else float(burst)
    if burst <= 0:
        raise ValueError(f"burst must be positive, not {burst!r}.")
    return burst


@functools.cache
def _redis_script(url: str) -> Any:
    import redis

    client = redis.Redis.from_url(url)
    return client.register_script(_REDIS_SCRIPT)


def _acquire_redis(*, key: str, rate_per_s: float, tokens: int, burst: float) -> float:
    script = _redis_script(settings.SALVO_RATELIMIT_REDIS_URL)
    reply = script(keys=[_REDIS_KEY_PREFIX + key], args=[rate_per_s, burst, tokens, 60])
    return float(reply)


def _acquire_database(*, key: str, rate_per_s: float, tokens: int, burst: float) -> float:
    with transaction.atomic():
        bucket = RateLimitBucket.objects.select_for_update().filter(key=key).first()
        if bucket is None:
            # A first caller creates the full bucket; ignore_conflicts lets concurrent first
            # callers all pass, and the locked read below then serialises them.
            RateLimitBucket.objects.bulk_create(
                [RateLimitBucket(key=key, level=burst, refilled_at=time.time())],
                ignore_conflicts=True,
            )
            bucket = RateLimitBucket.objects.select_for_update().get(key=key)
        # Read the clock only once the lock is held, so updates are ordered in time.
        now = max(time.time(), bucket.refilled_at)
        level = _refill(bucket.level, now - bucket.refilled_at, rate_per_s=rate_per_s, burst=burst)
        level = min(burst, level - tokens)
        RateLimitBucket.objects.filter(pk=bucket.pk).update(level=level, refilled_at=now)
    return _wait_for(level, rate_per_s)


def _move(*, key: str, rate_per_s: float, tokens: int, burst: float) -> float:
    """Take ``tokens`` from the bucket (give them back when negative); the wait."""
    if settings.SALVO_RATELIMIT_BACKEND == "redis":
        return _acquire_redis(key=key, rate_per_s=rate_per_s, tokens=tokens, burst=burst)
    return _acquire_database(key=key, rate_per_s=rate_per_s, tokens=tokens, burst=burst)


def give_back(*, key: str, rate_per_s: float, tokens: int, burst: float | None = None) -> None:
    """Return ``tokens`` reserved by ``acquire`` and not used (a caller that will come back
    later instead of waiting), so that they are not lost to the callers queued behind."""
    burst = _check(rate_per_s, tokens, burst)
    _move(key=key, rate_per_s=rate_per_s, tokens=-tokens, burst=burst)


def acquire(*, key: str, rate_per_s: float, tokens: int = 1, burst: float | None = None) -> float:
    """Reserve ``tokens`` from the bucket ``key`` and return the seconds to wait before
    using them (0.0 when they may be used now). Never sleeps.

    ``burst`` is the bucket's size: how many tokens may go at once after a quiet spell
    (default: one second's worth, at least 1).
    """
    burst = _check(rate_per_s, tokens, burst)
    return _move(key=key, rate_per_s=rate_per_s, tokens=tokens, burst=burst)
