//! Removing data from a log: retention (`cleanup.policy=delete`), DeleteRecords, and
//! compaction (`cleanup.policy=compact`).
//!
//! Retention and DeleteRecords only ever drop whole segments from the front of the
//! log and raise the log start offset; they never touch the active segment.
//!
//! Compaction rewrites closed segments keeping, for each key, only its latest record:
//!
//! ```text
//!  1. map     scan the whole log (active segment included): key → latest offset
//!  2. group   consecutive closed segments whose sizes fit in one segment
//!  3. write   <base>.log.cleaned (+ indexes): batches kept as-is, rewritten with
//!             fewer records (same base offset, offset span, producer fields, codec),
//!             or dropped; fsync
//!  4. install (writer + flush locks) rename *.cleaned → *.swap, fsync dir  ← commit
//!             delete the other segments of the group, rename *.swap → final names
//! ```
//!
//! A crash before the commit leaves `.cleaned` files that `Log::open` deletes; after
//! it, `.swap` files that `Log::open` finishes installing. Heavy work (steps 1-3)
//! holds no lock that appends or reads need; the install rechecks that the group's
//! segments are still in the log (a truncation may have raced) before swapping.

use std::collections::HashMap;
use std::fs;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::batch::BatchHeader;
use crate::checkpoint::{self, LOG_START_OFFSET};
use crate::log::Log;
use crate::record::{self, BatchBuilder, Record};
use crate::segment::{
    self, CleanedSegment, Segment, SegmentWriter, CLEANED_SUFFIX, INDEX_SUFFIX, LOG_SUFFIX,
    SWAP_SUFFIX, TIME_INDEX_SUFFIX,
};
use crate::{CleanupOutcome, LogConfig, LogError};

impl Log {
    /// DeleteRecords: raises the log start offset to `offset` (persisted), deleting
    /// segments wholly below it. Returns the new log start offset.
    ///
    /// `offset` may be at most the log end offset. When the active segment is wholly
    /// below `offset` it is rolled first so that its space is reclaimed too.
    pub fn delete_records_before(&self, offset: i64) -> Result<i64, LogError> {
        let _writer = self.writer.lock();
        self.check_open()?;
        let log_end = self.log_end_offset.load(Ordering::Acquire);
        let log_start = self.log_start_offset.load(Ordering::Acquire);
        if offset < 0 || offset > log_end {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start,
                log_end,
            });
        }
        if offset <= log_start {
            return Ok(log_start);
        }
        checkpoint::write(&self.dir, LOG_START_OFFSET, offset)?;
        self.log_start_offset.fetch_max(offset, Ordering::AcqRel);
        let active = self.snapshot().last().cloned().ok_or(LogError::Closed)?;
        if !active.is_empty() && active.next_offset() <= offset {
            self.roll(log_end, self.last_now_ms.load(Ordering::Acquire))?;
        }
        let segments = self.snapshot();
        let count = closed_segments(&segments)?
            .iter()
            .take_while(|s| s.next_offset() <= offset)
            .count();
        self.delete_oldest_segments(count)?;
        Ok(self.log_start_offset())
    }

    /// Time and size retention over closed segments (`cleanup.policy` has `delete`).
    ///
    /// Deletes, oldest first, closed segments that are below the log start offset,
    /// whose newest record is more than `retention.ms` old, or while the log minus
    /// the segment is still at least `retention.bytes`.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<CleanupOutcome, LogError> {
        let config = self.config();
        let _writer = self.writer.lock();
        self.check_open()?;
        self.note_now(now_ms);
        if !config.cleanup_delete {
            return Ok(CleanupOutcome {
                log_start_offset: self.log_start_offset(),
                ..CleanupOutcome::default()
            });
        }
        let segments = self.snapshot();
        let closed = closed_segments(&segments)?;
        let log_start = self.log_start_offset();
        let mut count = closed
            .iter()
            .take_while(|s| s.next_offset() <= log_start)
            .count();
        if config.retention_ms >= 0 {
            count += closed[count..]
                .iter()
                .take_while(|s| {
                    now_ms.saturating_sub(s.largest_timestamp_ms()) > config.retention_ms
                })
                .count();
        }
        if config.retention_bytes >= 0 {
            let retention_bytes = config.retention_bytes as u64;
            let mut remaining: u64 = segments[count..].iter().map(|s| s.size()).sum();
            for segment in &closed[count..] {
                if remaining.saturating_sub(segment.size()) < retention_bytes {
                    break;
                }
                remaining -= segment.size();
                count += 1;
            }
        }
        self.delete_oldest_segments(count)
    }

    /// Drops the oldest `count` segments (never the active one) and raises the log
    /// start offset to the new first segment. Caller holds the writer lock.
    pub(crate) fn delete_oldest_segments(&self, count: usize) -> Result<CleanupOutcome, LogError> {
        let segments = self.snapshot();
        let count = count.min(closed_segments(&segments)?.len());
        if count == 0 {
            return Ok(CleanupOutcome {
                log_start_offset: self.log_start_offset(),
                ..CleanupOutcome::default()
            });
        }
        let remaining = segments[count..].to_vec();
        let new_start = remaining.first().map_or(0, |s| s.base_offset());
        // Raise the start before publishing the shorter list: a reader that sees the
        // new list then also sees the new start (see `Log::read`).
        self.log_start_offset.fetch_max(new_start, Ordering::AcqRel);
        self.publish(remaining);
        let _flush = self.flush.lock();
        let mut outcome = CleanupOutcome::default();
        let mut first_error = None;
        for segment in &segments[..count] {
            outcome.segments_deleted += 1;
            outcome.bytes_deleted += segment.size();
            if let Err(e) = segment.delete_files() {
                first_error.get_or_insert(e);
            }
        }
        // Make the deletions durable with the next flush; until then a crash merely
        // brings old segments back below the log start.
        self.dir_dirty.store(true, Ordering::Release);
        outcome.log_start_offset = self.log_start_offset();
        tracing::info!(
            dir = %self.dir.display(), segments = outcome.segments_deleted, bytes = outcome.bytes_deleted,
            log_start_offset = outcome.log_start_offset, "deleted old segments"
        );
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(outcome),
        }
    }

    /// Compaction of closed segments (`cleanup.policy` has `compact`): keeps the latest
    /// record per key, drops tombstones older than `delete.retention.ms`.
    pub fn compact(&self, now_ms: i64) -> Result<CleanupOutcome, LogError> {
        self.compact_below(now_ms, i64::MAX)
    }

    /// [`Log::compact`] restricted to segments wholly below `offset_limit` (the broker
    /// passes the high watermark or last stable offset, so that only replicated,
    /// decided records are compacted).
    ///
    /// `segments_deleted` / `bytes_deleted` count segments merged away and bytes freed.
    pub fn compact_below(
        &self,
        now_ms: i64,
        offset_limit: i64,
    ) -> Result<CleanupOutcome, LogError> {
        self.check_open()?;
        self.note_now(now_ms);
        let config = self.config();
        let mut outcome = CleanupOutcome {
            log_start_offset: self.log_start_offset(),
            ..CleanupOutcome::default()
        };
        if !config.cleanup_compact {
            return Ok(outcome);
        }
        let _compaction = self.compaction.lock();
        let truncations = self.truncations.load(Ordering::Acquire);
        let log_end = self.log_end_offset.load(Ordering::Acquire);
        let segments = self.snapshot();
        let closed = closed_segments(&segments)?;
        let lag = config.min_compaction_lag_ms;
        let cleanable: Vec<Arc<Segment>> = closed
            .iter()
            .take_while(|s| s.next_offset() <= offset_limit)
            .take_while(|s| lag <= 0 || s.largest_timestamp_ms() <= now_ms.saturating_sub(lag))
            .cloned()
            .collect();
        if cleanable.is_empty() {
            return Ok(outcome);
        }
        let map = KeyMap::build(&segments, log_end)?;
        let rules = Rules {
            now_ms,
            delete_retention_ms: config.delete_retention_ms,
        };
        for group in group_segments(&cleanable, &config) {
            if group.len() == 1 && !group_is_dirty(&group, &map, &rules)? {
                continue;
            }
            let base = group[0].base_offset();
            let cleaned = match write_group(self, &group, &map, &rules, &config) {
                Ok(cleaned) => cleaned,
                Err(e) => {
                    SegmentWriter::discard(&self.dir, base);
                    return Err(e);
                }
            };
            if let Some((merged, freed)) =
                self.install_cleaned(&group, cleaned, truncations, now_ms)?
            {
                outcome.segments_deleted += merged;
                outcome.bytes_deleted += freed;
            }
        }
        outcome.log_start_offset = self.log_start_offset();
        Ok(outcome)
    }

    /// Swaps a cleaned segment in for `group` (see the module docs). Returns the number
    /// of segments merged away and the bytes freed, or `None` if the log changed under
    /// the compaction and the output was discarded.
    fn install_cleaned(
        &self,
        group: &[Arc<Segment>],
        cleaned: CleanedSegment,
        truncations: u64,
        now_ms: i64,
    ) -> Result<Option<(usize, u64)>, LogError> {
        let base = cleaned.base_offset;
        let _writer = self.writer.lock();
        let segments = self.snapshot();
        let start = segments.iter().position(|s| Arc::ptr_eq(s, &group[0]));
        let still_there = start.is_some_and(|i| {
            i + group.len() < segments.len()
                && segments[i..i + group.len()]
                    .iter()
                    .zip(group)
                    .all(|(a, b)| Arc::ptr_eq(a, b))
        });
        // A truncation since the key map was built may have removed the very records
        // that made older ones obsolete: the output is stale.
        let unchanged = still_there && self.truncations.load(Ordering::Acquire) == truncations;
        let (Some(start), true, Ok(())) = (start, unchanged, self.check_open()) else {
            SegmentWriter::discard(&self.dir, base);
            return Ok(None);
        };
        let _flush = self.flush.lock();
        let result = (|| -> std::io::Result<()> {
            let rename = |from: String, to: String| {
                fs::rename(
                    segment::path(&self.dir, base, &from),
                    segment::path(&self.dir, base, &to),
                )
            };
            // The .log is renamed last: its .swap name is what commits the swap.
            for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX, LOG_SUFFIX] {
                rename(
                    format!("{suffix}{CLEANED_SUFFIX}"),
                    format!("{suffix}{SWAP_SUFFIX}"),
                )?;
            }
            checkpoint::sync_dir(&self.dir)?;
            for old in &group[1..] {
                old.delete_files()?;
            }
            group[0].mark_replaced();
            for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX, LOG_SUFFIX] {
                rename(format!("{suffix}{SWAP_SUFFIX}"), suffix.to_owned())?;
            }
            checkpoint::sync_dir(&self.dir)
        })();
        if let Err(e) = result {
            // Disk and memory may now disagree; reopening finishes or discards the swap.
            self.fail();
            return Err(e.into());
        }
        let old_bytes: u64 = group.iter().map(|s| s.size()).sum();
        let new_segment = Arc::new(Segment::from_cleaned(&self.dir, cleaned, now_ms));
        let freed = old_bytes.saturating_sub(new_segment.size());
        let mut list = segments[..start].to_vec();
        list.push(new_segment);
        list.extend_from_slice(&segments[start + group.len()..]);
        self.publish(list);
        tracing::info!(dir = %self.dir.display(), base, merged = group.len(), freed, "compacted segments");
        Ok(Some((group.len() - 1, freed)))
    }
}

/// All segments but the active one.
fn closed_segments(segments: &[Arc<Segment>]) -> Result<&[Arc<Segment>], LogError> {
    // The list is never empty (a log always has an active segment); an error here
    // rather than a panic if that invariant were ever broken.
    segments
        .split_last()
        .map(|(_, closed)| closed)
        .ok_or(LogError::Closed)
}

/// Key → latest offset over the whole log, plus each producer's last batch (kept
/// even when emptied, so producer state can be rebuilt from the log as in Kafka).
///
/// Keys are stored as 128-bit keyed hashes (two independent SipHash keys), bounding
/// memory per key; a collision — which would drop a record whose key merely shares
/// a hash — has probability about n²/2¹²⁹.
struct KeyMap {
    hashers: (RandomState, RandomState),
    latest: HashMap<u128, i64>,
    producer_last_offset: HashMap<i64, i64>,
}

impl KeyMap {
    fn build(segments: &[Arc<Segment>], log_end: i64) -> Result<KeyMap, LogError> {
        let mut map = KeyMap {
            hashers: (RandomState::new(), RandomState::new()),
            latest: HashMap::new(),
            producer_last_offset: HashMap::new(),
        };
        for segment in segments {
            segment.scan_headers(0, |position, header| {
                if header.base_offset >= log_end {
                    return Ok(false);
                }
                if header.has_producer_id() {
                    map.producer_last_offset.insert(header.producer_id, header.last_offset());
                }
                // Transactional data may yet be aborted; it must not shadow older
                // committed values, so it takes no part in the map (and is kept as is).
                if header.is_control() || header.is_transactional() {
                    return Ok(true);
                }
                let bytes = segment.read_batch(position, header)?;
                match record::decode_batch(&bytes) {
                    Ok((_, records)) => {
                        for r in records {
                            if let Some(key) = &r.key {
                                let hash = map.hash(key);
                                map.latest.insert(hash, r.offset);
                            }
                        }
                    }
                    // Its keys stay unknown, so older values of them survive: safe.
                    Err(e) => tracing::warn!(base_offset = header.base_offset, error = %e, "cannot decode batch for compaction"),
                }
                Ok(true)
            })?;
        }
        Ok(map)
    }

    fn hash(&self, key: &[u8]) -> u128 {
        (u128::from(self.hashers.0.hash_one(key)) << 64) | u128::from(self.hashers.1.hash_one(key))
    }

    fn is_latest(&self, record: &Record) -> bool {
        match &record.key {
            None => true,
            Some(key) => self.latest.get(&self.hash(key)) == Some(&record.offset),
        }
    }
}

struct Rules {
    now_ms: i64,
    delete_retention_ms: i64,
}

enum Fate {
    Keep,
    Drop,
    Rewrite(Vec<Record>),
}

/// What compaction does with one batch. `keep_if_empty` is set for batches that
/// must survive as an empty header: the last batch of the group (so the cleaned
/// segment still ends at the group's last offset) and a producer's last batch.
fn fate(
    header: &BatchHeader,
    bytes: &[u8],
    map: &KeyMap,
    rules: &Rules,
    group_last_offset: i64,
) -> Fate {
    if header.is_control() || header.is_transactional() {
        return Fate::Keep;
    }
    let records = match record::decode_batch(bytes) {
        Ok((_, records)) => records,
        Err(_) => return Fate::Keep,
    };
    let tombstones_expire = rules.delete_retention_ms >= 0
        && rules.now_ms.saturating_sub(header.max_timestamp) > rules.delete_retention_ms;
    let total = records.len();
    let kept: Vec<Record> = records
        .into_iter()
        .filter(|r| {
            map.is_latest(r) && !(r.key.is_some() && r.value.is_none() && tombstones_expire)
        })
        .collect();
    let keep_if_empty = header.last_offset() == group_last_offset
        || (header.has_producer_id()
            && map.producer_last_offset.get(&header.producer_id) == Some(&header.last_offset()));
    if kept.len() == total && (total > 0 || keep_if_empty) {
        return Fate::Keep;
    }
    if kept.is_empty() && !keep_if_empty {
        Fate::Drop
    } else {
        Fate::Rewrite(kept)
    }
}

/// Consecutive segments whose total size fits one segment and whose offsets fit the
/// 32-bit relative offsets of one index.
fn group_segments(cleanable: &[Arc<Segment>], config: &LogConfig) -> Vec<Vec<Arc<Segment>>> {
    let limit = config.segment_bytes.min(u64::from(u32::MAX));
    let mut groups: Vec<Vec<Arc<Segment>>> = Vec::new();
    let mut current: Vec<Arc<Segment>> = Vec::new();
    let mut size = 0u64;
    for segment in cleanable {
        if let Some(first) = current.first() {
            let span = segment.next_offset() - 1 - first.base_offset();
            if size + segment.size() > limit || span > i64::from(i32::MAX) {
                groups.push(std::mem::take(&mut current));
                size = 0;
            }
        }
        size += segment.size();
        current.push(segment.clone());
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

fn group_last_offset(group: &[Arc<Segment>]) -> i64 {
    group.last().map_or(-1, |s| s.next_offset() - 1)
}

fn group_is_dirty(group: &[Arc<Segment>], map: &KeyMap, rules: &Rules) -> Result<bool, LogError> {
    let last_offset = group_last_offset(group);
    let mut dirty = false;
    for segment in group {
        segment.scan_headers(0, |position, header| {
            let bytes = segment.read_batch(position, header)?;
            dirty = !matches!(fate(header, &bytes, map, rules, last_offset), Fate::Keep);
            Ok(!dirty)
        })?;
        if dirty {
            break;
        }
    }
    Ok(dirty)
}

fn write_group(
    log: &Log,
    group: &[Arc<Segment>],
    map: &KeyMap,
    rules: &Rules,
    config: &LogConfig,
) -> Result<CleanedSegment, LogError> {
    let last_offset = group_last_offset(group);
    let base = group[0].base_offset();
    let mut writer = SegmentWriter::create(&log.dir, base, u64::from(config.index_interval_bytes))?;
    for segment in group {
        segment.scan_headers(0, |position, header| {
            let bytes = segment.read_batch(position, header)?;
            match fate(header, &bytes, map, rules, last_offset) {
                Fate::Keep => writer.append(&bytes, header)?,
                Fate::Drop => {}
                Fate::Rewrite(records) => {
                    let rebuilt = BatchBuilder::from_header(header)?
                        .with_records(records)?
                        .build()?;
                    let new_header = BatchHeader::parse(&rebuilt)?;
                    writer.append(&rebuilt, &new_header)?;
                }
            }
            Ok(true)
        })?;
    }
    Ok(writer.finish()?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Compression;
    use bytes::Bytes;

    fn keyed(log: &Log, key: &str, ts: i64) {
        let mut b = BatchBuilder::new(Compression::None);
        b.append(
            ts,
            Some(Bytes::from(key.to_owned())),
            Some(Bytes::from_static(b"v")),
        );
        log.append(&mut b.build().unwrap(), 0, ts).unwrap();
    }

    #[test]
    fn output_computed_before_a_truncation_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 200,
            cleanup_compact: true,
            ..LogConfig::default()
        };
        let log = Log::open(dir.path(), config.clone(), 0).unwrap();
        for _ in 0..6 {
            keyed(&log, "k", 0);
        }
        let segments = log.snapshot();
        assert!(segments.len() > 2);
        // The map says the latest "k" is the last record, in the active segment...
        let generation = log.truncations.load(Ordering::Acquire);
        let map = KeyMap::build(&segments, log.log_end_offset()).unwrap();
        let rules = Rules {
            now_ms: 0,
            delete_retention_ms: -1,
        };
        let group = vec![segments[0].clone()];
        let cleaned = write_group(&log, &group, &map, &rules, &config).unwrap();
        // ...which a truncation then removes: the cleaned output would lose "k".
        log.truncate_to(log.log_end_offset() - 1).unwrap();
        assert!(log
            .install_cleaned(&group, cleaned, generation, 0)
            .unwrap()
            .is_none());
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| !n.ends_with(CLEANED_SUFFIX)),
            "{names:?}"
        );
        let stored = log.read(0, usize::MAX, i64::MAX).unwrap();
        assert_eq!(record::decode_records(&stored.bytes).unwrap().len(), 5);
    }

    #[test]
    fn groups_respect_the_segment_size() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes: 100,
            ..LogConfig::default()
        };
        let log = Log::open(dir.path(), config.clone(), 0).unwrap();
        for _ in 0..6 {
            keyed(&log, "k", 0);
        }
        let segments = log.snapshot();
        let closed = &segments[..segments.len() - 1];
        let size = closed[0].size();
        let groups = group_segments(
            closed,
            &LogConfig {
                segment_bytes: size * 2,
                ..config.clone()
            },
        );
        assert!(groups.iter().all(|g| g.len() == 2 || g.len() == 1));
        assert_eq!(groups.iter().map(Vec::len).sum::<usize>(), closed.len());
        assert!(group_segments(closed, &config).iter().all(|g| g.len() == 1));
    }
}
