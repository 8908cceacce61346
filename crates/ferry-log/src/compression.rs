//! The record payload codecs Kafka batches use, with Kafka's framing quirks.
//!
//! - gzip: a gzip stream (possibly several members, as Java's `GZIPInputStream` accepts).
//! - snappy: Kafka's own clients and librdkafka write raw snappy, but the Java client
//!   writes xerial's framed format (`\x82SNAPPY\0` header, then length-prefixed raw
//!   blocks). Both are decoded; we encode the xerial framing because that is what the
//!   reference client produces and every client reads it.
//! - lz4: the LZ4 *frame* format with independent 64 KiB blocks, the only layout
//!   Kafka's `KafkaLZ4BlockInputStream` reads.
//! - zstd: a plain zstd frame.
//!
//! Decompression is bounded by a caller-supplied limit so a tiny batch cannot expand
//! into gigabytes (a "zip bomb" is just another malformed batch).

use std::io::{Read, Write};

use crate::batch::{BatchError, Compression};

/// Most bytes one batch's records may decompress to.
pub const DECOMPRESSED_BYTES_MAX: usize = 128 << 20;

const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;
/// Uncompressed bytes per xerial block, snappy-java's default.
const XERIAL_BLOCK_BYTES: usize = 32 * 1024;

fn corrupt(codec: &str, e: impl std::fmt::Display) -> BatchError {
    BatchError::Invalid(format!("corrupt {codec} records: {e}"))
}

fn too_large(limit: usize) -> BatchError {
    BatchError::Invalid(format!("records decompress to more than {limit} bytes"))
}

/// Compresses a records payload with `codec` (`None` copies it).
pub fn compress(codec: Compression, data: &[u8]) -> Result<Vec<u8>, BatchError> {
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(data).map_err(|e| corrupt("gzip", e))?;
            encoder.finish().map_err(|e| corrupt("gzip", e))
        }
        Compression::Snappy => xerial_encode(data),
        Compression::Lz4 => {
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut encoder = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
            encoder.write_all(data).map_err(|e| corrupt("lz4", e))?;
            encoder.finish().map_err(|e| corrupt("lz4", e))
        }
        Compression::Zstd => zstd::stream::encode_all(data, 0).map_err(|e| corrupt("zstd", e)),
    }
}

/// Decompresses a records payload, failing if it would exceed `limit` bytes.
pub fn decompress(codec: Compression, data: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    match codec {
        Compression::None => {
            if data.len() > limit {
                return Err(too_large(limit));
            }
            Ok(data.to_vec())
        }
        Compression::Gzip => read_bounded("gzip", flate2::read::MultiGzDecoder::new(data), limit),
        Compression::Snappy => {
            if data.starts_with(XERIAL_MAGIC) {
                xerial_decode(data, limit)
            } else {
                snappy_raw_decode(data, limit)
            }
        }
        Compression::Lz4 => read_bounded("lz4", lz4_flex::frame::FrameDecoder::new(data), limit),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(data).map_err(|e| corrupt("zstd", e))?;
            read_bounded("zstd", decoder, limit)
        }
    }
}

fn read_bounded(codec: &str, reader: impl Read, limit: usize) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(codec, e))?;
    if out.len() > limit {
        return Err(too_large(limit));
    }
    Ok(out)
}

fn snappy_raw_decode(data: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let len = snap::raw::decompress_len(data).map_err(|e| corrupt("snappy", e))?;
    if len > limit {
        return Err(too_large(limit));
    }
    snap::raw::Decoder::new()
        .decompress_vec(data)
        .map_err(|e| corrupt("snappy", e))
}

fn xerial_encode(data: &[u8]) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::with_capacity(XERIAL_HEADER_LEN + data.len() / 2);
    out.extend_from_slice(XERIAL_MAGIC);
    out.extend_from_slice(&1i32.to_be_bytes()); // version
    out.extend_from_slice(&1i32.to_be_bytes()); // minimum compatible version
    let mut encoder = snap::raw::Encoder::new();
    for chunk in data.chunks(XERIAL_BLOCK_BYTES) {
        let block = encoder
            .compress_vec(chunk)
            .map_err(|e| corrupt("snappy", e))?;
        let len = i32::try_from(block.len()).map_err(|e| corrupt("snappy", e))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&block);
    }
    Ok(out)
}

fn xerial_decode(data: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let mut rest = data
        .get(XERIAL_HEADER_LEN..)
        .ok_or_else(|| corrupt("snappy", "short xerial header"))?;
    let mut out = Vec::new();
    let mut decoder = snap::raw::Decoder::new();
    while !rest.is_empty() {
        let len_bytes: [u8; 4] = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| corrupt("snappy", "truncated xerial block length"))?;
        let len = usize::try_from(i32::from_be_bytes(len_bytes))
            .map_err(|_| corrupt("snappy", "negative xerial block length"))?;
        let block = rest
            .get(4..4usize.saturating_add(len))
            .ok_or_else(|| corrupt("snappy", "truncated xerial block"))?;
        let block_len = snap::raw::decompress_len(block).map_err(|e| corrupt("snappy", e))?;
        if out.len().saturating_add(block_len) > limit {
            return Err(too_large(limit));
        }
        out.extend(
            decoder
                .decompress_vec(block)
                .map_err(|e| corrupt("snappy", e))?,
        );
        rest = rest.get(4 + len..).unwrap_or(&[]);
    }
    Ok(out)
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

    #[test]
    fn snappy_raw_and_xerial_both_decode() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_be_bytes())
            .collect();
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(
            decompress(Compression::Snappy, &raw, usize::MAX).unwrap(),
            data
        );
        let framed = compress(Compression::Snappy, &data).unwrap();
        assert!(framed.starts_with(XERIAL_MAGIC));
        assert_eq!(
            decompress(Compression::Snappy, &framed, usize::MAX).unwrap(),
            data
        );
    }

    #[test]
    fn decompression_is_bounded() {
        let zeros = vec![0u8; 1 << 20];
        for codec in ALL {
            let packed = compress(codec, &zeros).unwrap();
            assert!(decompress(codec, &packed, 1000).is_err(), "{codec:?}");
            assert_eq!(
                decompress(codec, &packed, zeros.len()).unwrap().len(),
                zeros.len()
            );
        }
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..5000)) {
            for codec in ALL {
                let packed = compress(codec, &data).unwrap();
                prop_assert_eq!(&decompress(codec, &packed, usize::MAX).unwrap(), &data);
            }
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            for codec in ALL {
                let _ = decompress(codec, &data, 1 << 20);
            }
            let mut xerial = XERIAL_MAGIC.to_vec();
            xerial.extend_from_slice(&data);
            let _ = decompress(Compression::Snappy, &xerial, 1 << 20);
        }
    }
}
