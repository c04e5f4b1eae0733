"""The web process as it runs in `make run` and in production: gunicorn (config/gunicorn.py)
started from the environment alone, with DEBUG off, serving the admin, the API docs and
their static files (whitenoise, after collectstatic), the health endpoints, request ids in
JSON log lines, and a graceful stop on SIGTERM within 10 s.

The production variant follows the README's recipe on PostgreSQL + Redis behind a TLS proxy
(HTTPS enforced, the proxy's header trusted); the embedded variant serves the SQLite test
database as `make run` does.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

from config.processes import child_process_env, stop_process
from tests.conftest import BASE_DIR, free_port, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.timeout(240)]

GUNICORN = BASE_DIR / ".venv" / "bin" / "gunicorn"
PYTHON = BASE_DIR / ".venv" / "bin" / "python"
# What a TLS-terminating proxy in front of the production profile adds to every request.
VIA_TLS_PROXY = {"X-Forwarded-Proto": "https"}
FOREVER = "max-age=315360000"  # whitenoise's caching of a file whose name carries its hash


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


OPENER = urllib.request.build_opener(NoRedirects)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclass
class WebServer:
    popen: subprocess.Popen[bytes]
    url: str
    log_path: Path
    static_root: Path
    headers: dict[str, str]

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        request = urllib.request.Request(
            self.url + path, headers={**self.headers, **(headers or {})}
        )
        try:
            with OPENER.open(request, timeout=30) as response:
                return Answer(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as error:
            return Answer(error.code, dict(error.headers), error.read())

    def log(self) -> str:
        return self.log_path.read_text()


def _answers(server: WebServer) -> bool:
    try:
        return server.get("/healthz").status == 200
    except OSError:
        return False


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PYTHON), "manage.py", *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def serve(env: dict[str, str], tmp_path: Path, headers: dict[str, str]) -> Iterator[WebServer]:
    """The README's release steps (collectstatic, check --deploy in the production profile),
    then gunicorn as the Procfile starts it, with exactly `env`."""
    port = free_port()
    static_root = tmp_path / "static"
    env = {**env, "SALVO_STATIC_ROOT": str(static_root), "SALVO_PORT": str(port)}
    collected = manage(env, "collectstatic", "--noinput", "-v0")
    assert collected.returncode == 0, collected.stderr
    if "DATABASE_URL" in env:
        checked = manage(env, "check", "--deploy", "--fail-level", "WARNING")
        assert checked.returncode == 0, checked.stderr
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as output:
        popen = subprocess.Popen(
            [str(GUNICORN), "-c", "python:config.gunicorn"],
            cwd=BASE_DIR,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    server = WebServer(popen, f"http://127.0.0.1:{port}", log_path, static_root, headers)
    try:
        wait_until(lambda: _answers(server), timeout=60, message="gunicorn never answered")
        yield server
    finally:
        stop_process(popen, grace_s=30)
        print(f"\n----- gunicorn log -----\n{log_path.read_text()}")


def check_serves_site_static_files_and_probes(server: WebServer) -> None:
    healthz = server.get("/healthz")
    assert (healthz.status, json.loads(healthz.body)) == (200, {"status": "ok"})
    readyz = server.get("/readyz")
    assert readyz.status == 200, readyz.text
    assert json.loads(readyz.body)["status"] == "ready"

    login = server.get("/admin/login/")
    assert login.status == 200
    [css] = re.findall(r'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', login.text)
    stylesheet = server.get(css, {"Accept-Encoding": "gzip"})
    assert stylesheet.status == 200
    assert stylesheet.body
    assert FOREVER in stylesheet.headers["Cache-Control"]
    assert stylesheet.headers["Content-Encoding"] == "gzip"

    docs = server.get("/api/docs/")
    assert docs.status == 200, docs.text
    bundles = re.findall(
        r'src="(/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle\.[0-9a-f]{12}'
        r'\.js)"',
        docs.text,
    )
    assert bundles, docs.text
    bundle = server.get(bundles[0])
    assert bundle.status == 200
    assert bundle.body
    assert "javascript" in bundle.headers["Content-Type"]
    assert FOREVER in bundle.headers["Cache-Control"]

    # The rule builder's script, at its hashed name as the admin's pages name it.
    manifest = json.loads((server.static_root / "staticfiles.json").read_text())
    rule_builder = manifest["paths"]["segments/rule_builder.js"]
    assert server.get(f"/static/{rule_builder}").status == 200


def check_request_ids_in_json_log_lines(server: WebServer) -> None:
    request_id = f"probe-{uuid.uuid4().hex}"
    missing = server.get("/no-such-page/", {"X-Request-ID": request_id})
    assert missing.status == 404
    assert "DEBUG = True" not in missing.text  # Django's plain 404, not its debug page
    assert missing.headers["X-Request-ID"] == request_id

    def logged() -> list[dict[str, object]]:
        # Every line is one JSON object, gunicorn's own lines too: one format to collect.
        records = [json.loads(line) for line in server.log().splitlines()]
        return [record for record in records if record.get("request_id") == request_id]

    def logged_both() -> list[dict[str, object]]:
        records = logged()
        return records if len(records) == 2 else []

    application, access = sorted(
        wait_until(logged_both, timeout=20, message="no JSON log lines with the request id"),
        key=lambda record: str(record["logger"]),
    )
    assert application["logger"] == "django.request"
    assert application["level"] == "WARNING"
    assert application["message"] == "Not Found: /no-such-page/"
    assert access["logger"] == "gunicorn.access"
    assert '"GET /no-such-page/ HTTP/1.1" 404' in str(access["message"])


def check_sigterm_stops_it_gracefully(server: WebServer) -> None:
    server.popen.send_signal(signal.SIGTERM)  # supervisord's stopsignal, a deploy's stop
    assert server.popen.wait(timeout=10) == 0
    assert not re.search(r"\[ERROR\]|\bERROR\b|Traceback", server.log()), server.log()


@pytest.fixture
def embedded_server(transactional_db: None, tmp_path: Path) -> Iterator[WebServer]:
    if not settings.SALVO_EMBEDDED:
        pytest.skip("the embedded default's web process: run on SQLite")
    env = {
        "PATH": "/usr/bin:/bin",
        **child_process_env(),  # the test database and var folder, as make run's own
        "DJANGO_DEBUG": "false",  # what make run sets
        "SALVO_API_DOCS_PUBLIC": "true",
        "SALVO_LOG_FORMAT": "json",
    }
    yield from serve(env, tmp_path, headers={})


@pytest.fixture
def production_server(transactional_db: None, tmp_path: Path) -> Iterator[WebServer]:
    urls = child_process_env()  # the test database on PostgreSQL, the Redis broker
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": urls["DATABASE_URL"],
        "CELERY_BROKER_URL": urls["CELERY_BROKER_URL"],
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "SALVO_WEBHOOK_SECRET": secrets.token_urlsafe(50),
        "SALVO_UNSUBSCRIBE_SECRET": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
        "SALVO_VAR_DIR": str(tmp_path / "var"),
        "SALVO_API_DOCS_PUBLIC": "true",
        "SALVO_LOG_FORMAT": "json",
    }
    yield from serve(env, tmp_path, headers=VIA_TLS_PROXY)


def test_make_runs_web_process_serves_with_debug_off(embedded_server):
    check_serves_site_static_files_and_probes(embedded_server)
    check_request_ids_in_json_log_lines(embedded_server)
    check_sigterm_stops_it_gracefully(embedded_server)


@pytest.mark.postgres
def test_the_production_profile_serves_from_the_environment_alone(production_server):
    check_serves_site_static_files_and_probes(production_server)
    check_request_ids_in_json_log_lines(production_server)

    # Straight to the server, not through the TLS proxy: HTTPS is enforced, except for the
    # load balancer's probes.
    plain = {"X-Forwarded-Proto": "http"}
    redirect = production_server.get("/admin/login/", plain)
    assert redirect.status == 301
    assert redirect.headers["Location"] == production_server.url.replace("http:", "https:") + (
        "/admin/login/"
    )
    assert production_server.get("/healthz", plain).status == 200
    assert production_server.get("/readyz", plain).status == 200
    login = production_server.get("/admin/login/")
    assert "Strict-Transport-Security" in login.headers

    check_sigterm_stops_it_gracefully(production_server)


@pytest.mark.parametrize(
    ("name", "value"), [("SALVO_WEB_WORKERS", "two"), ("SALVO_WEB_THREADS", "0")]
)
def test_a_bad_count_stops_gunicorn_with_one_line_naming_it(tmp_path, name, value):
    started = subprocess.run(
        [str(GUNICORN), "-c", "python:config.gunicorn"],
        cwd=BASE_DIR,
        env={"PATH": "/usr/bin:/bin", "SALVO_VAR_DIR": str(tmp_path), name: value},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert started.returncode != 0
    assert started.stderr.strip().splitlines()[-1] == (
        f"{name} is {value!r}: give a whole number of at least 1."
    )
