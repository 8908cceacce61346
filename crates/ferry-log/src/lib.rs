//! ferry-log: the segmented log engine.
//!
//! A partition's log is a directory of segments holding Kafka RecordBatch v2 bytes
//! exactly as produced (only the base offset and leader epoch are rewritten), with a
//! sparse offset index and time index per segment.
//!
//! ```text
//!  produce bytes ──► batch::validate ──► Log::append ──► active segment (.log)
//!                                              │            ├─ .index      (relative offset → position)
//!                                              │            └─ .timeindex  (max timestamp → offset)
//!  fetch ◄── Log::read (stored bytes, as stored) ◄──────────┘
//!
//!  <dir>/00000000000000000000.log  .index  .timeindex     closed segments …
//!       /00000000000000004711.log  .index  .timeindex     … and the active one
//!       /log-start-offset.checkpoint                      raised by DeleteRecords
//!       /recovery-point.checkpoint                        below it: fsynced, trusted
//! ```
//!
//! Modules: [`batch`] (headers, validation), [`record`] (records, [`record::BatchBuilder`]),
//! [`compression`] (codecs), `segment` (one segment, recovery scan), `index` /
//! `time_index` (sparse indexes), `log` ([`Log`]: appends, reads, rolling, flush,
//! truncation), `cleaner` (retention, DeleteRecords, compaction), `checkpoint`.

pub mod batch;
mod checkpoint;
mod cleaner;
pub mod compression;
mod index;
mod log;
pub mod record;
mod segment;
mod time_index;
mod varint;
pub mod verify;

use bytes::Bytes;

pub use batch::{BatchError, BatchHeader, Compression, TimestampType};
pub use log::Log;
pub use record::{BatchBuilder, Record};

/// Per-log settings; the Kafka topic config each field mirrors is named.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: roll the active segment when it would grow past this.
    pub segment_bytes: u64,
    /// `segment.ms`: roll the active segment when it is older than this.
    pub segment_ms: i64,
    /// `index.interval.bytes`: bytes between two entries of the sparse indexes.
    pub index_interval_bytes: u32,
    /// `retention.ms`: delete closed segments whose newest record is older; -1 = never.
    pub retention_ms: i64,
    /// `retention.bytes`: delete oldest closed segments while the log is larger; -1 = never.
    pub retention_bytes: i64,
    /// `cleanup.policy` contains `delete`.
    pub cleanup_delete: bool,
    /// `cleanup.policy` contains `compact`.
    pub cleanup_compact: bool,
    /// `delete.retention.ms`: how long a tombstone survives compaction.
    pub delete_retention_ms: i64,
    /// `min.compaction.lag.ms`: records younger than this are not compacted.
    pub min_compaction_lag_ms: i64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            cleanup_delete: true,
            cleanup_compact: false,
            delete_retention_ms: 24 * 3600 * 1000,
            min_compaction_lag_ms: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("offset {offset} is out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        log_end: i64,
    },
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    #[error("storage error: {0}")]
    Io(#[from] std::io::Error),
    #[error("log is closed")]
    Closed,
}

/// What an append assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub first_offset: i64,
    pub last_offset: i64,
    /// Largest batch max-timestamp among the appended batches.
    pub max_timestamp: i64,
    /// Number of batches appended.
    pub batch_count: usize,
}

/// Stored batches as they are on disk.
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    /// Zero or more whole batches, byte for byte as stored.
    pub bytes: Bytes,
    /// Offset after the last record returned (= next fetch offset).
    pub next_offset: i64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupOutcome {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub log_start_offset: i64,
}
