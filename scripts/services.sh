#!/usr/bin/env bash
# Throwaway PostgreSQL 15 and Redis on loopback, for tests on the production profile and
# for benchmarks. Data lives under the repository's ignored var/ directory.
#
#   scripts/services.sh start   start both (idempotent) and print the export lines
#   scripts/services.sh env     print only the export lines
#   scripts/services.sh stop    stop both
#   scripts/services.sh status  say what runs
#
# Ports, names and the password can be changed with SALVO_PG_PORT, SALVO_REDIS_PORT,
# SALVO_PG_DB, SALVO_PG_USER and SALVO_PG_PASSWORD.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVICES_DIR="${SALVO_SERVICES_DIR:-$ROOT/var}"
PG_BIN="${SALVO_PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_PORT="${SALVO_PG_PORT:-55432}"
PG_DB="${SALVO_PG_DB:-salvo}"
PG_USER="${SALVO_PG_USER:-salvo}"
PG_PASSWORD="${SALVO_PG_PASSWORD:-salvo}"
# Sized like a production server for bulk writes, not PostgreSQL's small defaults: the
# working set (profiles, deliveries) in shared buffers, and checkpoints far enough apart
# that a run does not rewrite every page it touches in full into the WAL after each one.
PG_TUNING="${SALVO_PG_TUNING:--c shared_buffers=1GB -c max_wal_size=8GB -c checkpoint_timeout=30min -c wal_buffers=64MB}"
# PostgreSQL refuses to run as root: when we are root, its server runs as this system user.
PG_OS_USER="${SALVO_PG_OS_USER:-salvo-pg}"
REDIS_PORT="${SALVO_REDIS_PORT:-56379}"
REDIS_DIR="$SERVICES_DIR/redis"

log() { echo "services: $*" >&2; }
die() {
    log "$*"
    exit 1
}
is_root() { [[ "$(id -u)" == 0 ]]; }

apt_install() {
    is_root || die "$1 is missing and installing it needs root: apt-get install -y $*"
    log "installing $* with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    # policy-rc.d stops the packages from starting their own system-wide servers.
    local policy=/usr/sbin/policy-rc.d created_policy=""
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
    [[ -n "$created_policy" ]] && rm -f "$policy"
    return 0
}

# --- PostgreSQL ------------------------------------------------------------------------

# The server's data directory: under var/pg, unless the PostgreSQL user cannot reach the
# repository (a checkout under /root, say); then a private directory outside it.
pg_data_dir() {
    local preferred="$SERVICES_DIR/pg/data"
    if is_root && id "$PG_OS_USER" >/dev/null 2>&1 \
        && ! runuser -u "$PG_OS_USER" -- test -x "$SERVICES_DIR" 2>/dev/null; then
        echo "/var/tmp/salvo-pg-$(echo "$ROOT" | md5sum | cut -c1-10)/data"
    else
        echo "$preferred"
    fi
}

as_pg() {
    if is_root; then
        runuser -u "$PG_OS_USER" -- "$@"
    else
        "$@"
    fi
}

# A Debian release without PostgreSQL 15 gets the version it ships.
pg_find_bin() {
    if [[ ! -x "$PG_BIN/pg_ctl" ]]; then
        PG_BIN="$(find /usr/lib/postgresql -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1)"
        [[ -n "$PG_BIN" ]] && log "PostgreSQL 15 is not installed; using $PG_BIN"
    fi
    return 0
}

pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" >/dev/null 2>&1; }

pg_psql() {
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"
}

pg_start() {
    if [[ ! -x "$PG_BIN/pg_ctl" ]]; then
        apt_install postgresql-15 || apt_install postgresql
        pg_find_bin
    fi
    [[ -n "$PG_BIN" && -x "$PG_BIN/pg_ctl" ]] || die "no PostgreSQL binaries (set SALVO_PG_BIN)"
    if is_root && ! id "$PG_OS_USER" >/dev/null 2>&1; then
        log "creating system user $PG_OS_USER to run PostgreSQL"
        useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_OS_USER"
    fi
    mkdir -p "$SERVICES_DIR"
    local data
    data="$(pg_data_dir)"
    local base
    base="$(dirname "$data")"
    mkdir -p "$base"
    is_root && chown "$PG_OS_USER" "$base"
    chmod 700 "$base"
    if [[ ! -s "$data/PG_VERSION" ]]; then
        log "initialising a PostgreSQL cluster in $data"
        # Trust on loopback: a throwaway server for tests and benchmarks on this machine,
        # listening on 127.0.0.1 only. Never point it at real data.
        as_pg "$PG_BIN/initdb" -D "$data" -U postgres -E UTF8 --locale=C.UTF-8 \
            --auth-local=trust --auth-host=trust >"$base/initdb.log" 2>&1 \
            || { cat "$base/initdb.log" >&2; die "initdb failed"; }
    fi
    if as_pg "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        log "PostgreSQL already running on 127.0.0.1:$PG_PORT"
    else
        pg_ready && die "port $PG_PORT is taken by another server; set SALVO_PG_PORT"
        log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
        # No Unix socket: a socket path under a deep checkout can exceed the 107-byte limit.
        as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$base/server.log" -w -t 60 \
            -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories='' $PG_TUNING" \
            start >/dev/null \
            || { tail -n 30 "$base/server.log" >&2; die "PostgreSQL did not start"; }
    fi
    local i
    for i in $(seq 1 60); do
        pg_ready && break
        sleep 0.5
    done
    pg_ready || die "PostgreSQL does not accept connections on 127.0.0.1:$PG_PORT"
    pg_psql -d postgres >/dev/null <<SQL
SELECT format('CREATE ROLE %I LOGIN CREATEDB PASSWORD %L', '$PG_USER', '$PG_PASSWORD')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', '$PG_DB', '$PG_USER')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DB') \gexec
SQL
}

pg_stop() {
    pg_find_bin
    [[ -x "$PG_BIN/pg_ctl" ]] || return 0
    local data
    data="$(pg_data_dir)"
    [[ -s "$data/PG_VERSION" ]] || return 0
    if as_pg "$PG_BIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        log "stopping PostgreSQL"
        as_pg "$PG_BIN/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    fi
}

# --- Redis -----------------------------------------------------------------------------

redis_ping() {
    # Plain bash, so redis-cli is not needed: send PING, expect +PONG.
    local reply
    reply="$(
        exec 2>/dev/null
        exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" || exit 0
        printf 'PING\r\n' >&3
        read -r -t 2 line <&3 && echo "$line"
    )" || true
    [[ "$reply" == "+PONG"* ]]
}

redis_start() {
    command -v redis-server >/dev/null || apt_install redis-server
    mkdir -p "$REDIS_DIR"
    if redis_ping; then
        log "Redis already running on 127.0.0.1:$REDIS_PORT"
        return 0
    fi
    log "starting Redis on 127.0.0.1:$REDIS_PORT"
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes \
        --dir "$REDIS_DIR" --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" \
        --save '' --appendonly no
    local i
    for i in $(seq 1 60); do
        redis_ping && return 0
        sleep 0.25
    done
    tail -n 30 "$REDIS_DIR/redis.log" >&2 || true
    die "Redis does not answer on 127.0.0.1:$REDIS_PORT"
}

redis_stop() {
    local pidfile="$REDIS_DIR/redis.pid"
    [[ -s "$pidfile" ]] || return 0
    local pid
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null && grep -q redis-server "/proc/$pid/cmdline" 2>/dev/null; then
        log "stopping Redis"
        kill "$pid"
        local i
        for i in $(seq 1 40); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
    fi
    rm -f "$pidfile"
}

# --- commands --------------------------------------------------------------------------

# Throwaway secrets for the production profile on these services, made once per checkout so
# that every shell that evaluates `env` (web, workers, tests) signs with the same keys.
throwaway_secrets() {
    local file="$SERVICES_DIR/throwaway-secrets"
    if [[ ! -s "$file" ]]; then
        mkdir -p "$SERVICES_DIR"
        (
            umask 077
            for name in DJANGO_SECRET_KEY SALVO_WEBHOOK_SECRET SALVO_UNSUBSCRIBE_SECRET; do
                echo "export $name=$(head -c 48 /dev/urandom | base64 -w0 | tr '+/' '-_')"
            done >"$file.$$"
            mv "$file.$$" "$file"
        )
    fi
    cat "$file"
}

print_env() {
    echo "export DATABASE_URL=postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB"
    echo "export CELERY_BROKER_URL=redis://127.0.0.1:$REDIS_PORT/0"
    # The production profile served over plain HTTP on loopback (config/settings.py).
    echo "export DJANGO_ALLOWED_HOSTS=localhost,127.0.0.1"
    echo "export DJANGO_SECURE_SSL_REDIRECT=false"
    echo "export DJANGO_SECURE_COOKIES=false"
    throwaway_secrets
}

case "${1:-start}" in
    start)
        pg_start
        redis_start
        print_env
        ;;
    env) print_env ;;
    stop)
        redis_stop
        pg_stop
        ;;
    status)
        if pg_ready; then echo "PostgreSQL: up on 127.0.0.1:$PG_PORT"; else echo "PostgreSQL: down"; fi
        if redis_ping; then echo "Redis: up on 127.0.0.1:$REDIS_PORT"; else echo "Redis: down"; fi
        ;;
    *) die "usage: $0 start|env|stop|status" ;;
esac
