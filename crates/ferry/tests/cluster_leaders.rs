//! Preferred leaders on three `ferry serve` processes that all vote in the
//! metadata quorum: a broker killed with SIGKILL loses its leaderships, and once
//! it is back in sync it leads its preferred partition again, on an
//! ElectLeaders request or by the controller's automatic rebalancing.

mod cluster_support;
mod reliability;

use std::collections::BTreeMap;

use cluster_support::*;
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::{
    ApiKey, ElectLeadersRequest, ElectLeadersResponse, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, HeaderVersion, StrBytes};
use reliability::*;

const TOPIC: &str = "preferred";
const PARTITIONS: i32 = 3;
const ELECTION_NOT_NEEDED: i16 = 84;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

/// The preferred replica (the first assigned) of each partition of `TOPIC`.
fn preferred_replicas(addr: &str) -> Vec<i32> {
    let metadata = raw_metadata(addr, &[TOPIC]).expect("metadata");
    let topic = metadata
        .topics
        .iter()
        .find(|t| t.error_code == 0)
        .expect("the topic");
    let mut partitions: Vec<(i32, i32)> = topic
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.replica_nodes[0].0))
        .collect();
    partitions.sort_unstable();
    partitions.into_iter().map(|(_, r)| r).collect()
}

/// An ElectLeaders request (v2) to the broker at `addr`: the error code of each
/// asked partition of `TOPIC`.
fn elect_leaders(addr: &str, election_type: i8, partitions: &[i32]) -> BTreeMap<i32, i16> {
    const VERSION: i16 = 2;
    let request = ElectLeadersRequest::default()
        .with_election_type(election_type)
        .with_topic_partitions(Some(vec![TopicPartitions::default()
            .with_topic(TopicName(StrBytes::from_static_str(TOPIC)))
            .with_partitions(partitions.to_vec())]))
        .with_timeout_ms(30_000);
    let mut stream = connect(addr);
    std::io::Write::write_all(
        &mut stream,
        &encode_request(ApiKey::ElectLeaders, VERSION, 7, &request),
    )
    .expect("send ElectLeaders");
    let frame = read_frame(&mut stream).expect("an ElectLeaders answer");
    let mut buf = bytes::Bytes::from(frame);
    let header = ResponseHeader::decode(&mut buf, ElectLeadersResponse::header_version(VERSION))
        .expect("header");
    assert_eq!(header.correlation_id, 7);
    let response = ElectLeadersResponse::decode(&mut buf, VERSION).expect("response");
    assert_eq!(response.error_code, 0, "ElectLeaders: {response:?}");
    response
        .replica_election_results
        .iter()
        .filter(|t| t.topic.0.as_str() == TOPIC)
        .flat_map(|t| {
            t.partition_result
                .iter()
                .map(|p| (p.partition_id, p.error_code))
        })
        .collect()
}

/// Creates `TOPIC` (RF=3, each broker the preferred leader of one partition),
/// SIGKILLs the preferred leader of partition 0, waits until another replica
/// leads it, restarts the broker and waits until it is back in the ISR. Returns
/// that broker, which does not lead partition 0 at that point.
fn lose_and_regain(nodes: &mut Cluster) -> i32 {
    let bootstrap = nodes.bootstrap();
    create_replicated_topic(&bootstrap, TOPIC, PARTITIONS);
    let preferred = preferred_replicas(&nodes.nodes[&1].addr);
    let mut sorted = preferred.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [1, 2, 3], "each broker is preferred once");
    for (partition, &replica) in preferred.iter().enumerate() {
        wait_for(
            &bootstrap,
            TOPIC,
            partition as i32,
            "the preferred replica leading a full ISR",
            |l, isr| l == replica && isr.len() == 3,
        );
    }
    let victim = preferred[0];
    nodes.node(victim).kill9();
    wait_for(&bootstrap, TOPIC, 0, "another replica leading", |l, isr| {
        l >= 0 && l != victim && !isr.contains(&victim)
    });
    nodes.node(victim).restart();
    wait_for(
        &bootstrap,
        TOPIC,
        0,
        "the restarted broker back in the ISR",
        |_, isr| isr.contains(&victim),
    );
    victim
}

/// ElectLeaders PREFERRED gives the partition back to the returned broker; asked
/// again, there is nothing to do.
#[test]
fn elect_leaders_returns_leadership_to_the_preferred_replica() {
    let mut nodes = Cluster::start_with(3, &["--set", "auto.leader.rebalance.enable=false"]);
    let victim = lose_and_regain(&mut nodes);
    let bootstrap = nodes.bootstrap();
    let (leader, _) = leader_and_isr(&bootstrap, TOPIC, 0).expect("partition 0");
    assert_ne!(leader, victim, "no automatic rebalancing here");

    let addr = nodes.nodes[&victim].addr.clone();
    let answer = elect_leaders(&addr, 0, &[0, 1, 2, 99]);
    assert_eq!(
        answer,
        BTreeMap::from([
            (0, 0),
            (1, ELECTION_NOT_NEEDED),
            (2, ELECTION_NOT_NEEDED),
            (99, UNKNOWN_TOPIC_OR_PARTITION),
        ]),
        "ElectLeaders answer per partition"
    );
    wait_for(
        &bootstrap,
        TOPIC,
        0,
        "the preferred replica leading again",
        |l, isr| l == victim && isr.len() == 3,
    );
    // Once it leads, there is nothing left to elect.
    let other = nodes
        .nodes
        .keys()
        .copied()
        .find(|id| *id != victim)
        .expect("another broker");
    let again = elect_leaders(&nodes.nodes[&other].addr.clone(), 0, &[0]);
    assert_eq!(again, BTreeMap::from([(0, ELECTION_NOT_NEEDED)]));
    // Nothing to elect uncleanly either: every partition has a leader.
    let unclean = elect_leaders(&addr, 1, &[0, 1, 2]);
    assert!(
        unclean.values().all(|code| *code == ELECTION_NOT_NEEDED),
        "unclean election with leaders: {unclean:?}"
    );
}

/// With a short `leader.imbalance.check.interval.seconds`, the controller gives
/// the partition back to the returned broker without any request.
#[test]
fn automatic_rebalancing_returns_leadership_to_the_preferred_replica() {
    let mut nodes = Cluster::start_with(3, &["--set", "leader.imbalance.check.interval.seconds=1"]);
    let victim = lose_and_regain(&mut nodes);
    let bootstrap = nodes.bootstrap();
    wait_for(
        &bootstrap,
        TOPIC,
        0,
        "the preferred replica leading again on its own",
        |l, isr| l == victim && isr.len() == 3,
    );
}
