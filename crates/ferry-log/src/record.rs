//! Records inside a v2 batch: decoding stored batches into [`Record`]s and building
//! batches from records ([`BatchBuilder`]).
//!
//! The log itself never needs this on the produce/fetch path (it stores and serves
//! batch bytes as they are); records are decoded only where their content matters:
//! compaction (keys, tombstones), timestamp lookups, and the broker's validation.
//!
//! ```text
//! record: length varint | attributes i8 | timestampDelta varlong | offsetDelta varint
//!         | keyLength varint (-1 = null) | key | valueLength varint | value
//!         | headerCount varint | (keyLen varint, key, valueLen varint (-1 = null), value)*
//! ```

use bytes::Bytes;

use crate::batch::{
    self, BatchError, BatchHeader, Compression, Mode, TimestampType, ATTR_CONTROL,
    ATTR_TIMESTAMP_TYPE, ATTR_TRANSACTIONAL, BATCH_LENGTH_MIN, LOG_OVERHEAD, MAGIC_V2,
    NO_TIMESTAMP, RECORD_BYTES_MIN,
};
use crate::compression::{self, DECOMPRESSED_BYTES_MAX};
use crate::varint::{self, Reader};

/// One record as a consumer sees it: offsets and timestamps are absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    /// For LogAppendTime batches this is the batch's append time, as Kafka reports it.
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Decodes every record of every batch in `buf` (one or more whole batches, e.g. a
/// single stored batch or a whole [`crate::ReadResult`]). Checks each batch's CRC.
pub fn decode_records(buf: &[u8]) -> Result<Vec<Record>, BatchError> {
    let mut records = Vec::new();
    for item in batch::batches(buf) {
        let (_, batch) = item?;
        records.extend(decode_batch(batch)?.1);
    }
    Ok(records)
}

/// Decodes exactly one batch (`batch` holds its bytes and nothing else).
pub fn decode_batch(batch: &[u8]) -> Result<(BatchHeader, Vec<Record>), BatchError> {
    let header = batch::check_batch(batch, Mode::Stored)?;
    let count = usize::try_from(header.records_count).unwrap_or(0);
    if count == 0 {
        return Ok((header, Vec::new()));
    }
    let payload = batch
        .get(BatchHeader::SIZE..)
        .ok_or(BatchError::Truncated)?;
    let records_bytes = match header.compression()? {
        Compression::None => Bytes::copy_from_slice(payload),
        codec => Bytes::from(compression::decompress(
            codec,
            payload,
            DECOMPRESSED_BYTES_MAX,
        )?),
    };
    // Cap the preallocation by what the bytes could hold, not by the claimed count.
    let mut records = Vec::with_capacity(count.min(records_bytes.len() / RECORD_BYTES_MIN + 1));
    let mut reader = Reader::new(&records_bytes);
    for _ in 0..count {
        records.push(decode_one(&header, &records_bytes, &mut reader)?);
    }
    if !reader.is_empty() {
        return Err(BatchError::Invalid(format!(
            "{} bytes left after the last record",
            reader.remaining()
        )));
    }
    Ok((header, records))
}

fn decode_one(
    header: &BatchHeader,
    all: &Bytes,
    reader: &mut Reader<'_>,
) -> Result<Record, BatchError> {
    let length = usize::try_from(reader.varint()?)
        .map_err(|_| BatchError::Invalid("negative record length".into()))?;
    let start = reader.position();
    let end = start.checked_add(length).ok_or(BatchError::Truncated)?;
    if end > start + reader.remaining() {
        return Err(BatchError::Truncated);
    }
    let _attributes = reader.i8()?;
    let timestamp_delta = reader.varlong()?;
    let offset_delta = reader.varint()?;
    let key = nullable_bytes(all, reader, "key")?;
    let value = nullable_bytes(all, reader, "value")?;
    let header_count = usize::try_from(reader.varint()?)
        .map_err(|_| BatchError::Invalid("negative header count".into()))?;
    // Each header takes at least two bytes; anything more is a lie we must not allocate for.
    if header_count > reader.remaining() / 2 {
        return Err(BatchError::Invalid(format!(
            "{header_count} headers cannot fit in the record"
        )));
    }
    let mut headers = Vec::with_capacity(header_count);
    for _ in 0..header_count {
        let key_len = usize::try_from(reader.varint()?)
            .map_err(|_| BatchError::Invalid("negative header key length".into()))?;
        let key = std::str::from_utf8(reader.bytes(key_len)?)
            .map_err(|_| BatchError::Invalid("header key is not UTF-8".into()))?
            .to_owned();
        headers.push((key, nullable_bytes(all, reader, "header value")?));
    }
    if reader.position() != end {
        return Err(BatchError::Invalid(
            "record length does not match its fields".into(),
        ));
    }
    let offset = header
        .base_offset
        .checked_add(i64::from(offset_delta))
        .ok_or_else(|| BatchError::Invalid("record offset overflows".into()))?;
    let timestamp = match header.timestamp_type() {
        TimestampType::LogAppendTime => header.max_timestamp,
        TimestampType::CreateTime => header
            .base_timestamp
            .checked_add(timestamp_delta)
            .ok_or_else(|| BatchError::Invalid("record timestamp overflows".into()))?,
    };
    Ok(Record {
        offset,
        timestamp,
        key,
        value,
        headers,
    })
}

fn nullable_bytes(
    all: &Bytes,
    reader: &mut Reader<'_>,
    what: &str,
) -> Result<Option<Bytes>, BatchError> {
    let len = reader.varint()?;
    if len == -1 {
        return Ok(None);
    }
    let len = usize::try_from(len)
        .map_err(|_| BatchError::Invalid(format!("invalid {what} length {len}")))?;
    Ok(Some(all.slice(reader.range(len)?)))
}

/// Encodes one v2 batch from records.
///
/// Defaults match a plain (non-idempotent) producer: base offset 0, no producer id,
/// CreateTime, base timestamp = first record's, max timestamp = largest record's,
/// lastOffsetDelta = last record's. Each default can be overridden, which is how
/// compaction rewrites a batch while keeping its header fields and offset span.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    compression: Compression,
    base_offset: i64,
    partition_leader_epoch: i32,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    timestamp_type: TimestampType,
    transactional: bool,
    control: bool,
    base_timestamp: Option<i64>,
    max_timestamp: Option<i64>,
    last_offset_delta: Option<i32>,
    records: Vec<PendingRecord>,
}

#[derive(Debug, Clone)]
struct PendingRecord {
    offset_delta: i32,
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Vec<(String, Option<Bytes>)>,
}

impl BatchBuilder {
    pub fn new(compression: Compression) -> Self {
        BatchBuilder {
            compression,
            base_offset: 0,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            timestamp_type: TimestampType::CreateTime,
            transactional: false,
            control: false,
            base_timestamp: None,
            max_timestamp: None,
            last_offset_delta: None,
            records: Vec::new(),
        }
    }

    /// A builder that reproduces `header`'s fields (codec, offsets span, producer,
    /// timestamps, flags); only the records are left to add.
    pub fn from_header(header: &BatchHeader) -> Result<Self, BatchError> {
        let builder = BatchBuilder::new(header.compression()?)
            .base_offset(header.base_offset)
            .partition_leader_epoch(header.partition_leader_epoch)
            .producer(
                header.producer_id,
                header.producer_epoch,
                header.base_sequence,
            )
            .timestamp_type(header.timestamp_type())
            .transactional(header.is_transactional())
            .control(header.is_control())
            .base_timestamp(header.base_timestamp)
            .max_timestamp(header.max_timestamp)
            .last_offset_delta(header.last_offset_delta);
        Ok(builder)
    }

    /// The codec the built batch is compressed with.
    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    pub fn base_offset(mut self, base_offset: i64) -> Self {
        self.base_offset = base_offset;
        self
    }

    pub fn partition_leader_epoch(mut self, epoch: i32) -> Self {
        self.partition_leader_epoch = epoch;
        self
    }

    /// Idempotent/transactional producer fields.
    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    pub fn timestamp_type(mut self, timestamp_type: TimestampType) -> Self {
        self.timestamp_type = timestamp_type;
        self
    }

    pub fn transactional(mut self, transactional: bool) -> Self {
        self.transactional = transactional;
        self
    }

    pub fn control(mut self, control: bool) -> Self {
        self.control = control;
        self
    }

    pub fn base_timestamp(mut self, timestamp: i64) -> Self {
        self.base_timestamp = Some(timestamp);
        self
    }

    pub fn max_timestamp(mut self, timestamp: i64) -> Self {
        self.max_timestamp = Some(timestamp);
        self
    }

    /// Keeps an offset span wider than the records (compaction removed some).
    pub fn last_offset_delta(mut self, delta: i32) -> Self {
        self.last_offset_delta = Some(delta);
        self
    }

    /// Adds records with explicit absolute offsets (see [`BatchBuilder::push`]).
    pub fn with_records(
        mut self,
        records: impl IntoIterator<Item = Record>,
    ) -> Result<Self, BatchError> {
        for record in records {
            self.push(record)?;
        }
        Ok(self)
    }

    fn next_delta(&self) -> i32 {
        self.records
            .last()
            .map_or(0, |r| r.offset_delta.saturating_add(1))
    }

    /// Appends a record at the next offset and returns that offset.
    pub fn append(&mut self, timestamp: i64, key: Option<Bytes>, value: Option<Bytes>) -> i64 {
        self.append_with_headers(timestamp, key, value, Vec::new())
    }

    pub fn append_with_headers(
        &mut self,
        timestamp: i64,
        key: Option<Bytes>,
        value: Option<Bytes>,
        headers: Vec<(String, Option<Bytes>)>,
    ) -> i64 {
        let offset_delta = self.next_delta();
        self.records.push(PendingRecord {
            offset_delta,
            timestamp,
            key,
            value,
            headers,
        });
        self.base_offset.saturating_add(i64::from(offset_delta))
    }

    /// Appends a record at its own absolute offset, which must be above the previous
    /// record's and within `i32` of the base offset (gaps are allowed).
    pub fn push(&mut self, record: Record) -> Result<(), BatchError> {
        let delta = record
            .offset
            .checked_sub(self.base_offset)
            .and_then(|d| i32::try_from(d).ok())
            .ok_or_else(|| {
                BatchError::Invalid(format!(
                    "offset {} is out of the batch's range",
                    record.offset
                ))
            })?;
        if delta < self.next_delta() || (delta == 0 && !self.records.is_empty()) {
            return Err(BatchError::Invalid(format!(
                "offset {} does not increase",
                record.offset
            )));
        }
        self.records.push(PendingRecord {
            offset_delta: delta,
            timestamp: record.timestamp,
            key: record.key,
            value: record.value,
            headers: record.headers,
        });
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Encodes the batch (header, records, CRC-32C).
    pub fn build(&self) -> Result<Vec<u8>, BatchError> {
        let base_timestamp = self
            .base_timestamp
            .or_else(|| self.records.first().map(|r| r.timestamp))
            .unwrap_or(NO_TIMESTAMP);
        let max_timestamp = self
            .max_timestamp
            .or_else(|| self.records.iter().map(|r| r.timestamp).max())
            .unwrap_or(NO_TIMESTAMP);
        let max_delta = self.records.last().map_or(0, |r| r.offset_delta);
        let last_offset_delta = self.last_offset_delta.unwrap_or(max_delta);
        if last_offset_delta < max_delta {
            return Err(BatchError::Invalid(format!(
                "last offset delta {last_offset_delta} is below a record's delta {max_delta}"
            )));
        }
        let records_count = i32::try_from(self.records.len())
            .map_err(|_| BatchError::Invalid("too many records".into()))?;

        let mut plain = Vec::new();
        for record in &self.records {
            encode_record(&mut plain, record, base_timestamp)?;
        }
        // Kafka writes empty batches (kept by compaction) uncompressed: there is no
        // payload to compress, and an empty gzip stream would not be empty bytes.
        let codec = if self.records.is_empty() {
            Compression::None
        } else {
            self.compression
        };
        let payload = match codec {
            Compression::None => plain,
            codec => compression::compress(codec, &plain)?,
        };

        let mut attributes = codec.attribute_bits();
        if self.timestamp_type == TimestampType::LogAppendTime {
            attributes |= ATTR_TIMESTAMP_TYPE;
        }
        if self.transactional {
            attributes |= ATTR_TRANSACTIONAL;
        }
        if self.control {
            attributes |= ATTR_CONTROL;
        }
        let total = BatchHeader::SIZE + payload.len();
        let batch_length = i32::try_from(total - LOG_OVERHEAD)
            .map_err(|_| BatchError::Invalid(format!("batch of {total} bytes is too large")))?;
        debug_assert!(batch_length >= BATCH_LENGTH_MIN);

        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&self.base_offset.to_be_bytes());
        out.extend_from_slice(&batch_length.to_be_bytes());
        out.extend_from_slice(&self.partition_leader_epoch.to_be_bytes());
        out.push(MAGIC_V2 as u8);
        out.extend_from_slice(&0u32.to_be_bytes()); // CRC, filled in below
        out.extend_from_slice(&attributes.to_be_bytes());
        out.extend_from_slice(&last_offset_delta.to_be_bytes());
        out.extend_from_slice(&base_timestamp.to_be_bytes());
        out.extend_from_slice(&max_timestamp.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.base_sequence.to_be_bytes());
        out.extend_from_slice(&records_count.to_be_bytes());
        out.extend_from_slice(&payload);
        let crc = batch::compute_crc(&out)?;
        out[batch::CRC_AT..batch::CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(out)
    }
}

fn encode_record(
    out: &mut Vec<u8>,
    record: &PendingRecord,
    base_timestamp: i64,
) -> Result<(), BatchError> {
    let timestamp_delta = record
        .timestamp
        .checked_sub(base_timestamp)
        .ok_or_else(|| BatchError::Invalid("timestamp delta overflows".into()))?;
    let mut body = Vec::new();
    body.push(0); // record attributes: unused in v2
    varint::put_varlong(&mut body, timestamp_delta);
    varint::put_varint(&mut body, record.offset_delta);
    put_nullable(&mut body, record.key.as_deref())?;
    put_nullable(&mut body, record.value.as_deref())?;
    varint::put_varint(&mut body, len_i32(record.headers.len())?);
    for (key, value) in &record.headers {
        varint::put_varint(&mut body, len_i32(key.len())?);
        body.extend_from_slice(key.as_bytes());
        put_nullable(&mut body, value.as_deref())?;
    }
    let length = len_i32(body.len())?;
    out.reserve(varint::varint_len(length) + body.len());
    varint::put_varint(out, length);
    out.extend_from_slice(&body);
    Ok(())
}

fn len_i32(len: usize) -> Result<i32, BatchError> {
    i32::try_from(len)
        .map_err(|_| BatchError::Invalid(format!("field of {len} bytes is too large")))
}

fn put_nullable(out: &mut Vec<u8>, bytes: Option<&[u8]>) -> Result<(), BatchError> {
    match bytes {
        None => varint::put_varint(out, -1),
        Some(bytes) => {
            varint::put_varint(out, len_i32(bytes.len())?);
            out.extend_from_slice(bytes);
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// (timestamp, key, value, headers)
    type ArbRecord = (
        i64,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Vec<(String, Option<Vec<u8>>)>,
    );

    fn arb_record() -> impl Strategy<Value = ArbRecord> {
        (
            -1i64..2_000_000_000_000,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
            proptest::collection::vec(
                (
                    "[a-z]{0,8}",
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
                ),
                0..3,
            ),
        )
    }

    #[test]
    fn builder_defaults_and_header_fields() {
        let mut b = BatchBuilder::new(Compression::Zstd)
            .base_offset(100)
            .producer(7, 2, 40)
            .transactional(true)
            .partition_leader_epoch(3);
        assert_eq!(b.append(50, Some(Bytes::from_static(b"a")), None), 100);
        assert_eq!(b.append(20, None, Some(Bytes::from_static(b"b"))), 101);
        let bytes = b.build().unwrap();
        let (h, records) = decode_batch(&bytes).unwrap();
        assert_eq!(
            (h.base_offset, h.last_offset(), h.records_count),
            (100, 101, 2)
        );
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (7, 2, 40)
        );
        assert_eq!((h.base_timestamp, h.max_timestamp), (50, 50));
        assert!(h.is_transactional() && !h.is_control());
        assert_eq!(h.partition_leader_epoch, 3);
        assert_eq!(h.compression().unwrap(), Compression::Zstd);
        assert_eq!(records[0].key.as_deref(), Some(&b"a"[..]));
        assert_eq!(records[0].value, None);
        assert_eq!(records[1].timestamp, 20);
        assert_eq!(records[1].offset, 101);
    }

    #[test]
    fn empty_batches_keep_their_span_and_are_uncompressed() {
        let bytes = BatchBuilder::new(Compression::Gzip)
            .base_offset(5)
            .last_offset_delta(3)
            .max_timestamp(9)
            .build()
            .unwrap();
        let (h, records) = decode_batch(&bytes).unwrap();
        assert!(records.is_empty());
        assert_eq!(
            (h.last_offset(), h.records_count, h.max_timestamp),
            (8, 0, 9)
        );
        assert_eq!(h.compression().unwrap(), Compression::None);
    }

    #[test]
    fn push_rejects_non_increasing_offsets() {
        let mut b = BatchBuilder::new(Compression::None).base_offset(10);
        let rec = |offset| Record {
            offset,
            timestamp: 0,
            key: None,
            value: None,
            headers: vec![],
        };
        b.push(rec(12)).unwrap();
        assert!(b.push(rec(12)).is_err());
        assert!(b.push(rec(9)).is_err());
        b.push(rec(20)).unwrap();
        let bytes = b.build().unwrap();
        assert_eq!(
            decode_records(&bytes)
                .unwrap()
                .iter()
                .map(|r| r.offset)
                .collect::<Vec<_>>(),
            vec![12, 20]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn every_codec_round_trips(records in proptest::collection::vec(arb_record(), 1..20), base in 0i64..1_000_000) {
            for codec in ALL {
                let mut b = BatchBuilder::new(codec).base_offset(base);
                for (ts, k, v, h) in &records {
                    let headers = h.iter().map(|(k, v)| (k.clone(), v.clone().map(Bytes::from))).collect();
                    b.append_with_headers(*ts, k.clone().map(Bytes::from), v.clone().map(Bytes::from), headers);
                }
                let bytes = b.build().unwrap();
                prop_assert_eq!(batch::validate_batches(&bytes).unwrap().len(), 1);
                let decoded = decode_records(&bytes).unwrap();
                prop_assert_eq!(decoded.len(), records.len());
                for (i, (r, (ts, k, v, h))) in decoded.iter().zip(&records).enumerate() {
                    prop_assert_eq!(r.offset, base + i as i64);
                    prop_assert_eq!(r.timestamp, *ts);
                    prop_assert_eq!(r.key.as_deref(), k.as_deref());
                    prop_assert_eq!(r.value.as_deref(), v.as_deref());
                    let expected: Vec<(String, Option<Bytes>)> = h.iter().map(|(k, v)| (k.clone(), v.clone().map(Bytes::from))).collect();
                    prop_assert_eq!(&r.headers, &expected);
                }
            }
        }

        #[test]
        fn corrupt_payloads_never_panic(records in proptest::collection::vec(arb_record(), 1..5), codec in 0usize..5, at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut b = BatchBuilder::new(ALL[codec]);
            for (ts, k, v, _) in &records {
                b.append(*ts, k.clone().map(Bytes::from), v.clone().map(Bytes::from));
            }
            let mut bytes = b.build().unwrap();
            // Corrupt the payload and re-seal the CRC so decoding actually reaches it.
            let at = BatchHeader::SIZE + at.index(bytes.len() - BatchHeader::SIZE);
            bytes[at] = byte;
            let crc = batch::compute_crc(&bytes).unwrap();
            bytes[batch::CRC_AT..batch::CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
            let _ = decode_records(&bytes);
        }
    }
}
