"""kafka-python (3.x) scenarios against a running ferry broker.

Run by crates/ferry/tests/kafka_python.rs as

    python kafka_python_suite.py SCENARIO BOOTSTRAP TOPIC

Each scenario asserts what a user would check and prints one JSON object on
its last stdout line; the Rust test checks it (and reads the same records
with librdkafka). A failed assertion exits non-zero with a traceback.
Every wait is bounded by DEADLINE_S.
"""

import json
import sys
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka import codec

DEADLINE_S = 30


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def producer(bootstrap, **extra):
    config = dict(
        bootstrap_servers=bootstrap,
        client_id="ferry-e2e-python",
        acks="all",
        request_timeout_ms=30000,
        retries=0,
        # Ordering of pipelined requests is checked by its own Rust test.
        max_in_flight_requests_per_connection=1,
    )
    config.update(extra)
    return KafkaProducer(**config)


def consumer(bootstrap, **extra):
    config = dict(
        bootstrap_servers=bootstrap,
        client_id="ferry-e2e-python",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=30000,
    )
    config.update(extra)
    return KafkaConsumer(**config)


def admin(bootstrap):
    return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="ferry-e2e-python",
                            request_timeout_ms=30000)


def read_until(cons, tp, count):
    """Polls until `count` records of `tp` arrived (bounded by DEADLINE_S)."""
    out = []
    end = time.monotonic() + DEADLINE_S
    for _ in range(100000):
        if len(out) >= count or time.monotonic() > end:
            break
        batch = cons.poll(timeout_ms=500)
        out.extend(batch.get(tp, []))
    assert len(out) >= count, "only %d of %d records arrived" % (len(out), count)
    return out


def codecs_available():
    out = ["gzip"]
    if codec.has_snappy():
        out.append("snappy")
    if codec.has_lz4():
        out.append("lz4")
    if codec.has_zstd():
        out.append("zstd")
    return out


def scenario_roundtrip(bootstrap, topic):
    """Per codec: produce keyed records with headers to its own partition,
    read them back with kafka-python; report what was written."""
    codecs = codecs_available()
    adm = admin(bootstrap)
    adm.create_topics({topic: {"num_partitions": len(codecs), "replication_factor": 1}})
    adm.close()
    written = {}
    for partition, name in enumerate(codecs):
        prod = producer(bootstrap, compression_type=name, linger_ms=20)
        futures = []
        records = []
        for i in range(50):
            key = ("%s-key-%d" % (name, i)).encode()
            value = ("%s value %d %s" % (name, i, "z" * (i % 30))).encode()
            headers = [("codec", name.encode()), ("seq", str(i).encode())]
            futures.append(prod.send(topic, key=key, value=value, headers=headers,
                                     partition=partition))
            records.append((key, value, headers))
        offsets = [f.get(timeout=DEADLINE_S).offset for f in futures]
        assert offsets == list(range(50)), "%s: offsets %r" % (name, offsets)
        prod.close()

        tp = TopicPartition(topic, partition)
        cons = consumer(bootstrap)
        cons.assign([tp])
        cons.seek_to_beginning(tp)
        got = read_until(cons, tp, 50)
        cons.close()
        assert [r.offset for r in got] == list(range(50)), "%s: read offsets" % name
        for r, (key, value, headers) in zip(got, records):
            assert r.key == key, (name, r.key, key)
            assert r.value == value, (name, r.value, value)
            assert list(r.headers) == headers, (name, r.headers, headers)
        written[name] = {
            "partition": partition,
            "records": [[k.decode(), v.decode(), [[hk, hv.decode()] for hk, hv in h]]
                        for k, v, h in records],
        }
    return {"codecs": codecs, "written": written}


def scenario_read_rdkafka(bootstrap, topic):
    """Reads what the Rust test produced with librdkafka (partition 0)."""
    tp = TopicPartition(topic, 0)
    cons = consumer(bootstrap)
    cons.assign([tp])
    cons.seek_to_beginning(tp)
    end = cons.end_offsets([tp])[tp]
    got = read_until(cons, tp, end)
    cons.close()
    return {"records": [[r.offset, r.key.decode() if r.key is not None else None,
                         r.value.decode() if r.value is not None else None,
                         [[k, v.decode() if v is not None else None] for k, v in r.headers]]
                        for r in got]}


def scenario_seek(bootstrap, topic):
    prod = producer(bootstrap)
    for i in range(20):
        prod.send(topic, key=b"k", value=("v%d" % i).encode(), partition=0)
    prod.flush(timeout=DEADLINE_S)
    prod.close()
    tp = TopicPartition(topic, 0)
    cons = consumer(bootstrap)
    cons.assign([tp])
    assert cons.beginning_offsets([tp])[tp] == 0
    assert cons.end_offsets([tp])[tp] == 20
    cons.seek(tp, 15)
    got = read_until(cons, tp, 5)
    assert [r.offset for r in got[:5]] == [15, 16, 17, 18, 19], [r.offset for r in got]
    assert [r.value for r in got[:5]] == [("v%d" % i).encode() for i in range(15, 20)]
    cons.seek(tp, 3)
    got = read_until(cons, tp, 1)
    assert got[0].offset == 3 and got[0].value == b"v3", (got[0].offset, got[0].value)
    assert cons.position(tp) >= 4
    cons.close()
    return {"ok": True}


def scenario_admin(bootstrap, topic):
    adm = admin(bootstrap)
    other = topic + "-other"
    adm.create_topics({
        topic: {"num_partitions": 3, "replication_factor": 1,
                "configs": {"retention.ms": "86400000"}},
        other: {"num_partitions": 1, "replication_factor": 1},
    })
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end and not {topic, other} <= set(adm.list_topics()):
        time.sleep(0.2)
    names = adm.list_topics()
    assert topic in names and other in names, names
    described = {t["name"]: t for t in adm.describe_topics([topic])}
    assert len(described[topic]["partitions"]) == 3, described

    adm.delete_topics([topic])
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end and topic in adm.list_topics():
        time.sleep(0.2)
    names = adm.list_topics()
    assert topic not in names, names
    assert other in names, names
    adm.close()
    return {"remaining": sorted(n for n in names if n.startswith(topic))}


def scenario_offsets_for_times(bootstrap, topic):
    base = int(time.time() * 1000) - 600000
    prod = producer(bootstrap)
    for i in range(10):
        prod.send(topic, key=b"k", value=("t%d" % i).encode(), partition=0,
                  timestamp_ms=base + i * 1000)
    prod.flush(timeout=DEADLINE_S)
    prod.close()
    tp = TopicPartition(topic, 0)
    cons = consumer(bootstrap)
    cons.assign([tp])
    found = cons.offsets_for_times({tp: base + 4500})[tp]
    assert found is not None and found.offset == 5, found
    assert found.timestamp == base + 5000, found
    first = cons.offsets_for_times({tp: base - 1})[tp]
    assert first is not None and first.offset == 0, first
    none = cons.offsets_for_times({tp: base + 100000})[tp]
    assert none is None, none
    cons.seek(tp, found.offset)
    got = read_until(cons, tp, 5)
    assert [r.value for r in got[:5]] == [("t%d" % i).encode() for i in range(5, 10)]
    assert [r.timestamp for r in got[:5]] == [base + i * 1000 for i in range(5, 10)]
    cons.close()
    return {"offset": found.offset}


def scenario_configs(bootstrap, topic):
    """IncrementalAlterConfigs (kafka-python's default) keeps other
    overrides; a bad value is refused with INVALID_CONFIG (40) and changes
    nothing; DescribeCluster names this broker."""
    from kafka.admin import ConfigResource, ConfigResourceType

    adm = admin(bootstrap)
    adm.create_topics({topic: {"num_partitions": 1, "replication_factor": 1,
                               "configs": {"cleanup.policy": "compact"}}})

    def overrides():
        described = adm.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        return {k: v["value"] for k, v in described["topic"][topic].items()}

    result = adm.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                               configs={"retention.ms": "5000000"})])
    assert result["topic"][topic] == "OK", result
    now = overrides()
    assert now.get("retention.ms") == "5000000", now
    assert now.get("cleanup.policy") == "compact", now

    result = adm.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                               configs={"retention.ms": "not-a-number"})])
    assert "Error 40" in str(result["topic"][topic]), result
    assert overrides().get("retention.ms") == "5000000", overrides()

    cluster = adm.describe_cluster()
    brokers = [(b["broker_id"], b["host"], b["port"]) for b in cluster["brokers"]]
    host, port = bootstrap.rsplit(":", 1)
    assert brokers == [(1, host, int(port))], cluster
    assert cluster["controller_id"] == 1, cluster
    assert cluster["cluster_id"], cluster
    adm.close()
    return {"cluster_id": cluster["cluster_id"]}


def scenario_list_offsets(bootstrap, topic):
    """ListOffsets through the admin client: earliest, latest and
    max-timestamp (-3), whose record need not be the last one."""
    from kafka.admin import OffsetSpec

    base = int(time.time() * 1000) - 600000
    stamps = [base, base + 5000, base + 1000, base + 2000]
    prod = producer(bootstrap)
    for i, ts in enumerate(stamps):
        prod.send(topic, key=b"k", value=("m%d" % i).encode(), partition=0, timestamp_ms=ts)
    prod.flush(timeout=DEADLINE_S)
    prod.close()
    tp = TopicPartition(topic, 0)
    adm = admin(bootstrap)
    earliest = adm.list_partition_offsets({tp: OffsetSpec.EARLIEST})[tp]
    latest = adm.list_partition_offsets({tp: OffsetSpec.LATEST})[tp]
    newest = adm.list_partition_offsets({tp: OffsetSpec.MAX_TIMESTAMP})[tp]
    adm.close()
    assert earliest.offset == 0, earliest
    assert latest.offset == 4, latest
    assert newest.offset == 1 and newest.timestamp == base + 5000, newest
    return {"max_timestamp_offset": newest.offset}


def scenario_log_dirs(bootstrap, topic):
    """DescribeLogDirs (kafka-log-dirs.sh, admin consoles): the broker's data
    directory with every replica's size; asked for one partition, only that
    one. Returns what was reported for the topic."""
    prod = producer(bootstrap)
    for i in range(20):
        prod.send(topic, value=b"x" * 100, partition=i % 2)
    prod.flush(timeout=DEADLINE_S)
    prod.close()
    adm = admin(bootstrap)
    every = adm.describe_log_dirs()
    assert [b["broker"] for b in every] == [1], every
    dirs = every[0]["log_dirs"]
    assert len(dirs) == 1, dirs
    d = dirs[0]
    assert d["error_code"] == 0 and d["log_dir"], d
    assert d["total_bytes"] > 0 and 0 <= d["usable_bytes"] <= d["total_bytes"], d
    sizes = {p["partition_index"]: p["partition_size"]
             for t in d["topics"] if t["name"] == topic for p in t["partitions"]}
    lags = [p["offset_lag"] for t in d["topics"] for p in t["partitions"]]
    one = adm.describe_log_dirs({topic: [1]})[0]["log_dirs"][0]["topics"]
    adm.close()
    assert all(lag == 0 for lag in lags), lags
    assert [(t["name"], [p["partition_index"] for p in t["partitions"]]) for t in one] == [(topic, [1])], one
    return {"sizes": {str(k): v for k, v in sorted(sizes.items())}, "log_dir": d["log_dir"]}


def scenario_acls(bootstrap, topic):
    """ACL requests on a broker without an authorizer: SECURITY_DISABLED (54),
    as Kafka answers, for describe, for each creation and for each filter."""
    from kafka.admin import (ACL, ACLFilter, ACLOperation, ACLPermissionType,
                             ACLResourcePatternType, ResourcePattern,
                             ResourcePatternFilter, ResourceType)
    from kafka.errors import SecurityDisabledError

    adm = admin(bootstrap)
    pattern = ResourcePattern(ResourceType.TOPIC, topic, ACLResourcePatternType.LITERAL)
    acl = ACL("User:alice", "*", ACLOperation.READ, ACLPermissionType.ALLOW, pattern)
    any_filter = ACLFilter("User:alice", "*", ACLOperation.ANY, ACLPermissionType.ANY,
                           ResourcePatternFilter(ResourceType.TOPIC, topic,
                                                 ACLResourcePatternType.LITERAL))
    errors = {}
    try:
        adm.describe_acls(any_filter)
        errors["describe"] = None
    except SecurityDisabledError as e:
        errors["describe"] = type(e).errno
    created = adm.create_acls([acl])
    assert created["succeeded"] == [], created
    # kafka-python lists the error classes of the failed creations.
    errors["create"] = [err.errno for err in created["failed"]]
    deleted = adm.delete_acls([any_filter])
    errors["delete"] = [err.errno for _, matched, err in deleted if not matched]
    adm.close()
    return errors


SCENARIOS = {
    "roundtrip": scenario_roundtrip,
    "read_rdkafka": scenario_read_rdkafka,
    "seek": scenario_seek,
    "admin": scenario_admin,
    "offsets_for_times": scenario_offsets_for_times,
    "configs": scenario_configs,
    "list_offsets": scenario_list_offsets,
    "log_dirs": scenario_log_dirs,
    "acls": scenario_acls,
}


def main():
    scenario, bootstrap, topic = sys.argv[1:4]
    result = SCENARIOS[scenario](bootstrap, topic)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
