//! Coordinators in a three-broker cluster: a consumer group carries on, with its
//! committed offsets, when the broker coordinating it is killed (SIGKILL).

mod cluster_support;
mod reliability;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster_support::*;
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, FindCoordinatorResponse, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, HeaderVersion, StrBytes};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use reliability::*;

/// The node coordinating `group`, asked of the broker at `addr`.
fn coordinator_of(addr: &str, group: &str) -> Option<i32> {
    let version = 3;
    let request = FindCoordinatorRequest::default()
        .with_key(StrBytes::from_string(group.to_string()))
        .with_key_type(0);
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(DEADLINE)).ok()?;
    std::io::Write::write_all(
        &mut stream,
        &encode_request(ApiKey::FindCoordinator, version, 1, &request),
    )
    .ok()?;
    let mut buf = Bytes::from(read_frame(&mut stream)?);
    ResponseHeader::decode(&mut buf, FindCoordinatorResponse::header_version(version)).ok()?;
    let response = FindCoordinatorResponse::decode(&mut buf, version).ok()?;
    (response.error_code == 0).then_some(response.node_id.0)
}

/// Waits until a live broker names a coordinator for `group` that satisfies `ok`.
fn wait_for_coordinator(cluster: &Cluster, group: &str, ok: impl Fn(i32) -> bool) -> i32 {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        for p in cluster.nodes.values() {
            if let Some(id) = coordinator_of(&p.addr, group) {
                if ok(id) {
                    return id;
                }
            }
        }
        assert!(Instant::now() < end, "no coordinator for {group}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn group_consumer(bootstrap: &str, group: &str) -> BaseConsumer {
    client(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer")
}

/// Consumes until `n` records have arrived (or the deadline passes).
fn consume(consumer: &BaseConsumer, n: usize) -> usize {
    let end = Instant::now() + Duration::from_secs(60);
    let mut got = 0;
    while got < n && Instant::now() < end {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            got += 1;
        }
    }
    got
}

/// Commits what `consumer` has consumed, retrying while the coordinator moves.
fn commit(consumer: &BaseConsumer) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => return,
            Err(e) => {
                assert!(Instant::now() < end, "commit kept failing: {e}");
                let _ = consumer.poll(Duration::from_millis(200));
            }
        }
    }
}

/// The group's committed offset of every partition of `topic`, as the
/// coordinator answers it.
fn committed(consumer: &BaseConsumer, topic: &str, partitions: i32) -> Vec<i64> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(5)) {
            Ok(list) => {
                return (0..partitions)
                    .map(
                        |p| match list.find_partition(topic, p).map(|e| e.offset()) {
                            Some(Offset::Offset(o)) => o,
                            _ => -1,
                        },
                    )
                    .collect()
            }
            Err(e) => {
                assert!(Instant::now() < end, "committed offsets unavailable: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

#[test]
fn a_group_carries_on_with_its_offsets_when_its_coordinator_dies() {
    let mut cluster = Cluster::start(3);
    let bootstrap = cluster.bootstrap();
    let topic = "orders";
    create_replicated_topic(&bootstrap, topic, 2);
    for p in 0..2 {
        wait_for(&bootstrap, topic, p, "a full ISR", |l, isr| {
            l >= 0 && isr.len() == 3
        });
    }
    let acks = std::sync::Arc::new(Acks::default());
    let producer = producer(&bootstrap, "all", acks.clone());
    for i in 0..1000 {
        producer
            .send(
                BaseRecord::<(), str>::to(topic)
                    .partition(i % 2)
                    .payload(&format!("r{i}")),
            )
            .expect("queue");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    assert_eq!(acks.acked.lock().expect("acks").len(), 1000);

    let group = "billing";
    let consumer = group_consumer(&bootstrap, group);
    consumer.subscribe(&[topic]).expect("subscribe");
    assert_eq!(consume(&consumer, 400), 400, "first 400 records");
    commit(&consumer);
    let before = committed(&consumer, topic, 2);
    // -1: a partition the consumer has not read from yet.
    assert_eq!(
        before.iter().map(|o| (*o).max(0)).sum::<i64>(),
        400,
        "committed {before:?}"
    );

    let coordinator = wait_for_coordinator(&cluster, group, |_| true);
    eprintln!("group {group}: coordinator is node {coordinator}; killing it");
    cluster.node(coordinator).kill9();
    let next = wait_for_coordinator(&cluster, group, |id| id != coordinator);
    eprintln!("group {group}: node {next} took over");

    // The offsets committed before are intact at the new coordinator…
    let after = committed(&consumer, topic, 2);
    assert_eq!(
        after, before,
        "committed offsets after the coordinator moved"
    );
    // …and the group carries on from them to the end.
    assert_eq!(consume(&consumer, 600), 600, "the remaining 600 records");
    commit(&consumer);
    let end = committed(&consumer, topic, 2);
    assert_eq!(end, vec![500, 500], "everything committed");
    drop(consumer);

    // A new member of the group starts where the group left off: nothing left.
    let later = group_consumer(&bootstrap, group);
    assert_eq!(committed(&later, topic, 2), vec![500, 500]);

    cluster.node(coordinator).restart();
    cluster.wait_for_brokers(3);
}
