//! Property tests: random logs checked against simple models (a Vec of records).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::fs;

use bytes::Bytes;
use common::*;
use ferry_log::batch::{self, BatchHeader};
use ferry_log::record::decode_records;
use ferry_log::{BatchBuilder, Compression, LogConfig, Record};
use proptest::prelude::*;

/// One produced batch: codec and (timestamp, key, value) per record.
#[derive(Debug, Clone)]
struct BatchSpec {
    codec: usize,
    records: Vec<(i64, Option<u8>, Option<Vec<u8>>)>,
}

fn batch_spec() -> impl Strategy<Value = BatchSpec> {
    (
        0usize..5,
        proptest::collection::vec(
            (
                0i64..10_000,
                proptest::option::of(0u8..8),
                proptest::option::weighted(0.9, proptest::collection::vec(any::<u8>(), 0..120)),
            ),
            1..6,
        ),
    )
        .prop_map(|(codec, records)| BatchSpec { codec, records })
}

fn build(spec: &BatchSpec) -> Vec<u8> {
    let mut b = BatchBuilder::new(ALL_CODECS[spec.codec]);
    for (ts, key, value) in &spec.records {
        b.append(
            *ts,
            key.map(|k| Bytes::from(vec![b'k', k])),
            value.clone().map(Bytes::from),
        );
    }
    b.build().unwrap()
}

fn config(segment_bytes: u64, index_interval_bytes: u32) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes,
        retention_ms: -1,
        ..LogConfig::default()
    }
}

/// Appends every spec and returns the model: every record with its offset.
fn fill(log: &ferry_log::Log, specs: &[BatchSpec]) -> Vec<Record> {
    let mut model = Vec::new();
    for spec in specs {
        let info = append(log, build(spec), 0);
        for (i, (ts, key, value)) in spec.records.iter().enumerate() {
            model.push(Record {
                offset: info.first_offset + i as i64,
                timestamp: *ts,
                key: key.map(|k| Bytes::from(vec![b'k', k])),
                value: value.clone().map(Bytes::from),
                headers: vec![],
            });
        }
    }
    model
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn append_read_round_trip_across_rolls(
        specs in proptest::collection::vec(batch_spec(), 1..40),
        segment_bytes in 100u64..3000,
        interval in 0u32..600,
        max_bytes in 1usize..2000,
        starts in proptest::collection::vec(any::<prop::sample::Index>(), 5),
    ) {
        let dir = tempdir();
        let log = open(dir.path(), config(segment_bytes, interval));
        let model = fill(&log, &specs);
        prop_assert_eq!(log.log_end_offset(), model.len() as i64);
        prop_assert_eq!(read_from(&log, 0, max_bytes), model.clone());
        // Reads from anywhere start with the batch holding the offset, stay under
        // max_bytes after the first batch, and hand back the right next offset.
        for start in &starts {
            let offset = start.index(model.len()) as i64;
            let r = log.read(offset, max_bytes, i64::MAX).unwrap();
            let headers = batch::validate_batches(&r.bytes).unwrap();
            prop_assert!(headers[0].base_offset <= offset && offset <= headers[0].last_offset());
            prop_assert!(headers.len() == 1 || r.bytes.len() <= max_bytes);
            prop_assert_eq!(r.next_offset, headers.last().unwrap().last_offset() + 1);
            let bound = offset + 3;
            let r = log.read(offset, usize::MAX, bound).unwrap();
            for h in batch::validate_batches(&r.bytes).unwrap_or_default() {
                prop_assert!(h.last_offset() < bound);
            }
        }
        // The same after a reopen (indexes loaded from disk instead of built).
        log.close().unwrap();
        let log = open(dir.path(), config(segment_bytes, interval));
        prop_assert_eq!(read_from(&log, 0, max_bytes), model);
    }

    #[test]
    fn recovery_cuts_the_active_segment_anywhere(
        specs in proptest::collection::vec(batch_spec(), 2..25),
        segment_bytes in 300u64..3000,
        cut in any::<prop::sample::Index>(),
        flush_first in any::<bool>(),
    ) {
        let dir = tempdir();
        let log = open(dir.path(), config(segment_bytes, 100));
        let model = fill(&log, &specs);
        if flush_first { log.flush().unwrap(); }
        let active = *log.segment_base_offsets().last().unwrap();
        drop(log);
        let path = segment_file(dir.path(), active, ".log");
        let bytes = fs::read(&path).unwrap();
        let keep = cut.index(bytes.len() + 1);
        // Whole batches before the cut survive; the one it tears goes.
        let mut end = active;
        for item in batch::batches(&bytes[..keep]) {
            match item {
                Ok((h, _)) => end = h.last_offset() + 1,
                Err(_) => break,
            }
        }
        fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(keep as u64).unwrap();
        let log = open(dir.path(), config(segment_bytes, 100));
        prop_assert_eq!(log.log_end_offset(), end);
        prop_assert_eq!(read_all(&log), model[..end as usize].to_vec());
        prop_assert_eq!(append(&log, batch(1, 0, "next"), 0).first_offset, end);
    }

    #[test]
    fn offset_for_timestamp_matches_a_scan(
        specs in proptest::collection::vec(batch_spec(), 1..30),
        segment_bytes in 200u64..3000,
        interval in 0u32..400,
        targets in proptest::collection::vec(-5i64..10_100, 8),
        start in any::<prop::sample::Index>(),
    ) {
        let dir = tempdir();
        let log = open(dir.path(), config(segment_bytes, interval));
        let model = fill(&log, &specs);
        let log_start = start.index(model.len() + 1) as i64;
        log.delete_records_before(log_start).unwrap();
        let start_offset = log.log_start_offset();
        for target in targets {
            let expected = model.iter().find(|r| r.offset >= start_offset && r.timestamp >= target).map(|r| (r.offset, r.timestamp));
            prop_assert_eq!(log.offset_for_timestamp(target).unwrap(), expected, "target {}", target);
        }
        let max = model.iter().map(|r| r.timestamp).max().unwrap();
        let first_max = model.iter().find(|r| r.timestamp == max).unwrap();
        if log.segment_base_offsets()[0] == 0 {
            prop_assert_eq!(log.max_timestamp().unwrap(), Some((max, first_max.offset)));
        }
    }

    #[test]
    fn truncate_to_matches_the_model(
        specs in proptest::collection::vec(batch_spec(), 1..30),
        segment_bytes in 200u64..3000,
        points in proptest::collection::vec(any::<prop::sample::Index>(), 1..4),
        reopen in any::<bool>(),
    ) {
        let dir = tempdir();
        let log = open(dir.path(), config(segment_bytes, 150));
        let mut model = fill(&log, &specs);
        let mut log = log;
        for point in points {
            let target = point.index(model.len() + 1) as i64;
            let end = log.log_end_offset();
            log.truncate_to(target).unwrap();
            // The batch containing target goes entirely.
            let stored = read_all(&log);
            prop_assert!(log.log_end_offset() <= target.min(end));
            prop_assert_eq!(log.log_end_offset(), stored.last().map_or(0, |r| r.offset + 1));
            model.truncate(stored.len());
            prop_assert_eq!(&stored, &model);
            if reopen {
                drop(log);
                log = open(dir.path(), config(segment_bytes, 150));
                prop_assert_eq!(read_all(&log), model.clone());
            }
            let extra = fill(&log, &specs[..1]);
            prop_assert_eq!(extra[0].offset, model.len() as i64);
            model.extend(extra);
            prop_assert_eq!(read_all(&log), model.clone());
        }
    }

    #[test]
    fn compaction_matches_the_model(
        specs in proptest::collection::vec(batch_spec(), 1..40),
        segment_bytes in 200u64..2000,
        now in 0i64..20_000,
        delete_retention_ms in 0i64..10_000,
    ) {
        let dir = tempdir();
        let config = LogConfig {
            cleanup_compact: true,
            delete_retention_ms,
            ..config(segment_bytes, 100)
        };
        let log = open(dir.path(), config.clone());
        let model = fill(&log, &specs);
        log.compact(now).unwrap();
        let active_base = *log.segment_base_offsets().last().unwrap();
        let stored = log.read(0, usize::MAX, i64::MAX).unwrap();
        let compacted = decode_records(&stored.bytes).unwrap();

        let mut latest = HashMap::new();
        for r in &model {
            if let Some(k) = &r.key { latest.insert(k.clone(), r.offset); }
        }
        // Tombstone age is judged by the batch's max timestamp.
        let mut batch_max = HashMap::new();
        for item in batch::batches(&build_all(&specs)) {
            let (h, b): (BatchHeader, &[u8]) = item.unwrap();
            for r in decode_records(b).unwrap() { batch_max.insert(r.offset, h.max_timestamp); }
        }
        let expected: Vec<&Record> = model.iter().filter(|r| {
            r.offset >= active_base
                || r.key.as_ref().is_none_or(|k| latest[k] == r.offset)
                    && !(r.key.is_some() && r.value.is_none() && now - batch_max[&r.offset] > delete_retention_ms)
        }).collect();
        prop_assert_eq!(compacted.iter().collect::<Vec<_>>(), expected);
        drop(log);
        let log = open(dir.path(), config);
        prop_assert_eq!(log.log_end_offset(), model.len() as i64);
        prop_assert_eq!(log.read(0, usize::MAX, i64::MAX).unwrap().bytes, stored.bytes);
    }
}

/// The specs as one buffer of batches with the offsets the log assigned them.
fn build_all(specs: &[BatchSpec]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = 0;
    for spec in specs {
        let mut b = build(spec);
        batch::set_base_offset(&mut b, offset).unwrap();
        offset += spec.records.len() as i64;
        out.extend(b);
    }
    out
}

#[test]
fn builder_output_appends_with_every_codec() {
    let dir = tempdir();
    let log = open(dir.path(), small_config());
    for codec in ALL_CODECS {
        let mut b = BatchBuilder::new(codec);
        b.append_with_headers(
            1,
            Some(Bytes::from_static(b"k")),
            Some(Bytes::from(vec![7u8; 3000])),
            vec![("h".into(), None)],
        );
        append(&log, b.build().unwrap(), 0);
    }
    let records = read_all(&log);
    assert_eq!(records.len(), 5);
    assert!(records
        .iter()
        .all(|r| r.value.as_ref().unwrap().len() == 3000
            && r.headers == vec![("h".to_string(), None)]));
    let _ = Compression::None;
}
