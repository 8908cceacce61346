//! Hostile or broken input over a raw TCP connection. Valid parts are encoded
//! with the `kafka-protocol` crate; the broken part is made by hand. After
//! each case another client still works and earlier data is intact.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::produce_response::ProduceResponse;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use rdkafka::Offset;

const UNSUPPORTED_VERSION: i16 = 35;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const CORRUPT_MESSAGE: i16 = 2;

fn connect(broker: &Broker) -> TcpStream {
    let stream = TcpStream::connect(broker.bootstrap()).expect("connect to broker");
    stream
        .set_read_timeout(Some(OP_DEADLINE))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(OP_DEADLINE))
        .expect("write timeout");
    stream
}

/// Writes one size-prefixed frame.
fn send_frame(stream: &mut TcpStream, body: &[u8]) {
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    stream.write_all(&frame).expect("write frame");
}

/// Reads one size-prefixed frame; None when the broker closed the connection.
fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if is_closed(&e) => return None,
        Err(e) => panic!("reading a response failed: {e}"),
    }
    let len = i32::from_be_bytes(len);
    assert!(
        (0..=64 * 1024 * 1024).contains(&len),
        "implausible response size {len}"
    );
    let mut body = vec![0u8; len as usize];
    match stream.read_exact(&mut body) {
        Ok(()) => Some(body),
        Err(e) if is_closed(&e) => None,
        Err(e) => panic!("reading a response body failed: {e}"),
    }
}

fn is_closed(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
    )
}

/// Asserts the broker closes the connection (EOF or reset) within the
/// deadline, discarding anything it sends first.
fn assert_closed(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    for _ in 0..10_000 {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if is_closed(&e) => return,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("broker kept the connection open after {what}")
            }
            Err(e) => panic!("unexpected error after {what}: {e}"),
        }
    }
    panic!("broker kept sending data after {what}");
}

fn encode_request<R: Encodable + HeaderVersion>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    request: &R,
) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("ferry-e2e-raw")));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, R::header_version(version))
        .expect("encode request header");
    request
        .encode(&mut buf, version)
        .expect("encode request body");
    buf.to_vec()
}

/// ApiVersions v0 round trip: the broker's (api_key, min, max) list.
fn api_versions(stream: &mut TcpStream) -> Vec<(i16, i16, i16)> {
    let body = encode_request(ApiKey::ApiVersions, 0, 7, &ApiVersionsRequest::default());
    send_frame(stream, &body);
    let frame = read_frame(stream).expect("ApiVersions response");
    let mut buf = Bytes::from(frame);
    let header = ResponseHeader::decode(&mut buf, 0).expect("response header");
    assert_eq!(header.correlation_id, 7);
    let response = ApiVersionsResponse::decode(&mut buf, 0).expect("ApiVersions v0 body");
    assert_eq!(response.error_code, 0, "ApiVersions v0 error");
    response
        .api_keys
        .iter()
        .map(|k| (k.api_key, k.min_version, k.max_version))
        .collect()
}

/// A valid RecordBatch v2 with `n` small records.
fn record_batch(n: usize) -> BytesMut {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: now_ms(),
            key: Some(Bytes::from(format!("raw-key-{i}"))),
            value: Some(Bytes::from(format!("raw-value-{i}"))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode record batch");
    buf
}

/// The Produce version to use: the highest both sides know, capped at 9.
fn produce_version(stream: &mut TcpStream) -> i16 {
    let versions = api_versions(stream);
    let (_, min, max) = *versions
        .iter()
        .find(|(key, _, _)| *key == ApiKey::Produce as i16)
        .expect("broker supports Produce");
    let version = max.min(9);
    assert!(
        version >= min.max(3),
        "no common Produce version (broker {min}..={max})"
    );
    version
}

fn produce_request(topic: &str, partition: i32, acks: i16, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])])
}

/// Sends a Produce (acks=all) with `records` to `topic`/0; returns the
/// partition's error code.
fn produce_raw(broker: &Broker, topic: &str, records: Bytes) -> i16 {
    produce_raw_to(broker, topic, 0, records)
}

fn produce_raw_to(broker: &Broker, topic: &str, partition: i32, records: Bytes) -> i16 {
    let mut stream = connect(broker);
    let version = produce_version(&mut stream);
    let request = produce_request(topic, partition, -1, records);
    let body = encode_request(ApiKey::Produce, version, 11, &request);
    send_frame(&mut stream, &body);
    let frame = read_frame(&mut stream).expect("Produce response (connection was closed)");
    let mut buf = Bytes::from(frame);
    let header = ResponseHeader::decode(&mut buf, ProduceResponse::header_version(version))
        .expect("response header");
    assert_eq!(header.correlation_id, 11);
    let response = ProduceResponse::decode(&mut buf, version).expect("Produce response body");
    let topic_response = response.responses.first().expect("one topic in response");
    let partition = topic_response
        .partition_responses
        .first()
        .expect("one partition in response");
    partition.error_code
}

/// Data written before a bad request, checked again afterwards.
struct Witness {
    topic: String,
    recs: Vec<Rec>,
}

impl Witness {
    fn write(broker: &Broker) -> Witness {
        let topic = unique_topic("witness");
        create_topic(broker, &topic, 1, &[]);
        let producer = producer(broker, &[]);
        let recs: Vec<Rec> = (0..10)
            .map(|i| Rec::kv(&format!("w{i}"), &format!("intact-{i}")))
            .collect();
        send_all(&producer, &topic, Some(0), &recs);
        Witness { topic, recs }
    }

    /// A new client can still produce and read, and the earlier data is
    /// unchanged.
    fn check(&self, broker: &Broker) {
        let mut stream = connect(broker);
        assert!(
            !api_versions(&mut stream).is_empty(),
            "ApiVersions after bad input"
        );
        let producer = producer(broker, &[]);
        let more = Rec::kv("after", "bad input");
        let d =
            send(&producer, &self.topic, Some(0), None, &more).expect("produce after bad input");
        assert_eq!(d.offset, self.recs.len() as i64);
        let mut want = self.recs.clone();
        want.push(more);
        assert_eq!(
            recs_of(&read_all(broker, &self.topic, 0, Offset::Beginning)),
            want
        );
    }
}

#[test]
fn oversized_frame_closes_connection() {
    let broker = Broker::start();
    let witness = Witness::write(&broker);
    // Just over the default socket.request.max.bytes (104857600).
    let mut stream = connect(&broker);
    stream
        .write_all(&(104_857_601i32).to_be_bytes())
        .expect("write length");
    stream.write_all(&[0u8; 64]).expect("write a little body");
    assert_closed(&mut stream, "a frame length over socket.request.max.bytes");
    // The largest possible length.
    let mut stream = connect(&broker);
    stream
        .write_all(&i32::MAX.to_be_bytes())
        .expect("write length");
    assert_closed(&mut stream, "a frame length of i32::MAX");
    // A negative length.
    let mut stream = connect(&broker);
    stream
        .write_all(&(-1i32).to_be_bytes())
        .expect("write length");
    assert_closed(&mut stream, "a negative frame length");
    witness.check(&broker);
}

#[test]
fn smaller_configured_request_limit_is_enforced() {
    let broker = Broker::start_with(&["--set", "socket.request.max.bytes=1048576"]);
    let witness = Witness::write(&broker);
    let mut stream = connect(&broker);
    stream
        .write_all(&(2 * 1_048_576i32).to_be_bytes())
        .expect("write length");
    stream.write_all(&[0u8; 1024]).expect("write a little body");
    assert_closed(
        &mut stream,
        "a frame over the configured socket.request.max.bytes",
    );
    witness.check(&broker);
}

#[test]
fn garbage_bytes_close_connection() {
    let broker = Broker::start();
    let witness = Witness::write(&broker);
    // An HTTP request: its first four bytes read as a huge length.
    let mut stream = connect(&broker);
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write garbage");
    assert_closed(&mut stream, "an HTTP request");
    // A well-sized frame whose content is not a request header.
    let mut stream = connect(&broker);
    send_frame(&mut stream, &[0xff; 3]);
    assert_closed(&mut stream, "a 3-byte frame");
    witness.check(&broker);
}

#[test]
fn unknown_api_key_does_not_break_the_broker() {
    let broker = Broker::start();
    let witness = Witness::write(&broker);
    let mut stream = connect(&broker);
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(9_999)
        .with_request_api_version(0)
        .with_correlation_id(42)
        .encode(&mut body, 1)
        .expect("encode header");
    body.extend_from_slice(&[0u8; 8]);
    send_frame(&mut stream, &body);
    // Kafka closes the connection; an error response for correlation id 42
    // is acceptable too. Either way the broker keeps serving.
    if let Some(frame) = read_frame(&mut stream) {
        let mut buf = Bytes::from(frame);
        let header = ResponseHeader::decode(&mut buf, 0).expect("response header");
        assert_eq!(header.correlation_id, 42);
    }
    witness.check(&broker);
}

#[test]
fn unsupported_api_versions_version_gets_unsupported_version_error() {
    let broker = Broker::start();
    let witness = Witness::write(&broker);
    let mut stream = connect(&broker);
    let mut body = BytesMut::new();
    // A future ApiVersions version uses the flexible header (v2).
    RequestHeader::default()
        .with_request_api_key(ApiKey::ApiVersions as i16)
        .with_request_api_version(999)
        .with_correlation_id(99)
        .with_client_id(Some(StrBytes::from_static_str("ferry-e2e-raw")))
        .encode(&mut body, 2)
        .expect("encode header");
    body.extend_from_slice(&[0u8; 1]); // empty tagged fields of the body
    send_frame(&mut stream, &body);
    let frame =
        read_frame(&mut stream).expect("ApiVersions error response (connection was closed)");
    let mut buf = Bytes::from(frame);
    let header = ResponseHeader::decode(&mut buf, 0).expect("response header v0");
    assert_eq!(header.correlation_id, 99);
    // The answer is a v0 response so any client can read it.
    let response = ApiVersionsResponse::decode(&mut buf, 0).expect("ApiVersions v0 body");
    assert_eq!(response.error_code, UNSUPPORTED_VERSION);
    let own = response
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::ApiVersions as i16)
        .expect("the error response lists ApiVersions' own range");
    assert!(
        own.min_version == 0 && own.max_version >= 3,
        "ApiVersions range {own:?}"
    );
    // The same connection goes on with a supported version.
    assert!(!api_versions(&mut stream).is_empty());
    witness.check(&broker);
}

#[test]
fn produce_to_invalid_topic_name_is_invalid_topic_exception() {
    let broker = Broker::start();
    let witness = Witness::write(&broker);
    for bad in ["bad name", "..", "has/slash"] {
        let code = produce_raw(&broker, bad, record_batch(1).freeze());
        assert_eq!(code, INVALID_TOPIC_EXCEPTION, "produce to {bad:?}");
        assert_eq!(partition_count(&broker, bad), None, "{bad:?} was created");
    }
    witness.check(&broker);
}

#[test]
fn flipped_crc_byte_is_corrupt_message() {
    let broker = Broker::start();
    let witness = Witness::write(&broker);
    let topic = unique_topic("crc");
    create_topic(&broker, &topic, 1, &[]);

    // The control: the same batch unmodified is accepted.
    let good = record_batch(3);
    assert_eq!(
        produce_raw(&broker, &topic, good.clone().freeze()),
        0,
        "valid raw batch"
    );

    // Batch layout: baseOffset(8) length(4) leaderEpoch(4) magic(1) crc(4).
    let mut bad_crc = good.clone();
    bad_crc[17] ^= 0x5a;
    assert_eq!(
        produce_raw(&broker, &topic, bad_crc.freeze()),
        CORRUPT_MESSAGE,
        "flipped CRC byte"
    );

    // A flipped payload byte (last byte of the last record) also breaks the CRC.
    let mut bad_payload = good.clone();
    let last = bad_payload.len() - 1;
    bad_payload[last] ^= 0x01;
    assert_eq!(
        produce_raw(&broker, &topic, bad_payload.freeze()),
        CORRUPT_MESSAGE,
        "flipped payload byte"
    );

    // Only the valid batch is in the log.
    assert_eq!(watermarks(&broker, &topic, 0).1, 3);
    let read = read_all(&broker, &topic, 0, Offset::Beginning);
    let keys: Vec<Vec<u8>> = read.iter().filter_map(|m| Rec::of(m).key).collect();
    assert_eq!(
        keys,
        vec![
            b"raw-key-0".to_vec(),
            b"raw-key-1".to_vec(),
            b"raw-key-2".to_vec()
        ]
    );
    witness.check(&broker);
}

#[test]
fn many_bad_connections_then_normal_service() {
    let broker = Broker::start();
    let witness = Witness::write(&broker);
    for i in 0..50u32 {
        let mut stream = connect(&broker);
        let junk: Vec<u8> = (0..64).map(|j| (i * 31 + j * 7) as u8).collect();
        let _ = stream.write_all(&junk);
        // Drop without reading: the broker must clean up on its own.
    }
    // Half-open: a length prefix and then nothing; the broker must not stall others.
    let mut idle = connect(&broker);
    idle.write_all(&100i32.to_be_bytes()).expect("write length");
    idle.set_read_timeout(Some(Duration::from_millis(10)))
        .expect("timeout");
    witness.check(&broker);
    drop(idle);
}

#[test]
fn produce_to_missing_partition_is_unknown_topic_or_partition() {
    const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    let broker = Broker::start();
    let witness = Witness::write(&broker);
    let code = produce_raw_to(&broker, &witness.topic, 7, record_batch(1).freeze());
    assert_eq!(
        code, UNKNOWN_TOPIC_OR_PARTITION,
        "produce to partition 7 of a 1-partition topic"
    );
    witness.check(&broker);
}

#[test]
fn acks_zero_produce_gets_no_response() {
    let broker = Broker::start();
    let witness = Witness::write(&broker);
    let mut stream = connect(&broker);
    let version = produce_version(&mut stream);
    let request = produce_request(&witness.topic, 0, 0, record_batch(2).freeze());
    send_frame(
        &mut stream,
        &encode_request(ApiKey::Produce, version, 21, &request),
    );
    // The next frame on this connection answers the next request, not the
    // acks=0 produce (Kafka sends nothing for acks=0).
    assert!(!api_versions(&mut stream).is_empty());
    let landed = wait_until(OP_DEADLINE, || {
        watermarks(&broker, &witness.topic, 0).1 == 12
    });
    assert!(
        landed,
        "acks=0 batch not appended: {:?}",
        watermarks(&broker, &witness.topic, 0)
    );
    let read = read_all(&broker, &witness.topic, 0, Offset::Offset(10));
    let keys: Vec<Vec<u8>> = read.iter().filter_map(|m| Rec::of(m).key).collect();
    assert_eq!(keys, vec![b"raw-key-0".to_vec(), b"raw-key-1".to_vec()]);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let broker = Broker::start();
    let mut stream = connect(&broker);
    // Three requests in one write; the answers come back in request order.
    let mut bytes = Vec::new();
    for correlation_id in [101, 102, 103] {
        let body = encode_request(
            ApiKey::ApiVersions,
            0,
            correlation_id,
            &ApiVersionsRequest::default(),
        );
        bytes.extend_from_slice(&(body.len() as i32).to_be_bytes());
        bytes.extend_from_slice(&body);
    }
    stream.write_all(&bytes).expect("write pipelined requests");
    for correlation_id in [101, 102, 103] {
        let frame = read_frame(&mut stream).expect("response");
        let mut buf = Bytes::from(frame);
        let header = ResponseHeader::decode(&mut buf, 0).expect("response header");
        assert_eq!(header.correlation_id, correlation_id);
    }
}
