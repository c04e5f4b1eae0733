"""The production profile's plumbing: `make services`' variables and the URL that points
real worker processes at the test database."""

import json
import os
import subprocess
import sys
from pathlib import Path

import environ
import pytest
from django.conf import settings
from django.db import connection

from config.processes import child_process_env
from tests.conftest import BASE_DIR
from tests.settings_loader import load_settings


def _exports(env: dict[str, str]) -> dict[str, str]:
    output = subprocess.run(
        ["bash", str(BASE_DIR / "scripts" / "services.sh"), "env"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    exports = {}
    for line in output.splitlines():
        assert line.startswith("export "), line
        name, _, value = line.removeprefix("export ").partition("=")
        exports[name] = value
    return exports


def test_services_env_points_the_settings_at_postgres_and_redis(tmp_path):
    env = {
        "SALVO_PG_PORT": "55999",
        "SALVO_REDIS_PORT": "56999",
        "SALVO_SERVICES_DIR": str(tmp_path),
    }
    exports = _exports(env)

    assert {"DATABASE_URL", "CELERY_BROKER_URL"} <= set(exports)
    database = environ.Env.db_url_config(exports["DATABASE_URL"])
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert (database["HOST"], database["PORT"]) == ("127.0.0.1", 55999)
    assert database["NAME"] == "salvo"
    assert exports["CELERY_BROKER_URL"] == "redis://127.0.0.1:56999/0"


def test_services_env_is_a_production_profile_that_starts_over_plain_http(tmp_path):
    exports = _exports({"SALVO_SERVICES_DIR": str(tmp_path)})

    production = load_settings(exports, tmp_path)

    assert (production["SALVO_EMBEDDED"], production["DEBUG"]) == (False, False)
    assert production["SECURE_SSL_REDIRECT"] is False
    # Made once: every shell that evaluates the variables signs with the same keys.
    assert _exports({"SALVO_SERVICES_DIR": str(tmp_path)}) == exports
    assert production["SALVO_UNSUBSCRIBE_SECRET"] == exports["SALVO_UNSUBSCRIBE_SECRET"]
    assert len(exports["SALVO_UNSUBSCRIBE_SECRET"]) >= 50


@pytest.mark.django_db
def test_child_processes_get_the_test_database_in_the_same_profile():
    show = (
        "import json, django; from django.conf import settings; django.setup(); "
        "from django.db import connection; "
        "print(json.dumps([settings.SALVO_EMBEDDED, connection.vendor, "
        "str(connection.settings_dict['NAME'])]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", show],
        cwd=BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **child_process_env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    embedded, vendor, name = json.loads(done.stdout)

    assert embedded == settings.SALVO_EMBEDDED
    assert vendor == connection.vendor
    if connection.vendor == "sqlite":
        assert Path(name) == Path(connection.settings_dict["NAME"]).resolve()
        assert Path(name).name.startswith("test-")
    else:
        assert name == connection.settings_dict["NAME"]
        assert name.startswith("test_")
