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

* in each pool process, a SIGTERM while a task runs asks that task to stop; with no task
  running, or at a second SIGTERM (Celery's cold shutdown), it does what it always did
  (billiard's handler: the process exits). A SIGINT reaches a pool process only when its
  worker stops (Ctrl-C reaches the whole group; the main process passes the word on), so it
  asks every task from then on to stop at once: the task the worker's last poll of the
  broker hands it goes straight back to the queue. billiard sets its own handlers after
  ``worker_process_init``, so ours go in when the pool process starts its first task
  (``task_prerun``), wrapping billiard's;
* in the main process (``worker_shutting_down``: SIGTERM to it alone, or Ctrl-C) the pool
  processes are told with SIGINT, and the flag is raised for the solo and threads pools;
* a SIGTERM's request ends with its task (``task_postrun``), so that a pool process sent a
  stray SIGTERM goes on taking tasks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType
from typing import Any

_worker_stopping = threading.Event()  # every task from now on
_task_stop = threading.Event()  # the task running now
_in_pool_process = False
_handlers_installed_in = 0  # the pid whose signal handlers are ours
_previous_handlers: dict[int, Any] = {}
_task_running = False
_terms_received = 0


def stop_requested() -> bool:
    """Whether the worker is stopping: the running task should finish what it is sending,
    put the rest of its work back in the queue, and return."""
    return _worker_stopping.is_set() or _task_stop.is_set()


def request_stop() -> None:
    """The worker is stopping: every task from now on should stop as soon as it cleanly can."""
    _worker_stopping.set()


def mark_pool_process(**_: object) -> None:
    """``worker_process_init``: this process is one of a prefork pool's."""
    global _in_pool_process
    _in_pool_process = True


def task_started(**_: object) -> None:
    global _task_running
    if _in_pool_process and _handlers_installed_in != os.getpid():
        _install_handlers()
    _task_running = True


def task_finished(**_: object) -> None:
    global _task_running
    _task_running = False
    _task_stop.clear()


def _install_handlers() -> None:
    global _handlers_installed_in
    for signum in (signal.SIGTERM, signal.SIGINT):
        _previous_handlers[signum] = signal.signal(signum, _on_stop_signal)
    _handlers_installed_in = os.getpid()


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    global _terms_received
    if signum == signal.SIGINT:
        request_stop()
        return
    _terms_received += 1
    if _task_running and _terms_received == 1:
        _task_stop.set()
        return
    # No task to finish, or asked twice: what the pool process always did.
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def tell_pool_processes(**_: object) -> None:
    """In the worker's main process, as its warm shutdown starts: ask the tasks running here
    (solo and threads pools) and in every pool process to stop cleanly."""
    from billiard.process import active_children

    request_stop()
    for child in active_children():
        if child.pid:
            with contextlib.suppress(ProcessLookupError):  # it has just exited
                os.kill(child.pid, signal.SIGINT)
