#!/usr/bin/env bash
# Moving a large partition between brokers of a three-node ferry cluster on this
# machine, and what it does to a steady produce load meanwhile:
#
#   1. a topic of one partition and replication factor 1 is filled with SIZE
#      bytes (ferry-bench raw-produce, acks=1) on one broker;
#   2. a steady acks=all load runs on another topic (replication factor 3,
#      min.insync.replicas=2) with ferry-bench produce, in back-to-back windows of
#      WINDOW seconds, each reporting throughput and ack latency;
#   3. the big partition moves to another broker (`ferry cluster reassign
#      big:0=B --execute`); the move is done when that broker leads it alone;
#   4. with THROTTLE (bytes/s) set, it moves on to the third broker under
#      `--throttle THROTTLE` (leader and follower replication throttles, Kafka's
#      default measuring window of 11 s, so about 10 s worth passes at once).
#
# Prints the time each move took and the load's throughput and p99 ack latency
# before, during and after each move (latency: worst window and mean of windows).
#
# Usage: bench/reassign.sh   (SIZE bytes to move, default 1000000000; LOAD_RATE
#                             records/s of 1 KiB of the load, default 2000, 0 for
#                             unlimited; WINDOW default 5; THROTTLE default unset;
#                             VERBOSE=1 prints each window's p99)
# Needs about 3 x SIZE of free disk, plus the load's data.
# Binaries: $CARGO_TARGET_DIR/release/{ferry,ferry-bench}, built unless NO_BUILD=1.
set -euo pipefail

SIZE=${SIZE:-1000000000}
LOAD_RATE=${LOAD_RATE:-2000}
WINDOW=${WINDOW:-5}
THROTTLE=${THROTTLE:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release -q -p ferry -p ferry-bench)
fi
FERRY=$TARGET/release/ferry
BENCH=$TARGET/release/ferry-bench

WORK=$(mktemp -d)
PIDS=()
LOAD_PID=
cleanup() {
    touch "$WORK/stop"
    if [ -n "$LOAD_PID" ]; then kill "$LOAD_PID" 2>/dev/null || true; fi
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }

declare -A KAFKA CTRL
for n in 1 2 3; do KAFKA[$n]=$(free_port); CTRL[$n]=$(free_port); done
VOTERS="1@127.0.0.1:${CTRL[1]},2@127.0.0.1:${CTRL[2]},3@127.0.0.1:${CTRL[3]}"
BOOTSTRAP="127.0.0.1:${KAFKA[1]},127.0.0.1:${KAFKA[2]},127.0.0.1:${KAFKA[3]}"

for n in 1 2 3; do
    FERRY_LOG=warn "$FERRY" serve --node-id "$n" --controller-voters "$VOTERS" \
        --controller-addr "127.0.0.1:${CTRL[$n]}" --data-dir "$WORK/node$n" \
        --kafka-addr "127.0.0.1:${KAFKA[$n]}" --http-addr 127.0.0.1:0 \
        >"$WORK/node$n.out" 2>>"$WORK/node$n.err" &
    PIDS[$n]=$!
done
for n in 1 2 3; do
    for _ in $(seq 1 100); do grep -q "kafka listening" "$WORK/node$n.out" 2>/dev/null && break; sleep 0.1; done
done
for _ in $(seq 1 100); do
    [ "$("$FERRY" cluster info --brokers "$BOOTSTRAP" --json 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["brokers"]))' 2>/dev/null || echo 0)" = 3 ] && break
    sleep 0.2
done

"$FERRY" topic create big --partitions 1 --replication-factor 1 --brokers "$BOOTSTRAP" >/dev/null
"$FERRY" topic create load --partitions 1 --replication-factor 3 -c min.insync.replicas=2 --brokers "$BOOTSTRAP" >/dev/null
sleep 2
describe() {  # prints "leader replicas isr" of big-0
    "$FERRY" topic describe big --brokers "$BOOTSTRAP" --json 2>/dev/null | python3 -c 'import json,sys
p=json.load(sys.stdin)["partitions"][0]
print(p["leader"], ",".join(map(str,p["replicas"])), ",".join(map(str,p["isr"])))' 2>/dev/null || true
}
read -r FROM _ _ < <(describe)

echo "filling big-0 on broker $FROM with $SIZE bytes..."
"$BENCH" raw-produce --brokers "$BOOTSTRAP" --topic big --total-bytes "$SIZE" --acks 1 --duration 3600 --json \
    2>/dev/null | python3 -c 'import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print("  %.0f MB in %.1f s" % (d["bytes"]/1e6, d["seconds"]))'
du -sh "$WORK/node$FROM/big-0" | awk '{print "  stored: " $1}'

# The load: windows of WINDOW seconds back to back, each with its start and end.
(
    i=0
    while [ ! -e "$WORK/stop" ]; do
        start=$(now)
        "$BENCH" produce --brokers "$BOOTSTRAP" --topic load --count 1000000000 --record-size 1024 \
            --acks all --rate "$LOAD_RATE" --linger-ms 1 --duration "$WINDOW" --json \
            >"$WORK/w$i.json" 2>/dev/null || true
        echo "$start $(now)" >"$WORK/w$i.t"
        i=$((i + 1))
    done
) &
LOAD_PID=$!

move() {  # name, target broker, extra reassign arguments
    local name=$1 to=$2; shift 2
    local start end
    start=$(now)
    "$FERRY" cluster reassign "big:0=$to" --execute "$@" --brokers "$BOOTSTRAP" >/dev/null
    for _ in $(seq 1 36000); do
        [ "$(describe)" = "$to $to $to" ] && break
        sleep 0.5
    done
    end=$(now)
    echo "$name $start $end" >>"$WORK/moves"
    python3 -c "print('$name${THROTTLE_NOTE:-}: big-0 moved to broker $to in %.1f s (%.0f MB/s)' % ($end - $start, $SIZE / 1e6 / ($end - $start)))"
    sleep $((WINDOW * 3))
}

sleep $((WINDOW * 3))
TO=$(( FROM % 3 + 1 ))
move "unthrottled" "$TO"
if [ -n "$THROTTLE" ]; then
    NEXT=$(( TO % 3 + 1 ))
    [ "$NEXT" = "$FROM" ] && NEXT=$(( NEXT % 3 + 1 ))
    THROTTLE_NOTE=" (--throttle $THROTTLE B/s)" move "throttled" "$NEXT" --throttle "$THROTTLE"
fi
touch "$WORK/stop"
wait "$LOAD_PID" 2>/dev/null || true
LOAD_PID=

echo "load: acks=all, replication factor 3, ${LOAD_RATE} records/s of 1 KiB offered (0: unlimited), ${WINDOW}-s windows"
python3 - "$WORK" <<'PY'
import glob, json, os, sys
work = sys.argv[1]
moves = [l.rsplit(" ", 2) for l in open(os.path.join(work, "moves")).read().splitlines() if l.strip()]
windows = []
for t in glob.glob(os.path.join(work, "w*.t")):
    start, end = map(float, open(t).read().split())
    try:
        lines = [l for l in open(t[:-2] + ".json") if l.strip().startswith("{")]
        d = json.loads(lines[-1])
    except (OSError, IndexError, ValueError):
        continue
    windows.append((start, end, d))
windows.sort(key=lambda w: w[0])
def phase(name, ws):
    if not ws:
        print(f"  {name:<28} (no complete window)")
        return
    records = sum(d["records"] for _, _, d in ws)
    seconds = sum(d["seconds"] for _, _, d in ws)
    errors = sum(d["errors"] for _, _, d in ws)
    p99 = [d["latency_ms"]["p99"] for _, _, d in ws if d.get("latency_ms")]
    print(f"  {name:<28} {records / seconds:>9.0f} rec/s  p99 worst {max(p99):>7.2f} ms  mean {sum(p99) / len(p99):>7.2f} ms  "
          f"({len(ws)} windows, {errors} errors)")
    if os.environ.get("VERBOSE"):
        print("      p99 per window (ms):", " ".join(f"{p:.0f}" for p in p99))
edges = [(name, float(s), float(e)) for name, s, e in moves]
first = edges[0][1]
phase("before any move", [w for w in windows if w[1] <= first])
for i, (name, s, e) in enumerate(edges):
    nxt = edges[i + 1][1] if i + 1 < len(edges) else float("inf")
    phase(f"during the {name} move", [w for w in windows if w[0] < e and w[1] > s])
    phase(f"after the {name} move", [w for w in windows if w[0] >= e and w[1] <= nxt])
PY
