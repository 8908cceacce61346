//! Coordinators in a three-broker cluster: a consumer group carries on, with its
//! committed offsets, when the broker coordinating it is killed (SIGKILL); a
//! transaction whose coordinator is killed mid-way ends cleanly and a
//! consume-transform-produce loop stays exactly-once.

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

/// The node coordinating `key` (key type 0: a group, 1: a transactional id),
/// asked of the broker at `addr`.
fn coordinator_of(addr: &str, key: &str, key_type: i8) -> Option<i32> {
    let version = 3;
    let request = FindCoordinatorRequest::default()
        .with_key(StrBytes::from_string(key.to_string()))
        .with_key_type(key_type);
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

/// Waits until a live broker names a coordinator for `key` that satisfies `ok`.
fn wait_for_coordinator(
    cluster: &Cluster,
    key: &str,
    key_type: i8,
    ok: impl Fn(i32) -> bool,
) -> i32 {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        for p in cluster.nodes.values() {
            if let Some(id) = coordinator_of(&p.addr, key, key_type) {
                if ok(id) {
                    return id;
                }
            }
        }
        assert!(Instant::now() < end, "no coordinator for {key}");
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

    let coordinator = wait_for_coordinator(&cluster, group, 0, |_| true);
    eprintln!("group {group}: coordinator is node {coordinator}; killing it");
    cluster.node(coordinator).kill9();
    let next = wait_for_coordinator(&cluster, group, 0, |id| id != coordinator);
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

const EOS_PARTITIONS: i32 = 2;
const EOS_PER_PARTITION: usize = 150;

/// As in Kafka, an internal topic is created with its full replication factor
/// (3 here) or not at all: while a broker is down the coordinator is not
/// available, so a request that happens to come early cannot leave
/// `__transaction_state` on fewer replicas, where losing one broker would make
/// its transactional ids unusable for good.
#[test]
fn internal_topics_wait_for_their_replication_factor() {
    let mut cluster = Cluster::start(3);
    cluster.node(3).kill9();
    cluster.wait_for_brokers(2);
    let addr = cluster.node(1).addr.clone();
    for attempt in 0..5 {
        assert_eq!(
            coordinator_of(&addr, &format!("early-{attempt}"), 1),
            None,
            "a transaction coordinator with 2 of 3 brokers live"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let md = raw_metadata(&addr, &["__transaction_state"]).expect("metadata");
    assert!(
        md.topics.iter().all(|t| t.partitions.is_empty()),
        "__transaction_state exists with fewer replicas than asked for"
    );

    cluster.node(3).restart();
    cluster.wait_for_brokers(3);
    let coordinator = wait_for_coordinator(&cluster, "early-0", 1, |_| true);
    assert!((1..=3).contains(&coordinator));
    let md = raw_metadata(&addr, &["__transaction_state"]).expect("metadata");
    let partitions: Vec<_> = md.topics.iter().flat_map(|t| &t.partitions).collect();
    assert!(
        !partitions.is_empty(),
        "__transaction_state was not created"
    );
    assert!(
        partitions.iter().all(|p| p.replica_nodes.len() == 3),
        "every partition of __transaction_state has 3 replicas"
    );
}

fn transform(value: &str) -> String {
    format!("T({value})")
}

fn txn_producer(bootstrap: &str, transactional_id: &str) -> rdkafka::producer::BaseProducer {
    client(bootstrap)
        .set("transactional.id", transactional_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("transaction.timeout.ms", "20000")
        .set("message.timeout.ms", "20000")
        .set("linger.ms", "5")
        .create()
        .expect("transactional producer")
}

fn eos_consumer(bootstrap: &str, input: &str) -> BaseConsumer {
    let consumer: BaseConsumer = client(bootstrap)
        .set("group.id", "etl-group")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..EOS_PARTITIONS {
        tpl.add_partition_offset(input, p, Offset::Stored)
            .expect("assignment");
    }
    consumer.assign(&tpl).expect("assign");
    consumer
}

/// How one incarnation of the application ended.
#[derive(Debug, PartialEq)]
enum Etl {
    /// The whole input was processed.
    Finished,
    /// It killed the transaction coordinator in the middle of a transaction.
    KilledCoordinator,
    /// An error ended it (the next incarnation fences and aborts what was open).
    Failed,
}

/// One incarnation of a consume-transform-produce application: batches of up
/// to 20 input records become one transaction each (outputs and the input
/// offsets). With `kill`, the transactional id's coordinator is SIGKILLed in
/// the middle of the `kill`-th transaction.
fn run_etl(
    cluster: &mut Cluster,
    transactional_id: &str,
    (input, output): (&str, &str),
    kill: Option<usize>,
) -> Etl {
    use rdkafka::message::Message;
    let bootstrap = cluster.bootstrap();
    let producer = txn_producer(&bootstrap, transactional_id);
    if let Err(e) = producer.init_transactions(Duration::from_secs(30)) {
        eprintln!("etl: init_transactions: {e}");
        return Etl::Failed;
    }
    let consumer = eos_consumer(&bootstrap, input);
    let mut next = [0i64; EOS_PARTITIONS as usize];
    let mut transactions = 0;
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        let mut batch = Vec::new();
        while batch.len() < 20 {
            match consumer.poll(Duration::from_millis(if batch.is_empty() {
                200
            } else {
                20
            })) {
                Some(Ok(m)) => batch.push((
                    m.partition(),
                    m.offset(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                )),
                // Transient (a coordinator or leader moving): the client retries.
                Some(Err(e)) => {
                    eprintln!("etl: consume: {e}");
                    break;
                }
                None => break,
            }
        }
        if batch.is_empty() {
            let Ok(position) = consumer.position() else {
                continue;
            };
            let done = (0..EOS_PARTITIONS).all(|p| {
                matches!(position.find_partition(input, p).map(|e| e.offset()),
                    Some(Offset::Offset(o)) if o as usize >= EOS_PER_PARTITION)
            });
            if done {
                return Etl::Finished;
            }
            continue;
        }
        if let Err(e) = producer.begin_transaction() {
            eprintln!("etl: begin: {e}");
            return Etl::Failed;
        }
        for (p, offset, value) in &batch {
            let out = transform(value);
            let record = BaseRecord::<(), str>::to(output)
                .partition(*p)
                .payload(&out);
            if let Err((e, _)) = producer.send(record) {
                eprintln!("etl: send: {e}");
                return Etl::Failed;
            }
            next[*p as usize] = offset + 1;
        }
        let mut offsets = TopicPartitionList::new();
        for (p, n) in next.iter().enumerate() {
            if *n > 0 {
                offsets
                    .add_partition_offset(input, p as i32, Offset::Offset(*n))
                    .expect("offsets");
            }
        }
        let Some(metadata) = consumer.group_metadata() else {
            eprintln!("etl: no group metadata");
            return Etl::Failed;
        };
        if let Err(e) =
            producer.send_offsets_to_transaction(&offsets, &metadata, Duration::from_secs(30))
        {
            eprintln!("etl: send offsets: {e}");
            return Etl::Failed;
        }
        transactions += 1;
        if kill == Some(transactions) {
            let _ = producer.flush(Duration::from_secs(10));
            let coordinator = wait_for_coordinator(cluster, transactional_id, 1, |_| true);
            eprintln!(
                "etl: transaction {transactions}: killing its coordinator, node {coordinator}"
            );
            cluster.node(coordinator).kill9();
            let committed = producer.commit_transaction(Duration::from_secs(30));
            eprintln!("etl: commit after the coordinator died: {committed:?}");
            return Etl::KilledCoordinator;
        }
        if let Err(e) = producer.commit_transaction(Duration::from_secs(30)) {
            eprintln!("etl: commit: {e}");
            return Etl::Failed;
        }
    }
    eprintln!("etl: out of time");
    Etl::Failed
}

/// The transactional id is one the active controller coordinates, so the kill
/// takes the quorum's leader and the transaction's coordinator at once (the
/// harder case: the new coordinator must wait for a new controller to move the
/// partition's leadership).
#[test]
fn a_transaction_outlives_its_coordinator_and_the_output_stays_exactly_once() {
    let mut cluster = Cluster::start(3);
    let bootstrap = cluster.bootstrap();
    let (input, output) = ("etl-in", "etl-out");
    create_replicated_topic(&bootstrap, input, EOS_PARTITIONS);
    create_replicated_topic(&bootstrap, output, EOS_PARTITIONS);
    for t in [input, output] {
        for p in 0..EOS_PARTITIONS {
            wait_for(&bootstrap, t, p, "a full ISR", |l, isr| {
                l >= 0 && isr.len() == 3
            });
        }
    }
    let acks = std::sync::Arc::new(Acks::default());
    let plain = producer(&bootstrap, "all", acks.clone());
    for p in 0..EOS_PARTITIONS {
        for i in 0..EOS_PER_PARTITION {
            plain
                .send(
                    BaseRecord::<(), str>::to(input)
                        .partition(p)
                        .payload(&format!("p{p}-{i}")),
                )
                .expect("queue");
        }
    }
    plain.flush(Duration::from_secs(30)).expect("flush");
    assert_eq!(
        acks.acked.lock().expect("acks").len(),
        EOS_PER_PARTITION * EOS_PARTITIONS as usize
    );

    let controller = cluster.wait_for_controller("a controller", |_| true);
    let transactional_id = (0..100)
        .map(|i| format!("etl-tx-{i}"))
        .find(|id| wait_for_coordinator(&cluster, id, 1, |_| true) == controller)
        .expect("a transactional id the controller coordinates");
    let topics = (input, output);
    let killed = (0..5).any(|_| {
        run_etl(&mut cluster, &transactional_id, topics, Some(3)) == Etl::KilledCoordinator
    });
    assert!(
        killed,
        "the application never got to kill the transaction coordinator"
    );
    let finished =
        (0..8).any(|_| run_etl(&mut cluster, &transactional_id, topics, None) == Etl::Finished);
    assert!(finished, "the application never got through the input");

    let bootstrap = cluster.bootstrap();
    for p in 0..EOS_PARTITIONS {
        let got = read_committed(&bootstrap, output, p);
        let want: Vec<String> = (0..EOS_PER_PARTITION)
            .map(|i| transform(&format!("p{p}-{i}")))
            .collect();
        assert_eq!(
            got, want,
            "partition {p}: output is not transform(input) exactly once"
        );
    }
}

/// Every committed record of a partition, read with read_committed.
fn read_committed(bootstrap: &str, topic: &str, partition: i32) -> Vec<String> {
    use rdkafka::message::Message;
    let consumer: BaseConsumer = client(bootstrap)
        .set("group.id", "etl-check")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .expect("assignment");
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return out,
            _ => {}
        }
    }
    panic!("reading {topic}-{partition} did not reach its end");
}
