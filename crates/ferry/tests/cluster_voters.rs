//! Changing the metadata quorum's voters on running `ferry serve` processes
//! (KIP-853's dynamic quorum), as an operator does it with the CLI: a cluster
//! formed by one voter grows to three voters by promoting its learners
//! (`ferry cluster add-voter`), survives the death of the original voter, and
//! shrinks again (`ferry cluster remove-voter`). The Kafka APIs answer bad
//! requests with Kafka's error codes.

mod cluster_support;
mod reliability;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_support::*;
use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
use kafka_protocol::messages::{
    AddRaftVoterRequest, AddRaftVoterResponse, ApiKey, DescribeQuorumRequest,
    DescribeQuorumResponse, RemoveRaftVoterRequest, RemoveRaftVoterResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::producer::{BaseRecord, Producer};
use serde_json::Value;

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const REQUEST_TIMED_OUT: i16 = 7;
const INVALID_REQUEST: i16 = 42;
const INCONSISTENT_CLUSTER_ID: i16 = 104;
const DUPLICATE_VOTER: i16 = 126;
const VOTER_NOT_FOUND: i16 = 127;

fn add_voter_code(addr: &str, voter: i32, timeout_ms: i32, cluster_id: Option<&str>) -> i16 {
    let request = AddRaftVoterRequest::default()
        .with_voter_id(voter)
        .with_timeout_ms(timeout_ms)
        .with_cluster_id(cluster_id.map(|c| StrBytes::from_string(c.to_string())));
    let response: AddRaftVoterResponse = call(addr, ApiKey::AddRaftVoter, 0, &request);
    response.error_code
}

fn remove_voter_code(addr: &str, voter: i32) -> i16 {
    let request = RemoveRaftVoterRequest::default().with_voter_id(voter);
    let response: RemoveRaftVoterResponse = call(addr, ApiKey::RemoveRaftVoter, 0, &request);
    response.error_code
}

/// `ferry cluster quorum`: (leader, voters, learners, the whole answer).
fn quorum(bootstrap: &str) -> Option<(i64, Vec<i64>, Vec<i64>, Value)> {
    let (ok, out, _) = cli(bootstrap, &["cluster", "quorum"]);
    if !ok {
        return None;
    }
    let v: Value = serde_json::from_str(&out).ok()?;
    let ids = |key: &str| -> Vec<i64> {
        let mut ids: Vec<i64> = v[key]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["node_id"].as_i64()).collect())
            .unwrap_or_default();
        ids.sort();
        ids
    };
    Some((v["leader_id"].as_i64()?, ids("voters"), ids("learners"), v))
}

/// Waits until `ferry cluster quorum` shows `voters` and `learners`.
fn wait_for_quorum(bootstrap: &str, voters: &[i64], learners: &[i64]) -> (i64, Value) {
    let end = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < end {
        if let Some((leader, v, l, all)) = quorum(bootstrap) {
            if v == voters && l == learners {
                return (leader, all);
            }
            last = Some(all);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("waited for voters {voters:?} and learners {learners:?}; last answer: {last:?}");
}

#[test]
fn learners_become_voters_the_first_voter_dies_and_is_removed() {
    let mut cluster = Cluster::start(1);
    let bootstrap = cluster.bootstrap();
    let addr2 = cluster.node(2).addr.clone();

    // Formed by node 1 alone; 2 and 3 receive the metadata log as learners.
    let (leader, all) = wait_for_quorum(&bootstrap, &[1], &[2, 3]);
    assert_eq!(leader, 1);
    assert!(all["high_watermark"].as_i64().unwrap_or(0) > 0, "{all}");
    for member in [&all["voters"][0], &all["learners"][0]] {
        assert!(
            member["addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:")),
            "{all}"
        );
    }

    // Bad requests, answered by any broker with Kafka's codes.
    assert_eq!(add_voter_code(&addr2, 1, 1000, None), DUPLICATE_VOTER);
    assert_eq!(add_voter_code(&addr2, 9, 500, None), REQUEST_TIMED_OUT);
    assert_eq!(
        add_voter_code(&addr2, 2, 1000, Some("not-this-cluster")),
        INCONSISTENT_CLUSTER_ID
    );
    assert_eq!(remove_voter_code(&addr2, 9), VOTER_NOT_FOUND);
    assert_eq!(
        remove_voter_code(&addr2, 1),
        INVALID_REQUEST,
        "the only voter"
    );
    let describe_other: DescribeQuorumResponse = call(
        &addr2,
        ApiKey::DescribeQuorum,
        0,
        &DescribeQuorumRequest::default().with_topics(vec![TopicData::default()
            .with_topic_name(TopicName(StrBytes::from_static_str("other")))
            .with_partitions(vec![PartitionData::default()])]),
    );
    assert_eq!(describe_other.error_code, UNKNOWN_TOPIC_OR_PARTITION);
    let (ok, _, err) = cli(&bootstrap, &["cluster", "add-voter", "1"]);
    assert!(!ok && err.contains("voter"), "add-voter 1: {err}");

    // Promoted with the CLI.
    for id in ["2", "3"] {
        let (ok, out, err) = cli(&bootstrap, &["cluster", "add-voter", id]);
        assert!(ok, "add-voter {id}: {out} {err}");
    }
    wait_for_quorum(&bootstrap, &[1, 2, 3], &[]);

    // The voter the cluster was formed with dies; the two others are a majority.
    cluster.node(1).kill9();
    let controller = cluster.wait_for_controller("a controller among 2 and 3", |id| id != 1);
    assert!(controller == 2 || controller == 3);
    let live = cluster.live_bootstrap();
    create_topic_everywhere(&live, "after-voter-loss", 2, 2, &[]);
    let acks = Arc::new(Acks::default());
    let producer = producer(&live, "all", acks.clone());
    for i in 0..50 {
        let value = format!("v{i}");
        producer
            .send(BaseRecord::<(), str>::to("after-voter-loss").payload(&value))
            .map_err(|(e, _)| e)
            .expect("enqueue");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    let acked = acks.acked.lock().expect("acks").len();
    assert_eq!(acked, 50, "every record acknowledged without node 1");

    // It is removed for good (it stays a learner, as every broker receives the
    // metadata log); removing it twice is refused.
    let (ok, out, err) = cli(&live, &["cluster", "remove-voter", "1"]);
    assert!(ok, "remove-voter 1: {out} {err}");
    let (ok, _, err) = cli(&live, &["cluster", "remove-voter", "1"]);
    assert!(!ok && err.contains("voter"), "remove-voter 1 again: {err}");
    let (leader, _) = wait_for_quorum(&live, &[2, 3], &[1]);

    // Restarted with its original flags (it was the only configured voter), node
    // 1 comes back as a learner and catches up, and the leader stays.
    cluster.node(1).restart();
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (now_leader, all) = wait_for_quorum(&cluster.bootstrap(), &[2, 3], &[1]);
        assert_eq!(now_leader, leader, "the leader changed: {all}");
        let hw = all["high_watermark"].as_i64().unwrap_or(0);
        let end1 = all["learners"][0]["log_end_offset"].as_i64().unwrap_or(-1);
        if end1 >= hw && hw > 0 {
            break;
        }
        assert!(Instant::now() < end, "node 1 never caught up: {all}");
        std::thread::sleep(Duration::from_millis(300));
    }
    cluster.wait_for_brokers(3);
}
