#!/usr/bin/env bash
# The interpreters and the installer that the Makefile and .ci/run use.
#
#   scripts/toolchain.sh python [VERSION|COMMAND]
#       "VERSION PATH" of a supported Python: the newest this machine has, that version
#       (3.12), or that command (python3.12, /usr/bin/python3) once it is known to be one
#   scripts/toolchain.sh versions
#       the supported versions, newest first
#   scripts/toolchain.sh pythons [--all]
#       each supported version with its interpreter or "MISSING"; --all fails if one is
#   scripts/toolchain.sh uv PYTHON DIR
#       DIR/bin/uv at the version uv.lock pins (installed with PYTHON's pip, its hashes
#       checked against the lock); prints its path
#
# The supported versions are requires-python in pyproject.toml (">=3.11,<3.14"). A version
# is found as python3.X on the PATH or, where pyenv installed it without selecting it (its
# shim is on the PATH then, but fails when run), under $PYENV_ROOT/versions.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail() {
    echo "$*" >&2
    exit 1
}

read -r LOWEST_MINOR END_MINOR < <(
    sed -n 's/^requires-python = ">=3\.\([0-9]*\), *<3\.\([0-9]*\)".*/\1 \2/p' pyproject.toml
) || fail "pyproject.toml: requires-python is not of the form \">=3.X,<3.Y\""

# Newest first.
supported_versions() {
    local minor
    for ((minor = END_MINOR - 1; minor >= LOWEST_MINOR; minor--)); do
        echo "3.$minor"
    done
}

# "VERSION PATH" when the command runs a Python (any version), else nothing.
interpreter() {
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2], sys.executable)' 2>/dev/null
}

is_supported() {
    supported_versions | grep -qx "$1"
}

find_version() {
    local version=$1 candidate found
    local pyenv_root=${PYENV_ROOT:-${HOME:-~}/.pyenv}
    for candidate in "python$version" $(
        ls -d "$pyenv_root/versions/$version".*/bin/"python$version" 2>/dev/null | sort -rV
    ); do
        found=$(interpreter "$candidate") || continue
        [ "${found%% *}" = "$version" ] && echo "$found" && return 0
    done
    return 1
}

python_cmd() {
    local wanted=${1:-} version found
    if [ -z "$wanted" ]; then
        for version in $(supported_versions); do
            find_version "$version" && return 0
        done
        fail "no supported Python ($(supported_versions | sort -V | paste -sd, -)) on this" \
            "machine: install one (pyenv install 3.13, or apt-get install python3)"
    elif [[ $wanted =~ ^3\.[0-9]+$ ]]; then
        is_supported "$wanted" ||
            fail "Python $wanted is not supported (requires-python in pyproject.toml)"
        find_version "$wanted" ||
            fail "Python $wanted is missing: neither python$wanted on the PATH nor a" \
                "pyenv install of it (pyenv install $wanted)"
    elif [[ $wanted =~ ^python(3\.[0-9]+)$ ]] && ! interpreter "$wanted" >/dev/null; then
        # A pyenv shim for a version pyenv does not select: look for that version.
        python_cmd "${BASH_REMATCH[1]}"
    else
        found=$(interpreter "$wanted") || fail "PYTHON=$wanted does not run a Python"
        is_supported "${found%% *}" ||
            fail "PYTHON=$wanted is Python ${found%% *}, not a supported version" \
                "($(supported_versions | sort -V | paste -sd, -))"
        echo "$found"
    fi
}

pythons_cmd() {
    local version found missing=0
    for version in $(supported_versions); do
        if found=$(find_version "$version"); then
            echo "Python $version: ${found#* }"
        else
            echo "Python $version: MISSING (neither python$version on the PATH nor a pyenv install)"
            missing=1
        fi
    done
    if [ "${1:-}" = "--all" ] && [ "$missing" = 1 ]; then
        fail "a supported Python is missing: the suite must run on every one"
    fi
}

# uv's version and every hash of its files, as uv.lock records them.
locked_uv_requirement() {
    awk '
        /^\[\[package\]\]/ { in_uv = 0 }
        /^name = "uv"$/ { in_uv = 1 }
        in_uv && /^version = / { gsub(/"/, "", $3); printf "uv==%s", $3 }
        in_uv && match($0, /sha256:[0-9a-f]+/) { printf " --hash=%s", substr($0, RSTART, RLENGTH) }
        END { print "" }
    ' uv.lock
}

uv_cmd() {
    local python=$1 dir=$2 requirement version
    requirement=$(locked_uv_requirement)
    version=${requirement%% *}
    version=${version#uv==}
    [ -n "$version" ] || fail "uv.lock pins no uv (it is in the dev extra of pyproject.toml)"
    # `uv --version` says "uv 0.13.9 (x86_64-unknown-linux-gnu)".
    if [[ "$("$dir/bin/uv" --version 2>/dev/null)" != "uv $version "* ]]; then
        echo "installing uv $version in $dir" >&2
        rm -rf "$dir"
        if ! "$python" -m venv "$dir" >/dev/null 2>&1; then
            # Debian's Python has no venv module without python3-venv.
            [ "$(id -u)" = 0 ] || fail "$python cannot create a virtualenv: apt-get install python3-venv"
            echo "installing python3-venv with apt-get" >&2
            DEBIAN_FRONTEND=noninteractive apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            rm -rf "$dir"
            "$python" -m venv "$dir"
        fi
        "$dir/bin/pip" install --quiet --require-hashes --no-deps -r /dev/stdin <<<"$requirement"
    fi
    echo "$dir/bin/uv"
}

case "${1:-}" in
    python) python_cmd "${2:-}" ;;
    versions) supported_versions ;;
    pythons) pythons_cmd "${2:-}" ;;
    uv) uv_cmd "$2" "$3" ;;
    *) fail "usage: $0 python [VERSION|COMMAND] | versions | pythons [--all] | uv PYTHON DIR" ;;
esac
