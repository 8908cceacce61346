#!/usr/bin/env bash
# Soak test (not in CI): runs a broker and ferry-bench producing and consuming
# for DURATION seconds, sampling the broker's RSS and open file descriptors every
# few seconds, to catch leaks. Prints one line per sample and a summary.
#
#   scripts/soak.sh DURATION_SECONDS [RATE_RECORDS_PER_SECOND]
#
# Environment: FERRY_BIN, FERRY_BENCH_BIN (default: target/{release,debug}),
# SOAK_INTERVAL (seconds between samples, default 5), CARGO_TARGET_DIR.
set -euo pipefail

cd "$(dirname "$0")/.."
duration="${1:?usage: scripts/soak.sh DURATION_SECONDS [RATE]}"
rate="${2:-20000}"
interval="${SOAK_INTERVAL:-5}"
target="${CARGO_TARGET_DIR:-target}"

pick() {
    for dir in "$target/release" "$target/debug"; do
        if [ -x "$dir/$1" ]; then echo "$dir/$1"; return; fi
    done
    echo "error: $1 not built (cargo build --release -p ferry -p ferry-bench)" >&2
    exit 1
}
ferry="${FERRY_BIN:-$(pick ferry)}"
bench="${FERRY_BENCH_BIN:-$(pick ferry-bench)}"

work="$(mktemp -d)"
broker_pid=""
bench_pids=()
cleanup() {
    for pid in "${bench_pids[@]}" $broker_pid; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$ferry" serve --data-dir "$work/data" --kafka-addr 127.0.0.1:0 \
    --set log.segment.bytes=16777216 --set log.retention.bytes=67108864 \
    --set log.retention.check.interval.ms=10000 \
    >"$work/stdout" 2>"$work/stderr" &
broker_pid=$!
for _ in $(seq 100); do
    addr="$(sed -n 's/^ferry: kafka listening on //p' "$work/stdout")"
    [ -n "$addr" ] && break
    sleep 0.1
done
[ -n "$addr" ] || { echo "broker did not start" >&2; cat "$work/stderr" >&2; exit 1; }

# e2e: a producer at a fixed rate and a consumer reading it back; a second
# consumer re-reading from the beginning exercises fetches of older segments.
"$bench" e2e --brokers "$addr" --topic soak --partitions 4 --rate "$rate" \
    --count 1000000000 --duration "$duration" --acks all --record-size 512 \
    >"$work/e2e.out" 2>&1 &
bench_pids+=($!)

sample() {
    local rss fds
    rss="$(awk '/^VmRSS:/ {print $2}' "/proc/$broker_pid/status")"
    fds="$(ls "/proc/$broker_pid/fd" | wc -l)"
    echo "$1 $rss $fds"
}
printf '%8s %12s %8s\n' "seconds" "rss_kib" "fds"
samples="$work/samples"
start=$(date +%s)
while :; do
    now=$(( $(date +%s) - start ))
    kill -0 "$broker_pid" 2>/dev/null || { echo "broker died" >&2; tail -50 "$work/stderr" >&2; exit 1; }
    sample "$now" | tee -a "$samples" | awk '{printf "%8s %12s %8s\n", $1, $2, $3}'
    [ "$now" -ge "$duration" ] && break
    sleep "$interval"
done
wait "${bench_pids[@]}" || true
echo "--- ferry-bench e2e ---"
tail -n 15 "$work/e2e.out"
echo "--- summary ---"
awk 'NR==1 {r0=$2; f0=$3} {if ($2>rmax) rmax=$2; if ($3>fmax) fmax=$3; r=$2; f=$3}
     END {printf "rss_kib first=%d last=%d max=%d; fds first=%d last=%d max=%d; samples=%d\n", r0, r, rmax, f0, f, fmax, NR}' "$samples"
