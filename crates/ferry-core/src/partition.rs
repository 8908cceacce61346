//! A partition replica: its log plus the replica state Kafka keeps beside it.
//!
//! ```text
//!  leader     append (serialized)                      read (lock-free of appends)
//!  produce ──► validate ─► Log::append ─► ReplicaTracker ─► high watermark ─► notify
//!                                │              ▲                              fetch waiters
//!                                │   follower fetch: record_follower_fetch ─► ISR proposal
//!                acks=all ──► flush_to(offset): group commit, one fsync for all waiters
//!                        └──► wait_replicated(offset): high watermark past it
//!
//!  follower   leader's batches ─► append_as_follower (leader's offsets and epochs)
//!             divergent tail   ─► truncate_to
//! ```
//!
//! State that exists from day one so that a cluster adds followers instead of
//! rewriting this: leader epoch and its checkpoint (epoch → start offset), log end
//! offset, high watermark, last stable offset and log start offset.
//!
//! A partition is a leader or a follower. An opened partition leads a cluster of
//! one until [`Partition::become_leader`] or [`Partition::become_follower`] says
//! otherwise, so on one node the high watermark follows the log end offset. A
//! leader keeps a [`ReplicaTracker`] (the followers' positions and the ISR) and its
//! high watermark is the minimum log end offset of the ISR; a follower refuses
//! produce and takes the leader's batches as they are.
//!
//! Locks, outermost first: `state` (the append lock) → `producers`, and `state` →
//! `role`. The high watermark is only written under `role`, so it moves in order.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, Ordering};
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
use crate::replica::{ReplicaError, ReplicaTracker};

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

/// What a follower's fetch changed on the leader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowerFetchOutcome {
    /// The high watermark moved (fetch waiters were woken).
    pub hw_moved: bool,
    /// An ISR with the follower added, to send to the controller (AlterPartition).
    /// The partition now counts it as pending: answer with [`Partition::set_isr`]
    /// once the controller confirms, or [`Partition::abort_isr_change`].
    pub propose_isr: Option<Vec<i32>>,
}

/// Where a follower stands after appending what it fetched from its leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerAppend {
    pub log_end_offset: i64,
    pub high_watermark: i64,
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

/// The replica id of a partition that was opened and not yet told which broker it
/// is on (see [`Partition::become_leader`]).
pub const UNKNOWN_REPLICA_ID: i32 = -1;

/// Which side of replication this replica is on.
enum Role {
    Leader(ReplicaTracker),
    Follower { leader_id: i32 },
}

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
    /// Woken whenever the high watermark moves, and when the role changes (so an
    /// `acks=all` waiter finds out it no longer leads).
    hw_notify: Notify,
    /// Woken whenever a leader append moves the log end offset: what follower
    /// fetches wait on, since they read past the high watermark.
    leo_notify: Notify,
    /// Leader (with its tracker) or follower. See the lock order in the module doc.
    role: Mutex<Role>,
    /// Bumped by every `become_follower`: only a follower truncates, so a leader
    /// whose count is unchanged still holds every record it appended.
    follower_terms: AtomicU64,
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
    /// The high watermark of the last checkpoint before this start
    /// (`i64::MIN`: none), where a replica's first role starts it.
    checkpointed_high_watermark: AtomicI64,
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
            leo_notify: Notify::new(),
            // A cluster of one until told otherwise: the high watermark is the log end.
            role: Mutex::new(Role::Leader(ReplicaTracker::new(
                UNKNOWN_REPLICA_ID,
                leader_epoch,
                vec![UNKNOWN_REPLICA_ID],
                vec![UNKNOWN_REPLICA_ID],
                leo,
                leo,
                now_ms,
            ))),
            follower_terms: AtomicU64::new(0),
            flush_lock: tokio::sync::Mutex::new(()),
            producers: Mutex::new(producers),
            first_unstable_offset: AtomicI64::new(first_unstable),
            snapshot_segment_base: AtomicI64::new(-1),
            checkpointed_high_watermark: AtomicI64::new(i64::MIN),
        };
        Ok(partition)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The high watermark checkpointed before this start (see
    /// `hw_checkpoint`): the replica's first role as leader or follower starts
    /// from it rather than from the log start.
    pub fn restore_high_watermark(&self, hw: i64) {
        self.checkpointed_high_watermark
            .store(hw, Ordering::Release);
    }

    /// Where a just-opened replica's high watermark starts: the checkpointed
    /// one, within the recovered log (a crash may have lost an unflushed
    /// tail), or the log start without one.
    fn starting_high_watermark(&self) -> i64 {
        let start = self.log.log_start_offset();
        self.checkpointed_high_watermark
            .load(Ordering::Acquire)
            .clamp(start, self.log.log_end_offset().max(start))
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
        self.check_leader()?;
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
        self.after_leader_append();
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
        self.check_leader()?;
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
        if state.epoch_cache.last().is_none_or(|(e, _)| *e < epoch)
            && assign_epoch(&mut state.epoch_cache, epoch, info.first_offset)
        {
            self.write_epoch_cache(&state.epoch_cache);
        }
        state.unflushed_records += records_in;
        drop(state);
        self.after_leader_append();
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

    /// A leader appended: the tracker learns the new log end offset and the high
    /// watermark moves as far as the ISR allows (to the log end when the leader is
    /// the ISR alone). Wakes follower fetches either way.
    fn after_leader_append(&self) {
        let mut role = self.role.lock();
        if let Role::Leader(tracker) = &mut *role {
            if let Some(hw) = tracker.on_leader_append(self.log.log_end_offset()) {
                self.publish_high_watermark(hw);
            }
        }
        drop(role);
        self.leo_notify.notify_waiters();
    }

    /// Sets the high watermark and wakes its waiters if it changed. Caller holds
    /// the `role` lock.
    fn publish_high_watermark(&self, hw: i64) -> bool {
        let moved = self.high_watermark.swap(hw, Ordering::AcqRel) != hw;
        if moved {
            self.hw_notify.notify_waiters();
        }
        moved
    }

    fn write_epoch_cache(&self, cache: &[(i32, i64)]) {
        if let Err(e) = write_epoch_checkpoint(&self.dir, cache) {
            tracing::warn!(partition = %self.tp, error = %e, "could not write the leader epoch checkpoint");
        }
    }

    /// Produce, markers and coordinator writes go to the leader only.
    fn check_leader(&self) -> Result<(), CoreError> {
        match &*self.role.lock() {
            Role::Leader(_) => Ok(()),
            Role::Follower { .. } => Err(CoreError::NotLeaderOrFollower),
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

    /// Replays the partition from its log start to its log end, batch by batch
    /// with the records decoded: how a coordinator rebuilds its state from an
    /// internal topic when it starts leading it. Like Kafka's loaders it reads to
    /// the log end, not the high watermark: a new leader's high watermark lags its
    /// log until the followers fetch again, and its log is the one that stays.
    /// Records of a data batch below the position read from (a log start inside
    /// a batch) are left out.
    pub fn replay(
        &self,
        mut visit: impl FnMut(&BatchHeader, Vec<record::Record>) -> Result<(), CoreError>,
    ) -> Result<(), CoreError> {
        let mut offset = self.log_start_offset();
        let end = self.log_end_offset();
        while offset < end {
            let read = self.read_for_follower(offset, REPLAY_READ_BYTES)?;
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

    /// The newest epoch in the leader epoch cache (Kafka's `latestEpoch`), -1 when
    /// it is empty: what a follower sends as `last_fetched_epoch`, so the leader
    /// can tell it where its log diverges.
    pub fn latest_epoch(&self) -> i32 {
        self.state
            .lock()
            .epoch_cache
            .last()
            .map_or(-1, |(epoch, _)| *epoch)
    }

    /// Follower: the log ends below the leader's log start (retention or
    /// DeleteRecords there), so nothing of it can be fetched: it restarts empty at
    /// `offset` (Kafka's `truncateFullyAndStartAt`), with no epochs and no
    /// producer state of its own.
    pub fn truncate_fully_and_start_at(&self, offset: i64) -> Result<(), CoreError> {
        let mut state = self.state.lock();
        if self.is_leader() {
            return Err(CoreError::NotLeaderOrFollower);
        }
        self.log.truncate_fully_and_start_at(offset)?;
        state.epoch_cache.clear();
        self.write_epoch_cache(&state.epoch_cache);
        *self.producers.lock() = ProducerStateManager::new();
        self.first_unstable_offset
            .store(i64::MAX, Ordering::Release);
        self.snapshot_segment_base.store(-1, Ordering::Relaxed);
        let role = self.role.lock();
        self.publish_high_watermark(offset);
        drop(role);
        tracing::info!(partition = %self.tp, offset, "restarted the log at the leader's log start");
        Ok(())
    }

    /// Follower: the leader's log start moved up (retention or DeleteRecords);
    /// this replica drops what the leader dropped, up to its own high watermark.
    pub fn follow_log_start(&self, leader_log_start: i64) -> Result<(), CoreError> {
        let target = leader_log_start.min(self.high_watermark());
        if target > self.log_start_offset() {
            self.log.delete_records_before(target)?;
        }
        Ok(())
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

/// Replication: roles, the follower side, and the leader's view of its followers.
impl Partition {
    /// Whether this replica leads the partition (also true for a partition that
    /// was opened and never told otherwise: a cluster of one).
    pub fn is_leader(&self) -> bool {
        matches!(&*self.role.lock(), Role::Leader(_))
    }

    /// The leader's broker id: this broker's id when it leads
    /// ([`UNKNOWN_REPLICA_ID`] before [`Partition::become_leader`] named it).
    pub fn leader_id(&self) -> i32 {
        match &*self.role.lock() {
            Role::Leader(tracker) => tracker.local_id(),
            Role::Follower { leader_id } => *leader_id,
        }
    }

    /// Makes this replica the leader for `leader_epoch` (Kafka's `makeLeader`).
    ///
    /// The epoch is recorded in the epoch cache at the log end offset. A new leader
    /// keeps the high watermark it had as a follower (at most its log end offset)
    /// and moves it as the ISR's fetches allow; with `replicas == [local_id]` it
    /// is the log end offset at once and after every append, as on one node. The
    /// same leader re-elected (a new epoch or assignment) keeps its followers'
    /// positions. An epoch older than the current one is refused.
    ///
    /// A replica just opened has no high watermark of its own (ferry keeps no
    /// high-watermark checkpoint): its log may end with records the rest of the
    /// ISR never got, so as leader it starts from its log start offset instead of
    /// its log end, and ListOffsets answers OFFSET_NOT_AVAILABLE until the ISR's
    /// fetches bring it to the epoch's start (see
    /// [`Partition::leader_epoch_start_offset`]).
    pub fn become_leader(
        &self,
        local_id: i32,
        leader_epoch: i32,
        replicas: Vec<i32>,
        isr: Vec<i32>,
        now_ms: i64,
    ) -> Result<(), CoreError> {
        self.become_leader_at(local_id, leader_epoch, 0, replicas, isr, now_ms)
    }

    /// [`Partition::become_leader`] with the partition epoch (KIP-497) of the
    /// metadata that gives this role: the ISR changes this leader proposes say
    /// they were based on it, and the controller refuses them once it is stale.
    pub fn become_leader_at(
        &self,
        local_id: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        replicas: Vec<i32>,
        isr: Vec<i32>,
        now_ms: i64,
    ) -> Result<(), CoreError> {
        let mut state = self.state.lock();
        if leader_epoch < self.leader_epoch() {
            return Err(CoreError::FencedLeaderEpoch);
        }
        let leo = self.log.log_end_offset();
        if assign_epoch(&mut state.epoch_cache, leader_epoch, leo) {
            self.write_epoch_cache(&state.epoch_cache);
        }
        let mut role = self.role.lock();
        match &mut *role {
            Role::Leader(tracker) if tracker.local_id() == local_id => {
                tracker.on_leader_append(leo);
                tracker.update_assignment(leader_epoch, replicas, isr, now_ms);
            }
            previous => {
                let high_watermark = if just_opened(previous) {
                    self.starting_high_watermark()
                } else {
                    self.high_watermark()
                };
                *role = Role::Leader(ReplicaTracker::new(
                    local_id,
                    leader_epoch,
                    replicas,
                    isr,
                    leo,
                    high_watermark,
                    now_ms,
                ));
            }
        }
        self.leader_epoch.store(leader_epoch, Ordering::Release);
        if let Role::Leader(tracker) = &mut *role {
            tracker.set_partition_epoch(partition_epoch);
            self.publish_high_watermark(tracker.high_watermark());
        }
        drop(role);
        drop(state);
        tracing::debug!(partition = %self.tp, leader_epoch, "leading");
        // Fetches long-polling with an older epoch find out it changed.
        self.hw_notify.notify_waiters();
        self.leo_notify.notify_waiters();
        Ok(())
    }

    /// Makes this replica a follower of `leader_id` for `leader_epoch` (Kafka's
    /// `makeFollower`): the leader's tracking stops, produce is refused with
    /// [`CoreError::NotLeaderOrFollower`] and so are `acks=all` waiters. The log is
    /// not truncated here: the fetcher finds the divergence point (diverging epoch
    /// or OffsetForLeaderEpoch) and calls [`Partition::truncate_to`]. An epoch
    /// older than the current one is refused.
    pub fn become_follower(&self, leader_epoch: i32, leader_id: i32) -> Result<(), CoreError> {
        let state = self.state.lock();
        if leader_epoch < self.leader_epoch() {
            return Err(CoreError::FencedLeaderEpoch);
        }
        let mut role = self.role.lock();
        if just_opened(&role) {
            // The checkpointed high watermark, or none yet (see `become_leader`):
            // the leader's fetch responses move it.
            self.publish_high_watermark(self.starting_high_watermark());
        }
        *role = Role::Follower { leader_id };
        drop(role);
        self.follower_terms.fetch_add(1, Ordering::AcqRel);
        self.leader_epoch.store(leader_epoch, Ordering::Release);
        drop(state);
        tracing::debug!(partition = %self.tp, leader_epoch, leader_id, "following");
        self.hw_notify.notify_waiters();
        self.leo_notify.notify_waiters();
        Ok(())
    }

    /// Appends batches fetched from the leader as they are: the leader's offsets
    /// and partition leader epochs (Kafka's `appendAsFollower`). The epoch cache
    /// learns each new epoch from the batches, the producer state records them (so
    /// this replica keeps idempotence and transactions if it becomes leader), and
    /// the high watermark becomes `min(leader_hw, log end offset)`.
    ///
    /// `records` may be empty (a fetch that only carried a new high watermark).
    /// The first batch must start at or after the log end offset: truncate first.
    pub fn append_as_follower(
        &self,
        records: &[u8],
        leader_hw: i64,
        now_ms: i64,
    ) -> Result<FollowerAppend, CoreError> {
        let mut state = self.state.lock();
        if self.is_leader() {
            return Err(CoreError::NotLeaderOrFollower);
        }
        if !records.is_empty() {
            self.log.append_as_follower(records, now_ms)?;
            let mut epochs_changed = false;
            let mut records_in = 0i64;
            let mut producers = self.producers.lock();
            for item in batch::batches(records) {
                // The log validated every batch (CRC included) before writing it.
                let (h, bytes) = item.map_err(batch_error)?;
                records_in += i64::from(h.records_count);
                if state
                    .epoch_cache
                    .last()
                    .is_none_or(|(e, _)| *e < h.partition_leader_epoch)
                {
                    epochs_changed |= assign_epoch(
                        &mut state.epoch_cache,
                        h.partition_leader_epoch,
                        h.base_offset,
                    );
                }
                // The bytes are in the log: a marker that cannot be read is skipped,
                // not a reason to leave the state behind the log.
                if let Err(e) = apply_stored_batch(&mut producers, &h, bytes, now_ms) {
                    tracing::warn!(partition = %self.tp, offset = h.base_offset, error = %e, "a replicated control batch could not be read");
                }
            }
            self.first_unstable_offset.store(
                producers.first_unstable_offset().unwrap_or(i64::MAX),
                Ordering::Release,
            );
            drop(producers);
            if epochs_changed {
                self.write_epoch_cache(&state.epoch_cache);
            }
            state.unflushed_records += records_in;
        }
        let leo = self.log.log_end_offset();
        let hw = leader_hw.min(leo).max(self.log.log_start_offset());
        let role = self.role.lock();
        self.publish_high_watermark(hw);
        drop(role);
        drop(state);
        Ok(FollowerAppend {
            log_end_offset: leo,
            high_watermark: hw,
        })
    }

    /// Removes a divergent tail: every record at or above `offset` (on a batch
    /// boundary, so the log may end lower; see `Log::truncate_to`). Epochs that
    /// start at or past the new log end leave the epoch cache, the producer state
    /// is rebuilt from the newest snapshot below it, and the high watermark is
    /// capped at it. Only a follower truncates. Returns the new log end offset.
    pub fn truncate_to(&self, offset: i64) -> Result<i64, CoreError> {
        let mut state = self.state.lock();
        if self.is_leader() {
            return Err(CoreError::NotLeaderOrFollower);
        }
        let before = (self.log.log_start_offset(), self.log.log_end_offset());
        self.log.truncate_to(offset)?;
        let leo = self.log.log_end_offset();
        // Epochs that start at the new end go even when the log itself is
        // unchanged (Kafka's `truncateTo` does the same): a replica that became
        // leader and appended nothing before losing the leadership has its epoch
        // at its log end, and would report it as its last fetched epoch forever,
        // to be told to truncate again and again.
        let len = state.epoch_cache.len();
        state.epoch_cache.retain(|(_, start)| *start < leo);
        if state.epoch_cache.len() != len {
            self.write_epoch_cache(&state.epoch_cache);
        }
        if (self.log.log_start_offset(), leo) != before {
            // Kafka's `loadProducerState(truncateOffset)`: snapshots past the new end
            // go, then the log after the newest remaining one is replayed.
            let rebuilt = recover_producer_state(&self.log, &self.dir)?;
            self.first_unstable_offset.store(
                rebuilt.first_unstable_offset().unwrap_or(i64::MAX),
                Ordering::Release,
            );
            *self.producers.lock() = rebuilt;
            self.snapshot_segment_base.store(-1, Ordering::Relaxed);
            tracing::info!(partition = %self.tp, offset, log_end_offset = leo, "truncated a divergent tail");
        }
        let role = self.role.lock();
        if self.high_watermark() > leo {
            self.publish_high_watermark(leo);
        }
        drop(role);
        drop(state);
        Ok(leo)
    }

    /// Leader: where its log ended when its epoch began (Kafka's
    /// `leaderEpochStartOffsetOpt`); `None` on a follower. A high watermark below
    /// it has yet to catch up with what the ISR holds, so offsets derived from it
    /// are not answered (ListOffsets: OFFSET_NOT_AVAILABLE).
    pub fn leader_epoch_start_offset(&self) -> Option<i64> {
        match &*self.role.lock() {
            Role::Leader(tracker) => Some(tracker.leader_epoch_start_offset()),
            Role::Follower { .. } => None,
        }
    }

    /// Leader: follower `replica_id` fetched from `fetch_offset`. Updates its
    /// position; the high watermark may move (waking fetch waiters) and the
    /// follower may be proposed for the ISR.
    ///
    /// Errors: not the leader, or `replica_id` is not an assigned replica
    /// ([`CoreError::NotLeaderOrFollower`]); `fetch_offset` outside
    /// `[log start, log end]` ([`CoreError::OffsetOutOfRange`], position unchanged).
    pub fn record_follower_fetch(
        &self,
        replica_id: i32,
        fetch_offset: i64,
        now_ms: i64,
    ) -> Result<FollowerFetchOutcome, CoreError> {
        let mut role = self.role.lock();
        let Role::Leader(tracker) = &mut *role else {
            return Err(CoreError::NotLeaderOrFollower);
        };
        let leo = self.log.log_end_offset();
        if fetch_offset < self.log.log_start_offset() || fetch_offset > leo {
            return Err(CoreError::OffsetOutOfRange);
        }
        let decision = tracker
            .on_follower_fetch(replica_id, fetch_offset, leo, now_ms)
            .map_err(|ReplicaError::UnknownReplica(_)| CoreError::NotLeaderOrFollower)?;
        let hw_moved = decision
            .high_watermark
            .is_some_and(|hw| self.publish_high_watermark(hw));
        Ok(FollowerFetchOutcome {
            hw_moved,
            propose_isr: decision.propose_isr,
        })
    }

    /// Leader: the ISR without the followers that were not caught up within
    /// `replica_lag_time_max_ms`, to send to the controller; `None` if every
    /// member is in sync, an ISR change is pending, or this replica follows.
    pub fn maybe_shrink_isr(&self, now_ms: i64, replica_lag_time_max_ms: i64) -> Option<Vec<i32>> {
        let mut role = self.role.lock();
        let Role::Leader(tracker) = &mut *role else {
            return None;
        };
        if let Some(hw) = tracker.on_leader_append(self.log.log_end_offset()) {
            self.publish_high_watermark(hw);
        }
        tracker.maybe_shrink_isr(now_ms, replica_lag_time_max_ms)
    }

    /// Leader: the controller confirmed `isr` for `leader_epoch`. The high
    /// watermark may move. A confirmation for another epoch is refused
    /// ([`CoreError::FencedLeaderEpoch`]), as is one sent to a follower.
    pub fn set_isr(&self, leader_epoch: i32, isr: Vec<i32>) -> Result<(), CoreError> {
        let mut role = self.role.lock();
        let Role::Leader(tracker) = &mut *role else {
            return Err(CoreError::NotLeaderOrFollower);
        };
        if leader_epoch != self.leader_epoch() {
            return Err(CoreError::FencedLeaderEpoch);
        }
        if let Some(hw) = tracker.set_isr(isr) {
            self.publish_high_watermark(hw);
        }
        Ok(())
    }

    /// Leader: the leader epoch and partition epoch to send with `isr`, if it
    /// is the ISR change pending (`None` once the metadata replaced it, or on a
    /// follower: the proposal is obsolete and is not sent).
    pub fn isr_proposal(&self, isr: &[i32]) -> Option<(i32, i32)> {
        match &*self.role.lock() {
            Role::Leader(tracker) if tracker.pending_isr() == Some(isr) => {
                Some((tracker.leader_epoch(), tracker.partition_epoch()))
            }
            _ => None,
        }
    }

    /// Leader: the controller confirmed `isr` for a proposal based on partition
    /// epoch `based_on`; the partition is at `partition_epoch` after it (`None`
    /// from a controller that does not say). An answer to a proposal the metadata
    /// has replaced since (this leader's state moved past `based_on`) changes
    /// nothing. Errors as [`Partition::set_isr`].
    pub fn confirm_isr_change(
        &self,
        based_on: i32,
        leader_epoch: i32,
        partition_epoch: Option<i32>,
        isr: Vec<i32>,
    ) -> Result<(), CoreError> {
        let mut role = self.role.lock();
        let Role::Leader(tracker) = &mut *role else {
            return Err(CoreError::NotLeaderOrFollower);
        };
        if leader_epoch != self.leader_epoch() {
            return Err(CoreError::FencedLeaderEpoch);
        }
        if tracker.partition_epoch() != based_on {
            return Ok(());
        }
        tracker.set_partition_epoch(partition_epoch.unwrap_or(based_on));
        if let Some(hw) = tracker.set_isr(isr) {
            self.publish_high_watermark(hw);
        }
        Ok(())
    }

    /// Leader: the ISR change proposed on partition epoch `based_on` was refused
    /// or could not be sent. Nothing changes if this leader's state moved past
    /// `based_on` meanwhile: the metadata dropped that proposal already, and a
    /// pending change is a newer one, awaiting its own answer.
    pub fn abort_isr_change_based_on(&self, based_on: i32) {
        let mut role = self.role.lock();
        if let Role::Leader(tracker) = &mut *role {
            if tracker.partition_epoch() == based_on {
                if let Some(hw) = tracker.abort_isr_change() {
                    self.publish_high_watermark(hw);
                }
            }
        }
    }

    /// Leader: the ISR change last proposed was refused or could not be sent.
    pub fn abort_isr_change(&self) {
        let mut role = self.role.lock();
        if let Role::Leader(tracker) = &mut *role {
            if let Some(hw) = tracker.abort_isr_change() {
                self.publish_high_watermark(hw);
            }
        }
    }

    /// The ISR the controller confirmed (the leader included); empty on a follower,
    /// which does not track it.
    pub fn isr(&self) -> Vec<i32> {
        match &*self.role.lock() {
            Role::Leader(tracker) => tracker.isr().to_vec(),
            Role::Follower { .. } => Vec::new(),
        }
    }

    /// How many replicas are in the confirmed ISR (0 on a follower): what
    /// `min.insync.replicas` is compared with before an `acks=all` append.
    pub fn in_sync_count(&self) -> usize {
        match &*self.role.lock() {
            Role::Leader(tracker) => tracker.isr().len(),
            Role::Follower { .. } => 0,
        }
    }

    /// Whether every in-sync replica has `offset`: the high watermark is past it.
    pub fn replicated_to(&self, offset: i64) -> bool {
        self.high_watermark() > offset
    }

    /// Waits until every in-sync replica has `offset` (the last offset of an
    /// `acks=all` produce), as Kafka's `DelayedProduce` does. Call it right after
    /// the append: a leader that has been a follower since the call may have lost
    /// the records to a truncation.
    ///
    /// - `Ok(())`: the high watermark passed `offset`.
    /// - [`CoreError::NotEnoughReplicasAfterAppend`]: it did, but the ISR (with a
    ///   pending change) is smaller than `min.insync.replicas`.
    /// - [`CoreError::NotLeaderOrFollower`]: this replica stopped leading, even if
    ///   only for a while.
    /// - [`CoreError::RequestTimedOut`]: `deadline` passed first.
    pub async fn wait_replicated(
        &self,
        offset: i64,
        deadline: tokio::time::Instant,
    ) -> Result<(), CoreError> {
        let terms = self.follower_terms.load(Ordering::Acquire);
        loop {
            let notified = self.hw_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let min_insync_replicas = self.state.lock().config.min_insync_replicas;
            {
                let role = self.role.lock();
                let Role::Leader(tracker) = &*role else {
                    return Err(CoreError::NotLeaderOrFollower);
                };
                if self.follower_terms.load(Ordering::Acquire) != terms {
                    return Err(CoreError::NotLeaderOrFollower);
                }
                if self.high_watermark() > offset {
                    return if (tracker.maximal_isr().len() as i64) < min_insync_replicas {
                        Err(CoreError::NotEnoughReplicasAfterAppend)
                    } else {
                        Ok(())
                    };
                }
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return Err(CoreError::RequestTimedOut),
            }
        }
    }

    /// A future that completes when a leader append moves the log end offset (or
    /// the role changes) after this call: what a follower's fetch long-poll waits on.
    pub fn log_end_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.leo_notify.notified()
    }

    /// Reads stored batches for a follower: up to the log end offset, not the high
    /// watermark.
    pub fn read_for_follower(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> Result<ReadResult, CoreError> {
        Ok(self.log.read(offset, max_bytes, i64::MAX)?)
    }

    /// For a fetch that says its last batch had `last_fetched_epoch`: if the
    /// fetcher's log diverges from this one, the (epoch, end offset) it must
    /// truncate to, as Kafka returns in `DivergingEpoch`. `None`: fetch normally.
    pub fn diverging_epoch(
        &self,
        last_fetched_epoch: i32,
        fetch_offset: i64,
    ) -> Option<(i32, i64)> {
        let (epoch, end_offset) = self.end_offset_for_epoch(last_fetched_epoch);
        (epoch < last_fetched_epoch || end_offset < fetch_offset).then_some((epoch, end_offset))
    }
}

/// Whether `role` is the one [`Partition::open`] gives: leading a cluster of one
/// under [`UNKNOWN_REPLICA_ID`], never told its place in the cluster.
fn just_opened(role: &Role) -> bool {
    matches!(role, Role::Leader(tracker) if tracker.local_id() == UNKNOWN_REPLICA_ID)
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
            apply_stored_batch(&mut state, &h, bytes, h.max_timestamp)?;
        }
        offset = read.next_offset;
    }
    state.prune_below(start);
    if replayed > 0 {
        tracing::debug!(dir = %dir.display(), from, replayed, "rebuilt producer state from the log");
    }
    Ok(state)
}

/// Records one stored batch in the producer state: a data batch's producer fields,
/// or the commit/abort of a transaction marker (a control batch).
fn apply_stored_batch(
    producers: &mut ProducerStateManager,
    h: &BatchHeader,
    bytes: &[u8],
    timestamp_ms: i64,
) -> Result<(), CoreError> {
    if !h.has_producer_id() {
        return Ok(());
    }
    if !h.is_control() {
        producers.apply_batch(h, timestamp_ms);
        return Ok(());
    }
    let (_, records) = record::decode_batch(bytes).map_err(batch_error)?;
    let Some(key) = records.first().and_then(|r| r.key.clone()) else {
        return Ok(());
    };
    if key.len() < 4 {
        return Ok(());
    }
    let commit = i16::from_be_bytes([key[2], key[3]]) == 1;
    let coordinator_epoch = records
        .first()
        .and_then(|r| r.value.as_ref())
        .filter(|v| v.len() >= 6)
        .map(|v| i32::from_be_bytes([v[2], v[3], v[4], v[5]]))
        .unwrap_or(-1);
    producers.apply_marker(
        h.producer_id,
        h.producer_epoch,
        coordinator_epoch,
        commit,
        h.base_offset,
        timestamp_ms,
    );
    Ok(())
}

/// Adds `epoch` starting at `start_offset` to an epoch cache, as Kafka's
/// `LeaderEpochFileCache.assign` does: nothing if the latest entry is that epoch
/// already (starting no later), else every entry at or above the epoch or the
/// offset goes first, so the cache stays ascending in both. Returns whether the
/// cache changed.
fn assign_epoch(cache: &mut Vec<(i32, i64)>, epoch: i32, start_offset: i64) -> bool {
    if epoch < 0 || start_offset < 0 {
        return false;
    }
    if let Some((e, s)) = cache.last() {
        if *e == epoch && *s <= start_offset {
            return false;
        }
    }
    cache.retain(|(e, s)| *e < epoch && *s < start_offset);
    cache.push((epoch, start_offset));
    true
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
    use std::time::Duration;

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

    /// A partition this broker (id 1) leads at `epoch` with the given replicas and ISR.
    fn leader(dir: &Path, epoch: i32, replicas: &[i32], isr: &[i32]) -> Partition {
        let p = open(dir, config(&[]));
        p.become_leader(1, epoch, replicas.to_vec(), isr.to_vec(), 5_000)
            .expect("become leader");
        p
    }

    /// A partition that follows broker `leader_id` at `epoch`.
    fn follower(dir: &Path, epoch: i32, leader_id: i32) -> Partition {
        let p = open(dir, config(&[]));
        p.become_follower(epoch, leader_id)
            .expect("become follower");
        p
    }

    /// What a follower fetch from `from` returns: the leader's stored batches.
    fn fetch_from(leader: &Partition, from: i64) -> Bytes {
        leader
            .read_for_follower(from, 1 << 20)
            .expect("follower read")
            .bytes
    }

    fn values(bytes: &[u8]) -> Vec<Bytes> {
        record::decode_records(bytes)
            .expect("decode")
            .into_iter()
            .filter_map(|r| r.value)
            .collect()
    }

    #[test]
    fn a_single_replica_leader_moves_the_high_watermark_with_every_append() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = leader(dir.path(), 2, &[1], &[1]);
        p.append(batch(Compression::None, &["a", "b"]), 5_000)
            .expect("append");
        assert_eq!(p.high_watermark(), 2);
        p.append_marker(9, 0, 0, true, 5_000).expect("marker");
        assert_eq!(p.high_watermark(), 3);
        assert_eq!((p.isr(), p.in_sync_count(), p.leader_id()), (vec![1], 1, 1));
        assert!(p.replicated_to(2) && !p.replicated_to(3));
        assert_eq!(p.maybe_shrink_isr(1 << 40, 30_000), None);
    }

    #[test]
    fn a_reopened_replica_starts_from_the_checkpointed_high_watermark_within_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let p = leader(dir.path(), 1, &[1], &[1]);
            p.append(batch(Compression::None, &["a", "b", "c", "d"]), 5_000)
                .expect("append");
            p.close().expect("close");
        }
        // (checkpoint, first role) -> where the high watermark starts.
        for (checkpoint, as_leader, expected) in [
            (None, true, 0),
            (Some(2), true, 2),
            (Some(9), true, 4),
            (None, false, 0),
            (Some(3), false, 3),
            (Some(9), false, 4),
        ] {
            let p = open(dir.path(), config(&[]));
            if let Some(hw) = checkpoint {
                p.restore_high_watermark(hw);
            }
            if as_leader {
                p.become_leader(1, 2, vec![1, 2], vec![1, 2], 5_000)
                    .expect("lead");
            } else {
                p.become_follower(2, 2).expect("follow");
            }
            assert_eq!(
                p.high_watermark(),
                expected,
                "checkpoint {checkpoint:?}, leader {as_leader}"
            );
            p.close().expect("close");
        }
    }

    #[tokio::test]
    async fn the_high_watermark_moves_only_when_every_isr_member_has_the_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = leader(dir.path(), 1, &[1, 2, 3], &[1, 2, 3]);
        p.append(batch(Compression::None, &["a", "b", "c"]), 5_000)
            .expect("append");
        // Appended, but no follower has it: consumers see nothing yet.
        assert_eq!((p.log_end_offset(), p.high_watermark()), (3, 0));
        let read = p
            .read(0, 1 << 20, Isolation::ReadUncommitted)
            .expect("read");
        assert!(read.bytes.is_empty());
        // A follower reads past the high watermark.
        assert_eq!(values(&fetch_from(&p, 0)).len(), 3);

        let out = p.record_follower_fetch(2, 3, 5_100).expect("fetch");
        assert_eq!(out, FollowerFetchOutcome::default());
        assert_eq!(p.high_watermark(), 0);
        // A consumer long-poll is woken when a follower fetch moves the HW.
        let woken = p.hw_changed();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let out = p.record_follower_fetch(3, 2, 5_100).expect("fetch");
        assert!(out.hw_moved);
        assert_eq!(p.high_watermark(), 2);
        tokio::time::timeout(Duration::from_secs(10), woken)
            .await
            .expect("the HW waiters are woken");
        assert!(p.replicated_to(1) && !p.replicated_to(2));
        p.record_follower_fetch(3, 3, 5_200).expect("fetch");
        assert_eq!(p.high_watermark(), 3);
        assert_eq!(
            values(
                &p.read(0, 1 << 20, Isolation::ReadUncommitted)
                    .expect("read")
                    .bytes
            ),
            vec![Bytes::from("a"), Bytes::from("b"), Bytes::from("c")]
        );

        // Not a replica of this partition, or a position the leader does not have.
        assert_eq!(
            p.record_follower_fetch(9, 0, 5_200),
            Err(CoreError::NotLeaderOrFollower)
        );
        assert_eq!(
            p.record_follower_fetch(2, 4, 5_200),
            Err(CoreError::OffsetOutOfRange)
        );

        // Follower 3 stops fetching: after the lag time it is proposed out of the
        // ISR, and once the controller confirms, the HW moves without it.
        p.append(batch(Compression::None, &["d"]), 5_300)
            .expect("append");
        p.record_follower_fetch(2, 4, 40_000).expect("fetch");
        assert_eq!(p.high_watermark(), 3);
        assert_eq!(p.maybe_shrink_isr(40_000, 30_000), Some(vec![1, 2]));
        assert_eq!(p.high_watermark(), 3);
        assert_eq!(p.set_isr(0, vec![1, 2]), Err(CoreError::FencedLeaderEpoch));
        p.set_isr(1, vec![1, 2]).expect("set isr");
        assert_eq!((p.high_watermark(), p.in_sync_count()), (4, 2));

        // It comes back and catches up: proposed into the ISR again.
        let out = p.record_follower_fetch(3, 3, 41_000).expect("fetch");
        assert_eq!(out.propose_isr, None);
        let out = p.record_follower_fetch(3, 4, 41_100).expect("fetch");
        assert_eq!(out.propose_isr, Some(vec![1, 2, 3]));
        p.set_isr(1, vec![1, 2, 3]).expect("set isr");
        assert_eq!(p.isr(), vec![1, 2, 3]);
    }

    #[test]
    fn isr_proposals_carry_their_partition_epoch_and_stale_answers_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(dir.path(), config(&[]));
        p.become_leader_at(1, 1, 3, vec![1, 2, 3], vec![1, 2], 5_000)
            .expect("become leader");
        p.append(batch(Compression::None, &["a", "b"]), 5_000)
            .expect("append");
        p.record_follower_fetch(2, 2, 5_100).expect("fetch");
        let out = p.record_follower_fetch(3, 2, 5_100).expect("fetch");
        assert_eq!(out.propose_isr, Some(vec![1, 2, 3]));
        // Sent with the epochs of the state it was computed on.
        assert_eq!(p.isr_proposal(&[1, 2, 3]), Some((1, 3)));
        assert_eq!(p.isr_proposal(&[1, 2]), None);

        // The controller changed the ISR meanwhile, same leader epoch: the
        // proposal is dropped and is not sent any more.
        p.become_leader_at(1, 1, 4, vec![1, 2, 3], vec![1, 3], 5_200)
            .expect("new partition epoch");
        assert_eq!(p.isr_proposal(&[1, 2, 3]), None);
        let out = p.record_follower_fetch(2, 2, 5_300).expect("fetch");
        assert_eq!(out.propose_isr, Some(vec![1, 3, 2]));
        // The answer to the old proposal changes nothing, nor does its refusal
        // drop the new one.
        p.confirm_isr_change(3, 1, Some(4), vec![1, 2, 3])
            .expect("stale answer");
        p.abort_isr_change_based_on(3);
        assert_eq!(p.isr(), vec![1, 3]);
        assert_eq!(p.isr_proposal(&[1, 3, 2]), Some((1, 4)));
        // Its own answer applies, with the epoch the controller reached.
        p.confirm_isr_change(4, 1, Some(5), vec![1, 3, 2])
            .expect("confirmed");
        assert_eq!(p.isr(), vec![1, 3, 2]);
        p.append(batch(Compression::None, &["c"]), 6_000)
            .expect("append");
        assert_eq!(p.maybe_shrink_isr(60_000, 30_000), Some(vec![1]));
        assert_eq!(p.isr_proposal(&[1]), Some((1, 5)));
        // Refused on that epoch: dropped, and proposed again later.
        p.abort_isr_change_based_on(5);
        assert_eq!(p.isr_proposal(&[1]), None);
        assert_eq!(p.maybe_shrink_isr(60_000, 30_000), Some(vec![1]));
    }

    #[tokio::test]
    async fn acks_all_waits_for_the_isr() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = Arc::new(leader(dir.path(), 1, &[1, 2], &[1, 2]));
        let r = p
            .append(batch(Compression::None, &["a", "b"]), 5_000)
            .expect("append");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.wait_replicated(r.last_offset, deadline).await })
        };
        p.record_follower_fetch(2, 1, 5_100).expect("fetch");
        p.record_follower_fetch(2, 2, 5_200).expect("fetch");
        waiter.await.expect("join").expect("replicated");

        // Nobody fetches: the produce times out.
        let r = p
            .append(batch(Compression::None, &["c"]), 5_300)
            .expect("append");
        let soon = tokio::time::Instant::now() + Duration::from_millis(20);
        assert_eq!(
            p.wait_replicated(r.last_offset, soon).await,
            Err(CoreError::RequestTimedOut)
        );

        // The leader steps down while a produce waits.
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.wait_replicated(r.last_offset, deadline).await })
        };
        tokio::task::yield_now().await;
        p.become_follower(2, 2).expect("become follower");
        assert_eq!(
            waiter.await.expect("join"),
            Err(CoreError::NotLeaderOrFollower)
        );
    }

    #[tokio::test]
    async fn acks_all_reports_an_isr_that_shrank_below_min_insync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(dir.path(), config(&[("min.insync.replicas", "2")]));
        p.become_leader(1, 1, vec![1, 2], vec![1, 2], 5_000)
            .expect("become leader");
        assert_eq!(p.in_sync_count(), 2);
        let r = p
            .append(batch(Compression::None, &["a"]), 5_000)
            .expect("append");
        assert_eq!(p.maybe_shrink_isr(60_000, 30_000), Some(vec![1]));
        p.set_isr(1, vec![1]).expect("set isr");
        assert_eq!(p.in_sync_count(), 1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        assert_eq!(
            p.wait_replicated(r.last_offset, deadline).await,
            Err(CoreError::NotEnoughReplicasAfterAppend)
        );
    }

    #[test]
    fn a_follower_refuses_produce_and_a_leader_refuses_replicated_batches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = open(dir.path(), config(&[]));
        p.append(batch(Compression::None, &["a"]), 5_000)
            .expect("append");
        p.become_follower(1, 2).expect("become follower");
        assert!(!p.is_leader());
        assert_eq!(p.leader_id(), 2);
        assert_eq!(
            p.append(batch(Compression::None, &["b"]), 5_000),
            Err(CoreError::NotLeaderOrFollower)
        );
        assert_eq!(
            p.append_marker(9, 0, 0, true, 5_000),
            Err(CoreError::NotLeaderOrFollower)
        );
        assert_eq!(
            p.record_follower_fetch(3, 0, 5_000),
            Err(CoreError::NotLeaderOrFollower)
        );
        assert_eq!(p.log_end_offset(), 1);
        assert_eq!(
            p.become_leader(1, 0, vec![1], vec![1], 5_000),
            Err(CoreError::FencedLeaderEpoch)
        );
        p.become_leader(1, 2, vec![1, 2], vec![1], 5_000)
            .expect("become leader");
        assert_eq!(
            p.append_as_follower(&batch(Compression::None, &["x"]), 0, 5_000),
            Err(CoreError::NotLeaderOrFollower)
        );
        assert_eq!(p.truncate_to(0), Err(CoreError::NotLeaderOrFollower));
        // The new epoch starts at the log end.
        p.append(batch(Compression::None, &["b"]), 5_000)
            .expect("append");
        assert_eq!(p.end_offset_for_epoch(0), (0, 1));
        assert_eq!(p.end_offset_for_epoch(2), (2, 2));
    }

    #[test]
    fn a_follower_keeps_the_leaders_offsets_epochs_and_producer_state() {
        let (ldir, fdir) = (
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        );
        let l = leader(ldir.path(), 3, &[1, 2], &[1]);
        l.append(producer_batch(7, 0, false, &["a", "b"]), 5_000)
            .expect("append");
        l.append(producer_batch(9, 0, true, &["t1"]), 5_000)
            .expect("append");
        let f = follower(fdir.path(), 3, 1);
        let fetched = fetch_from(&l, 0);
        let appended = f
            .append_as_follower(&fetched, l.high_watermark(), 6_000)
            .expect("append as follower");
        assert_eq!(
            appended,
            FollowerAppend {
                log_end_offset: 3,
                high_watermark: 3
            }
        );
        // A transaction is open on the follower too.
        assert_eq!(f.last_stable_offset(), 2);
        l.append_marker(9, 0, 0, false, 5_000).expect("marker");
        l.append(producer_batch(7, 2, false, &["c"]), 5_000)
            .expect("append");
        // The leader's HW is behind what the follower gets: the follower's HW
        // follows the leader's, not its own log end.
        let appended = f
            .append_as_follower(&fetch_from(&l, 3), 4, 6_000)
            .expect("append as follower");
        assert_eq!(
            appended,
            FollowerAppend {
                log_end_offset: 5,
                high_watermark: 4
            }
        );
        assert_eq!(f.high_watermark(), 4);
        assert_eq!(fetch_from(&f, 0), fetch_from(&l, 0));
        let headers = batch::validate_batches(&fetch_from(&f, 0)).expect("valid");
        assert!(headers.iter().all(|h| h.partition_leader_epoch == 3));
        assert_eq!(f.end_offset_for_epoch(3), (3, 5));
        assert_eq!(f.aborted_transactions(0, 5), l.aborted_transactions(0, 5));
        assert_eq!(f.last_stable_offset(), 4);
        // Nothing new, only a new HW.
        f.append_as_follower(&[], 5, 6_000).expect("hw only");
        assert_eq!(f.high_watermark(), 5);
        assert_eq!(f.producer_entries(), {
            let mut e = l.producer_entries();
            for p in e.iter_mut() {
                p.last_timestamp_ms = 6_000;
            }
            e
        });

        // The follower becomes leader: a retry of the last batch is a duplicate
        // and the sequence goes on where the old leader left it.
        f.become_leader(2, 4, vec![1, 2], vec![2], 7_000)
            .expect("become leader");
        let dup = f
            .append(producer_batch(7, 2, false, &["c"]), 7_000)
            .expect("dup");
        assert_eq!((dup.base_offset, dup.last_offset), (4, 4));
        assert!(matches!(
            f.append(producer_batch(7, 5, false, &["x"]), 7_000),
            Err(CoreError::OutOfOrderSequence(_))
        ));
        let next = f
            .append(producer_batch(7, 3, false, &["d"]), 7_000)
            .expect("append");
        assert_eq!(next.base_offset, 5);
        assert_eq!(f.end_offset_for_epoch(3), (3, 5));
        assert_eq!(f.end_offset_for_epoch(4), (4, 6));
    }

    /// A replica that led an epoch without appending anything, then follows a
    /// leader of a later epoch: told to truncate at its own log end, it drops
    /// that empty epoch, so its next fetch is not told to truncate again.
    #[test]
    fn truncating_at_the_log_end_drops_an_epoch_that_holds_no_records() {
        let dirs: Vec<tempfile::TempDir> = (0..3)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        let old = leader(dirs[0].path(), 1, &[1, 2, 3], &[1]);
        old.append(batch(Compression::None, &["a", "b"]), 5_000)
            .expect("append");
        let f = follower(dirs[1].path(), 1, 1);
        f.append_as_follower(&fetch_from(&old, 0), 2, 5_000)
            .expect("append as follower");
        let new = follower(dirs[2].path(), 1, 1);
        new.append_as_follower(&fetch_from(&old, 0), 2, 5_000)
            .expect("append as follower");
        // Epoch 2: `f` leads briefly and appends nothing; epoch 3: `new` leads.
        f.become_leader(2, 2, vec![1, 2, 3], vec![2, 3], 6_000)
            .expect("become leader");
        assert_eq!(f.latest_epoch(), 2);
        new.become_leader(3, 3, vec![1, 2, 3], vec![3, 2], 7_000)
            .expect("become leader");
        f.become_follower(3, 3).expect("become follower");

        assert_eq!(new.diverging_epoch(f.latest_epoch(), 2), Some((1, 2)));
        assert_eq!(f.truncate_to(2).expect("truncate"), 2);
        assert_eq!(f.latest_epoch(), 1);
        assert_eq!(new.diverging_epoch(f.latest_epoch(), 2), None);
    }

    #[test]
    fn a_follower_truncates_a_divergent_tail_and_takes_the_new_leaders_log() {
        let dirs: Vec<_> = (0..3)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        // Epoch 1: broker 1 leads and writes offsets 0-1, then 2-4 that only
        // broker 3 copies before broker 1 fails.
        let old = leader(dirs[0].path(), 1, &[1, 2, 3], &[1]);
        old.append(producer_batch(7, 0, false, &["a", "b"]), 5_000)
            .expect("append");
        let f = follower(dirs[1].path(), 1, 1);
        f.append_as_follower(&fetch_from(&old, 0), 2, 5_000)
            .expect("append as follower");
        let new = follower(dirs[2].path(), 1, 1);
        new.append_as_follower(&fetch_from(&old, 0), 2, 5_000)
            .expect("append as follower");
        old.append(producer_batch(7, 2, false, &["x", "y", "z"]), 5_000)
            .expect("append");
        f.append_as_follower(&fetch_from(&old, 2), 2, 5_000)
            .expect("append as follower");
        assert_eq!((f.log_end_offset(), f.high_watermark()), (5, 2));

        // Epoch 2: broker 3 (`new`, which has 0-1) leads; producer 7 retries.
        new.become_leader(3, 2, vec![1, 2, 3], vec![3, 2], 6_000)
            .expect("become leader");
        new.append(producer_batch(7, 2, false, &["c", "d"]), 6_000)
            .expect("append");
        new.append(batch(Compression::None, &["e"]), 6_000)
            .expect("append");
        f.become_follower(2, 3).expect("become follower");

        // The follower's last batch is of epoch 1 (what its fetches say) and it
        // fetches from 5: the leader's epoch 1 ended at 2, so it truncates there.
        assert_eq!(f.latest_epoch(), 1);
        assert_eq!(new.diverging_epoch(f.latest_epoch(), 5), Some((1, 2)));
        assert_eq!(new.diverging_epoch(1, 2), None);
        assert_eq!(f.truncate_to(2).expect("truncate"), 2);
        assert_eq!((f.log_end_offset(), f.high_watermark()), (2, 2));
        assert_eq!(f.end_offset_for_epoch(1), (1, 2));
        // Producer 7's lost batch is forgotten with the bytes.
        let entry = f
            .producer_entries()
            .into_iter()
            .find(|e| e.producer_id == 7)
            .expect("producer 7");
        assert_eq!(entry.last_seq(), 1);

        new.record_follower_fetch(2, 2, 6_100).expect("fetch");
        f.append_as_follower(&fetch_from(&new, 2), new.high_watermark(), 6_100)
            .expect("append as follower");
        assert_eq!(f.log_end_offset(), 5);
        assert_eq!(fetch_from(&f, 0), fetch_from(&new, 0));
        assert_eq!(
            values(&fetch_from(&f, 0)),
            ["a", "b", "c", "d", "e"].map(Bytes::from).to_vec()
        );
        assert_eq!(f.end_offset_for_epoch(1), (1, 2));
        assert_eq!(f.end_offset_for_epoch(2), (2, 5));
        assert_eq!(f.latest_epoch(), 2);
        assert_eq!(new.diverging_epoch(f.latest_epoch(), 5), None);
        new.record_follower_fetch(2, 5, 6_200).expect("fetch");
        assert_eq!(new.high_watermark(), 5);

        // The epoch checkpoint and the producer snapshots on disk agree after a
        // restart.
        f.close().expect("close");
        drop(f);
        let f = open(dirs[1].path(), config(&[]));
        assert_eq!(f.end_offset_for_epoch(1), (1, 2));
        let entry = f
            .producer_entries()
            .into_iter()
            .find(|e| e.producer_id == 7)
            .expect("producer 7");
        assert_eq!(entry.last_seq(), 3);
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

    #[test]
    fn a_reopened_replica_does_not_take_its_log_end_for_a_high_watermark() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let p = open(dir.path(), config(&[]));
            p.append(batch(Compression::None, &["a", "b", "c"]), 5_000)
                .expect("append");
            p.close().expect("close");
        }
        // Alone, as on one node: everything it has is committed.
        let p = open(dir.path(), config(&[]));
        assert_eq!(p.high_watermark(), 3);
        p.become_leader(1, 1, vec![1], vec![1], 6_000)
            .expect("become leader");
        assert_eq!(p.high_watermark(), 3);
        drop(p);

        // With followers, its tail may be records they never got: the high
        // watermark starts at the log start and waits for their fetches.
        let p = open(dir.path(), config(&[]));
        p.become_leader(1, 2, vec![1, 2], vec![1, 2], 6_000)
            .expect("become leader");
        assert_eq!(p.high_watermark(), 0);
        assert_eq!(p.leader_epoch_start_offset(), Some(3));
        p.record_follower_fetch(2, 2, 6_100).expect("fetch");
        assert_eq!(p.high_watermark(), 2);
        p.record_follower_fetch(2, 3, 6_200).expect("fetch");
        assert_eq!(p.high_watermark(), 3);
        drop(p);

        // As a follower it takes the leader's high watermark from its fetches.
        let p = open(dir.path(), config(&[]));
        p.become_follower(3, 2).expect("become follower");
        assert_eq!(p.high_watermark(), 0);
        assert_eq!(p.leader_epoch_start_offset(), None);
        p.append_as_follower(&[], 2, 6_300)
            .expect("append as follower");
        assert_eq!(p.high_watermark(), 2);
    }

    #[test]
    fn a_follower_behind_the_leaders_log_start_restarts_there_and_follows_it() {
        let dirs: Vec<_> = (0..3)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        let leader = leader(dirs[0].path(), 1, &[1, 2], &[1]);
        for v in ["a", "b", "c", "d"] {
            leader
                .append(batch(Compression::None, &[v]), 5_000)
                .expect("append");
        }
        let f = follower(dirs[1].path(), 1, 1);
        f.append_as_follower(&fetch_from(&leader, 0), 4, 5_000)
            .expect("append as follower");
        // The leader drops 0-1; the follower drops them too, up to its high watermark.
        leader.delete_records_before(2).expect("delete records");
        f.follow_log_start(leader.log_start_offset())
            .expect("follow log start");
        assert_eq!((f.log_start_offset(), f.log_end_offset()), (2, 4));
        // A follower with nothing the leader still has restarts at its log start.
        let behind = follower(dirs[2].path(), 1, 1);
        behind.truncate_fully_and_start_at(3).expect("restart");
        assert_eq!(
            (
                behind.log_start_offset(),
                behind.log_end_offset(),
                behind.high_watermark()
            ),
            (3, 3, 3)
        );
        behind
            .append_as_follower(&fetch_from(&leader, 3), 4, 5_100)
            .expect("append after the restart");
        assert_eq!(behind.log_end_offset(), 4);
        assert!(
            leader.truncate_fully_and_start_at(0).is_err(),
            "only followers restart"
        );
    }
}
