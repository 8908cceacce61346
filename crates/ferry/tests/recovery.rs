//! Restarts: a clean shutdown keeps everything; a SIGKILL loses nothing that
//! was acknowledged with acks=all.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rdkafka::admin::ResourceSpecifier;
use rdkafka::message::{Message, Timestamp};
use rdkafka::Offset;

#[test]
fn clean_restart_keeps_topics_configs_and_records() {
    let mut broker = Broker::start();
    let topic = unique_topic("durable");
    create_topic(
        &broker,
        &topic,
        2,
        &[("retention.ms", "7777777"), ("cleanup.policy", "delete")],
    );
    let producer = producer(&broker, &[("compression.type", "lz4"), ("linger.ms", "5")]);
    let base = now_ms() - 60_000;
    let mut expected = Vec::new();
    for p in 0..2 {
        let recs: Vec<Rec> = (0..25)
            .map(|i| {
                Rec::kv(&format!("k{i}"), &format!("partition {p} record {i}"))
                    .with_header("p", Some(p.to_string().as_bytes()))
            })
            .collect();
        for (i, rec) in recs.iter().enumerate() {
            send(&producer, &topic, Some(p), Some(base + i as i64), rec).expect("produce");
        }
        expected.push(recs);
    }
    drop(producer);

    let status = broker.stop();
    assert!(status.success(), "broker exited with {status} on SIGTERM");
    broker.restart();

    assert_eq!(
        partition_count(&broker, &topic),
        Some(2),
        "topic after restart"
    );
    let admin = admin(&broker);
    let configs =
        block_on(admin.describe_configs([&ResourceSpecifier::Topic(&topic)], &admin_options()))
            .expect("describe_configs");
    let resource = match configs.into_iter().next() {
        Some(Ok(r)) => r,
        other => panic!("describe_configs after restart: {other:?}"),
    };
    assert_eq!(
        resource
            .get("retention.ms")
            .and_then(|e| e.value.clone())
            .as_deref(),
        Some("7777777")
    );
    for p in 0..2 {
        let read = read_all(&broker, &topic, p, Offset::Beginning);
        assert_eq!(
            offsets_of(&read),
            (0..25).collect::<Vec<i64>>(),
            "partition {p} offsets"
        );
        assert_same_records(
            &recs_of(&read),
            &expected[p as usize],
            &format!("partition {p} records"),
        );
        let stamps: Vec<Timestamp> = read.iter().map(|m| m.timestamp()).collect();
        let want: Vec<Timestamp> = (0..25).map(|i| Timestamp::CreateTime(base + i)).collect();
        assert_eq!(stamps, want, "partition {p} timestamps");
    }

    // The log continues where it stopped.
    let producer = common::producer(&broker, &[]);
    let d = send(
        &producer,
        &topic,
        Some(0),
        None,
        &Rec::kv("after", "restart"),
    )
    .expect("produce after restart");
    assert_eq!(d.offset, 25);
}

#[test]
fn restart_twice_and_empty_topics_survive() {
    let mut broker = Broker::start();
    let empty = unique_topic("empty");
    create_topic(&broker, &empty, 3, &[]);
    broker.restart();
    broker.restart();
    assert_eq!(partition_count(&broker, &empty), Some(3));
    assert_eq!(watermarks(&broker, &empty, 2), (0, 0));
}

/// SIGTERM right after the listening line (the harness restarts as soon as it
/// sees it) is a clean stop every time: CI once caught a broker that had not
/// yet installed its handler and died by the signal.
#[test]
fn sigterm_right_after_start_stops_cleanly() {
    let mut broker = Broker::start();
    let topic = unique_topic("quick");
    create_topic(&broker, &topic, 1, &[]);
    for _ in 0..10 {
        broker.restart();
    }
    assert_eq!(partition_count(&broker, &topic), Some(1));
}

#[test]
fn kill9_during_acks_all_loses_no_acknowledged_record() {
    let mut broker = Broker::start();
    let topic = unique_topic("crash");
    create_topic(&broker, &topic, 1, &[]);

    let acked: Arc<Mutex<Vec<(usize, i64)>>> = Arc::new(Mutex::new(Vec::new()));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = producer(
        &broker,
        &[
            ("acks", "all"),
            ("message.timeout.ms", "5000"),
            ("message.send.max.retries", "0"),
            ("max.in.flight.requests.per.connection", "1"),
        ],
    );
    let writer = {
        let (acked, acked_count, stop, topic) = (
            acked.clone(),
            acked_count.clone(),
            stop.clone(),
            topic.clone(),
        );
        std::thread::spawn(move || {
            for seq in 0..200_000usize {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let rec = Rec::kv(
                    &format!("seq-{seq}"),
                    &format!("payload-{seq}-{}", "p".repeat(seq % 300)),
                );
                match send(&producer, &topic, Some(0), None, &rec) {
                    Ok(d) => {
                        acked.lock().expect("lock").push((seq, d.offset));
                        acked_count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => break, // the broker is gone
                }
            }
        })
    };

    let enough = wait_until(Duration::from_secs(120), || {
        acked_count.load(Ordering::Relaxed) >= 300
    });
    broker.kill9();
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer thread");
    assert!(
        enough,
        "only {} records acknowledged before the kill",
        acked_count.load(Ordering::Relaxed)
    );

    broker.restart();
    let acked = acked.lock().expect("lock").clone();
    let read = read_all(&broker, &topic, 0, Offset::Beginning);
    let seqs: Vec<usize> = read
        .iter()
        .map(|m| {
            let key = String::from_utf8_lossy(m.key().expect("key")).into_owned();
            key.strip_prefix("seq-")
                .and_then(|s| s.parse().ok())
                .expect("seq key")
        })
        .collect();
    // Each record at most once, in the order sent, at the offset it got.
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "duplicated or reordered records: {seqs:?}"
    );
    assert_eq!(
        offsets_of(&read),
        (0..read.len() as i64).collect::<Vec<_>>(),
        "offsets have gaps"
    );
    for (seq, offset) in &acked {
        let m = read.get(*offset as usize).unwrap_or_else(|| {
            panic!(
                "acknowledged seq {seq} at offset {offset} missing; log has {} records",
                read.len()
            )
        });
        let key = format!("seq-{seq}");
        assert_eq!(
            m.key(),
            Some(key.as_bytes()),
            "offset {offset} holds another record"
        );
        let want = format!("payload-{seq}-{}", "p".repeat(seq % 300));
        assert_eq!(m.payload(), Some(want.as_bytes()), "payload of seq {seq}");
    }
    // Acknowledged records form a prefix of what was sent.
    assert!(read.len() >= acked.len());

    // And the log is writable after recovery, continuing at the end.
    let producer = common::producer(&broker, &[]);
    let d = send(&producer, &topic, Some(0), None, &Rec::kv("after", "crash"))
        .expect("produce after crash");
    assert_eq!(d.offset, read.len() as i64);
}

/// The newest `.log` segment file of a partition directory, found by name
/// under the data dir (Kafka's layout: `<topic>-<partition>/<offset>.log`).
fn newest_segment(broker: &Broker, topic: &str, partition: i32) -> std::path::PathBuf {
    let dir_name = format!("{topic}-{partition}");
    let mut logs: Vec<std::path::PathBuf> = list_tree(&broker.data_dir())
        .into_iter()
        .filter(|p| {
            p.extension().is_some_and(|e| e == "log")
                && p.parent()
                    .and_then(|d| d.file_name())
                    .is_some_and(|n| n.to_string_lossy() == dir_name)
        })
        .collect();
    logs.sort();
    logs.pop().unwrap_or_else(|| {
        panic!(
            "no .log segment for {dir_name} under {}: {:?}",
            broker.data_dir().display(),
            list_tree(&broker.data_dir())
        )
    })
}

#[test]
fn torn_tail_of_active_segment_is_truncated_on_restart() {
    let mut broker = Broker::start();
    let topic = unique_topic("torn");
    create_topic(&broker, &topic, 1, &[]);
    let producer = producer(&broker, &[("max.in.flight.requests.per.connection", "1")]);
    let recs: Vec<Rec> = (0..50)
        .map(|i| Rec::kv(&format!("k{i}"), &format!("before the tear {i}")))
        .collect();
    send_all(&producer, &topic, Some(0), &recs);
    drop(producer);
    broker.kill9();

    // A write cut short: half a batch header and some noise at the end.
    let segment = newest_segment(&broker, &topic, 0);
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&segment)
            .expect("open segment");
        let mut torn = 50i64.to_be_bytes().to_vec(); // a base offset
        torn.extend_from_slice(&900i32.to_be_bytes()); // a length past the end
        torn.extend_from_slice(&[0xab; 37]);
        file.write_all(&torn).expect("append torn tail");
    }

    broker.restart();
    let read = read_all(&broker, &topic, 0, Offset::Beginning);
    assert_eq!(offsets_of(&read), (0..50).collect::<Vec<i64>>());
    assert_same_records(&recs_of(&read), &recs, "records after a torn tail");
    assert_eq!(watermarks(&broker, &topic, 0), (0, 50));
    let producer = common::producer(&broker, &[]);
    let d = send(&producer, &topic, Some(0), None, &Rec::kv("after", "tear"))
        .expect("produce after recovery");
    assert_eq!(d.offset, 50);
    let read = read_all(&broker, &topic, 0, Offset::Offset(49));
    assert_eq!(offsets_of(&read), vec![49, 50]);
}

#[test]
fn missing_index_files_are_rebuilt_on_restart() {
    let mut broker = Broker::start();
    let topic = unique_topic("reindex");
    // Small segments so there are several, each with its own indexes.
    create_topic(&broker, &topic, 1, &[("segment.bytes", "1048576")]);
    let producer = producer(
        &broker,
        &[
            ("max.in.flight.requests.per.connection", "1"),
            ("linger.ms", "5"),
        ],
    );
    let base = now_ms() - 1_000_000;
    let recs: Vec<Rec> = (0..300)
        .map(|i| Rec::kv(&format!("k{i}"), &format!("{i}-{}", "i".repeat(8_000))))
        .collect();
    for (i, rec) in recs.iter().enumerate() {
        send(&producer, &topic, Some(0), Some(base + i as i64 * 10), rec).expect("produce");
    }
    drop(producer);
    assert_eq!(broker.stop().code(), Some(0), "clean exit");

    let removed: Vec<_> = list_tree(&broker.data_dir())
        .into_iter()
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "index" || e == "timeindex")
        })
        .filter(|p| p.to_string_lossy().contains(&topic))
        .collect();
    for p in &removed {
        std::fs::remove_file(p).expect("remove index file");
    }

    broker.restart();
    // Reads by offset and by time land where they did before.
    let read = read_all(&broker, &topic, 0, Offset::Offset(201));
    assert_eq!(
        read.first().map(|m| m.offset()),
        Some(201),
        "removed {removed:?}"
    );
    assert_same_records(&recs_of(&read), &recs[201..], "records from offset 201");
    let consumer = consumer(&broker, &[]);
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(base + 1555))
        .expect("tpl");
    let found = rdkafka::consumer::Consumer::offsets_for_times(&consumer, tpl, OP_DEADLINE)
        .expect("offsets_for_times");
    assert_eq!(
        found.find_partition(&topic, 0).map(|e| e.offset()),
        Some(Offset::Offset(156))
    );
}
