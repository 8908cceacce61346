//! Frames of the controller listener, checked for completeness before parsing.
//!
//! ```text
//!   [total u32 BE][header_len u32 BE][header: JSON][attachment: raw bytes]
//!    └ bytes after this field: 4 + header_len + attachment length, at most FRAME_BYTES_MAX
//! ```
//!
//! The attachment carries snapshot data as raw bytes, where JSON would spell
//! every byte as a number.

use std::io;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted or sent.
pub(crate) const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Encodes `header` and `attachment` into one frame.
pub(crate) fn encode<T: Serialize>(header: &T, attachment: &[u8]) -> io::Result<Vec<u8>> {
    let json = serde_json::to_vec(header).map_err(io::Error::other)?;
    let total = 4 + json.len() + attachment.len();
    if total > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {total} bytes exceeds {FRAME_BYTES_MAX}"),
        ));
    }
    let mut buf = Vec::with_capacity(4 + total);
    buf.extend_from_slice(&(total as u32).to_be_bytes());
    buf.extend_from_slice(&(json.len() as u32).to_be_bytes());
    buf.extend_from_slice(&json);
    buf.extend_from_slice(attachment);
    Ok(buf)
}

/// Splits a frame body (everything after the total length) into header and
/// attachment, and decodes the header.
pub(crate) fn decode<T: DeserializeOwned>(mut body: Vec<u8>) -> io::Result<(T, Vec<u8>)> {
    let Some(len_bytes) = body.get(..4) else {
        return Err(invalid("frame shorter than its header length"));
    };
    let header_len =
        u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
    let end = 4usize.saturating_add(header_len);
    let Some(json) = body.get(4..end) else {
        return Err(invalid("frame header runs past the frame"));
    };
    let header =
        serde_json::from_slice(json).map_err(|e| invalid(format!("bad frame header: {e}")))?;
    let attachment = body.split_off(end);
    Ok((header, attachment))
}

/// Writes one frame.
pub(crate) async fn write_frame<W, T>(w: &mut W, header: &T, attachment: &[u8]) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let buf = encode(header, attachment)?;
    w.write_all(&buf).await?;
    w.flush().await
}

/// Reads one frame; `Ok(None)` when the peer closed the connection between frames.
pub(crate) async fn read_frame<R, T>(r: &mut R) -> io::Result<Option<(T, Vec<u8>)>>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let total = u32::from_be_bytes(len) as usize;
    if total > FRAME_BYTES_MAX {
        return Err(invalid(format!(
            "frame of {total} bytes exceeds {FRAME_BYTES_MAX}"
        )));
    }
    // Grow with the bytes that actually arrive instead of trusting the length
    // with an allocation up front.
    let mut body = Vec::with_capacity(total.min(64 * 1024));
    (&mut *r).take(total as u64).read_to_end(&mut body).await?;
    if body.len() != total {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed inside a frame",
        ));
    }
    decode(body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let buf = encode(&("hello", 7u32), b"raw").expect("encode");
        let mut r = &buf[..];
        let (header, attachment): ((String, u32), Vec<u8>) =
            read_frame(&mut r).await.expect("read").expect("a frame");
        assert_eq!(header, ("hello".to_string(), 7));
        assert_eq!(attachment, b"raw");
        let none: Option<((String, u32), Vec<u8>)> = read_frame(&mut r).await.expect("eof");
        assert!(none.is_none());
    }

    #[tokio::test]
    async fn bad_frames_are_errors_not_panics() {
        let cases: Vec<Vec<u8>> = vec![
            vec![0xff, 0xff, 0xff, 0xff],
            vec![0, 0, 0, 2, 1, 2],
            vec![0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff],
            vec![0, 0, 0, 6, 0, 0, 0, 2, b'{', b'x'],
            vec![0, 0, 0, 9, 0, 0],
        ];
        for case in cases {
            let mut r = &case[..];
            let res: io::Result<Option<(u32, Vec<u8>)>> = read_frame(&mut r).await;
            assert!(res.is_err(), "{case:?} should be rejected");
        }
    }
}
