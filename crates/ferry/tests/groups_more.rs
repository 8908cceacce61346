//! More of the classic group protocol end to end: `auto.offset.reset`
//! earliest / latest / none, a kafka-python group of three members that reads
//! every record once, and bad group requests over a raw socket that get Kafka's
//! error codes while other groups carry on.
//!
//! Every wait is on a condition with a generous deadline, never on time alone.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::{
    ApiKey, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

const GROUP_DEADLINE: Duration = Duration::from_secs(45);
const INVALID_GROUP_ID: i16 = 24;
const UNKNOWN_MEMBER_ID: i16 = 25;
const INVALID_REQUEST: i16 = 42;

fn start_broker() -> Broker {
    Broker::start_with(&[
        "--set",
        "group.initial.rebalance.delay.ms=0",
        "--set",
        "group.min.session.timeout.ms=1000",
        "--set",
        "offsets.topic.num.partitions=10",
    ])
}

fn group_consumer(broker: &Broker, group: &str, topic: &str, reset: &str) -> BaseConsumer {
    let mut config = client_config(broker);
    config
        .set("group.id", group)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "300")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", reset)
        .set("fetch.wait.max.ms", "100");
    let c: BaseConsumer = config.create().expect("create group consumer");
    c.subscribe(&[topic]).expect("subscribe");
    c
}

fn assigned(c: &BaseConsumer) -> BTreeSet<i32> {
    c.assignment()
        .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

fn wait_assigned(c: &BaseConsumer, partitions: usize) {
    let start = Instant::now();
    while assigned(c).len() < partitions {
        let _ = c.poll(Duration::from_millis(50));
        assert!(start.elapsed() < GROUP_DEADLINE, "never assigned");
    }
}

fn values(broker: &Broker, topic: &str, partition: i32, tag: &str, n: usize) {
    let p = producer(broker, &[]);
    let recs: Vec<Rec> = (0..n)
        .map(|i| Rec::kv(&format!("k{i}"), &format!("{tag}-{i}")))
        .collect();
    send_all(&p, topic, Some(partition), &recs);
}

fn value_of(m: &rdkafka::message::BorrowedMessage<'_>) -> String {
    String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string()
}

// ---- auto.offset.reset -------------------------------------------------------------

#[test]
fn auto_offset_reset_earliest_reads_from_the_start() {
    let broker = start_broker();
    let topic = unique_topic("reset-earliest");
    create_topic(&broker, &topic, 1, &[]);
    values(&broker, &topic, 0, "old", 10);
    let c = group_consumer(&broker, "reset-earliest", &topic, "earliest");
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < 10 {
        assert!(start.elapsed() < GROUP_DEADLINE, "got only {got:?}");
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            got.push((m.offset(), value_of(&m)));
        }
    }
    let want: Vec<(i64, String)> = (0..10).map(|i| (i as i64, format!("old-{i}"))).collect();
    assert_eq!(got, want);
}

#[test]
fn auto_offset_reset_latest_skips_what_was_there_before() {
    let broker = start_broker();
    let topic = unique_topic("reset-latest");
    create_topic(&broker, &topic, 1, &[]);
    values(&broker, &topic, 0, "old", 10);
    let c = group_consumer(&broker, "reset-latest", &topic, "latest");
    wait_assigned(&c, 1);
    // Produce new records one at a time until one arrives: whatever the moment the
    // consumer resolved "latest", it must never see an old record.
    let producer = producer(&broker, &[]);
    let mut first = None;
    let start = Instant::now();
    for i in 0.. {
        assert!(start.elapsed() < GROUP_DEADLINE, "no new record arrived");
        send_all(
            &producer,
            &topic,
            Some(0),
            &[Rec::kv("k", &format!("new-{i}"))],
        );
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            first = Some((m.offset(), value_of(&m)));
            break;
        }
    }
    let (offset, value) = first.expect("a record");
    assert!(value.starts_with("new-"), "latest delivered {value}");
    assert!(offset >= 10, "latest started at offset {offset}");
}

#[test]
fn auto_offset_reset_none_is_an_error_without_a_committed_offset() {
    let broker = start_broker();
    let topic = unique_topic("reset-none");
    create_topic(&broker, &topic, 1, &[]);
    values(&broker, &topic, 0, "old", 10);

    // No committed offset: the consumer reports an error and no record.
    // librdkafka spells Kafka's `none` as `error`.
    let c = group_consumer(&broker, "reset-none", &topic, "error");
    let start = Instant::now();
    let error = loop {
        assert!(start.elapsed() < GROUP_DEADLINE, "no error reported");
        match c.poll(Duration::from_millis(100)) {
            Some(Err(e)) => break e,
            Some(Ok(m)) => panic!("auto.offset.reset=none delivered offset {}", m.offset()),
            None => {}
        }
    };
    assert!(
        error.to_string().to_lowercase().contains("offset"),
        "unexpected error: {error}"
    );
    drop(c);

    // With a committed offset, "none" starts there.
    let committer = consumer(&broker, &[("group.id", "reset-none-committed")]);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(7))
        .expect("offset");
    committer
        .commit(&tpl, CommitMode::Sync)
        .expect("commit offset 7");
    let c = group_consumer(&broker, "reset-none-committed", &topic, "error");
    let start = Instant::now();
    let first = loop {
        assert!(start.elapsed() < GROUP_DEADLINE, "nothing arrived");
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => break (m.offset(), value_of(&m)),
            Some(Err(e)) => panic!("error with a committed offset: {e}"),
            None => {}
        }
    };
    assert_eq!(first, (7, "old-7".to_string()));
}

// ---- kafka-python group -----------------------------------------------------------

struct PythonMember {
    child: Child,
    log: PythonLog,
    assigned: Arc<Mutex<Option<BTreeSet<i32>>>>,
    got: Arc<Mutex<Vec<String>>>,
}

impl PythonMember {
    fn start(broker: &Broker, topic: &str, group: &str) -> PythonMember {
        let log = PythonLog::new();
        let (log_var, log_path) = log.env();
        let mut child = Command::new(python())
            .env(log_var, log_path)
            .arg(python_script("groups_consume.py"))
            .arg(broker.bootstrap())
            .arg(topic)
            .arg(group)
            .arg("55")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a kafka-python member");
        let stdout = child.stdout.take().expect("stdout");
        let assigned: Arc<Mutex<Option<BTreeSet<i32>>>> = Arc::default();
        let got: Arc<Mutex<Vec<String>>> = Arc::default();
        {
            let (assigned, got) = (assigned.clone(), got.clone());
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                {
                    if let Some(parts) = line.strip_prefix("assigned") {
                        let set = parts
                            .trim()
                            .split(',')
                            .filter_map(|p| p.parse().ok())
                            .collect();
                        *assigned.lock().expect("lock") = Some(set);
                    } else if let Some(rest) = line.strip_prefix("got ") {
                        if let Some(value) = rest.splitn(3, ' ').nth(2) {
                            got.lock().expect("lock").push(value.to_string());
                        }
                    }
                }
            });
        }
        PythonMember {
            child,
            log,
            assigned,
            got,
        }
    }
}

impl Drop for PythonMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn three_kafka_python_members_consume_every_record_once() {
    let broker = start_broker();
    let topic = unique_topic("python-group");
    create_topic(&broker, &topic, 6, &[]);
    let members: Vec<PythonMember> = (0..3)
        .map(|_| PythonMember::start(&broker, &topic, "python-group"))
        .collect();
    // Wait for a stable group: the three assignments disjoint and complete.
    let ok = wait_until(GROUP_DEADLINE, || {
        let sets: Vec<Option<BTreeSet<i32>>> = members
            .iter()
            .map(|m| m.assigned.lock().expect("lock").clone())
            .collect();
        let Some(sets) = sets.into_iter().collect::<Option<Vec<_>>>() else {
            return false;
        };
        let total: usize = sets.iter().map(BTreeSet::len).sum();
        let union: BTreeSet<i32> = sets.iter().flatten().copied().collect();
        total == 6 && union.len() == 6 && sets.iter().all(|s| !s.is_empty())
    });
    if !ok {
        let seen: Vec<_> = members
            .iter()
            .map(|m| m.assigned.lock().expect("lock").clone())
            .collect();
        for (i, m) in members.iter().enumerate() {
            eprintln!(
                "--- kafka-python member {i}: last lines of its debug log ---\n{}",
                m.log.tail(150)
            );
        }
        panic!("the kafka-python group never balanced; the members' last assignments: {seen:?}");
    }

    let producer = producer(&broker, &[]);
    let mut sent = BTreeSet::new();
    for p in 0..6 {
        let recs: Vec<Rec> = (0..50)
            .map(|i| Rec::kv("k", &format!("p{p}-{i}")))
            .collect();
        sent.extend(
            recs.iter().map(|r| {
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).to_string()
            }),
        );
        send_all(&producer, &topic, Some(p), &recs);
    }
    let ok = wait_until(GROUP_DEADLINE, || {
        members
            .iter()
            .map(|m| m.got.lock().expect("lock").len())
            .sum::<usize>()
            >= sent.len()
    });
    assert!(ok, "not every record arrived");
    let mut all: Vec<String> = Vec::new();
    let mut per_member: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, m) in members.iter().enumerate() {
        let got = m.got.lock().expect("lock").clone();
        per_member.insert(i, got.len());
        all.extend(got);
    }
    assert_eq!(all.len(), sent.len(), "duplicates: {per_member:?}");
    assert_eq!(all.into_iter().collect::<BTreeSet<_>>(), sent);
    assert!(
        per_member.values().all(|n| *n > 0),
        "every member read its share: {per_member:?}"
    );
}

// ---- bad input over a raw socket -----------------------------------------------------

struct Raw {
    stream: TcpStream,
    correlation_id: i32,
}

impl Raw {
    fn connect(broker: &Broker) -> Raw {
        let stream = TcpStream::connect(broker.bootstrap()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Raw {
            stream,
            correlation_id: 0,
        }
    }

    fn call<Req: Encodable + HeaderVersion, Resp: Decodable + HeaderVersion>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Req,
    ) -> Resp {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("ferry-e2e-raw")));
        let mut buf = BytesMut::new();
        header
            .encode(&mut buf, Req::header_version(version))
            .expect("encode header");
        req.encode(&mut buf, version).expect("encode body");
        let mut frame = (buf.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&buf);
        self.stream.write_all(&frame).expect("write");
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).expect("response size");
        let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut body).expect("response body");
        let mut bytes = Bytes::from(body);
        let h = ResponseHeader::decode(&mut bytes, Resp::header_version(version)).expect("header");
        assert_eq!(h.correlation_id, self.correlation_id);
        Resp::decode(&mut bytes, version).expect("decode response")
    }

    fn join(&mut self, group: &str, metadata: Bytes) -> JoinGroupResponse {
        let req = JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(10_000)
            .with_member_id(StrBytes::from_static_str(""))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(metadata)]);
        self.call(ApiKey::JoinGroup, 5, &req)
    }

    fn heartbeat(&mut self, group: &str, member: &str, generation: i32) -> HeartbeatResponse {
        let req = HeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_generation_id(generation)
            .with_member_id(StrBytes::from_string(member.to_string()));
        self.call(ApiKey::Heartbeat, 3, &req)
    }
}

/// A `consumer` protocol subscription (v0) to `topic`.
fn subscription(topic: &str) -> Bytes {
    let mut b = Vec::new();
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&1i32.to_be_bytes());
    b.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    b.extend_from_slice(topic.as_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    Bytes::from(b)
}

#[test]
fn bad_group_requests_get_kafka_errors_and_other_groups_carry_on() {
    let broker = start_broker();
    let topic = unique_topic("bad-groups");
    create_topic(&broker, &topic, 2, &[]);
    // A healthy group, before and after.
    let healthy = group_consumer(&broker, "healthy", &topic, "earliest");
    wait_assigned(&healthy, 2);

    let mut raw = Raw::connect(&broker);
    // Empty group id.
    let r = raw.join("", subscription(&topic));
    assert_eq!(r.error_code, INVALID_GROUP_ID);
    let r = raw.heartbeat("", "m", 1);
    assert_eq!(r.error_code, INVALID_GROUP_ID);
    // Heartbeats from members nobody knows: in a group that does not exist and
    // in the healthy group.
    assert_eq!(
        raw.heartbeat("no-such-group", "nobody", 1).error_code,
        UNKNOWN_MEMBER_ID
    );
    assert_eq!(
        raw.heartbeat("healthy", "nobody", 1).error_code,
        UNKNOWN_MEMBER_ID
    );
    // Oversized member metadata (2 MiB).
    let r = raw.join("bad-big", Bytes::from(vec![7u8; 2 << 20]));
    assert_eq!(r.error_code, INVALID_REQUEST, "oversized metadata");
    // The connection is still usable and the broker still answers correctly.
    assert_eq!(
        raw.heartbeat("healthy", "nobody", 1).error_code,
        UNKNOWN_MEMBER_ID
    );

    // The healthy group kept its member and its partitions, and reads on.
    assert_eq!(assigned(&healthy).len(), 2);
    values(&broker, &topic, 0, "after", 5);
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < 5 {
        assert!(start.elapsed() < GROUP_DEADLINE, "got only {got:?}");
        if let Some(Ok(m)) = healthy.poll(Duration::from_millis(100)) {
            got.push(value_of(&m));
        }
    }
    assert_eq!(assigned(&healthy).len(), 2);
}
