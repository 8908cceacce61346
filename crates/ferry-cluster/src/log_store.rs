//! The Raft log and vote on disk ([`RaftLogStorage`]).
//!
//! ```text
//!   openraft ──append/truncate/purge/vote──► LogStore ──IoCmd (in order)──► I/O thread
//!      ▲                                        │ (entries kept in memory)        │ write + fsync
//!      └──────────── LogFlushed callback ◄──────┼─────────────────────────────────┘
//!   replication tasks ──► LogReader ────────────┘
//! ```
//!
//! Files in the quorum directory:
//!
//! - `log`: frames of `[length u32 BE][crc32c u32 BE][entry as JSON]`, appended in
//!   index order. A torn or corrupt tail is cut at open.
//! - `purged.json`: the last purged log id. Entries at or below it may still sit at
//!   the head of `log` until the next compaction; they are skipped at open.
//! - `vote.json`: the vote, replaced atomically and fsynced before `save_vote`
//!   returns.
//! - `lock`: locked while a quorum uses the directory.
//! - `committed.json`: a hint of the committed log id so a restarted node can
//!   rebuild its image before it hears from a leader. Not fsynced: a stale or
//!   missing hint only delays that.
//!
//! Every write runs on one dedicated thread, in the order openraft issued it
//! (which is what openraft requires: "all write-IO must be serialized"), so no
//! fsync ever blocks a runtime thread. Metadata is small, so all live entries are
//! also kept in memory and reads never touch the disk.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{RaftLogId, RaftLogReader, StorageIOError};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::durable;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Largest entry the log accepts or reads back.
pub(crate) const ENTRY_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Bytes before an entry's JSON: length and CRC-32C.
const FRAME_HEADER_BYTES: usize = 8;

const LOG_FILE: &str = "log";
const PURGED_FILE: &str = "purged.json";
const VOTE_FILE: &str = "vote.json";
const COMMITTED_FILE: &str = "committed.json";
const LOCK_FILE: &str = "lock";
/// How long `open` waits for another quorum to let go of the directory.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// What openraft reads: the live entries and the small pointers.
#[derive(Default)]
struct LogMem {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

/// The log storage handed to openraft.
pub(crate) struct LogStore {
    mem: Arc<Mutex<LogMem>>,
    io: IoHandle,
}

/// A reader for openraft's replication tasks; shares the in-memory entries.
#[derive(Clone)]
pub(crate) struct LogReader {
    mem: Arc<Mutex<LogMem>>,
}

/// Sends writes to the I/O thread; cloned by the quorum so that `shutdown` can
/// wait for the thread to finish its last write before the directory is reused.
#[derive(Clone)]
pub(crate) struct IoHandle {
    tx: mpsc::Sender<IoCmd>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

enum IoCmd {
    Append {
        /// Index of the first entry; the file is cut there first if it goes further.
        first_index: u64,
        /// Index and offset inside `frames` of each entry.
        positions: Vec<(u64, u64)>,
        frames: Vec<u8>,
        done: LogFlushed<TypeConfig>,
    },
    Truncate {
        index: u64,
        done: oneshot::Sender<io::Result<()>>,
    },
    Purge {
        log_id: LogId,
        done: oneshot::Sender<io::Result<()>>,
    },
    SaveVote {
        vote: Vote,
        done: oneshot::Sender<io::Result<()>>,
    },
    SaveCommitted {
        committed: Option<LogId>,
    },
    Stop,
}

/// The log file as the I/O thread sees it.
struct LogFile {
    /// Held (locked) for as long as the thread runs, so a second quorum on the
    /// same directory cannot interleave its writes with ours.
    _lock: File,
    dir: PathBuf,
    file: File,
    len: u64,
    /// Index → byte position of each live entry's frame.
    offsets: BTreeMap<u64, u64>,
}

impl LogStore {
    /// Opens (or creates) the log in `dir`: cuts a torn tail and starts the I/O
    /// thread. Blocking; call it from `spawn_blocking` or before the runtime is busy.
    pub(crate) fn open(dir: &Path) -> io::Result<LogStore> {
        fs::create_dir_all(dir)?;
        let lock = lock_dir(dir)?;
        let last_purged: Option<LogId> = durable::read_json(&dir.join(PURGED_FILE))?;
        let vote: Option<Vote> = durable::read_json(&dir.join(VOTE_FILE))?;
        let committed: Option<LogId> = match durable::read_json(&dir.join(COMMITTED_FILE)) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable committed-log-id hint");
                None
            }
        };

        let path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let scan = scan_log(&bytes, last_purged.map(|p| p.index));
        if scan.valid_len < bytes.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                position = scan.valid_len,
                file_bytes = bytes.len(),
                "cutting a torn or corrupt raft log tail"
            );
            file.set_len(scan.valid_len)?;
            file.sync_all()?;
        }
        durable::sync_dir(dir)?;

        let last_log_index = scan
            .entries
            .keys()
            .next_back()
            .copied()
            .or(last_purged.map(|p| p.index));
        // The hint can run ahead of the log if the node crashed before its log was
        // flushed; then it is no use and openraft learns the real one from a leader.
        let committed = committed.filter(|c| last_log_index.is_some_and(|last| c.index <= last));

        let log_file = LogFile {
            _lock: lock,
            dir: dir.to_path_buf(),
            file,
            len: scan.valid_len,
            offsets: scan.offsets,
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ferry-raft-log".into())
            .spawn(move || io_thread(log_file, rx))?;
        Ok(LogStore {
            mem: Arc::new(Mutex::new(LogMem {
                entries: scan.entries,
                last_purged,
                vote,
                committed,
            })),
            io: IoHandle {
                tx,
                thread: Arc::new(Mutex::new(Some(thread))),
            },
        })
    }

    pub(crate) fn io_handle(&self) -> IoHandle {
        self.io.clone()
    }

    fn reader(&self) -> LogReader {
        LogReader {
            mem: self.mem.clone(),
        }
    }

    async fn call(
        &self,
        make: impl FnOnce(oneshot::Sender<io::Result<()>>) -> IoCmd,
    ) -> io::Result<()> {
        let (done, rx) = oneshot::channel();
        self.io.send(make(done))?;
        rx.await.map_err(|_| io_stopped())?
    }
}

impl IoHandle {
    fn send(&self, cmd: IoCmd) -> io::Result<()> {
        self.tx.send(cmd).map_err(|_| io_stopped())
    }

    /// Lets the I/O thread finish the writes queued so far, then waits for it.
    pub(crate) async fn stop(&self) {
        let _ = self.tx.send(IoCmd::Stop);
        let thread = self.thread.lock().take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Takes the directory's lock file. A quorum that was dropped without
/// `shutdown` lets go of it only when its Raft core has stopped, so wait a little.
fn lock_dir(dir: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!("{} is in use by another metadata quorum", dir.display()),
                ))
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

fn io_stopped() -> io::Error {
    io::Error::other("the raft log I/O thread has stopped")
}

fn write_err(e: &io::Error) -> StorageError {
    StorageIOError::write_logs(e).into()
}

/// Encodes one entry as a log frame.
fn encode_entry(entry: &Entry, out: &mut Vec<u8>) -> io::Result<()> {
    let json = serde_json::to_vec(entry).map_err(io::Error::other)?;
    if json.len() > ENTRY_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "raft log entry of {} bytes exceeds {ENTRY_BYTES_MAX}",
                json.len()
            ),
        ));
    }
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&json).to_be_bytes());
    out.extend_from_slice(&json);
    Ok(())
}

struct Scan {
    entries: BTreeMap<u64, Entry>,
    offsets: BTreeMap<u64, u64>,
    valid_len: u64,
}

/// Reads frames until the first one that is torn, fails its CRC, does not decode,
/// or does not follow its predecessor's index; everything from there on is the
/// tail to cut. Entries at or below `purged` are valid but dead.
fn scan_log(bytes: &[u8], purged: Option<u64>) -> Scan {
    let mut scan = Scan {
        entries: BTreeMap::new(),
        offsets: BTreeMap::new(),
        valid_len: 0,
    };
    let mut pos = 0usize;
    let mut next_index = purged.map(|p| p + 1);
    while let Some(header) = bytes.get(pos..pos + FRAME_HEADER_BYTES) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if len > ENTRY_BYTES_MAX {
            break;
        }
        let body_start = pos + FRAME_HEADER_BYTES;
        let Some(json) = bytes.get(body_start..body_start + len) else {
            break;
        };
        if crc32c::crc32c(json) != crc {
            break;
        }
        let Ok(entry) = serde_json::from_slice::<Entry>(json) else {
            break;
        };
        let index = entry.get_log_id().index;
        let dead = purged.is_some_and(|p| index <= p);
        if !dead {
            if next_index.is_some_and(|n| n != index) {
                break;
            }
            next_index = Some(index + 1);
            scan.offsets.insert(index, pos as u64);
            scan.entries.insert(index, entry);
        }
        pos = body_start + len;
        scan.valid_len = pos as u64;
    }
    scan
}

fn io_thread(mut log: LogFile, rx: mpsc::Receiver<IoCmd>) {
    while let Ok(cmd) = rx.recv() {
        match cmd {
            IoCmd::Append {
                first_index,
                positions,
                frames,
                done,
            } => done.log_io_completed(log.append(first_index, &positions, &frames)),
            IoCmd::Truncate { index, done } => {
                let _ = done.send(log.truncate(index));
            }
            IoCmd::Purge { log_id, done } => {
                let _ = done.send(log.purge(log_id));
            }
            IoCmd::SaveVote { vote, done } => {
                let _ = done.send(durable::write_json(&log.dir.join(VOTE_FILE), &vote, true));
            }
            IoCmd::SaveCommitted { committed } => {
                if let Err(e) =
                    durable::write_json(&log.dir.join(COMMITTED_FILE), &committed, false)
                {
                    tracing::warn!(error = %e, "could not save the committed-log-id hint");
                }
            }
            IoCmd::Stop => break,
        }
    }
}

impl LogFile {
    fn append(
        &mut self,
        first_index: u64,
        positions: &[(u64, u64)],
        frames: &[u8],
    ) -> io::Result<()> {
        if self.offsets.range(first_index..).next().is_some() {
            self.truncate(first_index)?;
        }
        let base = self.len;
        let result = self
            .file
            .seek(SeekFrom::Start(base))
            .and_then(|_| self.file.write_all(frames))
            .and_then(|_| self.file.sync_data());
        if let Err(e) = result {
            // Cut a partial write so the next append does not sit behind garbage.
            let _ = self.file.set_len(base);
            return Err(e);
        }
        for (index, offset) in positions {
            self.offsets.insert(*index, base + offset);
        }
        self.len = base + frames.len() as u64;
        Ok(())
    }

    fn truncate(&mut self, index: u64) -> io::Result<()> {
        let Some(&cut) = self.offsets.range(index..).next().map(|(_, o)| o) else {
            return Ok(());
        };
        self.file.set_len(cut)?;
        self.file.sync_all()?;
        self.offsets.split_off(&index);
        self.len = cut;
        Ok(())
    }

    /// Records the purge point durably, then rewrites the file without the dead
    /// head. A crash during the rewrite leaves the old file, whose dead entries the
    /// purge point already hides.
    fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        durable::write_json(&self.dir.join(PURGED_FILE), &Some(log_id), true)?;
        self.offsets = self.offsets.split_off(&(log_id.index + 1));
        let live_start = self.offsets.values().next().copied().unwrap_or(self.len);
        if live_start == 0 {
            return Ok(());
        }
        let path = self.dir.join(LOG_FILE);
        let tmp = self.dir.join("log.tmp");
        {
            let mut out = File::create(&tmp)?;
            self.file.seek(SeekFrom::Start(live_start))?;
            io::copy(&mut (&self.file).take(self.len - live_start), &mut out)?;
            out.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        durable::sync_dir(&self.dir)?;
        self.file = OpenOptions::new().read(true).write(true).open(&path)?;
        self.len -= live_start;
        for offset in self.offsets.values_mut() {
            *offset -= live_start;
        }
        Ok(())
    }
}

fn read_range<RB: RangeBounds<u64>>(mem: &Mutex<LogMem>, range: RB) -> Vec<Entry> {
    mem.lock()
        .entries
        .range(range)
        .map(|(_, e)| e.clone())
        .collect()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(read_range(&self.mem, range))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(read_range(&self.mem, range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let mem = self.mem.lock();
        let last = mem
            .entries
            .values()
            .next_back()
            .map(|e| *e.get_log_id())
            .or(mem.last_purged);
        Ok(LogState {
            last_purged_log_id: mem.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.call(|done| IoCmd::SaveVote { vote, done })
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?;
        self.mem.lock().vote = Some(vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.mem.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.mem.lock().committed = committed;
        self.io
            .send(IoCmd::SaveCommitted { committed })
            .map_err(|e| write_err(&e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.mem.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(first_index) = entries.first().map(|e| e.get_log_id().index) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let mut frames = Vec::new();
        let mut positions = Vec::with_capacity(entries.len());
        for entry in &entries {
            positions.push((entry.get_log_id().index, frames.len() as u64));
            encode_entry(entry, &mut frames).map_err(|e| write_err(&e))?;
        }
        {
            // Readable before this returns, as openraft requires; an entry that
            // replaces an existing index drops everything after it too.
            let mut mem = self.mem.lock();
            mem.entries.split_off(&first_index);
            for entry in entries {
                mem.entries.insert(entry.get_log_id().index, entry);
            }
        }
        self.io
            .send(IoCmd::Append {
                first_index,
                positions,
                frames,
                done: callback,
            })
            .map_err(|e| write_err(&e))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.mem.lock().entries.split_off(&log_id.index);
        self.call(|done| IoCmd::Truncate {
            index: log_id.index,
            done,
        })
        .await
        .map_err(|e| write_err(&e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut mem = self.mem.lock();
            mem.last_purged = Some(log_id);
            mem.entries = mem.entries.split_off(&(log_id.index + 1));
        }
        self.call(|done| IoCmd::Purge { log_id, done })
            .await
            .map_err(|e| write_err(&e))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use openraft::testing::{StoreBuilder, Suite};

    use super::*;
    use crate::state_machine::StateMachine;

    /// Builds a fresh log store and state machine in a temp dir for openraft's
    /// storage conformance suite.
    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().map_err(|e| write_err(&e))?;
            let log = LogStore::open(dir.path()).map_err(|e| write_err(&e))?;
            let (sm, _) = StateMachine::open(dir.path()).map_err(|e| write_err(&e))?;
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn passes_openraft_storage_suite() {
        Suite::test_all(Builder).expect("openraft storage suite");
    }

    fn blank(term: u64, index: u64) -> Entry {
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
            payload: openraft::EntryPayload::Blank,
        }
    }

    /// Writes entries the way the I/O thread does, without openraft's callback.
    fn write_entries(dir: &Path, entries: &[Entry]) {
        let mut frames = Vec::new();
        for e in entries {
            encode_entry(e, &mut frames).expect("encode");
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(LOG_FILE))
            .expect("open log");
        f.write_all(&frames).expect("write");
    }

    fn live_indexes(store: &LogStore) -> Vec<u64> {
        store.mem.lock().entries.keys().copied().collect()
    }

    #[test]
    fn torn_and_corrupt_tails_are_cut_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_entries(dir.path(), &[blank(1, 0), blank(1, 1), blank(1, 2)]);
        let good_len = fs::metadata(dir.path().join(LOG_FILE)).expect("meta").len();
        // Half a frame, as a crash in the middle of a write leaves it.
        let mut half = Vec::new();
        encode_entry(&blank(1, 3), &mut half).expect("encode");
        half.truncate(half.len() / 2);
        OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG_FILE))
            .and_then(|mut f| f.write_all(&half))
            .expect("append torn frame");

        let store = LogStore::open(dir.path()).expect("open");
        assert_eq!(live_indexes(&store), vec![0, 1, 2]);
        assert_eq!(
            fs::metadata(dir.path().join(LOG_FILE)).expect("meta").len(),
            good_len
        );
        drop(store);

        // A frame whose CRC does not match ends the log too, as does one that skips an index.
        let mut bad = Vec::new();
        encode_entry(&blank(1, 3), &mut bad).expect("encode");
        let last = bad.len() - 2;
        bad[last] ^= 0xff;
        let mut gap = Vec::new();
        encode_entry(&blank(1, 5), &mut gap).expect("encode");
        for tail in [bad, gap] {
            OpenOptions::new()
                .append(true)
                .open(dir.path().join(LOG_FILE))
                .and_then(|mut f| f.write_all(&tail))
                .expect("append bad frame");
            let store = LogStore::open(dir.path()).expect("open");
            assert_eq!(live_indexes(&store), vec![0, 1, 2]);
        }
    }

    #[tokio::test]
    async fn truncate_and_purge_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_entries(
            dir.path(),
            &(0..10).map(|i| blank(1, i)).collect::<Vec<_>>(),
        );
        {
            let mut store = LogStore::open(dir.path()).expect("open");
            store
                .truncate(*blank(1, 7).get_log_id())
                .await
                .expect("truncate");
            store.purge(*blank(1, 3).get_log_id()).await.expect("purge");
            assert_eq!(live_indexes(&store), vec![4, 5, 6]);
            let state = store.get_log_state().await.expect("state");
            assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(3));
            assert_eq!(state.last_log_id.map(|l| l.index), Some(6));
            store.io_handle().stop().await;
        }
        let mut store = LogStore::open(dir.path()).expect("reopen");
        assert_eq!(live_indexes(&store), vec![4, 5, 6]);
        // Purging past the end leaves an empty log that still knows where it is.
        store
            .purge(*blank(1, 8).get_log_id())
            .await
            .expect("purge all");
        store.io_handle().stop().await;
        drop(store);
        let mut store = LogStore::open(dir.path()).expect("reopen");
        assert!(live_indexes(&store).is_empty());
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id.map(|l| l.index), Some(8));
        assert_eq!(
            fs::metadata(dir.path().join(LOG_FILE)).expect("meta").len(),
            0
        );
    }
}
