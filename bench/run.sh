#!/usr/bin/env bash
# The standard benchmark suite: builds in release mode, starts `ferry serve` on a
# temporary data dir, runs each scenario with ferry-bench and prints one table
# with throughput, latency, the broker's CPU seconds per GB moved (from
# /proc/<pid>/stat) and its peak RSS (VmHWM).
#
#   bench/run.sh              # the whole suite (about 2 GB per scenario)
#   SCALE=0.25 bench/run.sh   # a quicker run with a quarter of the data
#
# Works against any Kafka-compatible broker for the client-side figures:
# BROKERS=host:port bench/run.sh skips starting ferry (no CPU/RSS columns then).
# Binaries are built into $CARGO_TARGET_DIR (default target/).
#
# More detail on one path: bench/consume.sh (consume CPU split user/sys, A/B between
# broker builds, perf profile), bench/partitions.sh (many partitions: RSS, file
# descriptors, restart), bench/restart.sh (restart time with many GB of data).
set -euo pipefail
cd "$(dirname "$0")/.."

scale="${SCALE:-1}"
bytes_total=$(python3 -c "print(int(2_000_000_000 * $scale))")
records=$((bytes_total / 1024))
work="$(mktemp -d)"
trap 'if [ -n "${pid:-}" ]; then kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi; rm -rf "$work"' EXIT

target="${CARGO_TARGET_DIR:-target}"
cargo build --release -q -p ferry -p ferry-bench
bench="$target/release/ferry-bench"

if [ -z "${BROKERS:-}" ]; then
    "$target/release/ferry" serve --data-dir "$work/data" --kafka-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
        >"$work/stdout" 2>"$work/stderr" &
    pid=$!
    for _ in $(seq 100); do grep -q "kafka listening" "$work/stdout" 2>/dev/null && break; sleep 0.1; done
    BROKERS=$(sed -n 's/^ferry: kafka listening on //p' "$work/stdout")
fi
cpu_ticks() { [ -n "${pid:-}" ] && awk '{print $14 + $15}' "/proc/$pid/stat" || echo 0; }
hz=$(getconf CLK_TCK)

rows=()
run() {  # name, then the ferry-bench arguments
    local name=$1; shift
    local before after
    before=$(cpu_ticks)
    "$bench" "$@" --brokers "$BROKERS" --json >"$work/out.json" 2>"$work/progress.log"
    after=$(cpu_ticks)
    rows+=("$(python3 - "$name" "$((after - before))" "$hz" "$work/out.json" <<'PY'
import json, sys
name, ticks, hz, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
lines = [json.loads(l) for l in open(path) if l.strip().startswith("{")]
r = lines[-1]
gb = r["bytes"] / 1e9
cpu = ticks / hz
lat = r.get("latency_ms") or {}
print(f'{name:<44} {r["records_per_sec"]:>12.0f} {r["mb_per_sec"]:>9.1f} '
      f'{lat.get("p50", float("nan")):>8.2f} {lat.get("p99", float("nan")):>8.2f} {lat.get("p99.9", float("nan")):>8.2f} '
      f'{(cpu / gb if gb else float("nan")):>10.2f}')
PY
)")
}

# raw-produce needs the topic: create it (one record) through the admin API.
"$bench" produce --brokers "$BROKERS" --topic raw1 --count 1 >/dev/null 2>&1
run "raw produce, 1 partition, acks=1" raw-produce --topic raw1 --total-bytes "$bytes_total" --acks 1
run "raw consume (page cache)" raw-consume --topic raw1 --total-bytes "$bytes_total"
run "librdkafka produce, acks=1, 1 producer" produce --topic lk1 --count "$records" --acks 1 --linger-ms 5
run "librdkafka produce, acks=all, 4 producers" produce --topic lk4 --count "$records" --acks all --producers 4 --partitions 4
run "librdkafka consume" consume --topic lk1 --count "$records"
run "e2e at 50 MB/s, acks=1" e2e --topic e2e --rate 51200 --count $((51200 * 20)) --acks 1 --linger-ms 0

dd_rate=$(dd if=/dev/zero of="$work/dd" bs=1M count=$((bytes_total / 1048576)) conv=fdatasync 2>&1 | sed -n 's/.*, \([0-9.]* [MG]B\/s\)$/\1/p')
rm -f "$work/dd"

printf '%-44s %12s %9s %8s %8s %8s %10s\n' scenario records/s MB/s p50_ms p99_ms p99.9_ms cpu_s/GB
printf '%s\n' "${rows[@]}"
echo "disk sequential write with fdatasync (dd): $dd_rate"
[ -n "${pid:-}" ] && echo "broker peak RSS: $(awk '/VmHWM/ {print $2, $3}' "/proc/$pid/status")"
