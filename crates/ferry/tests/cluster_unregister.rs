//! Removing a broker for good, as an operator does it with the CLI: a fourth
//! broker (a learner of the metadata quorum) takes a replica, is emptied with
//! `ferry cluster decommission --execute`, stopped, and removed with
//! `ferry cluster unregister` (Kafka's UnregisterBroker). Afterwards no broker
//! lists it, the quorum's leader no longer counts it as a learner, and the
//! cluster goes on serving. Unregistering a broker that still runs does not
//! stick (it registers and joins again, as a Kafka broker does); a voter and an
//! unknown id are refused with Kafka's codes.

mod cluster_support;
mod reliability;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_support::*;
use kafka_protocol::messages::{
    ApiKey, BrokerId, ResponseHeader, UnregisterBrokerRequest, UnregisterBrokerResponse,
};
use kafka_protocol::protocol::{Decodable, HeaderVersion};
use rdkafka::producer::{BaseRecord, Producer};
use reliability::*;
use serde_json::Value;

const TOPIC: &str = "unregister";
const INVALID_REQUEST: i16 = 42;
const BROKER_ID_NOT_REGISTERED: i16 = 102;

/// UnregisterBroker (v0) over a raw connection to `addr`: (code, message).
fn unregister(addr: &str, broker_id: i32) -> (i16, String) {
    let request = UnregisterBrokerRequest::default().with_broker_id(BrokerId(broker_id));
    let mut stream = connect(addr);
    std::io::Write::write_all(
        &mut stream,
        &encode_request(ApiKey::UnregisterBroker, 0, 13, &request),
    )
    .expect("send");
    let frame = read_frame(&mut stream).expect("an answer");
    let mut buf = bytes::Bytes::from(frame);
    let header = ResponseHeader::decode(&mut buf, UnregisterBrokerResponse::header_version(0))
        .expect("header");
    assert_eq!(header.correlation_id, 13);
    let response = UnregisterBrokerResponse::decode(&mut buf, 0).expect("response");
    (
        response.error_code,
        response
            .error_message
            .map(|m| m.to_string())
            .unwrap_or_default(),
    )
}

/// `ferry cluster quorum`: (voters, learners), each sorted.
fn quorum(bootstrap: &str) -> Option<(Vec<i64>, Vec<i64>)> {
    let (ok, out, _) = cli(bootstrap, &["cluster", "quorum"]);
    if !ok {
        return None;
    }
    let v: Value = serde_json::from_str(&out).ok()?;
    let ids = |key: &str| -> Vec<i64> {
        let mut ids: Vec<i64> = v[key]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["node_id"].as_i64()).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    };
    Some((ids("voters"), ids("learners")))
}

/// Waits until `ferry cluster quorum` shows voters 1, 2, 3 and `learners`.
fn wait_for_learners(bootstrap: &str, learners: &[i64]) {
    let end = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < end {
        let seen = quorum(bootstrap);
        if seen
            .as_ref()
            .is_some_and(|(v, l)| v == &[1, 2, 3] && l == learners)
        {
            return;
        }
        last = seen;
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("waited for learners {learners:?}; last answer: {last:?}");
}

/// Every broker id the broker at `addr` names in Metadata: the brokers it
/// lists, and every partition's leader, replicas and ISR of `TOPIC`.
fn named_brokers(addr: &str) -> Option<Vec<i32>> {
    let m = raw_metadata(addr, &[TOPIC])?;
    let mut ids: Vec<i32> = m.brokers.iter().map(|b| b.node_id.0).collect();
    for t in &m.topics {
        for p in &t.partitions {
            ids.push(p.leader_id.0);
            ids.extend(p.replica_nodes.iter().map(|r| r.0));
            ids.extend(p.isr_nodes.iter().map(|r| r.0));
        }
    }
    Some(ids)
}

/// Waits until every broker of `addrs` answers and `check` accepts the ids it names.
fn wait_for_named(addrs: &[String], what: &str, check: impl Fn(&[i32]) -> bool) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: Vec<Option<Vec<i32>>> = addrs.iter().map(|a| named_brokers(a)).collect();
        if seen.iter().all(|s| s.as_deref().is_some_and(&check)) {
            return;
        }
        assert!(
            Instant::now() < end,
            "waited for {what}; brokers name {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The replicas of `TOPIC`-`partition` as the broker at `addr` reports them.
fn replicas(addr: &str, partition: i32) -> Option<Vec<i32>> {
    let m = raw_metadata(addr, &[TOPIC])?;
    let t = m.topics.iter().find(|t| t.error_code == 0)?;
    let p = t
        .partitions
        .iter()
        .find(|p| p.partition_index == partition)?;
    Some(p.replica_nodes.iter().map(|r| r.0).collect())
}

fn produce(bootstrap: &str, from: usize, n: usize) {
    let acks = Arc::new(Acks::default());
    let producer = producer(bootstrap, "all", acks.clone());
    for i in from..from + n {
        let value = format!("v{i}");
        producer
            .send(
                BaseRecord::<(), str>::to(TOPIC)
                    .partition((i % 2) as i32)
                    .payload(&value),
            )
            .map_err(|(e, _)| e)
            .expect("enqueue");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let acked = acks.acked.lock().expect("acks").len();
    assert_eq!(acked, n, "every record acknowledged");
}

#[test]
fn a_decommissioned_broker_is_unregistered_and_leaves_the_quorum() {
    let mut cluster = Cluster::start(3);
    create_topic_everywhere(&cluster.bootstrap(), TOPIC, 2, 2, &[]);
    produce(&cluster.bootstrap(), 0, 20);

    // Broker 4 joins as a learner and takes a replica of partition 0.
    cluster.add_broker(4);
    let bootstrap = cluster.bootstrap();
    let addr1 = cluster.node(1).addr.clone();
    wait_for_learners(&bootstrap, &[4]);
    let before = replicas(&addr1, 0).expect("partition 0");
    let target = format!("{TOPIC}:0=4,{}", before[0]);
    let (ok, out, err) = cli(&bootstrap, &["cluster", "reassign", &target, "--execute"]);
    assert!(ok, "reassign: {out} {err}");
    let end = Instant::now() + Duration::from_secs(60);
    while replicas(&addr1, 0) != Some(vec![4, before[0]]) {
        assert!(
            Instant::now() < end,
            "partition 0 never moved onto broker 4"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    produce(&bootstrap, 20, 20);

    // Emptied with the CLI, as an operator removes a broker.
    let (ok, out, err) = cli(&bootstrap, &["cluster", "decommission", "4", "--execute"]);
    assert!(ok, "decommission: {out} {err}");
    let plan: Value = serde_json::from_str(&out).expect("decommission json");
    assert_eq!(plan["moves"].as_array().map(Vec::len), Some(1), "{plan}");
    let all: Vec<String> = cluster.nodes.values().map(|p| p.addr.clone()).collect();
    wait_for_named(&all, "no replica on broker 4", |ids| {
        ids.iter().filter(|id| **id == 4).count() == 1 // listed as a broker only
    });

    // Unregistered while it still runs, it registers and joins again (as a
    // Kafka broker does on its next heartbeat), and keeps up with the metadata.
    let (code, message) = unregister(&addr1, 4);
    assert_eq!(code, 0, "{message}");
    wait_for_learners(&bootstrap, &[4]);
    // Every broker, 4 included, applies a topic created after the
    // unregistration; then each lists broker 4 only if it registered again.
    create_topic_everywhere(&bootstrap, "after-rejoin", 1, 1, &[]);
    wait_for_named(&all, "broker 4 registered again", |ids| ids.contains(&4));

    // Stopped, then removed for good.
    cluster.node(4).stop();
    let live = cluster.live_bootstrap();
    let live_addrs: Vec<String> = live.split(',').map(str::to_string).collect();
    let (ok, out, err) = cli(&live, &["cluster", "unregister", "4"]);
    assert!(ok, "unregister 4: {out} {err}");
    let done: Value = serde_json::from_str(&out).expect("unregister json");
    assert_eq!(done["broker"], 4, "{done}");
    wait_for_named(&live_addrs, "broker 4 gone", |ids| !ids.contains(&4));
    wait_for_learners(&live, &[]);

    // It is gone from the metadata image: unregistering it again finds no
    // broker 4; a voter and an unknown id are refused.
    let addr2 = cluster.node(2).addr.clone();
    assert_eq!(unregister(&addr2, 4).0, BROKER_ID_NOT_REGISTERED);
    assert_eq!(unregister(&addr2, 99).0, BROKER_ID_NOT_REGISTERED);
    let (code, message) = unregister(&addr2, 3);
    assert_eq!(code, INVALID_REQUEST, "{message}");
    assert!(message.contains("voter"), "{message}");
    let (ok, _, err) = cli(&live, &["cluster", "unregister", "4"]);
    assert!(
        !ok && err.contains("not registered"),
        "unregister 4 again: {err}"
    );
    let (ok, _, err) = cli(&live, &["cluster", "unregister", "2"]);
    assert!(!ok && err.contains("voter"), "unregister 2: {err}");
    assert_eq!(quorum(&live).map(|q| q.0), Some(vec![1, 2, 3]));

    // The cluster keeps working: every record is there, and new ones go in.
    produce(&live, 40, 20);
    let mut read: Vec<String> = (0..2)
        .flat_map(|p| values(&read_partition(&live, TOPIC, p).expect("read")))
        .collect();
    read.sort_by_key(|v| v[1..].parse::<usize>().unwrap_or(usize::MAX));
    let expected: Vec<String> = (0..60).map(|i| format!("v{i}")).collect();
    assert_eq!(read, expected);
    // Still gone after a few heartbeat intervals: nothing registers it again.
    std::thread::sleep(Duration::from_secs(1));
    wait_for_named(&live_addrs, "broker 4 still gone", |ids| !ids.contains(&4));
}
