//! Zigzag varints as Kafka encodes record fields (protobuf style: 7 bits per byte,
//! low group first, sign folded into bit 0).
//!
//! The decoder reads untrusted bytes, so it rejects encodings longer than the type
//! allows instead of silently wrapping.

use crate::batch::BatchError;

pub(crate) fn put_varint(out: &mut Vec<u8>, value: i32) {
    put_unsigned(out, u64::from(((value << 1) ^ (value >> 31)) as u32));
}

pub(crate) fn put_varlong(out: &mut Vec<u8>, value: i64) {
    put_unsigned(out, ((value << 1) ^ (value >> 63)) as u64);
}

fn put_unsigned(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Bytes `put_varint(value)` would write; lets the encoder size a record before
/// writing its length prefix.
pub(crate) fn varint_len(value: i32) -> usize {
    unsigned_len(u64::from(((value << 1) ^ (value >> 31)) as u32))
}

fn unsigned_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

/// A forward-only reader over record bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn read_unsigned(&mut self, max_bytes: usize) -> Result<u64, BatchError> {
        let mut value: u64 = 0;
        for i in 0..max_bytes {
            let byte = *self.buf.get(self.pos).ok_or(BatchError::Truncated)?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(BatchError::Invalid("varint is too long".into()))
    }

    pub(crate) fn varint(&mut self) -> Result<i32, BatchError> {
        let raw = self.read_unsigned(5)?;
        let raw = u32::try_from(raw)
            .map_err(|_| BatchError::Invalid("varint overflows 32 bits".into()))?;
        Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
    }

    pub(crate) fn varlong(&mut self) -> Result<i64, BatchError> {
        let raw = self.read_unsigned(10)?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    pub(crate) fn i8(&mut self) -> Result<i8, BatchError> {
        let byte = *self.buf.get(self.pos).ok_or(BatchError::Truncated)?;
        self.pos += 1;
        Ok(byte as i8)
    }

    /// The next `len` bytes as a range into the underlying buffer.
    pub(crate) fn range(&mut self, len: usize) -> Result<std::ops::Range<usize>, BatchError> {
        let end = self.pos.checked_add(len).ok_or(BatchError::Truncated)?;
        if end > self.buf.len() {
            return Err(BatchError::Truncated);
        }
        let range = self.pos..end;
        self.pos = end;
        Ok(range)
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Result<&'a [u8], BatchError> {
        let range = self.range(len)?;
        self.buf.get(range).ok_or(BatchError::Truncated)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        let mut out = Vec::new();
        put_varint(&mut out, 0);
        put_varint(&mut out, -1);
        put_varint(&mut out, 1);
        put_varint(&mut out, 64);
        assert_eq!(out, vec![0, 1, 2, 0x80, 1]);
    }

    #[test]
    fn overlong_encodings_are_rejected() {
        assert!(Reader::new(&[0xff; 6]).varint().is_err());
        assert!(Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x7f])
            .varint()
            .is_err());
        assert!(Reader::new(&[0xff; 11]).varlong().is_err());
        assert_eq!(Reader::new(&[0x80]).varint(), Err(BatchError::Truncated));
    }

    proptest! {
        #[test]
        fn round_trip(a in any::<i32>(), b in any::<i64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, a);
            prop_assert_eq!(out.len(), varint_len(a));
            put_varlong(&mut out, b);
            let mut r = Reader::new(&out);
            prop_assert_eq!(r.varint().unwrap(), a);
            prop_assert_eq!(r.varlong().unwrap(), b);
            prop_assert!(r.is_empty());
        }
    }
}
