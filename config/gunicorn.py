"""gunicorn's settings for Salvo's web process, in `make run` and in production:
`gunicorn -c python:config.gunicorn` (the Procfile's web line, scripts/supervisord.conf).

Workers are processes, each with threads (the gthread worker): a thread waiting on the
database or on a slow client does not hold a whole process. On the embedded default's
SQLite (WAL mode, IMMEDIATE transactions, a 30 s busy timeout: config/settings.py) the
processes read side by side and take turns to write, so two of them with four threads each
serve one machine's admin and API without "database is locked"; on PostgreSQL raise
SALVO_WEB_WORKERS towards twice the machine's cores, keeping workers × threads within the
database's connections (each thread holds one, CONN_MAX_AGE).
"""

import os

from config.logging import JSON_FORMATTER


def _count(name: str, default: int) -> int:
    """A whole number of at least 1 from the environment, or one line saying what is wrong
    (gunicorn would otherwise stop with a traceback)."""
    value = os.environ.get(name, str(default))
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"{name} is {value!r}: give a whole number of at least 1.")
    return int(value)


wsgi_app = "config.wsgi:application"
bind = f"{os.environ.get('SALVO_HOST', '127.0.0.1')}:{os.environ.get('SALVO_PORT', '8000')}"
workers = _count("SALVO_WEB_WORKERS", 2)
worker_class = "gthread"
threads = _count("SALVO_WEB_THREADS", 4)
# A request running longer than this is cut off and its worker restarted; the slowest
# request Salvo serves by design is a segment estimate (SALVO_SEGMENT_ESTIMATE_TIMEOUT_MS).
timeout = _count("SALVO_WEB_TIMEOUT_S", 30)
# On SIGTERM (Ctrl-C on make run, a deploy) requests in flight get this long to finish; the
# process is gone within it, under supervisord's stopwaitsecs and Kubernetes' default grace.
graceful_timeout = 5
# Clients behind a keep-alive load balancer reuse their connection.
keepalive = 5
# One line per request on stdout, with the request's id (config/logging.py) to find its
# application log lines.
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms id=%({x-request-id}o)s "%(a)s"'
errorlog = "-"
# gunicorn's runtime control socket sits at one path per user (~/.gunicorn/gunicorn.ctl):
# two servers on a machine (make run beside the tests) would take it from each other, and
# supervisord or the process manager already controls this one.
control_socket_disable = True

# With SALVO_LOG_FORMAT=json (config/settings.py) gunicorn's lines are JSON too, so that a log
# collector reads one format; an access line carries its request id as a field.
if os.environ.get("SALVO_LOG_FORMAT") == "json":
    logconfig_dict = {
        "root": {"level": "INFO", "handlers": []},
        "formatters": {"json": JSON_FORMATTER},
        "filters": {
            "no_request": {"()": "config.logging.RequestIdFilter"},
            "access_request_id": {"()": "config.logging.AccessRequestIdFilter"},
        },
        "handlers": {
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["access_request_id"],
                "stream": "ext://sys.stdout",
            },
            "error": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["no_request"],
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {
            "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
            "gunicorn.error": {"level": "INFO", "handlers": ["error"], "propagate": False},
        },
    }
