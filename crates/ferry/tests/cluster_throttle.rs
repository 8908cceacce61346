//! Replication throttling during a reassignment, as Kafka's
//! `kafka-reassign-partitions --throttle` sets it up: the broker rates
//! `leader.replication.throttled.rate` / `follower.replication.throttled.rate`
//! (IncrementalAlterConfigs on the cluster-wide broker resource) and the topic
//! lists `leader.replication.throttled.replicas` (the current replica) /
//! `follower.replication.throttled.replicas` (the new one).
//!
//! What a user checks: the move still completes (the new replica joins the ISR
//! and takes over, every acknowledged record is readable from it), it is
//! throttled (the brokers report held-back fetches, and the copy takes at least
//! about what the bytes and the rate allow), and malformed lists are refused
//! with INVALID_CONFIG.

mod cluster_support;
mod reliability;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_support::*;
use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, ApiKey, BrokerId,
    DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use reliability::*;

const TOPIC: &str = "throttled";
/// Records of `VALUE_BYTES` each: about 6 MB in the partition that moves.
const RECORDS: usize = 6_000;
const VALUE_BYTES: usize = 1_000;
/// The throttle on both sides, bytes per second.
const RATE: u64 = 512 * 1024;
const INVALID_CONFIG: i16 = 40;
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// IncrementalAlterConfigs SET of `configs` on one resource: its error code.
fn set_configs(addr: &str, resource_type: i8, name: &str, configs: &[(&str, &str)]) -> i16 {
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(str_bytes(name))
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        AlterableConfig::default()
                            .with_name(str_bytes(k))
                            .with_config_operation(0)
                            .with_value(Some(str_bytes(v)))
                    })
                    .collect(),
            ),
    ]);
    let response: IncrementalAlterConfigsResponse =
        call(addr, ApiKey::IncrementalAlterConfigs, 0, &request);
    assert_eq!(response.responses.len(), 1, "{response:?}");
    response.responses[0].error_code
}

/// A config's value as the broker at `addr` describes it.
fn describe(addr: &str, resource_type: i8, name: &str, key: &str) -> Option<String> {
    let request =
        DescribeConfigsRequest::default().with_resources(vec![DescribeConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(str_bytes(name))
            .with_configuration_keys(Some(vec![str_bytes(key)]))]);
    let response: DescribeConfigsResponse = call(addr, ApiKey::DescribeConfigs, 1, &request);
    let result = response.results.first()?;
    if result.error_code != 0 {
        return None;
    }
    result
        .configs
        .iter()
        .find(|c| c.name.as_str() == key)
        .and_then(|c| c.value.as_ref().map(|v| v.to_string()))
}

/// Waits until every broker describes `key` of the resource as `value` (each
/// applies the metadata log on its own schedule).
fn wait_described(cluster: &Cluster, resource: (i8, Option<&str>), key: &str, value: &str) {
    let end = Instant::now() + Duration::from_secs(30);
    for (id, node) in &cluster.nodes {
        let name = resource.1.map_or(id.to_string(), str::to_string);
        loop {
            let seen = describe(&node.addr, resource.0, &name, key);
            if seen.as_deref() == Some(value) {
                break;
            }
            assert!(
                Instant::now() < end,
                "broker {id}: {key} of {name} is {seen:?}, waited for {value}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// AlterPartitionReassignments of partition 0 of `TOPIC`: its error code.
fn reassign(addr: &str, target: &[i32]) -> i16 {
    let request = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![ReassignableTopic::default()
            .with_name(TopicName(str_bytes(TOPIC)))
            .with_partitions(vec![ReassignablePartition::default()
                .with_partition_index(0)
                .with_replicas(Some(
                    target.iter().copied().map(BrokerId).collect(),
                ))])]);
    let response: AlterPartitionReassignmentsResponse =
        call(addr, ApiKey::AlterPartitionReassignments, 0, &request);
    assert_eq!(response.error_code, 0, "{response:?}");
    response
        .responses
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
        .next()
        .expect("one partition")
}

/// The replicas of `TOPIC`-0 as the broker at `addr` reports them.
fn replicas(addr: &str) -> Option<Vec<i32>> {
    replicas_of(addr, TOPIC)
}

/// The replicas of `topic`-0 as the broker at `addr` reports them.
fn replicas_of(addr: &str, topic: &str) -> Option<Vec<i32>> {
    let metadata = raw_metadata(addr, &[topic])?;
    let topic = metadata.topics.iter().find(|t| t.error_code == 0)?;
    let p = topic.partitions.iter().find(|p| p.partition_index == 0)?;
    Some(p.replica_nodes.iter().map(|r| r.0).collect())
}

/// Bytes of `TOPIC`-0's segments on one node (0 before it has the partition).
fn stored_bytes(cluster: &Cluster, id: i32) -> u64 {
    let dir = cluster.data_dir(id).join(format!("{TOPIC}-0"));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// The HTTP address a broker logged (`http_bound=`).
fn http_addr(proc: &Proc) -> String {
    proc.stderr()
        .lines()
        .find_map(|l| {
            l.split("http_bound=")
                .nth(1)
                .and_then(|a| a.split_whitespace().next())
                .map(str::to_string)
        })
        .expect("http_bound in the broker log")
}

/// `series` (name and labels) from the broker's /metrics; 0 when absent.
fn metric(proc: &Proc, series: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(http_addr(proc)).expect("connect to /metrics");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map_or(0, |v| v.trim().parse().expect("a number"))
}

fn value(sequence: usize) -> String {
    let mut v = format!("r-{sequence:09}-");
    v.extend(std::iter::repeat_n('.', VALUE_BYTES - v.len()));
    v
}

/// A ~6 MB partition on one broker moves to another under a 512 KiB/s
/// throttle on both sides: it completes, nothing acknowledged is lost, and the
/// copy was held back by the throttle.
#[test]
fn a_throttled_reassignment_completes_at_about_the_rate() {
    // Two samples of a second: the rate is measured over 1-2 s, so the burst a
    // fresh meter lets through is about a second's worth (Kafka's default, 11,
    // would let ten seconds' worth through: the whole partition).
    let cluster = Cluster::start_with(3, &["--set", "replication.quota.window.num=2"]);
    let bootstrap = cluster.bootstrap();
    let addr = bootstrap.split(',').next().expect("a broker").to_string();
    create_topic_everywhere(&bootstrap, TOPIC, 1, 1, &[]);
    let before = replicas(&addr).expect("replicas");
    assert_eq!(before.len(), 1, "{before:?}");
    let a = before[0];
    let c = (1..=3).find(|id| *id != a).expect("another broker");

    let acks = Arc::new(Acks::default());
    let producer = producer(&bootstrap, "all", acks.clone());
    for i in 0..RECORDS {
        let v = value(i);
        let mut record = BaseRecord::<(), str>::to(TOPIC).partition(0).payload(&v);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(DEADLINE).expect("flush");
    // In offset order: flush() polls for delivery reports beside the producer's
    // own thread, so they may be recorded out of order.
    let mut acked = acks.of_partition(0);
    acked.sort();
    assert_eq!(acked.len(), RECORDS, "every record acknowledged");
    let size = stored_bytes(&cluster, a);
    assert!(
        size >= (RECORDS * VALUE_BYTES) as u64,
        "{size} bytes stored"
    );

    // What `kafka-reassign-partitions --throttle` sets before the move.
    let rate = RATE.to_string();
    assert_eq!(
        set_configs(
            &addr,
            RESOURCE_BROKER,
            "",
            &[
                ("leader.replication.throttled.rate", &rate),
                ("follower.replication.throttled.rate", &rate),
            ],
        ),
        0
    );
    let leader_list = format!("0:{a}");
    let follower_list = format!("0:{c}");
    assert_eq!(
        set_configs(
            &addr,
            RESOURCE_TOPIC,
            TOPIC,
            &[
                ("leader.replication.throttled.replicas", &leader_list),
                ("follower.replication.throttled.replicas", &follower_list),
            ],
        ),
        0
    );
    for rate_name in [
        "leader.replication.throttled.rate",
        "follower.replication.throttled.rate",
    ] {
        wait_described(&cluster, (RESOURCE_BROKER, None), rate_name, &rate);
    }
    wait_described(
        &cluster,
        (RESOURCE_TOPIC, Some(TOPIC)),
        "leader.replication.throttled.replicas",
        &leader_list,
    );
    wait_described(
        &cluster,
        (RESOURCE_TOPIC, Some(TOPIC)),
        "follower.replication.throttled.replicas",
        &follower_list,
    );

    let started = Instant::now();
    assert_eq!(reassign(&addr, &[c]), 0);
    // (elapsed, bytes on the new replica) while the copy runs.
    let mut progress: Vec<(Duration, u64)> = Vec::new();
    let end = started + Duration::from_secs(90);
    let copied = loop {
        let bytes = stored_bytes(&cluster, c);
        progress.push((started.elapsed(), bytes));
        let done = bootstrap
            .split(',')
            .all(|addr| replicas(addr) == Some(vec![c]));
        if done {
            break started.elapsed();
        }
        assert!(
            Instant::now() < end,
            "the throttled move did not complete in 90 s; progress {progress:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "{size} bytes moved from {a} to {c} under {RATE} B/s in {copied:?}; progress: {:?}",
        progress
            .iter()
            .step_by(5)
            .map(|(t, b)| (t.as_millis(), *b))
            .collect::<Vec<_>>()
    );
    // The new replica leads, alone in the ISR.
    wait_for(&bootstrap, TOPIC, 0, "the new replica leading", |l, isr| {
        l == c && isr == [c]
    });

    // Every acknowledged record is readable from the new leader, where it was
    // acknowledged.
    let stored = read_partition(&cluster.nodes[&c].addr, TOPIC, 0).expect("read back");
    let stored: Vec<(i64, String)> = stored
        .iter()
        .map(|m| {
            let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            (m.offset(), v)
        })
        .collect();
    assert_eq!(stored.len(), acked.len());
    let differ = stored.iter().zip(&acked).position(|(s, a)| s != a);
    assert_eq!(
        differ,
        None,
        "the new leader's records differ from those acknowledged: stored {:?} acked {:?}",
        differ.map(|i| (&stored[i].0, &stored[i].1[..12])),
        differ.map(|i| (&acked[i].0, &acked[i].1[..12])),
    );
    assert!(
        stored_bytes(&cluster, c) >= size,
        "the new replica holds every byte"
    );

    // Throttled: the brokers held the new replica back (a count, not a time),
    // and every byte it copied went through the throttle on both sides.
    let held_back = metric(
        &cluster.nodes[&c],
        "ferry_replication_throttled_total{side=\"follower\"}",
    ) + metric(
        &cluster.nodes[&a],
        "ferry_replication_throttled_total{side=\"leader\"}",
    );
    assert!(held_back > 0, "no fetch was held back by the throttle");
    assert!(
        metric(
            &cluster.nodes[&c],
            "ferry_replication_throttled_bytes_total{side=\"follower\"}"
        ) >= size
    );
    assert!(
        metric(
            &cluster.nodes[&a],
            "ferry_replication_throttled_bytes_total{side=\"leader\"}"
        ) >= size
    );
    // Coarse bounds only a throttle explains (a slow machine only makes the
    // copy slower): a second in, the new replica has clearly less than the
    // partition, and the whole copy took at least a few seconds (about 1 MB
    // goes through at once; the rest at 512 KiB/s would take ~10 s).
    if let Some((t, bytes)) = progress
        .iter()
        .take_while(|(t, _)| *t <= Duration::from_millis(1500))
        .last()
    {
        assert!(
            *bytes < size * 6 / 10,
            "{bytes} of {size} bytes copied after {t:?} under {RATE} B/s"
        );
    }
    assert!(
        copied >= Duration::from_secs(3),
        "{size} bytes copied in {copied:?} under {RATE} B/s"
    );
}

/// Throttled-replica lists and rates are validated as Kafka does:
/// `partitionId:brokerId` pairs or `*`; anything else is INVALID_CONFIG. Then
/// `ferry cluster decommission --execute --throttle` sets a throttle for its
/// moves, waits for them, and removes it.
#[test]
fn malformed_throttles_get_invalid_config_and_the_cli_throttles_a_move() {
    let cluster = Cluster::start(1);
    let bootstrap = cluster.bootstrap();
    let addr = bootstrap.split(',').next().expect("a broker").to_string();
    create_topic_everywhere(&bootstrap, TOPIC, 2, 1, &[]);
    for list in [
        "leader.replication.throttled.replicas",
        "follower.replication.throttled.replicas",
    ] {
        for bad in ["0", "0:x", "x:1", "0:1:2", "*,0:1", "0:1,", "-1:1", "all"] {
            assert_eq!(
                set_configs(&addr, RESOURCE_TOPIC, TOPIC, &[(list, bad)]),
                INVALID_CONFIG,
                "{list}={bad}"
            );
        }
        for good in ["0:1,1:2", " 1:3 ", "*", ""] {
            assert_eq!(
                set_configs(&addr, RESOURCE_TOPIC, TOPIC, &[(list, good)]),
                0,
                "{list}={good}"
            );
        }
    }
    for rate in [
        "leader.replication.throttled.rate",
        "follower.replication.throttled.rate",
    ] {
        for bad in ["-1", "fast", ""] {
            assert_eq!(
                set_configs(&addr, RESOURCE_BROKER, "", &[(rate, bad)]),
                INVALID_CONFIG,
                "{rate}={bad}"
            );
        }
        assert_eq!(
            set_configs(&addr, RESOURCE_BROKER, "", &[(rate, "1048576")]),
            0
        );
    }
    // A topic created with a bad list is refused too.
    assert_eq!(
        try_create_topic(
            &bootstrap,
            "bad-throttle",
            1,
            1,
            &[("leader.replication.throttled.replicas", "0-1")],
        ),
        Err(rdkafka::types::RDKafkaErrorCode::InvalidConfig)
    );
    // The CLI: every partition of one broker moves, under a throttle.
    let moved = "cli-moved";
    create_topic_everywhere(&bootstrap, moved, 1, 1, &[]);
    let from = leader_and_isr(&bootstrap, moved, 0).expect("leader").0;
    let acks = Arc::new(Acks::default());
    let producer = producer(&bootstrap, "all", acks.clone());
    for i in 0..500 {
        let v = value(i);
        let record = BaseRecord::<(), str>::to(moved).partition(0).payload(&v);
        producer.send(record).map_err(|(e, _)| e).expect("send");
    }
    producer.flush(DEADLINE).expect("flush");
    assert_eq!(acks.of_partition(0).len(), 500);
    // It waits for the moves: bounded here, in case they never finish.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["cluster", "decommission", &from.to_string(), "--execute"])
        .args(["--throttle", "1000000", "--brokers", &bootstrap, "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ferry");
    let end = Instant::now() + Duration::from_secs(90);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferry cluster decommission --throttle did not finish in 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("ferry output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"throttle\": 1000000"), "{stdout}");
    // Done when the command returns: the partition is elsewhere, whole.
    let now = replicas_of(&addr, moved);
    assert!(now.as_ref().is_some_and(|r| !r.contains(&from)), "{now:?}");
    let read = read_partition(&bootstrap, moved, 0).expect("read back");
    assert_eq!(read.len(), 500);
    // The throttle was in force (the new replica's fetches counted toward it)
    // and is gone.
    let counted: u64 = cluster
        .nodes
        .values()
        .map(|n| {
            metric(
                n,
                "ferry_replication_throttled_bytes_total{side=\"follower\"}",
            )
        })
        .sum();
    assert!(counted > 0, "no fetch counted toward the throttle");
    for (id, node) in &cluster.nodes {
        for rate in [
            "leader.replication.throttled.rate",
            "follower.replication.throttled.rate",
        ] {
            assert_eq!(
                describe(&node.addr, RESOURCE_BROKER, &id.to_string(), rate).as_deref(),
                Some("9223372036854775807"),
                "broker {id}: {rate}"
            );
        }
    }
    for topic in [TOPIC, moved] {
        for list in [
            "leader.replication.throttled.replicas",
            "follower.replication.throttled.replicas",
        ] {
            assert_eq!(
                describe(&addr, RESOURCE_TOPIC, topic, list).as_deref(),
                Some(""),
                "{topic}: {list}"
            );
        }
    }
}
