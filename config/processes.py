"""Child processes (a worker, a web server, the sinks, a command) started by this one: the
environment they get, and how they are stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.db import connection


def child_process_env() -> dict[str, str]:
    """The variables that give a child process the database and broker this process uses
    right now (under tests, the test database), in the same run profile.

    The embedded default is the profile that names no server, so its children get their
    SQLite file by SALVO_EMBEDDED_DATABASE and no DATABASE_URL; production children get both
    server URLs, and the secrets from the environment they inherit."""
    db = connection.settings_dict
    var_dir = {"SALVO_VAR_DIR": str(settings.VAR_DIR)}
    if settings.SALVO_EMBEDDED:
        return {**var_dir, "SALVO_EMBEDDED_DATABASE": str(Path(db["NAME"]).resolve())}
    if connection.vendor == "sqlite":
        url = f"sqlite:///{Path(db['NAME']).resolve()}"
    elif connection.vendor == "postgresql":
        credentials = quote(db["USER"] or "", safe="")
        if db["PASSWORD"]:
            credentials += ":" + quote(db["PASSWORD"], safe="")
        host = db["HOST"] or "localhost"
        port = f":{db['PORT']}" if db["PORT"] else ""
        url = f"postgres://{credentials}@{host}{port}/{quote(db['NAME'], safe='')}"
    else:
        raise NotImplementedError(f"no DATABASE_URL for a {connection.vendor} database")
    return {**var_dir, "DATABASE_URL": url, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL}


def stop_process(
    popen: subprocess.Popen[Any], grace_s: float, *, group: bool = False, kill_group: bool = False
) -> int:
    """Stop a child process: SIGTERM, wait up to ``grace_s`` seconds for it to exit by
    itself, then SIGKILL and wait for it. Returns its exit status (negative: the signal that
    ended it, ``-signal.SIGKILL`` when the grace ran out).

    SIGTERM first, so that a child that handles it (a worker's warm shutdown, a server
    closing its sockets) can finish cleanly; SIGKILL after the grace, because a child that
    ignores SIGTERM, or is stuck before it can act on it, must not hang the caller (a test's
    teardown, a benchmark) nor outlive it. Both waits reap the child, so no zombie is left.

    For a child started with ``start_new_session=True`` (it leads its own process group):
    ``group=True`` sends both signals to the whole group, as a deploy or honcho does, so a
    worker's pool processes get them too; ``kill_group=True`` sends SIGTERM to the child
    alone (it stops its own children, e.g. Celery's warm shutdown) and the SIGKILL to the
    whole group, since a killed parent can no longer stop its children.
    """

    def send(signum: int, *, to_group: bool) -> None:
        if to_group:
            # The group is gone once its last process has exited: nothing left to signal.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signum)
        else:
            popen.send_signal(signum)  # a no-op once the child has been reaped

    send(signal.SIGTERM, to_group=group)
    try:
        return popen.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL, to_group=group or kill_group)
        return popen.wait()
