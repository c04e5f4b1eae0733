#!/usr/bin/env bash
# The test suite as two pytest processes side by side (`make test-suite`):
#
#   [processes]  the tests marked `browser` or `worker` (tests/conftest.py): they spend their
#                time waiting on Chromium and on real Celery worker processes;
#   [rest]       every other test, which keeps the CPU busy meanwhile.
#
# Usage: TEST_VAR_DIR=var/test scripts/test-suite.sh PYTEST [ARGS...]
#
# Each process has a corner of its own, so that neither sees the other's rows or messages:
# its SALVO_VAR_DIR under TEST_VAR_DIR (the SQLite test database, the filesystem broker's
# folders, logs), its test database name on PostgreSQL (SALVO_TEST_DATABASE_SUFFIX, read by
# tests/conftest.py), and on a Redis broker its own database number (the broker's plus one,
# modulo 16, or TEST_PROCESSES_REDIS_DB). Every output line says which process wrote it;
# the exit status is the first failure's (a part that selects no test is no failure unless
# neither selects any). ARGS that choose markers (-m) run as one process, as they used to,
# and so does a broker that the script cannot split (amqp://).
set -uo pipefail

var_dir=${TEST_VAR_DIR:?set TEST_VAR_DIR to the folder the tests may use}
pytest=("$@")
NO_TESTS_COLLECTED=5

one_process() {
    echo "test-suite: one pytest process ($1)"
    SALVO_VAR_DIR=$var_dir exec "${pytest[@]}"
}

for arg in "${pytest[@]}"; do
    [[ $arg == -m* ]] && one_process "the arguments choose markers: $arg"
done

broker=${CELERY_BROKER_URL:-}
processes_broker=$broker
if [[ $broker =~ ^(rediss?://[^/?]*)(/([0-9]+))?/?(\?.*)?$ ]]; then
    broker_db=${BASH_REMATCH[3]:-0}
    processes_db=${TEST_PROCESSES_REDIS_DB:-$(((broker_db + 1) % 16))}
    if [[ $processes_db == "$broker_db" ]]; then
        one_process "TEST_PROCESSES_REDIS_DB is the broker's own database, $broker_db"
    fi
    processes_broker="${BASH_REMATCH[1]}/$processes_db${BASH_REMATCH[4]}"
elif [[ -n $broker && $broker != filesystem://* ]]; then
    one_process "no second corner of CELERY_BROKER_URL=${broker%%://*}://… for a second process"
fi

# part LABEL SALVO_VAR_DIR BROKER_URL DATABASE_SUFFIX MARKERS: pytest with its lines labelled.
# No broker URL leaves CELERY_BROKER_URL unset: naming one would select the production profile.
part() {
    local label=$1 part_var_dir=$2 part_broker=$3 suffix=$4 markers=$5
    local -a broker_env=(-u CELERY_BROKER_URL)
    [[ -n $part_broker ]] && broker_env=("CELERY_BROKER_URL=$part_broker")
    mkdir -p "$part_var_dir"
    env "${broker_env[@]}" SALVO_VAR_DIR="$part_var_dir" SALVO_TEST_DATABASE_SUFFIX="$suffix" \
        PYTHONUNBUFFERED=1 "${pytest[@]}" -m "$markers" </dev/null 2>&1 | sed -u "s/^/[$label] /"
    return "${PIPESTATUS[0]}"
}

# Through the labelling pipe pytest would think it writes to a file: keep a terminal's colours.
[[ -t 1 ]] && pytest=("${pytest[0]}" --color=yes "${pytest[@]:1}")

# Each part leads a process group of its own, so that Ctrl-C (or a CI timeout's SIGTERM)
# reaching this script is passed on to both pytest processes and their children.
set -m
started=$SECONDS
part processes "$var_dir/processes" "$processes_broker" processes "browser or worker" &
processes=$!
part rest "$var_dir/rest" "$broker" "" "not browser and not worker" &
rest=$!
trap 'kill -INT -- -$processes -$rest 2>/dev/null' INT TERM

# `wait` returns early when a trapped signal arrives: wait again until each part has ended.
status_of() {
    local status
    while true; do
        wait "$1"
        status=$?
        kill -0 "$1" 2>/dev/null || return "$status"
    done
}
status_of "$processes"
processes_status=$?
status_of "$rest"
rest_status=$?

echo "test-suite: [processes] exit $processes_status, [rest] exit $rest_status," \
    "$((SECONDS - started)) s in all"
for status in "$processes_status" "$rest_status"; do
    [[ $status != 0 && $status != "$NO_TESTS_COLLECTED" ]] && exit "$status"
done
if [[ $processes_status == "$NO_TESTS_COLLECTED" && $rest_status == "$NO_TESTS_COLLECTED" ]]; then
    exit "$NO_TESTS_COLLECTED"
fi
exit 0
