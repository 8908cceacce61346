//! The records of `__consumer_offsets`, in Kafka's own key and value schemas, so
//! the topic reads the same to Kafka's tools as to ferry.
//!
//! ```text
//! key   version 0|1: OffsetCommitKey   group string, topic string, partition int32
//! key   version 2:   GroupMetadataKey  group string
//! value OffsetCommitValue v3:  offset int64, leaderEpoch int32, metadata string, commitTimestamp int64
//! value GroupMetadataValue v3: protocolType string, generation int32, protocol string?,
//!       leader string?, currentStateTimestamp int64, members [MemberMetadata]
//! ```
//!
//! Strings are int16-length-prefixed (-1: null), bytes int32-length-prefixed, all
//! big-endian: Kafka's non-flexible encoding. A null value is a tombstone. Decoding
//! accepts the older value versions Kafka wrote too (offset v0–v3, group v0–v3).

use bytes::{BufMut, Bytes, BytesMut};

/// Why a stored record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed __consumer_offsets record: {0}")]
pub struct RecordError(pub String);

/// What a record in `__consumer_offsets` is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKey {
    /// A committed offset of one partition.
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    /// A group's membership and generation.
    GroupMetadata { group: String },
    /// A consumer (KIP-848) group's membership: a ferry record kind, not one of
    /// Kafka's (see `consumer.rs`).
    ConsumerGroup { group: String },
}

/// OffsetCommitValue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitValue {
    pub offset: i64,
    /// -1: unknown.
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// Only in value v1: the old per-commit retention.
    pub expire_timestamp_ms: Option<i64>,
}

/// One member inside GroupMetadataValue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberMetadataValue {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    /// The member's metadata for the selected protocol.
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// GroupMetadataValue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadataValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// -1: unknown (values before v2).
    pub current_state_timestamp_ms: i64,
    pub members: Vec<MemberMetadataValue>,
}

const OFFSET_KEY_VERSION: i16 = 1;
const GROUP_KEY_VERSION: i16 = 2;
/// Key version of ferry's consumer group record: far above Kafka's own key
/// versions (0–2 classic, 3–16 newer group kinds), so the two never collide.
pub const CONSUMER_GROUP_KEY_VERSION: i16 = 1000;
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_VALUE_VERSION: i16 = 3;

impl RecordKey {
    pub fn group(&self) -> &str {
        match self {
            RecordKey::Offset { group, .. }
            | RecordKey::GroupMetadata { group }
            | RecordKey::ConsumerGroup { group } => group,
        }
    }

    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        match self {
            RecordKey::Offset {
                group,
                topic,
                partition,
            } => {
                buf.put_i16(OFFSET_KEY_VERSION);
                put_string(&mut buf, group);
                put_string(&mut buf, topic);
                buf.put_i32(*partition);
            }
            RecordKey::GroupMetadata { group } => {
                buf.put_i16(GROUP_KEY_VERSION);
                put_string(&mut buf, group);
            }
            RecordKey::ConsumerGroup { group } => {
                buf.put_i16(CONSUMER_GROUP_KEY_VERSION);
                put_string(&mut buf, group);
            }
        }
        buf.freeze()
    }

    pub fn decode(bytes: &[u8]) -> Result<RecordKey, RecordError> {
        let mut r = Reader(bytes);
        let version = r.i16()?;
        let key = match version {
            0 | 1 => RecordKey::Offset {
                group: r.string()?,
                topic: r.string()?,
                partition: r.i32()?,
            },
            2 => RecordKey::GroupMetadata { group: r.string()? },
            CONSUMER_GROUP_KEY_VERSION => RecordKey::ConsumerGroup { group: r.string()? },
            v => return Err(RecordError(format!("unknown key version {v}"))),
        };
        Ok(key)
    }
}

impl OffsetCommitValue {
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(24 + self.metadata.len());
        buf.put_i16(OFFSET_VALUE_VERSION);
        buf.put_i64(self.offset);
        buf.put_i32(self.leader_epoch);
        put_string(&mut buf, &self.metadata);
        buf.put_i64(self.commit_timestamp_ms);
        buf.freeze()
    }

    pub fn decode(bytes: &[u8]) -> Result<OffsetCommitValue, RecordError> {
        let mut r = Reader(bytes);
        let version = r.i16()?;
        let offset = r.i64()?;
        let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
        let metadata = r.string()?;
        let commit_timestamp_ms = r.i64()?;
        let expire_timestamp_ms = match version {
            0 => None,
            1 => Some(r.i64()?),
            2 | 3 => None,
            v => return Err(RecordError(format!("unknown offset value version {v}"))),
        };
        Ok(OffsetCommitValue {
            offset,
            leader_epoch,
            metadata,
            commit_timestamp_ms,
            expire_timestamp_ms,
        })
    }
}

impl GroupMetadataValue {
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        buf.put_i16(GROUP_VALUE_VERSION);
        put_string(&mut buf, &self.protocol_type);
        buf.put_i32(self.generation);
        put_nullable_string(&mut buf, self.protocol.as_deref());
        put_nullable_string(&mut buf, self.leader.as_deref());
        buf.put_i64(self.current_state_timestamp_ms);
        buf.put_i32(self.members.len() as i32);
        for m in &self.members {
            put_string(&mut buf, &m.member_id);
            put_nullable_string(&mut buf, m.group_instance_id.as_deref());
            put_string(&mut buf, &m.client_id);
            put_string(&mut buf, &m.client_host);
            buf.put_i32(m.rebalance_timeout_ms);
            buf.put_i32(m.session_timeout_ms);
            put_bytes(&mut buf, &m.subscription);
            put_bytes(&mut buf, &m.assignment);
        }
        buf.freeze()
    }

    pub fn decode(bytes: &[u8]) -> Result<GroupMetadataValue, RecordError> {
        let mut r = Reader(bytes);
        let version = r.i16()?;
        if !(0..=3).contains(&version) {
            return Err(RecordError(format!(
                "unknown group metadata value version {version}"
            )));
        }
        let protocol_type = r.string()?;
        let generation = r.i32()?;
        let protocol = r.nullable_string()?;
        let leader = r.nullable_string()?;
        let current_state_timestamp_ms = if version >= 2 { r.i64()? } else { -1 };
        let count = r.i32()?;
        // Every member takes at least 24 bytes; a count beyond that is corrupt.
        if count < 0 || count as usize > r.0.len() / 24 + 1 {
            return Err(RecordError(format!("member count {count}")));
        }
        let mut members = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let member_id = r.string()?;
            let group_instance_id = if version >= 3 {
                r.nullable_string()?
            } else {
                None
            };
            let client_id = r.string()?;
            let client_host = r.string()?;
            let rebalance_timeout_ms = if version >= 1 { r.i32()? } else { -1 };
            let session_timeout_ms = r.i32()?;
            let rebalance_timeout_ms = if version >= 1 {
                rebalance_timeout_ms
            } else {
                session_timeout_ms
            };
            let subscription = r.bytes()?;
            let assignment = r.bytes()?;
            members.push(MemberMetadataValue {
                member_id,
                group_instance_id,
                client_id,
                client_host,
                rebalance_timeout_ms,
                session_timeout_ms,
                subscription,
                assignment,
            });
        }
        Ok(GroupMetadataValue {
            protocol_type,
            generation,
            protocol,
            leader,
            current_state_timestamp_ms,
            members,
        })
    }
}

/// The `__consumer_offsets` partition of a group: Java's `String.hashCode`, made
/// non-negative as Kafka's `Utils.abs` does, modulo the partition count.
pub fn partition_for(group_id: &str, partitions: i32) -> i32 {
    let partitions = partitions.max(1);
    let hash = java_string_hash(group_id);
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions
}

/// Java's `String.hashCode`: over UTF-16 code units, wrapping.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

fn put_string(buf: &mut BytesMut, s: &str) {
    // Kafka's int16 length: longer strings are cut rather than wrapped into garbage.
    let bytes = &s.as_bytes()[..s.len().min(i16::MAX as usize)];
    buf.put_i16(bytes.len() as i16);
    buf.put_slice(bytes);
}

fn put_nullable_string(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        None => buf.put_i16(-1),
        Some(s) => put_string(buf, s),
    }
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_i32(b.len() as i32);
    buf.put_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError(format!(
                "truncated: wanted {n} bytes, {} left",
                self.0.len()
            )));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn i16(&mut self) -> Result<i16, RecordError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, RecordError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Result<i64, RecordError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    fn nullable_string(&mut self) -> Result<Option<String>, RecordError> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        let b = self.take(len as usize)?;
        String::from_utf8(b.to_vec())
            .map(Some)
            .map_err(|_| RecordError("string is not UTF-8".into()))
    }

    fn string(&mut self) -> Result<String, RecordError> {
        self.nullable_string()?
            .ok_or_else(|| RecordError("null where a string is required".into()))
    }

    fn bytes(&mut self) -> Result<Bytes, RecordError> {
        let len = self.i32()?;
        if len < 0 {
            return Ok(Bytes::new());
        }
        Ok(Bytes::copy_from_slice(self.take(len as usize)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_key_round_trip_and_layout() {
        let key = RecordKey::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 7,
        };
        let bytes = key.encode();
        assert_eq!(&bytes[..], &[0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 7]);
        assert_eq!(RecordKey::decode(&bytes), Ok(key));
    }

    #[test]
    fn group_key_round_trip() {
        let key = RecordKey::GroupMetadata {
            group: "my-group".into(),
        };
        let bytes = key.encode();
        assert_eq!(&bytes[..2], &[0, 2]);
        assert_eq!(RecordKey::decode(&bytes), Ok(key));
    }

    #[test]
    fn offset_value_round_trip() {
        let v = OffsetCommitValue {
            offset: 42,
            leader_epoch: 3,
            metadata: "meta".into(),
            commit_timestamp_ms: 1_700_000_000_000,
            expire_timestamp_ms: None,
        };
        let bytes = v.encode();
        assert_eq!(&bytes[..2], &[0, 3]);
        assert_eq!(bytes.len(), 2 + 8 + 4 + 2 + 4 + 8);
        assert_eq!(OffsetCommitValue::decode(&bytes), Ok(v));
    }

    #[test]
    fn offset_value_v1_with_expire_timestamp_decodes() {
        let mut buf = BytesMut::new();
        buf.put_i16(1);
        buf.put_i64(5);
        put_string(&mut buf, "");
        buf.put_i64(100);
        buf.put_i64(200);
        let v = OffsetCommitValue::decode(&buf).expect("v1 decodes");
        assert_eq!(v.offset, 5);
        assert_eq!(v.leader_epoch, -1);
        assert_eq!(v.expire_timestamp_ms, Some(200));
    }

    #[test]
    fn group_value_round_trip() {
        let v = GroupMetadataValue {
            protocol_type: "consumer".into(),
            generation: 9,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            current_state_timestamp_ms: 123,
            members: vec![
                MemberMetadataValue {
                    member_id: "m1".into(),
                    group_instance_id: Some("i1".into()),
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    rebalance_timeout_ms: 300_000,
                    session_timeout_ms: 45_000,
                    subscription: Bytes::from_static(b"sub"),
                    assignment: Bytes::from_static(b"asg"),
                },
                MemberMetadataValue {
                    member_id: "m2".into(),
                    group_instance_id: None,
                    client_id: "c2".into(),
                    client_host: "/127.0.0.2".into(),
                    rebalance_timeout_ms: 1,
                    session_timeout_ms: 2,
                    subscription: Bytes::new(),
                    assignment: Bytes::new(),
                },
            ],
        };
        assert_eq!(GroupMetadataValue::decode(&v.encode()), Ok(v));
    }

    #[test]
    fn empty_group_value_round_trip() {
        let v = GroupMetadataValue {
            protocol_type: String::new(),
            generation: 1,
            protocol: None,
            leader: None,
            current_state_timestamp_ms: 5,
            members: vec![],
        };
        assert_eq!(GroupMetadataValue::decode(&v.encode()), Ok(v));
    }

    #[test]
    fn truncated_and_garbage_records_are_errors_not_panics() {
        let v = GroupMetadataValue {
            protocol_type: "consumer".into(),
            generation: 1,
            protocol: Some("range".into()),
            leader: Some("m".into()),
            current_state_timestamp_ms: 5,
            members: vec![],
        }
        .encode();
        for cut in 0..v.len() {
            assert!(GroupMetadataValue::decode(&v[..cut]).is_err());
        }
        assert!(RecordKey::decode(&[0, 9, 0, 0]).is_err());
        assert!(GroupMetadataValue::decode(&[0, 3, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255]).is_err());
    }

    #[test]
    fn partition_for_matches_java() {
        // Values of Java's "...".hashCode().
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("hello"), 99_162_322);
        assert_eq!(java_string_hash("console-consumer-12345"), {
            let mut h = 0i32;
            for c in "console-consumer-12345".chars() {
                h = h.wrapping_mul(31).wrapping_add(c as i32);
            }
            h
        });
        assert_eq!(partition_for("hello", 50), 99_162_322 % 50);
        // "polygenelubricants".hashCode() == Integer.MIN_VALUE: Kafka's abs makes it 0.
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        for g in [
            "x",
            "group-1",
            "ünïcode",
            "a-very-long-group-name-for-testing",
        ] {
            let p = partition_for(g, 50);
            assert!((0..50).contains(&p));
        }
    }
}

#[cfg(test)]
mod round_trips {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._-]{0,40}"
    }

    fn member() -> impl Strategy<Value = MemberMetadataValue> {
        (
            (text(), proptest::option::of(text()), text(), text()),
            (any::<i32>(), any::<i32>()),
            (
                proptest::collection::vec(any::<u8>(), 0..64),
                proptest::collection::vec(any::<u8>(), 0..64),
            ),
        )
            .prop_map(
                |(
                    (member_id, group_instance_id, client_id, client_host),
                    (rebalance, session),
                    (s, a),
                )| {
                    MemberMetadataValue {
                        member_id,
                        group_instance_id,
                        client_id,
                        client_host,
                        rebalance_timeout_ms: rebalance,
                        session_timeout_ms: session,
                        subscription: Bytes::from(s),
                        assignment: Bytes::from(a),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn keys_round_trip(group in text(), topic in text(), partition in any::<i32>(), kind in 0..3u8) {
            let key = match kind {
                0 => RecordKey::Offset { group, topic, partition },
                1 => RecordKey::GroupMetadata { group },
                _ => RecordKey::ConsumerGroup { group },
            };
            prop_assert_eq!(RecordKey::decode(&key.encode()).expect("decode"), key);
        }

        #[test]
        fn offset_values_round_trip(offset in any::<i64>(), leader_epoch in any::<i32>(), metadata in text(), ts in any::<i64>()) {
            let value = OffsetCommitValue { offset, leader_epoch, metadata, commit_timestamp_ms: ts, expire_timestamp_ms: None };
            prop_assert_eq!(OffsetCommitValue::decode(&value.encode()).expect("decode"), value);
        }

        #[test]
        fn group_values_round_trip(
            protocol_type in text(),
            generation in any::<i32>(),
            protocol in proptest::option::of(text()),
            leader in proptest::option::of(text()),
            ts in any::<i64>(),
            members in proptest::collection::vec(member(), 0..5),
        ) {
            let value = GroupMetadataValue { protocol_type, generation, protocol, leader, current_state_timestamp_ms: ts, members };
            prop_assert_eq!(GroupMetadataValue::decode(&value.encode()).expect("decode"), value);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = RecordKey::decode(&bytes);
            let _ = OffsetCommitValue::decode(&bytes);
            let _ = GroupMetadataValue::decode(&bytes);
        }
    }
}
