#!/usr/bin/env bash
# Stability check: run the whole test suite again and again, and stop at the first failure.
#
#   bash tests/repeat.sh              20 runs in a row
#   bash tests/repeat.sh 5            5 runs
#   bash tests/repeat.sh --parallel   each run is two copies of the suite at the same time
#   bash tests/repeat.sh --load       a busy loop on every core for the whole time
#   bash tests/repeat.sh --slow       the tests marked slow too (about 20 s more a run)
# Options combine: bash tests/repeat.sh 20 --parallel --load
set -euo pipefail
cd "$(dirname "$0")/.."
# Only the interpreters already on the machine: uv must never download one.
export UV_PYTHON_DOWNLOADS=never

runs=20 parallel=false load=false markers="not slow"
for arg in "$@"; do
    case "$arg" in
        --parallel) parallel=true ;;
        --load) load=true ;;
        --slow) markers="" ;;
        *[!0-9]* | "") echo "usage: bash tests/repeat.sh [RUNS] [--parallel] [--load] [--slow]" >&2; exit 2 ;;
        *) runs=$arg ;;
    esac
done

busy_pids=()
stop_load() { [ ${#busy_pids[@]} -eq 0 ] || kill "${busy_pids[@]}" 2>/dev/null || true; }
trap stop_load EXIT
if $load; then
    for _ in $(seq "$(nproc)"); do
        python3 -c 'while True: pass' &
        busy_pids+=($!)
    done
    echo "CPU load: ${#busy_pids[@]} busy loops"
fi

uv sync --quiet --compile-bytecode
log_folder=$(mktemp -d)
echo "full output of each run: $log_folder"
for run in $(seq "$runs"); do
    copies=1
    $parallel && copies=2
    pids=()
    for copy in $(seq "$copies"); do
        uv run pytest -q -p no:cacheprovider -m "$markers" >"$log_folder/run-$run-copy-$copy.txt" 2>&1 &
        pids+=($!)
    done
    status=0
    for pid in "${pids[@]}"; do
        wait "$pid" || status=1
    done
    for copy in $(seq "$copies"); do
        tail -n 1 "$log_folder/run-$run-copy-$copy.txt"
    done
    if [ $status -ne 0 ]; then
        grep -h -A 60 -E "^(=+ FAILURES|_+ test)" "$log_folder"/run-"$run"-copy-*.txt | head -n 200
        echo "run $run of $runs failed; full output in $log_folder"
        exit 1
    fi
    echo "run $run of $runs passed"
done
