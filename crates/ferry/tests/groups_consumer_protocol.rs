//! The consumer group protocol of KIP-848 end to end: librdkafka with
//! `group.protocol=consumer` joins through ConsumerGroupHeartbeat, the broker
//! assigns partitions (uniform assignor), members added and removed rebalance,
//! and commits (checked against the member epoch) survive a broker restart.
//!
//! The broker runs with a short consumer heartbeat interval so reconciliation
//! takes a few hundred milliseconds; every wait is on a condition with a
//! generous deadline, never on time alone.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use kafka_protocol::messages::{
    ApiKey, ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse,
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, GroupId, ListGroupsRequest,
    ListGroupsResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

const GROUP_DEADLINE: Duration = Duration::from_secs(45);

fn start_broker() -> Broker {
    Broker::start_with(&[
        "--set",
        "group.initial.rebalance.delay.ms=0",
        "--set",
        "group.consumer.heartbeat.interval.ms=200",
        "--set",
        "group.consumer.session.timeout.ms=10000",
        "--set",
        "offsets.topic.num.partitions=10",
    ])
}

/// A librdkafka consumer that uses the KIP-848 protocol.
fn member(broker: &Broker, group: &str, topic: &str) -> BaseConsumer {
    let mut config = client_config(broker);
    config
        .set("group.id", group)
        .set("group.protocol", "consumer")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100");
    let consumer: BaseConsumer = config.create().expect("create KIP-848 consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

fn assigned(c: &BaseConsumer) -> BTreeSet<i32> {
    c.assignment()
        .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

/// Polls every consumer until their assignments are disjoint, cover all
/// `partitions` and none is empty.
fn wait_balanced(consumers: &[&BaseConsumer], partitions: i32) -> Vec<BTreeSet<i32>> {
    let start = Instant::now();
    loop {
        for c in consumers {
            let _ = c.poll(Duration::from_millis(50));
        }
        let sets: Vec<BTreeSet<i32>> = consumers.iter().map(|c| assigned(c)).collect();
        let total: usize = sets.iter().map(BTreeSet::len).sum();
        let union: BTreeSet<i32> = sets.iter().flatten().copied().collect();
        if total == partitions as usize
            && union.len() == partitions as usize
            && sets.iter().all(|s| !s.is_empty())
        {
            return sets;
        }
        assert!(
            start.elapsed() < GROUP_DEADLINE,
            "assignments never balanced: {sets:?}"
        );
    }
}

/// Polls every consumer until `want` records arrived in total; returns each
/// one's (partition, offset, value).
fn poll_all(consumers: &[&BaseConsumer], want: usize) -> Vec<Vec<(i32, i64, String)>> {
    let mut got: Vec<Vec<(i32, i64, String)>> = vec![Vec::new(); consumers.len()];
    let start = Instant::now();
    while got.iter().map(Vec::len).sum::<usize>() < want {
        assert!(
            start.elapsed() < GROUP_DEADLINE,
            "only {} of {want} records arrived",
            got.iter().map(Vec::len).sum::<usize>()
        );
        for (i, c) in consumers.iter().enumerate() {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
                got[i].push((m.partition(), m.offset(), value));
            }
        }
    }
    got
}

fn produce(broker: &Broker, topic: &str, partitions: i32, range: std::ops::Range<usize>) {
    let producer = producer(broker, &[]);
    for p in 0..partitions {
        let recs: Vec<Rec> = range
            .clone()
            .filter(|i| (*i as i32) % partitions == p)
            .map(|i| Rec::kv(&format!("k{i}"), &format!("v-{i}")))
            .collect();
        send_all(&producer, topic, Some(p), &recs);
    }
}

// ---- raw requests, for what rdkafka does not expose ------------------------------

fn raw_request<Req: Encodable + HeaderVersion, Resp: Decodable + HeaderVersion>(
    broker: &Broker,
    key: ApiKey,
    version: i16,
    req: &Req,
) -> Resp {
    let mut stream = TcpStream::connect(broker.bootstrap()).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("ferry-e2e-raw")));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, Req::header_version(version))
        .expect("encode header");
    req.encode(&mut buf, version).expect("encode body");
    let mut frame = (buf.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&buf);
    stream.write_all(&frame).expect("write");
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).expect("response size");
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).expect("response body");
    let mut bytes = bytes::Bytes::from(body);
    let _ = ResponseHeader::decode(&mut bytes, Resp::header_version(version)).expect("header");
    Resp::decode(&mut bytes, version).expect("decode response")
}

fn describe(broker: &Broker, group: &str) -> ConsumerGroupDescribeResponse {
    raw_request(
        broker,
        ApiKey::ConsumerGroupDescribe,
        0,
        &ConsumerGroupDescribeRequest::default()
            .with_group_ids(vec![GroupId(StrBytes::from_string(group.to_string()))]),
    )
}

fn group_type(broker: &Broker, group: &str) -> Option<String> {
    let resp: ListGroupsResponse =
        raw_request(broker, ApiKey::ListGroups, 5, &ListGroupsRequest::default());
    resp.groups
        .iter()
        .find(|g| g.group_id.0.as_str() == group)
        .map(|g| g.group_type.to_string())
}

// ---- tests -----------------------------------------------------------------------

#[test]
fn members_get_a_disjoint_complete_assignment_and_read_every_record_once() {
    let broker = start_broker();
    let topic = unique_topic("kip848-share");
    create_topic(&broker, &topic, 6, &[]);
    let consumers: Vec<BaseConsumer> = (0..3)
        .map(|_| member(&broker, "kip848-share", &topic))
        .collect();
    let refs: Vec<&BaseConsumer> = consumers.iter().collect();
    let sets = wait_balanced(&refs, 6);
    assert!(
        sets.iter().all(|s| s.len() == 2),
        "uniform over 6 partitions and 3 members: {sets:?}"
    );

    produce(&broker, &topic, 6, 0..300);
    let got = poll_all(&refs, 300);
    let values: Vec<&String> = got.iter().flatten().map(|(_, _, v)| v).collect();
    let unique: BTreeSet<&String> = values.iter().copied().collect();
    assert_eq!(values.len(), 300, "every record exactly once");
    assert_eq!(unique.len(), 300);
    for (i, records) in got.iter().enumerate() {
        assert!(records.iter().all(|(p, _, _)| sets[i].contains(p)));
    }

    let d = describe(&broker, "kip848-share");
    let g = &d.groups[0];
    assert_eq!(g.error_code, 0);
    assert_eq!(g.group_state.as_str(), "Stable");
    assert_eq!(g.assignor_name.as_str(), "uniform");
    assert_eq!(g.members.len(), 3);
    assert_eq!(
        group_type(&broker, "kip848-share").as_deref(),
        Some("consumer")
    );
}

#[test]
fn adding_and_removing_a_member_rebalances() {
    let broker = start_broker();
    let topic = unique_topic("kip848-scale");
    create_topic(&broker, &topic, 6, &[]);
    let a = member(&broker, "kip848-scale", &topic);
    let b = member(&broker, "kip848-scale", &topic);
    wait_balanced(&[&a, &b], 6);

    let c = member(&broker, "kip848-scale", &topic);
    let sets = wait_balanced(&[&a, &b, &c], 6);
    assert!(sets.iter().all(|s| s.len() == 2), "{sets:?}");

    // c leaves (close sends a heartbeat with member epoch -1).
    c.unsubscribe();
    for _ in 0..20 {
        let _ = c.poll(Duration::from_millis(50));
    }
    drop(c);
    let sets = wait_balanced(&[&a, &b], 6);
    assert!(sets.iter().all(|s| s.len() == 3), "{sets:?}");

    // Records produced now reach the two remaining members, once each.
    produce(&broker, &topic, 6, 0..120);
    let got = poll_all(&[&a, &b], 120);
    let unique: BTreeSet<&String> = got.iter().flatten().map(|(_, _, v)| v).collect();
    assert_eq!(unique.len(), 120);
}

#[test]
fn commits_work_and_survive_a_broker_restart() {
    let mut broker = start_broker();
    let topic = unique_topic("kip848-commit");
    create_topic(&broker, &topic, 3, &[]);
    produce(&broker, &topic, 3, 0..90);
    {
        let c = member(&broker, "kip848-commit", &topic);
        let got = poll_all(&[&c], 90);
        assert_eq!(got[0].len(), 90);
        // Commit the consumed positions: librdkafka sends OffsetCommit v9 with
        // its member epoch, which the broker checks.
        let start = Instant::now();
        loop {
            match c.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => break,
                Err(e) => {
                    assert!(start.elapsed() < GROUP_DEADLINE, "commit failed: {e}");
                    let _ = c.poll(Duration::from_millis(100));
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition(&topic, p);
        }
        let committed = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("OffsetFetch");
        for e in committed.elements() {
            assert_eq!(
                e.offset(),
                Offset::Offset(30),
                "partition {}",
                e.partition()
            );
        }
        c.unsubscribe();
        for _ in 0..10 {
            let _ = c.poll(Duration::from_millis(50));
        }
    }

    broker.restart();
    produce(&broker, &topic, 3, 90..120);
    let c = member(&broker, "kip848-commit", &topic);
    let got = poll_all(&[&c], 30);
    let mut values: Vec<String> = got[0].iter().map(|(_, _, v)| v.clone()).collect();
    values.sort();
    let mut want: Vec<String> = (90..120).map(|i| format!("v-{i}")).collect();
    want.sort();
    assert_eq!(
        values, want,
        "resumed after the committed offsets, nothing more"
    );
    // Nothing else arrives.
    for _ in 0..10 {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            panic!("unexpected redelivery at offset {}", m.offset());
        }
    }
}

fn heartbeat(
    broker: &Broker,
    req: ConsumerGroupHeartbeatRequest,
) -> ConsumerGroupHeartbeatResponse {
    raw_request(broker, ApiKey::ConsumerGroupHeartbeat, 1, &req)
}

fn join_request(group: &str, member: &str, topic: &str) -> ConsumerGroupHeartbeatRequest {
    ConsumerGroupHeartbeatRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_member_id(StrBytes::from_string(member.to_string()))
        .with_member_epoch(0)
        .with_rebalance_timeout_ms(30_000)
        .with_subscribed_topic_names(Some(vec![TopicName(StrBytes::from_string(
            topic.to_string(),
        ))]))
        .with_topic_partitions(Some(Vec::new()))
}

#[test]
fn bad_heartbeats_get_kafka_errors_and_other_groups_carry_on() {
    const INVALID_REQUEST: i16 = 42;
    const UNKNOWN_MEMBER_ID: i16 = 25;
    const GROUP_ID_NOT_FOUND: i16 = 69;
    const FENCED_MEMBER_EPOCH: i16 = 110;
    const UNSUPPORTED_ASSIGNOR: i16 = 112;
    let broker = start_broker();
    let topic = unique_topic("kip848-bad");
    create_topic(&broker, &topic, 2, &[]);
    let healthy = member(&broker, "kip848-healthy", &topic);
    wait_balanced(&[&healthy], 2);

    // A member of its own group, joined by hand.
    let joined = heartbeat(&broker, join_request("kip848-raw", "raw-member", &topic));
    assert_eq!(joined.error_code, 0);
    assert!(joined.member_epoch > 0);
    assert_eq!(
        joined.member_id.as_ref().map(|m| m.as_str()),
        Some("raw-member")
    );
    assert_eq!(joined.heartbeat_interval_ms, 200);

    let r = heartbeat(&broker, join_request("", "m", &topic));
    assert_eq!(r.error_code, INVALID_REQUEST, "empty group id");
    let r = heartbeat(
        &broker,
        join_request("kip848-raw", "m2", &topic)
            .with_server_assignor(Some(StrBytes::from_static_str("no-such-assignor"))),
    );
    assert_eq!(r.error_code, UNSUPPORTED_ASSIGNOR);
    let r = heartbeat(
        &broker,
        join_request("kip848-raw", "m3", &topic).with_rebalance_timeout_ms(-1),
    );
    assert_eq!(
        r.error_code, INVALID_REQUEST,
        "first heartbeat without a rebalance timeout"
    );
    let r = heartbeat(
        &broker,
        join_request("kip848-raw", "nobody", &topic)
            .with_member_epoch(3)
            .with_topic_partitions(None),
    );
    assert_eq!(r.error_code, UNKNOWN_MEMBER_ID);
    let r = heartbeat(
        &broker,
        join_request("kip848-raw", "raw-member", &topic)
            .with_member_epoch(joined.member_epoch + 5)
            .with_topic_partitions(None),
    );
    assert_eq!(r.error_code, FENCED_MEMBER_EPOCH);
    let r = heartbeat(
        &broker,
        join_request("kip848-no-group", "x", &topic)
            .with_member_epoch(1)
            .with_topic_partitions(None),
    );
    assert_eq!(
        r.error_code, UNKNOWN_MEMBER_ID,
        "a heartbeat to a group that does not exist"
    );
    let d = describe(&broker, "kip848-no-group");
    assert_eq!(d.groups[0].error_code, GROUP_ID_NOT_FOUND);

    // The member leaves; the healthy group still owns both partitions and reads.
    let left = heartbeat(
        &broker,
        join_request("kip848-raw", "raw-member", &topic)
            .with_member_epoch(-1)
            .with_topic_partitions(None),
    );
    assert_eq!((left.error_code, left.member_epoch), (0, -1));
    assert_eq!(assigned(&healthy).len(), 2);
    produce(&broker, &topic, 2, 0..10);
    let got = poll_all(&[&healthy], 10);
    assert_eq!(got[0].len(), 10);
}
