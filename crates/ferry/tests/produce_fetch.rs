//! Produce and fetch through librdkafka (the `rdkafka` crate): the records a
//! client sends come back byte for byte, in order, once.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, Timestamp};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

fn sample_records(n: usize) -> Vec<Rec> {
    (0..n)
        .map(|i| {
            Rec::kv(
                &format!("key-{i}"),
                &format!("value-{i}-{}", "x".repeat(i % 7)),
            )
            .with_header("seq", Some(i.to_string().as_bytes()))
            .with_header("empty", Some(b""))
            .with_header("null", None)
        })
        .collect()
}

#[test]
fn round_trip_keys_values_headers_and_nulls() {
    let broker = Broker::start();
    let topic = unique_topic("roundtrip");
    create_topic(&broker, &topic, 1, &[]);
    let producer = producer(&broker, &[]);

    let mut recs = sample_records(10);
    recs.push(Rec {
        key: None,
        value: Some(b"null key".to_vec()),
        headers: vec![],
    });
    recs.push(Rec {
        key: Some(b"null value (tombstone)".to_vec()),
        value: None,
        headers: vec![],
    });
    recs.push(Rec {
        key: None,
        value: None,
        headers: vec![("only".into(), Some(b"headers".to_vec()))],
    });
    recs.push(Rec {
        key: Some(vec![0, 255, 1, 254]),
        value: Some((0..=255u8).collect()),
        headers: vec![],
    });

    let deliveries = send_all(&producer, &topic, Some(0), &recs);
    let offsets: Vec<i64> = deliveries.iter().map(|d| d.offset).collect();
    assert_eq!(
        offsets,
        (0..recs.len() as i64).collect::<Vec<_>>(),
        "delivery offsets"
    );

    let read = read_all(&broker, &topic, 0, Offset::Beginning);
    assert_eq!(offsets_of(&read), offsets, "consumed offsets");
    assert_same_records(
        &recs_of(&read),
        &recs,
        "consumed records differ from produced",
    );
}

#[test]
fn every_compression_codec_round_trips() {
    let broker = Broker::start();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = unique_topic(&format!("codec-{codec}"));
        create_topic(&broker, &topic, 1, &[]);
        // Batching makes the codec matter: many records per compressed batch.
        let producer = producer(
            &broker,
            &[
                ("compression.type", codec),
                ("linger.ms", "50"),
                ("batch.num.messages", "100"),
            ],
        );
        let recs: Vec<Rec> = (0..300)
            .map(|i| {
                Rec::kv(
                    &format!("k{}", i % 13),
                    &format!("{codec} record {i} {}", "compressible ".repeat(i % 40)),
                )
                .with_header("codec", Some(codec.as_bytes()))
            })
            .collect();
        let deliveries = send_all(&producer, &topic, Some(0), &recs);
        let delivered: Vec<i64> = deliveries.iter().map(|d| d.offset).collect();
        let first_out_of_order = delivered.iter().enumerate().find(|(i, o)| **o != *i as i64);
        assert_eq!(
            first_out_of_order, None,
            "codec {codec}: delivery offsets not in send order (index, offset)"
        );
        let read = read_all(&broker, &topic, 0, Offset::Beginning);
        assert_eq!(read.len(), recs.len(), "codec {codec}: record count");
        assert_eq!(
            offsets_of(&read),
            (0..300).collect::<Vec<i64>>(),
            "codec {codec}: offsets"
        );
        assert_same_records(
            &recs_of(&read),
            &recs,
            &format!("codec {codec}: records differ"),
        );
        // Starting inside a (compressed) batch yields exactly the later records.
        let read = read_all(&broker, &topic, 0, Offset::Offset(150));
        assert_eq!(read.first().map(|m| m.offset()), Some(150), "codec {codec}");
        assert_same_records(
            &recs_of(&read),
            &recs[150..],
            &format!("codec {codec}: read from offset 150"),
        );
    }
}

#[test]
fn acks_zero_one_and_all_deliver() {
    let broker = Broker::start();
    for acks in ["0", "1", "all"] {
        let topic = unique_topic(&format!("acks-{acks}"));
        create_topic(&broker, &topic, 1, &[]);
        let producer = producer(&broker, &[("acks", acks)]);
        let recs: Vec<Rec> = (0..50)
            .map(|i| Rec::kv(&format!("k{i}"), &format!("acks={acks} #{i}")))
            .collect();
        let deliveries = send_all(&producer, &topic, Some(0), &recs);
        if acks != "0" {
            let offsets: Vec<i64> = deliveries.iter().map(|d| d.offset).collect();
            assert_eq!(
                offsets,
                (0..50).collect::<Vec<i64>>(),
                "acks={acks}: offsets"
            );
        }
        // With acks=0 the client learns nothing; the records must still land.
        let mut read = Vec::new();
        let arrived = wait_until(OP_DEADLINE, || {
            read = read_all(&broker, &topic, 0, Offset::Beginning);
            read.len() >= recs.len()
        });
        assert!(
            arrived,
            "acks={acks}: only {} of {} records arrived",
            read.len(),
            recs.len()
        );
        assert_same_records(
            &recs_of(&read),
            &recs,
            &format!("acks={acks}: records differ"),
        );
    }
}

#[test]
fn same_key_goes_to_same_partition_as_reported() {
    let broker = Broker::start();
    let topic = unique_topic("keyed");
    create_topic(&broker, &topic, 4, &[]);
    let producer = producer(&broker, &[("partitioner", "murmur2_random")]);

    let keys = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];
    let recs: Vec<Rec> = (0..60)
        .map(|i| Rec::kv(keys[i % keys.len()], &format!("msg-{i}")))
        .collect();
    let deliveries = send_all(&producer, &topic, None, &recs);

    let mut partition_of_key: HashMap<&str, i32> = HashMap::new();
    let mut expected: HashMap<i32, Vec<(i64, Rec)>> = HashMap::new();
    for (i, (rec, d)) in recs.iter().zip(&deliveries).enumerate() {
        let key = keys[i % keys.len()];
        let p = *partition_of_key.entry(key).or_insert(d.partition);
        assert_eq!(p, d.partition, "key {key} went to two partitions");
        assert!(
            (0..4).contains(&d.partition),
            "partition {} out of range",
            d.partition
        );
        expected
            .entry(d.partition)
            .or_default()
            .push((d.offset, rec.clone()));
    }
    for partition in 0..4 {
        let read = read_all(&broker, &topic, partition, Offset::Beginning);
        let got: Vec<(i64, Rec)> = read.iter().map(|m| (m.offset(), Rec::of(m))).collect();
        let want = expected.remove(&partition).unwrap_or_default();
        assert_eq!(
            got, want,
            "partition {partition}: records/offsets differ from delivery reports"
        );
    }
}

#[test]
fn batch_near_max_message_bytes_is_accepted_and_over_it_is_rejected() {
    let broker = Broker::start();
    let topic = unique_topic("maxbytes");
    create_topic(&broker, &topic, 1, &[("max.message.bytes", "20000")]);
    let producer = producer(
        &broker,
        &[
            ("compression.type", "none"),
            ("message.send.max.retries", "0"),
        ],
    );

    // One record per batch: about 150 bytes of batch overhead, under the limit.
    let near = Rec {
        key: Some(b"near".to_vec()),
        value: Some(vec![b'n'; 19_700]),
        headers: vec![],
    };
    let d = send(&producer, &topic, Some(0), None, &near)
        .expect("a batch just under max.message.bytes is accepted");
    assert_eq!(d.offset, 0);

    let over = Rec {
        key: Some(b"over".to_vec()),
        value: Some(vec![b'o'; 30_000]),
        headers: vec![],
    };
    match send(&producer, &topic, Some(0), None, &over) {
        Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {}
        other => {
            panic!("expected MESSAGE_TOO_LARGE for a batch over max.message.bytes, got {other:?}")
        }
    }

    // The partition still works and holds only the accepted record.
    let small = Rec::kv("after", "small");
    let d = send(&producer, &topic, Some(0), None, &small).expect("produce after rejection");
    assert_eq!(d.offset, 1, "the rejected batch must not take an offset");
    let read = read_all(&broker, &topic, 0, Offset::Beginning);
    assert_same_records(&recs_of(&read), &[near, small], "records");
}

#[test]
fn create_time_topic_returns_producer_timestamps() {
    let broker = Broker::start();
    let topic = unique_topic("createtime");
    create_topic(
        &broker,
        &topic,
        1,
        &[("message.timestamp.type", "CreateTime")],
    );
    let producer = producer(&broker, &[]);
    let base = now_ms() - 3_600_000;
    for i in 0..10 {
        send(
            &producer,
            &topic,
            Some(0),
            Some(base + i * 1000),
            &Rec::kv("k", &format!("v{i}")),
        )
        .expect("produce");
    }
    let read = read_all(&broker, &topic, 0, Offset::Beginning);
    let stamps: Vec<Timestamp> = read.iter().map(|m| m.timestamp()).collect();
    let want: Vec<Timestamp> = (0..10)
        .map(|i| Timestamp::CreateTime(base + i * 1000))
        .collect();
    assert_eq!(stamps, want);
}

#[test]
fn log_append_time_topic_returns_broker_time() {
    let broker = Broker::start();
    let topic = unique_topic("appendtime");
    create_topic(
        &broker,
        &topic,
        1,
        &[("message.timestamp.type", "LogAppendTime")],
    );
    let producer = producer(&broker, &[]);
    let producer_ts = 1_000_000_000_000; // 2001, far from now
    let before = now_ms();
    for i in 0..5 {
        let d = send(
            &producer,
            &topic,
            Some(0),
            Some(producer_ts),
            &Rec::kv("k", &format!("v{i}")),
        )
        .expect("produce");
        // The produce response carries the append time too.
        if let Timestamp::LogAppendTime(t) = d.timestamp {
            assert_ne!(t, producer_ts);
        }
    }
    let after = now_ms();
    let read = read_all(&broker, &topic, 0, Offset::Beginning);
    assert_eq!(read.len(), 5);
    // Clock sanity only, with a wide margin: the broker stamps its own time.
    let slack = 60_000;
    for m in &read {
        match m.timestamp() {
            Timestamp::LogAppendTime(t) => assert!(
                t >= before - slack && t <= after + slack,
                "append time {t} not near broker time [{before}, {after}]"
            ),
            other => panic!("expected a LogAppendTime timestamp, got {other:?}"),
        }
    }
}

#[test]
fn fetch_from_earliest_latest_and_given_offset() {
    let broker = Broker::start();
    let topic = unique_topic("positions");
    create_topic(&broker, &topic, 1, &[]);
    let producer = producer(&broker, &[]);
    let first: Vec<Rec> = (0..10)
        .map(|i| Rec::kv("k", &format!("first-{i}")))
        .collect();
    send_all(&producer, &topic, Some(0), &first);

    // Earliest.
    let read = read_all(&broker, &topic, 0, Offset::Beginning);
    assert_same_records(&recs_of(&read), &first, "records");

    // A given offset.
    let read = read_all(&broker, &topic, 0, Offset::Offset(4));
    assert_eq!(offsets_of(&read), (4..10).collect::<Vec<i64>>());
    assert_same_records(&recs_of(&read), &first[4..], "records");

    // Latest: a consumer at the end sees only what is produced afterwards.
    let consumer = consumer(&broker, &[]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::End)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let before = poll_until_eof(&consumer, OP_DEADLINE);
    assert!(
        before.is_empty(),
        "a consumer at the end read old records: {:?}",
        recs_of(&before)
    );
    let second: Vec<Rec> = (0..5)
        .map(|i| Rec::kv("k", &format!("second-{i}")))
        .collect();
    send_all(&producer, &topic, Some(0), &second);
    let got = poll_n(&consumer, 5, OP_DEADLINE);
    assert_eq!(offsets_of(&got), (10..15).collect::<Vec<i64>>());
    assert_same_records(&recs_of(&got), &second, "records");

    assert_eq!(watermarks(&broker, &topic, 0), (0, 15));
}

#[test]
fn offsets_for_times_finds_first_offset_at_or_after_timestamp() {
    let broker = Broker::start();
    let topic = unique_topic("bytime");
    create_topic(&broker, &topic, 1, &[]);
    let producer = producer(&broker, &[]);
    let base = now_ms() - 600_000;
    for i in 0..10 {
        send(
            &producer,
            &topic,
            Some(0),
            Some(base + i * 1000),
            &Rec::kv("k", &format!("v{i}")),
        )
        .expect("produce");
    }
    let consumer = consumer(&broker, &[]);
    let lookup = |ts: i64| -> Offset {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(ts))
            .expect("tpl");
        let result = consumer
            .offsets_for_times(tpl, OP_DEADLINE)
            .unwrap_or_else(|e| panic!("offsets_for_times({ts}) failed: {e}"));
        let elem = result
            .find_partition(&topic, 0)
            .expect("partition in result");
        assert!(
            elem.error().is_ok(),
            "offsets_for_times error: {:?}",
            elem.error()
        );
        elem.offset()
    };
    assert_eq!(lookup(base), Offset::Offset(0));
    assert_eq!(lookup(base + 3000), Offset::Offset(3));
    assert_eq!(lookup(base + 3500), Offset::Offset(4));
    assert_eq!(lookup(base - 100_000), Offset::Offset(0));
    // Later than every record: no offset (librdkafka reports the end, -1).
    assert_eq!(lookup(base + 100_000), Offset::End);

    // Consuming from the looked-up offset yields the later records.
    let read = read_all(&broker, &topic, 0, Offset::Offset(4));
    assert_eq!(read.len(), 6);
    assert_eq!(read[0].timestamp(), Timestamp::CreateTime(base + 4000));
}

#[test]
fn fetch_out_of_range_with_reset_error_reports_offset_out_of_range() {
    let broker = Broker::start();
    let topic = unique_topic("outofrange");
    create_topic(&broker, &topic, 1, &[]);
    let producer = producer(&broker, &[]);
    send_all(
        &producer,
        &topic,
        Some(0),
        &[Rec::kv("a", "1"), Rec::kv("b", "2")],
    );

    let result = try_read_all(
        &broker,
        &topic,
        0,
        Offset::Offset(1000),
        &[("auto.offset.reset", "error")],
    );
    match result {
        Err(KafkaError::MessageConsumption(code))
            if code == RDKafkaErrorCode::OffsetOutOfRange
                || code == RDKafkaErrorCode::AutoOffsetReset => {}
        other => panic!(
            "expected an offset-out-of-range error, got {:?}",
            other.map(|m| recs_of(&m))
        ),
    }
    // Nothing was lost by the failed fetch.
    let read = read_all(&broker, &topic, 0, Offset::Beginning);
    assert_same_records(
        &recs_of(&read),
        &[Rec::kv("a", "1"), Rec::kv("b", "2")],
        "records",
    );
}

#[test]
fn long_poll_consumer_receives_record_produced_later() {
    let broker = Broker::start();
    let topic = unique_topic("longpoll");
    create_topic(&broker, &topic, 1, &[]);
    // The consumer's fetches wait on the broker for up to 5 s.
    let consumer = consumer(
        &broker,
        &[("fetch.wait.max.ms", "5000"), ("fetch.min.bytes", "1")],
    );
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let none = poll_until_eof(&consumer, OP_DEADLINE);
    assert!(none.is_empty());

    let bootstrap_topic = topic.clone();
    let producer = producer(&broker, &[]);
    let sender = std::thread::spawn(move || {
        // Give the consumer time to be parked in a fetch; not asserted on.
        std::thread::sleep(Duration::from_millis(500));
        send(
            &producer,
            &bootstrap_topic,
            Some(0),
            None,
            &Rec::kv("late", "arrival"),
        )
    });
    let got = poll_n(&consumer, 1, OP_DEADLINE);
    sender.join().expect("sender thread").expect("produce");
    assert_same_records(&recs_of(&got), &[Rec::kv("late", "arrival")], "records");
    assert_eq!(got[0].offset(), 0);
}

#[test]
fn fetch_min_bytes_still_returns_small_data() {
    let broker = Broker::start();
    let topic = unique_topic("minbytes");
    create_topic(&broker, &topic, 1, &[]);
    let producer = producer(&broker, &[]);
    send_all(&producer, &topic, Some(0), &[Rec::kv("k", "tiny")]);
    // fetch.min.bytes far above what exists: the broker answers after
    // fetch.wait.max.ms with what it has.
    let consumer = consumer(
        &broker,
        &[("fetch.min.bytes", "1000000"), ("fetch.wait.max.ms", "500")],
    );
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let got = poll_n(&consumer, 1, OP_DEADLINE);
    assert_same_records(&recs_of(&got), &[Rec::kv("k", "tiny")], "records");
}

#[test]
fn small_fetch_max_bytes_still_makes_progress() {
    let broker = Broker::start();
    let topic = unique_topic("maxfetch");
    create_topic(&broker, &topic, 1, &[]);
    let producer = producer(&broker, &[("linger.ms", "20")]);
    let recs: Vec<Rec> = (0..100)
        .map(|i| Rec::kv(&format!("k{i}"), &format!("{i}:{}", "y".repeat(2000))))
        .collect();
    send_all(&producer, &topic, Some(0), &recs);
    // Limits far below the data size: a fetch returns at least one batch and
    // the consumer walks through the whole log.
    let read = try_read_all(
        &broker,
        &topic,
        0,
        Offset::Beginning,
        &[
            ("fetch.max.bytes", "4096"),
            ("message.max.bytes", "4096"),
            ("max.partition.fetch.bytes", "4096"),
        ],
    )
    .expect("read with small fetch limits");
    assert_same_records(&recs_of(&read), &recs, "records");
}

#[test]
fn pipelined_produce_requests_keep_send_order() {
    let broker = Broker::start();
    let topic = unique_topic("pipelined");
    create_topic(&broker, &topic, 1, &[]);
    // librdkafka's default: many Produce requests in flight on one connection.
    // Kafka handles a connection's requests one after another, so batches
    // land in the order they were sent.
    let producer = producer(
        &broker,
        &[
            ("linger.ms", "5"),
            ("batch.num.messages", "50"),
            ("max.in.flight.requests.per.connection", "5"),
        ],
    );
    let recs: Vec<Rec> = (0..1000)
        .map(|i| Rec::kv(&format!("k{i}"), &format!("pipelined {i}")))
        .collect();
    let deliveries = send_all(&producer, &topic, Some(0), &recs);
    let delivered: Vec<i64> = deliveries.iter().map(|d| d.offset).collect();
    let first_out_of_order = delivered.iter().enumerate().find(|(i, o)| **o != *i as i64);
    assert_eq!(
        first_out_of_order, None,
        "delivery offsets not in send order: (record index, offset)"
    );
    let read = read_all(&broker, &topic, 0, Offset::Beginning);
    assert_same_records(&recs_of(&read), &recs, "pipelined records");
}

#[test]
fn min_insync_replicas_above_replica_count_refuses_acks_all() {
    let broker = Broker::start();
    let topic = unique_topic("minisr");
    create_topic(&broker, &topic, 1, &[("min.insync.replicas", "2")]);
    let all = producer(&broker, &[("acks", "all"), ("message.timeout.ms", "10000")]);
    match send(&all, &topic, Some(0), None, &Rec::kv("k", "refused")) {
        Err(KafkaError::MessageProduction(
            RDKafkaErrorCode::NotEnoughReplicas | RDKafkaErrorCode::NotEnoughReplicasAfterAppend,
        )) => {}
        // librdkafka retries NOT_ENOUGH_REPLICAS until the message times out.
        Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)) => {}
        other => panic!("acks=all with min.insync.replicas=2 on one node: {other:?}"),
    }
    let one = producer(&broker, &[("acks", "1")]);
    let d = send(&one, &topic, Some(0), None, &Rec::kv("k", "accepted"))
        .expect("acks=1 is not bound by min.insync.replicas");
    assert_eq!(d.offset, 0);
    let read = read_all(&broker, &topic, 0, Offset::Beginning);
    assert_same_records(
        &recs_of(&read),
        &[Rec::kv("k", "accepted")],
        "only the acks=1 record",
    );
}

#[test]
fn large_record_near_default_limit_round_trips() {
    let broker = Broker::start();
    let topic = unique_topic("large");
    create_topic(&broker, &topic, 1, &[]);
    // librdkafka's own limit (message.max.bytes, 1000000 by default) is
    // raised so the broker's max.message.bytes (1048588) decides.
    let producer = producer(
        &broker,
        &[
            ("compression.type", "none"),
            ("message.max.bytes", "2000000"),
        ],
    );
    let value: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let rec = Rec {
        key: Some(b"big".to_vec()),
        value: Some(value),
        headers: vec![("h".to_string(), Some(vec![7; 1000]))],
    };
    send(&producer, &topic, Some(0), None, &rec)
        .expect("a 1 MB record under the default max.message.bytes");
    let read = read_all(&broker, &topic, 0, Offset::Beginning);
    assert_same_records(&recs_of(&read), &[rec], "large record");
}

#[test]
fn concurrent_producers_each_record_once_in_per_producer_order() {
    let broker = Broker::start();
    let topic = unique_topic("concurrent");
    create_topic(&broker, &topic, 1, &[]);
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let producer = producer(
                &broker,
                &[
                    ("max.in.flight.requests.per.connection", "1"),
                    ("linger.ms", "2"),
                ],
            );
            let topic = topic.clone();
            std::thread::spawn(move || {
                let recs: Vec<Rec> = (0..250)
                    .map(|i| Rec::kv(&format!("w{w}"), &format!("{i}")))
                    .collect();
                send_all(&producer, &topic, Some(0), &recs);
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer thread");
    }
    let read = read_all(&broker, &topic, 0, Offset::Beginning);
    assert_eq!(offsets_of(&read), (0..1000).collect::<Vec<i64>>());
    let mut per_writer: HashMap<Vec<u8>, Vec<u32>> = HashMap::new();
    for m in &read {
        let seq: u32 = String::from_utf8_lossy(m.payload().expect("value"))
            .parse()
            .expect("seq");
        per_writer
            .entry(m.key().expect("key").to_vec())
            .or_default()
            .push(seq);
    }
    assert_eq!(per_writer.len(), 4);
    for (writer, seqs) in per_writer {
        assert_eq!(
            seqs,
            (0..250).collect::<Vec<u32>>(),
            "writer {}",
            String::from_utf8_lossy(&writer)
        );
    }
}
