//! OffsetFetch: committed offsets of one group (v1–v7) or of several (v8+).
//! With ListOffsets this gives tools the lag of every partition.

use ferry_core::group::CommittedOffset;
use ferry_core::TopicPartition;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::dispatch::RequestContext;

/// Most groups answered in one request.
const GROUPS_MAX: usize = 10_000;

type Fetched = Vec<(TopicPartition, Option<CommittedOffset>)>;

/// `None` topics: every partition the group committed. Group ids may be empty
/// here (Kafka allows it for offset storage); only a null one is invalid.
fn fetch(ctx: &RequestContext, group_id: &str, topics: Option<Vec<(String, Vec<i32>)>>) -> Fetched {
    let partitions: Option<Vec<TopicPartition>> = topics.map(|ts| {
        ts.into_iter()
            .flat_map(|(t, ps)| {
                ps.into_iter()
                    .map(move |p| TopicPartition::new(t.clone(), p))
            })
            .collect()
    });
    ctx.broker
        .groups()
        .fetch_offsets(group_id, partitions.as_deref())
}

fn values(c: &Option<CommittedOffset>) -> (i64, i32, StrBytes) {
    match c {
        Some(c) => (
            c.offset,
            c.leader_epoch,
            StrBytes::from_string(c.metadata.clone()),
        ),
        None => (-1, -1, StrBytes::from_static_str("")),
    }
}

/// With `require_stable` (v7+), a partition whose offset is part of an open
/// transaction answers UNSTABLE_OFFSET_COMMIT instead of the last stable offset,
/// so a read_committed consumer retries rather than starting from stale ground.
fn unstable(
    ctx: &RequestContext,
    require_stable: bool,
    group_id: &str,
    tp: &TopicPartition,
) -> bool {
    require_stable && ctx.broker.groups().has_pending_txn_offset(group_id, tp)
}

pub async fn handle(
    ctx: &RequestContext,
    version: i16,
    req: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let require_stable = version >= 7 && req.require_stable;
    if version >= 8 {
        let groups = req
            .groups
            .iter()
            .take(GROUPS_MAX)
            .map(|g| {
                if !ctx.broker.groups().owns(g.group_id.0.as_str()) {
                    return OffsetFetchResponseGroup::default()
                        .with_group_id(g.group_id.clone())
                        .with_error_code(ResponseError::NotCoordinator.code());
                }
                let topics = g.topics.as_ref().map(|ts| {
                    ts.iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                        .collect()
                });
                let fetched = fetch(ctx, g.group_id.0.as_str(), topics);
                let mut out: Vec<OffsetFetchResponseTopics> = Vec::new();
                for (tp, c) in fetched {
                    let (offset, epoch, metadata) = values(&c);
                    let p = if unstable(ctx, require_stable, g.group_id.0.as_str(), &tp) {
                        OffsetFetchResponsePartitions::default()
                            .with_partition_index(tp.partition)
                            .with_committed_offset(-1)
                            .with_error_code(ResponseError::UnstableOffsetCommit.code())
                    } else {
                        OffsetFetchResponsePartitions::default()
                            .with_partition_index(tp.partition)
                            .with_committed_offset(offset)
                            .with_committed_leader_epoch(epoch)
                            .with_metadata(Some(metadata))
                    };
                    match out.iter_mut().find(|t| t.name.0.as_str() == tp.topic) {
                        Some(t) => t.partitions.push(p),
                        None => out.push(
                            OffsetFetchResponseTopics::default()
                                .with_name(kafka_protocol::messages::TopicName(
                                    kafka_protocol::protocol::StrBytes::from_string(
                                        tp.topic.clone(),
                                    ),
                                ))
                                .with_partitions(vec![p]),
                        ),
                    }
                }
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id.clone())
                    .with_topics(out)
            })
            .collect();
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let topics = req.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
            .collect()
    });
    if !ctx.broker.groups().owns(req.group_id.0.as_str()) {
        return OffsetFetchResponse::default()
            .with_error_code(ResponseError::NotCoordinator.code());
    }
    if version < 2 && topics.is_none() {
        return OffsetFetchResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code());
    }
    let fetched = fetch(ctx, req.group_id.0.as_str(), topics);
    let mut out: Vec<OffsetFetchResponseTopic> = Vec::new();
    for (tp, c) in fetched {
        let (offset, epoch, metadata) = values(&c);
        let p = if unstable(ctx, require_stable, req.group_id.0.as_str(), &tp) {
            OffsetFetchResponsePartition::default()
                .with_partition_index(tp.partition)
                .with_committed_offset(-1)
                .with_error_code(ResponseError::UnstableOffsetCommit.code())
        } else {
            OffsetFetchResponsePartition::default()
                .with_partition_index(tp.partition)
                .with_committed_offset(offset)
                .with_committed_leader_epoch(epoch)
                .with_metadata(Some(metadata))
        };
        match out.iter_mut().find(|t| t.name.0.as_str() == tp.topic) {
            Some(t) => t.partitions.push(p),
            None => out.push(
                OffsetFetchResponseTopic::default()
                    .with_name(kafka_protocol::messages::TopicName(
                        kafka_protocol::protocol::StrBytes::from_string(tp.topic.clone()),
                    ))
                    .with_partitions(vec![p]),
            ),
        }
    }
    OffsetFetchResponse::default().with_topics(out)
}
