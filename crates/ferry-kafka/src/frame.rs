//! Request frames: a 4-byte big-endian length, then the request. A frame is only
//! parsed once it is complete and its length is within the limit.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a connection is closed instead of answered.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {size} bytes exceeds socket.request.max.bytes {max}")]
    TooLarge { size: i64, max: usize },
    #[error("frame of {0} bytes is too short for a request header")]
    TooShort(i64),
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("malformed request header: {0}")]
    BadHeader(String),
    #[error("connection closed")]
    Closed,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one whole frame (without its length prefix) once `memory` has room for
/// it; the permit travels with the frame. `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    frame_bytes_max: usize,
    memory: &Arc<Semaphore>,
) -> Result<Option<(BytesMut, OwnedSemaphorePermit)>, FrameError> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let size = i64::from(i32::from_be_bytes(len));
    // api key (2) + version (2) + correlation id (4) + client id length (2)
    if size < 10 {
        return Err(FrameError::TooShort(size));
    }
    if size as u64 > frame_bytes_max as u64 {
        return Err(FrameError::TooLarge {
            size,
            max: frame_bytes_max,
        });
    }
    let permit = memory
        .clone()
        .acquire_many_owned(size as u32)
        .await
        .map_err(|_| FrameError::Closed)?;
    // Read into spare capacity: zeroing the buffer first would touch every byte twice.
    let size = size as usize;
    let mut buf = BytesMut::with_capacity(size);
    while buf.len() < size {
        let remaining = (size - buf.len()) as u64;
        let n = (&mut *reader).take(remaining).read_buf(&mut buf).await?;
        if n == 0 {
            return Err(FrameError::Closed);
        }
    }
    Ok(Some((buf, permit)))
}

/// The parts of a request header needed before the body is decoded.
#[derive(Debug, Clone)]
pub struct ParsedHeader {
    pub api_key: ApiKey,
    pub api_version: i16,
    pub header: RequestHeader,
}

/// Decodes the request header; the frame is left holding the body.
pub fn parse_header(frame: &mut Bytes) -> Result<ParsedHeader, FrameError> {
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let api_version = i16::from_be_bytes([frame[2], frame[3]]);
    let api_key = ApiKey::try_from(raw_key).map_err(|_| FrameError::UnknownApiKey(raw_key))?;
    // Unknown versions still have a parseable header: use the highest header
    // version the key knows when the requested version is past its range.
    let range = api_key.valid_versions();
    let header_version = api_key.request_header_version(api_version.clamp(range.min, range.max));
    let header = RequestHeader::decode(frame, header_version)
        .map_err(|e| FrameError::BadHeader(e.to_string()))?;
    Ok(ParsedHeader {
        api_key,
        api_version,
        header,
    })
}

/// Encodes a response frame: length, response header, body.
pub fn encode_response<R: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    header.encode(&mut buf, api_key.response_header_version(version))?;
    body.encode(&mut buf, version)?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// Decodes a request body of a known type and version.
pub fn decode_body<T: Decodable>(body: &mut Bytes, version: i16) -> anyhow::Result<T> {
    T::decode(body, version)
}
