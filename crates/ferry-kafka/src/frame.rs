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
    #[error("frame body did not arrive in time")]
    TooSlow,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Bytes read per call while a frame body arrives.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Reading time a frame body may take, not counting time spent waiting for the
/// memory budget: a client that sends a partial frame and stalls, or one that
/// dribbles bytes, gives back its memory after this.
const BODY_READ_TIME_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads one whole frame (without its length prefix) within the broker-wide
/// request memory budget `memory`; the permit travels with the frame. `Ok(None)` at
/// a clean end of stream.
///
/// Memory is reserved as bytes arrive, not for the size a client announces, so a
/// client that announces a large frame and sends one byte per second holds only
/// the bytes it sent. When the budget has no room for the next chunk the reader
/// hands back what it holds and waits (first come, first served) for the whole
/// frame at once. Every frame body has [`BODY_READ_TIME_MAX`] of reading time, so
/// frames that hold part of the budget and stall give it back. While a reader
/// waits for memory it does not read: the client's sends stall (back-pressure).
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
    let size = size as usize;
    let closed = |_| FrameError::Closed;
    let mut permit = memory.clone().acquire_many_owned(0).await.map_err(closed)?;
    let mut whole = false;
    let mut read_time_left = BODY_READ_TIME_MAX;
    let mut buf = BytesMut::with_capacity(size.min(READ_CHUNK_BYTES));
    let mut chunk = vec![0u8; size.min(READ_CHUNK_BYTES)];
    while buf.len() < size {
        let want = (size - buf.len()).min(chunk.len());
        if !whole {
            match memory.clone().try_acquire_many_owned(want as u32) {
                Ok(more) => permit.merge(more),
                Err(tokio::sync::TryAcquireError::Closed) => return Err(FrameError::Closed),
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    drop(permit);
                    permit = memory
                        .clone()
                        .acquire_many_owned(size as u32)
                        .await
                        .map_err(closed)?;
                    whole = true;
                }
            }
        }
        let started = tokio::time::Instant::now();
        let n = tokio::time::timeout(read_time_left, reader.read(&mut chunk[..want]))
            .await
            .map_err(|_| FrameError::TooSlow)??;
        read_time_left = read_time_left.saturating_sub(started.elapsed());
        if n == 0 {
            return Err(FrameError::Closed);
        }
        if !whole && n < want {
            // Give back what was reserved for bytes that did not come.
            drop(permit.split(want - n));
        }
        buf.extend_from_slice(&chunk[..n]);
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
    if frame.len() < 4 {
        return Err(FrameError::TooShort(frame.len() as i64));
    }
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
