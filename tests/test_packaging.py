"""Salvo installs without its source tree: the wheel built from this checkout carries the
templates and migrations, and in a fresh virtualenv holding only the wheel and the locked
dependencies, `salvo-admin` (its manage.py) checks and migrates a SQLite database and passes
`check --deploy` in the production profile.

Offline, like the rest of the suite: the build and the locked dependencies come from uv's
cache, which `make venv` filled when it installed the same lock into the project's venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import BASE_DIR
from tests.settings_loader import PRODUCTION_REQUIRED, PRODUCTION_URLS

# The lock's uv, installed beside this interpreter by `make venv`.
UV = Path(sys.executable).with_name("uv")
APPS = ("config", "campaigns", "channels", "segments")
# What the build leaves out of its copy of the checkout: virtualenvs, caches, run data.
NOT_SOURCE = [".git", ".venv*", ".tools", "var", "build", "dist", "*.egg-info", "__pycache__"]
NOT_SOURCE += [".*_cache", "staticfiles"]

pytestmark = pytest.mark.timeout(300)


def uv(*args: object, **env: str) -> str:
    if not UV.exists():
        pytest.fail(f"no uv beside {sys.executable}: install the lock with `make venv`")
    done = subprocess.run(
        [str(UV), *map(str, args)],
        cwd=BASE_DIR,
        env={**os.environ, "UV_OFFLINE": "1", "UV_NO_PROGRESS": "1", **env},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"uv {' '.join(map(str, args))}:\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built as `uv build` builds one: an sdist first, then the wheel from it. A
    copy of the checkout keeps the build's files out of this one."""
    work = tmp_path_factory.mktemp("build")
    source = work / "source"
    shutil.copytree(BASE_DIR, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    uv("build", "--python", sys.executable, "--out-dir", work / "dist", source)
    (built,) = (work / "dist").glob("salvo-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv of this Python with the locked runtime dependencies (no dev
    extra) and the wheel; its bin/ folder."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    # Exactly uv.lock's versions and hashes, into the environment UV_PROJECT_ENVIRONMENT names.
    uv(
        "sync",
        "--frozen",
        "--no-install-project",
        "--python",
        sys.executable,
        UV_PROJECT_ENVIRONMENT=str(venv),
    )
    uv("pip", "install", "--python", venv / "bin" / "python", "--no-deps", wheel)
    # The wheel's declared dependencies are all there, at versions that satisfy it.
    uv("pip", "check", "--python", venv / "bin" / "python")
    return venv / "bin"


def salvo_admin(
    bin_dir: Path, *args: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    """`salvo-admin ARGS` as a deployment runs it: outside any checkout, with only the
    variables given."""
    return subprocess.run(
        [str(bin_dir / "salvo-admin"), *args],
        cwd=cwd,
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_wheel_carries_every_template_and_migration(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    # templates/ of the checkout is config/templates/ in the wheel.
    templates = {
        f"config/templates/{path.relative_to(BASE_DIR / 'templates').as_posix()}"
        for path in (BASE_DIR / "templates").rglob("*")
        if path.is_file()
    }
    migrations = {
        path.relative_to(BASE_DIR).as_posix()
        for app in APPS
        for path in (BASE_DIR / app).glob("migrations/*.py")
    }
    assert templates
    assert {"campaigns/migrations/0001_initial.py", "segments/migrations/__init__.py"} <= migrations
    assert templates - names == set()
    assert migrations - names == set()
    entry_points = zipfile.ZipFile(wheel).read(
        next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
    )
    assert b"salvo-admin = config.manage:main" in entry_points


def test_the_wheel_leaves_the_development_tools_out(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "campaigns/__init__.py" in names
    assert [name for name in names if name.startswith("devtools/")] == []


def test_the_installed_wheel_checks_and_migrates_a_sqlite_database(installed, tmp_path):
    env = {"SALVO_VAR_DIR": str(tmp_path / "var")}

    checked = salvo_admin(installed, "check", env=env, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "System check identified no issues" in checked.stdout

    migrated = salvo_admin(installed, "migrate", "--noinput", env=env, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert "Applying campaigns.0001_initial... OK" in migrated.stdout
    assert (tmp_path / "var" / "salvo.sqlite3").is_file()
    # Nothing left to apply: every migration of the wheel ran.
    pending = salvo_admin(installed, "migrate", "--check", env=env, cwd=tmp_path)
    assert pending.returncode == 0, pending.stdout + pending.stderr

    # The code, the migrations and the templates that ran are the installed ones.
    where = salvo_admin(
        installed,
        "shell",
        "--no-imports",
        "-c",
        "import campaigns.migrations, config; from django.template.loader import get_template;"
        "print(config.__file__); print(campaigns.migrations.__file__);"
        "print(get_template('admin/salvo_index.html').origin.name)",
        env=env,
        cwd=tmp_path,
    )
    assert where.returncode == 0, where.stderr
    paths = [Path(line) for line in where.stdout.splitlines()]
    assert len(paths) == 3, where.stdout
    for path in paths:
        assert path.is_relative_to(installed.parent / "lib"), path


def test_the_installed_wheel_passes_check_deploy_in_the_production_profile(installed, tmp_path):
    env = {"SALVO_VAR_DIR": str(tmp_path / "var"), **PRODUCTION_URLS, **PRODUCTION_REQUIRED}

    checked = salvo_admin(
        installed, "check", "--deploy", "--fail-level", "WARNING", env=env, cwd=tmp_path
    )

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "System check identified no issues" in checked.stdout
