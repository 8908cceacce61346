//! ElectLeaders: an admin has the active controller move leaderships, to the
//! preferred replica (type 0, the only one in v0) or, for a partition without a
//! leader, to any live replica (type 1, unclean). Answered per partition once
//! the new leaders are committed.

use ferry_core::cluster::{ElectError, ELECTION_PREFERRED, ELECTION_UNCLEAN};
use ferry_core::TopicPartition;
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::dispatch::RequestContext;
use crate::errors::{error_code, error_message};

/// Most partitions elected in one request.
const PARTITIONS_MAX: usize = 100_000;

pub async fn handle(
    ctx: &RequestContext,
    version: i16,
    req: ElectLeadersRequest,
) -> ElectLeadersResponse {
    let election_type = if version == 0 {
        ELECTION_PREFERRED
    } else {
        req.election_type
    };
    if election_type != ELECTION_PREFERRED && election_type != ELECTION_UNCLEAN {
        return ElectLeadersResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code());
    }
    let partitions: Option<Vec<TopicPartition>> = req.topic_partitions.map(|topics| {
        topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| TopicPartition::new(t.topic.0.as_str(), *p))
            })
            .take(PARTITIONS_MAX)
            .collect()
    });
    // Asked for every partition, the answer names only those something
    // happened to (as Kafka's controller does).
    let every_partition = partitions.is_none();
    let mut results: Vec<ReplicaElectionResult> = Vec::new();
    let mut add = |tp: TopicPartition, error: i16, message: Option<StrBytes>| {
        let partition = PartitionResult::default()
            .with_partition_id(tp.partition)
            .with_error_code(error)
            .with_error_message(message);
        match results.iter_mut().find(|t| t.topic.0.as_str() == tp.topic) {
            Some(t) => t.partition_result.push(partition),
            None => results.push(
                ReplicaElectionResult::default()
                    .with_topic(TopicName(StrBytes::from_string(tp.topic)))
                    .with_partition_result(vec![partition]),
            ),
        }
    };
    match ctx
        .broker
        .elect_leaders(election_type, partitions.clone())
        .await
    {
        Ok(elected) => {
            for (tp, result) in elected {
                match result {
                    Ok(()) => add(tp, 0, None),
                    Err(ElectError::ElectionNotNeeded) if every_partition => {}
                    Err(e) => {
                        let error = elect_error(e);
                        add(
                            tp,
                            error.code(),
                            Some(StrBytes::from_string(error.to_string())),
                        )
                    }
                }
            }
            ElectLeadersResponse::default().with_replica_election_results(results)
        }
        Err(e) => {
            tracing::info!(peer = %ctx.peer, error = %e, "leader election failed");
            let code = error_code(&e);
            // v0 has no top-level error: each partition carries it.
            for tp in partitions.unwrap_or_default() {
                add(tp, code, error_message(&e));
            }
            ElectLeadersResponse::default()
                .with_error_code(if version >= 1 { code } else { 0 })
                .with_replica_election_results(results)
        }
    }
}

/// The Kafka error for a partition an election left as it was.
fn elect_error(e: ElectError) -> ResponseError {
    match e {
        ElectError::ElectionNotNeeded => ResponseError::ElectionNotNeeded,
        ElectError::PreferredLeaderNotAvailable => ResponseError::PreferredLeaderNotAvailable,
        ElectError::EligibleLeadersNotAvailable => ResponseError::EligibleLeadersNotAvailable,
        ElectError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
    }
}
