"""Fixtures shared by every test: API clients, users with permissions, a signed-in admin
page in headless Chromium, and real Celery worker and beat processes wired to the test
database and broker."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from django.conf import settings

from config.processes import child_process_env, stop_process

BASE_DIR = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("SALVO_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WORKER_READY_TIMEOUT_S = 60.0

T = TypeVar("T")

# Playwright runs its own event loop in the test thread; Django would otherwise refuse the
# ORM calls that browser tests make beside it. Django reads this at each ORM call.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


# --- polling --------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 20.0,
    interval: float = 0.1,
    message: str = "",
) -> T:
    """Call `predicate` until it returns something truthy, and return that; fail the test
    with `message` (and the last value seen) when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(
                f"{message or 'condition not met'} within {timeout:g}s (last value: {value!r})"
            )
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now (for a server a test starts,
    or, once the probe is closed, for a connection that must be refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- speed ------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    """Hash the test users' passwords with a fast hasher, as Django's testing guide advises:
    the production one costs 0.4 s a user by design, which the suite's thousand users would
    spend over and over. Users are made in this process and logged in here (the test
    client, pytest-django's live server), never by a server in a process of its own, which
    would not know this hasher; the production settings keep theirs."""
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        *settings.PASSWORD_HASHERS,
    ]


# --- markers --------------------------------------------------------------------------

# `make test-fast` (what CI runs on the Pythons other than the newest) leaves out the tests
# marked `worker` or `browser`: a test that starts worker processes or Chromium through
# these fixtures carries its marker whether or not it says so.
MARKER_OF_FIXTURE = {"celery_process_factory": "worker", "admin_page": "browser"}


# First, so that `-m` deselects on the markers added here.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    on_sqlite = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
    skip_postgres = pytest.mark.skip(
        reason="needs PostgreSQL: run with DATABASE_URL from `make services`"
    )
    skip_browser = pytest.mark.skip(
        reason=f"needs Chromium at {CHROMIUM} (`apt-get install chromium`; make test does it)"
    )
    for item in items:
        for fixture, marker in MARKER_OF_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()) and not item.get_closest_marker(marker):
                item.add_marker(marker)
        if on_sqlite and item.get_closest_marker("postgres"):
            item.add_marker(skip_postgres)
        if item.get_closest_marker("browser") and not CHROMIUM.exists():
            item.add_marker(skip_browser)
    _keep_one_side_of_a_folder(config, items)


def _keep_one_side_of_a_folder(config: pytest.Config, items: list[pytest.Item]) -> None:
    """SALVO_TEST_UNDER=tests/campaigns keeps the tests under that folder, and
    "!tests/campaigns" the others: how scripts/test-suite.sh splits the tests that keep the
    CPU busy into two processes, whatever paths and arguments the run was given."""
    under = os.environ.get("SALVO_TEST_UNDER", "")
    if not under:
        return
    keep_inside = not under.startswith("!")
    folder = (Path(config.rootpath) / under.lstrip("!")).resolve()
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        (kept if item.path.is_relative_to(folder) == keep_inside else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # Keep each phase's report on the item so that fixtures know, at teardown, whether the
    # test failed (and then print the logs of the processes they started).
    report = yield
    setattr(item, f"salvo_report_{report.when}", report)
    return report


def _test_failed(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(getattr(request.node, f"salvo_report_{when}", None), "failed", False)
        for when in ("setup", "call")
    )


# --- static files ------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _static_files_from_the_apps() -> Iterator[None]:
    """Pages rendered in tests name static files by their plain names, served from the apps'
    folders (the live server's static handler), as no `collectstatic` ran for the manifest
    of hashed names that the real storage reads. Tests of the web server itself run
    gunicorn on the real storage after collectstatic (tests/test_web_server.py)."""
    from django.test import override_settings

    plain = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
    with override_settings(STORAGES={**settings.STORAGES, "staticfiles": plain}):
        yield


# --- a test database per pytest process --------------------------------------------------


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """`make test-suite` runs two pytest processes at once (scripts/test-suite.sh): the one
    it gives SALVO_TEST_DATABASE_SUFFIX creates and drops a test database of its own on a
    database server (`test_salvo_processes`, not `test_salvo`), as pytest-xdist's workers do.
    On SQLite each process's SALVO_VAR_DIR already holds its own test database file."""
    suffix = os.environ.get("SALVO_TEST_DATABASE_SUFFIX", "")
    if not suffix:
        return
    for database in settings.DATABASES.values():
        if database["ENGINE"] == "django.db.backends.sqlite3":
            continue
        test = database.setdefault("TEST", {})
        test["NAME"] = f"{test.get('NAME') or 'test_' + database['NAME']}_{suffix}"


# --- users and API clients --------------------------------------------------------------


@pytest.fixture
def user_with_perms(db: None) -> Callable[..., Any]:
    """Factory: `user_with_perms("campaigns.activate_campaign", …)` → a staff user (not a
    superuser) holding exactly those permissions; its password is "password"."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    counter = {"n": 0}

    def make(*perms: str, username: str = "") -> Any:
        counter["n"] += 1
        user = get_user_model().objects.create_user(
            username=username or f"staff{counter['n']}",
            email=f"staff{counter['n']}@example.com",
            password="password",
            is_staff=True,
        )
        for perm in perms:
            app_label, _, codename = perm.partition(".")
            user.user_permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )
        # A fresh instance: the one above caches the permissions it had before.
        return get_user_model().objects.get(pk=user.pk)

    return make


@pytest.fixture
def api_client_for(db: None) -> Callable[[Any], Any]:
    """Factory: an APIClient authenticated with a DRF token for the given user."""
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    def make(user: Any) -> APIClient:
        token, _ = Token.objects.get_or_create(user=user)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        client.user = user  # type: ignore[attr-defined]
        return client

    return make


@pytest.fixture
def api_client(admin_user: Any, api_client_for: Callable[[Any], Any]) -> Any:
    """An APIClient authenticated by token as a superuser (`api_client.user`)."""
    return api_client_for(admin_user)


# --- the admin in a real browser ---------------------------------------------------------


class SharedChromium:
    """One headless Chromium for every browser test of the session, launched again if it
    went away (a crash): each test gets a context of its own (cookies, storage, pages), so
    sharing the process isolates tests as well as a launch per test did, and saves one."""

    def __init__(self, playwright: Any) -> None:
        self._playwright = playwright
        self._browser: Any = None

    def new_context(self, **options: Any) -> Any:
        if self._browser is None or not self._browser.is_connected():
            self._browser = self._playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
        return self._browser.new_context(**options)

    def close(self) -> None:
        if self._browser is not None and self._browser.is_connected():
            self._browser.close()


@pytest.fixture(scope="session")
def chromium() -> Iterator[SharedChromium]:
    """The session's headless Chromium (tests marked `browser`): `chromium.new_context()`."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        shared = SharedChromium(playwright)
        try:
            yield shared
        finally:
            shared.close()


@pytest.fixture
def admin_page(
    live_server: Any, admin_user: Any, chromium: SharedChromium, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """The admin's campaign list, signed in as `admin_user`, in headless Chromium (tests
    marked `browser`). Every page it loads is checked with axe-core, and the test fails on
    a serious or critical accessibility violation (tests/accessibility.py)."""
    from tests.accessibility import AxeCheckedPage

    context = chromium.new_context(viewport={"width": 1360, "height": 900})
    try:
        page = AxeCheckedPage(context.new_page())
        page.set_default_timeout(15_000)
        page.goto(f"{live_server.url}/admin/login/?next=/admin/campaigns/campaign/")
        page.fill("#id_username", admin_user.username)
        page.fill("#id_password", "password")
        page.click("input[type=submit]")
        page.wait_for_url(re.compile(r"/admin/campaigns/campaign/$"))
        yield page
        if not _test_failed(request):
            page.finish()
    finally:
        context.close()


# --- real Celery processes ------------------------------------------------------------


def _purge_broker() -> None:
    """Drop messages left in the broker by earlier tests (they name rows that are gone)."""
    from config.celery import app

    with app.connection_for_write() as conn:
        for queue in settings.SALVO_QUEUES:
            conn.default_channel.queue_purge(queue)  # type: ignore[attr-defined]


def _broker_queue_size() -> int:
    """Messages waiting in the broker's queues (not yet taken by a worker)."""
    from config.metrics import queue_depths

    return sum(queue_depths().values())


# "Task campaigns.tasks.x[<id>] received" / "… succeeded in" / "… raised" / "… retry:".
_TASK_LINE = re.compile(r"Task \S+\[([0-9a-f-]+)\] (received|succeeded|raised|retry)")


def wait_for_workers_idle(workers: list[CeleryProcess], timeout: float = 60.0) -> None:
    """Wait until the broker's queue is empty and every task each worker took has ended
    (its log says so), twice in a row."""

    def idle() -> bool:
        if _broker_queue_size():
            return False
        for worker in workers:
            taken: set[str] = set()
            ended: set[str] = set()
            for task_id, event in _TASK_LINE.findall(worker.log()):
                (taken if event == "received" else ended).add(task_id)
            if taken - ended:
                return False
        return True

    wait_until(lambda: idle() and idle(), timeout=timeout, interval=0.2, message="workers busy")


@dataclass
class CeleryProcess:
    """A real `celery -A config …` process started by a test."""

    kind: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    _log_file: Any = field(default=None, repr=False)

    def start(self) -> CeleryProcess:
        self._log_file = self.log_path.open("ab")
        command = [sys.executable, "-m", "celery", "-A", "config", self.kind, *self.args]
        self.popen = subprocess.Popen(
            command,
            cwd=BASE_DIR,
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            # Its own process group, so that kill() reaches the pool's children too.
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def is_running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_for_log(self, text: str, timeout: float = WORKER_READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if not self.is_running():
                pytest.fail(f"celery {self.kind} exited before “{text}”:\n{self.log()}")
            if time.monotonic() >= deadline:
                pytest.fail(f"celery {self.kind} not ready after {timeout:g}s:\n{self.log()}")
            time.sleep(0.1)

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the process and its pool children at once: a crash, no warm shutdown."""
        if self.popen is None:
            return
        self._signal_group(signal.SIGKILL)
        self.popen.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self, *, group: bool = True, timeout: float = 90.0) -> int:
        """A graceful stop, as a deploy or Ctrl-C does it: SIGTERM to the whole process group
        (what honcho, supervisord's stopasgroup and systemd send), or with `group=False` to
        the main process only. Waits for the process to exit by itself and returns its exit
        status; fails the test if it has not exited within `timeout` seconds."""
        assert self.popen is not None
        if group:
            self._signal_group(signal.SIGTERM)
        else:
            self.popen.send_signal(signal.SIGTERM)
        try:
            status = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"celery {self.kind} still running {timeout:g}s after SIGTERM")
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return status

    def terminate(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM: running tasks finish), then SIGKILL whatever is left.

        Slow on the filesystem transport (~6 s), whose consumer loop notices late."""
        if self.popen is not None:
            stop_process(self.popen, grace_s=timeout, kill_group=True)
        self.kill()  # what is left of the group once the main process exited, and the log


@pytest.fixture
def celery_process_factory(
    transactional_db: None, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., CeleryProcess]]:
    """Factory: `start("worker")` / `start("beat")` → a running CeleryProcess on the test
    database and broker. Every process it started is stopped at teardown; when the test
    failed, their logs are printed."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        **child_process_env(),
        "PYTHONUNBUFFERED": "1",
    }
    _purge_broker()
    started: list[CeleryProcess] = []

    def start(kind: str, *args: str, extra_env: dict[str, str] | None = None) -> CeleryProcess:
        n = sum(1 for p in started if p.kind == kind) + 1
        if kind == "worker":
            args = (
                "--pool",
                "prefork",
                "--concurrency",
                "2",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--hostname",
                f"test{n}-{os.getpid()}@%h",
                "--loglevel",
                "info",
                *args,
            )
            ready = "ready."
        elif kind == "beat":
            args = ("--loglevel", "info", "--schedule", str(tmp_path / f"beat{n}"), *args)
            ready = "beat: Starting..."
        else:
            raise ValueError(f"unknown celery process kind {kind!r}")
        process = CeleryProcess(
            kind=kind,
            args=list(args),
            env={**env, **(extra_env or {})},
            log_path=tmp_path / f"celery-{kind}{n}.log",
        )
        started.append(process)
        process.start().wait_for_log(ready)
        return process

    yield start

    # Tests wait for what they expect, so nothing useful is left running: a kill is as good
    # as a warm shutdown here and saves seconds per test.
    for process in started:
        process.kill()
    if _test_failed(request):
        for process in started:
            print(f"\n----- celery {process.kind} log ({process.log_path}) -----\n{process.log()}")


@pytest.fixture
def celery_worker_process(celery_process_factory: Callable[..., CeleryProcess]) -> CeleryProcess:
    """A real prefork worker (2 processes) on the test database and broker."""
    return celery_process_factory("worker")


@pytest.fixture
def celery_beat_process(celery_process_factory: Callable[..., CeleryProcess]) -> CeleryProcess:
    """A real beat scheduler ticking every 0.5 s (so the scheduler's work shows quickly)."""
    return celery_process_factory("beat", extra_env={"SALVO_SCHEDULER_INTERVAL_S": "0.5"})


# --- Redis for the rate-limit buckets -----------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis server for the rate-limit buckets (SALVO_RATELIMIT_BACKEND=redis): the
    broker's when the broker is Redis, else a throwaway `redis-server` on a free port."""
    if str(settings.CELERY_BROKER_URL).startswith("redis://"):
        yield settings.CELERY_BROKER_URL
        return
    if not shutil.which("redis-server"):
        pytest.skip("no Redis broker configured and no redis-server to start")
    import redis

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no"),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        wait_until(lambda: _answers_ping(client), timeout=10, message="redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(server, grace_s=10)


def _answers_ping(client: Any) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
