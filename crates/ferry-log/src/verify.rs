//! Offline consistency check of log directories (`ferry log verify DATA_DIR`).
//!
//! Reads, never writes: unlike [`crate::Log::open`], which repairs what it finds,
//! this reports every problem so an operator (or a test) can see what a crash or a
//! bad disk left behind.
//!
//! ```text
//!  DATA_DIR/<topic>-<partition>/            every dir holding `<20 digits>.log` files
//!     <base>.log        batches: size, magic, header fields, CRC-32C, records decode,
//!                       offsets strictly increasing within and across segments
//!     <base>.index      entries increase; each points at a batch start whose last
//!                       offset is the entry's offset
//!     <base>.timeindex  entries increase; each names a batch's last offset and that
//!                       batch's max timestamp
//!     *.checkpoint, leader-epoch-checkpoint   readable, values within the log
//! ```

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::batch::{self, Mode, LOG_OVERHEAD};
use crate::checkpoint::{LOG_START_OFFSET, RECOVERY_POINT, TMP_SUFFIX};
use crate::index::{self, OffsetIndex};
use crate::record;
use crate::segment::{
    self, CLEANED_SUFFIX, DELETED_SUFFIX, INDEX_SUFFIX, LOG_SUFFIX, SWAP_SUFFIX, TIME_INDEX_SUFFIX,
};
use crate::time_index::{self, TimeIndex};

/// Kafka's leader epoch checkpoint file, kept by the partition beside its log.
pub const LEADER_EPOCH_CHECKPOINT: &str = "leader-epoch-checkpoint";

/// One thing found wrong, in the file it was found in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

/// What a verification looked at and found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Log directories checked.
    pub logs: usize,
    pub segments: usize,
    pub batches: u64,
    pub records: u64,
    pub problems: Vec<Problem>,
    /// Harmless findings (files a crash leaves and the next open cleans up).
    pub notes: Vec<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, path: &Path, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_path_buf(),
            message: message.into(),
        });
    }
}

/// Verifies every log directory under `root` (the root itself included), recursing
/// into subdirectories. A directory is a log directory when it holds a segment file.
pub fn verify_tree(root: &Path) -> io::Result<Report> {
    let mut report = Report::default();
    let mut stack = vec![root.to_path_buf()];
    let mut dirs = Vec::new();
    // Bounded by the tree itself; symlinks are not followed.
    while let Some(dir) = stack.pop() {
        dirs.push(dir.clone());
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    dirs.sort();
    for dir in dirs {
        if is_log_dir(&dir)? {
            verify_log_dir(&dir, &mut report)?;
        }
    }
    Ok(report)
}

fn is_log_dir(dir: &Path) -> io::Result<bool> {
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        if name
            .to_str()
            .and_then(|n| segment::parse_file_name(n, LOG_SUFFIX))
            .is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Verifies one log directory, adding what it finds to `report`.
pub fn verify_log_dir(dir: &Path, report: &mut Report) -> io::Result<()> {
    report.logs += 1;
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some(base) = segment::parse_file_name(&name, LOG_SUFFIX) {
            bases.push(base);
        } else if [CLEANED_SUFFIX, SWAP_SUFFIX, DELETED_SUFFIX, TMP_SUFFIX]
            .iter()
            .any(|s| name.ends_with(s))
        {
            report.notes.push(Problem {
                path: entry.path(),
                message: "leftover file of an interrupted operation (the next open cleans it up)"
                    .into(),
            });
        } else if let Some(base) = segment::parse_file_name(&name, INDEX_SUFFIX)
            .or_else(|| segment::parse_file_name(&name, TIME_INDEX_SUFFIX))
        {
            if !segment::path(dir, base, LOG_SUFFIX).exists() {
                report.problem(&entry.path(), "index without a .log segment");
            }
        }
    }
    bases.sort_unstable();
    let mut next_offset: Option<i64> = None;
    for base in bases {
        report.segments += 1;
        if let Some(next) = next_offset {
            if base < next {
                report.problem(
                    &segment::path(dir, base, LOG_SUFFIX),
                    format!("segment base offset {base} overlaps the previous segment, which ends at {next}"),
                );
            }
        }
        let end = verify_segment(dir, base, next_offset.unwrap_or(base).max(base), report)?;
        next_offset = Some(end.max(next_offset.unwrap_or(i64::MIN)));
    }
    let log_end = next_offset;
    for name in [LOG_START_OFFSET, RECOVERY_POINT] {
        verify_offset_checkpoint(&dir.join(name), log_end, report);
    }
    verify_epoch_checkpoint(&dir.join(LEADER_EPOCH_CHECKPOINT), log_end, report);
    Ok(())
}

/// One batch of a segment, as found by the scan.
struct Seen {
    position: u64,
    last_offset: i64,
    max_timestamp: i64,
}

/// Checks one segment and its indexes; returns the offset after its last good batch.
fn verify_segment(
    dir: &Path,
    base: i64,
    expected_from: i64,
    report: &mut Report,
) -> io::Result<i64> {
    let log_path = segment::path(dir, base, LOG_SUFFIX);
    let mut file = File::open(&log_path)?;
    let len = file.metadata()?.len();
    let mut seen: Vec<Seen> = Vec::new();
    let mut next = expected_from;
    let mut position = 0u64;
    let mut buf = Vec::new();
    while position < len {
        let at = format!("batch at byte {position}");
        let mut overhead = [0u8; LOG_OVERHEAD];
        if len - position < LOG_OVERHEAD as u64 {
            report.problem(
                &log_path,
                format!(
                    "{at}: {} trailing bytes, too short for a batch",
                    len - position
                ),
            );
            break;
        }
        file.read_exact(&mut overhead)?;
        let length = i32::from_be_bytes([overhead[8], overhead[9], overhead[10], overhead[11]]);
        if length < batch::BATCH_LENGTH_MIN
            || u64::try_from(length).unwrap_or(0) > len - position - LOG_OVERHEAD as u64
        {
            report.problem(
                &log_path,
                format!(
                    "{at}: batch length {length} does not fit the {} bytes left in the file",
                    len - position - LOG_OVERHEAD as u64
                ),
            );
            break;
        }
        let total = LOG_OVERHEAD + length as usize;
        buf.clear();
        buf.extend_from_slice(&overhead);
        buf.resize(total, 0);
        file.read_exact(&mut buf[LOG_OVERHEAD..])?;
        let header = match batch::check_batch(&buf, Mode::Stored) {
            Ok(h) => h,
            Err(e) => {
                report.problem(&log_path, format!("{at}: {e}"));
                break;
            }
        };
        if header.base_offset < next {
            report.problem(
                &log_path,
                format!(
                    "{at}: base offset {} is below the expected next offset {next}",
                    header.base_offset
                ),
            );
            break;
        }
        match record::decode_batch(&buf) {
            Ok((_, records)) => report.records += records.len() as u64,
            Err(e) => {
                report.problem(&log_path, format!("{at}: records do not decode: {e}"));
                break;
            }
        }
        report.batches += 1;
        seen.push(Seen {
            position,
            last_offset: header.last_offset(),
            max_timestamp: header.max_timestamp,
        });
        next = header.last_offset().saturating_add(1);
        position += total as u64;
    }
    verify_offset_index(dir, base, len, &seen, report);
    verify_time_index(dir, base, &seen, report);
    Ok(seen.last().map_or(base, |s| s.last_offset + 1))
}

fn read_index(path: &Path, entry_bytes: usize, report: &mut Report) -> Option<Vec<u8>> {
    match fs::read(path) {
        Ok(bytes) => {
            if bytes.len() % entry_bytes != 0 {
                report.problem(
                    path,
                    format!(
                        "{} bytes is not a whole number of {entry_bytes}-byte entries",
                        bytes.len()
                    ),
                );
            }
            Some(bytes)
        }
        // A missing index is rebuilt at open: worth a note, not a problem.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            report.notes.push(Problem {
                path: path.to_path_buf(),
                message: "missing (the next open rebuilds it)".into(),
            });
            None
        }
        Err(e) => {
            report.problem(path, format!("unreadable: {e}"));
            None
        }
    }
}

fn verify_offset_index(dir: &Path, base: i64, log_len: u64, seen: &[Seen], report: &mut Report) {
    let path = segment::path(dir, base, INDEX_SUFFIX);
    let Some(bytes) = read_index(&path, index::ENTRY_BYTES, report) else {
        return;
    };
    let index = match OffsetIndex::from_bytes(&bytes, log_len) {
        Ok(index) => index,
        Err(e) => return report.problem(&path, e.0),
    };
    for i in 0..index.len() {
        let Some(entry) = index.get(i) else { break };
        let offset = base + i64::from(entry.relative_offset);
        match seen.binary_search_by_key(&u64::from(entry.position), |s| s.position) {
            Ok(k) if seen[k].last_offset == offset => {}
            Ok(k) => report.problem(
                &path,
                format!("entry {i} maps offset {offset} to position {}, where the batch ends at offset {}", entry.position, seen[k].last_offset),
            ),
            Err(_) => report.problem(
                &path,
                format!("entry {i} (offset {offset}) points at position {}, which is not the start of a valid batch", entry.position),
            ),
        }
    }
}

fn verify_time_index(dir: &Path, base: i64, seen: &[Seen], report: &mut Report) {
    let path = segment::path(dir, base, TIME_INDEX_SUFFIX);
    let Some(bytes) = read_index(&path, time_index::ENTRY_BYTES, report) else {
        return;
    };
    let index = match TimeIndex::from_bytes(&bytes) {
        Ok(index) => index,
        Err(e) => return report.problem(&path, e.0),
    };
    for (i, entry) in index.entries().iter().enumerate() {
        let offset = base + i64::from(entry.relative_offset);
        match seen.iter().find(|s| s.last_offset == offset) {
            Some(s) if s.max_timestamp == entry.timestamp => {}
            Some(s) => report.problem(
                &path,
                format!("entry {i} gives offset {offset} timestamp {}, but that batch's max timestamp is {}", entry.timestamp, s.max_timestamp),
            ),
            None => report.problem(&path, format!("entry {i} names offset {offset}, which ends no valid batch")),
        }
    }
}

fn read_text(path: &Path, report: &mut Report) -> Option<String> {
    match fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => Some(text),
            Err(_) => {
                report.problem(path, "not text");
                None
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            report.problem(path, format!("unreadable: {e}"));
            None
        }
    }
}

/// `0\n<offset>\n`, with the offset within the log.
fn verify_offset_checkpoint(path: &Path, log_end: Option<i64>, report: &mut Report) {
    let Some(text) = read_text(path, report) else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    let value = match lines.as_slice() {
        ["0", v] if text.ends_with('\n') => v.trim().parse::<i64>().ok().filter(|v| *v >= 0),
        _ => None,
    };
    let Some(value) = value else {
        return report.problem(path, format!("malformed checkpoint {text:?}"));
    };
    let is_recovery_point = path.file_name().is_some_and(|n| n == RECOVERY_POINT);
    if let (true, Some(end)) = (is_recovery_point, log_end) {
        if value > end {
            report.problem(path, format!("recovery point {value} is past the log end offset {end}: fsynced records are missing"));
        }
    }
}

/// Kafka's format: `0`, the entry count, then `epoch start_offset` lines with both
/// increasing.
fn verify_epoch_checkpoint(path: &Path, log_end: Option<i64>, report: &mut Report) {
    let Some(text) = read_text(path, report) else {
        return;
    };
    match parse_epoch_checkpoint(&text) {
        Ok(entries) => {
            if let (Some((_, start)), Some(end)) = (entries.last(), log_end) {
                if *start > end {
                    report.problem(
                        path,
                        format!("last epoch starts at {start}, past the log end offset {end}"),
                    );
                }
            }
        }
        Err(why) => report.problem(path, why),
    }
}

/// Parses a leader epoch checkpoint (`0`, count, `epoch offset` lines), checking that
/// epochs and offsets do not decrease.
pub fn parse_epoch_checkpoint(text: &str) -> Result<Vec<(i32, i64)>, String> {
    // Writers end every line with a newline: without one the file was cut, and a
    // cut inside the last number would still parse.
    if !text.ends_with('\n') {
        return Err("torn: no final newline".into());
    }
    let mut lines = text.lines();
    if lines.next() != Some("0") {
        return Err("unknown checkpoint version".into());
    }
    let count: usize = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or("missing entry count")?;
    let mut entries: Vec<(i32, i64)> = Vec::new();
    for line in lines {
        let mut parts = line.split_whitespace();
        let (Some(epoch), Some(offset), None) = (
            parts.next().and_then(|e| e.parse::<i32>().ok()),
            parts.next().and_then(|o| o.parse::<i64>().ok()),
            parts.next(),
        ) else {
            return Err(format!("malformed entry {line:?}"));
        };
        if let Some((e, o)) = entries.last() {
            if epoch <= *e || offset < *o {
                return Err(format!("entry {epoch} {offset} does not follow {e} {o}"));
            }
        }
        entries.push((epoch, offset));
    }
    if entries.len() != count {
        return Err(format!("{} entries, header says {count}", entries.len()));
    }
    Ok(entries)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{BatchBuilder, Compression, Log, LogConfig};
    use bytes::Bytes;

    fn filled_log(dir: &Path) {
        let config = LogConfig {
            segment_bytes: 4096,
            index_interval_bytes: 256,
            ..LogConfig::default()
        };
        let log = Log::open(dir, config, 1_000).unwrap();
        for i in 0..60 {
            let mut b = BatchBuilder::new(Compression::None);
            b.append(
                1_000 + i,
                Some(Bytes::from("k")),
                Some(Bytes::from(vec![b'v'; 100])),
            );
            let mut bytes = b.build().unwrap();
            log.append(&mut bytes, 0, 1_000 + i).unwrap();
        }
        log.close().unwrap();
        fs::write(dir.join(LEADER_EPOCH_CHECKPOINT), "0\n1\n0 0\n").unwrap();
    }

    #[test]
    fn a_healthy_log_verifies() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("t-0");
        filled_log(&dir);
        let report = verify_tree(root.path()).unwrap();
        assert!(report.ok(), "{:?}", report.problems);
        assert_eq!(report.logs, 1);
        assert!(report.segments > 1);
        assert_eq!(report.records, 60);
    }

    #[test]
    fn damage_is_reported() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("t-0");
        filled_log(&dir);
        let first = segment::path(&dir, 0, LOG_SUFFIX);
        let mut bytes = fs::read(&first).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xff;
        fs::write(&first, &bytes).unwrap();
        fs::write(
            segment::path(&dir, 0, INDEX_SUFFIX),
            [0, 0, 0, 5, 0, 0, 0, 7],
        )
        .unwrap();
        fs::write(dir.join(RECOVERY_POINT), "0\nbanana\n").unwrap();
        fs::write(dir.join(LEADER_EPOCH_CHECKPOINT), "0\n2\n1 5\n").unwrap();
        let report = verify_tree(root.path()).unwrap();
        let text: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
        let has = |needle: &str| text.iter().any(|t| t.contains(needle));
        assert!(has("CRC") || has("crc"), "{text:#?}");
        assert!(has(".index"), "{text:#?}");
        assert!(has("recovery-point"), "{text:#?}");
        assert!(has("leader-epoch-checkpoint"), "{text:#?}");
    }

    #[test]
    fn epoch_checkpoint_parsing() {
        assert_eq!(
            parse_epoch_checkpoint("0\n2\n0 0\n3 10\n").unwrap(),
            vec![(0, 0), (3, 10)]
        );
        assert!(parse_epoch_checkpoint("0\n2\n0 0\n").is_err());
        assert!(parse_epoch_checkpoint("0\n2\n3 0\n1 10\n").is_err());
        assert!(parse_epoch_checkpoint("1\n0\n").is_err());
        assert_eq!(parse_epoch_checkpoint("0\n0\n").unwrap(), vec![]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Offset checkpoints round-trip, and verify accepts what write wrote.
            #[test]
            fn offset_checkpoints_round_trip(value in 0i64..i64::MAX) {
                let dir = tempfile::tempdir().unwrap();
                crate::checkpoint::write(dir.path(), RECOVERY_POINT, value).unwrap();
                prop_assert_eq!(crate::checkpoint::read(dir.path(), RECOVERY_POINT).unwrap(), Some(value));
                let mut report = Report::default();
                verify_offset_checkpoint(&dir.path().join(RECOVERY_POINT), None, &mut report);
                prop_assert!(report.ok());
            }

            /// Kafka's leader epoch checkpoint text (as the partition writes it) parses
            /// back to the same entries; any cut of it is rejected or parses to a prefix.
            #[test]
            fn epoch_checkpoints_round_trip(
                steps in proptest::collection::vec((1i32..1000, 0i64..1_000_000), 0..20),
                cut in any::<proptest::sample::Index>(),
            ) {
                let mut entries = Vec::new();
                let (mut epoch, mut offset) = (0i32, 0i64);
                for (de, doff) in steps {
                    epoch += de;
                    offset += doff;
                    entries.push((epoch, offset));
                }
                let mut text = format!("0\n{}\n", entries.len());
                for (e, o) in &entries {
                    text.push_str(&format!("{e} {o}\n"));
                }
                prop_assert_eq!(parse_epoch_checkpoint(&text).unwrap(), entries.clone());
                let torn = &text[..cut.index(text.len() + 1)];
                if let Ok(parsed) = parse_epoch_checkpoint(torn) {
                    prop_assert!(entries.starts_with(&parsed));
                }
            }
        }
    }
}
