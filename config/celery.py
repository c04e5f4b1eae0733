"""The Celery application: settings come from Django's, under the CELERY_ prefix."""

import logging
import os
from typing import Any

from celery import Celery, signals

from config import graceful_stop

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("salvo")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# A graceful stop lets a running task finish cleanly instead of killing it mid-chunk, and
# beat its tick (config/graceful_stop.py). weak=False: module functions, kept anyway.
signals.worker_process_init.connect(graceful_stop.mark_pool_process, weak=False)
signals.worker_shutting_down.connect(graceful_stop.request_stop, weak=False)
signals.task_prerun.connect(graceful_stop.task_started, weak=False)
signals.task_postrun.connect(graceful_stop.task_finished, weak=False)
signals.beat_init.connect(graceful_stop.let_beat_finish_its_tick, weak=False)


def consume_in_salvo_order(sender: str, instance: Any, **kwargs: Any) -> None:
    """Before a worker starts consuming: a worker that consumes the delivery queue consumes
    the first batches' queue too (so a worker started as ``-Q delivery``, as before that
    queue existed, misses no first batch), and its queues are read in Salvo's order
    (settings.SALVO_QUEUES: control, first batches, delivery; any other queue after them)
    whatever order -Q names them in: with the "priority" queue order a delivery backlog
    then never holds up the scheduler's tick or an activation."""
    from django.conf import settings

    queues = instance.app.amqp.queues
    names = list(queues.consume_from)
    if settings.SALVO_DELIVERY_QUEUE in names and settings.SALVO_FIRST_BATCH_QUEUE not in names:
        names.append(settings.SALVO_FIRST_BATCH_QUEUE)
    rank = {name: position for position, name in enumerate(settings.SALVO_QUEUES)}
    queues.select(sorted(names, key=lambda name: rank.get(name, len(rank))))


signals.celeryd_after_setup.connect(consume_in_salvo_order, weak=False)

# Tasks that run every few seconds whatever happens: their lines say nothing new.
ROUTINE_TASKS = frozenset({"campaigns.tasks.scheduler_tick"})


class RoutineTasksAtDebug(logging.Filter):
    """Logs beat's "Sending due task" and the worker's "received"/"succeeded" lines of a
    routine task at DEBUG instead of INFO: they show with ``-l debug`` only, while every
    other task's lines, and a routine task's failure, stay as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not self._is_routine(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)

    @staticmethod
    def _is_routine(record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, dict):  # the worker's lines: a context with the task's name
            return args.get("name") in ROUTINE_TASKS
        return isinstance(args, tuple) and any(arg in ROUTINE_TASKS for arg in args)


# The loggers of beat's sending, the worker's "received", and the "succeeded" trace line.
for _name in ("celery.beat", "celery.worker.strategy", "celery.app.trace"):
    logging.getLogger(_name).addFilter(RoutineTasksAtDebug())


# Prometheus: batch durations and the scheduler's last tick (config/metrics.py), imported
# when a worker runs, not when Django loads this package.
def _metrics_task_started(**kwargs: Any) -> None:
    from config import metrics

    metrics.task_started(**kwargs)


def _metrics_task_finished(**kwargs: Any) -> None:
    from config import metrics

    metrics.task_finished(**kwargs)


def _metrics_worker_init(**kwargs: Any) -> None:
    from config import metrics

    metrics.worker_metrics_serve(**kwargs)


signals.task_prerun.connect(_metrics_task_started, weak=False)
signals.task_postrun.connect(_metrics_task_finished, weak=False)
signals.worker_init.connect(_metrics_worker_init, weak=False)


# A pool process says QUIT to the SMTP connections it kept between batches
# (channels.providers.smtp) before it exits.
def _smtp_sessions_close(**kwargs: Any) -> None:
    from channels.providers.smtp import sessions_close

    sessions_close()


signals.worker_process_shutdown.connect(_smtp_sessions_close, weak=False)
