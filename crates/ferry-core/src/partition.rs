//! A partition replica: its log plus the replica state Kafka keeps beside it.
//!
//! ```text
//!            append (serialized)                 read (lock-free of appends)
//!  produce ──► validate ─► Log::append ─► high watermark ─► notify fetch waiters
//!                                │
//!                acks=all ──► flush_to(offset): group commit, one fsync for all waiters
//! ```
//!
//! State that exists from day one so that a cluster adds followers instead of
//! rewriting this: leader epoch and its checkpoint (epoch → start offset), log end
//! offset, high watermark, last stable offset and log start offset. On one node the
//! in-sync replica set is this replica alone, so the high watermark follows the log
//! end offset.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_log::record::{self, BatchBuilder};
use ferry_log::{batch, BatchError, BatchHeader, Compression, Log, ReadResult};
use parking_lot::Mutex;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::TopicConfig;
use crate::error::CoreError;

/// A topic name and a partition index: the unit of storage and leadership.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }

    /// Kafka's directory name: `<topic>-<partition>`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// What a produce appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The broker time written into LogAppendTime batches, else -1.
    pub log_append_time: i64,
    pub log_start_offset: i64,
}

/// Which records a fetch may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    ReadUncommitted,
    ReadCommitted,
}

const EPOCH_CHECKPOINT: &str = "leader-epoch-checkpoint";

struct ReplicaState {
    config: TopicConfig,
    leader_epoch: i32,
    /// (epoch, first offset written in it), ascending.
    epoch_cache: Vec<(i32, i64)>,
    unflushed_records: i64,
    last_flush_ms: i64,
}

pub struct Partition {
    pub tp: TopicPartition,
    pub topic_id: Uuid,
    dir: PathBuf,
    log: Arc<Log>,
    state: Mutex<ReplicaState>,
    high_watermark: AtomicI64,
    /// Woken whenever the high watermark moves.
    hw_notify: Notify,
    /// Held while an fsync runs: waiters queue here and find their offset flushed.
    flush_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("tp", &self.tp)
            .finish_non_exhaustive()
    }
}

impl Partition {
    /// Opens (creating or recovering) the replica in `dir`.
    pub fn open(
        tp: TopicPartition,
        topic_id: Uuid,
        dir: &Path,
        config: TopicConfig,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<Partition, CoreError> {
        let log = Log::open(dir, config.log_config(), now_ms)?;
        let leo = log.log_end_offset();
        let mut epoch_cache = read_epoch_checkpoint(dir);
        // A recovered log may have lost its tail: epochs that start past it are gone.
        epoch_cache.retain(|(_, start)| *start <= leo);
        let partition = Partition {
            tp,
            topic_id,
            dir: dir.to_path_buf(),
            high_watermark: AtomicI64::new(leo),
            log: Arc::new(log),
            state: Mutex::new(ReplicaState {
                config,
                leader_epoch,
                epoch_cache,
                unflushed_records: 0,
                last_flush_ms: now_ms,
            }),
            hw_notify: Notify::new(),
            flush_lock: tokio::sync::Mutex::new(()),
        };
        Ok(partition)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    pub fn config(&self) -> TopicConfig {
        self.state.lock().config.clone()
    }

    pub fn set_config(&self, config: TopicConfig) {
        self.log.set_config(config.log_config());
        self.state.lock().config = config;
    }

    pub fn leader_epoch(&self) -> i32 {
        self.state.lock().leader_epoch
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// Last stable offset: the high watermark until transactions exist.
    pub fn last_stable_offset(&self) -> i64 {
        self.high_watermark()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log.log_start_offset()
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log.log_end_offset()
    }

    /// A future that completes when the high watermark moves after this call.
    pub fn hw_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.hw_notify.notified()
    }

    /// Validates and appends the batches of a produce request.
    pub fn append(&self, records: Bytes, now_ms: i64) -> Result<AppendResult, CoreError> {
        let headers = batch::validate_batches(&records).map_err(batch_error)?;
        if headers.is_empty() {
            return Err(CoreError::InvalidRecord(
                "no record batch in produce".into(),
            ));
        }
        let mut state = self.state.lock();
        let max = state.config.max_message_bytes;
        let mut records_in = 0i64;
        for h in &headers {
            if h.total_size() as i64 > max {
                return Err(CoreError::MessageTooLarge {
                    size: h.total_size(),
                    max,
                });
            }
            if h.is_control() {
                return Err(CoreError::InvalidRecord(
                    "clients may not produce control batches".into(),
                ));
            }
            records_in += i64::from(h.records_count);
        }
        let (mut buf, mut headers) = match target_codec(&state.config.compression_type) {
            Some(codec) if headers.iter().any(|h| h.compression().ok() != Some(codec)) => {
                let buf = recompress(&records, codec)?;
                let headers = batch::validate_batches(&buf).map_err(batch_error)?;
                (buf, headers)
            }
            // The request buffer is usually ours alone: take it instead of copying.
            _ => (records.try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..])), headers),
        };
        let log_append_time = if state.config.log_append_time {
            let mut pos = 0;
            for h in headers.iter_mut() {
                let end = pos + h.total_size();
                let bytes = buf.get_mut(pos..end).ok_or_else(|| CoreError::CorruptMessage("batch sizes changed".into()))?;
                batch::set_log_append_time(bytes, now_ms).map_err(batch_error)?;
                *h = BatchHeader::parse(bytes).map_err(batch_error)?;
                pos = end;
            }
            now_ms
        } else {
            -1
        };
        let epoch = state.leader_epoch;
        let info = self.log.append_validated(&mut buf, headers, epoch, now_ms)?;
        if state.epoch_cache.last().is_none_or(|(e, _)| *e < epoch) {
            state.epoch_cache.push((epoch, info.first_offset));
            if let Err(e) = write_epoch_checkpoint(&self.dir, &state.epoch_cache) {
                tracing::warn!(partition = %self.tp, error = %e, "could not write the leader epoch checkpoint");
            }
        }
        state.unflushed_records += records_in;
        drop(state);
        self.advance_high_watermark();
        Ok(AppendResult {
            base_offset: info.first_offset,
            last_offset: info.last_offset,
            log_append_time,
            log_start_offset: self.log.log_start_offset(),
        })
    }

    /// On one node the ISR is this replica, so the high watermark is the log end.
    fn advance_high_watermark(&self) {
        let leo = self.log.log_end_offset();
        if self.high_watermark.swap(leo, Ordering::AcqRel) != leo {
            self.hw_notify.notify_waiters();
        }
    }

    /// Whether `flush.messages` / `flush.ms` ask for an fsync now.
    pub fn flush_due(&self, now_ms: i64) -> bool {
        let state = self.state.lock();
        state.unflushed_records > 0
            && (state.unflushed_records >= state.config.flush_messages
                || now_ms.saturating_sub(state.last_flush_ms) >= state.config.flush_ms)
    }

    /// Makes every offset `<= offset` durable. Concurrent callers share one fsync:
    /// whoever holds the lock flushes everything appended so far, and the callers
    /// queued behind it find their offset already durable (group commit).
    pub async fn flush_to(&self, offset: i64, now_ms: i64) -> Result<(), CoreError> {
        if self.log.flushed_offset() > offset {
            return Ok(());
        }
        let _guard = self.flush_lock.lock().await;
        if self.log.flushed_offset() > offset {
            return Ok(());
        }
        let log = self.log.clone();
        let unflushed_before = self.state.lock().unflushed_records;
        tokio::task::spawn_blocking(move || log.flush())
            .await
            .map_err(|e| CoreError::Storage(e.to_string()))??;
        let mut state = self.state.lock();
        state.unflushed_records = (state.unflushed_records - unflushed_before).max(0);
        state.last_flush_ms = now_ms;
        Ok(())
    }

    /// Reads stored batches for a consumer, up to the high watermark (or the last
    /// stable offset for read_committed).
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        isolation: Isolation,
    ) -> Result<ReadResult, CoreError> {
        let upper = match isolation {
            Isolation::ReadUncommitted => self.high_watermark(),
            Isolation::ReadCommitted => self.last_stable_offset(),
        };
        if offset > self.high_watermark() && offset <= self.log_end_offset() {
            // Only a follower or a future fetch can ask for this; it is not an error.
            return Ok(ReadResult {
                bytes: Bytes::new(),
                next_offset: offset,
            });
        }
        Ok(self.log.read(offset, max_bytes, upper)?)
    }

    /// OffsetForLeaderEpoch: the epoch `<= requested` the log knows and the offset
    /// where it ended (the log end offset for the current epoch).
    pub fn end_offset_for_epoch(&self, requested: i32) -> (i32, i64) {
        let state = self.state.lock();
        if requested == state.leader_epoch {
            return (requested, self.log.log_end_offset());
        }
        if requested < 0 {
            return (-1, -1);
        }
        // As Kafka's leader epoch cache answers: the end of an epoch is the start of
        // the next higher one; an epoch older than any known ends where the first
        // known begins; one newer than every known epoch is undefined.
        let cache = &state.epoch_cache;
        let Some(higher) = cache.iter().find(|(e, _)| *e > requested) else {
            return match cache.last() {
                Some((e, _)) if *e == requested => (requested, self.log.log_end_offset()),
                _ => (-1, -1),
            };
        };
        match cache.iter().rev().find(|(e, _)| *e <= requested) {
            Some((floor, _)) => (*floor, higher.1),
            None => (requested, higher.1),
        }
    }

    /// DeleteRecords: raises the log start offset.
    pub fn delete_records_before(&self, offset: i64) -> Result<i64, CoreError> {
        let target = if offset == -1 {
            self.high_watermark()
        } else {
            offset
        };
        if target < 0 || target > self.high_watermark() {
            return Err(CoreError::OffsetOutOfRange);
        }
        Ok(self.log.delete_records_before(target)?)
    }

    /// Flushes and closes the log.
    pub fn close(&self) -> Result<(), CoreError> {
        self.log.close()?;
        Ok(())
    }
}

/// The codec `compression.type` asks for; `None` keeps the producer's.
fn target_codec(compression_type: &str) -> Option<Compression> {
    match compression_type {
        "uncompressed" => Some(Compression::None),
        "gzip" => Some(Compression::Gzip),
        "snappy" => Some(Compression::Snappy),
        "lz4" => Some(Compression::Lz4),
        "zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// Rewrites every batch with `codec`, keeping each batch's header fields and
/// records. Only a topic whose `compression.type` differs from the producer's pays
/// for this; stored batches are never re-encoded on the fetch path.
fn recompress(records: &[u8], codec: Compression) -> Result<BytesMut, CoreError> {
    let mut out = BytesMut::with_capacity(records.len());
    for batch in batch::batches(records) {
        let (_, batch) = batch.map_err(batch_error)?;
        let (header, decoded) = record::decode_batch(batch).map_err(batch_error)?;
        if header.compression().ok() == Some(codec) {
            out.extend_from_slice(batch);
            continue;
        }
        let mut builder = BatchBuilder::from_header(&header).map_err(batch_error)?.compression(codec);
        for r in decoded {
            builder.push(r).map_err(batch_error)?;
        }
        out.extend_from_slice(&builder.build().map_err(batch_error)?);
    }
    Ok(out)
}

fn batch_error(e: BatchError) -> CoreError {
    match e {
        BatchError::CorruptCrc | BatchError::Truncated => CoreError::CorruptMessage(e.to_string()),
        BatchError::UnsupportedMagic(_) | BatchError::Invalid(_) => {
            CoreError::InvalidRecord(e.to_string())
        }
    }
}

impl From<BatchError> for CoreError {
    fn from(e: BatchError) -> Self {
        batch_error(e)
    }
}

fn read_epoch_checkpoint(dir: &Path) -> Vec<(i32, i64)> {
    let Ok(text) = std::fs::read_to_string(dir.join(EPOCH_CHECKPOINT)) else {
        return Vec::new();
    };
    // Kafka's format: version line, count line, then "epoch offset" lines.
    let mut lines = text.lines().skip(2);
    let mut entries = Vec::new();
    for line in lines.by_ref() {
        let mut parts = line.split_whitespace();
        match (
            parts.next().and_then(|e| e.parse().ok()),
            parts.next().and_then(|o| o.parse().ok()),
        ) {
            (Some(e), Some(o)) => entries.push((e, o)),
            _ => {
                tracing::warn!(dir = %dir.display(), "ignoring a damaged leader epoch checkpoint");
                return Vec::new();
            }
        }
    }
    entries
}

fn write_epoch_checkpoint(dir: &Path, entries: &[(i32, i64)]) -> std::io::Result<()> {
    let mut text = format!("0\n{}\n", entries.len());
    for (e, o) in entries {
        text.push_str(&format!("{e} {o}\n"));
    }
    write_atomically(&dir.join(EPOCH_CHECKPOINT), text.as_bytes())
}

/// Writes a small file so that a crash leaves either the old or the new content.
pub fn write_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(content)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BrokerConfig;
    use std::collections::BTreeMap;

    fn config(overrides: &[(&str, &str)]) -> TopicConfig {
        let overrides: BTreeMap<String, String> = overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        BrokerConfig::default().topic_config(&overrides)
    }

    fn batch(codec: Compression, values: &[&str]) -> Bytes {
        let mut b = BatchBuilder::new(codec);
        for (i, v) in values.iter().enumerate() {
            b.append(1_000 + i as i64, Some(Bytes::from(format!("k{i}"))), Some(Bytes::from(v.to_string())));
        }
        Bytes::from(b.build().expect("build"))
    }

    fn open(dir: &Path, config: TopicConfig) -> Partition {
        Partition::open(TopicPartition::new("t", 0), Uuid::new_v4(), dir, config, 0, 5_000).expect("open")
    }

    #[test]
    fn append_assigns_offsets_and_moves_the_high_watermark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(dir.path(), config(&[]));
        let a = p.append(batch(Compression::None, &["a", "b"]), 5_000).expect("append");
        let b = p.append(batch(Compression::Lz4, &["c"]), 5_000).expect("append");
        assert_eq!((a.base_offset, a.last_offset, b.base_offset), (0, 1, 2));
        assert_eq!(a.log_append_time, -1);
        assert_eq!(p.high_watermark(), 3);
        let read = p.read(0, 1 << 20, Isolation::ReadUncommitted).expect("read");
        let values: Vec<_> = record::decode_records(&read.bytes).expect("decode").into_iter().filter_map(|r| r.value).collect();
        assert_eq!(values, vec![Bytes::from("a"), Bytes::from("b"), Bytes::from("c")]);
    }

    #[test]
    fn log_append_time_topics_stamp_broker_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(dir.path(), config(&[("message.timestamp.type", "LogAppendTime")]));
        let r = p.append(batch(Compression::Gzip, &["a", "b"]), 77_777).expect("append");
        assert_eq!(r.log_append_time, 77_777);
        let read = p.read(0, 1 << 20, Isolation::ReadUncommitted).expect("read");
        let header = batch::validate_batches(&read.bytes).expect("valid")[0];
        assert_eq!(header.timestamp_type(), ferry_log::TimestampType::LogAppendTime);
        assert_eq!(header.max_timestamp, 77_777);
    }

    #[test]
    fn compression_type_recompresses_and_keeps_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(dir.path(), config(&[("compression.type", "zstd")]));
        p.append(batch(Compression::None, &["x", "y", "z"]), 5_000).expect("append");
        let read = p.read(0, 1 << 20, Isolation::ReadUncommitted).expect("read");
        let header = batch::validate_batches(&read.bytes).expect("valid")[0];
        assert_eq!(header.compression().expect("codec"), Compression::Zstd);
        let values: Vec<_> = record::decode_records(&read.bytes).expect("decode").into_iter().filter_map(|r| r.value).collect();
        assert_eq!(values, vec![Bytes::from("x"), Bytes::from("y"), Bytes::from("z")]);
    }

    #[test]
    fn oversized_and_corrupt_batches_are_refused_and_nothing_is_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(dir.path(), config(&[("max.message.bytes", "100")]));
        let big = batch(Compression::None, &[&"v".repeat(200)]);
        assert!(matches!(p.append(big, 5_000), Err(CoreError::MessageTooLarge { .. })));
        let mut corrupt = batch(Compression::None, &["a"]).to_vec();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        assert!(matches!(p.append(Bytes::from(corrupt), 5_000), Err(CoreError::CorruptMessage(_))));
        assert_eq!(p.log_end_offset(), 0);
    }

    #[tokio::test]
    async fn concurrent_flushes_share_one_fsync_and_make_offsets_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Arc::new(open(dir.path(), config(&[])));
        let mut waiters = Vec::new();
        for _ in 0..8 {
            let r = p.append(batch(Compression::None, &["a"]), 5_000).expect("append");
            let p = p.clone();
            waiters.push(tokio::spawn(async move { p.flush_to(r.last_offset, 5_000).await }));
        }
        for w in waiters {
            w.await.expect("join").expect("flush");
        }
        assert!(p.log().flushed_offset() >= 8);
        assert!(!p.flush_due(5_000));
    }

    #[test]
    fn the_leader_epoch_checkpoint_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let p = open(dir.path(), config(&[]));
            p.append(batch(Compression::None, &["a", "b"]), 5_000).expect("append");
            p.close().expect("close");
        }
        let p = Partition::open(TopicPartition::new("t", 0), Uuid::new_v4(), dir.path(), config(&[]), 3, 5_000).expect("reopen");
        p.append(batch(Compression::None, &["c"]), 5_000).expect("append");
        assert_eq!(p.end_offset_for_epoch(0), (0, 2));
        assert_eq!(p.end_offset_for_epoch(1), (0, 2));
        assert_eq!(p.end_offset_for_epoch(3), (3, 3));
        assert_eq!(p.end_offset_for_epoch(4), (-1, -1));
    }
}
