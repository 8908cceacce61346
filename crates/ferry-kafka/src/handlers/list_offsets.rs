//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3), earliest local
//! (-4), or the first offset whose timestamp is at least the one asked for
//! (through the time index).
//!
//! As Kafka answers: only the leader lists offsets (NOT_LEADER_OR_FOLLOWER
//! elsewhere) except for the debugging replica id -2; and a consumer asking a
//! new leader whose high watermark has not caught up with its epoch start yet
//! gets OFFSET_NOT_AVAILABLE (retriable, KIP-207) instead of an offset that
//! would go backwards.

use ferry_core::{CoreError, Isolation, TopicPartition};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use crate::dispatch::RequestContext;
use crate::errors::error_code;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

/// `replica_id` of a consumer; a follower sends its broker id.
const CONSUMER_REPLICA_ID: i32 = -1;
/// `replica_id` of Kafka's debugging tools, which may ask any replica.
const DEBUGGING_REPLICA_ID: i32 = -2;

/// Why a partition has no answer: a domain error, or a wire code of its own.
enum LookupError {
    Core(CoreError),
    Code(ResponseError),
}

impl From<CoreError> for LookupError {
    fn from(e: CoreError) -> Self {
        LookupError::Core(e)
    }
}

pub async fn handle(
    ctx: &RequestContext,
    version: i16,
    req: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let isolation = if version >= 2 && req.isolation_level == 1 {
        Isolation::ReadCommitted
    } else {
        Isolation::ReadUncommitted
    };
    let mut topics = Vec::new();
    for t in req.topics {
        let name = t.name.0.as_str().to_string();
        let mut partitions = Vec::new();
        for p in t.partitions {
            let tp = TopicPartition::new(name.clone(), p.partition_index);
            let current_epoch = if version >= 4 {
                p.current_leader_epoch
            } else {
                -1
            };
            let resp = match lookup(
                ctx,
                &tp,
                p.timestamp,
                current_epoch,
                isolation,
                req.replica_id.0,
            ) {
                // leader_epoch exists from v4 on; setting it earlier fails the encode.
                Ok((timestamp, offset, epoch)) => ListOffsetsPartitionResponse::default()
                    .with_partition_index(p.partition_index)
                    .with_timestamp(timestamp)
                    .with_offset(offset)
                    .with_leader_epoch(if version >= 4 { epoch } else { -1 }),
                Err(e) => ListOffsetsPartitionResponse::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(match &e {
                        LookupError::Core(e) => error_code(e),
                        LookupError::Code(code) => code.code(),
                    })
                    .with_timestamp(-1)
                    .with_offset(-1)
                    .with_leader_epoch(-1),
            };
            partitions.push(resp);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// (timestamp, offset, leader epoch) for one partition.
fn lookup(
    ctx: &RequestContext,
    tp: &TopicPartition,
    timestamp: i64,
    current_epoch: i32,
    isolation: Isolation,
    replica_id: i32,
) -> Result<(i64, i64, i32), LookupError> {
    let p = ctx
        .broker
        .partition(tp)
        .ok_or(CoreError::UnknownTopicOrPartition)?;
    let epoch = p.leader_epoch();
    if current_epoch >= 0 && current_epoch != epoch {
        return Err(if current_epoch < epoch {
            CoreError::FencedLeaderEpoch
        } else {
            CoreError::UnknownLeaderEpoch
        }
        .into());
    }
    let epoch_start = p.leader_epoch_start_offset();
    if epoch_start.is_none() && replica_id != DEBUGGING_REPLICA_ID {
        return Err(CoreError::NotLeaderOrFollower.into());
    }
    let visible_end = match isolation {
        Isolation::ReadUncommitted => p.high_watermark(),
        Isolation::ReadCommitted => p.last_stable_offset(),
    };
    // Kafka's `maybeOffsetsError`: a consumer's answer would come from a high
    // watermark that is still catching up after an election.
    let lagging = replica_id == CONSUMER_REPLICA_ID
        && epoch_start.is_some_and(|start| start > p.high_watermark());
    let not_yet = || LookupError::Code(ResponseError::OffsetNotAvailable);
    match timestamp {
        LATEST if lagging => Err(not_yet()),
        LATEST => Ok((-1, visible_end, epoch)),
        EARLIEST | EARLIEST_LOCAL => Ok((-1, p.log_start_offset(), epoch)),
        MAX_TIMESTAMP => match p.log().max_timestamp().map_err(CoreError::from)? {
            Some((ts, offset)) if offset < visible_end => Ok((ts, offset, epoch)),
            _ if lagging => Err(not_yet()),
            _ => Ok((-1, -1, epoch)),
        },
        ts if ts < 0 => {
            Err(CoreError::InvalidRequest(format!("unknown special timestamp {ts}")).into())
        }
        ts => match p.log().offset_for_timestamp(ts).map_err(CoreError::from)? {
            Some((offset, found_ts)) if offset < visible_end => Ok((found_ts, offset, epoch)),
            _ if lagging => Err(not_yet()),
            _ => Ok((-1, -1, epoch)),
        },
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::BrokerId;

    use super::*;
    use crate::handlers::create_topics::test_support::*;

    const V: i16 = 7;

    async fn list(ctx: &RequestContext, replica_id: i32, timestamp: i64) -> (i16, i64) {
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(replica_id))
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(topic_name("lo"))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_current_leader_epoch(-1)
                    .with_timestamp(timestamp)])]);
        let resp = handle(ctx, V, req).await;
        assert_encodes(&resp, V);
        let p = &resp.topics[0].partitions[0];
        (p.error_code, p.offset)
    }

    #[tokio::test]
    async fn followers_and_leaders_still_catching_up_answer_as_kafka_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        create_topics_ok(&ctx, vec![creatable("lo", 1, &[])]).await;
        let p = ctx
            .broker
            .partition(&TopicPartition::new("lo", 0))
            .expect("partition");
        let now = ctx.broker.now_ms();
        // A follower that holds 3 records the leader has not confirmed yet.
        p.become_follower(1, 2).expect("become follower");
        p.append_as_follower(&batch(3), 0, now)
            .expect("append as follower");
        let not_leader = ResponseError::NotLeaderOrFollower.code();
        assert_eq!(list(&ctx, -1, LATEST).await.0, not_leader);
        assert_eq!(list(&ctx, 3, EARLIEST).await.0, not_leader);
        // Kafka's debugging replica id may ask a follower.
        assert_eq!(list(&ctx, -2, LATEST).await, (0, 0));

        // Elected with a high watermark (0) below its epoch start (3): consumers
        // wait for the followers to fetch; earliest and followers are answered.
        p.become_leader(1, 2, vec![1, 2], vec![1, 2], now)
            .expect("become leader");
        let not_available = ResponseError::OffsetNotAvailable.code();
        assert_eq!(list(&ctx, -1, LATEST).await.0, not_available);
        assert_eq!(list(&ctx, -1, 1_700_000_000_001).await.0, not_available);
        assert_eq!(list(&ctx, -1, EARLIEST).await, (0, 0));
        assert_eq!(list(&ctx, 2, LATEST).await, (0, 0));
        p.record_follower_fetch(2, 3, now).expect("follower fetch");
        assert_eq!(list(&ctx, -1, LATEST).await, (0, 3));
        assert_eq!(list(&ctx, -1, 1_700_000_000_001).await, (0, 1));
    }
}
