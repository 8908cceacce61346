//! AlterPartitionReassignments: an admin moves partitions to other brokers.
//! The active controller starts each reassignment (the partition holds its old
//! and new replicas until the new ones are in sync) or, for a `null` target,
//! cancels the one in progress. Answered per partition once the change is
//! committed; the move itself completes later (ListPartitionReassignments
//! shows it until then). Replication throttles are not implemented.

use ferry_core::cluster::ReassignError;
use ferry_core::TopicPartition;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::dispatch::RequestContext;
use crate::errors::{error_code, error_message};

/// Most partitions reassigned in one request.
const PARTITIONS_MAX: usize = 100_000;

pub async fn handle(
    ctx: &RequestContext,
    _version: i16,
    req: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let reassignments: Vec<(TopicPartition, Option<Vec<i32>>)> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    TopicPartition::new(t.name.0.as_str(), p.partition_index),
                    p.replicas
                        .as_ref()
                        .map(|rs| rs.iter().map(|r| r.0).collect()),
                )
            })
        })
        .take(PARTITIONS_MAX)
        .collect();
    match ctx
        .broker
        .alter_partition_reassignments(reassignments)
        .await
    {
        Ok(results) => {
            let mut responses: Vec<ReassignableTopicResponse> = Vec::new();
            for (tp, result) in results {
                let (code, message) = match result {
                    Ok(()) => (0, None),
                    Err(e) => {
                        let error = reassign_error(e);
                        (error.code(), Some(StrBytes::from_string(error.to_string())))
                    }
                };
                let partition = ReassignablePartitionResponse::default()
                    .with_partition_index(tp.partition)
                    .with_error_code(code)
                    .with_error_message(message);
                match responses.iter_mut().find(|t| t.name.0.as_str() == tp.topic) {
                    Some(t) => t.partitions.push(partition),
                    None => responses.push(
                        ReassignableTopicResponse::default()
                            .with_name(TopicName(StrBytes::from_string(tp.topic)))
                            .with_partitions(vec![partition]),
                    ),
                }
            }
            AlterPartitionReassignmentsResponse::default().with_responses(responses)
        }
        Err(e) => {
            tracing::info!(peer = %ctx.peer, error = %e, "partition reassignment failed");
            AlterPartitionReassignmentsResponse::default()
                .with_error_code(error_code(&e))
                .with_error_message(error_message(&e))
        }
    }
}

/// The Kafka error for a partition whose reassignment was refused.
fn reassign_error(e: ReassignError) -> ResponseError {
    match e {
        ReassignError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        ReassignError::InvalidReplicaAssignment => ResponseError::InvalidReplicaAssignment,
        ReassignError::NoReassignmentInProgress => ResponseError::NoReassignmentInProgress,
    }
}
