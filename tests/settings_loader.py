"""The settings as a fresh process started with a given environment loads them, for the
tests of the run profiles and of each setting's refusals.

Each load runs a new interpreter whose environment holds only what the case sets (not the
test run's own), as a web or worker process would start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import BASE_DIR

# Settings only name the servers; nothing here connects to them.
PRODUCTION_URLS = {
    "DATABASE_URL": "postgres://salvo:salvo@127.0.0.1:1/salvo",
    "CELERY_BROKER_URL": "redis://127.0.0.1:1/0",
}
# What the README's production section lists as required, with values of a real deployment.
PRODUCTION_REQUIRED = {
    "DJANGO_SECRET_KEY": "k7Qw-2vX9pLr_4ZtYc8NbMf3JhGd6SaEu1RoTiWq5KyVx0BnC2mZ",
    "SALVO_WEBHOOK_SECRET": "wH3bQ9zLmT2xVc7RkN5pJd8FsGa4YeUo",
    "SALVO_UNSUBSCRIBE_SECRET": "uN6tRz2QmW8cXv4LpK9bHj3DfSg7YaEo",
    "DJANGO_ALLOWED_HOSTS": "salvo.example.com",
}

# Reading a setting imports the settings module, as the first thing any Django process does
# (django.setup() would then import every app as well: a second per case, for nothing the
# settings decide).
SHOW_SETTINGS = """
import json
from django.conf import settings
print(json.dumps({
    name: getattr(settings, name, None)
    for name in ("SALVO_EMBEDDED", "DEBUG", "SECRET_KEY", "SALVO_WEBHOOK_SECRET",
                 "SALVO_UNSUBSCRIBE_SECRET", "ALLOWED_HOSTS", "SECURE_SSL_REDIRECT",
                 "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_PROXY_SSL_HEADER",
                 "SALVO_RATELIMIT_BACKEND", "SALVO_RATELIMIT_REDIS_URL")
}))
"""


def run_python(args: list[str], env: dict[str, str], var_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=BASE_DIR,
        env={
            "PATH": os.environ["PATH"],
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "SALVO_VAR_DIR": str(var_dir),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def load_settings(env: dict[str, str], var_dir: Path) -> dict:
    done = run_python(["-c", SHOW_SETTINGS], env, var_dir)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def refusal(env: dict[str, str], var_dir: Path) -> str:
    """The one line a process that refuses to start ends its error with."""
    done = run_python(["-c", SHOW_SETTINGS], env, var_dir)
    assert done.returncode != 0, f"started with {sorted(env)}: {done.stdout}"
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("django.core.exceptions.ImproperlyConfigured: "), done.stderr
    return last
