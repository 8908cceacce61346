#!/usr/bin/env bash
# The consume path in detail, and A/B between broker builds: fills a data dir once
# (raw-produce into raw1, librdkafka produce into lk1), then for each broker binary
# in turn starts `ferry serve` on that same data dir and runs raw-consume and
# librdkafka consume REPEAT times each (from page cache), reading the broker's user
# and system CPU from /proc/<pid>/stat around every run. Prints the median of each.
#
#   bench/consume.sh                                   # the built broker, 2 GB per topic
#   SCALE=0.25 REPEAT=5 bench/consume.sh               # smaller data, more runs
#   FERRY_BINS="/tmp/ferry.before /tmp/ferry.after" ROUNDS=2 bench/consume.sh
#   PROFILE=1 bench/consume.sh                         # + perf profile of one raw-consume
#
# FERRY_BINS: broker binaries to compare (default: the one cargo builds); ROUNDS:
# how many times the whole list is cycled (alternating spreads drift evenly);
# NO_BUILD=1 skips `cargo build` (BENCH_BIN then names ferry-bench). Binaries are
# built into $CARGO_TARGET_DIR (default target/). The temporary data dir and every
# broker started here are removed/stopped on exit. Each run is bounded by
# ferry-bench's --duration; the whole script by about ROUNDS × bins × 2 × REPEAT
# runs of a few seconds each.
set -euo pipefail
cd "$(dirname "$0")/.."

scale="${SCALE:-1}"
repeat="${REPEAT:-3}"
rounds="${ROUNDS:-1}"
bytes_total=$(python3 -c "print(int(2_000_000_000 * $scale))")
records=$((bytes_total / 1024))
target="${CARGO_TARGET_DIR:-target}"
work="$(mktemp -d)"
pid=""
stop_broker() {
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=""
    fi
}
trap 'stop_broker; rm -rf "$work"' EXIT

if [ "${NO_BUILD:-0}" != 1 ]; then
    cargo build --release -q -p ferry -p ferry-bench
fi
bench="${BENCH_BIN:-$target/release/ferry-bench}"
read -r -a bins <<<"${FERRY_BINS:-$target/release/ferry}"

start_broker() {  # binary
    : >"$work/stdout"
    "$1" serve --data-dir "$work/data" --kafka-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
        >"$work/stdout" 2>>"$work/stderr" &
    pid=$!
    for _ in $(seq 600); do grep -q "kafka listening" "$work/stdout" 2>/dev/null && break; sleep 0.1; done
    brokers=$(sed -n 's/^ferry: kafka listening on //p' "$work/stdout")
    [ -n "$brokers" ] || { echo "broker $1 did not start; stderr:" >&2; tail -20 "$work/stderr" >&2; exit 1; }
}
ticks() { awk '{print $14, $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)

echo "filling $work/data: $bytes_total bytes into raw1 and $records records into lk1" >&2
start_broker "${bins[0]}"
"$bench" produce --brokers "$brokers" --topic raw1 --count 1 >/dev/null 2>&1
"$bench" raw-produce --brokers "$brokers" --topic raw1 --total-bytes "$bytes_total" --acks 1 >/dev/null 2>&1
"$bench" produce --brokers "$brokers" --topic lk1 --count "$records" --acks 1 --linger-ms 5 >/dev/null 2>&1
stop_broker

: >"$work/runs"
for round in $(seq "$rounds"); do
    for bin in "${bins[@]}"; do
        start_broker "$bin"
        # One untimed pass warms the page cache and the broker's allocator.
        "$bench" raw-consume --brokers "$brokers" --topic raw1 --total-bytes "$bytes_total" >/dev/null 2>&1
        for scenario in raw-consume consume; do
            for _ in $(seq "$repeat"); do
                read -r u0 s0 < <(ticks)
                if [ "$scenario" = raw-consume ]; then
                    "$bench" raw-consume --brokers "$brokers" --topic raw1 --total-bytes "$bytes_total" --json \
                        >"$work/out.json" 2>/dev/null
                else
                    "$bench" consume --brokers "$brokers" --topic lk1 --count "$records" --json \
                        >"$work/out.json" 2>/dev/null
                fi
                read -r u1 s1 < <(ticks)
                python3 - "$bin" "$scenario" "$((u1 - u0))" "$((s1 - s0))" "$hz" "$work/out.json" >>"$work/runs" <<'PY'
import json, sys
bin_, scenario, user, sys_, hz, path = sys.argv[1:7]
r = [json.loads(l) for l in open(path) if l.strip().startswith("{")][-1]
gb = r["bytes"] / 1e9
print(json.dumps({"bin": bin_, "scenario": scenario, "mb_per_sec": r["mb_per_sec"],
                  "user": int(user) / int(hz) / gb, "sys": int(sys_) / int(hz) / gb}))
PY
            done
        done
        if [ "${PROFILE:-0}" = 1 ]; then
            perf record -e cpu-clock -g -p "$pid" -o "$work/perf.data" 2>/dev/null &
            perf_pid=$!
            sleep 0.5
            "$bench" raw-consume --brokers "$brokers" --topic raw1 --total-bytes "$bytes_total" >/dev/null 2>&1
            kill -INT "$perf_pid"
            wait "$perf_pid" || true
            echo "== perf profile of raw-consume, broker $bin (self time) =="
            perf report -i "$work/perf.data" --stdio --no-children 2>/dev/null | grep -E '^ +[0-9]' | head -25
        fi
        stop_broker
    done
done

python3 - "$work/runs" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
keys = []
for r in runs:
    k = (r["bin"], r["scenario"])
    if k not in keys:
        keys.append(k)
print(f'{"broker":<36} {"scenario":<12} {"runs":>4} {"MB/s":>7} {"cpu_s/GB":>8} {"user":>6} {"sys":>6}   MB/s of each run')
for k in keys:
    rs = [r for r in runs if (r["bin"], r["scenario"]) == k]
    med = lambda f: statistics.median(f(r) for r in rs)
    each = " ".join(f'{r["mb_per_sec"]:.0f}' for r in rs)
    print(f'{k[0][-36:]:<36} {k[1]:<12} {len(rs):>4} {med(lambda r: r["mb_per_sec"]):>7.0f} '
          f'{med(lambda r: r["user"] + r["sys"]):>8.3f} {med(lambda r: r["user"]):>6.3f} {med(lambda r: r["sys"]):>6.3f}   {each}')
PY
