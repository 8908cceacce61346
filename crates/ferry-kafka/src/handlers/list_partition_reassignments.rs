//! ListPartitionReassignments: the reassignments in progress, as the active
//! controller sees them — each partition's replicas (target first), and the
//! replicas being added and removed. Partitions that are not being reassigned,
//! or do not exist, are left out.

use ferry_core::TopicPartition;
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    BrokerId, ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::dispatch::RequestContext;
use crate::errors::{error_code, error_message};

/// Most partitions asked about in one request.
const PARTITIONS_MAX: usize = 100_000;

pub async fn handle(
    ctx: &RequestContext,
    _version: i16,
    req: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let partitions: Option<Vec<TopicPartition>> = req.topics.map(|topics| {
        topics
            .iter()
            .flat_map(|t| {
                t.partition_indexes
                    .iter()
                    .map(|p| TopicPartition::new(t.name.0.as_str(), *p))
            })
            .take(PARTITIONS_MAX)
            .collect()
    });
    match ctx.broker.list_partition_reassignments(partitions).await {
        Ok(ongoing) => {
            let ids = |ids: Vec<i32>| ids.into_iter().map(BrokerId).collect::<Vec<_>>();
            let mut topics: Vec<OngoingTopicReassignment> = Vec::new();
            for r in ongoing {
                let partition = OngoingPartitionReassignment::default()
                    .with_partition_index(r.partition)
                    .with_replicas(ids(r.replicas))
                    .with_adding_replicas(ids(r.adding))
                    .with_removing_replicas(ids(r.removing));
                match topics.iter_mut().find(|t| t.name.0.as_str() == r.topic) {
                    Some(t) => t.partitions.push(partition),
                    None => topics.push(
                        OngoingTopicReassignment::default()
                            .with_name(TopicName(StrBytes::from_string(r.topic)))
                            .with_partitions(vec![partition]),
                    ),
                }
            }
            ListPartitionReassignmentsResponse::default().with_topics(topics)
        }
        Err(e) => {
            tracing::info!(peer = %ctx.peer, error = %e, "listing reassignments failed");
            ListPartitionReassignmentsResponse::default()
                .with_error_code(error_code(&e))
                .with_error_message(error_message(&e))
        }
    }
}
