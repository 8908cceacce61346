//! Kafka RecordBatch v2 header: parsing, validation, in-place rewrites.
//!
//! This module owns the 61-byte batch header and everything that can be decided
//! from it without decoding records: sizes, magic, CRC-32C, offset arithmetic and
//! the few fields the broker rewrites in place (base offset, partition leader
//! epoch, LogAppendTime). Every function here reads untrusted bytes (the network
//! or a possibly torn file), so all access is bounds-checked and nothing panics.
//!
//! ```text
//!  0 baseOffset i64 | 8 batchLength i32 | 12 partitionLeaderEpoch i32 | 16 magic i8
//! 17 crc u32 | 21 attributes i16 | 23 lastOffsetDelta i32 | 27 baseTimestamp i64
//! 35 maxTimestamp i64 | 43 producerId i64 | 51 producerEpoch i16 | 53 baseSequence i32
//! 57 recordsCount i32 | 61 records…            crc covers [21, end)
//! ```

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch is truncated")]
    Truncated,
    #[error("unsupported magic {0}")]
    UnsupportedMagic(i8),
    #[error("CRC mismatch")]
    CorruptCrc,
    #[error("invalid batch: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// The codec encoded in bits 0-2 of batch attributes.
    pub fn from_attributes(attributes: i16) -> Result<Compression, BatchError> {
        match attributes & ATTR_COMPRESSION_MASK {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(BatchError::Invalid(format!(
                "unknown compression codec {other}"
            ))),
        }
    }

    /// The attribute bits (0-2) that select this codec.
    pub fn attribute_bits(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

/// Bytes before `batchLength`'s payload: baseOffset + batchLength.
pub const LOG_OVERHEAD: usize = 12;
/// Smallest legal `batchLength`: a header with no records.
pub const BATCH_LENGTH_MIN: i32 = (BatchHeader::SIZE - LOG_OVERHEAD) as i32;
/// The only record batch format this engine stores.
pub const MAGIC_V2: i8 = 2;
/// `timestamp` value meaning "no timestamp" (Kafka's `RecordBatch.NO_TIMESTAMP`).
pub const NO_TIMESTAMP: i64 = -1;

pub(crate) const BASE_OFFSET_AT: usize = 0;
pub(crate) const LENGTH_AT: usize = 8;
pub(crate) const PARTITION_LEADER_EPOCH_AT: usize = 12;
pub(crate) const MAGIC_AT: usize = 16;
pub(crate) const CRC_AT: usize = 17;
pub(crate) const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
pub(crate) const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORDS_COUNT_AT: usize = 57;

pub(crate) const ATTR_COMPRESSION_MASK: i16 = 0x07;
pub(crate) const ATTR_TIMESTAMP_TYPE: i16 = 0x08;
pub(crate) const ATTR_TRANSACTIONAL: i16 = 0x10;
pub(crate) const ATTR_CONTROL: i16 = 0x20;

/// The smallest encoding of one record (seven one-byte fields), used to reject a
/// `recordsCount` that an uncompressed batch could not possibly hold.
pub(crate) const RECORD_BYTES_MIN: usize = 7;

fn read_array<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

pub(crate) fn read_i64(buf: &[u8], at: usize) -> Option<i64> {
    read_array(buf, at).map(i64::from_be_bytes)
}

pub(crate) fn read_i32(buf: &[u8], at: usize) -> Option<i32> {
    read_array(buf, at).map(i32::from_be_bytes)
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    read_array(buf, at).map(u32::from_be_bytes)
}

fn read_i16(buf: &[u8], at: usize) -> Option<i16> {
    read_array(buf, at).map(i16::from_be_bytes)
}

fn write_bytes(buf: &mut [u8], at: usize, bytes: &[u8]) -> Result<(), BatchError> {
    let end = at.checked_add(bytes.len()).ok_or(BatchError::Truncated)?;
    buf.get_mut(at..end)
        .ok_or(BatchError::Truncated)?
        .copy_from_slice(bytes);
    Ok(())
}

impl BatchHeader {
    /// Bytes of a v2 batch header.
    pub const SIZE: usize = 61;

    /// Parses the header at the start of `buf` (no CRC check).
    ///
    /// The magic byte is checked before anything else so that a v0/v1 message set
    /// (whose magic sits at the same position) is reported as `UnsupportedMagic`
    /// rather than as a malformed v2 batch.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        let magic = match buf.get(MAGIC_AT) {
            Some(&byte) => byte as i8,
            None => return Err(BatchError::Truncated),
        };
        if magic != MAGIC_V2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        if buf.len() < Self::SIZE {
            return Err(BatchError::Truncated);
        }
        let field = |v: Option<i64>| v.ok_or(BatchError::Truncated);
        let header = BatchHeader {
            base_offset: field(read_i64(buf, BASE_OFFSET_AT))?,
            batch_length: read_i32(buf, LENGTH_AT).ok_or(BatchError::Truncated)?,
            partition_leader_epoch: read_i32(buf, PARTITION_LEADER_EPOCH_AT)
                .ok_or(BatchError::Truncated)?,
            magic,
            crc: read_u32(buf, CRC_AT).ok_or(BatchError::Truncated)?,
            attributes: read_i16(buf, ATTRIBUTES_AT).ok_or(BatchError::Truncated)?,
            last_offset_delta: read_i32(buf, LAST_OFFSET_DELTA_AT).ok_or(BatchError::Truncated)?,
            base_timestamp: field(read_i64(buf, BASE_TIMESTAMP_AT))?,
            max_timestamp: field(read_i64(buf, MAX_TIMESTAMP_AT))?,
            producer_id: field(read_i64(buf, PRODUCER_ID_AT))?,
            producer_epoch: read_i16(buf, PRODUCER_EPOCH_AT).ok_or(BatchError::Truncated)?,
            base_sequence: read_i32(buf, BASE_SEQUENCE_AT).ok_or(BatchError::Truncated)?,
            records_count: read_i32(buf, RECORDS_COUNT_AT).ok_or(BatchError::Truncated)?,
        };
        if header.batch_length < BATCH_LENGTH_MIN {
            return Err(BatchError::Invalid(format!(
                "batch length {} is below the minimum {BATCH_LENGTH_MIN}",
                header.batch_length
            )));
        }
        Ok(header)
    }

    /// Whole batch size in bytes: 12 + batch_length.
    pub fn total_size(&self) -> usize {
        LOG_OVERHEAD + usize::try_from(self.batch_length).unwrap_or(0)
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    pub fn compression(&self) -> Result<Compression, BatchError> {
        Compression::from_attributes(self.attributes)
    }

    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & ATTR_TIMESTAMP_TYPE != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// Whether the batch was written by an idempotent or transactional producer.
    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }

    /// Checks the header fields that do not depend on the bytes around it.
    pub(crate) fn check_fields(&self, mode: Mode) -> Result<(), BatchError> {
        self.compression()?;
        if self.records_count < 0 {
            return Err(BatchError::Invalid(format!(
                "negative record count {}",
                self.records_count
            )));
        }
        // An empty batch still spans offsets (compaction keeps such headers), so its
        // delta must be non-negative or offsets would stop increasing.
        if self.last_offset_delta < 0 {
            return Err(BatchError::Invalid(format!(
                "negative last offset delta {}",
                self.last_offset_delta
            )));
        }
        if self.records_count > 0 {
            let expected = self.records_count - 1;
            let consistent = match mode {
                Mode::Produce => self.last_offset_delta == expected,
                // Compaction removes records but keeps lastOffsetDelta, so stored
                // batches may span more offsets than they hold records.
                Mode::Stored => self.last_offset_delta >= expected,
            };
            if !consistent {
                return Err(BatchError::Invalid(format!(
                    "last offset delta {} does not match record count {}",
                    self.last_offset_delta, self.records_count
                )));
            }
        }
        if self.compression() == Ok(Compression::None) {
            let records_bytes = self.total_size().saturating_sub(Self::SIZE);
            let needed = usize::try_from(self.records_count)
                .unwrap_or(usize::MAX)
                .saturating_mul(RECORD_BYTES_MIN);
            if needed > records_bytes {
                return Err(BatchError::Invalid(format!(
                    "{} records cannot fit in {records_bytes} bytes",
                    self.records_count
                )));
            }
        }
        Ok(())
    }
}

/// How strictly a batch's record count must match its offset span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A batch from a producer: exactly `recordsCount` consecutive offsets.
    Produce,
    /// A batch already in a log (ours or a leader's): compaction may have left gaps.
    Stored,
}

/// CRC-32C of a whole batch as Kafka computes it: from `attributes` to the end.
pub fn compute_crc(batch: &[u8]) -> Result<u32, BatchError> {
    batch
        .get(ATTRIBUTES_AT..)
        .map(crc32c::crc32c)
        .ok_or(BatchError::Truncated)
}

/// Splits off the first batch of `buf`: its header and its exact bytes.
/// Checks sizes and magic only (no CRC), so it is cheap enough for iteration.
pub fn split_first(buf: &[u8]) -> Result<(BatchHeader, &[u8], &[u8]), BatchError> {
    if buf.len() < LOG_OVERHEAD {
        return Err(BatchError::Truncated);
    }
    // Read the length first: a buffer shorter than the header but with a sane
    // length is merely truncated, not malformed.
    let header = BatchHeader::parse(buf)?;
    let total = header.total_size();
    if buf.len() < total {
        return Err(BatchError::Truncated);
    }
    let (batch, rest) = buf.split_at(total);
    Ok((header, batch, rest))
}

/// Checks one batch whose bytes are exactly `batch`.
pub(crate) fn check_batch(batch: &[u8], mode: Mode) -> Result<BatchHeader, BatchError> {
    let (header, exact, rest) = split_first(batch)?;
    if !rest.is_empty() {
        return Err(BatchError::Invalid("trailing bytes after batch".into()));
    }
    header.check_fields(mode)?;
    if compute_crc(exact)? != header.crc {
        return Err(BatchError::CorruptCrc);
    }
    Ok(header)
}

fn validate(buf: &[u8], mode: Mode) -> Result<Vec<BatchHeader>, BatchError> {
    if buf.is_empty() {
        return Err(BatchError::Invalid("no batches".into()));
    }
    let mut headers = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let (header, batch, tail) = split_first(rest)?;
        header.check_fields(mode)?;
        if compute_crc(batch)? != header.crc {
            return Err(BatchError::CorruptCrc);
        }
        headers.push(header);
        rest = tail;
    }
    Ok(headers)
}

/// Validates that `buf` holds one or more complete v2 batches back to back (sizes,
/// magic, CRC-32C, record count vs last offset delta) and returns their headers.
pub fn validate_batches(buf: &[u8]) -> Result<Vec<BatchHeader>, BatchError> {
    validate(buf, Mode::Produce)
}

/// Like [`validate_batches`], but for batches that already went through a log (a
/// leader's fetch response, a compacted segment): `lastOffsetDelta` may exceed
/// `recordsCount - 1` because compaction keeps a batch's offset span.
pub fn validate_stored_batches(buf: &[u8]) -> Result<Vec<BatchHeader>, BatchError> {
    validate(buf, Mode::Stored)
}

/// Iterates the batches laid back to back in `buf` (e.g. a [`crate::ReadResult`]),
/// checking sizes and magic but not the CRC. Stops after the first error.
pub fn batches(buf: &[u8]) -> Batches<'_> {
    Batches { rest: buf }
}

/// Iterator returned by [`batches`].
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<(BatchHeader, &'a [u8]), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match split_first(self.rest) {
            Ok((header, batch, rest)) => {
                self.rest = rest;
                Some(Ok((header, batch)))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// Overwrites the base offset of the batch at the start of `buf`. The base offset
/// is outside the CRC, so the CRC stays valid.
pub fn set_base_offset(buf: &mut [u8], base_offset: i64) -> Result<(), BatchError> {
    write_bytes(buf, BASE_OFFSET_AT, &base_offset.to_be_bytes())
}

/// Overwrites the partition leader epoch of the batch at the start of `buf` (outside
/// the CRC, like the base offset).
pub fn set_partition_leader_epoch(buf: &mut [u8], epoch: i32) -> Result<(), BatchError> {
    write_bytes(buf, PARTITION_LEADER_EPOCH_AT, &epoch.to_be_bytes())
}

/// Marks the batch at the start of `buf` as LogAppendTime with `timestamp` as its max
/// timestamp, and recomputes the CRC.
pub fn set_log_append_time(buf: &mut [u8], timestamp: i64) -> Result<(), BatchError> {
    let header = BatchHeader::parse(buf)?;
    let total = header.total_size();
    if buf.len() < total {
        return Err(BatchError::Truncated);
    }
    let attributes = header.attributes | ATTR_TIMESTAMP_TYPE;
    write_bytes(buf, ATTRIBUTES_AT, &attributes.to_be_bytes())?;
    write_bytes(buf, MAX_TIMESTAMP_AT, &timestamp.to_be_bytes())?;
    let crc = compute_crc(buf.get(..total).ok_or(BatchError::Truncated)?)?;
    write_bytes(buf, CRC_AT, &crc.to_be_bytes())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::record::BatchBuilder;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn sample(records: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new(Compression::None).base_offset(0);
        for i in 0..records {
            b.append(
                1_000 + i as i64,
                Some(Bytes::from(format!("k{i}"))),
                Some(Bytes::from_static(b"v")),
            );
        }
        b.build().unwrap()
    }

    #[test]
    fn parses_what_the_builder_writes() {
        let batch = sample(3);
        let h = BatchHeader::parse(&batch).unwrap();
        assert_eq!(h.magic, 2);
        assert_eq!(h.records_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.total_size(), batch.len());
        assert_eq!(h.max_timestamp, 1_002);
        assert_eq!(h.compression().unwrap(), Compression::None);
        assert_eq!(validate_batches(&batch).unwrap(), vec![h]);
    }

    #[test]
    fn validates_several_batches_back_to_back() {
        let mut buf = sample(1);
        buf.extend(sample(5));
        buf.extend(sample(2));
        let headers = validate_batches(&buf).unwrap();
        assert_eq!(
            headers.iter().map(|h| h.records_count).collect::<Vec<_>>(),
            vec![1, 5, 2]
        );
        assert_eq!(batches(&buf).count(), 3);
    }

    #[test]
    fn rejects_bad_crc_magic_and_counts() {
        let batch = sample(2);
        let mut bad = batch.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(validate_batches(&bad), Err(BatchError::CorruptCrc));

        let mut old = batch.clone();
        old[MAGIC_AT] = 1;
        assert_eq!(validate_batches(&old), Err(BatchError::UnsupportedMagic(1)));

        let mut count = batch.clone();
        count[RECORDS_COUNT_AT..RECORDS_COUNT_AT + 4].copy_from_slice(&3i32.to_be_bytes());
        let crc = compute_crc(&count).unwrap();
        count[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate_batches(&count),
            Err(BatchError::Invalid(_))
        ));

        assert_eq!(
            validate_batches(&batch[..batch.len() - 1]),
            Err(BatchError::Truncated)
        );
        assert!(validate_batches(&[]).is_err());
        let mut trailing = batch.clone();
        trailing.push(0);
        assert_eq!(validate_batches(&trailing), Err(BatchError::Truncated));
    }

    #[test]
    fn base_offset_and_epoch_rewrites_keep_the_crc_valid() {
        let mut batch = sample(2);
        set_base_offset(&mut batch, 77).unwrap();
        set_partition_leader_epoch(&mut batch, 9).unwrap();
        let h = validate_batches(&batch).unwrap()[0];
        assert_eq!(
            (h.base_offset, h.partition_leader_epoch, h.last_offset()),
            (77, 9, 78)
        );
    }

    #[test]
    fn log_append_time_sets_attribute_timestamp_and_crc() {
        let mut batch = sample(2);
        set_log_append_time(&mut batch, 5_000).unwrap();
        let h = validate_batches(&batch).unwrap()[0];
        assert_eq!(h.timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(h.max_timestamp, 5_000);
        let records = crate::record::decode_records(&batch).unwrap();
        assert!(records.iter().all(|r| r.timestamp == 5_000));
        assert!(set_log_append_time(&mut batch[..30], 1).is_err());
    }

    #[test]
    fn stored_mode_accepts_compacted_offset_spans() {
        let batch = BatchBuilder::new(Compression::None)
            .base_offset(10)
            .last_offset_delta(5)
            .with_records(vec![crate::record::Record {
                offset: 12,
                timestamp: 1,
                key: None,
                value: Some(Bytes::from_static(b"x")),
                headers: vec![],
            }])
            .unwrap()
            .build()
            .unwrap();
        assert!(matches!(
            validate_batches(&batch),
            Err(BatchError::Invalid(_))
        ));
        let h = validate_stored_batches(&batch).unwrap()[0];
        assert_eq!(
            (h.base_offset, h.last_offset(), h.records_count),
            (10, 15, 1)
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = validate_batches(&bytes);
            let _ = validate_stored_batches(&bytes);
            let _ = BatchHeader::parse(&bytes);
            let _ = batches(&bytes).count();
            let _ = crate::record::decode_records(&bytes);
            let mut copy = bytes.clone();
            let _ = set_log_append_time(&mut copy, 1);
        }

        #[test]
        fn every_truncation_and_byte_flip_is_rejected(records in 1usize..6, cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
            let batch = sample(records);
            let cut = cut.index(batch.len());
            prop_assert!(validate_batches(&batch[..cut]).is_err());
            // Any flipped bit covered by the CRC, or in the length/magic, is caught;
            // the base offset and leader epoch are outside the CRC by design.
            let at = flip.index(batch.len());
            let mut flipped = batch.clone();
            flipped[at] ^= 1 << bit;
            if at >= LENGTH_AT && !(PARTITION_LEADER_EPOCH_AT..MAGIC_AT).contains(&at) {
                prop_assert!(validate_batches(&flipped).is_err());
            }
        }

        #[test]
        fn garbage_with_a_plausible_header_never_panics(len in 49i32..400, count in -2i32..50, delta in -2i32..50, codec in 0i16..8, body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut buf = vec![0u8; BatchHeader::SIZE];
            buf[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&len.to_be_bytes());
            buf[MAGIC_AT] = 2;
            buf[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&codec.to_be_bytes());
            buf[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4].copy_from_slice(&delta.to_be_bytes());
            buf[RECORDS_COUNT_AT..RECORDS_COUNT_AT + 4].copy_from_slice(&count.to_be_bytes());
            buf.extend(body);
            let end = (LOG_OVERHEAD + len as usize).min(buf.len());
            let crc = compute_crc(&buf[..end]).unwrap();
            buf[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
            let _ = validate_batches(&buf);
            let _ = validate_stored_batches(&buf);
            let _ = crate::record::decode_records(&buf);
        }
    }
}
