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
use std::sync::atomic::{AtomicI32, AtomicI64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_log::record::{self, BatchBuilder};
use ferry_log::{batch, BatchError, BatchHeader, Compression, Log, ReadResult};
use parking_lot::Mutex;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::config::TopicConfig;
use crate::error::CoreError;
use crate::producer_state::{self, AbortedTxn, ProducerEntry, ProducerStateManager, SequenceCheck};

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

/// Bytes read per step by [`Partition::replay`].
const REPLAY_READ_BYTES: usize = 1 << 20;

const EPOCH_CHECKPOINT: &str = "leader-epoch-checkpoint";

struct ReplicaState {
    config: TopicConfig,
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
    /// Read on every fetch, so kept outside `state` (the append lock); it changes
    /// only with leadership.
    leader_epoch: AtomicI32,
    /// Woken whenever the high watermark moves.
    hw_notify: Notify,
    /// Held while an fsync runs: waiters queue here and find their offset flushed.
    flush_lock: tokio::sync::Mutex<()>,
    /// Idempotent/transactional producer state. Changed only under `state` (the
    /// append lock, taken first); readers lock it briefly for the aborted index.
    producers: Mutex<ProducerStateManager>,
    /// First offset of the oldest open transaction (`i64::MAX`: none). Stored
    /// before the high watermark moves, so a reader that loads the high watermark
    /// first never sees a stable offset past an open transaction.
    first_unstable_offset: AtomicI64,
    /// Base of the active segment when the last producer snapshot was written.
    snapshot_segment_base: AtomicI64,
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
        let producers = recover_producer_state(&log, dir)?;
        let first_unstable = producers.first_unstable_offset().unwrap_or(i64::MAX);
        let partition = Partition {
            tp,
            topic_id,
            dir: dir.to_path_buf(),
            high_watermark: AtomicI64::new(leo),
            log: Arc::new(log),
            leader_epoch: AtomicI32::new(leader_epoch),
            state: Mutex::new(ReplicaState {
                config,
                epoch_cache,
                unflushed_records: 0,
                last_flush_ms: now_ms,
            }),
            hw_notify: Notify::new(),
            flush_lock: tokio::sync::Mutex::new(()),
            producers: Mutex::new(producers),
            first_unstable_offset: AtomicI64::new(first_unstable),
            snapshot_segment_base: AtomicI64::new(-1),
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
        self.leader_epoch.load(Ordering::Acquire)
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// Last stable offset: the high watermark, or the first offset of the oldest
    /// open transaction if that is lower.
    pub fn last_stable_offset(&self) -> i64 {
        // The high watermark first: see `first_unstable_offset`.
        let hw = self.high_watermark();
        hw.min(self.first_unstable_offset.load(Ordering::Acquire))
    }

    /// Aborted transactions overlapping `[from, to)`, for read_committed fetches.
    pub fn aborted_transactions(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        self.producers.lock().aborted_between(from, to)
    }

    /// Producers this partition knows (DescribeProducers).
    pub fn producer_entries(&self) -> Vec<ProducerEntry> {
        self.producers.lock().producers().cloned().collect()
    }

    /// Removes producers idle for `producer.id.expiration.ms` (without an open
    /// transaction) and aborted transactions below the log start.
    pub fn expire_producers(&self, now_ms: i64, expiration_ms: i64) {
        let _append = self.state.lock();
        let mut producers = self.producers.lock();
        let removed = producers.expire(now_ms, expiration_ms);
        producers.prune_below(self.log.log_start_offset());
        if removed > 0 {
            tracing::debug!(partition = %self.tp, removed, "expired idle producer ids");
        }
    }

    /// Appends a commit or abort marker of `producer_id`'s transaction (a control
    /// batch in Kafka's EndTransactionMarker format). Returns its offset.
    pub fn append_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        coordinator_epoch: i32,
        commit: bool,
        now_ms: i64,
    ) -> Result<i64, CoreError> {
        let mut key = Vec::with_capacity(4);
        key.extend_from_slice(&0i16.to_be_bytes());
        key.extend_from_slice(&(if commit { 1i16 } else { 0i16 }).to_be_bytes());
        let mut value = Vec::with_capacity(6);
        value.extend_from_slice(&0i16.to_be_bytes());
        value.extend_from_slice(&coordinator_epoch.to_be_bytes());
        let mut builder = BatchBuilder::new(Compression::None)
            .producer(producer_id, producer_epoch, producer_state::NO_SEQUENCE)
            .transactional(true)
            .control(true);
        builder.append(now_ms, Some(Bytes::from(key)), Some(Bytes::from(value)));
        let mut buf = BytesMut::from(&builder.build().map_err(batch_error)?[..]);
        let state = self.state.lock();
        self.producers
            .lock()
            .check_marker(producer_id, producer_epoch)?;
        let info = self.log.append(&mut buf, self.leader_epoch(), now_ms)?;
        let mut producers = self.producers.lock();
        producers.apply_marker(
            producer_id,
            producer_epoch,
            coordinator_epoch,
            commit,
            info.first_offset,
            now_ms,
        );
        self.first_unstable_offset.store(
            producers.first_unstable_offset().unwrap_or(i64::MAX),
            Ordering::Release,
        );
        drop(producers);
        drop(state);
        self.advance_high_watermark();
        Ok(info.first_offset)
    }

    /// Appends batches written by a coordinator (transactional offset commits):
    /// producer fields are recorded but sequences are not checked.
    pub fn append_from_coordinator(
        &self,
        records: Bytes,
        now_ms: i64,
    ) -> Result<AppendResult, CoreError> {
        self.append_inner(records, now_ms, false)
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
        self.append_inner(records, now_ms, true)
    }

    fn append_inner(
        &self,
        records: Bytes,
        now_ms: i64,
        check_sequences: bool,
    ) -> Result<AppendResult, CoreError> {
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
        if check_sequences {
            // Validated under the append lock: the producer state cannot change until
            // these batches are in the log.
            let producers = self.producers.lock();
            for (i, h) in headers.iter().enumerate() {
                if let SequenceCheck::Duplicate(dup) = producers.check_batch(h)? {
                    if i > 0 || headers.len() > 1 {
                        return Err(CoreError::InvalidRecord(
                            "a retried batch may not share a produce with other batches".into(),
                        ));
                    }
                    tracing::debug!(partition = %self.tp, producer_id = h.producer_id, first_seq = dup.first_seq, "duplicate batch; answering with its original offsets");
                    return Ok(AppendResult {
                        base_offset: dup.first_offset,
                        last_offset: dup.last_offset,
                        log_append_time: -1,
                        log_start_offset: self.log.log_start_offset(),
                    });
                }
            }
            // Several batches of one producer in one request must follow each other.
            for pair in headers.windows(2) {
                let (a, b) = (&pair[0], &pair[1]);
                if a.has_producer_id()
                    && a.producer_id == b.producer_id
                    && b.base_sequence != producer_state::last_sequence(a).wrapping_add(1)
                {
                    return Err(CoreError::OutOfOrderSequence(
                        "batches of one request are not consecutive".into(),
                    ));
                }
            }
        }
        let (mut buf, mut headers) = match target_codec(&state.config.compression_type) {
            Some(codec) if headers.iter().any(|h| h.compression().ok() != Some(codec)) => {
                let buf = recompress(&records, codec)?;
                let headers = batch::validate_batches(&buf).map_err(batch_error)?;
                (buf, headers)
            }
            // The request buffer is usually ours alone: take it instead of copying.
            _ => (
                records
                    .try_into_mut()
                    .unwrap_or_else(|shared| BytesMut::from(&shared[..])),
                headers,
            ),
        };
        let log_append_time = if state.config.log_append_time {
            let mut pos = 0;
            for h in headers.iter_mut() {
                let end = pos + h.total_size();
                let bytes = buf
                    .get_mut(pos..end)
                    .ok_or_else(|| CoreError::CorruptMessage("batch sizes changed".into()))?;
                batch::set_log_append_time(bytes, now_ms).map_err(batch_error)?;
                *h = BatchHeader::parse(bytes).map_err(batch_error)?;
                pos = end;
            }
            now_ms
        } else {
            -1
        };
        let epoch = self.leader_epoch();
        let from_producers = headers.iter().any(|h| h.has_producer_id());
        let info = self
            .log
            .append_validated(&mut buf, headers, epoch, now_ms)?;
        if from_producers {
            self.apply_appended(&buf, info.first_offset, now_ms);
        }
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

    /// Records the producer fields of batches just appended at `first_offset`.
    /// Caller holds the append lock.
    fn apply_appended(&self, buf: &[u8], first_offset: i64, now_ms: i64) {
        let mut producers = self.producers.lock();
        let mut base = first_offset;
        for item in batch::batches(buf) {
            let Ok((mut h, _)) = item else { break };
            h.base_offset = base;
            base = h.last_offset() + 1;
            producers.apply_batch(&h, now_ms);
        }
        self.first_unstable_offset.store(
            producers.first_unstable_offset().unwrap_or(i64::MAX),
            Ordering::Release,
        );
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
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || log.flush())
            .await
            .map_err(|e| CoreError::Storage(e.to_string()))??;
        crate::metrics::metrics()
            .fsync_duration
            .observe(started.elapsed());
        let mut state = self.state.lock();
        state.unflushed_records = (state.unflushed_records - unflushed_before).max(0);
        state.last_flush_ms = now_ms;
        // Kafka snapshots producer state when a segment rolls; here at the first
        // flush after a roll that leaves nothing unflushed, so the snapshot never
        // describes bytes a crash could take away.
        let active_base = self.log.segment_base_offsets().last().copied().unwrap_or(0);
        if active_base != self.snapshot_segment_base.load(Ordering::Relaxed)
            && self.log.flushed_offset() >= self.log.log_end_offset()
        {
            self.write_producer_snapshot();
            self.snapshot_segment_base
                .store(active_base, Ordering::Relaxed);
        }
        drop(state);
        Ok(())
    }

    /// Writes the producer state as of the log end. Caller holds the append lock.
    fn write_producer_snapshot(&self) {
        let leo = self.log.log_end_offset();
        let bytes = self.producers.lock().snapshot_bytes(leo);
        if let Err(e) = producer_state::write_snapshot(&self.dir, leo, &bytes) {
            tracing::warn!(partition = %self.tp, error = %e, "could not write a producer snapshot");
        }
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

    /// Replays the partition from its log start to the high watermark, batch by
    /// batch with the records decoded: how coordinators rebuild their state from an
    /// internal topic at startup. Records of a data batch below the position read
    /// from (a log start inside a batch) are left out.
    pub fn replay(
        &self,
        mut visit: impl FnMut(&BatchHeader, Vec<record::Record>) -> Result<(), CoreError>,
    ) -> Result<(), CoreError> {
        let mut offset = self.log_start_offset();
        let end = self.high_watermark();
        while offset < end {
            let read = self.read(offset, REPLAY_READ_BYTES, Isolation::ReadUncommitted)?;
            if read.bytes.is_empty() || read.next_offset <= offset {
                break;
            }
            for item in batch::batches(&read.bytes) {
                let (header, bytes) = item?;
                let (_, mut records) = record::decode_batch(bytes)?;
                if !header.is_control() {
                    records.retain(|r| r.offset >= offset);
                }
                visit(&header, records)?;
            }
            offset = read.next_offset;
        }
        Ok(())
    }

    /// Key and value of every keyed data record, in log order: the content of a
    /// compacted internal topic.
    pub fn read_keyed(&self) -> Result<Vec<(Bytes, Option<Bytes>)>, CoreError> {
        let mut out = Vec::new();
        self.replay(|header, records| {
            if !header.is_control() {
                out.extend(
                    records
                        .into_iter()
                        .filter_map(|r| r.key.map(|k| (k, r.value))),
                );
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// OffsetForLeaderEpoch: the epoch `<= requested` the log knows and the offset
    /// where it ended (the log end offset for the current epoch).
    pub fn end_offset_for_epoch(&self, requested: i32) -> (i32, i64) {
        let state = self.state.lock();
        if requested == self.leader_epoch() {
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

    /// Flushes and closes the log, then snapshots the producer state.
    pub fn close(&self) -> Result<(), CoreError> {
        let _append = self.state.lock();
        self.log.close()?;
        self.write_producer_snapshot();
        Ok(())
    }
}

/// Rebuilds the producer state that matches the recovered log: the newest
/// snapshot at or below the log end, then every batch after it.
fn recover_producer_state(log: &Log, dir: &Path) -> Result<ProducerStateManager, CoreError> {
    let leo = log.log_end_offset();
    let start = log.log_start_offset();
    let (mut state, from) = match producer_state::load_snapshot(dir, leo) {
        Some((state, offset)) => (state, offset.max(start)),
        None => (ProducerStateManager::new(), start),
    };
    let mut offset = from;
    let mut replayed = 0usize;
    while offset < leo {
        let read = log.read(offset, 1 << 20, leo)?;
        if read.bytes.is_empty() || read.next_offset <= offset {
            break;
        }
        for item in batch::batches(&read.bytes) {
            let (h, bytes) = item.map_err(batch_error)?;
            if h.last_offset() < offset || !h.has_producer_id() {
                continue;
            }
            replayed += 1;
            if h.is_control() {
                let (_, records) = record::decode_batch(bytes).map_err(batch_error)?;
                let Some(key) = records.first().and_then(|r| r.key.clone()) else {
                    continue;
                };
                if key.len() < 4 {
                    continue;
                }
                let commit = i16::from_be_bytes([key[2], key[3]]) == 1;
                let coordinator_epoch = records
                    .first()
                    .and_then(|r| r.value.as_ref())
                    .filter(|v| v.len() >= 6)
                    .map(|v| i32::from_be_bytes([v[2], v[3], v[4], v[5]]))
                    .unwrap_or(-1);
                state.apply_marker(
                    h.producer_id,
                    h.producer_epoch,
                    coordinator_epoch,
                    commit,
                    h.base_offset,
                    h.max_timestamp,
                );
            } else {
                state.apply_batch(&h, h.max_timestamp);
            }
        }
        offset = read.next_offset;
    }
    state.prune_below(start);
    if replayed > 0 {
        tracing::debug!(dir = %dir.display(), from, replayed, "rebuilt producer state from the log");
    }
    Ok(state)
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
        let mut builder = BatchBuilder::from_header(&header)
            .map_err(batch_error)?
            .compression(codec);
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
        let overrides: BTreeMap<String, String> = overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        BrokerConfig::default().topic_config(&overrides)
    }

    fn batch(codec: Compression, values: &[&str]) -> Bytes {
        let mut b = BatchBuilder::new(codec);
        for (i, v) in values.iter().enumerate() {
            b.append(
                1_000 + i as i64,
                Some(Bytes::from(format!("k{i}"))),
                Some(Bytes::from(v.to_string())),
            );
        }
        Bytes::from(b.build().expect("build"))
    }

    fn open(dir: &Path, config: TopicConfig) -> Partition {
        Partition::open(
            TopicPartition::new("t", 0),
            Uuid::new_v4(),
            dir,
            config,
            0,
            5_000,
        )
        .expect("open")
    }

    #[test]
    fn append_assigns_offsets_and_moves_the_high_watermark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(dir.path(), config(&[]));
        let a = p
            .append(batch(Compression::None, &["a", "b"]), 5_000)
            .expect("append");
        let b = p
            .append(batch(Compression::Lz4, &["c"]), 5_000)
            .expect("append");
        assert_eq!((a.base_offset, a.last_offset, b.base_offset), (0, 1, 2));
        assert_eq!(a.log_append_time, -1);
        assert_eq!(p.high_watermark(), 3);
        let read = p
            .read(0, 1 << 20, Isolation::ReadUncommitted)
            .expect("read");
        let values: Vec<_> = record::decode_records(&read.bytes)
            .expect("decode")
            .into_iter()
            .filter_map(|r| r.value)
            .collect();
        assert_eq!(
            values,
            vec![Bytes::from("a"), Bytes::from("b"), Bytes::from("c")]
        );
    }

    #[test]
    fn log_append_time_topics_stamp_broker_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(
            dir.path(),
            config(&[("message.timestamp.type", "LogAppendTime")]),
        );
        let r = p
            .append(batch(Compression::Gzip, &["a", "b"]), 77_777)
            .expect("append");
        assert_eq!(r.log_append_time, 77_777);
        let read = p
            .read(0, 1 << 20, Isolation::ReadUncommitted)
            .expect("read");
        let header = batch::validate_batches(&read.bytes).expect("valid")[0];
        assert_eq!(
            header.timestamp_type(),
            ferry_log::TimestampType::LogAppendTime
        );
        assert_eq!(header.max_timestamp, 77_777);
    }

    #[test]
    fn compression_type_recompresses_and_keeps_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(dir.path(), config(&[("compression.type", "zstd")]));
        p.append(batch(Compression::None, &["x", "y", "z"]), 5_000)
            .expect("append");
        let read = p
            .read(0, 1 << 20, Isolation::ReadUncommitted)
            .expect("read");
        let header = batch::validate_batches(&read.bytes).expect("valid")[0];
        assert_eq!(header.compression().expect("codec"), Compression::Zstd);
        let values: Vec<_> = record::decode_records(&read.bytes)
            .expect("decode")
            .into_iter()
            .filter_map(|r| r.value)
            .collect();
        assert_eq!(
            values,
            vec![Bytes::from("x"), Bytes::from("y"), Bytes::from("z")]
        );
    }

    #[test]
    fn oversized_and_corrupt_batches_are_refused_and_nothing_is_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(dir.path(), config(&[("max.message.bytes", "100")]));
        let big = batch(Compression::None, &[&"v".repeat(200)]);
        assert!(matches!(
            p.append(big, 5_000),
            Err(CoreError::MessageTooLarge { .. })
        ));
        let mut corrupt = batch(Compression::None, &["a"]).to_vec();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        assert!(matches!(
            p.append(Bytes::from(corrupt), 5_000),
            Err(CoreError::CorruptMessage(_))
        ));
        assert_eq!(p.log_end_offset(), 0);
    }

    #[tokio::test]
    async fn concurrent_flushes_share_one_fsync_and_make_offsets_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Arc::new(open(dir.path(), config(&[])));
        let mut waiters = Vec::new();
        for _ in 0..8 {
            let r = p
                .append(batch(Compression::None, &["a"]), 5_000)
                .expect("append");
            let p = p.clone();
            waiters.push(tokio::spawn(async move {
                p.flush_to(r.last_offset, 5_000).await
            }));
        }
        for w in waiters {
            w.await.expect("join").expect("flush");
        }
        assert!(p.log().flushed_offset() >= 8);
        assert!(!p.flush_due(5_000));
    }

    fn producer_batch(pid: i64, seq: i32, txn: bool, values: &[&str]) -> Bytes {
        let mut b = BatchBuilder::new(Compression::None)
            .producer(pid, 0, seq)
            .transactional(txn);
        for v in values {
            b.append(1_000, None, Some(Bytes::from(v.to_string())));
        }
        Bytes::from(b.build().expect("build"))
    }

    #[test]
    fn producer_state_survives_close_and_crash_and_follows_the_recovered_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let p = open(dir.path(), config(&[]));
            p.append(producer_batch(7, 0, false, &["a", "b"]), 5_000)
                .expect("append");
            p.close().expect("close");
        }
        assert_eq!(producer_state::list_snapshots(dir.path()), vec![2]);
        {
            // Reopened from the snapshot: a retry is a duplicate, a gap is refused.
            let p = open(dir.path(), config(&[]));
            let dup = p
                .append(producer_batch(7, 0, false, &["a", "b"]), 5_000)
                .expect("dup");
            assert_eq!((dup.base_offset, dup.last_offset), (0, 1));
            assert!(matches!(
                p.append(producer_batch(7, 5, false, &["x"]), 5_000),
                Err(CoreError::OutOfOrderSequence(_))
            ));
            p.append(producer_batch(7, 2, false, &["c"]), 5_000)
                .expect("append");
            p.append(producer_batch(9, 0, true, &["t1"]), 5_000)
                .expect("append");
            assert_eq!(p.last_stable_offset(), 3);
            // No close: like a SIGKILL after the OS has the bytes.
        }
        {
            // Rebuilt by replaying the log after the snapshot.
            let p = open(dir.path(), config(&[]));
            assert_eq!(p.log_end_offset(), 4);
            assert_eq!(p.last_stable_offset(), 3);
            let dup = p
                .append(producer_batch(7, 2, false, &["c"]), 5_000)
                .expect("dup");
            assert_eq!(dup.base_offset, 2);
            let marker = p.append_marker(9, 0, 0, false, 5_000).expect("marker");
            assert_eq!(marker, 4);
            assert_eq!(p.last_stable_offset(), 5);
            assert_eq!(p.aborted_transactions(0, 5).len(), 1);
        }
        // A snapshot beyond the log end (its tail lost to recovery) is not used.
        std::fs::write(producer_state::snapshot_path(dir.path(), 99), b"bogus").expect("write");
        let p = open(dir.path(), config(&[]));
        assert_eq!(
            p.aborted_transactions(0, 5),
            vec![producer_state::AbortedTxn {
                producer_id: 9,
                first_offset: 3,
                last_offset: 4
            }]
        );
        assert!(!producer_state::list_snapshots(dir.path()).contains(&99));
        let read = p.read(0, 1 << 20, Isolation::ReadCommitted).expect("read");
        assert_eq!(read.next_offset, 5);
    }

    #[test]
    fn the_leader_epoch_checkpoint_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let p = open(dir.path(), config(&[]));
            p.append(batch(Compression::None, &["a", "b"]), 5_000)
                .expect("append");
            p.close().expect("close");
        }
        let p = Partition::open(
            TopicPartition::new("t", 0),
            Uuid::new_v4(),
            dir.path(),
            config(&[]),
            3,
            5_000,
        )
        .expect("reopen");
        p.append(batch(Compression::None, &["c"]), 5_000)
            .expect("append");
        assert_eq!(p.end_offset_for_epoch(0), (0, 2));
        assert_eq!(p.end_offset_for_epoch(1), (0, 2));
        assert_eq!(p.end_offset_for_epoch(3), (3, 3));
        assert_eq!(p.end_offset_for_epoch(4), (-1, -1));
    }
}
