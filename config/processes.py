"""The environment of a child process (a worker, a command) started by this one."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.db import connection


def child_process_env() -> dict[str, str]:
    """The variables that give a child process the database and broker this process uses
    right now (under tests, the test database), in the same run profile.

    The embedded default is the profile that names no server, so its children get their
    SQLite file by SALVO_EMBEDDED_DATABASE and no DATABASE_URL; production children get both
    server URLs, and the secrets from the environment they inherit."""
    db = connection.settings_dict
    var_dir = {"SALVO_VAR_DIR": str(settings.VAR_DIR)}
    if settings.SALVO_EMBEDDED:
        return {**var_dir, "SALVO_EMBEDDED_DATABASE": str(Path(db["NAME"]).resolve())}
    if connection.vendor == "sqlite":
        url = f"sqlite:///{Path(db['NAME']).resolve()}"
    elif connection.vendor == "postgresql":
        credentials = quote(db["USER"] or "", safe="")
        if db["PASSWORD"]:
            credentials += ":" + quote(db["PASSWORD"], safe="")
        host = db["HOST"] or "localhost"
        port = f":{db['PORT']}" if db["PORT"] else ""
        url = f"postgres://{credentials}@{host}{port}/{quote(db['NAME'], safe='')}"
    else:
        raise NotImplementedError(f"no DATABASE_URL for a {connection.vendor} database")
    return {**var_dir, "DATABASE_URL": url, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL}
