"""The SMTP sessions a worker process keeps open between batches.

A batch takes a session (``session_take``) and gives it back (``session_give_back``): the
next batch of the process, a second later, sends on the same connection instead of
greeting, encrypting and authenticating again. Sessions are kept per connection settings
and per process: a forked child (a Celery pool process) starts with none, and never
writes on its parent's sockets. Each sending thread takes its own session.

A session idle longer than ``settings.SALVO_SMTP_IDLE_SECONDS`` is closed (QUIT) when the
process next takes one, rather than offered to a batch: servers drop idle clients after a
few minutes, and a long-idle process should not hold a connection. ``sessions_close``
says QUIT to every kept session: at the process's exit and at a Celery pool process's
shutdown (``config.celery``).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from typing import Any

from django.conf import settings
from django.core.mail.backends.smtp import EmailBackend as DjangoSmtpBackend

from .session import SmtpSession, connection_settings

__all__ = ["session_give_back", "session_take", "sessions_close"]

_kept: dict[tuple[Any, ...], list[SmtpSession]] = {}
_lock = threading.Lock()


def session_take() -> SmtpSession:
    """A session on the current settings: the most recently used kept one, or a new
    connection (``smtplib.SMTPException``, ``OSError`` when it cannot be made)."""
    django_backend = DjangoSmtpBackend(fail_silently=False)
    key = (os.getpid(), *connection_settings(django_backend))
    idle_limit = settings.SALVO_SMTP_IDLE_SECONDS
    now = time.monotonic()
    stale: list[SmtpSession] = []
    session = None
    with _lock:
        for kept_key, sessions in list(_kept.items()):
            fresh = [s for s in sessions if kept_key == key and now - s.last_used <= idle_limit]
            stale.extend(s for s in sessions if s not in fresh)
            if fresh:
                _kept[kept_key] = fresh
            else:
                del _kept[kept_key]
        if _kept.get(key):
            session = _kept[key].pop()
    for old in stale:  # settings changed, or idle too long
        old.quit()
    return session or SmtpSession.connect(django_backend, key)


def session_give_back(session: SmtpSession) -> None:
    """Keep the session for the process's next batch (a lost one is let go)."""
    if session.lost or session.pid != os.getpid():
        return
    with _lock:
        _kept.setdefault(session.key, []).append(session)


def sessions_close(**signal_kwargs: Any) -> None:
    """QUIT every session this process keeps (a Celery signal's arguments are ignored)."""
    with _lock:
        sessions = [s for kept in _kept.values() for s in kept]
        _kept.clear()
    for session in sessions:
        if session.pid == os.getpid():
            session.quit()


def _forget_parents_sessions() -> None:
    # A forked child owns none of the sockets it inherited: drop them without a word (QUIT
    # would end the parent's session), and the lock another thread may have held.
    global _lock
    _lock = threading.Lock()
    for sessions in _kept.values():
        for session in sessions:
            session.forget()
    _kept.clear()


os.register_at_fork(after_in_child=_forget_parents_sessions)
atexit.register(sessions_close)
