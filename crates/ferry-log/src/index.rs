//! The sparse offset index of one segment: relative offset → byte position in the
//! `.log` file, 8-byte big-endian entries (`u32` relative offset, `u32` position).
//!
//! As in Kafka, an entry names the *last* offset of a batch and the position where
//! that batch starts, so "largest entry with offset ≤ target" is always a safe place
//! to start scanning for the batch holding `target`. Entries live in memory (reads
//! look them up without I/O); the file is only a persisted copy that recovery
//! validates and may discard, so nothing here trusts it.

use std::fmt;

/// Bytes per entry on disk.
pub(crate) const ENTRY_BYTES: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub(crate) relative_offset: u32,
    pub(crate) position: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OffsetIndex {
    entries: Vec<OffsetEntry>,
}

/// Why a persisted index was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InvalidIndex(pub(crate) String);

impl fmt::Display for InvalidIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl OffsetIndex {
    /// Parses a persisted index and checks it against the `.log` it describes:
    /// strictly increasing offsets and positions, every position inside the log.
    /// A trailing partial entry (a torn write) is ignored.
    pub(crate) fn from_bytes(bytes: &[u8], log_len: u64) -> Result<OffsetIndex, InvalidIndex> {
        let mut index = OffsetIndex::default();
        for chunk in bytes.chunks_exact(ENTRY_BYTES) {
            let (rel, pos) = chunk.split_at(4);
            let entry = OffsetEntry {
                relative_offset: u32::from_be_bytes(
                    rel.try_into()
                        .map_err(|_| InvalidIndex("short entry".into()))?,
                ),
                position: u32::from_be_bytes(
                    pos.try_into()
                        .map_err(|_| InvalidIndex("short entry".into()))?,
                ),
            };
            if u64::from(entry.position) >= log_len {
                return Err(InvalidIndex(format!(
                    "position {} is past the log end {log_len}",
                    entry.position
                )));
            }
            if let Some(last) = index.entries.last() {
                if entry.relative_offset <= last.relative_offset || entry.position <= last.position
                {
                    return Err(InvalidIndex(format!(
                        "entry {entry:?} does not increase over {last:?} at entry {}",
                        index.entries.len()
                    )));
                }
            }
            index.entries.push(entry);
        }
        Ok(index)
    }

    /// The encoded entries from `from` on, for appending to the file.
    pub(crate) fn encode_from(&self, from: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len().saturating_sub(from) * ENTRY_BYTES);
        for entry in self.entries.get(from..).unwrap_or(&[]) {
            out.extend_from_slice(&entry.relative_offset.to_be_bytes());
            out.extend_from_slice(&entry.position.to_be_bytes());
        }
        out
    }

    pub(crate) fn push(&mut self, entry: OffsetEntry) {
        debug_assert!(
            self.entries
                .last()
                .is_none_or(|last| entry.relative_offset > last.relative_offset
                    && entry.position > last.position),
            "offset index must grow: {entry:?} after {:?}",
            self.entries.last()
        );
        self.entries.push(entry);
    }

    /// Largest entry whose offset is `<= relative_offset`.
    pub(crate) fn lookup(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let n = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        n.checked_sub(1).and_then(|i| self.entries.get(i).copied())
    }

    /// Index of the last entry whose offset is `< relative_offset`.
    pub(crate) fn last_below(&self, relative_offset: u32) -> Option<usize> {
        self.entries
            .partition_point(|e| e.relative_offset < relative_offset)
            .checked_sub(1)
    }

    pub(crate) fn get(&self, i: usize) -> Option<OffsetEntry> {
        self.entries.get(i).copied()
    }

    pub(crate) fn truncate(&mut self, len: usize) {
        self.entries.truncate(len);
    }

    /// Drops entries at or past byte `position` of the log.
    pub(crate) fn truncate_to_position(&mut self, position: u64) {
        let keep = self
            .entries
            .partition_point(|e| u64::from(e.position) < position);
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

    fn entry(relative_offset: u32, position: u32) -> OffsetEntry {
        OffsetEntry {
            relative_offset,
            position,
        }
    }

    #[test]
    fn lookup_finds_the_floor_entry() {
        let mut index = OffsetIndex::default();
        assert_eq!(index.lookup(5), None);
        index.push(entry(3, 100));
        index.push(entry(9, 300));
        assert_eq!(index.lookup(2), None);
        assert_eq!(index.lookup(3), Some(entry(3, 100)));
        assert_eq!(index.lookup(8), Some(entry(3, 100)));
        assert_eq!(index.lookup(100), Some(entry(9, 300)));
        assert_eq!(index.last_below(9), Some(0));
        assert_eq!(index.last_below(3), None);
    }

    #[test]
    fn persisted_form_round_trips_and_is_validated() {
        let mut index = OffsetIndex::default();
        index.push(entry(3, 100));
        index.push(entry(9, 300));
        let mut bytes = index.encode_from(0);
        assert_eq!(OffsetIndex::from_bytes(&bytes, 301).unwrap(), index);
        assert!(
            OffsetIndex::from_bytes(&bytes, 300).is_err(),
            "position past the log"
        );
        bytes.extend_from_slice(&[0, 0, 0]);
        assert_eq!(
            OffsetIndex::from_bytes(&bytes, 301).unwrap(),
            index,
            "torn tail ignored"
        );
        bytes.truncate(16);
        bytes.extend_from_slice(&entry(0, 0).relative_offset.to_be_bytes());
        bytes.extend_from_slice(&0u32.to_be_bytes());
        assert!(
            OffsetIndex::from_bytes(&bytes, 301).is_err(),
            "zeroed entry breaks monotonicity"
        );
        assert_eq!(index.encode_from(1), bytes[8..16].to_vec());
    }

    #[test]
    fn truncation_by_position() {
        let mut index = OffsetIndex::default();
        index.push(entry(3, 100));
        index.push(entry(9, 300));
        index.truncate_to_position(300);
        assert_eq!(index.len(), 1);
        index.truncate_to_position(0);
        assert_eq!(index.len(), 0);
    }
}
