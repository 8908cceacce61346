//! One segment: a `.log` file of back-to-back batches starting at `base_offset`,
//! with its in-memory offset and time indexes and their persisted copies.
//!
//! A segment owns its bytes and the bookkeeping derived from them; the [`crate::Log`]
//! decides when segments are created, rolled, truncated or deleted.
//!
//! Concurrency: one appender (the log's append mutex) and any number of readers.
//! The appender writes bytes with `write_at`, updates the indexes under a short
//! `RwLock`, and only then publishes the new `size`; readers never look past the
//! `size` they loaded, so they see whole batches only. Reads use `read_at` on the
//! shared `File` (no seek cursor to fight over), and a reader holding an
//! `Arc<Segment>` keeps reading the file's inode even after it is deleted.
//!
//! Recovery ([`Segment::open`]) trusts nothing on disk: the persisted indexes are
//! validated and used only as an *anchor* — the last entry below the recovery point,
//! whose batch is re-read and CRC-checked — and every byte after the anchor is
//! scanned (sizes, magic, CRC-32C, increasing offsets). If the anchor does not hold
//! or anything after it is bad, the whole segment is rescanned from byte 0 and cut
//! at the first bad batch, rebuilding both indexes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::batch::{self, BatchError, BatchHeader, Mode, ATTRIBUTES_AT, NO_TIMESTAMP};
use crate::index::{self, OffsetEntry, OffsetIndex};
use crate::time_index::{self, TimeEntry, TimeIndex};
use crate::LogError;

pub(crate) const LOG_SUFFIX: &str = ".log";
pub(crate) const INDEX_SUFFIX: &str = ".index";
pub(crate) const TIME_INDEX_SUFFIX: &str = ".timeindex";
/// Compaction output being written; garbage if found at open.
pub(crate) const CLEANED_SUFFIX: &str = ".cleaned";
/// Compaction output that is complete and fsynced; open finishes installing it.
pub(crate) const SWAP_SUFFIX: &str = ".swap";
pub(crate) const DELETED_SUFFIX: &str = ".deleted";

/// How far a header scan reads ahead; small because reads scan at most one index
/// interval of headers before reaching their batch.
const READ_WINDOW_BYTES: usize = 16 * 1024;
/// Read-ahead for full scans (recovery, compaction), which read every byte.
const SCAN_WINDOW_BYTES: usize = 256 * 1024;

pub(crate) fn file_name(base_offset: i64, suffix: &str) -> String {
    format!("{base_offset:020}{suffix}")
}

pub(crate) fn path(dir: &Path, base_offset: i64, suffix: &str) -> PathBuf {
    dir.join(file_name(base_offset, suffix))
}

/// The base offset of a file named `<20 digits><suffix>`.
pub(crate) fn parse_file_name(name: &str, suffix: &str) -> Option<i64> {
    let digits = name.strip_suffix(suffix)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Bookkeeping derived from the segment's bytes. Everything here can be rebuilt by
/// scanning the `.log`, which is exactly what recovery does when in doubt.
#[derive(Debug, Clone)]
pub(crate) struct SegmentState {
    pub(crate) offset_index: OffsetIndex,
    pub(crate) time_index: TimeIndex,
    /// Largest batch max-timestamp so far (`-1` when none has a timestamp).
    pub(crate) max_timestamp: i64,
    /// Last offset of the batch that first reached `max_timestamp`.
    pub(crate) offset_of_max_timestamp: i64,
    /// Last offset + 1 of the last batch, or the base offset when empty.
    pub(crate) next_offset: i64,
    bytes_since_index: u64,
    /// Entries already written to the index files.
    persisted_offset_entries: usize,
    persisted_time_entries: usize,
}

impl SegmentState {
    fn new(base_offset: i64) -> Self {
        SegmentState {
            offset_index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            max_timestamp: NO_TIMESTAMP,
            offset_of_max_timestamp: -1,
            next_offset: base_offset,
            bytes_since_index: 0,
            persisted_offset_entries: 0,
            persisted_time_entries: 0,
        }
    }

    fn relative(base_offset: i64, offset: i64) -> Option<u32> {
        offset
            .checked_sub(base_offset)
            .and_then(|r| u32::try_from(r).ok())
    }

    /// Accounts for one batch written at `position`. The same code runs for appends,
    /// recovery scans and compaction output, so an index rebuilt from the `.log` is
    /// identical to the one built while appending — which is what lets recovery resume
    /// from a persisted entry.
    pub(crate) fn on_batch(
        &mut self,
        base_offset: i64,
        position: u64,
        header: &BatchHeader,
        interval: u64,
    ) {
        let last_offset = header.last_offset();
        if header.max_timestamp > self.max_timestamp {
            self.max_timestamp = header.max_timestamp;
            self.offset_of_max_timestamp = last_offset;
        }
        if self.bytes_since_index >= interval {
            if let (Some(relative_offset), Ok(position)) = (
                Self::relative(base_offset, last_offset),
                u32::try_from(position),
            ) {
                self.offset_index.push(OffsetEntry {
                    relative_offset,
                    position,
                });
                self.push_time_entry(base_offset);
                self.bytes_since_index = 0;
            }
        }
        self.bytes_since_index = self
            .bytes_since_index
            .saturating_add(header.total_size() as u64);
        self.next_offset = last_offset.saturating_add(1);
    }

    fn push_time_entry(&mut self, base_offset: i64) {
        if let Some(relative_offset) = Self::relative(base_offset, self.offset_of_max_timestamp) {
            self.time_index.maybe_push(TimeEntry {
                timestamp: self.max_timestamp,
                relative_offset,
            });
        }
    }

    /// The segment stops taking appends: record its final max timestamp so time
    /// lookups and retention see it without scanning.
    pub(crate) fn on_close(&mut self, base_offset: i64) {
        self.push_time_entry(base_offset);
    }
}

/// What recovery found in one segment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recovered {
    /// Bytes cut from the end of the `.log`.
    pub(crate) truncated_bytes: u64,
    /// Why the cut happened.
    pub(crate) reason: Option<String>,
    /// The indexes were rebuilt from byte 0 rather than resumed from an anchor.
    pub(crate) rebuilt: bool,
}

pub(crate) struct Segment {
    base_offset: i64,
    dir: PathBuf,
    file: File,
    /// Bytes readers may see: only whole, indexed batches.
    size: AtomicU64,
    /// Bytes known to be fsynced.
    flushed_size: AtomicU64,
    created_ms: i64,
    state: RwLock<SegmentState>,
    /// Set (under the log's flush lock) once the files are deleted or replaced, so a
    /// late flush does not recreate index files under a name that is no longer ours.
    deleted: AtomicBool,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("base_offset", &self.base_offset)
            .field("size", &self.size())
            .field("next_offset", &self.next_offset())
            .finish()
    }
}

impl Segment {
    /// Creates a new empty segment, replacing any stale files with its name.
    pub(crate) fn create(dir: &Path, base_offset: i64, now_ms: i64) -> io::Result<Segment> {
        for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            remove_if_exists(&path(dir, base_offset, suffix))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path(dir, base_offset, LOG_SUFFIX))?;
        Ok(Segment {
            base_offset,
            dir: dir.to_path_buf(),
            file,
            size: AtomicU64::new(0),
            flushed_size: AtomicU64::new(0),
            created_ms: now_ms,
            state: RwLock::new(SegmentState::new(base_offset)),
            deleted: AtomicBool::new(false),
        })
    }

    /// Opens an existing segment and recovers it (see the module docs). Segments
    /// wholly below `recovery_point` were fsynced and need only their tail checked.
    pub(crate) fn open(
        dir: &Path,
        base_offset: i64,
        recovery_point: i64,
        interval: u64,
        now_ms: i64,
    ) -> Result<(Segment, Recovered), LogError> {
        let file =
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(path(dir, base_offset, LOG_SUFFIX))?;
        let file_len = file.metadata()?.len();
        let loaded = load_indexes(dir, base_offset, file_len);
        let (state, valid_len, recovered) = recover(
            &file,
            base_offset,
            file_len,
            loaded,
            recovery_point,
            interval,
        )?;
        if valid_len < file_len {
            file.set_len(valid_len)?;
            file.sync_data()?;
        }
        let durable = state.next_offset <= recovery_point && recovered.truncated_bytes == 0;
        let segment = Segment {
            base_offset,
            dir: dir.to_path_buf(),
            file,
            size: AtomicU64::new(valid_len),
            flushed_size: AtomicU64::new(if durable { valid_len } else { 0 }),
            created_ms: now_ms,
            state: RwLock::new(state),
            deleted: AtomicBool::new(false),
        };
        segment.trim_index_files()?;
        Ok((segment, recovered))
    }

    /// Wraps a finished compaction output that now lives under the segment's name.
    pub(crate) fn from_cleaned(dir: &Path, cleaned: CleanedSegment, now_ms: i64) -> Segment {
        Segment {
            base_offset: cleaned.base_offset,
            dir: dir.to_path_buf(),
            file: cleaned.file,
            size: AtomicU64::new(cleaned.size),
            flushed_size: AtomicU64::new(cleaned.size),
            created_ms: now_ms,
            state: RwLock::new(cleaned.state),
            deleted: AtomicBool::new(false),
        }
    }

    pub(crate) fn base_offset(&self) -> i64 {
        self.base_offset
    }

    pub(crate) fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.size() == 0
    }

    pub(crate) fn created_ms(&self) -> i64 {
        self.created_ms
    }

    pub(crate) fn next_offset(&self) -> i64 {
        self.state.read().next_offset
    }

    /// (max timestamp, last offset of the batch that reached it).
    pub(crate) fn max_timestamp(&self) -> (i64, i64) {
        let state = self.state.read();
        (state.max_timestamp, state.offset_of_max_timestamp)
    }

    /// The timestamp retention compares against: the newest record's, or the file's
    /// modification time when no record carries a timestamp (Kafka does the same).
    pub(crate) fn largest_timestamp_ms(&self) -> i64 {
        let (max, _) = self.max_timestamp();
        if max >= 0 {
            return max;
        }
        self.file
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .unwrap_or(0)
    }

    pub(crate) fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Appends batches already laid out in `data` (`batches` holds each one's
    /// position within `data` and its header), then publishes the new size.
    pub(crate) fn append(
        &self,
        data: &[u8],
        batches: &[(u64, BatchHeader)],
        interval: u64,
    ) -> io::Result<()> {
        let position = self.size();
        if let Err(e) = self.file.write_all_at(data, position) {
            // Drop whatever part made it, so the file never holds a torn batch that
            // a later append could land behind.
            let _ = self.file.set_len(position);
            return Err(e);
        }
        {
            let mut state = self.state.write();
            for (at, header) in batches {
                state.on_batch(self.base_offset, position + at, header, interval);
            }
        }
        self.size
            .store(position + data.len() as u64, Ordering::Release);
        Ok(())
    }

    /// The segment becomes read-only (it was rolled).
    pub(crate) fn close_for_appends(&self) {
        self.state.write().on_close(self.base_offset);
    }

    /// fsyncs the `.log` bytes written so far and writes + fsyncs new index entries.
    /// Callers hold the log's flush lock.
    #[cfg(test)]
    pub(crate) fn flush(&self) -> io::Result<()> {
        self.sync_log()?;
        self.persist_indexes()
    }

    /// fsyncs the `.log` bytes written so far. A failure here is fatal for the log:
    /// the kernel may have dropped the dirty pages.
    pub(crate) fn sync_log(&self) -> io::Result<()> {
        if self.is_deleted() {
            return Ok(());
        }
        let size = self.size();
        if self.flushed_size.load(Ordering::Acquire) < size {
            self.file.sync_data()?;
            self.flushed_size.fetch_max(size, Ordering::AcqRel);
        }
        Ok(())
    }

    pub(crate) fn needs_flush(&self) -> bool {
        if self.flushed_size.load(Ordering::Acquire) < self.size() {
            return true;
        }
        let state = self.state.read();
        state.persisted_offset_entries < state.offset_index.len()
            || state.persisted_time_entries < state.time_index.len()
    }

    /// Writes and fsyncs new index entries. A failure (a full disk) is not fatal:
    /// the entries stay in memory and are written by the next flush, and recovery
    /// validates index files against the `.log` and rebuilds them anyway.
    pub(crate) fn persist_indexes(&self) -> io::Result<()> {
        if self.is_deleted() {
            return Ok(());
        }
        let (offset_from, offset_bytes, offset_len, time_from, time_bytes, time_len) = {
            let state = self.state.read();
            (
                state.persisted_offset_entries,
                state
                    .offset_index
                    .encode_from(state.persisted_offset_entries),
                state.offset_index.len(),
                state.persisted_time_entries,
                state.time_index.encode_from(state.persisted_time_entries),
                state.time_index.len(),
            )
        };
        if !offset_bytes.is_empty() {
            let at = (offset_from * index::ENTRY_BYTES) as u64;
            write_index_file(
                &path(&self.dir, self.base_offset, INDEX_SUFFIX),
                at,
                &offset_bytes,
            )?;
        }
        if !time_bytes.is_empty() {
            let at = (time_from * time_index::ENTRY_BYTES) as u64;
            write_index_file(
                &path(&self.dir, self.base_offset, TIME_INDEX_SUFFIX),
                at,
                &time_bytes,
            )?;
        }
        let mut state = self.state.write();
        state.persisted_offset_entries = offset_len;
        state.persisted_time_entries = time_len;
        Ok(())
    }

    /// Cuts the index files to the entries known to be persisted (recovery or a
    /// truncation may have dropped some) and fsyncs them, so stale entries can never
    /// reappear after a crash.
    fn trim_index_files(&self) -> io::Result<()> {
        let (offset_len, time_len) = {
            let state = self.state.read();
            (state.persisted_offset_entries, state.persisted_time_entries)
        };
        for (suffix, len) in [
            (INDEX_SUFFIX, offset_len * index::ENTRY_BYTES),
            (TIME_INDEX_SUFFIX, time_len * time_index::ENTRY_BYTES),
        ] {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path(&self.dir, self.base_offset, suffix))?;
            if file.metadata()?.len() != len as u64 {
                file.set_len(len as u64)?;
                file.sync_data()?;
            }
        }
        Ok(())
    }

    /// Removes everything from byte `position` (a batch boundary) on. Callers hold
    /// both the append mutex and the flush lock.
    pub(crate) fn truncate_to(&self, position: u64, interval: u64) -> Result<Recovered, LogError> {
        self.size.fetch_min(position, Ordering::AcqRel);
        self.flushed_size.fetch_min(position, Ordering::AcqRel);
        self.file.set_len(position)?;
        self.file.sync_data()?;
        let (mut offsets, times) = {
            let state = self.state.read();
            (state.offset_index.clone(), state.time_index.clone())
        };
        offsets.truncate_to_position(position);
        let (mut state, valid_len, recovered) = recover(
            &self.file,
            self.base_offset,
            position,
            Some((offsets, times)),
            i64::MAX,
            interval,
        )?;
        if valid_len < position {
            self.size.store(valid_len, Ordering::Release);
            self.file.set_len(valid_len)?;
            self.file.sync_data()?;
        }
        let persisted = self.state.read();
        state.persisted_offset_entries = state
            .persisted_offset_entries
            .min(persisted.persisted_offset_entries);
        state.persisted_time_entries = state
            .persisted_time_entries
            .min(persisted.persisted_time_entries);
        drop(persisted);
        *self.state.write() = state;
        self.trim_index_files()?;
        Ok(recovered)
    }

    /// Marks the segment dead and removes its files. Callers hold the flush lock.
    pub(crate) fn delete_files(&self) -> io::Result<()> {
        self.deleted.store(true, Ordering::Release);
        // The .log goes first: an index without its .log is an orphan open() removes,
        // while a .log without indexes would just be rebuilt (resurrected).
        let mut first_error = None;
        for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            if let Err(e) = remove_if_exists(&path(&self.dir, self.base_offset, suffix)) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Marks the segment dead without touching files (its name now belongs to a
    /// replacement). Callers hold the flush lock.
    pub(crate) fn mark_replaced(&self) {
        self.deleted.store(true, Ordering::Release);
    }

    /// Byte position to start scanning from for the batch holding `offset`.
    pub(crate) fn lookup_position(&self, offset: i64) -> u64 {
        let Some(relative) = offset.checked_sub(self.base_offset) else {
            return 0;
        };
        let relative = u32::try_from(relative.max(0)).unwrap_or(u32::MAX);
        self.state
            .read()
            .offset_index
            .lookup(relative)
            .map_or(0, |e| u64::from(e.position))
    }

    /// Position to start scanning from for the first record with timestamp `>=
    /// timestamp`, and the first offset that can hold it.
    pub(crate) fn lookup_timestamp(&self, timestamp: i64) -> (u64, i64) {
        let from = {
            let state = self.state.read();
            match state.time_index.last_before(timestamp) {
                Some(entry) => self.base_offset + i64::from(entry.relative_offset) + 1,
                None => self.base_offset,
            }
        };
        (self.lookup_position(from), from)
    }

    /// Finds the run of whole batches a read returns from this segment: starting with
    /// the batch holding `target`, stopping before a batch at or past `leo` (not yet
    /// published) or `upper_bound`, or one that would exceed `budget` bytes (unless it
    /// is the read's first batch).
    pub(crate) fn plan_read(
        &self,
        target: i64,
        budget: usize,
        first_of_read: bool,
        upper_bound: i64,
        leo: i64,
    ) -> Result<ReadPlan, LogError> {
        let start = self.lookup_position(target);
        match self.plan_read_from(start, target, budget, first_of_read, upper_bound, leo)? {
            Ok(plan) => Ok(plan),
            Err(reason) if start > 0 => {
                // An index entry pointing at garbage must not make good data unreadable.
                tracing::warn!(
                    segment = %path(&self.dir, self.base_offset, LOG_SUFFIX).display(),
                    %reason, "offset index led to an invalid position; rescanning the segment"
                );
                match self.plan_read_from(0, target, budget, first_of_read, upper_bound, leo)? {
                    Ok(plan) => Ok(plan),
                    Err(reason) => Err(corrupt(reason)),
                }
            }
            Err(reason) => Err(corrupt(reason)),
        }
    }

    fn plan_read_from(
        &self,
        start: u64,
        target: i64,
        budget: usize,
        first_of_read: bool,
        upper_bound: i64,
        leo: i64,
    ) -> Result<Result<ReadPlan, String>, LogError> {
        let size = self.size();
        let mut window = FileWindow::new(&self.file, READ_WINDOW_BYTES);
        let mut plan = ReadPlan {
            start: 0,
            end: 0,
            last_offset: None,
            stop: false,
        };
        let mut position = start;
        while position < size {
            let header = match read_header(&mut window, position, size)? {
                Ok(header) => header,
                // Bad bytes after good ones: return the good ones and let the next
                // read, which starts at the bad batch, report it.
                Err(_) if plan.last_offset.is_some() => {
                    plan.stop = true;
                    return Ok(Ok(plan));
                }
                Err(reason) => return Ok(Err(reason)),
            };
            let total = header.total_size() as u64;
            if header.base_offset >= leo {
                // Not yet published by the appender.
                plan.stop = true;
                break;
            }
            if header.last_offset() < target {
                position += total;
                continue;
            }
            if header.last_offset() >= upper_bound {
                plan.stop = true;
                break;
            }
            let taken = plan.end - plan.start;
            let first = first_of_read && plan.last_offset.is_none();
            if !first && taken.saturating_add(total) > budget as u64 {
                plan.stop = true;
                break;
            }
            if plan.last_offset.is_none() {
                plan.start = position;
            }
            plan.end = position + total;
            plan.last_offset = Some(header.last_offset());
            position += total;
        }
        Ok(Ok(plan))
    }

    /// Reads `len` bytes at `position`; `None` if the file is shorter (a concurrent
    /// truncation), which readers treat as the end of the data.
    pub(crate) fn read_bytes(&self, position: u64, len: usize) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; len];
        Ok(self.read_into(position, &mut buf)?.then_some(buf))
    }

    /// Fills `buf` with the bytes at `position`, so a read spanning segments lands in
    /// one buffer without a copy; `false` if the file is shorter (a concurrent
    /// truncation), which readers treat as the end of the data.
    pub(crate) fn read_into(&self, position: u64, buf: &mut [u8]) -> io::Result<bool> {
        match self.file.read_exact_at(buf, position) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Visits batch headers from `from` to the end of the published bytes until `f`
    /// returns `false`. A malformed header is an error: callers walk data that was
    /// validated when written, so anything else is corruption.
    pub(crate) fn scan_headers(
        &self,
        from: u64,
        mut f: impl FnMut(u64, &BatchHeader) -> Result<bool, LogError>,
    ) -> Result<(), LogError> {
        let size = self.size();
        let mut window = FileWindow::new(&self.file, READ_WINDOW_BYTES);
        let mut position = from;
        while position < size {
            let header = read_header(&mut window, position, size)?.map_err(corrupt)?;
            if !f(position, &header)? {
                break;
            }
            position += header.total_size() as u64;
        }
        Ok(())
    }

    /// Reads and fully checks (CRC included) the batch whose header was found at `position`.
    pub(crate) fn read_batch(
        &self,
        position: u64,
        header: &BatchHeader,
    ) -> Result<Vec<u8>, LogError> {
        let bytes = self
            .read_bytes(position, header.total_size())?
            .ok_or_else(|| corrupt("batch runs past the end of the segment".into()))?;
        batch::check_batch(&bytes, Mode::Stored)?;
        Ok(bytes)
    }
}

/// A contiguous byte range of whole batches planned for a read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadPlan {
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// Last offset of the last planned batch; `None` when nothing qualifies.
    pub(crate) last_offset: Option<i64>,
    /// The read must not continue into the next segment.
    pub(crate) stop: bool,
}

fn corrupt(reason: String) -> LogError {
    tracing::warn!(%reason, "corrupt batch in log");
    LogError::InvalidBatch(BatchError::Invalid(format!(
        "corrupt stored batch: {reason}"
    )))
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn write_index_file(path: &Path, at: u64, bytes: &[u8]) -> io::Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    file.write_all_at(bytes, at)?;
    file.sync_data()
}

fn load_indexes(dir: &Path, base_offset: i64, log_len: u64) -> Option<(OffsetIndex, TimeIndex)> {
    let read = |suffix: &str| match fs::read(path(dir, base_offset, suffix)) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(base_offset, suffix, error = %e, "cannot read index; rebuilding it");
            }
            None
        }
    };
    let offsets = OffsetIndex::from_bytes(&read(INDEX_SUFFIX)?, log_len);
    let times = TimeIndex::from_bytes(&read(TIME_INDEX_SUFFIX)?);
    match (offsets, times) {
        (Ok(offsets), Ok(times)) => Some((offsets, times)),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(dir = %dir.display(), base_offset, reason = %e, "index is inconsistent; rebuilding it");
            None
        }
    }
}

/// Recovers a segment's state from its `.log` (see the module docs). Returns the
/// state, the length of the valid prefix, and what was found.
fn recover(
    file: &File,
    base_offset: i64,
    file_len: u64,
    loaded: Option<(OffsetIndex, TimeIndex)>,
    recovery_point: i64,
    interval: u64,
) -> io::Result<(SegmentState, u64, Recovered)> {
    if let Some((offsets, times)) = loaded {
        if let Some((mut state, mut scanner)) =
            resume_from_anchor(file, base_offset, file_len, offsets, times, recovery_point)?
        {
            loop {
                match scanner.next()? {
                    Scan::Batch(position, header) => {
                        state.on_batch(base_offset, position, &header, interval)
                    }
                    Scan::End => return Ok((state, file_len, Recovered::default())),
                    Scan::Invalid(..) => break,
                }
            }
        }
    }
    let mut state = SegmentState::new(base_offset);
    let mut scanner = Scanner::new(file, 0, file_len, base_offset, None);
    loop {
        match scanner.next()? {
            Scan::Batch(position, header) => {
                state.on_batch(base_offset, position, &header, interval)
            }
            Scan::End => {
                return Ok((
                    state,
                    file_len,
                    Recovered {
                        rebuilt: true,
                        ..Recovered::default()
                    },
                ));
            }
            Scan::Invalid(position, reason) => {
                let recovered = Recovered {
                    truncated_bytes: file_len - position,
                    reason: Some(reason),
                    rebuilt: true,
                };
                return Ok((state, position, recovered));
            }
        }
    }
}

/// Rebuilds the state as of the last offset-index entry below `recovery_point`
/// (that entry and everything before it were fsynced), after checking that the
/// entry's batch is really there. Returns a scanner positioned after that batch.
fn resume_from_anchor<'a>(
    file: &'a File,
    base_offset: i64,
    file_len: u64,
    mut offsets: OffsetIndex,
    mut times: TimeIndex,
    recovery_point: i64,
) -> io::Result<Option<(SegmentState, Scanner<'a>)>> {
    let Some(relative_rp) = recovery_point.checked_sub(base_offset).filter(|r| *r > 0) else {
        return Ok(None);
    };
    let relative_rp = u32::try_from(relative_rp).unwrap_or(u32::MAX);
    let Some(k) = offsets.last_below(relative_rp) else {
        return Ok(None);
    };
    let Some(anchor) = offsets.get(k) else {
        return Ok(None);
    };
    let mut scanner = Scanner::new(
        file,
        u64::from(anchor.position),
        file_len,
        base_offset,
        None,
    );
    let Scan::Batch(_, header) = scanner.next()? else {
        return Ok(None);
    };
    if header.last_offset() != base_offset + i64::from(anchor.relative_offset) {
        return Ok(None);
    }
    offsets.truncate(k + 1);
    times.truncate_after(anchor.relative_offset);
    let mut state = SegmentState::new(base_offset);
    // At an index point the time index holds the max timestamp so far (on_batch adds
    // a time entry whenever it grew), so its last kept entry is exactly that max.
    if let Some(last) = times.last() {
        state.max_timestamp = last.timestamp;
        state.offset_of_max_timestamp = base_offset + i64::from(last.relative_offset);
    }
    state.persisted_offset_entries = offsets.len();
    state.persisted_time_entries = times.len();
    state.offset_index = offsets;
    state.time_index = times;
    state.bytes_since_index = header.total_size() as u64;
    state.next_offset = header.last_offset() + 1;
    // The anchor batch's own timestamp was folded into the time index when the entry
    // was made; if it is not there, the persisted files disagree with each other.
    if header.max_timestamp > state.max_timestamp {
        return Ok(None);
    }
    Ok(Some((state, scanner)))
}

enum Scan {
    Batch(u64, BatchHeader),
    End,
    Invalid(u64, String),
}

/// Walks a `.log` batch by batch checking everything a stored batch must satisfy.
struct Scanner<'a> {
    window: FileWindow<'a>,
    position: u64,
    end: u64,
    base_offset: i64,
    prev_last_offset: Option<i64>,
}

impl<'a> Scanner<'a> {
    fn new(
        file: &'a File,
        position: u64,
        end: u64,
        base_offset: i64,
        prev_last_offset: Option<i64>,
    ) -> Self {
        Scanner {
            window: FileWindow::new(file, SCAN_WINDOW_BYTES),
            position,
            end,
            base_offset,
            prev_last_offset,
        }
    }

    fn next(&mut self) -> io::Result<Scan> {
        let position = self.position;
        if position >= self.end {
            return Ok(Scan::End);
        }
        let header = match read_header(&mut self.window, position, self.end)? {
            Ok(header) => header,
            Err(reason) => return Ok(Scan::Invalid(position, reason)),
        };
        if let Err(e) = header.check_fields(Mode::Stored) {
            return Ok(Scan::Invalid(
                position,
                format!("bad header at byte {position}: {e}"),
            ));
        }
        if header.base_offset < self.base_offset
            || self
                .prev_last_offset
                .is_some_and(|prev| header.base_offset <= prev)
            || SegmentState::relative(self.base_offset, header.last_offset()).is_none()
        {
            return Ok(Scan::Invalid(
                position,
                format!(
                    "batch at byte {position} has offsets {}..={} out of order (segment base {}, previous {:?})",
                    header.base_offset,
                    header.last_offset(),
                    self.base_offset,
                    self.prev_last_offset
                ),
            ));
        }
        let total = header.total_size() as u64;
        // Stream the CRC so a huge batch never needs a huge buffer.
        let mut crc = 0u32;
        let mut at = position + ATTRIBUTES_AT as u64;
        let batch_end = position + total;
        while at < batch_end {
            let want = usize::try_from(batch_end - at)
                .unwrap_or(usize::MAX)
                .min(SCAN_WINDOW_BYTES);
            let chunk = self.window.get(at, want)?;
            if chunk.len() < want {
                return Ok(Scan::Invalid(
                    position,
                    format!("batch at byte {position} is torn"),
                ));
            }
            crc = crc32c::crc32c_append(crc, chunk);
            at += want as u64;
        }
        if crc != header.crc {
            return Ok(Scan::Invalid(
                position,
                format!("CRC mismatch in batch at byte {position}"),
            ));
        }
        self.position = batch_end;
        self.prev_last_offset = Some(header.last_offset());
        Ok(Scan::Batch(position, header))
    }
}

/// Parses the header at `position`, checking that the batch fits before `end`.
/// The inner error is a description of what is wrong with the bytes.
fn read_header(
    window: &mut FileWindow<'_>,
    position: u64,
    end: u64,
) -> io::Result<Result<BatchHeader, String>> {
    let available = end.saturating_sub(position);
    let want = usize::try_from(available)
        .unwrap_or(usize::MAX)
        .min(BatchHeader::SIZE);
    let bytes = window.get(position, want)?;
    if bytes.len() < want {
        return Ok(Err(format!(
            "file ends inside the header at byte {position}"
        )));
    }
    let header = match BatchHeader::parse(bytes) {
        Ok(header) => header,
        Err(BatchError::Truncated) => {
            return Ok(Err(format!(
                "torn header at byte {position} ({available} bytes left)"
            )));
        }
        Err(e) => return Ok(Err(format!("bad header at byte {position}: {e}"))),
    };
    if header.total_size() as u64 > available {
        return Ok(Err(format!(
            "batch at byte {position} needs {} bytes but {available} are left",
            header.total_size()
        )));
    }
    Ok(Ok(header))
}

/// A read-ahead buffer over a file addressed by absolute position (`read_at`, so it
/// never disturbs the file's shared cursor).
struct FileWindow<'a> {
    file: &'a File,
    buf: Vec<u8>,
    start: u64,
    capacity: usize,
}

impl<'a> FileWindow<'a> {
    fn new(file: &'a File, capacity: usize) -> Self {
        FileWindow {
            file,
            buf: Vec::new(),
            start: 0,
            capacity,
        }
    }

    /// Up to `len` bytes at `position`; shorter only at the end of the file.
    fn get(&mut self, position: u64, len: usize) -> io::Result<&[u8]> {
        let cached_end = self.start + self.buf.len() as u64;
        if position < self.start || position + len as u64 > cached_end {
            self.buf.resize(self.capacity.max(len), 0);
            let n = read_full_at(self.file, &mut self.buf, position)?;
            self.buf.truncate(n);
            self.start = position;
        }
        let from = usize::try_from(position - self.start).unwrap_or(usize::MAX);
        let to = from.saturating_add(len).min(self.buf.len());
        Ok(self.buf.get(from..to).unwrap_or(&[]))
    }
}

fn read_full_at(file: &File, buf: &mut [u8], position: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], position + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes a compaction output (`<base>.log.cleaned` and its indexes), building the
/// indexes exactly as appends would.
pub(crate) struct SegmentWriter {
    dir: PathBuf,
    base_offset: i64,
    writer: BufWriter<File>,
    position: u64,
    state: SegmentState,
    interval: u64,
}

/// A finished, fsynced compaction output, still under its `.cleaned` names.
pub(crate) struct CleanedSegment {
    pub(crate) base_offset: i64,
    pub(crate) file: File,
    pub(crate) size: u64,
    pub(crate) state: SegmentState,
}

impl SegmentWriter {
    pub(crate) fn create(dir: &Path, base_offset: i64, interval: u64) -> io::Result<SegmentWriter> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path(
                dir,
                base_offset,
                &format!("{LOG_SUFFIX}{CLEANED_SUFFIX}"),
            ))?;
        Ok(SegmentWriter {
            dir: dir.to_path_buf(),
            base_offset,
            writer: BufWriter::with_capacity(SCAN_WINDOW_BYTES, file),
            position: 0,
            state: SegmentState::new(base_offset),
            interval,
        })
    }

    pub(crate) fn append(&mut self, batch: &[u8], header: &BatchHeader) -> io::Result<()> {
        self.writer.write_all(batch)?;
        self.state
            .on_batch(self.base_offset, self.position, header, self.interval);
        self.position += batch.len() as u64;
        Ok(())
    }

    pub(crate) fn finish(self) -> io::Result<CleanedSegment> {
        let SegmentWriter {
            dir,
            base_offset,
            writer,
            position,
            mut state,
            ..
        } = self;
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_data()?;
        state.on_close(base_offset);
        for (suffix, bytes) in [
            (INDEX_SUFFIX, state.offset_index.encode_from(0)),
            (TIME_INDEX_SUFFIX, state.time_index.encode_from(0)),
        ] {
            let mut index = File::create(path(
                &dir,
                base_offset,
                &format!("{suffix}{CLEANED_SUFFIX}"),
            ))?;
            index.write_all(&bytes)?;
            index.sync_data()?;
        }
        state.persisted_offset_entries = state.offset_index.len();
        state.persisted_time_entries = state.time_index.len();
        Ok(CleanedSegment {
            base_offset,
            file,
            size: position,
            state,
        })
    }

    /// Removes a cleaned output that will not be installed.
    pub(crate) fn discard(dir: &Path, base_offset: i64) {
        for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            let _ = remove_if_exists(&path(
                dir,
                base_offset,
                &format!("{suffix}{CLEANED_SUFFIX}"),
            ));
        }
    }
}

/// Scans a complete file of batches (a `.swap` from compaction) and returns the
/// offset after its last batch, or `None` if the file is not entirely valid.
pub(crate) fn next_offset_of_file(path: &Path, base_offset: i64) -> io::Result<Option<i64>> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut scanner = Scanner::new(&file, 0, len, base_offset, None);
    let mut next = base_offset;
    loop {
        match scanner.next()? {
            Scan::Batch(_, header) => next = header.last_offset() + 1,
            Scan::End => return Ok(Some(next)),
            Scan::Invalid(..) => return Ok(None),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::batch::Compression;
    use crate::record::BatchBuilder;
    use bytes::Bytes;

    fn batch(base: i64, records: usize, ts: i64) -> Vec<u8> {
        let mut b = BatchBuilder::new(Compression::None).base_offset(base);
        for i in 0..records {
            b.append(ts + i as i64, None, Some(Bytes::from(vec![b'x'; 50])));
        }
        b.build().unwrap()
    }

    fn append(segment: &Segment, base: i64, records: usize, ts: i64) {
        let bytes = batch(base, records, ts);
        let header = BatchHeader::parse(&bytes).unwrap();
        segment.append(&bytes, &[(0, header)], 100).unwrap();
    }

    #[test]
    fn file_names() {
        assert_eq!(file_name(42, LOG_SUFFIX), "00000000000000000042.log");
        assert_eq!(
            parse_file_name("00000000000000000042.log", LOG_SUFFIX),
            Some(42)
        );
        assert_eq!(parse_file_name("0000000000000000042.log", LOG_SUFFIX), None);
        assert_eq!(
            parse_file_name("00000000000000000042.index", LOG_SUFFIX),
            None
        );
        assert_eq!(
            parse_file_name("0000000000000000004x.log", LOG_SUFFIX),
            None
        );
    }

    #[test]
    fn reopen_resumes_from_the_anchor_and_matches_a_full_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let segment = Segment::create(dir.path(), 10, 0).unwrap();
        let mut offset = 10;
        for i in 0..40 {
            append(&segment, offset, 1 + i % 3, 1_000 + (i as i64 * 7) % 50);
            offset += 1 + (i % 3) as i64;
        }
        segment.close_for_appends();
        segment.flush().unwrap();
        let expected = segment.state.read().clone();
        drop(segment);

        let (resumed, recovered) = Segment::open(dir.path(), 10, offset, 100, 0).unwrap();
        assert!(!recovered.rebuilt && recovered.truncated_bytes == 0);
        let (rebuilt, recovered) = Segment::open(dir.path(), 10, 0, 100, 0).unwrap();
        assert!(recovered.rebuilt && recovered.truncated_bytes == 0);
        for state in [resumed.state.read().clone(), rebuilt.state.read().clone()] {
            assert_eq!(state.offset_index, expected.offset_index);
            assert_eq!(state.next_offset, expected.next_offset);
            assert_eq!(state.max_timestamp, expected.max_timestamp);
            assert_eq!(
                state.offset_of_max_timestamp,
                expected.offset_of_max_timestamp
            );
        }
    }

    #[test]
    fn a_lying_index_falls_back_to_a_full_scan() {
        let dir = tempfile::tempdir().unwrap();
        let segment = Segment::create(dir.path(), 0, 0).unwrap();
        for i in 0..20 {
            append(&segment, i, 1, 5);
        }
        segment.flush().unwrap();
        drop(segment);
        // A monotonic index whose last entry points into the middle of a batch.
        let mut bogus = Vec::new();
        bogus.extend_from_slice(&3u32.to_be_bytes());
        bogus.extend_from_slice(&7u32.to_be_bytes());
        fs::write(path(dir.path(), 0, INDEX_SUFFIX), bogus).unwrap();
        let (segment, recovered) = Segment::open(dir.path(), 0, 20, 100, 0).unwrap();
        assert!(recovered.rebuilt);
        assert_eq!(recovered.truncated_bytes, 0);
        assert_eq!(segment.next_offset(), 20);
    }

    #[test]
    fn truncation_recomputes_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let segment = Segment::create(dir.path(), 0, 0).unwrap();
        let mut positions = Vec::new();
        for i in 0..30 {
            positions.push(segment.size());
            append(&segment, i, 1, 100 + i);
        }
        segment.truncate_to(positions[12], 100).unwrap();
        assert_eq!(segment.next_offset(), 12);
        assert_eq!(segment.max_timestamp(), (111, 11));
        assert_eq!(segment.size(), positions[12]);
    }
}
