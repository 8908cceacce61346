#!/usr/bin/env bash
# Many partitions on one node (the issue's "50,000 partitions, a few records each:
# RSS ≤ 2 GiB, open file descriptors bounded by a cache, restart ready in ≤ 10 s").
#
# Starts `ferry serve` on a temporary data dir, creates TOPICS topics of PARTITIONS
# partitions each and writes RECORDS records into every partition (ferry-bench
# raw-partitions), then reports the broker's RSS (VmRSS, and VmHWM = peak), its open
# file descriptors and threads. Then it kills the broker with SIGKILL and restarts
# it, and stops it with SIGTERM and restarts it, timing each start until /readyz
# answers 200, and reports the same figures after each restart (plus whether every
# partition takes a write again, unless VERIFY=0).
#
#   bench/partitions.sh                          # 50 × 1000 = 50,000 partitions
#   TOPICS=15 PARTITIONS=1000 bench/partitions.sh
#
# Env: TOPICS (50), PARTITIONS per topic (1000, at most 10,000), RECORDS per partition
# (3), NOFILE (soft `ulimit -n` to ask for; default: the hard limit), PHASE_TIMEOUT_S
# (600: bound on each create/produce phase and each wait for readiness), LOG_LEVEL
# (warn), DATA_PARENT (where the temp dir goes), NO_BUILD=1 / FERRY_BIN / BENCH_BIN (use
# given binaries), KEEP=1 (keep the data dir). Binaries are built into $CARGO_TARGET_DIR (default target/).
#
# A phase that fails (e.g. the broker runs out of file descriptors) is reported with
# the tail of the broker's log, and the script carries on with the next one: how it
# fails is the finding. The broker is killed and the temp dir removed on exit.
set -uo pipefail
cd "$(dirname "$0")/.."

topics="${TOPICS:-50}"
partitions="${PARTITIONS:-1000}"
records="${RECORDS:-3}"
phase_timeout="${PHASE_TIMEOUT_S:-600}"
target="${CARGO_TARGET_DIR:-target}"
work="$(mktemp -d -p "${DATA_PARENT:-${TMPDIR:-/tmp}}")"
data="$work/data"
pid=""
cleanup() {
    if [ -n "$pid" ]; then
        kill -9 "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    fi
    if [ "${KEEP:-0}" = 1 ]; then echo "data kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

if [ "${NO_BUILD:-0}" != 1 ]; then
    cargo build --release -q -p ferry -p ferry-bench || exit 1
fi
ferry="${FERRY_BIN:-$target/release/ferry}"
bench="${BENCH_BIN:-$target/release/ferry-bench}"

hard=$(ulimit -Hn)
soft_before=$(ulimit -n)
ulimit -n "${NOFILE:-$hard}" 2>/dev/null || echo "could not raise ulimit -n to ${NOFILE:-$hard}" >&2
echo "open files limit: soft $soft_before -> $(ulimit -n), hard $hard (fs.nr_open $(cat /proc/sys/fs/nr_open))"
echo "partitions: $topics topics x $partitions = $((topics * partitions)), $records records each"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
kafka_port=$(free_port)
http_port=$(free_port)
brokers="127.0.0.1:$kafka_port"
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }

rows=()
failures=()
row() {  # phase, seconds, note
    local rss="-" hwm="-" fds="-" threads="-"
    if [ -n "$pid" ] && [ -r "/proc/$pid/status" ]; then
        rss=$(awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
        hwm=$(awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
        threads=$(awk '/^Threads/ {print $2}' "/proc/$pid/status")
        fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
    fi
    rows+=("$(printf '%-40s %8s %8s %8s %7s %7s  %s' "$1" "$2" "$rss" "$hwm" "$fds" "$threads" "${3:-}")")
}
fail() {  # phase, what happened
    failures+=("$1: $2")
    echo "FAILED $1: $2" >&2
    if [ -s "$work/stderr" ]; then
        echo "--- broker log: last lines, and the first 'Too many open files'" >&2
        tail -3 "$work/stderr" >&2
        grep -m1 -i "too many open files" "$work/stderr" >&2
    fi
}

# Starts the broker and waits for /readyz; sets ready_s, or start_error.
start_broker() {
    local t0
    ready_s=""
    start_error="not ready within ${phase_timeout}s"
    t0=$(now)
    "$ferry" serve --data-dir "$data" --kafka-addr "$brokers" --http-addr "127.0.0.1:$http_port" \
        --log-level "${LOG_LEVEL:-warn}" >>"$work/stdout" 2>>"$work/stderr" &
    pid=$!
    local deadline=$(( $(date +%s) + phase_timeout ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null
            pid=""
            start_error="the broker exited after $(since "$t0") s: $(grep '^ferry: ' "$work/stderr" | tail -1)"
            return 1
        fi
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http_port/readyz")" = 200 ]; then
            ready_s=$(since "$t0")
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# Runs ferry-bench raw-partitions writing $1 records per partition, with extra
# arguments; sets phase_s and phase_note.
raw_partitions() {
    local t0 out n=$1
    shift
    t0=$(now)
    out=$(timeout "$phase_timeout" "$bench" raw-partitions --brokers "$brokers" --topics "$topics" \
        --partitions "$partitions" --records "$n" --duration "$phase_timeout" "$@" 2>&1 >/dev/null)
    local rc=$?
    phase_s=$(since "$t0")
    phase_note=$(echo "$out" | grep '^raw-partitions:' | sed 's/^raw-partitions: //' | tr '\n' ' ')
    if [ $rc -ne 0 ]; then
        phase_note="exit $rc: $(echo "$out" | grep -A1 -m1 '^Error' | tr '\n' ' ')"
        return 1
    fi
}

verify_writes() {  # phase name
    [ "${VERIFY:-1}" = 1 ] || return 0
    if raw_partitions 1 --no-create; then
        row "$1: write to every partition" "$phase_s" "$phase_note"
    else
        fail "$1: write to every partition" "$phase_note"
    fi
}

if start_broker; then
    row "start (empty data dir)" "$ready_s"
else
    fail "start" "$start_error"
    exit 1
fi

if raw_partitions "$records" --no-produce; then
    row "create topics" "$phase_s" "$phase_note"
else
    fail "create topics" "$phase_note"
    row "after create (failed)" "$phase_s"
fi
if [ -n "$pid" ] && raw_partitions "$records" --no-create; then
    row "produce $records records/partition" "$phase_s" "$phase_note"
else
    fail "produce" "${phase_note:-broker gone}"
fi
dirs=$(find "$data" -mindepth 1 -maxdepth 1 -type d | wc -l)
segs=$(find "$data" -name '*.log' | wc -l)
echo "data dir: $dirs directories, $segs segment files, $(du -sh "$data" | cut -f1)"

# kill -9, restart.
if [ -n "$pid" ]; then
    kill -9 "$pid"
    wait "$pid" 2>/dev/null
    pid=""
fi
if start_broker; then
    row "restart after kill -9" "$ready_s"
    verify_writes "after kill -9"
else
    fail "restart after kill -9" "$start_error"
fi

# SIGTERM (clean shutdown), restart.
if [ -n "$pid" ]; then
    t0=$(now)
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null
    rows+=("$(printf '%-40s %8s' "clean shutdown (SIGTERM)" "$(since "$t0")")")
    pid=""
fi
if start_broker; then
    row "restart after SIGTERM" "$ready_s"
    verify_writes "after SIGTERM"
else
    fail "restart after SIGTERM" "$start_error"
fi

printf '\n%-40s %8s %8s %8s %7s %7s  %s\n' phase seconds rss_MiB hwm_MiB fds threads note
printf '%s\n' "${rows[@]}"
if [ ${#failures[@]} -gt 0 ]; then
    echo "failures:"
    printf '  %s\n' "${failures[@]}"
fi
