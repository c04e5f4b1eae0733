"""Prometheus metrics: ``/metrics`` for the operator, and what the worker records for it.

Read at each scrape, from the sources that already hold the facts (nothing is counted twice):

* ``salvo_deliveries{channel, status}``: deliveries of every execution, from the engine's
  counters table (``DeliveryCount``, a handful of rows), never by counting delivery rows;
* ``salvo_executions_in_progress``: executions still running;
* ``salvo_queue_depth{queue}``: task messages waiting in each queue (Redis ``LLEN``; the
  embedded broker's message files);
* ``salvo_scheduler_lag_seconds``: now minus the end of the scheduler's last tick, which the
  worker that ran it stores where every machine sees it (a Redis key beside the broker's
  queues; a file in the var folder for the embedded broker, which is one machine anyway).
  Two schedulers both write it: the newest tick wins, which is what lag means;
* ``salvo_delivery_batch_duration_seconds``: a histogram of delivery batch task durations,
  recorded in the worker's pool processes (``task_prerun``/``task_postrun``, wired in
  ``config.celery``) in prometheus-client's multiprocess mode: each process writes its own
  file in ``SALVO_METRICS_DIR``, and a reader sums them. ``/metrics`` includes them when web
  shares that folder with the worker (``make run``); elsewhere each worker machine serves
  its own on ``SALVO_WORKER_METRICS_PORT`` (``worker_metrics_serve``), scraped like web.

Only addresses in ``SALVO_METRICS_ALLOWED_IPS`` (loopback by default), or a request bearing
``Authorization: Bearer <SALVO_METRICS_TOKEN>`` when a token is set, may read ``/metrics``;
anyone else gets 403.
"""

from __future__ import annotations

import functools
import hmac
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import Sum
from django.http import HttpRequest, HttpResponse

# Multiprocess mode is chosen by this variable, read when a metric is created: set it first
# (from the setting, never inherited from a parent process with another folder).
os.environ["PROMETHEUS_MULTIPROC_DIR"] = settings.SALVO_METRICS_DIR
Path(settings.SALVO_METRICS_DIR).mkdir(parents=True, exist_ok=True)

from prometheus_client import (  # noqa: E402
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily  # noqa: E402
from prometheus_client.registry import Collector  # noqa: E402

SCHEDULER_TICK_TASK = "campaigns.tasks.scheduler_tick"
DELIVERY_BATCH_TASK = "campaigns.tasks.delivery_batch_task"
SCHEDULER_LAST_TICK_KEY = "salvo:scheduler:last-tick"

BATCH_DURATION = Histogram(
    "salvo_delivery_batch_duration_seconds",
    "How long a delivery batch task ran, in the worker.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    registry=None,  # read from the multiprocess folder, never from this process's registry
)

_batch_started_at: dict[str, float] = {}


# --- recorded in the worker ---------------------------------------------------------------


def task_started(sender: Any = None, task_id: str = "", **_: object) -> None:
    """``task_prerun``: a delivery batch's clock starts."""
    if getattr(sender, "name", None) == DELIVERY_BATCH_TASK:
        _batch_started_at[task_id] = time.monotonic()


def task_finished(sender: Any = None, task_id: str = "", state: str = "", **_: object) -> None:
    """``task_postrun``: a delivery batch's duration is observed; a tick that succeeded
    records when it ended."""
    name = getattr(sender, "name", None)
    started = _batch_started_at.pop(task_id, None)
    if name == DELIVERY_BATCH_TASK and started is not None:
        BATCH_DURATION.observe(time.monotonic() - started)
    elif name == SCHEDULER_TICK_TASK and state == "SUCCESS":
        scheduler_tick_record(at=time.time())


def worker_metrics_serve(**_: object) -> None:
    """``worker_init``, in the worker's main process: serve this machine's worker metrics
    (the multiprocess folder) on SALVO_WORKER_METRICS_PORT, when set."""
    if settings.SALVO_WORKER_METRICS_PORT:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=settings.SALVO_METRICS_DIR)
        start_http_server(
            settings.SALVO_WORKER_METRICS_PORT,
            addr=settings.SALVO_WORKER_METRICS_ADDRESS,
            registry=registry,
        )


# --- the scheduler's last tick -------------------------------------------------------------


def _redis() -> Any:
    return _redis_client(settings.CELERY_BROKER_URL)


@functools.cache
def _redis_client(url: str) -> Any:
    """One client (and connection pool) per URL for the process, as the rate limiter keeps
    its own: a tick record or a scrape reuses a connection instead of opening one."""
    import redis

    return redis.Redis.from_url(url)


def _last_tick_file() -> Path:
    return Path(settings.VAR_DIR) / "scheduler-last-tick"


def _broker_is_redis() -> bool:
    return str(settings.CELERY_BROKER_URL).startswith(("redis://", "rediss://"))


def scheduler_tick_record(*, at: float) -> None:
    """Store when a scheduler tick ended, where every machine of the deployment reads it."""
    if _broker_is_redis():
        _redis().set(SCHEDULER_LAST_TICK_KEY, repr(at))
    else:
        staged = _last_tick_file().with_suffix(f".{os.getpid()}")
        staged.write_text(repr(at))
        os.replace(staged, _last_tick_file())  # a reader sees the old time or the new one


def scheduler_last_tick() -> float | None:
    """When the last scheduler tick ended (a Unix time), or None if none ran yet."""
    if _broker_is_redis():
        value = _redis().get(SCHEDULER_LAST_TICK_KEY)
        return float(value) if value is not None else None
    try:
        return float(_last_tick_file().read_text())
    except (FileNotFoundError, ValueError):
        return None


# --- read at each scrape -------------------------------------------------------------------


def queue_depths() -> dict[str, int]:
    """Task messages waiting in each of Salvo's queues (taken ones not counted)."""
    if settings.BROKER_IS_FILESYSTEM:
        from config.broker import _queue_of

        names = os.listdir(str(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]))
        return {
            queue: sum(1 for n in names if _queue_of(n) == queue) for queue in settings.SALVO_QUEUES
        }
    from config.celery import app

    with app.connection_for_read() as connection:
        channel: Any = connection.default_channel
        depths = {}
        for queue in settings.SALVO_QUEUES:
            try:
                depths[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
            except connection.channel_errors:  # Redis keeps no empty queue
                depths[queue] = 0
        return depths


class SalvoCollector(Collector):
    """The families read from the database and the broker at each scrape."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from campaigns.choices import ExecutionStatus
        from campaigns.models import DeliveryCount, Execution

        deliveries = GaugeMetricFamily(
            "salvo_deliveries",
            "Deliveries of every execution by channel and status (the engine's counters).",
            labels=["channel", "status"],
        )
        rows = (
            DeliveryCount.objects.values("action__channel", "status")
            .annotate(total=Sum("count"))
            .order_by("action__channel", "status")
        )
        for row in rows:
            deliveries.add_metric([row["action__channel"], row["status"]], row["total"])
        yield deliveries

        yield GaugeMetricFamily(
            "salvo_executions_in_progress",
            "Executions still running (delivering or planning).",
            value=Execution.objects.filter(status=ExecutionStatus.RUNNING).count(),
        )

        depth = GaugeMetricFamily(
            "salvo_queue_depth", "Task messages waiting in each queue.", labels=["queue"]
        )
        for queue, waiting in queue_depths().items():
            depth.add_metric([queue], waiting)
        yield depth

        last_tick = scheduler_last_tick()
        if last_tick is not None:
            yield GaugeMetricFamily(
                "salvo_scheduler_lag_seconds",
                "Seconds since the scheduler's last tick ended.",
                value=max(0.0, time.time() - last_tick),
            )


def _allowed(request: HttpRequest) -> bool:
    token = settings.SALVO_METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if hmac.compare_digest(given.encode(), token.encode()):
            return True
    return request.META.get("REMOTE_ADDR") in settings.SALVO_METRICS_ALLOWED_IPS


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``/metrics`` in Prometheus's text format; 403 to anyone not allowed."""
    if not _allowed(request):
        return HttpResponse(
            "Metrics are not available to this address.\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    registry = CollectorRegistry()
    registry.register(SalvoCollector())
    multiprocess.MultiProcessCollector(registry, path=settings.SALVO_METRICS_DIR)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
