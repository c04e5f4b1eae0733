"""`config.processes.stop_process`: a child is stopped and reaped whatever it does with
SIGTERM, and a process group is signalled as asked. Real child processes, real signals."""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from config.processes import stop_process
from tests.conftest import wait_until

# Generous: the grace is waited in full only by the tests of a child that ignores SIGTERM.
NEVER_REACHED_S = 60.0
IGNORED_GRACE_S = 1.0


def start(code: str, *args: str, new_session: bool = False) -> subprocess.Popen[str]:
    """A Python child running `code`, once it printed "ready" (its signal handlers set)."""
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    return child


def running(pid: int) -> bool:
    """Whether the process exists and is not a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


SLEEPS = """
    import time
    print("ready", flush=True)
    time.sleep(600)
"""
IGNORES_SIGTERM = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(600)
"""
EXITS_0_ON_SIGTERM = """
    import signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    time.sleep(600)
"""
# Writes argv[1] when it gets SIGTERM, then exits.
MARKS_SIGTERM = """
    import pathlib, signal, sys, time
    def on_sigterm(*_):
        pathlib.Path(sys.argv[1]).write_text("SIGTERM")
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_sigterm)
    print("ready", flush=True)
    time.sleep(600)
"""
# Leads its group and starts MARKS_SIGTERM (argv[3]) in it, to write argv[1]; the leader
# itself does what argv[2] says on SIGTERM: "ignore", or "exit" once the grandchild has
# written its file. Prints the grandchild's pid, then "ready".
GROUP = """
    import os, signal, subprocess, sys, time
    mark, leader_on_sigterm, grandchild_code = sys.argv[1:4]
    grandchild = subprocess.Popen(
        [sys.executable, "-c", grandchild_code, mark], stdout=subprocess.PIPE, text=True
    )
    assert grandchild.stdout.readline() == "ready\\n"
    def exit_once_marked(*_):
        while not os.path.exists(mark):
            time.sleep(0.05)
        grandchild.wait()
        sys.exit(0)
    if leader_on_sigterm == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, exit_once_marked)
    print(grandchild.pid, flush=True)
    print("ready", flush=True)
    time.sleep(600)
"""


def start_group(mark: Path, leader_on_sigterm: str) -> tuple[subprocess.Popen[str], int]:
    leader = subprocess.Popen(
        [
            *(sys.executable, "-c", textwrap.dedent(GROUP)),
            *(str(mark), leader_on_sigterm, textwrap.dedent(MARKS_SIGTERM)),
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert leader.stdout is not None
    grandchild = int(leader.stdout.readline())
    assert leader.stdout.readline() == "ready\n"
    return leader, grandchild


def close(child: subprocess.Popen[str], *, group: bool = False) -> None:
    """Whatever a failed test left behind: the child (and the group it leads), its pipe."""
    if group:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    if child.poll() is None:
        child.kill()
        child.wait()
    if child.stdout:
        child.stdout.close()


def test_a_child_is_stopped_by_sigterm_and_reaped():
    child = start(SLEEPS)
    try:
        assert stop_process(child, grace_s=NEVER_REACHED_S) == -signal.SIGTERM
        assert child.returncode == -signal.SIGTERM
        assert not running(child.pid)
    finally:
        close(child)


def test_the_exit_status_of_a_child_that_exits_on_sigterm_is_returned():
    child = start(EXITS_0_ON_SIGTERM)
    try:
        assert stop_process(child, grace_s=NEVER_REACHED_S) == 0
    finally:
        close(child)


def test_a_child_that_ignores_sigterm_is_killed_once_the_grace_has_passed():
    child = start(IGNORES_SIGTERM)
    try:
        assert stop_process(child, grace_s=IGNORED_GRACE_S) == -signal.SIGKILL
        assert not running(child.pid)
    finally:
        close(child)


def test_a_child_that_has_exited_already_is_only_reaped():
    child = start(EXITS_0_ON_SIGTERM)
    try:
        child.send_signal(signal.SIGTERM)
        wait_until(lambda: child.poll() is not None, message="the child did not exit")
        assert stop_process(child, grace_s=NEVER_REACHED_S) == 0
    finally:
        close(child)


def test_group_sends_sigterm_to_every_process_of_the_group(tmp_path):
    mark = tmp_path / "grandchild-got-sigterm"
    leader, grandchild = start_group(mark, "exit")
    try:
        # The leader exits by itself only once its grandchild has been sent SIGTERM too.
        assert stop_process(leader, grace_s=NEVER_REACHED_S, group=True) == 0
        assert mark.read_text() == "SIGTERM"
        assert not running(grandchild)
    finally:
        close(leader, group=True)


def test_kill_group_sends_sigterm_to_the_leader_alone_and_sigkill_to_the_group(tmp_path):
    mark = tmp_path / "grandchild-got-sigterm"
    leader, grandchild = start_group(mark, "ignore")
    try:
        assert stop_process(leader, grace_s=IGNORED_GRACE_S, kill_group=True) == -signal.SIGKILL
        # SIGKILL reaches the grandchild at once; it is then reaped by whoever adopted it.
        wait_until(lambda: not running(grandchild), message="the grandchild is still running")
        assert not mark.exists()
    finally:
        close(leader, group=True)
