"""The stack of `make run` (web, worker, beat under supervisord) with real processes: a
worker that dies is started again while web keeps answering, and Ctrl-C stops everything.

Runs on whichever profile the environment selects, on the test database and broker.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from campaigns.choices import CampaignStatus
from config.processes import child_process_env
from tests.campaigns.factories import activate_acknowledged, make_campaign
from tests.conftest import BASE_DIR, free_port, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.timeout(300)]

SUPERVISORD = BASE_DIR / ".venv" / "bin" / "supervisord"
CONF = BASE_DIR / "scripts" / "supervisord.conf"
# What the issue promises for Ctrl-C on `make run`: every process gone, none SIGKILLed.
CTRL_C_STOPS_WITHIN_S = 10.0


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5)
    except urllib.error.HTTPError:
        return True  # 401 without a token: the server answered
    except OSError:
        return False
    return True


class Stack:
    def __init__(self, popen: subprocess.Popen[bytes], log: Path, url: str) -> None:
        self.popen, self.log, self.url = popen, log, url

    def events(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def pids(self, program: str) -> list[int]:
        return [
            int(pid) for pid in re.findall(rf"spawned: '{program}' with pid (\d+)", self.events())
        ]

    def running(self, program: str) -> int:
        return self.events().count(f"success: {program} entered RUNNING")


@pytest.fixture
def stack(transactional_db: None, tmp_path: Path) -> Iterator[Stack]:
    port = free_port()
    var_dir = Path(settings.VAR_DIR)
    log = var_dir / "supervisord.log"
    log.unlink(missing_ok=True)
    env = {
        **os.environ,
        **child_process_env(),
        "SALVO_HOST": "127.0.0.1",
        "SALVO_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    with (tmp_path / "stack.log").open("wb") as output:
        popen = subprocess.Popen(
            [str(SUPERVISORD), "-c", str(CONF)],
            cwd=BASE_DIR,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = Stack(popen, log, f"http://127.0.0.1:{port}/api/")
    try:
        yield running
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=90)
        for program in ("web", "worker", "beat"):
            for pid in running.pids(program):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()


def test_a_killed_worker_is_started_again_while_web_answers_and_ctrl_c_stops_all(stack):
    wait_until(lambda: _answers(stack.url), timeout=120, message="web never answered")
    for program in ("web", "worker", "beat"):
        wait_until(lambda p=program: stack.running(p), timeout=120, message=f"{program} not up")
    [worker] = stack.pids("worker")

    answers: list[bool] = []
    watching = threading.Event()
    watching.set()

    def watch_web() -> None:
        while watching.is_set():
            answers.append(_answers(stack.url))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch_web)
    watcher.start()
    try:
        os.killpg(worker, signal.SIGKILL)  # the worker and its pool processes: a crash
        wait_until(
            lambda: len(stack.pids("worker")) == 2 and stack.running("worker") == 2,
            timeout=120,
            message="the worker was not started again",
        )
    finally:
        watching.clear()
        watcher.join()
    assert "exited: worker (terminated by SIGKILL; not expected)" in stack.events()
    assert len(answers) > 10
    assert all(answers), "web stopped answering while the worker died"
    assert len(stack.pids("web")) == 1
    assert len(stack.pids("beat")) == 1

    # The new worker does the work: an activation goes through it.
    campaign = make_campaign()
    activate_acknowledged(campaign=campaign)
    wait_until(
        lambda: campaign.transitions.filter(target=CampaignStatus.LIVE).exists(),
        timeout=60,
        message="the restarted worker never activated the campaign",
    )

    stack.popen.send_signal(signal.SIGINT)  # Ctrl-C in the terminal of `make run`
    asked_at = time.monotonic()
    assert stack.popen.wait(timeout=120) == 0
    stopped_in = time.monotonic() - asked_at
    print(f"Ctrl-C stopped the stack in {stopped_in:.1f} s")
    assert stopped_in <= CTRL_C_STOPS_WITHIN_S, f"the stack took {stopped_in:.1f} s to stop"
    events = stack.events()
    for program in ("web", "worker", "beat"):
        assert f"stopped: {program} (exit status 0)" in events
    for pid in (*stack.pids("web"), *stack.pids("worker"), *stack.pids("beat")):
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
