//! [`Log`]: one partition's ordered list of segments, and everything that changes
//! which bytes the log holds — opening (recovery), appends and rolling, reads,
//! flush, truncation. Retention, DeleteRecords and compaction live in `cleaner`.
//!
//! Locking (outermost first; never taken in another order):
//!
//! ```text
//!  compaction  Mutex<()>          one compaction at a time (long; appends continue)
//!  writer      Mutex<()>          every change to the segment list or to bytes:
//!                                 append, roll, truncate, delete, compaction install
//!  flush       Mutex<FlushState>  fsync + recovery checkpoint; file deletion/renames
//!                                 (so a flush never resurrects a deleted index file)
//!  segments    RwLock<Arc<Vec<Arc<Segment>>>>   copy-on-write list, held for a clone
//! ```
//!
//! Readers take no mutex: they load the log end offset, clone the segment list and
//! read with `read_at`. The appender writes the bytes and publishes the segment size
//! and then the log end offset (release stores), so a reader that sees an offset also
//! sees its bytes. Flush runs under its own lock, so producers keep appending while
//! an fsync is in progress (group commit).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::batch::{self, BatchError, BatchHeader};
use crate::checkpoint::{self, LOG_START_OFFSET, RECOVERY_POINT};
use crate::record;
use crate::segment::{
    self, Segment, CLEANED_SUFFIX, DELETED_SUFFIX, INDEX_SUFFIX, LOG_SUFFIX, SWAP_SUFFIX,
    TIME_INDEX_SUFFIX,
};
use crate::{AppendInfo, LogConfig, LogError, ReadResult};

/// A partition's log: a directory of segments. `Send + Sync`; every method takes `&self`.
/// Appends are serialized internally; reads do not wait for an append in progress.
pub struct Log {
    pub(crate) dir: PathBuf,
    pub(crate) config: RwLock<LogConfig>,
    /// Ordered by base offset, never empty; the last one is the active segment.
    pub(crate) segments: RwLock<Arc<Vec<Arc<Segment>>>>,
    pub(crate) log_end_offset: AtomicI64,
    pub(crate) log_start_offset: AtomicI64,
    pub(crate) flushed_offset: AtomicI64,
    /// The most recent `now_ms` the caller gave us, for segments created by calls that
    /// take no clock (truncation, DeleteRecords).
    pub(crate) last_now_ms: AtomicI64,
    pub(crate) writer: Mutex<()>,
    pub(crate) flush: Mutex<FlushState>,
    pub(crate) compaction: Mutex<()>,
    /// Bumped by every truncation. Truncation rewrites a segment in place (same
    /// `Arc`), so a compaction checks this, not just segment identity, before
    /// installing output computed from the old bytes.
    pub(crate) truncations: AtomicU64,
    /// A segment file was created since the directory was last fsynced.
    pub(crate) dir_dirty: AtomicBool,
    closed: AtomicBool,
    /// A flush failed: after a failed fsync the kernel may have dropped dirty pages,
    /// so nothing written since can be trusted. Like Kafka taking a log dir offline,
    /// every later call fails until the log is reopened (and recovered).
    failed: AtomicBool,
}

pub(crate) struct FlushState {
    /// Value in the recovery-point checkpoint file.
    pub(crate) checkpointed_recovery_point: i64,
    /// Active segment when the checkpoint was last written: rewritten once per roll,
    /// which bounds recovery to about two segments without a write per flush.
    checkpointed_active_base: i64,
}

impl Log {
    /// Opens (creating if missing) the log in `dir`, recovering it: the tail of the
    /// active segment is scanned, a torn or corrupt tail truncated (CRC-32C), and
    /// missing or damaged indexes rebuilt.
    ///
    /// More precisely every segment is checked from its last fsynced index entry on
    /// (see `segment`), segments at or above the recovery point are scanned fully,
    /// and a corrupt segment that is not the last one drops every segment after it,
    /// because offsets after a hole cannot be trusted.
    pub fn open(dir: &Path, config: LogConfig, now_ms: i64) -> Result<Log, LogError> {
        fs::create_dir_all(dir)?;
        prepare_dir(dir)?;
        let interval = u64::from(config.index_interval_bytes);
        let checkpointed_start = checkpoint::read(dir, LOG_START_OFFSET)?;
        let checkpointed_rp = checkpoint::read(dir, RECOVERY_POINT)?;
        let recovery_point = checkpointed_rp.unwrap_or(0);

        let bases = list_files(dir, LOG_SUFFIX)?;
        let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len());
        let mut dir_dirty = false;
        for (i, &base) in bases.iter().enumerate() {
            if let Some(prev) = segments.last() {
                if base < prev.next_offset() {
                    tracing::warn!(
                        dir = %dir.display(), base, previous_next_offset = prev.next_offset(),
                        "segment overlaps the previous one; dropping it and every later segment"
                    );
                    remove_segment_files(dir, &bases[i..])?;
                    dir_dirty = true;
                    break;
                }
            }
            let (segment, recovered) = Segment::open(dir, base, recovery_point, interval, now_ms)?;
            let cut = recovered.truncated_bytes > 0;
            if cut {
                tracing::warn!(
                    dir = %dir.display(),
                    segment = %segment::file_name(base, LOG_SUFFIX),
                    dropped_bytes = recovered.truncated_bytes,
                    reason = recovered.reason.as_deref().unwrap_or(""),
                    next_offset = segment.next_offset(),
                    "truncated a torn or corrupt tail"
                );
            } else if recovered.rebuilt && base < recovery_point {
                tracing::info!(dir = %dir.display(), base, "rebuilt segment indexes");
            }
            segments.push(Arc::new(segment));
            if cut && i + 1 < bases.len() {
                tracing::warn!(
                    dir = %dir.display(), segments = bases.len() - i - 1,
                    "dropping segments after a corrupt one: their offsets no longer follow"
                );
                remove_segment_files(dir, &bases[i + 1..])?;
                break;
            }
        }

        let start_checkpoint_unread = checkpointed_start.is_none();
        let checkpointed_start = checkpointed_start.unwrap_or(0);
        if segments.is_empty() {
            segments.push(Arc::new(Segment::create(dir, checkpointed_start, now_ms)?));
            dir_dirty = true;
        }
        let first_base = segments.first().map_or(0, |s| s.base_offset());
        let mut log_end_offset = segments.last().map_or(0, |s| s.next_offset());
        let log_start_offset = checkpointed_start.max(first_base);
        if start_checkpoint_unread && dir.join(LOG_START_OFFSET).exists() {
            // Missing or malformed (read warned): write what recovery decided.
            checkpoint::write(dir, LOG_START_OFFSET, log_start_offset)?;
        }
        if log_start_offset > log_end_offset {
            // DeleteRecords moved the start past records a crash then lost: nothing
            // below the start may be served, so start over there.
            tracing::warn!(
                dir = %dir.display(), log_start_offset, log_end_offset,
                "log start offset is past the recovered log end; starting an empty log there"
            );
            for s in &segments {
                s.delete_files()?;
            }
            segments = vec![Arc::new(Segment::create(dir, log_start_offset, now_ms)?)];
            log_end_offset = log_start_offset;
            dir_dirty = true;
        }

        let active_base = segments.last().map_or(0, |s| s.base_offset());
        let log = Log {
            dir: dir.to_path_buf(),
            config: RwLock::new(config),
            segments: RwLock::new(Arc::new(segments)),
            log_end_offset: AtomicI64::new(log_end_offset),
            log_start_offset: AtomicI64::new(log_start_offset),
            flushed_offset: AtomicI64::new(recovery_point.min(log_end_offset)),
            last_now_ms: AtomicI64::new(now_ms),
            writer: Mutex::new(()),
            flush: Mutex::new(FlushState {
                // -1 when there is no file, so the first flush writes one.
                checkpointed_recovery_point: checkpointed_rp.unwrap_or(-1),
                checkpointed_active_base: active_base,
            }),
            compaction: Mutex::new(()),
            truncations: AtomicU64::new(0),
            dir_dirty: AtomicBool::new(dir_dirty),
            closed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
        };
        // Make what recovery accepted durable, so the next recovery starts from here.
        log.flush_inner(checkpointed_rp != Some(log_end_offset))?;
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> LogConfig {
        self.config.read().clone()
    }

    /// Takes effect from the next call that consults it (roll, retention, compaction).
    pub fn set_config(&self, config: LogConfig) {
        *self.config.write() = config;
    }

    /// Appends one or more complete, already validated batches laid back to back in
    /// `batches`. Rewrites each batch's base offset (and partition leader epoch) in place
    /// — neither is covered by the CRC — then writes the bytes as they are. Rolls the
    /// active segment first when `segment.bytes` / `segment.ms` say so.
    ///
    /// The batches are validated again (sizes, magic, CRC, counts). The CRC is checked
    /// where bytes enter the log (here) and where the log reads bytes it did not just
    /// write itself (recovery of the unflushed tail, compaction, `verify`), not on
    /// every read: see [`Log::read`].
    pub fn append(
        &self,
        batches: &mut [u8],
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        let headers = batch::validate_batches(batches)?;
        self.append_validated(batches, headers, leader_epoch, now_ms)
    }

    /// [`Log::append`] for batches the caller has just validated with
    /// [`batch::validate_batches`], passing the headers it returned, so the produce
    /// path computes each CRC once. The layout is still checked against the bytes
    /// (sizes and header fields, without the CRC), so headers of other bytes are refused.
    pub fn append_validated(
        &self,
        batches: &mut [u8],
        headers: Vec<BatchHeader>,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        let mut at = 0usize;
        for h in &headers {
            let parsed = batches.get(at..).map(BatchHeader::parse).transpose()?;
            if parsed.as_ref() != Some(h) {
                return Err(
                    BatchError::Invalid("headers do not describe these batches".into()).into(),
                );
            }
            at += h.total_size();
        }
        if at != batches.len() {
            return Err(BatchError::Invalid("headers do not cover these batches".into()).into());
        }
        let _writer = self.writer.lock();
        self.check_open()?;
        self.note_now(now_ms);
        let first_offset = self.log_end_offset.load(Ordering::Acquire);
        let mut layout = Vec::with_capacity(headers.len());
        let mut next = first_offset;
        let mut at = 0usize;
        for mut header in headers {
            let total = header.total_size();
            let bytes = batches
                .get_mut(at..at + total)
                .ok_or(BatchError::Truncated)?;
            batch::set_base_offset(bytes, next)?;
            batch::set_partition_leader_epoch(bytes, leader_epoch)?;
            header.base_offset = next;
            header.partition_leader_epoch = leader_epoch;
            next = header
                .base_offset
                .checked_add(i64::from(header.last_offset_delta) + 1)
                .ok_or_else(|| BatchError::Invalid("offsets overflow".into()))?;
            layout.push((at as u64, header));
            at += total;
        }
        self.append_layout(batches, &layout, first_offset, next, now_ms)
    }

    /// Appends batches replicated from a leader, keeping their offsets and leader
    /// epochs (Kafka's `appendAsFollower`). The first batch must start at or after the
    /// log end offset and offsets must increase; gaps left by compaction are fine.
    pub fn append_as_follower(&self, batches: &[u8], now_ms: i64) -> Result<AppendInfo, LogError> {
        let headers = batch::validate_stored_batches(batches)?;
        let _writer = self.writer.lock();
        self.check_open()?;
        self.note_now(now_ms);
        let log_end = self.log_end_offset.load(Ordering::Acquire);
        let mut layout = Vec::with_capacity(headers.len());
        let mut next = log_end;
        let mut at = 0usize;
        for header in headers {
            if header.base_offset < next {
                return Err(BatchError::Invalid(format!(
                    "batch base offset {} is below the expected {next}",
                    header.base_offset
                ))
                .into());
            }
            next = header
                .last_offset()
                .checked_add(1)
                .ok_or_else(|| BatchError::Invalid("offsets overflow".into()))?;
            layout.push((at as u64, header));
            at += header.total_size();
        }
        let first_offset = layout.first().map_or(log_end, |(_, h)| h.base_offset);
        self.append_layout(batches, &layout, first_offset, next, now_ms)
    }

    fn append_layout(
        &self,
        bytes: &[u8],
        layout: &[(u64, BatchHeader)],
        first_offset: i64,
        next_offset: i64,
        now_ms: i64,
    ) -> Result<AppendInfo, LogError> {
        let last_offset = next_offset - 1;
        if last_offset - first_offset > i64::from(i32::MAX) {
            return Err(BatchError::Invalid("append spans more than 2^31 offsets".into()).into());
        }
        let active = self.maybe_roll(bytes.len() as u64, first_offset, last_offset, now_ms)?;
        let interval = u64::from(self.config.read().index_interval_bytes);
        active.append(bytes, layout, interval)?;
        self.log_end_offset.store(next_offset, Ordering::Release);
        Ok(AppendInfo {
            first_offset,
            last_offset,
            max_timestamp: layout
                .iter()
                .map(|(_, h)| h.max_timestamp)
                .max()
                .unwrap_or(batch::NO_TIMESTAMP),
            batch_count: layout.len(),
        })
    }

    /// The segment the next append goes to, rolling first if the active one is full,
    /// too old, or could not index the incoming offsets/positions in 32 bits.
    /// Caller holds the writer lock.
    fn maybe_roll(
        &self,
        incoming: u64,
        first_offset: i64,
        last_offset: i64,
        now_ms: i64,
    ) -> Result<Arc<Segment>, LogError> {
        let segments = self.snapshot();
        let active = segments.last().cloned().ok_or(LogError::Closed)?;
        if active.is_empty() {
            return Ok(active);
        }
        let (segment_bytes, segment_ms) = {
            let config = self.config.read();
            (config.segment_bytes, config.segment_ms)
        };
        let size = active.size();
        let roll = size.saturating_add(incoming) > segment_bytes
            || now_ms.saturating_sub(active.created_ms()) >= segment_ms
            || last_offset - active.base_offset() > i64::from(i32::MAX)
            || size.saturating_add(incoming) > u64::from(u32::MAX);
        if !roll {
            return Ok(active);
        }
        self.roll(first_offset, now_ms)
    }

    /// Closes the active segment and starts a new one at `base_offset`. Caller holds
    /// the writer lock.
    pub(crate) fn roll(&self, base_offset: i64, now_ms: i64) -> Result<Arc<Segment>, LogError> {
        let segments = self.snapshot();
        if let Some(active) = segments.last() {
            active.close_for_appends();
        }
        let segment = Arc::new(Segment::create(&self.dir, base_offset, now_ms)?);
        self.dir_dirty.store(true, Ordering::Release);
        let mut list = segments.as_ref().clone();
        list.push(segment.clone());
        self.publish(list);
        Ok(segment)
    }

    /// Reads whole stored batches starting with the one that contains `offset`, stopping
    /// before `max_bytes` would be exceeded — but always returning the first batch whole
    /// even if it is larger — and never returning a batch whose last offset is
    /// `>= upper_bound` (the high watermark or last stable offset).
    /// `offset == log_end_offset` returns nothing; outside `[log_start, log_end]` is
    /// `OffsetOutOfRange`.
    ///
    /// Like Kafka serving a fetch, a read does not recompute CRCs: every batch was
    /// checked when it was appended, the unflushed tail is checked again by recovery,
    /// compaction checks what it rewrites, `ferry log verify` checks everything, and
    /// consumers can check each batch themselves (`check.crcs`). What a read does
    /// check costs nothing next to copying the bytes: each returned batch is whole,
    /// has a v2 header with sane fields, and has offsets above the previous one. A
    /// first batch failing that is an `InvalidBatch` error; a later one ends the
    /// result before it, and the next read, starting there, reports it.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        upper_bound: i64,
    ) -> Result<ReadResult, LogError> {
        self.check_open()?;
        // Order matters: the end offset first (its bytes are then in any later
        // snapshot), the start offset last (a concurrent deletion raises it before
        // it publishes the shorter list).
        let log_end = self.log_end_offset.load(Ordering::Acquire);
        let segments = self.snapshot();
        let log_start = self.log_start_offset.load(Ordering::Acquire);
        if offset < log_start || offset > log_end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start,
                log_end,
            });
        }
        if offset == log_end {
            return Ok(ReadResult {
                bytes: Bytes::new(),
                next_offset: offset,
            });
        }
        // Plan every segment's byte range first (headers only), then read them all
        // into one buffer of the final size: no copy after the read itself.
        let mut plans = Vec::new();
        let mut planned = 0usize;
        let mut plan_from = offset;
        let first = segments
            .partition_point(|s| s.base_offset() <= offset)
            .saturating_sub(1);
        for segment in segments.iter().skip(first) {
            let plan = match segment.plan_read(
                plan_from,
                max_bytes.saturating_sub(planned),
                planned == 0,
                upper_bound,
                log_end,
            ) {
                Ok(plan) => plan,
                // Return what we have; the next read starts at the problem and reports it.
                Err(_) if planned > 0 => break,
                Err(e) => return Err(e),
            };
            if let Some(last_offset) = plan.last_offset {
                let len =
                    usize::try_from(plan.end - plan.start).map_err(|_| BatchError::Truncated)?;
                planned = planned.checked_add(len).ok_or(BatchError::Truncated)?;
                plans.push((segment, plan.start, len));
                plan_from = last_offset + 1;
            }
            if plan.stop {
                break;
            }
        }
        let mut out = vec![0u8; planned];
        let mut filled = 0usize;
        let mut next_offset = offset;
        for (segment, start, len) in plans {
            let Some(dest) = out.get_mut(filled..filled + len) else {
                break;
            };
            if !segment.read_into(start, dest)? {
                break; // truncated underneath us
            }
            let (valid, valid_last) = whole_batches(dest, next_offset);
            if valid == 0 && filled == 0 {
                return Err(BatchError::Invalid(format!(
                    "corrupt stored batch at offset {next_offset} in {}",
                    self.dir.display()
                ))
                .into());
            }
            filled += valid;
            if let Some(last) = valid_last {
                next_offset = last + 1;
            }
            if valid < len {
                break;
            }
        }
        out.truncate(filled);
        Ok(ReadResult {
            bytes: Bytes::from(out),
            next_offset,
        })
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset.load(Ordering::Acquire)
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log_end_offset.load(Ordering::Acquire)
    }

    /// Total bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.snapshot().iter().map(|s| s.size()).sum()
    }

    /// Number of segments (closed ones plus the active one).
    pub fn segment_count(&self) -> usize {
        self.snapshot().len()
    }

    /// Base offsets of all segments, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<i64> {
        self.snapshot().iter().map(|s| s.base_offset()).collect()
    }

    /// fsyncs everything appended so far (segments and indexes); afterwards
    /// `flushed_offset() == log_end_offset()` as of the call.
    pub fn flush(&self) -> Result<(), LogError> {
        self.check_open()?;
        self.flush_inner(false)
    }

    pub(crate) fn flush_inner(&self, force_checkpoint: bool) -> Result<(), LogError> {
        let mut state = self.flush.lock();
        let log_end = self.log_end_offset.load(Ordering::Acquire);
        let segments = self.snapshot();
        // Until the .log bytes and the directory are fsynced a failure is fatal (the
        // kernel may have dropped dirty pages); after that only rebuildable files
        // (indexes, the recovery point) are written, and a failure there — a full
        // disk — leaves the log online.
        let mut fatal = true;
        let result = (|| -> io::Result<()> {
            let dirty: Vec<_> = segments.iter().filter(|s| s.needs_flush()).collect();
            for segment in &dirty {
                segment.sync_log()?;
            }
            if self.dir_dirty.swap(false, Ordering::AcqRel) {
                if let Err(e) = checkpoint::sync_dir(&self.dir) {
                    self.dir_dirty.store(true, Ordering::Release);
                    return Err(e);
                }
            }
            fatal = false;
            for segment in &dirty {
                segment.persist_indexes()?;
            }
            let active_base = segments.last().map_or(0, |s| s.base_offset());
            let rolled = active_base != state.checkpointed_active_base;
            if (force_checkpoint || rolled) && log_end != state.checkpointed_recovery_point {
                checkpoint::write(&self.dir, RECOVERY_POINT, log_end)?;
                state.checkpointed_recovery_point = log_end;
                state.checkpointed_active_base = active_base;
            }
            Ok(())
        })();
        if let Err(e) = result {
            if fatal {
                tracing::error!(dir = %self.dir.display(), error = %e, "flush failed; taking the log offline");
                self.failed.store(true, Ordering::Release);
            } else {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not write index or checkpoint files; retrying at the next flush");
            }
            return Err(e.into());
        }
        self.flushed_offset.fetch_max(log_end, Ordering::AcqRel);
        Ok(())
    }

    /// Offsets below this are durable on disk.
    pub fn flushed_offset(&self) -> i64 {
        self.flushed_offset.load(Ordering::Acquire)
    }

    /// First record whose timestamp is `>= timestamp`: (offset, its timestamp). Uses the
    /// time index to find the batch, then scans the batch's records.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>, LogError> {
        self.check_open()?;
        let log_end = self.log_end_offset.load(Ordering::Acquire);
        let segments = self.snapshot();
        let log_start = self.log_start_offset.load(Ordering::Acquire);
        for segment in segments.iter() {
            if segment.max_timestamp().0 < timestamp || segment.next_offset() <= log_start {
                continue;
            }
            let (position, from) = segment.lookup_timestamp(timestamp);
            let from = from.max(log_start);
            let mut found = None;
            segment.scan_headers(position, |at, header| {
                if header.base_offset >= log_end {
                    return Ok(false);
                }
                if header.last_offset() < from || header.max_timestamp < timestamp {
                    return Ok(true);
                }
                let bytes = segment.read_batch(at, header)?;
                let (_, records) = record::decode_batch(&bytes)?;
                found = records
                    .iter()
                    .find(|r| r.offset >= from && r.timestamp >= timestamp)
                    .map(|r| (r.offset, r.timestamp));
                Ok(found.is_none())
            })?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// The record with the largest timestamp: (timestamp, offset). `None` when the log
    /// is empty or no record carries a timestamp.
    pub fn max_timestamp(&self) -> Result<Option<(i64, i64)>, LogError> {
        self.check_open()?;
        let segments = self.snapshot();
        let mut best: Option<(i64, i64, &Arc<Segment>)> = None;
        for segment in segments.iter() {
            let (timestamp, batch_last_offset) = segment.max_timestamp();
            if timestamp > batch::NO_TIMESTAMP && best.is_none_or(|(t, _, _)| timestamp > t) {
                best = Some((timestamp, batch_last_offset, segment));
            }
        }
        let Some((timestamp, batch_last_offset, segment)) = best else {
            return Ok(None);
        };
        // The segment knows the batch; the record is found by decoding it.
        let mut found = None;
        segment.scan_headers(segment.lookup_position(batch_last_offset), |at, header| {
            if header.last_offset() < batch_last_offset {
                return Ok(true);
            }
            let bytes = segment.read_batch(at, header)?;
            let (_, records) = record::decode_batch(&bytes)?;
            found = records
                .iter()
                .find(|r| r.timestamp == timestamp)
                .map(|r| (r.timestamp, r.offset));
            Ok(false)
        })?;
        Ok(Some(found.unwrap_or((timestamp, batch_last_offset))))
    }

    /// Removes every record at or above `offset` (for replicas that diverged).
    ///
    /// Truncation happens on a batch boundary: the batch containing `offset` goes
    /// entirely, so the new log end offset is `min(offset, that batch's base offset)`.
    /// If that would leave nothing at or above the log start offset, the log restarts
    /// empty at `offset` (and the log start offset becomes `offset`).
    pub fn truncate_to(&self, offset: i64) -> Result<(), LogError> {
        let _writer = self.writer.lock();
        self.check_open()?;
        let log_end = self.log_end_offset.load(Ordering::Acquire);
        let log_start = self.log_start_offset.load(Ordering::Acquire);
        if offset < 0 {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start,
                log_end,
            });
        }
        if offset >= log_end {
            return Ok(());
        }
        self.truncations.fetch_add(1, Ordering::AcqRel);
        let interval = u64::from(self.config.read().index_interval_bytes);
        let now_ms = self.last_now_ms.load(Ordering::Acquire);
        let mut flush = self.flush.lock();
        let segments = self.snapshot();
        let keep = segments
            .partition_point(|s| s.base_offset() < offset)
            .max(1);
        let last = segments.get(keep - 1).cloned().ok_or(LogError::Closed)?;
        let mut cut = None;
        last.scan_headers(last.lookup_position(offset), |position, header| {
            if header.last_offset() >= offset {
                cut = Some((position, header.base_offset));
                return Ok(false);
            }
            Ok(true)
        })?;
        let mut new_end = cut.map_or(offset, |(_, base)| base.min(offset));
        let restart = new_end <= log_start;
        if restart {
            new_end = offset.min(log_start);
        }
        // The recovery point must never vouch for bytes we are about to rewrite.
        if flush.checkpointed_recovery_point > new_end {
            checkpoint::write(&self.dir, RECOVERY_POINT, new_end)?;
            flush.checkpointed_recovery_point = new_end;
        }
        self.flushed_offset.fetch_min(new_end, Ordering::AcqRel);
        if restart {
            return self.restart_at(&segments, new_end, now_ms);
        }

        self.log_end_offset.store(new_end, Ordering::Release);
        for segment in &segments[keep..] {
            segment.delete_files()?;
        }
        if let Some((position, _)) = cut {
            let recovered = last.truncate_to(position, interval)?;
            if recovered.truncated_bytes > 0 {
                tracing::warn!(dir = %self.dir.display(), reason = ?recovered.reason, "corruption found while truncating");
                self.log_end_offset
                    .store(last.next_offset(), Ordering::Release);
            }
        }
        let mut list = segments[..keep].to_vec();
        let end = self.log_end_offset.load(Ordering::Acquire);
        if last.next_offset() < end {
            // The end fell in a gap left by compaction: name a segment after it so the
            // log end offset survives a restart.
            last.close_for_appends();
            list.push(Arc::new(Segment::create(&self.dir, end, now_ms)?));
            self.dir_dirty.store(true, Ordering::Release);
        }
        self.publish(list);
        Ok(())
    }

    /// Empties the log and restarts it at `offset`, which becomes both the log start
    /// and end offset (Kafka's `truncateFullyAndStartAt`): what a follower does when
    /// its log ends below the leader's log start.
    pub fn truncate_fully_and_start_at(&self, offset: i64) -> Result<(), LogError> {
        let _writer = self.writer.lock();
        self.check_open()?;
        if offset < 0 {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start: self.log_start_offset.load(Ordering::Acquire),
                log_end: self.log_end_offset.load(Ordering::Acquire),
            });
        }
        self.truncations.fetch_add(1, Ordering::AcqRel);
        let now_ms = self.last_now_ms.load(Ordering::Acquire);
        let mut flush = self.flush.lock();
        let segments = self.snapshot();
        checkpoint::write(&self.dir, RECOVERY_POINT, offset)?;
        flush.checkpointed_recovery_point = offset;
        self.flushed_offset.store(offset, Ordering::Release);
        self.restart_at(&segments, offset, now_ms)
    }

    /// Replaces every segment with one empty segment at `offset`, which becomes both
    /// the log start and end offset. Caller holds the writer and flush locks.
    fn restart_at(
        &self,
        segments: &[Arc<Segment>],
        offset: i64,
        now_ms: i64,
    ) -> Result<(), LogError> {
        checkpoint::write(&self.dir, LOG_START_OFFSET, offset)?;
        self.log_end_offset.store(offset, Ordering::Release);
        self.log_start_offset.store(offset, Ordering::Release);
        for segment in segments {
            segment.delete_files()?;
        }
        let segment = Arc::new(Segment::create(&self.dir, offset, now_ms)?);
        self.dir_dirty.store(true, Ordering::Release);
        self.publish(vec![segment]);
        Ok(())
    }

    /// Flushes and closes the files.
    pub fn close(&self) -> Result<(), LogError> {
        let _writer = self.writer.lock();
        if self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let result = if self.failed.load(Ordering::Acquire) {
            Ok(())
        } else {
            self.flush_inner(true)
        };
        self.closed.store(true, Ordering::Release);
        result
    }

    pub(crate) fn check_open(&self) -> Result<(), LogError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(LogError::Io(io::Error::other(
                "log is offline after a failed flush; reopen it to recover",
            )));
        }
        Ok(())
    }

    pub(crate) fn note_now(&self, now_ms: i64) {
        self.last_now_ms.fetch_max(now_ms, Ordering::AcqRel);
    }

    /// Marks the log offline after an error that left memory and disk disagreeing.
    pub(crate) fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }

    pub(crate) fn snapshot(&self) -> Arc<Vec<Arc<Segment>>> {
        self.segments.read().clone()
    }

    /// Caller holds the writer lock.
    pub(crate) fn publish(&self, segments: Vec<Arc<Segment>>) {
        debug_assert!(!segments.is_empty(), "a log always has an active segment");
        debug_assert!(segments
            .windows(2)
            .all(|w| w[0].base_offset() < w[1].base_offset()));
        *self.segments.write() = Arc::new(segments);
    }
}

/// Length of the prefix of `bytes` made of whole batches whose headers hold up
/// (sizes, magic, field sanity, offsets increasing, the first one reaching `from`),
/// and the last offset of the last such batch. Headers only, no CRC: the planning
/// walk already found these batches on disk, and this re-check of the bytes actually
/// read catches a truncation that raced with the read.
fn whole_batches(bytes: &[u8], from: i64) -> (usize, Option<i64>) {
    let mut valid = 0;
    let mut last: Option<i64> = None;
    for item in batch::batches(bytes) {
        let Ok((header, batch)) = item else { break };
        let in_order = match last {
            Some(prev) => header.base_offset > prev,
            None => header.last_offset() >= from,
        };
        if !in_order || header.check_fields(batch::Mode::Stored).is_err() {
            tracing::warn!(
                base_offset = header.base_offset,
                "malformed stored batch header"
            );
            break;
        }
        valid += batch.len();
        last = Some(header.last_offset());
    }
    (valid, last)
}

/// Base offsets of the files named `<20 digits><suffix>` in `dir`, sorted.
pub(crate) fn list_files(dir: &Path, suffix: &str) -> io::Result<Vec<i64>> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(base) = entry
            .file_name()
            .to_str()
            .and_then(|name| segment::parse_file_name(name, suffix))
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn remove_segment_files(dir: &Path, bases: &[i64]) -> io::Result<()> {
    for &base in bases {
        for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            match fs::remove_file(segment::path(dir, base, suffix)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Cleans up after a crash before segments are opened: removes half-written files,
/// finishes a compaction swap that was committed, and removes orphaned indexes.
fn prepare_dir(dir: &Path) -> io::Result<()> {
    let mut changed = false;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.ends_with(CLEANED_SUFFIX)
            || name.ends_with(checkpoint::TMP_SUFFIX)
            || name.ends_with(DELETED_SUFFIX)
        {
            tracing::info!(dir = %dir.display(), file = %name, "removing leftover file");
            fs::remove_file(entry.path())?;
            changed = true;
        }
    }
    for base in list_files(dir, &format!("{LOG_SUFFIX}{SWAP_SUFFIX}"))? {
        complete_swap(dir, base)?;
        changed = true;
    }
    let logs = list_files(dir, LOG_SUFFIX)?;
    for suffix in [
        INDEX_SUFFIX.to_owned(),
        TIME_INDEX_SUFFIX.to_owned(),
        format!("{INDEX_SUFFIX}{SWAP_SUFFIX}"),
        format!("{TIME_INDEX_SUFFIX}{SWAP_SUFFIX}"),
    ] {
        for base in list_files(dir, &suffix)? {
            if suffix.ends_with(SWAP_SUFFIX) || logs.binary_search(&base).is_err() {
                fs::remove_file(segment::path(dir, base, &suffix))?;
                changed = true;
            }
        }
    }
    if changed {
        checkpoint::sync_dir(dir)?;
    }
    Ok(())
}

/// Finishes installing a compaction output found as `<base>.log.swap`. The swap was
/// fsynced before it got that name, so it is complete: the segments it replaces
/// (those starting inside its offset range) are removed and it takes its final name.
fn complete_swap(dir: &Path, base: i64) -> io::Result<()> {
    let swap_suffix = format!("{LOG_SUFFIX}{SWAP_SUFFIX}");
    let swap = segment::path(dir, base, &swap_suffix);
    let Some(next_offset) = segment::next_offset_of_file(&swap, base)? else {
        tracing::warn!(dir = %dir.display(), base, "compaction output is not valid; discarding it");
        return fs::remove_file(&swap);
    };
    let replaced: Vec<i64> = list_files(dir, LOG_SUFFIX)?
        .into_iter()
        .filter(|b| *b > base && *b < next_offset)
        .collect();
    remove_segment_files(dir, &replaced)?;
    for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
        let from = segment::path(dir, base, &format!("{suffix}{SWAP_SUFFIX}"));
        let to = segment::path(dir, base, suffix);
        if from.exists() {
            fs::rename(from, to)?;
        } else {
            // Unknown vintage (old segment's or already renamed): let recovery rebuild it.
            match fs::remove_file(to) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    fs::rename(&swap, segment::path(dir, base, LOG_SUFFIX))?;
    tracing::info!(dir = %dir.display(), base, replaced = replaced.len(), "completed an interrupted compaction swap");
    checkpoint::sync_dir(dir)
}
