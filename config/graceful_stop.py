"""A graceful stop of a Celery worker that never cuts a task short.

Celery's warm shutdown (SIGTERM or Ctrl-C to the worker) waits for the tasks running in its
pool processes, but the pool processes themselves die on SIGTERM, and a deploy, systemd,
honcho or supervisord's ``stopasgroup`` sends SIGTERM to every process of the worker. A
delivery batch killed in the middle of a chunk has sent messages whose rows then stay
pending, and they are sent again after the restart. A batch that runs to its end instead
holds the shutdown for as long as its remaining chunks take.

So a task asks ``stop_requested()`` at the points where it can stop cleanly (the delivery
loop, between chunks), finishes what it is doing, puts the rest of its work back in the
queue and returns; the worker then acknowledges the message and exits. Wired in
``config.celery``:

* the worker's main process raises a flag shared with its pool processes as its warm
  shutdown starts (``worker_shutting_down``: SIGTERM to it, or Ctrl-C); from then on every
  task stops as soon as it cleanly can, including one the worker's last poll of the broker
  hands a pool process, which goes straight back to the queue. The flag is one byte of
  memory mapped before the pool forks, so a pool process reads it without any signal;
* a pool process that gets SIGTERM while a task runs (the signal sent to the whole process
  group) lets that task stop cleanly instead of exiting; with no task running, or at a
  second SIGTERM (Celery's cold shutdown), it exits as it always did. billiard installs its
  own handler after ``worker_process_init``, so ours goes in when the pool process starts
  its first task (``task_prerun``), wrapping billiard's; the request ends with its task
  (``task_postrun``), so a pool process sent a stray SIGTERM goes on taking tasks.

The soft time limit of a task that stops cleanly (``STOPS_CLEANLY_AT_SOFT_LIMIT``: a
delivery batch) asks the same of that task alone: billiard signals the pool
process (SIGUSR1) and, instead of raising ``SoftTimeLimitExceeded`` in the middle of a
chunk, the task finishes the chunk in flight and puts the rest back in the queue. Any
other task gets Celery's exception, as always.

Beat too: Celery's own handler closes the schedule and raises ``SystemExit`` wherever beat
is, often in the middle of sending a task to the broker (a half-read Redis answer, then a
"closed shelf" error and exit status 1). ``beat_init`` replaces it with one that lets the
tick in progress finish: beat then leaves its loop and saves its schedule as usual.
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import threading
from types import FrameType
from typing import Any

# One byte shared by the process that imports this module and every process it forks
# afterwards (anonymous mappings are MAP_SHARED): the worker's pool processes.
_worker_stopping = mmap.mmap(-1, 1)
_task_stop = threading.Event()  # the task running in this process
_in_pool_process = False
_handler_installed_in = 0  # the pid whose SIGTERM handler is ours
_previous_handler: Any = signal.SIG_DFL
_task_running = False
_terms_received = 0
_soft_limit_handler: Any = None  # billiard's SIGUSR1 handler while ours is installed
_soft_limit_reached = False

logger = logging.getLogger(__name__)

#: Tasks that ask ``stop_requested()`` between chunks: their soft time limit stops them there.
STOPS_CLEANLY_AT_SOFT_LIMIT = frozenset({"campaigns.tasks.delivery_batch_task"})


def stop_requested() -> bool:
    """Whether the worker is stopping: the running task should finish what it is sending,
    put the rest of its work back in the queue, and return."""
    return _worker_stopping[0] == 1 or _task_stop.is_set()


def request_stop(**_: object) -> None:
    """``worker_shutting_down``, in the main process: every task, here and in the pool
    processes, should stop as soon as it cleanly can."""
    _worker_stopping[0] = 1


def mark_pool_process(**_: object) -> None:
    """``worker_process_init``: this process is one of a prefork pool's."""
    global _in_pool_process
    _in_pool_process = True


def task_started(sender: Any = None, **_: object) -> None:
    global _task_running, _handler_installed_in, _previous_handler, _soft_limit_handler
    if _in_pool_process and _handler_installed_in != os.getpid():
        _previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)
        _handler_installed_in = os.getpid()
    if _in_pool_process and getattr(sender, "name", None) in STOPS_CLEANLY_AT_SOFT_LIMIT:
        _soft_limit_handler = signal.signal(signal.SIGUSR1, _on_soft_limit)
    _task_running = True


def task_finished(sender: Any = None, **_: object) -> None:
    global _task_running, _soft_limit_handler, _soft_limit_reached
    if _soft_limit_reached:
        logger.warning(
            "%s reached its soft time limit (%g s): it finished the chunk in flight and put "
            "the rest back in the queue.",
            getattr(sender, "name", "A task"),
            getattr(sender, "soft_time_limit", 0) or 0,
        )
        _soft_limit_reached = False
    _task_running = False
    _task_stop.clear()
    if _soft_limit_handler is not None:
        signal.signal(signal.SIGUSR1, _soft_limit_handler)  # billiard's, for the next task
        _soft_limit_handler = None


def _on_soft_limit(signum: int, frame: FrameType | None) -> None:
    # No logging here: the signal may land while this thread holds the logging lock.
    global _soft_limit_reached
    _soft_limit_reached = True
    _task_stop.set()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _terms_received
    _terms_received += 1
    if _task_running and _terms_received == 1:
        _task_stop.set()
        return
    # No task to finish, or asked twice: what the pool process always did.
    if callable(_previous_handler):
        _previous_handler(signum, frame)
    elif _previous_handler == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def let_beat_finish_its_tick(sender: Any, **_: object) -> None:
    """``beat_init``: SIGTERM and SIGINT stop beat after the tick in progress."""

    def stop(signum: int, frame: FrameType | None) -> None:
        sender.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
