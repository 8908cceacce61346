//! OffsetCommit: answered once the commit is durable in `__consumer_offsets`.

use ferry_core::group::{CommitRequest, GroupError, OffsetCommit};
use ferry_core::TopicPartition;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use crate::dispatch::RequestContext;
use crate::errors::group_error_code;

pub async fn handle(
    ctx: &RequestContext,
    version: i16,
    req: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let image = ctx.broker.image();
    // Per partition: None = to commit, Some(error) = refused before the coordinator.
    let mut plan: Vec<(TopicPartition, Option<GroupError>)> = Vec::new();
    let mut offsets = Vec::new();
    for topic in &req.topics {
        let name = topic.name.0.to_string();
        let known = image.topic(&name);
        for p in &topic.partitions {
            let tp = TopicPartition::new(name.clone(), p.partition_index);
            let exists = known.is_some_and(|t| {
                t.partitions
                    .iter()
                    .any(|x| x.partition == p.partition_index)
            });
            if !exists {
                plan.push((tp, Some(GroupError::UnknownTopicOrPartition)));
                continue;
            }
            plan.push((tp.clone(), None));
            offsets.push((
                tp,
                OffsetCommit {
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                },
            ));
        }
    }
    let mut outcome: Vec<(TopicPartition, Result<(), GroupError>)> = Vec::new();
    if !offsets.is_empty() {
        let commit = CommitRequest {
            group_id: req.group_id.0.to_string(),
            generation_id: req.generation_id_or_member_epoch,
            member_id: req.member_id.to_string(),
            group_instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
            offsets: offsets.clone(),
            missing_group_error: if version >= 9 {
                GroupError::GroupIdNotFound
            } else {
                GroupError::IllegalGeneration
            },
        };
        outcome = match ctx.broker.groups().commit_offsets(commit).await {
            Ok(results) => results,
            Err(e) => {
                tracing::debug!(peer = %ctx.peer, group = %req.group_id.0.as_str(), error = %e, "OffsetCommit refused");
                offsets
                    .into_iter()
                    .map(|(tp, _)| (tp, Err(e.clone())))
                    .collect()
            }
        };
    }
    let mut topics: Vec<OffsetCommitResponseTopic> = Vec::new();
    for (tp, early) in plan {
        let result = match early {
            Some(e) => Err(e),
            None => outcome
                .iter()
                .find(|(t, _)| *t == tp)
                .map(|(_, r)| r.clone())
                .unwrap_or(Err(GroupError::CoordinatorNotAvailable)),
        };
        let partition = OffsetCommitResponsePartition::default()
            .with_partition_index(tp.partition)
            .with_error_code(result.err().as_ref().map_or(0, group_error_code));
        match topics.iter_mut().find(|t| t.name.0.as_str() == tp.topic) {
            Some(t) => t.partitions.push(partition),
            None => topics.push(
                OffsetCommitResponseTopic::default()
                    .with_name(kafka_protocol::messages::TopicName(
                        kafka_protocol::protocol::StrBytes::from_string(tp.topic.clone()),
                    ))
                    .with_partitions(vec![partition]),
            ),
        }
    }
    OffsetCommitResponse::default().with_topics(topics)
}
