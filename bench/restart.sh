#!/usr/bin/env bash
# Restart time with a lot of data (the issue's "restart after kill -9 with 10 GB of
# data: ready in ≤ 5 s, only the unflushed tail is scanned").
#
# Starts `ferry serve`, fills one partition with SIZE_GB of 1 KiB records (ferry-bench
# raw-produce, acks=1), then times how long the broker takes until /readyz answers
# 200 after each of:
#   1. kill -9 right after the fill           (what recovery scans is what was not flushed)
#   2. kill -9 right after that restart       (recovery checkpointed everything it checked)
#   3. SIGTERM, then start                    (a clean shutdown flushes everything)
# COLD=1 also evicts the data dir's pages from the page cache (fsync + fadvise
# DONTNEED on each file) before each start, as after a reboot; without it the data
# is read from the page cache, as after a crash of the process alone. On tmpfs
# (DATA_PARENT=/dev/shm) eviction is impossible and COLD has no effect.
#
#   bench/restart.sh                              # 10 GB under $TMPDIR
#   SIZE_GB=4 bench/restart.sh
#   DATA_PARENT=/dev/shm bench/restart.sh         # in RAM when the disk is short
#   BROKER_SET="log.flush.interval.ms=1000" bench/restart.sh   # --set for the broker
#
# Env: SIZE_GB (10), MARGIN_GB (2: free space left on the data dir's file system; the
# size shrinks to fit, and says so), DATA_PARENT (where the temp dir goes), COLD,
# BROKER_SET (space-separated KEY=VALUE, each passed as --set), READY_TIMEOUT_S (300),
# NO_BUILD=1 / FERRY_BIN / BENCH_BIN. Binaries are built into $CARGO_TARGET_DIR
# (default target/). The broker is killed and the temp dir removed on exit.
set -uo pipefail
cd "$(dirname "$0")/.."

size_gb="${SIZE_GB:-10}"
margin_gb="${MARGIN_GB:-2}"
ready_timeout="${READY_TIMEOUT_S:-300}"
target="${CARGO_TARGET_DIR:-target}"
work="$(mktemp -d -p "${DATA_PARENT:-${TMPDIR:-/tmp}}")"
data="$work/data"
pid=""
cleanup() {
    if [ -n "$pid" ]; then
        kill -9 "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT

if [ "${NO_BUILD:-0}" != 1 ]; then
    cargo build --release -q -p ferry -p ferry-bench || exit 1
fi
ferry="${FERRY_BIN:-$target/release/ferry}"
bench="${BENCH_BIN:-$target/release/ferry-bench}"

avail_kb=$(df -Pk "$work" | awk 'NR == 2 {print $4}')
fit_gb=$(python3 -c "print(max(0, int($avail_kb / 1e6 - $margin_gb)))")
echo "file system of $work: $(df -h "$work" | awk 'NR == 2 {print $4 " free of " $2 " (" $1 ")"}')"
if [ "$fit_gb" -lt "$size_gb" ]; then
    echo "NOTE: $size_gb GB does not fit with a ${margin_gb} GB margin; using $fit_gb GB"
    size_gb=$fit_gb
fi
[ "$size_gb" -ge 1 ] || { echo "not even 1 GB fits; giving up"; exit 1; }
bytes=$((size_gb * 1000000000))

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
kafka_port=$(free_port)
http_port=$(free_port)
brokers="127.0.0.1:$kafka_port"
set_args=()
for kv in ${BROKER_SET:-}; do set_args+=(--set "$kv"); done
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }

evict() {  # drop the data dir's pages from the page cache
    [ "${COLD:-0}" = 1 ] || return 0
    python3 - "$data" <<'PY'
import os, sys
for root, _, files in os.walk(sys.argv[1]):
    for name in files:
        fd = os.open(os.path.join(root, name), os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
PY
}

start_broker() {  # sets ready_s
    local t0
    ready_s=""
    evict
    t0=$(now)
    "$ferry" serve --data-dir "$data" --kafka-addr "$brokers" --http-addr "127.0.0.1:$http_port" \
        "${set_args[@]}" >>"$work/stdout" 2>>"$work/stderr" &
    pid=$!
    local deadline=$(( $(date +%s) + ready_timeout ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null
            pid=""
            echo "broker exited; log tail:" >&2
            tail -5 "$work/stderr" >&2
            return 1
        fi
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http_port/readyz")" = 200 ]; then
            ready_s=$(since "$t0")
            return 0
        fi
        sleep 0.05
    done
    echo "not ready within ${ready_timeout}s" >&2
    return 1
}

rows=()
row() {  # what, seconds
    local rss="-" fds="-"
    if [ -n "$pid" ] && [ -r "/proc/$pid/status" ]; then
        rss=$(awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
        fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
    fi
    rows+=("$(printf '%-44s %8s %8s %6s  %s' "$1" "$2" "$rss" "$fds" "${3:-}")")
}
recovery_note() {  # what the broker's log says it did since the last start
    local lines
    lines=$(sed -n "$1,\$p" "$work/stderr")
    printf '%s truncations, %s index rebuilds' \
        "$(grep -c 'truncated a torn or corrupt tail' <<<"$lines")" \
        "$(grep -c 'rebuilt segment indexes' <<<"$lines")"
}

start_broker || exit 1
row "first start (empty)" "$ready_s"
timeout 60 "$bench" raw-partitions --brokers "$brokers" --topic-prefix restart --topics 1 --partitions 1 \
    --no-produce >/dev/null 2>&1 || { echo "could not create the topic"; exit 1; }
t0=$(now)
out=$(timeout $((bytes / 20000000 + 60)) "$bench" raw-produce --brokers "$brokers" --topic restart-0 \
    --total-bytes "$bytes" --acks 1 --duration $((bytes / 20000000 + 30)) --json 2>/dev/null | tail -1)
fill_s=$(since "$t0")
mbps=$(python3 -c "import json,sys; print(f'{json.loads(sys.argv[1])[\"mb_per_sec\"]:.0f} MB/s')" "$out" 2>/dev/null)
row "fill $size_gb GB (raw-produce, acks=1)" "$fill_s" "$mbps"
echo "data dir: $(du -sh "$data" | cut -f1), $(find "$data" -name '*.log' | wc -l) segment files"

mark=$(($(wc -l <"$work/stderr") + 1))
kill -9 "$pid"; wait "$pid" 2>/dev/null; pid=""
start_broker || exit 1
row "restart after kill -9 (after the fill)" "$ready_s" "$(recovery_note "$mark")"

mark=$(($(wc -l <"$work/stderr") + 1))
kill -9 "$pid"; wait "$pid" 2>/dev/null; pid=""
start_broker || exit 1
row "restart after a 2nd kill -9 (nothing new)" "$ready_s" "$(recovery_note "$mark")"

mark=$(($(wc -l <"$work/stderr") + 1))
t0=$(now)
kill -TERM "$pid"; wait "$pid" 2>/dev/null; pid=""
row "clean shutdown (SIGTERM)" "$(since "$t0")"
start_broker || exit 1
row "restart after SIGTERM" "$ready_s" "$(recovery_note "$mark")"

printf '\n%-44s %8s %8s %6s  %s\n' "phase (cold cache: ${COLD:-0})" seconds rss_MiB fds note
printf '%s\n' "${rows[@]}"
