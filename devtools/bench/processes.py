"""The processes a benchmark starts and watches: a Celery worker sending to the sinks, and a
web process streaming a CSV export; their memory sampled from /proc."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from django.conf import settings

from campaigns.models import Campaign
from config.processes import stop_process
from devtools.sinks import RunningSinks

from .data import bench_user
from .errors import BenchmarkError

BASE_DIR = Path(settings.BASE_DIR)


def rss_mb(pid: int) -> float:
    """The resident memory of a process in MB; 0 once it is gone."""
    return _status_mb(pid, "VmRSS:")


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory of a running process in MB (its VmHWM); 0 once it is gone."""
    return _status_mb(pid, "VmHWM:")


def _status_mb(pid: int, field: str) -> float:
    """A memory figure of /proc/PID/status (given in kB) in MB; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def children(pid: int) -> list[int]:
    """The child processes of a process (a worker's pool)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def broker_purge() -> None:
    """Drop the tasks an interrupted earlier run left in the broker's queues."""
    from config.celery import app

    with app.connection_for_write() as conn:
        for queue in settings.SALVO_QUEUES:
            conn.default_channel.queue_purge(queue)  # type: ignore[attr-defined]


def _production_like_env() -> dict[str, str]:
    """This process's environment, with DEBUG off as production runs (no query log kept)."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50),
    }


@contextlib.contextmanager
def running_worker(
    sink: RunningSinks,
    processes: int,
    folder: Path,
    *,
    email_api: bool,
    say: Callable[[str], None],
    esp: str = "",
) -> Iterator[int]:
    """A Celery worker with `processes` pool processes sending every channel to the sink
    (email through the HTTP batch API, over SMTP, or with `esp` through anymail to that
    ESP's emulated API), until the block ends: its pid."""
    log = folder / f"worker-{esp or ('api' if email_api else 'smtp')}.log"
    env = {
        **_production_like_env(),
        **sink.provider_env(email_api=email_api, esp=esp),
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "prefork",
        "--concurrency", str(processes), "--without-gossip", "--without-mingle",
        "--without-heartbeat", "--loglevel", "info", "--hostname", f"bench{os.getpid()}@%h",
    ]  # fmt: skip
    with log.open("ab") as output:
        # A worker of the same kind may have written to this log in an earlier run: only
        # what this one writes says it is ready.
        started_at = output.tell()
        process = subprocess.Popen(
            command, cwd=BASE_DIR, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def written() -> str:
        with log.open("rb") as file:
            file.seek(started_at)
            return file.read().decode(errors="replace")

    try:
        deadline = time.monotonic() + 60
        while "ready." not in written():
            if process.poll() is not None or time.monotonic() > deadline:
                raise BenchmarkError(f"the worker did not start:\n{written()[-3000:]}")
            time.sleep(0.2)
        say(f"worker ready: {processes} processes (pid {process.pid})")
        yield process.pid
    finally:
        stop_process(process, grace_s=20, group=True)


def csv_export_measure(campaign: Campaign, folder: Path) -> tuple[float, float]:
    """Stream the campaign's deliveries as CSV from a web process of its own, as a
    superuser with a token: (rows per second, the process's peak RSS in MB)."""
    from rest_framework.authtoken.models import Token

    token, _ = Token.objects.get_or_create(user=bench_user())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "manage.py", "runserver", "--noreload", "--nothreading",
        f"127.0.0.1:{port}",
    ]  # fmt: skip
    log = folder / f"salvo-bench-web-{os.getpid()}.log"
    with log.open("ab") as output:
        server = subprocess.Popen(
            command, cwd=BASE_DIR, env=_production_like_env(), stdout=output,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    peak = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_mb(server.pid))
            time.sleep(0.05)

    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise BenchmarkError(f"the web process did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/campaigns/{campaign.pk}/deliveries/?format=csv",
            headers={"Authorization": f"Token {token.key}", "Host": "localhost"},
        )
        lines = 0
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=600) as response:
            while block := response.read(1 << 20):
                lines += block.count(b"\n")
        elapsed = time.perf_counter() - started
        done.set()
        sampler.join()
    finally:
        done.set()
        stop_process(server, grace_s=20)
    rows = lines - 1  # the header
    return rows / elapsed, peak
