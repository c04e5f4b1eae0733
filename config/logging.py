"""A request id on every log line: taken from the request's X-Request-ID header when it is
sane (a proxy or load balancer that already named the request), made here otherwise, sent
back on the response, and added to each log record written while the request is served.

The id lives in a context variable, so each thread (gunicorn's gthread workers) or task sees
only its own; the logging filter copies it onto every record that passes the handler, so
lines from Django, DRF and Salvo's own loggers all carry it, in text or JSON
(SALVO_LOG_FORMAT in config/settings.py)."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from contextvars import ContextVar

from django.core.signals import request_finished
from django.http import HttpRequest, HttpResponse

REQUEST_ID_HEADER = "X-Request-ID"
# What an incoming id may be: a UUID, a proxy's hex or base64url id; anything longer or
# with other characters (spaces, newlines that would forge log lines) is replaced.
REQUEST_ID_MAX_LENGTH = 128
SANE_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{REQUEST_ID_MAX_LENGTH}}}")
NO_REQUEST = "-"

current_request_id: ContextVar[str] = ContextVar("current_request_id", default=NO_REQUEST)

# One JSON object per line (SALVO_LOG_FORMAT=json), for the application's lines
# (config/settings.py) and for gunicorn's own (config/gunicorn.py) alike.
JSON_FORMATTER = {
    "()": "pythonjsonlogger.json.JsonFormatter",
    "format": "%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s",
    "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
}


def request_id_of(request: HttpRequest) -> str:
    """The id the request came with when it is sane, else a new one."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    if SANE_REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Names each request (request.request_id), for its log lines and its response."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request_id_of(request)
        request.request_id = request_id  # type: ignore[attr-defined]
        # Kept until the response is closed (forget_request_id), not only while the views
        # run: Django logs a 4xx or 5xx answer ("Not Found: /x") after the middleware.
        current_request_id.set(request_id)
        response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response


def forget_request_id(**kwargs: object) -> None:
    """Once a response is closed, the thread's later lines belong to no request."""
    current_request_id.set(NO_REQUEST)


request_finished.connect(forget_request_id, dispatch_uid="config.logging.forget_request_id")


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record: the id of the request being served, or "-"."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id.get()
        return True


class AccessRequestIdFilter(logging.Filter):
    """Adds `request_id` to gunicorn's access lines, written once the response is gone: the
    X-Request-ID the response carried (gunicorn's "{x-request-id}o" atom)."""

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = record.args if isinstance(record.args, dict) else {}
        record.request_id = atoms.get(f"{{{REQUEST_ID_HEADER.lower()}}}o", NO_REQUEST)
        return True
