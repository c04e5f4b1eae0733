"""Health endpoints for load balancers and orchestrators, answered by a middleware placed
first so that a probe costs no session, no user and no template, and passes whatever host
name the probe sends (a load balancer names the machine's address, not a host in
DJANGO_ALLOWED_HOSTS) over plain HTTP (no redirect to HTTPS).

* ``GET /healthz`` — liveness: this process is up and answering. Touches nothing else, so a
  database outage never makes an orchestrator restart every web process.
* ``GET /readyz`` — readiness: the database answers, the broker accepts a connection within
  SALVO_READYZ_BROKER_TIMEOUT_S, and no migration is left unapplied. 200 when all hold, else
  503 naming each check that failed; the why goes to the log, not to the (public) body.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse, JsonResponse
from kombu import Connection

logger = logging.getLogger(__name__)

HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
OK = "ok"

# Set once every migration this code knows was found applied: the code of a running process
# does not change, and a deployment migrates forwards, so later probes skip loading the
# migration graph (the one costly check).
_migrations_applied = False


def database_check() -> str:
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return OK


def broker_check() -> str:
    transport = settings.EMBEDDED_BROKER_TRANSPORT if settings.BROKER_IS_FILESYSTEM else None
    with Connection(
        settings.CELERY_BROKER_URL,
        transport=transport,
        transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS,
        connect_timeout=settings.SALVO_READYZ_BROKER_TIMEOUT_S,
    ) as broker:
        broker.ensure_connection(max_retries=1, timeout=settings.SALVO_READYZ_BROKER_TIMEOUT_S)
    return OK


def migrations_check() -> str:
    global _migrations_applied
    if not _migrations_applied:
        executor = MigrationExecutor(connection)
        unapplied = executor.migration_plan(executor.loader.graph.leaf_nodes())
        if unapplied:
            return f"{len(unapplied)} unapplied"
        _migrations_applied = True
    return OK


READINESS_CHECKS: dict[str, Callable[[], str]] = {
    "database": database_check,
    "broker": broker_check,
    "migrations": migrations_check,
}


def readiness() -> dict[str, str]:
    """Each check's outcome: "ok", or what is wrong in words safe to show anyone."""
    results: dict[str, str] = {}
    for name, check in READINESS_CHECKS.items():
        if name == "migrations" and results["database"] != OK:
            results[name] = "not checked: no database"
            continue
        try:
            results[name] = check()
        except Exception as error:
            # One line per failed probe, no traceback: a load balancer asks every few seconds.
            logger.warning("readiness check %s failed: %s: %s", name, type(error).__name__, error)
            results[name] = "unreachable"
    return results


def healthz() -> JsonResponse:
    return JsonResponse({"status": OK})


def readyz() -> JsonResponse:
    checks = readiness()
    failed = [name for name, outcome in checks.items() if outcome != OK]
    body = {"status": "unavailable" if failed else "ready", "failed": failed, "checks": checks}
    return JsonResponse(body, status=503 if failed else 200)


PROBES: dict[str, Callable[[], JsonResponse]] = {HEALTHZ_PATH: healthz, READYZ_PATH: readyz}


class HealthCheckMiddleware:
    """Answers GET/HEAD /healthz and /readyz before any other middleware sees the request."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = PROBES.get(request.path_info)
        if probe is None or request.method not in ("GET", "HEAD"):
            return self.get_response(request)
        response = probe()
        response["Cache-Control"] = "no-store"
        return response
