//! OffsetForLeaderEpoch (v2–4): for each partition, the largest leader epoch
//! `<=` the requested one and the offset where it ended (the log end offset for
//! the current epoch). Consumers use it to detect log truncation after a leader
//! change, followers to truncate a divergent tail.
//!
//! `current_leader_epoch` fences stale and future callers as Kafka's
//! `Partition.lastOffsetForLeaderEpoch` does: older than the partition's epoch is
//! FENCED_LEADER_EPOCH, newer is UNKNOWN_LEADER_EPOCH, -1 skips the check.
//! `replica_id` (v3+: -1 consumer, -2 debug tool, ≥0 follower) only names the
//! caller here: on one node this replica is always the leader.

use ferry_core::broker::validate_topic_name;
use ferry_core::{Broker, CoreError, TopicPartition};
use kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderPartition;
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::ResponseError;

use crate::dispatch::RequestContext;
use crate::errors::error_code;

/// `current_leader_epoch` when the caller does not know the leader's epoch.
const NO_PARTITION_LEADER_EPOCH: i32 = -1;

pub async fn handle(
    ctx: &RequestContext,
    version: i16,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let broker = &ctx.broker;
    if version >= 3 && req.replica_id.0 >= 0 {
        tracing::debug!(peer = %ctx.peer, replica_id = req.replica_id.0, "OffsetForLeaderEpoch from a follower");
    }
    // Only the leader answers, except to Kafka's debugging tools (replica id -2).
    let debug = version >= 3 && req.replica_id.0 == -2;
    let topics = req
        .topics
        .into_iter()
        .map(|topic| {
            let name = topic.topic.0.to_string();
            let partitions = topic
                .partitions
                .iter()
                .map(|p| end_offset(broker, &name, p, debug))
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(topic.topic)
                .with_partitions(partitions)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

fn end_offset(
    broker: &Broker,
    topic: &str,
    p: &OffsetForLeaderPartition,
    debug: bool,
) -> EpochEndOffset {
    let result = EpochEndOffset::default()
        .with_partition(p.partition)
        .with_leader_epoch(-1)
        .with_end_offset(-1);
    if let Err(e) = validate_topic_name(topic) {
        return result.with_error_code(error_code(&e));
    }
    let tp = TopicPartition::new(topic, p.partition);
    let Some(partition) = broker.partition(&tp) else {
        let known = broker
            .image()
            .topic(topic)
            .is_some_and(|t| t.partitions.iter().any(|x| x.partition == p.partition));
        let code = if known {
            ResponseError::NotLeaderOrFollower.code()
        } else {
            error_code(&CoreError::UnknownTopicOrPartition)
        };
        return result.with_error_code(code);
    };
    if let Err(e) = check_current_epoch(p.current_leader_epoch, partition.leader_epoch()) {
        return result.with_error_code(e.code());
    }
    if !partition.is_leader() && !debug {
        return result.with_error_code(ResponseError::NotLeaderOrFollower.code());
    }
    let (leader_epoch, end_offset) = partition.end_offset_for_epoch(p.leader_epoch);
    result
        .with_leader_epoch(leader_epoch)
        .with_end_offset(end_offset)
}

/// Kafka's leader-epoch fencing of a request against the partition's epoch.
fn check_current_epoch(
    current_leader_epoch: i32,
    partition_epoch: i32,
) -> Result<(), ResponseError> {
    if current_leader_epoch == NO_PARTITION_LEADER_EPOCH {
        Ok(())
    } else if current_leader_epoch < partition_epoch {
        Err(ResponseError::FencedLeaderEpoch)
    } else if current_leader_epoch > partition_epoch {
        Err(ResponseError::UnknownLeaderEpoch)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderTopic;
    use kafka_protocol::messages::BrokerId;

    use super::*;
    use crate::handlers::create_topics::test_support::*;

    fn request(topic: &str, partitions: &[(i32, i32, i32)]) -> OffsetForLeaderEpochRequest {
        OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![OffsetForLeaderTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|(p, current, epoch)| {
                            OffsetForLeaderPartition::default()
                                .with_partition(*p)
                                .with_current_leader_epoch(*current)
                                .with_leader_epoch(*epoch)
                        })
                        .collect(),
                )])
    }

    fn outcome(resp: &OffsetForLeaderEpochResponse) -> Vec<(i32, i16, i32, i64)> {
        resp.topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (p.partition, p.error_code, p.leader_epoch, p.end_offset))
            })
            .collect()
    }

    #[test]
    fn fencing_compares_the_callers_epoch_with_the_partitions() {
        assert_eq!(check_current_epoch(-1, 5), Ok(()));
        assert_eq!(check_current_epoch(5, 5), Ok(()));
        assert_eq!(
            check_current_epoch(4, 5),
            Err(ResponseError::FencedLeaderEpoch)
        );
        assert_eq!(
            check_current_epoch(6, 5),
            Err(ResponseError::UnknownLeaderEpoch)
        );
    }

    #[tokio::test]
    async fn answers_the_current_epochs_end_and_fences() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        create_topics_ok(&ctx, vec![creatable("epochs", 2, &[])]).await;
        let tp = TopicPartition::new("epochs", 0);
        ctx.broker
            .produce(&tp, batch(5), -1, 30_000)
            .await
            .expect("produce");
        // A new topic's partitions are at epoch 0.
        let resp = handle(
            &ctx,
            4,
            request(
                "epochs",
                &[(0, 0, 0), (0, -1, 0), (0, 1, 0), (1, -1, 0), (9, -1, 0)],
            ),
        )
        .await;
        assert_encodes(&resp, 4);
        assert_eq!(
            outcome(&resp),
            vec![
                (0, 0, 0, 5),
                (0, 0, 0, 5),
                (0, ResponseError::UnknownLeaderEpoch.code(), -1, -1),
                (1, 0, 0, 0),
                (9, ResponseError::UnknownTopicOrPartition.code(), -1, -1),
            ]
        );
        let resp = handle(&ctx, 2, request("missing", &[(0, -1, 0)])).await;
        assert_encodes(&resp, 2);
        assert_eq!(
            outcome(&resp),
            vec![(0, ResponseError::UnknownTopicOrPartition.code(), -1, -1)]
        );
        let resp = handle(&ctx, 3, request("bad/name", &[(0, -1, 0)])).await;
        assert_eq!(
            outcome(&resp),
            vec![(0, ResponseError::InvalidTopicException.code(), -1, -1)]
        );
    }
}
