//! Transactions through librdkafka's transactional API: read_committed
//! isolation, zombie fencing, and a consume-transform-produce loop that is
//! crashed (broker SIGKILL, application restarted) at several points.

mod common;
mod eos_support;

use std::time::{Duration, Instant};

use common::*;
use eos_support::Proxy;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

fn txn_producer(bootstrap: &str, transactional_id: &str) -> BaseProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", transactional_id)
        .set("transaction.timeout.ms", "60000")
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "1")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500")
        .set("log_level", "3");
    config.create().expect("create transactional producer")
}

fn values(broker: &Broker, topic: &str, partition: i32, isolation: &str) -> Vec<String> {
    let messages = try_read_all(
        broker,
        topic,
        partition,
        Offset::Beginning,
        &[("isolation.level", isolation)],
    )
    .unwrap_or_else(|e| panic!("reading {topic}/{partition} ({isolation}): {e}"));
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string())
        .collect()
}

fn send(producer: &BaseProducer, topic: &str, partition: i32, value: &str) {
    producer
        .send(
            BaseRecord::<str, str>::to(topic)
                .partition(partition)
                .key("k")
                .payload(value),
        )
        .unwrap_or_else(|(e, _)| panic!("enqueue {value}: {e}"));
}

#[test]
fn aborted_transactions_are_hidden_from_read_committed_and_open_ones_hold_it_back() {
    let broker = Broker::start();
    let topic = unique_topic("txn-iso");
    create_topic(&broker, &topic, 1, &[]);
    let producer = txn_producer(&broker.bootstrap(), "iso-tx");
    producer
        .init_transactions(TXN_TIMEOUT)
        .expect("init_transactions");

    producer.begin_transaction().expect("begin");
    send(&producer, &topic, 0, "a1");
    send(&producer, &topic, 0, "a2");
    producer.commit_transaction(TXN_TIMEOUT).expect("commit a");

    producer.begin_transaction().expect("begin");
    send(&producer, &topic, 0, "b1");
    send(&producer, &topic, 0, "b2");
    producer.flush(TXN_TIMEOUT).expect("flush b");
    producer.abort_transaction(TXN_TIMEOUT).expect("abort b");

    producer.begin_transaction().expect("begin");
    send(&producer, &topic, 0, "c1");
    producer.commit_transaction(TXN_TIMEOUT).expect("commit c");

    assert_eq!(
        values(&broker, &topic, 0, "read_committed"),
        vec!["a1", "a2", "c1"]
    );
    assert_eq!(
        values(&broker, &topic, 0, "read_uncommitted"),
        vec!["a1", "a2", "b1", "b2", "c1"]
    );

    // An open transaction: written, not committed.
    producer.begin_transaction().expect("begin");
    send(&producer, &topic, 0, "d1");
    producer.flush(TXN_TIMEOUT).expect("flush d");
    assert_eq!(
        values(&broker, &topic, 0, "read_uncommitted"),
        vec!["a1", "a2", "b1", "b2", "c1", "d1"]
    );
    // A read_committed consumer stops before it (its end is the last stable offset) …
    assert_eq!(
        values(&broker, &topic, 0, "read_committed"),
        vec!["a1", "a2", "c1"]
    );
    // … and a plain producer's record after the open transaction stays hidden too.
    let plain = producer_for(&broker);
    send_all(&plain, &topic, Some(0), &[Rec::kv("k", "e1")]);
    assert_eq!(
        values(&broker, &topic, 0, "read_committed"),
        vec!["a1", "a2", "c1"]
    );
    producer.commit_transaction(TXN_TIMEOUT).expect("commit d");
    assert_eq!(
        values(&broker, &topic, 0, "read_committed"),
        vec!["a1", "a2", "c1", "d1", "e1"]
    );
}

fn producer_for(broker: &Broker) -> rdkafka::producer::FutureProducer {
    producer(broker, &[])
}

#[test]
fn a_second_producer_with_the_same_transactional_id_fences_the_first() {
    let broker = Broker::start();
    let topic = unique_topic("txn-fence");
    create_topic(&broker, &topic, 1, &[]);
    let first = txn_producer(&broker.bootstrap(), "fence-tx");
    first.init_transactions(TXN_TIMEOUT).expect("init first");
    first.begin_transaction().expect("begin");
    send(&first, &topic, 0, "zombie");
    first.flush(TXN_TIMEOUT).expect("flush");

    let second = txn_producer(&broker.bootstrap(), "fence-tx");
    second.init_transactions(TXN_TIMEOUT).expect("init second");

    let err = first
        .commit_transaction(TXN_TIMEOUT)
        .expect_err("the fenced producer cannot commit");
    let fenced = match &err {
        KafkaError::Transaction(e) => {
            e.is_fatal()
                || matches!(
                    e.code(),
                    RDKafkaErrorCode::Fenced
                        | RDKafkaErrorCode::ProducerFenced
                        | RDKafkaErrorCode::InvalidProducerEpoch
                )
        }
        _ => false,
    };
    assert!(fenced, "expected a fencing error, got {err:?}");

    second.begin_transaction().expect("begin");
    send(&second, &topic, 0, "live");
    second
        .commit_transaction(TXN_TIMEOUT)
        .expect("commit second");
    assert_eq!(values(&broker, &topic, 0, "read_committed"), vec!["live"]);
}

// ---------------------------------------------------------------------------
// consume-transform-produce with crashes
// ---------------------------------------------------------------------------

const INPUT_PER_PARTITION: usize = 300;
const EOS_PARTITIONS: i32 = 2;
const CRASHES: usize = 6;
const BATCH_MAX: usize = 25;

fn transform(value: &str) -> String {
    format!("T({value})")
}

#[derive(Clone, Copy, Debug)]
enum Crash {
    /// Records written, transaction left open.
    MidTransaction,
    /// While EndTxn is under way.
    DuringCommit,
    /// Right after the commit returned.
    AfterCommit,
}

fn eos_consumer(bootstrap: &str, input: &str) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "eos-group")
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .set("reconnect.backoff.ms", "50")
        .set("log_level", "3");
    let consumer: BaseConsumer = config.create().expect("create consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..EOS_PARTITIONS {
        tpl.add_partition_offset(input, p, Offset::Stored)
            .expect("assignment");
    }
    consumer.assign(&tpl).expect("assign");
    consumer
}

/// Up to BATCH_MAX records: (partition, offset, value).
fn poll_batch(consumer: &BaseConsumer) -> Vec<(i32, i64, String)> {
    let mut out = Vec::new();
    for _ in 0..50 {
        match consumer.poll(Duration::from_millis(if out.is_empty() { 200 } else { 20 })) {
            Some(Ok(m)) => {
                out.push((
                    m.partition(),
                    m.offset(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string(),
                ));
                if out.len() >= BATCH_MAX {
                    break;
                }
            }
            Some(Err(e)) => {
                // Transient while the broker restarts.
                let _ = e;
                break;
            }
            None if !out.is_empty() => break,
            None => {}
        }
    }
    out
}

/// Runs one incarnation of the application. With `crash`, stops after
/// `transactions` transactions and crashes the broker at that point. Returns
/// whether the input was consumed to its end.
fn run_app(
    broker: &mut Broker,
    proxy: &Proxy,
    input: &str,
    output: &str,
    crash: Option<(usize, Crash)>,
) -> bool {
    let producer = txn_producer(&proxy.addr(), "eos-tx");
    producer
        .init_transactions(Duration::from_secs(60))
        .expect("init_transactions");
    let consumer = eos_consumer(&proxy.addr(), input);
    let mut next = [0i64; EOS_PARTITIONS as usize];
    let mut done_txns = 0usize;
    let end = Instant::now() + Duration::from_secs(60);
    let mut idle_polls = 0;
    for _ in 0..10_000 {
        assert!(
            Instant::now() < end,
            "the application made no progress in time"
        );
        let batch = poll_batch(&consumer);
        if batch.is_empty() {
            let position = consumer.position().expect("position");
            let at_end = (0..EOS_PARTITIONS).all(|p| {
                matches!(position.find_partition(input, p).map(|e| e.offset()), Some(Offset::Offset(o)) if o as usize >= INPUT_PER_PARTITION)
            });
            if crash.is_none() && at_end {
                return true;
            }
            idle_polls += 1;
            assert!(idle_polls < 300, "no input arrives");
            continue;
        }
        producer.begin_transaction().expect("begin");
        for (p, offset, value) in &batch {
            send(&producer, output, *p, &transform(value));
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
        let metadata = consumer.group_metadata().expect("group metadata");
        producer
            .send_offsets_to_transaction(&offsets, &metadata, TXN_TIMEOUT)
            .expect("send offsets");
        done_txns += 1;
        match crash {
            Some((at, kind)) if at == done_txns => {
                match kind {
                    Crash::MidTransaction => {
                        producer.flush(TXN_TIMEOUT).expect("flush");
                        broker.kill9();
                    }
                    Crash::AfterCommit => {
                        producer.commit_transaction(TXN_TIMEOUT).expect("commit");
                        broker.kill9();
                    }
                    Crash::DuringCommit => {
                        let committing = std::thread::spawn(move || {
                            let _ = producer.commit_transaction(Duration::from_secs(10));
                        });
                        std::thread::sleep(Duration::from_millis(3));
                        broker.kill9();
                        broker.restart();
                        proxy.point_to(broker.port());
                        committing.join().expect("commit thread");
                        drop(consumer);
                        return false;
                    }
                }
                drop(producer);
                drop(consumer);
                broker.restart();
                proxy.point_to(broker.port());
                return false;
            }
            _ => producer.commit_transaction(TXN_TIMEOUT).expect("commit"),
        }
    }
    false
}

#[test]
fn consume_transform_produce_is_exactly_once_across_crashes() {
    let proxy = Proxy::start();
    let mut broker = Broker::start_with(&["--advertised-kafka-addr", &proxy.addr()]);
    proxy.point_to(broker.port());
    let input = unique_topic("eos-in");
    let output = unique_topic("eos-out");
    create_topic(&broker, &input, EOS_PARTITIONS, &[]);
    create_topic(&broker, &output, EOS_PARTITIONS, &[]);
    let plain = producer(
        &broker,
        &[
            ("linger.ms", "5"),
            ("max.in.flight.requests.per.connection", "5"),
        ],
    );
    let mut want = Vec::new();
    for p in 0..EOS_PARTITIONS {
        let recs: Vec<Rec> = (0..INPUT_PER_PARTITION)
            .map(|i| Rec::kv("k", &format!("p{p}-{i}")))
            .collect();
        send_all(&plain, &input, Some(p), &recs);
        want.push(
            (0..INPUT_PER_PARTITION)
                .map(|i| transform(&format!("p{p}-{i}")))
                .collect::<Vec<_>>(),
        );
    }
    drop(plain);

    let kinds = [
        Crash::MidTransaction,
        Crash::DuringCommit,
        Crash::AfterCommit,
    ];
    for round in 0..CRASHES {
        let finished = run_app(
            &mut broker,
            &proxy,
            &input,
            &output,
            Some((1 + round % 3, kinds[round % 3])),
        );
        assert!(!finished);
    }
    assert!(
        run_app(&mut broker, &proxy, &input, &output, None),
        "the last run did not reach the end of the input"
    );

    for p in 0..EOS_PARTITIONS {
        let got = values(&broker, &output, p, "read_committed");
        assert_eq!(
            got.len(),
            want[p as usize].len(),
            "partition {p}: output count differs from the input"
        );
        assert_eq!(
            got, want[p as usize],
            "partition {p}: output is not transform(input) exactly once"
        );
    }
}

/// What operators see of a transaction while it is open and after it commits:
/// ListTransactions, DescribeTransactions and DescribeProducers (the APIs behind
/// `kafka-transactions.sh`), asked with ferry's own Kafka client; the
/// transaction itself is librdkafka's.
#[test]
fn operators_list_and_describe_transactions_and_producers() {
    use ferry_client::kafka_protocol::messages::describe_producers_request::TopicRequest;
    use ferry_client::kafka_protocol::messages::{
        DescribeProducersRequest, DescribeTransactionsRequest, ListTransactionsRequest, TopicName,
        TransactionalId,
    };
    use ferry_client::kafka_protocol::protocol::StrBytes;

    let broker = Broker::start();
    let topic = unique_topic("txn-ops");
    create_topic(&broker, &topic, 1, &[]);
    let producer = txn_producer(&broker.bootstrap(), "ops-tx");
    producer
        .init_transactions(TXN_TIMEOUT)
        .expect("init_transactions");
    producer.begin_transaction().expect("begin");
    send(&producer, &topic, 0, "x1");
    producer.flush(TXN_TIMEOUT).expect("flush");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt
        .block_on(ferry_client::Client::connect(
            ferry_client::ClientConfig::new([broker.bootstrap()]),
        ))
        .expect("connect");
    let conn = rt.block_on(client.any_connection()).expect("connection");
    let list = |states: &[&str]| {
        let req = ListTransactionsRequest::default().with_state_filters(
            states
                .iter()
                .map(|s| StrBytes::from_string(s.to_string()))
                .collect(),
        );
        let resp = rt.block_on(conn.send(&req)).expect("ListTransactions");
        assert_eq!(resp.error_code, 0);
        resp.transaction_states
            .iter()
            .map(|t| {
                (
                    t.transactional_id.0.to_string(),
                    t.transaction_state.to_string(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        list(&[]),
        vec![("ops-tx".to_string(), "Ongoing".to_string())]
    );
    assert!(list(&["CompleteCommit"]).is_empty());

    let describe = DescribeTransactionsRequest::default()
        .with_transactional_ids(vec![TransactionalId(StrBytes::from_static_str("ops-tx"))]);
    let resp = rt
        .block_on(conn.send(&describe))
        .expect("DescribeTransactions");
    let state = &resp.transaction_states[0];
    assert_eq!(state.error_code, 0);
    assert_eq!(state.transaction_state.as_str(), "Ongoing");
    let topics: Vec<String> = state.topics.iter().map(|t| t.topic.0.to_string()).collect();
    assert_eq!(topics, vec![topic.clone()]);
    let producer_id = i64::from(state.producer_id);

    let producers = DescribeProducersRequest::default().with_topics(vec![TopicRequest::default()
        .with_name(TopicName(StrBytes::from_string(topic.clone())))
        .with_partition_indexes(vec![0])]);
    let resp = rt
        .block_on(conn.send(&producers))
        .expect("DescribeProducers");
    let partition = &resp.topics[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    let active: Vec<(i64, i64)> = partition
        .active_producers
        .iter()
        .map(|p| (i64::from(p.producer_id), p.current_txn_start_offset))
        .collect();
    assert_eq!(
        active,
        vec![(producer_id, 0)],
        "the open transaction starts at offset 0"
    );

    producer.commit_transaction(TXN_TIMEOUT).expect("commit");
    assert_eq!(
        list(&["CompleteCommit"]),
        vec![("ops-tx".to_string(), "CompleteCommit".to_string())]
    );
    assert!(list(&["Ongoing"]).is_empty());
}
