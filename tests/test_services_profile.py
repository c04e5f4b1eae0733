"""The production profile's plumbing: `make services`' variables and the URL that points
real worker processes at the test database."""

import os
import subprocess
from pathlib import Path

import environ
import pytest
from django.db import connection

from tests.conftest import BASE_DIR, _test_database_url


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


def test_services_env_points_the_settings_at_postgres_and_redis():
    exports = _exports({"SALVO_PG_PORT": "55999", "SALVO_REDIS_PORT": "56999"})

    assert set(exports) == {"DATABASE_URL", "CELERY_BROKER_URL"}
    database = environ.Env.db_url_config(exports["DATABASE_URL"])
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert (database["HOST"], database["PORT"]) == ("127.0.0.1", 55999)
    assert database["NAME"] == "salvo"
    assert exports["CELERY_BROKER_URL"] == "redis://127.0.0.1:56999/0"


@pytest.mark.django_db
def test_worker_processes_get_the_test_database_not_the_real_one():
    database = environ.Env.db_url_config(_test_database_url())

    current = connection.settings_dict
    assert database["ENGINE"] == current["ENGINE"]
    if connection.vendor == "sqlite":
        assert Path(database["NAME"]) == Path(current["NAME"]).resolve()
        assert Path(database["NAME"]).name.startswith("test-")
    else:
        assert database["NAME"] == current["NAME"]
        assert str(database["NAME"]).startswith("test_")
        assert (database["USER"], database["PASSWORD"]) == (current["USER"], current["PASSWORD"])
        assert (database["HOST"], str(database["PORT"])) == (current["HOST"], str(current["PORT"]))
