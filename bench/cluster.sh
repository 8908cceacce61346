#!/usr/bin/env bash
# Replication cost and failover time on a three-node ferry cluster on this
# machine (every node a broker and a voter, each with its own temporary data
# directory):
#
#   1. acks=all produce throughput and ack latency (ferry-bench produce,
#      librdkafka) to a topic with replication factor 1 and to one with
#      replication factor 3 and min.insync.replicas=2, same tool, same settings;
#   2. the time from SIGKILL of a partition's leader to the first acks=all
#      produce to that partition that succeeds (ferry-bench produce with a
#      short message timeout, retried until one record is acknowledged).
#
# Usage: bench/cluster.sh   (COUNT=records per run, default 300000; RECORD_SIZE
#                            default 1024; PRODUCERS default 4; RATE, records/s of
#                            the latency runs, default 20000; LATENCY_ONLY=1 skips
#                            the throughput runs)
# Binaries: $CARGO_TARGET_DIR/release/{ferry,ferry-bench}, built unless NO_BUILD=1.
set -euo pipefail

COUNT=${COUNT:-300000}
RECORD_SIZE=${RECORD_SIZE:-1024}
PRODUCERS=${PRODUCERS:-4}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release -q -p ferry -p ferry-bench)
fi
FERRY=$TARGET/release/ferry
BENCH=$TARGET/release/ferry-bench

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

declare -A KAFKA CTRL
for n in 1 2 3; do KAFKA[$n]=$(free_port); CTRL[$n]=$(free_port); done
VOTERS="1@127.0.0.1:${CTRL[1]},2@127.0.0.1:${CTRL[2]},3@127.0.0.1:${CTRL[3]}"
BOOTSTRAP="127.0.0.1:${KAFKA[1]},127.0.0.1:${KAFKA[2]},127.0.0.1:${KAFKA[3]}"

start_node() {
    local n=$1
    FERRY_LOG=warn "$FERRY" serve --node-id "$n" --controller-voters "$VOTERS" \
        --controller-addr "127.0.0.1:${CTRL[$n]}" --data-dir "$WORK/node$n" \
        --kafka-addr "127.0.0.1:${KAFKA[$n]}" --http-addr 127.0.0.1:0 \
        --set broker.session.timeout.ms=3000 --set broker.heartbeat.interval.ms=500 \
        >"$WORK/node$n.out" 2>>"$WORK/node$n.err" &
    PIDS[$n]=$!
}
for n in 1 2 3; do start_node "$n"; done
for n in 1 2 3; do
    for _ in $(seq 1 100); do grep -q "kafka listening" "$WORK/node$n.out" 2>/dev/null && break; sleep 0.1; done
done
# Wait until every broker is registered.
for _ in $(seq 1 100); do
    [ "$("$FERRY" cluster info --brokers "$BOOTSTRAP" --json 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["brokers"]))' 2>/dev/null || echo 0)" = 3 ] && break
    sleep 0.2
done

"$FERRY" topic create rf1 --partitions 1 --replication-factor 1 --brokers "$BOOTSTRAP" >/dev/null
"$FERRY" topic create rf3 --partitions 1 --replication-factor 3 -c min.insync.replicas=2 --brokers "$BOOTSTRAP" >/dev/null
sleep 2

run() {
    "$BENCH" produce --brokers "$BOOTSTRAP" --topic "$1" --count "$COUNT" --record-size "$RECORD_SIZE" \
        --acks all --producers "$PRODUCERS" --linger-ms 5 --json 2>/dev/null
}
summary() {
    python3 -c 'import json,sys
d=json.load(sys.stdin); l=d.get("latency_ms") or d.get("ack_latency_ms") or {}
print("%-28s %10.0f rec/s %8.1f MB/s   p50 %6.2f ms  p99 %6.2f ms  p99.9 %6.2f ms" % (sys.argv[1], d["records_per_sec"], d["mb_per_sec"], l.get("p50",-1), l.get("p99",-1), l.get("p99.9", l.get("p999",-1))))' "$1"
}
# The latency runs come right after the throughput runs, whose writeback can
# still slow the leader's fsyncs; LATENCY_ONLY=1 skips the throughput runs.
if [ "${LATENCY_ONLY:-0}" != 1 ]; then
    echo "acks=all, $PRODUCERS producers, $COUNT records of $RECORD_SIZE B, unlimited rate (throughput):"
    run rf1 | summary "replication factor 1"
    run rf3 | summary "replication factor 3, min.insync 2"
fi
echo "acks=all, 1 producer at ${RATE:-20000} records/s (ack latency):"
RATE_ARGS="--producers 1 --rate ${RATE:-20000}"
rated() {
    "$BENCH" produce --brokers "$BOOTSTRAP" --topic "$1" --count "$COUNT" --record-size "$RECORD_SIZE" \
        --acks all $RATE_ARGS --linger-ms 1 --duration 20 --json 2>/dev/null
}
rated rf1 | summary "replication factor 1"
rated rf3 | summary "replication factor 3, min.insync 2"

# Failover: kill the leader of rf3-0, then time until an acks=all produce succeeds.
LEADER=$("$FERRY" topic describe rf3 --brokers "$BOOTSTRAP" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["partitions"][0]["leader"])')
kill -9 "${PIDS[$LEADER]}"
KILLED=$(date +%s.%N)
for _ in $(seq 1 300); do
    if timeout 3 "$BENCH" produce --brokers "$BOOTSTRAP" --topic rf3 --count 1 --acks all --duration 2 --json 2>/dev/null \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d["records"] >= 1 and d["errors"] == 0 else 1)' 2>/dev/null; then
        break
    fi
done
DONE=$(date +%s.%N)
python3 -c "print('leader (node $LEADER) killed -> first acks=all produce acknowledged: %.2f s' % ($DONE - $KILLED))"
