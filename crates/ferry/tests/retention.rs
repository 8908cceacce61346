//! Background log maintenance: size- and time-based retention delete old
//! segments, compaction keeps the latest value per key.
//!
//! Segments are 1 MiB (the smallest `segment.bytes` recent Kafka accepts), so
//! each test writes a few MiB to get closed segments.

mod common;

use std::collections::HashMap;

use common::*;
use rdkafka::message::Message;
use rdkafka::Offset;

/// Check retention and compaction often so tests do not wait long.
const FAST_MAINTENANCE: [&str; 4] = [
    "--set",
    "log.retention.check.interval.ms=500",
    "--set",
    "log.cleaner.backoff.ms=500",
];

const SEGMENT_BYTES: &str = "1048576";

/// Batching on; the harness keeps one request in flight.
const IN_ORDER: &[(&str, &str)] = &[("linger.ms", "5")];

fn big_value(tag: &str, i: usize) -> String {
    format!("{tag}-{i}-{}", "r".repeat(16_000))
}

#[test]
fn retention_bytes_advances_log_start() {
    let broker = Broker::start_with(&FAST_MAINTENANCE);
    let topic = unique_topic("ret-bytes");
    create_topic(
        &broker,
        &topic,
        1,
        &[
            ("segment.bytes", SEGMENT_BYTES),
            ("retention.bytes", SEGMENT_BYTES),
        ],
    );
    let producer = producer(&broker, IN_ORDER);
    let recs: Vec<Rec> = (0..250)
        .map(|i| Rec::kv(&format!("k{i}"), &big_value("bytes", i)))
        .collect();
    send_all(&producer, &topic, Some(0), &recs);

    let mut marks = (0, 0);
    let advanced = wait_until(BACKGROUND_DEADLINE, || {
        marks = watermarks(&broker, &topic, 0);
        marks.0 > 0
    });
    assert!(
        advanced,
        "log start offset never advanced: watermarks {marks:?}"
    );
    assert_eq!(marks.1, 250, "high watermark");

    // What remains is a contiguous suffix of what was written, readable from
    // the new earliest offset.
    let read = read_all(&broker, &topic, 0, Offset::Beginning);
    let start = read
        .first()
        .map(|m| m.offset())
        .expect("some records remain");
    assert!(start > 0, "reading from earliest still starts at 0");
    assert_eq!(offsets_of(&read), (start..250).collect::<Vec<i64>>());
    assert_same_records(&recs_of(&read), &recs[start as usize..], "records");
    // Retention keeps at least retention.bytes minus one segment.
    assert!(
        read.len() >= 30,
        "retention deleted too much: {} records left",
        read.len()
    );
}

#[test]
fn retention_ms_deletes_old_segments() {
    let broker = Broker::start_with(&FAST_MAINTENANCE);
    let topic = unique_topic("ret-ms");
    create_topic(
        &broker,
        &topic,
        1,
        &[
            ("segment.bytes", SEGMENT_BYTES),
            ("retention.ms", "3600000"),
        ],
    );
    let producer = producer(&broker, IN_ORDER);
    // Records stamped two days ago: every closed segment is past retention.
    let old = now_ms() - 2 * 24 * 3_600_000;
    for i in 0..200 {
        send(
            &producer,
            &topic,
            Some(0),
            Some(old + i as i64),
            &Rec::kv("k", &big_value("old", i)),
        )
        .expect("produce old record");
    }
    // Fresh records afterwards: they must survive.
    let fresh: Vec<Rec> = (0..5)
        .map(|i| Rec::kv("fresh", &format!("fresh-{i}")))
        .collect();
    send_all(&producer, &topic, Some(0), &fresh);

    let mut marks = (0, 0);
    let advanced = wait_until(BACKGROUND_DEADLINE, || {
        marks = watermarks(&broker, &topic, 0);
        marks.0 > 0
    });
    assert!(
        advanced,
        "log start offset never advanced: watermarks {marks:?}"
    );
    assert_eq!(marks.1, 205);
    let read = read_all(&broker, &topic, 0, Offset::Beginning);
    let tail: Vec<Rec> = recs_of(&read).split_off(read.len().saturating_sub(5));
    assert_eq!(tail, fresh, "fresh records lost");
    let start = read[0].offset();
    assert_eq!(offsets_of(&read), (start..205).collect::<Vec<i64>>());
}

#[test]
fn compaction_keeps_latest_value_per_key_and_drops_tombstoned_keys() {
    let broker = Broker::start_with(&FAST_MAINTENANCE);
    let topic = unique_topic("compact");
    create_topic(
        &broker,
        &topic,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.bytes", SEGMENT_BYTES),
            ("delete.retention.ms", "100"),
        ],
    );
    let producer = producer(&broker, IN_ORDER);
    let keys: Vec<String> = (0..10).map(|k| format!("key-{k}")).collect();

    // Several big versions of every key: more than one segment's worth.
    let mut versions = Vec::new();
    for round in 0..12 {
        for key in &keys {
            versions.push(Rec::kv(key, &big_value(&format!("{key}-v{round}"), round)));
        }
    }
    send_all(&producer, &topic, Some(0), &versions);
    // The final value of each key, then a tombstone for key-0.
    let finals: Vec<Rec> = keys[1..]
        .iter()
        .map(|k| Rec::kv(k, &format!("final-{k}")))
        .collect();
    send_all(&producer, &topic, Some(0), &finals);
    let tombstone = Rec {
        key: Some(keys[0].as_bytes().to_vec()),
        value: None,
        headers: vec![],
    };
    send_all(&producer, &topic, Some(0), &[tombstone]);
    // Filler under one key rolls the segment so the finals are compactable.
    let filler: Vec<Rec> = (0..80)
        .map(|i| Rec::kv("filler", &big_value("filler", i)))
        .collect();
    send_all(&producer, &topic, Some(0), &filler);
    let end = watermarks(&broker, &topic, 0).1;

    let mut last_seen = Vec::new();
    let compacted = wait_until(BACKGROUND_DEADLINE, || {
        let read = read_all(&broker, &topic, 0, Offset::Beginning);
        let mut count: HashMap<Vec<u8>, usize> = HashMap::new();
        for m in &read {
            if let Some(k) = m.key() {
                *count.entry(k.to_vec()).or_default() += 1;
            }
        }
        last_seen = read;
        keys[1..]
            .iter()
            .all(|k| count.get(k.as_bytes()) == Some(&1))
            && count.get(keys[0].as_bytes()).copied().unwrap_or(0) <= 1
    });
    let summary: Vec<(i64, String, usize)> = last_seen
        .iter()
        .map(|m| {
            (
                m.offset(),
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                m.payload().map(|p| p.len()).unwrap_or(0),
            )
        })
        .collect();
    assert!(
        compacted,
        "log not compacted within {BACKGROUND_DEADLINE:?}; (offset, key, value len): {summary:?}"
    );

    // Latest value per key, offsets preserved and increasing, filler intact
    // at the end, high watermark unchanged.
    let read = last_seen;
    let offsets = offsets_of(&read);
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets not increasing: {offsets:?}"
    );
    for key in &keys[1..] {
        let m = read
            .iter()
            .find(|m| m.key() == Some(key.as_bytes()))
            .expect("key present");
        assert_eq!(
            m.payload(),
            Some(format!("final-{key}").as_bytes()),
            "latest value of {key}"
        );
    }
    if let Some(m) = read.iter().find(|m| m.key() == Some(keys[0].as_bytes())) {
        assert_eq!(
            m.payload(),
            None,
            "key-0 was deleted: only its tombstone may remain"
        );
    }
    assert_eq!(
        watermarks(&broker, &topic, 0).1,
        end,
        "compaction changed the high watermark"
    );
    let last = read.last().expect("records");
    assert_eq!(last.offset(), end - 1);
    assert_eq!(Rec::of(last), filler[filler.len() - 1]);
}
