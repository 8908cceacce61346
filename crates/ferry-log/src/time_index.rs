//! The sparse time index of one segment: timestamp (`i64`) → relative offset (`u32`),
//! 12-byte big-endian entries.
//!
//! An entry `(t, o)` is written only when the segment's max timestamp grows, and `o`
//! is the last offset of the batch that first reached `t`. So every record in a
//! batch at or before `o` has a timestamp `<= t`: when looking for the first record
//! with timestamp `>= target`, everything up to the last entry with `t < target`
//! can be skipped. Like the offset index it lives in memory and its file is a
//! validated, disposable copy.

use crate::index::InvalidIndex;

/// Bytes per entry on disk.
pub(crate) const ENTRY_BYTES: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub(crate) timestamp: i64,
    pub(crate) relative_offset: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TimeIndex {
    entries: Vec<TimeEntry>,
}

impl TimeIndex {
    /// Parses a persisted time index: timestamps and offsets must both strictly
    /// increase. A trailing partial entry (a torn write) is ignored.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<TimeIndex, InvalidIndex> {
        let mut index = TimeIndex::default();
        for chunk in bytes.chunks_exact(ENTRY_BYTES) {
            let (ts, rel) = chunk.split_at(8);
            let entry = TimeEntry {
                timestamp: i64::from_be_bytes(
                    ts.try_into()
                        .map_err(|_| InvalidIndex("short entry".into()))?,
                ),
                relative_offset: u32::from_be_bytes(
                    rel.try_into()
                        .map_err(|_| InvalidIndex("short entry".into()))?,
                ),
            };
            if let Some(last) = index.entries.last() {
                if entry.timestamp <= last.timestamp
                    || entry.relative_offset <= last.relative_offset
                {
                    return Err(InvalidIndex(format!(
                        "time entry {entry:?} does not increase over {last:?} at entry {}",
                        index.entries.len()
                    )));
                }
            }
            index.entries.push(entry);
        }
        Ok(index)
    }

    pub(crate) fn encode_from(&self, from: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len().saturating_sub(from) * ENTRY_BYTES);
        for entry in self.entries.get(from..).unwrap_or(&[]) {
            out.extend_from_slice(&entry.timestamp.to_be_bytes());
            out.extend_from_slice(&entry.relative_offset.to_be_bytes());
        }
        out
    }

    pub(crate) fn entries(&self) -> &[TimeEntry] {
        &self.entries
    }

    pub(crate) fn last(&self) -> Option<TimeEntry> {
        self.entries.last().copied()
    }

    /// Appends `entry` if it raises the max timestamp (and so also the offset).
    pub(crate) fn maybe_push(&mut self, entry: TimeEntry) {
        let grows = match self.entries.last() {
            None => entry.timestamp > crate::batch::NO_TIMESTAMP,
            Some(last) => {
                entry.timestamp > last.timestamp && entry.relative_offset > last.relative_offset
            }
        };
        if grows {
            self.entries.push(entry);
        }
    }

    /// Last entry whose timestamp is strictly below `timestamp`.
    pub(crate) fn last_before(&self, timestamp: i64) -> Option<TimeEntry> {
        let n = self.entries.partition_point(|e| e.timestamp < timestamp);
        n.checked_sub(1).and_then(|i| self.entries.get(i).copied())
    }

    /// Keeps only entries whose offset is `<= relative_offset`.
    pub(crate) fn truncate_after(&mut self, relative_offset: u32) {
        let keep = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        self.entries.truncate(keep);
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(timestamp: i64, relative_offset: u32) -> TimeEntry {
        TimeEntry {
            timestamp,
            relative_offset,
        }
    }

    #[test]
    fn only_growth_is_recorded() {
        let mut index = TimeIndex::default();
        index.maybe_push(entry(-1, 0));
        assert_eq!(index.len(), 0, "no-timestamp batches never make an entry");
        index.maybe_push(entry(10, 2));
        index.maybe_push(entry(10, 5));
        index.maybe_push(entry(8, 6));
        index.maybe_push(entry(20, 9));
        assert_eq!(index.encode_from(0).len(), 2 * ENTRY_BYTES);
        assert_eq!(index.last_before(10), None);
        assert_eq!(index.last_before(11), Some(entry(10, 2)));
        assert_eq!(index.last_before(i64::MAX), Some(entry(20, 9)));
        let parsed = TimeIndex::from_bytes(&index.encode_from(0)).unwrap();
        assert_eq!(parsed, index);
        index.truncate_after(8);
        assert_eq!(index.last(), Some(entry(10, 2)));
    }

    #[test]
    fn non_monotonic_files_are_refused() {
        let mut bytes = TimeIndex {
            entries: vec![entry(10, 2), entry(20, 9)],
        }
        .encode_from(0);
        bytes.extend_from_slice(&[0; ENTRY_BYTES]);
        assert!(TimeIndex::from_bytes(&bytes).is_err());
        assert_eq!(TimeIndex::from_bytes(&bytes[..30]).unwrap().len(), 2);
    }
}
