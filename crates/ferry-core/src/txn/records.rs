//! The records of `__transaction_state`, in Kafka's own schemas so the topic reads
//! the same to Kafka's tools:
//!
//! ```text
//! key   TransactionLogKey v0:   version int16 = 0, transactionalId string
//! value TransactionLogValue v0: version int16 = 0, producerId int64, producerEpoch int16,
//!       transactionTimeoutMs int32, transactionStatus int8,
//!       transactionPartitions [topic string, partitionIds [int32]] (nullable),
//!       transactionLastUpdateTimestampMs int64, transactionStartTimestampMs int64
//! ```
//!
//! Non-flexible big-endian encoding; a null value is a tombstone.

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};

use super::state::{TxnMetadata, TxnState};
use crate::partition::TopicPartition;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed __transaction_state record: {0}")]
pub struct TxnRecordError(pub String);

pub fn encode_key(transactional_id: &str) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    put_string(&mut buf, transactional_id);
    buf.freeze()
}

pub fn decode_key(bytes: &[u8]) -> Result<String, TxnRecordError> {
    let mut r = Reader(bytes);
    let version = r.i16()?;
    if version != 0 {
        return Err(TxnRecordError(format!("unknown key version {version}")));
    }
    r.string()
}

pub fn encode_value(m: &TxnMetadata) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    buf.put_i64(m.producer_id);
    buf.put_i16(m.producer_epoch);
    buf.put_i32(m.timeout_ms);
    buf.put_i8(m.state.id());
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for tp in &m.partitions {
        match topics.last_mut() {
            Some((t, ps)) if *t == tp.topic => ps.push(tp.partition),
            _ => topics.push((&tp.topic, vec![tp.partition])),
        }
    }
    buf.put_i32(topics.len() as i32);
    for (topic, partitions) in topics {
        put_string(&mut buf, topic);
        buf.put_i32(partitions.len() as i32);
        for p in partitions {
            buf.put_i32(p);
        }
    }
    buf.put_i64(m.last_update_ms);
    buf.put_i64(m.start_ms);
    buf.freeze()
}

pub fn decode_value(transactional_id: &str, bytes: &[u8]) -> Result<TxnMetadata, TxnRecordError> {
    let mut r = Reader(bytes);
    let version = r.i16()?;
    if version != 0 {
        return Err(TxnRecordError(format!("unknown value version {version}")));
    }
    let producer_id = r.i64()?;
    let producer_epoch = r.i16()?;
    let timeout_ms = r.i32()?;
    let status = r.take(1)?[0] as i8;
    let state = TxnState::from_id(status)
        .ok_or_else(|| TxnRecordError(format!("unknown status {status}")))?;
    let mut partitions = BTreeSet::new();
    let topics = r.i32()?;
    for _ in 0..topics.max(0) {
        let topic = r.string()?;
        let count = r.i32()?;
        if count < 0 || count as usize > r.0.len() / 4 {
            return Err(TxnRecordError("bad partition count".into()));
        }
        for _ in 0..count {
            partitions.insert(TopicPartition::new(topic.clone(), r.i32()?));
        }
    }
    let last_update_ms = r.i64()?;
    let start_ms = r.i64()?;
    Ok(TxnMetadata {
        transactional_id: transactional_id.to_string(),
        producer_id,
        producer_epoch,
        timeout_ms,
        state,
        partitions,
        start_ms,
        last_update_ms,
    })
}

fn put_string(buf: &mut BytesMut, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(i16::MAX as usize)];
    buf.put_i16(bytes.len() as i16);
    buf.put_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TxnRecordError> {
        if self.0.len() < n {
            return Err(TxnRecordError("truncated".into()));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn i16(&mut self) -> Result<i16, TxnRecordError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32, TxnRecordError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i64(&mut self) -> Result<i64, TxnRecordError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    fn string(&mut self) -> Result<String, TxnRecordError> {
        let len = self.i16()?;
        if len < 0 {
            return Err(TxnRecordError("null string".into()));
        }
        let b = self.take(len as usize)?;
        String::from_utf8(b.to_vec()).map_err(|_| TxnRecordError("string is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let m = TxnMetadata {
            transactional_id: "tx".into(),
            producer_id: 42,
            producer_epoch: 3,
            timeout_ms: 60_000,
            state: TxnState::PrepareCommit,
            partitions: [
                TopicPartition::new("a", 0),
                TopicPartition::new("a", 2),
                TopicPartition::new("b", 1),
            ]
            .into_iter()
            .collect(),
            start_ms: 100,
            last_update_ms: 200,
        };
        assert_eq!(decode_key(&encode_key("tx")).expect("key"), "tx");
        assert_eq!(decode_value("tx", &encode_value(&m)).expect("value"), m);
        assert!(decode_value("tx", &encode_value(&m)[..10]).is_err());
    }
}
