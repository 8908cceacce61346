//! The high-watermark checkpoint (Kafka's `replication-offset-checkpoint`): every
//! replica's high watermark, written to one file in the data directory every
//! `replica.high.watermark.checkpoint.interval.ms` and at shutdown. A replica
//! that restarts starts from it (capped at its log end) instead of its log
//! start, so records committed before the restart stay readable while its
//! followers or its leader are not heard from yet.
//!
//! The format is Kafka's: a version line (`0`), a count line, then one
//! `topic partition offset` line per replica. A file that cannot be read or
//! parsed counts as empty: the high watermarks then start at the log start
//! and move up with replication, as they did before the file existed.

use std::collections::HashMap;
use std::path::Path;

use crate::partition::{write_atomically, TopicPartition};

/// The file's name in the data directory.
pub const FILE_NAME: &str = "replication-offset-checkpoint";

const VERSION: &str = "0";

/// The checkpointed high watermarks, or none when the file is missing or
/// malformed.
pub fn read(data_dir: &Path) -> HashMap<TopicPartition, i64> {
    let path = data_dir.join(FILE_NAME);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return HashMap::new();
    };
    match parse(&text) {
        Some(entries) => entries,
        None => {
            tracing::warn!(file = %path.display(), "ignoring a malformed high-watermark checkpoint");
            HashMap::new()
        }
    }
}

fn parse(text: &str) -> Option<HashMap<TopicPartition, i64>> {
    let mut lines = text.lines();
    if lines.next()?.trim() != VERSION {
        return None;
    }
    let count: usize = lines.next()?.trim().parse().ok()?;
    let mut entries = HashMap::new();
    for line in lines.by_ref().take(count) {
        let mut fields = line.split(' ');
        let (Some(topic), Some(partition), Some(offset), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return None;
        };
        let partition: i32 = partition.parse().ok()?;
        let offset: i64 = offset.parse().ok()?;
        if topic.is_empty() || partition < 0 || offset < 0 {
            return None;
        }
        entries.insert(TopicPartition::new(topic, partition), offset);
    }
    (entries.len() == count && lines.next().is_none()).then_some(entries)
}

/// Replaces the checkpoint with `entries` (written to a temporary file,
/// synced, then renamed over the old one).
pub fn write(data_dir: &Path, entries: &[(TopicPartition, i64)]) -> std::io::Result<()> {
    let mut text = format!("{VERSION}\n{}\n", entries.len());
    for (tp, hw) in entries {
        text.push_str(&format!("{} {} {hw}\n", tp.topic, tp.partition));
    }
    write_atomically(&data_dir.join(FILE_NAME), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_reads_back_what_was_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(read(dir.path()).is_empty());
        let entries = vec![
            (TopicPartition::new("orders", 0), 42),
            (TopicPartition::new("__consumer_offsets", 17), 0),
        ];
        write(dir.path(), &entries).expect("write");
        let back = read(dir.path());
        assert_eq!(back.len(), 2);
        assert_eq!(back[&TopicPartition::new("orders", 0)], 42);
        assert_eq!(back[&TopicPartition::new("__consumer_offsets", 17)], 0);
        write(dir.path(), &[]).expect("rewrite");
        assert!(read(dir.path()).is_empty());
    }

    #[test]
    fn a_malformed_checkpoint_counts_as_empty() {
        for text in [
            "",
            "1\n1\nt 0 5\n",
            "0\n2\nt 0 5\n",
            "0\n1\nt 0 5\nu 1 6\n",
            "0\n1\nt x 5\n",
            "0\n1\nt 0 -1\n",
            "0\n1\nt 0 5 9\n",
            "0\nmany\n",
        ] {
            assert_eq!(parse(text), None, "{text:?}");
        }
        assert_eq!(parse("0\n0\n"), Some(HashMap::new()));
    }
}
