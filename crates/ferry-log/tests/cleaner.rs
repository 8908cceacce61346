//! Retention, DeleteRecords and compaction through the public API, including
//! compaction crash leftovers.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::fs;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use ferry_log::batch::{self, BatchHeader};
use ferry_log::record::{decode_batch, decode_records};
use ferry_log::{BatchBuilder, Compression, LogConfig, LogError, Record};

fn retention_config() -> LogConfig {
    LogConfig {
        segment_bytes: 400,
        retention_ms: -1,
        retention_bytes: -1,
        ..small_config()
    }
}

#[test]
fn retention_by_time_deletes_old_closed_segments_only() {
    let dir = tempdir();
    let log = open(
        dir.path(),
        LogConfig {
            retention_ms: 1000,
            ..retention_config()
        },
    );
    for i in 0..30 {
        append(&log, batch(2, i * 100, "t"), 0);
    }
    let bases = log.segment_base_offsets();
    assert!(bases.len() > 3);
    assert_eq!(log.enforce_retention(0).unwrap().segments_deleted, 0);
    // At now = 2000 every segment whose newest record is before 1000 goes.
    let outcome = log.enforce_retention(2000).unwrap();
    assert!(outcome.segments_deleted > 0);
    let remaining = log.segment_base_offsets();
    assert_eq!(outcome.log_start_offset, remaining[0]);
    assert_eq!(log.log_start_offset(), remaining[0]);
    assert_eq!(remaining[..], bases[outcome.segments_deleted..]);
    assert!(!segment_file(dir.path(), bases[0], ".log").exists());
    assert!(!segment_file(dir.path(), bases[0], ".index").exists());
    let first = read_all(&log);
    assert!(
        first[0].timestamp + 1000 >= 1000,
        "the oldest surviving segment is young enough"
    );
    assert!(matches!(
        log.read(0, 100, i64::MAX),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    // Far in the future: everything but the active segment.
    log.enforce_retention(i64::MAX / 2).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.log_end_offset(), 60);
    // Disabled by policy or by -1.
    log.set_config(LogConfig {
        cleanup_delete: false,
        retention_ms: 0,
        ..retention_config()
    });
    for _ in 0..10 {
        append(&log, batch(2, 0, "x"), 0);
    }
    assert_eq!(
        log.enforce_retention(i64::MAX / 2)
            .unwrap()
            .segments_deleted,
        0
    );
    log.set_config(retention_config());
    assert_eq!(
        log.enforce_retention(i64::MAX / 2)
            .unwrap()
            .segments_deleted,
        0
    );
}

#[test]
fn retention_by_size_keeps_the_log_above_the_limit() {
    let dir = tempdir();
    let log = open(dir.path(), retention_config());
    for i in 0..40 {
        append(&log, batch(2, i, "s"), 0);
    }
    let limit = 1000u64;
    log.set_config(LogConfig {
        retention_bytes: limit as i64,
        ..retention_config()
    });
    let before = log.size_bytes();
    let outcome = log.enforce_retention(0).unwrap();
    assert!(outcome.segments_deleted > 0);
    assert_eq!(before - outcome.bytes_deleted, log.size_bytes());
    assert!(log.size_bytes() >= limit);
    let oldest = fs::metadata(segment_file(
        dir.path(),
        log.segment_base_offsets()[0],
        ".log",
    ))
    .unwrap()
    .len();
    assert!(
        log.size_bytes() - oldest < limit,
        "one more deletion would go below the limit"
    );
    assert_eq!(read_all(&log).last().unwrap().offset, 79);
}

#[test]
fn reads_racing_retention_get_out_of_range_not_panics() {
    let dir = tempdir();
    let log = Arc::new(open(
        dir.path(),
        LogConfig {
            retention_bytes: 800,
            ..retention_config()
        },
    ));
    let reader = {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut offset = 0;
            for _ in 0..3000 {
                match log.read(offset, 300, i64::MAX) {
                    Ok(r) => {
                        decode_records(&r.bytes).unwrap();
                        offset = if r.next_offset == log.log_end_offset() {
                            log.log_start_offset()
                        } else {
                            r.next_offset
                        };
                    }
                    Err(LogError::OffsetOutOfRange { log_start, .. }) => offset = log_start,
                    Err(e) => panic!("{e}"),
                }
            }
        })
    };
    for i in 0..300 {
        append(&log, batch(2, i, "r"), 0);
        log.enforce_retention(0).unwrap();
    }
    reader.join().unwrap();
    assert!(log.segment_count() < 10);
}

#[test]
fn delete_records_before_raises_and_persists_the_log_start() {
    let dir = tempdir();
    let log = open(dir.path(), retention_config());
    for i in 0..30 {
        append(&log, batch(2, i, "d"), 0);
    }
    let bases = log.segment_base_offsets();
    assert!(matches!(
        log.delete_records_before(61),
        Err(LogError::OffsetOutOfRange {
            offset: 61,
            log_end: 60,
            ..
        })
    ));
    assert_eq!(log.delete_records_before(0).unwrap(), 0);
    let target = bases[2] + 1;
    assert_eq!(log.delete_records_before(target).unwrap(), target);
    assert_eq!(log.segment_base_offsets()[0], bases[2]);
    assert!(matches!(
        log.read(target - 1, 100, i64::MAX),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    // Reading at the start returns the batch containing it.
    let r = log.read(target, 1, i64::MAX).unwrap();
    let h = BatchHeader::parse(&r.bytes).unwrap();
    assert!(h.base_offset <= target && h.last_offset() >= target);
    assert_eq!(read_all(&log).first().unwrap().offset, target);
    // Lower is a no-op.
    assert_eq!(log.delete_records_before(3).unwrap(), target);
    drop(log);
    let log = open(dir.path(), retention_config());
    assert_eq!(log.log_start_offset(), target);
    assert!(matches!(
        log.read(target - 1, 100, i64::MAX),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    // Up to the end: every record goes, including the active segment's.
    assert_eq!(log.delete_records_before(60).unwrap(), 60);
    assert_eq!(log.segment_base_offsets(), vec![60]);
    assert_eq!(log.size_bytes(), 0);
    assert!(log.read(60, 100, i64::MAX).unwrap().bytes.is_empty());
    assert_eq!(append(&log, batch(1, 0, "e"), 0).first_offset, 60);
    drop(log);
    let log = open(dir.path(), retention_config());
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (60, 61));
}

fn compact_config() -> LogConfig {
    LogConfig {
        segment_bytes: 600,
        cleanup_compact: true,
        cleanup_delete: false,
        delete_retention_ms: 1000,
        ..small_config()
    }
}

/// What a compacted log must hold, given everything that was appended.
fn check_compacted(
    all: &[Record],
    compacted: &[Record],
    active_base: i64,
    now_ms: i64,
    delete_retention_ms: i64,
) {
    let mut latest: HashMap<Bytes, i64> = HashMap::new();
    for r in all {
        if let Some(k) = &r.key {
            latest.insert(k.clone(), r.offset);
        }
    }
    let by_offset: HashMap<i64, &Record> = all.iter().map(|r| (r.offset, r)).collect();
    let kept: HashMap<i64, &Record> = compacted.iter().map(|r| (r.offset, r)).collect();
    assert!(compacted.windows(2).all(|w| w[0].offset < w[1].offset));
    for r in compacted {
        assert_eq!(by_offset[&r.offset], r, "kept records are unchanged");
    }
    for r in all {
        let in_active = r.offset >= active_base;
        let is_latest = r.key.as_ref().is_none_or(|k| latest[k] == r.offset);
        let expired_tombstone =
            r.key.is_some() && r.value.is_none() && now_ms - r.timestamp > delete_retention_ms;
        let expected = in_active || (is_latest && !expired_tombstone);
        assert_eq!(kept.contains_key(&r.offset), expected, "record {r:?}");
    }
}

#[test]
fn compaction_keeps_the_latest_value_per_key_with_every_codec() {
    let dir = tempdir();
    let log = open(dir.path(), compact_config());
    let keys = ["a", "b", "c", "d", "e"];
    let mut codecs = HashMap::new();
    for i in 0..60usize {
        let codec = ALL_CODECS[i % 5];
        let key = keys[(i * 7) % 5];
        let value = format!("v{i}");
        let records: Vec<(&str, Option<&str>)> = if i % 11 == 5 {
            vec![(key, None)]
        } else {
            vec![(key, Some(&value)), (keys[(i * 3) % 5], Some("x"))]
        };
        let info = append(&log, keyed(codec, 10 * i as i64, &records), 0);
        codecs.insert(info.first_offset, codec);
    }
    // Null keys are never compacted away.
    let mut null_key = BatchBuilder::new(Compression::Gzip);
    null_key.append(0, None, Some(Bytes::from_static(b"no key")));
    codecs.insert(
        append(&log, null_key.build().unwrap(), 0).first_offset,
        Compression::Gzip,
    );
    let info = append(
        &log,
        keyed(Compression::None, 600, &[("a", Some("final"))]),
        0,
    );
    codecs.insert(info.first_offset, Compression::None);
    let all = read_all(&log);
    let segments_before = log.segment_count();
    assert!(segments_before > 4);

    let now = 700; // tombstones from before t=-300 would expire: none do yet
    let outcome = log.compact(now).unwrap();
    let active_base = *log.segment_base_offsets().last().unwrap();
    let compacted = read_all(&log);
    check_compacted(&all, &compacted, active_base, now, 1000);
    assert!(compacted.len() < all.len());
    assert!(outcome.bytes_deleted > 0);
    assert_eq!(
        outcome.segments_deleted,
        segments_before - log.segment_count()
    );
    // Every stored batch keeps its base offset and codec.
    let stored = log.read(0, 1 << 20, i64::MAX).unwrap();
    for item in batch::batches(&stored.bytes) {
        let (header, bytes) = item.unwrap();
        if header.records_count > 0 {
            assert_eq!(header.compression().unwrap(), codecs[&header.base_offset]);
        }
        batch::validate_stored_batches(bytes).unwrap();
    }
    // Later passes only merge the shrunk segments; the content stays, and it converges.
    let mut passes = 0;
    while log.compact(now).unwrap().bytes_deleted > 0 {
        assert_eq!(read_all(&log), compacted);
        passes += 1;
        assert!(passes < 5);
    }
    assert_eq!(read_all(&log), compacted);
    drop(log);
    let log = open(dir.path(), compact_config());
    assert_eq!(read_all(&log), compacted);
    assert_eq!(log.log_end_offset(), all.last().unwrap().offset + 1);
}

#[test]
fn tombstones_go_after_delete_retention_and_the_lag_is_respected() {
    let dir = tempdir();
    let config = compact_config();
    let log = open(dir.path(), config.clone());
    for i in 0..20 {
        append(
            &log,
            keyed(
                Compression::Zstd,
                1000 + i,
                &[("k", Some("old")), ("j", Some("old"))],
            ),
            0,
        );
    }
    append(&log, keyed(Compression::Zstd, 2000, &[("k", None)]), 0);
    for i in 0..20 {
        append(
            &log,
            keyed(Compression::None, 3000 + i, &[("other", Some("filler"))]),
            0,
        );
    }
    let all = read_all(&log);

    // min.compaction.lag.ms keeps young segments untouched.
    log.set_config(LogConfig {
        min_compaction_lag_ms: 1_000_000,
        ..config.clone()
    });
    assert_eq!(
        log.compact(3100).unwrap(),
        ferry_log::CleanupOutcome::default()
    );
    assert_eq!(read_all(&log), all);

    // Tombstone younger than delete.retention.ms: kept, its key's older values gone.
    log.set_config(config.clone());
    log.compact(2500).unwrap();
    let active_base = *log.segment_base_offsets().last().unwrap();
    let compacted = read_all(&log);
    check_compacted(&all, &compacted, active_base, 2500, 1000);
    assert!(compacted
        .iter()
        .any(|r| r.key.as_deref() == Some(&b"k"[..]) && r.value.is_none()));
    assert_eq!(
        compacted
            .iter()
            .filter(|r| r.key.as_deref() == Some(&b"j"[..]))
            .count(),
        1
    );

    // Old enough: the tombstone goes too.
    log.compact(10_000).unwrap();
    let compacted = read_all(&log);
    check_compacted(&all, &compacted, active_base, 10_000, 1000);
    assert!(!compacted
        .iter()
        .any(|r| r.key.as_deref() == Some(&b"k"[..])));
}

#[test]
fn compaction_keeps_transactional_batches_and_producer_state() {
    let dir = tempdir();
    let log = open(
        dir.path(),
        LogConfig {
            segment_bytes: 1 << 20,
            ..compact_config()
        },
    );
    // An idempotent producer's batch whose records are all superseded later.
    let mut idempotent = BatchBuilder::new(Compression::Snappy).producer(42, 1, 0);
    idempotent.append(
        0,
        Some(Bytes::from_static(b"p")),
        Some(Bytes::from_static(b"1")),
    );
    append(&log, idempotent.build().unwrap(), 0);
    let mut txn = BatchBuilder::new(Compression::None)
        .producer(43, 0, 0)
        .transactional(true);
    txn.append(
        0,
        Some(Bytes::from_static(b"p")),
        Some(Bytes::from_static(b"txn")),
    );
    append(&log, txn.build().unwrap(), 0);
    for i in 0..5 {
        append(
            &log,
            keyed(Compression::None, i, &[("p", Some("plain"))]),
            0,
        );
    }
    append(&log, keyed(Compression::None, 9, &[("q", Some("tail"))]), 0);
    // Roll by age so everything above is in a closed segment.
    log.set_config(LogConfig {
        segment_ms: 0,
        ..compact_config()
    });
    append(
        &log,
        keyed(Compression::None, 10, &[("z", Some("active"))]),
        1,
    );
    log.compact(0).unwrap();

    let stored = log.read(0, 1 << 20, i64::MAX).unwrap();
    let batches: Vec<(BatchHeader, Vec<Record>)> = batch::batches(&stored.bytes)
        .map(|b| decode_batch(b.unwrap().1).unwrap())
        .collect();
    // The producer's only batch stays as an empty header; the transactional one is
    // untouched and did not shadow older plain values.
    let (h, records) = &batches[0];
    assert_eq!(
        (
            h.producer_id,
            h.base_offset,
            h.last_offset(),
            h.records_count
        ),
        (42, 0, 0, 0)
    );
    assert!(records.is_empty());
    let (h, records) = &batches[1];
    assert!(h.is_transactional());
    assert_eq!(values(records), vec!["txn"]);
    let kept: Vec<i64> = batches
        .iter()
        .skip(2)
        .flat_map(|(_, r)| r.iter().map(|r| r.offset))
        .collect();
    assert_eq!(kept, vec![6, 7, 8]);
    // Consumers skip empty batches and see offsets move on.
    assert_eq!(offsets(&read_all(&log)), vec![1, 6, 7, 8]);
}

/// A log whose next compaction merges several closed segments into one, and a
/// copy of it taken before that compaction.
fn compacted_pair() -> (tempfile::TempDir, tempfile::TempDir, Vec<Record>, Vec<i64>) {
    let before = tempdir();
    let after = tempdir();
    let log = open(after.path(), compact_config());
    for i in 0..40 {
        append(
            &log,
            keyed(
                Compression::Lz4,
                i,
                &[(["a", "b", "c"][i as usize % 3], Some("value"))],
            ),
            0,
        );
    }
    // The first pass shrinks the (full) segments; the next one merges them.
    assert_eq!(log.compact(100).unwrap().segments_deleted, 0);
    append(
        &log,
        keyed(Compression::Lz4, 50, &[("a", Some("newest"))]),
        0,
    );
    log.close().unwrap();
    drop(log);
    copy_dir(after.path(), before.path());
    let bases_before: Vec<i64> = {
        let log = open(after.path(), compact_config());
        let bases = log.segment_base_offsets();
        assert!(
            log.compact(100).unwrap().segments_deleted > 0,
            "segments get merged"
        );
        log.close().unwrap();
        bases
    };
    let log = open(after.path(), compact_config());
    let compacted = read_all(&log);
    drop(log);
    (before, after, compacted, bases_before)
}

#[test]
fn a_committed_swap_is_finished_on_open() {
    let (before, after, compacted, bases_before) = compacted_pair();
    // Crash right after the commit point: old segments all still there, the output
    // under its .swap names.
    for suffix in [".log", ".index", ".timeindex"] {
        fs::copy(
            segment_file(after.path(), 0, suffix),
            before.path().join(format!("{:020}{suffix}.swap", 0)),
        )
        .unwrap();
    }
    let log = open(before.path(), compact_config());
    assert_eq!(read_all(&log), compacted);
    let bases = log.segment_base_offsets();
    assert!(bases.len() < bases_before.len());
    for base in bases_before.iter().filter(|b| !bases.contains(b)) {
        assert!(!segment_file(before.path(), *base, ".log").exists());
    }
    assert!(fs::read_dir(before.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_str()
        .unwrap()
        .ends_with(".swap")));
}

#[test]
fn a_swap_interrupted_midway_is_finished_on_open() {
    let (before, after, compacted, _) = compacted_pair();
    // Crash after the other segments of the group were deleted and the indexes got
    // their final names, but before the .log did.
    let log_after = open(after.path(), compact_config());
    let group_end = log_after.segment_base_offsets()[1];
    drop(log_after);
    let log = open(before.path(), compact_config());
    let doomed: Vec<i64> = log
        .segment_base_offsets()
        .into_iter()
        .filter(|b| *b > 0 && *b < group_end)
        .collect();
    drop(log);
    for base in doomed {
        for suffix in [".log", ".index", ".timeindex"] {
            fs::remove_file(segment_file(before.path(), base, suffix)).unwrap();
        }
    }
    fs::copy(
        segment_file(after.path(), 0, ".index"),
        segment_file(before.path(), 0, ".index"),
    )
    .unwrap();
    fs::copy(
        segment_file(after.path(), 0, ".log"),
        segment_file(before.path(), 0, ".log.swap"),
    )
    .unwrap();
    let log = open(before.path(), compact_config());
    assert_eq!(read_all(&log), compacted);
}

#[test]
fn an_uncommitted_compaction_is_discarded_on_open() {
    let (before, after, _, _) = compacted_pair();
    let original = {
        let log = open(before.path(), compact_config());
        read_all(&log)
    };
    for suffix in [".log", ".index", ".timeindex"] {
        fs::copy(
            segment_file(after.path(), 0, suffix),
            before.path().join(format!("{:020}{suffix}.cleaned", 0)),
        )
        .unwrap();
    }
    let log = open(before.path(), compact_config());
    assert_eq!(read_all(&log), original);
    assert!(fs::read_dir(before.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_str()
        .unwrap()
        .ends_with(".cleaned")));
}

#[test]
fn compaction_while_appending_and_reading() {
    let dir = tempdir();
    let log = Arc::new(open(dir.path(), compact_config()));
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for i in 0..300i64 {
                let key = format!("k{}", i % 7);
                append(&log, keyed(Compression::Gzip, i, &[(&key, Some("v"))]), 0);
            }
        })
    };
    for _ in 0..20 {
        log.compact(0).unwrap();
        let records = read_all(&log);
        assert!(records.windows(2).all(|w| w[0].offset < w[1].offset));
    }
    writer.join().unwrap();
    log.compact(0).unwrap();
    let records = read_all(&log);
    let active_base = *log.segment_base_offsets().last().unwrap();
    let closed: Vec<_> = records.iter().filter(|r| r.offset < active_base).collect();
    let mut keys: Vec<_> = closed.iter().map(|r| r.key.clone()).collect();
    keys.dedup();
    assert_eq!(
        keys.len(),
        closed.len(),
        "one record per key in closed segments"
    );
    assert_eq!(log.log_end_offset(), 300);
}
