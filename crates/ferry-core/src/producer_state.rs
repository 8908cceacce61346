//! Idempotent and transactional producer state of one partition, as Kafka's
//! `ProducerStateManager` / `ProducerAppendInfo` keep it.
//!
//! ```text
//!  produce (under the partition's append lock)
//!    check_batch ──► Duplicate(original offsets)   retried batch: answered, not written
//!                ──► error                         OUT_OF_ORDER_SEQUENCE_NUMBER,
//!                                                  INVALID_PRODUCER_EPOCH, INVALID_TXN_STATE
//!                ──► Append ──► Log::append ──► apply_batch
//!  coordinator marker ──► check_marker ──► Log::append ──► apply_marker
//!                              open txn closed; an abort enters the aborted index
//!  recovery: newest snapshot `<offset>.snapshot` at or below the log end,
//!            then every batch from that offset to the (recovered) log end replayed
//! ```
//!
//! Per producer id the state holds the epoch, the last [`PRODUCER_BATCHES_MAX`]
//! batches (first and last sequence, first and last offset) and the first offset
//! of its open transaction. The open transactions give the last stable offset;
//! the aborted transactions (producer id, first offset, marker offset) are what a
//! read_committed fetch reports so clients drop aborted records. The aborted
//! index is kept in memory and persisted inside each snapshot (Kafka keeps it in a
//! `.txnindex` per segment); entries entirely below the log start are pruned.
//!
//! An unknown producer may start at any sequence (Kafka 2.5+, KIP-360): its state
//! may have been removed by retention or expiry, so the broker cannot tell a new
//! producer from a forgotten one and never answers UNKNOWN_PRODUCER_ID.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use ferry_log::BatchHeader;
use serde::{Deserialize, Serialize};

use crate::error::CoreError;

/// Batches remembered per producer for duplicate detection (Kafka's
/// `NUM_BATCHES_TO_RETAIN`, which is also librdkafka's in-flight maximum).
pub const PRODUCER_BATCHES_MAX: usize = 5;
/// Snapshot files kept per partition.
const SNAPSHOTS_KEPT: usize = 2;
const SNAPSHOT_SUFFIX: &str = ".snapshot";
const SNAPSHOT_VERSION: u32 = 1;

/// Kafka's `RecordBatch.NO_SEQUENCE`.
pub const NO_SEQUENCE: i32 = -1;

/// One appended batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMetadata {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// What the partition knows of one producer id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEntry {
    pub producer_id: i64,
    pub epoch: i16,
    /// Oldest first, at most [`PRODUCER_BATCHES_MAX`].
    pub batches: VecDeque<BatchMetadata>,
    /// Time of the last write, for `producer.id.expiration.ms`.
    pub last_timestamp_ms: i64,
    pub coordinator_epoch: i32,
    /// First offset of the producer's open transaction in this partition.
    pub current_txn_first_offset: Option<i64>,
}

impl ProducerEntry {
    fn new(producer_id: i64, epoch: i16) -> ProducerEntry {
        ProducerEntry {
            producer_id,
            epoch,
            batches: VecDeque::new(),
            last_timestamp_ms: -1,
            coordinator_epoch: -1,
            current_txn_first_offset: None,
        }
    }

    pub fn last_seq(&self) -> i32 {
        self.batches.back().map_or(NO_SEQUENCE, |b| b.last_seq)
    }

    /// Epoch moved on: sequences start over, so the remembered batches are void.
    fn bump_epoch(&mut self, epoch: i16) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.batches.clear();
        }
    }
}

/// A transaction that ended with an abort marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    /// Offset of the abort marker.
    pub last_offset: i64,
}

/// How a batch that passed validation is to be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    Append,
    /// A retry of a batch already in the log: answer with its offsets.
    Duplicate(BatchMetadata),
}

/// The sequence of a batch's last record, wrapping as Kafka's do.
pub fn last_sequence(h: &BatchHeader) -> i32 {
    if h.base_sequence == NO_SEQUENCE {
        return NO_SEQUENCE;
    }
    let last = i64::from(h.base_sequence) + i64::from(h.last_offset_delta);
    if last > i64::from(i32::MAX) {
        (last - i64::from(i32::MAX) - 1) as i32
    } else {
        last as i32
    }
}

fn in_sequence(last_seq: i32, next_seq: i32) -> bool {
    next_seq == last_seq.wrapping_add(1) || (next_seq == 0 && last_seq == i32::MAX)
}

#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    version: u32,
    offset: i64,
    producers: Vec<ProducerEntry>,
    aborted: Vec<AbortedTxn>,
}

#[derive(Debug, Default, Clone)]
pub struct ProducerStateManager {
    producers: BTreeMap<i64, ProducerEntry>,
    /// First offset of each open transaction → its producer id.
    ongoing: BTreeMap<i64, i64>,
    /// Ordered by marker offset.
    aborted: Vec<AbortedTxn>,
}

impl ProducerStateManager {
    pub fn new() -> ProducerStateManager {
        ProducerStateManager::default()
    }

    pub fn producer(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    pub fn producers(&self) -> impl Iterator<Item = &ProducerEntry> {
        self.producers.values()
    }

    /// Validates one batch from a client, appended at `base_offset`.
    pub fn check_batch(&self, h: &BatchHeader) -> Result<SequenceCheck, CoreError> {
        if !h.has_producer_id() {
            if h.is_transactional() {
                return Err(CoreError::InvalidRecord(
                    "a transactional batch without a producer id".into(),
                ));
            }
            return Ok(SequenceCheck::Append);
        }
        let epoch = h.producer_epoch;
        let first_seq = h.base_sequence;
        let Some(entry) = self.producers.get(&h.producer_id) else {
            // A producer this partition does not know (new, expired or removed by
            // retention) may start anywhere.
            return Ok(SequenceCheck::Append);
        };
        if epoch < entry.epoch {
            return Err(CoreError::InvalidProducerEpoch(format!(
                "producer {} epoch {epoch} is older than the current {}",
                h.producer_id, entry.epoch
            )));
        }
        if !h.is_transactional() && entry.current_txn_first_offset.is_some() {
            return Err(CoreError::InvalidTxnState(format!(
                "producer {} wrote a non-transactional batch during its transaction",
                h.producer_id
            )));
        }
        if first_seq == NO_SEQUENCE {
            return Err(CoreError::InvalidRecord(
                "a batch with a producer id needs a base sequence".into(),
            ));
        }
        let last_seq = last_sequence(h);
        if epoch == entry.epoch {
            if let Some(dup) = entry
                .batches
                .iter()
                .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
            {
                return Ok(SequenceCheck::Duplicate(*dup));
            }
            if !in_sequence(entry.last_seq(), first_seq) {
                return Err(CoreError::OutOfOrderSequence(format!(
                    "producer {} epoch {epoch}: expected sequence {}, got {first_seq}",
                    h.producer_id,
                    entry.last_seq().wrapping_add(1)
                )));
            }
        } else if first_seq != 0 {
            return Err(CoreError::OutOfOrderSequence(format!(
                "producer {} starts epoch {epoch} at sequence {first_seq}, not 0",
                h.producer_id
            )));
        }
        Ok(SequenceCheck::Append)
    }

    /// Records an appended batch (also during recovery, with no validation).
    pub fn apply_batch(&mut self, h: &BatchHeader, timestamp_ms: i64) {
        if !h.has_producer_id() {
            return;
        }
        let entry = self
            .producers
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry::new(h.producer_id, h.producer_epoch));
        entry.bump_epoch(h.producer_epoch.max(entry.epoch));
        if h.base_sequence != NO_SEQUENCE {
            entry.batches.push_back(BatchMetadata {
                first_seq: h.base_sequence,
                last_seq: last_sequence(h),
                first_offset: h.base_offset,
                last_offset: h.last_offset(),
            });
            while entry.batches.len() > PRODUCER_BATCHES_MAX {
                entry.batches.pop_front();
            }
        }
        entry.last_timestamp_ms = entry.last_timestamp_ms.max(timestamp_ms);
        if h.is_transactional() && entry.current_txn_first_offset.is_none() {
            entry.current_txn_first_offset = Some(h.base_offset);
            self.ongoing.insert(h.base_offset, h.producer_id);
        }
    }

    /// Validates a commit or abort marker from the transaction coordinator.
    pub fn check_marker(&self, producer_id: i64, epoch: i16) -> Result<(), CoreError> {
        match self.producers.get(&producer_id) {
            Some(e) if epoch < e.epoch => Err(CoreError::ProducerFenced(format!(
                "marker epoch {epoch} is older than producer {producer_id}'s epoch {}",
                e.epoch
            ))),
            _ => Ok(()),
        }
    }

    /// Records a marker written at `offset`: the producer's open transaction ends.
    pub fn apply_marker(
        &mut self,
        producer_id: i64,
        epoch: i16,
        coordinator_epoch: i32,
        commit: bool,
        offset: i64,
        timestamp_ms: i64,
    ) {
        let entry = self
            .producers
            .entry(producer_id)
            .or_insert_with(|| ProducerEntry::new(producer_id, epoch));
        entry.bump_epoch(epoch.max(entry.epoch));
        entry.coordinator_epoch = coordinator_epoch;
        entry.last_timestamp_ms = entry.last_timestamp_ms.max(timestamp_ms);
        if let Some(first) = entry.current_txn_first_offset.take() {
            self.ongoing.remove(&first);
            if !commit {
                self.aborted.push(AbortedTxn {
                    producer_id,
                    first_offset: first,
                    last_offset: offset,
                });
            }
        }
    }

    /// First offset of the oldest open transaction.
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.ongoing.keys().next().copied()
    }

    /// Open transactions: (producer id, first offset).
    pub fn ongoing(&self) -> Vec<(i64, i64)> {
        self.ongoing.iter().map(|(o, p)| (*p, *o)).collect()
    }

    /// Aborted transactions that overlap `[from, to)`.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<AbortedTxn> {
        self.aborted
            .iter()
            .filter(|a| a.last_offset >= from && a.first_offset < to)
            .copied()
            .collect()
    }

    /// Removes producers idle for `expiration_ms` that have no open transaction.
    /// Returns how many were removed.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers.retain(|_, e| {
            e.current_txn_first_offset.is_some()
                || now_ms.saturating_sub(e.last_timestamp_ms) < expiration_ms
        });
        before - self.producers.len()
    }

    /// Forgets aborted transactions that ended below the log start offset.
    pub fn prune_below(&mut self, log_start_offset: i64) {
        self.aborted.retain(|a| a.last_offset >= log_start_offset);
    }

    /// The state as of `offset` (the log end it describes), serialized.
    pub fn snapshot_bytes(&self, offset: i64) -> Vec<u8> {
        let snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            offset,
            producers: self.producers.values().cloned().collect(),
            aborted: self.aborted.clone(),
        };
        let mut bytes = serde_json::to_vec(&snapshot).unwrap_or_default();
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(format!("\n{crc:08x}").as_bytes());
        bytes
    }

    /// Restores a state written by [`ProducerStateManager::snapshot_bytes`]:
    /// the state and the offset it describes.
    pub fn from_snapshot(bytes: &[u8]) -> Option<(ProducerStateManager, i64)> {
        let split = bytes.iter().rposition(|b| *b == b'\n')?;
        let (body, crc) = (&bytes[..split], &bytes[split + 1..]);
        let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
        if crc32c::crc32c(body) != crc {
            return None;
        }
        let snapshot: Snapshot = serde_json::from_slice(body).ok()?;
        if snapshot.version != SNAPSHOT_VERSION {
            return None;
        }
        let mut state = ProducerStateManager::new();
        for e in snapshot.producers {
            if let Some(first) = e.current_txn_first_offset {
                state.ongoing.insert(first, e.producer_id);
            }
            state.producers.insert(e.producer_id, e);
        }
        state.aborted = snapshot.aborted;
        Some((state, snapshot.offset))
    }
}

/// `<offset, 20 digits>.snapshot` in `dir`.
pub fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{offset:020}{SNAPSHOT_SUFFIX}"))
}

/// Offsets of the snapshot files in `dir`, ascending.
pub fn list_snapshots(dir: &Path) -> Vec<i64> {
    let mut out: Vec<i64> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    name.strip_suffix(SNAPSHOT_SUFFIX)?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

/// Writes a snapshot and removes all but the newest [`SNAPSHOTS_KEPT`].
pub fn write_snapshot(dir: &Path, offset: i64, bytes: &[u8]) -> std::io::Result<()> {
    crate::partition::write_atomically(&snapshot_path(dir, offset), bytes)?;
    let all = list_snapshots(dir);
    for old in all.iter().take(all.len().saturating_sub(SNAPSHOTS_KEPT)) {
        let _ = std::fs::remove_file(snapshot_path(dir, *old));
    }
    Ok(())
}

/// Loads the newest usable snapshot at or below `log_end_offset`, deleting the
/// ones above it (the log they describe was lost in recovery).
pub fn load_snapshot(dir: &Path, log_end_offset: i64) -> Option<(ProducerStateManager, i64)> {
    let mut offsets = list_snapshots(dir);
    while let Some(offset) = offsets.pop() {
        let path = snapshot_path(dir, offset);
        if offset > log_end_offset {
            tracing::info!(file = %path.display(), log_end_offset, "removing a producer snapshot beyond the recovered log end");
            let _ = std::fs::remove_file(&path);
            continue;
        }
        match std::fs::read(&path)
            .ok()
            .and_then(|b| ProducerStateManager::from_snapshot(&b))
        {
            Some(loaded) if loaded.1 == offset => return Some(loaded),
            _ => {
                tracing::warn!(file = %path.display(), "ignoring a damaged producer snapshot");
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ferry_log::{BatchBuilder, Compression};

    fn batch(
        base_offset: i64,
        pid: i64,
        epoch: i16,
        seq: i32,
        count: usize,
        txn: bool,
    ) -> BatchHeader {
        let mut b = BatchBuilder::new(Compression::None)
            .base_offset(base_offset)
            .producer(pid, epoch, seq)
            .transactional(txn);
        for i in 0..count {
            b.append(1_000, None, Some(Bytes::from(format!("v{i}"))));
        }
        BatchHeader::parse(&b.build().expect("build")).expect("parse")
    }

    fn append(s: &mut ProducerStateManager, h: BatchHeader) -> Result<SequenceCheck, CoreError> {
        let check = s.check_batch(&h)?;
        if check == SequenceCheck::Append {
            s.apply_batch(&h, 1_000);
        }
        Ok(check)
    }

    #[test]
    fn in_order_batches_append_and_retries_are_duplicates() {
        let mut s = ProducerStateManager::new();
        assert_eq!(
            append(&mut s, batch(0, 7, 0, 0, 3, false)),
            Ok(SequenceCheck::Append)
        );
        assert_eq!(
            append(&mut s, batch(3, 7, 0, 3, 2, false)),
            Ok(SequenceCheck::Append)
        );
        let dup = append(&mut s, batch(5, 7, 0, 0, 3, false)).expect("dup");
        assert_eq!(
            dup,
            SequenceCheck::Duplicate(BatchMetadata {
                first_seq: 0,
                last_seq: 2,
                first_offset: 0,
                last_offset: 2
            })
        );
        assert_eq!(s.producer(7).expect("entry").last_seq(), 4);
    }

    #[test]
    fn only_the_last_five_batches_are_remembered() {
        let mut s = ProducerStateManager::new();
        for i in 0..7 {
            append(&mut s, batch(i, 1, 0, i as i32, 1, false)).expect("append");
        }
        assert_eq!(
            s.producer(1).expect("entry").batches.len(),
            PRODUCER_BATCHES_MAX
        );
        // Batch 1 fell out of the window: a retry of it is out of order, not a duplicate.
        assert!(matches!(
            append(&mut s, batch(7, 1, 0, 1, 1, false)),
            Err(CoreError::OutOfOrderSequence(_))
        ));
        assert!(matches!(
            append(&mut s, batch(7, 1, 0, 3, 1, false)),
            Ok(SequenceCheck::Duplicate(_))
        ));
    }

    #[test]
    fn gaps_are_out_of_order_and_unknown_producers_start_anywhere() {
        let mut s = ProducerStateManager::new();
        assert_eq!(
            append(&mut s, batch(0, 3, 0, 42, 1, false)),
            Ok(SequenceCheck::Append)
        );
        assert!(matches!(
            append(&mut s, batch(1, 3, 0, 44, 1, false)),
            Err(CoreError::OutOfOrderSequence(_))
        ));
        assert_eq!(
            append(&mut s, batch(1, 3, 0, 43, 1, false)),
            Ok(SequenceCheck::Append)
        );
    }

    #[test]
    fn epochs_fence_and_a_new_epoch_starts_at_zero() {
        let mut s = ProducerStateManager::new();
        append(&mut s, batch(0, 9, 2, 0, 2, false)).expect("append");
        assert!(matches!(
            append(&mut s, batch(2, 9, 1, 2, 1, false)),
            Err(CoreError::InvalidProducerEpoch(_))
        ));
        assert!(matches!(
            append(&mut s, batch(2, 9, 3, 5, 1, false)),
            Err(CoreError::OutOfOrderSequence(_))
        ));
        assert_eq!(
            append(&mut s, batch(2, 9, 3, 0, 1, false)),
            Ok(SequenceCheck::Append)
        );
        assert!(matches!(
            append(&mut s, batch(3, 9, 2, 2, 1, false)),
            Err(CoreError::InvalidProducerEpoch(_))
        ));
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut s = ProducerStateManager::new();
        append(&mut s, batch(0, 4, 0, i32::MAX - 1, 3, false)).expect("append");
        assert_eq!(s.producer(4).expect("entry").last_seq(), 0);
        assert_eq!(
            append(&mut s, batch(3, 4, 0, 1, 1, false)),
            Ok(SequenceCheck::Append)
        );
    }

    #[test]
    fn transactions_hold_the_stable_offset_and_aborts_are_indexed() {
        let mut s = ProducerStateManager::new();
        append(&mut s, batch(10, 1, 0, 0, 2, true)).expect("append");
        append(&mut s, batch(12, 2, 0, 0, 1, true)).expect("append");
        append(&mut s, batch(13, 1, 0, 2, 1, true)).expect("append");
        assert_eq!(s.first_unstable_offset(), Some(10));
        assert!(matches!(
            append(&mut s, batch(14, 1, 0, 3, 1, false)),
            Err(CoreError::InvalidTxnState(_))
        ));
        s.check_marker(1, 0).expect("marker");
        s.apply_marker(1, 0, 0, false, 14, 1_000);
        assert_eq!(s.first_unstable_offset(), Some(12));
        s.apply_marker(2, 0, 0, true, 15, 1_000);
        assert_eq!(s.first_unstable_offset(), None);
        assert_eq!(
            s.aborted_between(0, 100),
            vec![AbortedTxn {
                producer_id: 1,
                first_offset: 10,
                last_offset: 14
            }]
        );
        assert!(s.aborted_between(15, 100).is_empty());
        assert!(s.aborted_between(0, 10).is_empty());
        // A marker from an older epoch is fenced.
        s.apply_marker(1, 3, 0, false, 16, 1_000);
        assert!(matches!(
            s.check_marker(1, 2),
            Err(CoreError::ProducerFenced(_))
        ));
    }

    #[test]
    fn idle_producers_expire_unless_a_transaction_is_open() {
        let mut s = ProducerStateManager::new();
        let h = batch(0, 1, 0, 0, 1, false);
        s.apply_batch(&h, 1_000);
        let h = batch(1, 2, 0, 0, 1, true);
        s.apply_batch(&h, 1_000);
        assert_eq!(s.expire(1_000 + 86_400_000, 86_400_000), 1);
        assert!(s.producer(1).is_none());
        assert!(s.producer(2).is_some());
    }

    #[test]
    fn snapshots_round_trip_and_damaged_ones_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = ProducerStateManager::new();
        append(&mut s, batch(0, 1, 0, 0, 2, true)).expect("append");
        append(&mut s, batch(2, 5, 1, 0, 1, false)).expect("append");
        s.apply_marker(1, 0, 0, false, 3, 1_000);
        append(&mut s, batch(4, 1, 0, 2, 1, true)).expect("append");
        write_snapshot(dir.path(), 5, &s.snapshot_bytes(5)).expect("write");
        write_snapshot(dir.path(), 9, &s.snapshot_bytes(9)).expect("write");
        // A snapshot beyond the recovered log end is removed, the older one used.
        let (loaded, offset) = load_snapshot(dir.path(), 6).expect("load");
        assert_eq!(offset, 5);
        assert_eq!(list_snapshots(dir.path()), vec![5]);
        assert_eq!(loaded.first_unstable_offset(), Some(4));
        assert_eq!(loaded.aborted_between(0, 10), s.aborted_between(0, 10));
        assert_eq!(loaded.producer(5), s.producer(5));
        let mut bytes = s.snapshot_bytes(5);
        bytes[3] ^= 1;
        assert!(ProducerStateManager::from_snapshot(&bytes).is_none());
    }
}
