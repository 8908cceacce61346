//! Small single-value checkpoint files in a log's directory (log start offset,
//! recovery point).
//!
//! A checkpoint is replaced atomically: write `<name>.tmp`, fsync it, rename it over
//! `<name>`, fsync the directory. A reader therefore sees the old or the new value,
//! never a torn one; a leftover `.tmp` is garbage that `Log::open` removes.
//! Format: a version line then the value, like Kafka's checkpoint files.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

const VERSION: &str = "0";
pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// The log start offset raised by `delete_records_before` (not derivable from the
/// segments, so it must be persisted).
pub(crate) const LOG_START_OFFSET: &str = "log-start-offset.checkpoint";
/// Offset below which every segment and index was fsynced: recovery may trust it.
pub(crate) const RECOVERY_POINT: &str = "recovery-point.checkpoint";

/// Reads a checkpoint; a missing file is `None`, and so is an unreadable one (with a
/// warning) since every checkpoint has a safe fallback.
pub(crate) fn read(dir: &Path, name: &str) -> io::Result<Option<i64>> {
    let text = match fs::read_to_string(dir.join(name)) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            tracing::warn!(dir = %dir.display(), name, "checkpoint is not text; ignoring it");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut lines = text.lines();
    let parsed = match (lines.next(), lines.next(), lines.next()) {
        (Some(VERSION), Some(value), None) => value.trim().parse::<i64>().ok().filter(|v| *v >= 0),
        _ => None,
    };
    if parsed.is_none() {
        tracing::warn!(dir = %dir.display(), name, "checkpoint is malformed; ignoring it");
    }
    Ok(parsed)
}

pub(crate) fn write(dir: &Path, name: &str, value: i64) -> io::Result<()> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let mut file = File::create(&tmp)?;
    file.write_all(format!("{VERSION}\n{value}\n").as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

/// Makes creations, renames and deletions in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path(), "x").unwrap(), None);
        write(dir.path(), "x", 42).unwrap();
        assert_eq!(read(dir.path(), "x").unwrap(), Some(42));
        write(dir.path(), "x", 7).unwrap();
        assert_eq!(read(dir.path(), "x").unwrap(), Some(7));
        assert!(!dir.path().join("x.tmp").exists());
        fs::write(dir.path().join("x"), "0\nnope\n").unwrap();
        assert_eq!(read(dir.path(), "x").unwrap(), None);
        fs::write(dir.path().join("x"), [0xff, 0xfe]).unwrap();
        assert_eq!(read(dir.path(), "x").unwrap(), None);
    }
}
