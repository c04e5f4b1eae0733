#!/usr/bin/env bash
# The test suite as four pytest processes side by side (`make test-suite`), so that the
# two cores stay busy while tests wait:
#
#   [browser]    the tests marked `browser` (tests/conftest.py): they wait on Chromium;
#   [worker]     the other tests marked `worker`: they wait on real Celery processes;
#   [campaigns]  every other test under tests/campaigns/;
#   [others]     every other test.
#
# Usage: TEST_VAR_DIR=var/test scripts/test-suite.sh PYTEST [ARGS...]
#
# Each process has a corner of its own, so that none sees another's rows or messages:
# its SALVO_VAR_DIR under TEST_VAR_DIR (the SQLite test database, the filesystem broker's
# folders, logs), its test database name on PostgreSQL (SALVO_TEST_DATABASE_SUFFIX, read by
# tests/conftest.py), and on a Redis broker its own database number (the broker's, then
# the next ones, modulo 16). Every output line says which process wrote it; the exit status
# is the first failure's (a part that selects no test is no failure unless none selects
# any). ARGS that choose markers (-m) run as one process, as they used to, and so does a
# broker that the script cannot split (amqp://).
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

LABELS=(browser worker campaigns others)
MARKERS=("browser" "worker and not browser" "not browser and not worker" "not browser and not worker")
# Which side of tests/campaigns/ a part keeps (tests/conftest.py reads SALVO_TEST_UNDER).
UNDER=("" "" "tests/campaigns" "!tests/campaigns")

broker=${CELERY_BROKER_URL:-}
brokers=()
if [[ $broker =~ ^(rediss?://[^/?]*)(/([0-9]+))?/?(\?.*)?$ ]]; then
    broker_db=${BASH_REMATCH[3]:-0}
    for i in "${!LABELS[@]}"; do
        brokers+=("${BASH_REMATCH[1]}/$(((broker_db + i) % 16))${BASH_REMATCH[4]}")
    done
elif [[ -n $broker && $broker != filesystem://* ]]; then
    one_process "no second corner of CELERY_BROKER_URL=${broker%%://*}://… for a second process"
else
    for i in "${!LABELS[@]}"; do brokers+=("$broker"); done
fi

# part LABEL SALVO_VAR_DIR BROKER_URL MARKERS UNDER: pytest with its lines labelled. The label
# is also the suffix of its test database. No broker URL leaves CELERY_BROKER_URL unset:
# naming one would select the production profile.
part() {
    local label=$1 part_var_dir=$2 part_broker=$3 markers=$4 under=$5
    local -a broker_env=(-u CELERY_BROKER_URL)
    [[ -n $part_broker ]] && broker_env=("CELERY_BROKER_URL=$part_broker")
    mkdir -p "$part_var_dir"
    env "${broker_env[@]}" SALVO_VAR_DIR="$part_var_dir" SALVO_TEST_DATABASE_SUFFIX="$label" \
        SALVO_TEST_UNDER="$under" PYTHONUNBUFFERED=1 "${pytest[@]}" -m "$markers" </dev/null 2>&1 |
        tee "$part_var_dir/pytest.log" | sed -u "s/^/[$label] /"
    return "${PIPESTATUS[0]}"
}

# Through the labelling pipe pytest would think it writes to a file: keep a terminal's colours.
[[ -t 1 ]] && pytest=("${pytest[0]}" --color=yes "${pytest[@]:1}")

# Each part leads a process group of its own, so that Ctrl-C (or a CI timeout's SIGTERM)
# reaching this script is passed on to every pytest process and its children.
set -m
started=$SECONDS
pids=()
for i in "${!LABELS[@]}"; do
    part "${LABELS[$i]}" "$var_dir/${LABELS[$i]}" "${brokers[$i]}" "${MARKERS[$i]}" \
        "${UNDER[$i]}" &
    pids+=($!)
done
trap 'for pid in "${pids[@]}"; do kill -INT -- "-$pid" 2>/dev/null; done' INT TERM

# `wait` returns early when a trapped signal arrives: wait again until each part has ended.
status_of() {
    local status
    while true; do
        wait "$1"
        status=$?
        kill -0 "$1" 2>/dev/null || return "$status"
    done
}
statuses=()
summary=""
for i in "${!LABELS[@]}"; do
    status_of "${pids[$i]}"
    statuses+=($?)
    summary+="[${LABELS[$i]}] exit ${statuses[$i]}, "
done

# The failures again, last: a CI log that keeps only its tail still names them.
for i in "${!LABELS[@]}"; do
    [[ ${statuses[$i]} == 0 || ${statuses[$i]} == "$NO_TESTS_COLLECTED" ]] && continue
    grep -E '^(FAILED|ERROR) ' "$var_dir/${LABELS[$i]}/pytest.log" | sed "s/^/[${LABELS[$i]}] /"
done
echo "test-suite: $summary$((SECONDS - started)) s in all"
for status in "${statuses[@]}"; do
    [[ $status != 0 && $status != "$NO_TESTS_COLLECTED" ]] && exit "$status"
done
for status in "${statuses[@]}"; do
    [[ $status == 0 ]] && exit 0
done
exit "$NO_TESTS_COLLECTED"
