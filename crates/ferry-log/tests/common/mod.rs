//! Helpers shared by the log integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use bytes::Bytes;
use ferry_log::record::decode_records;
use ferry_log::{BatchBuilder, Compression, Log, LogConfig, Record};

pub const ALL_CODECS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

/// A temporary directory, on tmpfs when there is one: these tests simulate crashes
/// by editing files, so real durability is not needed and fsync latency (milliseconds
/// per call on a real disk, hundreds of calls per property run) would dominate.
pub fn tempdir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

/// Small segments and a dense index so a few KiB exercise rolling and indexing.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        retention_ms: -1,
        ..LogConfig::default()
    }
}

pub fn open(dir: &std::path::Path, config: LogConfig) -> Log {
    Log::open(dir, config, 0).unwrap()
}

/// A batch of `n` records with values `"{tag}-{i}"`, timestamps `ts, ts+1, …`.
pub fn batch(n: usize, ts: i64, tag: &str) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    for i in 0..n {
        b.append(ts + i as i64, None, Some(Bytes::from(format!("{tag}-{i}"))));
    }
    b.build().unwrap()
}

/// A batch of keyed records; `None` values are tombstones.
pub fn keyed(codec: Compression, ts: i64, records: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut b = BatchBuilder::new(codec);
    for (key, value) in records {
        b.append(
            ts,
            Some(Bytes::from(key.to_string())),
            value.map(|v| Bytes::from(v.to_string())),
        );
    }
    b.build().unwrap()
}

pub fn append(log: &Log, mut bytes: Vec<u8>, now_ms: i64) -> ferry_log::AppendInfo {
    log.append(&mut bytes, 0, now_ms).unwrap()
}

/// Every record from the log start to the log end, through `Log::read`.
pub fn read_all(log: &Log) -> Vec<Record> {
    read_from(log, log.log_start_offset(), 1 << 20)
}

pub fn read_from(log: &Log, from: i64, max_bytes: usize) -> Vec<Record> {
    let mut records = Vec::new();
    let mut offset = from;
    loop {
        let result = log.read(offset, max_bytes, i64::MAX).unwrap();
        if result.bytes.is_empty() {
            assert_eq!(result.next_offset, offset);
            break;
        }
        assert!(result.next_offset > offset);
        records.extend(
            decode_records(&result.bytes)
                .unwrap()
                .into_iter()
                .filter(|r| r.offset >= offset),
        );
        offset = result.next_offset;
    }
    records
}

pub fn values(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap_or_default().to_vec()).unwrap())
        .collect()
}

pub fn offsets(records: &[Record]) -> Vec<i64> {
    records.iter().map(|r| r.offset).collect()
}

/// Copies every file of a log directory (for crash scenarios built from one log).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

pub fn segment_file(dir: &std::path::Path, base: i64, suffix: &str) -> std::path::PathBuf {
    dir.join(format!("{base:020}{suffix}"))
}
