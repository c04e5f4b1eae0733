"""How `make` and CI find the supported Pythons (scripts/toolchain.sh): the newest one, or the
one asked for, on the PATH or installed by pyenv without being selected; a missing one is
named, and fails CI's check of all of them.

Each case runs the script on a made-up machine: a PATH holding only the tools the script
uses and the interpreters the case puts there, and a pyenv root of its own."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BASE_DIR

TOOLCHAIN = BASE_DIR / "scripts" / "toolchain.sh"
TOOLS = ("dirname", "sed", "ls", "sort", "grep", "paste")
THIS = f"{sys.version_info.major}.{sys.version_info.minor}"
SUPPORTED = ("3.11", "3.12", "3.13")
OTHERS = [version for version in SUPPORTED if version != THIS]


@pytest.fixture
def machine(tmp_path: Path) -> Path:
    """A PATH folder with the script's tools and no Python."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool) or pytest.fail(f"no {tool}"))
    return bin_dir


def toolchain(machine: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(TOOLCHAIN), *args],
        env={"PATH": str(machine), "PYENV_ROOT": str(machine.parent / "pyenv")},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_newest_python_on_the_path_is_chosen(machine):
    (machine / f"python{THIS}").symlink_to(sys.executable)

    found = toolchain(machine, "python")

    assert found.returncode == 0, found.stderr
    assert found.stdout.split()[0] == THIS


def test_a_version_pyenv_installed_without_selecting_it_is_found(machine):
    # pyenv's shim for it is on the PATH, and fails when run.
    shim = machine / f"python{THIS}"
    shim.write_text(f"#!/bin/sh\necho 'pyenv: python{THIS}: command not found' >&2\nexit 127\n")
    shim.chmod(0o755)
    installed = machine.parent / "pyenv" / "versions" / f"{THIS}.9" / "bin"
    installed.mkdir(parents=True)
    (installed / f"python{THIS}").symlink_to(sys.executable)

    for asked in (THIS, f"python{THIS}", ""):
        found = toolchain(machine, "python", *([asked] if asked else []))

        assert found.returncode == 0, (asked, found.stderr)
        assert found.stdout.split()[0] == THIS


def test_a_missing_version_is_named_in_one_line(machine):
    (machine / f"python{THIS}").symlink_to(sys.executable)
    missing = OTHERS[0]

    found = toolchain(machine, "python", missing)

    assert found.returncode == 1
    assert found.stdout == ""
    assert found.stderr == (
        f"Python {missing} is missing: neither python{missing} on the PATH nor a pyenv "
        f"install of it (pyenv install {missing})\n"
    )


def test_a_version_outside_requires_python_is_refused(machine):
    found = toolchain(machine, "python", "3.10")

    assert found.returncode == 1
    assert found.stderr == "Python 3.10 is not supported (requires-python in pyproject.toml)\n"


def test_the_check_of_every_version_fails_when_one_is_missing(machine):
    (machine / f"python{THIS}").symlink_to(sys.executable)

    listed = toolchain(machine, "pythons")
    checked = toolchain(machine, "pythons", "--all")

    assert listed.returncode == 0
    assert checked.returncode == 1
    assert checked.stderr == "a supported Python is missing: the suite must run on every one\n"
    lines = checked.stdout.splitlines()
    assert lines == listed.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [f"Python {v}" for v in reversed(SUPPORTED)]
    for line in lines:
        version = line.split(":")[0].removeprefix("Python ")
        missing = f"MISSING (neither python{version} on the PATH nor a pyenv install)"
        assert line.endswith(missing) == (version != THIS), line
