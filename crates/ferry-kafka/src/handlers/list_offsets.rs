//! ListOffsets: earliest (-2), latest (-1), max timestamp (-3), earliest local
//! (-4), or the first offset whose timestamp is at least the one asked for
//! (through the time index).

use ferry_core::{CoreError, Isolation, TopicPartition};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::dispatch::RequestContext;
use crate::errors::error_code;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

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
            let resp = match lookup(ctx, &tp, p.timestamp, current_epoch, isolation) {
                // leader_epoch exists from v4 on; setting it earlier fails the encode.
                Ok((timestamp, offset, epoch)) => ListOffsetsPartitionResponse::default()
                    .with_partition_index(p.partition_index)
                    .with_timestamp(timestamp)
                    .with_offset(offset)
                    .with_leader_epoch(if version >= 4 { epoch } else { -1 }),
                Err(e) => ListOffsetsPartitionResponse::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(error_code(&e))
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
) -> Result<(i64, i64, i32), CoreError> {
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
        });
    }
    let visible_end = match isolation {
        Isolation::ReadUncommitted => p.high_watermark(),
        Isolation::ReadCommitted => p.last_stable_offset(),
    };
    match timestamp {
        LATEST => Ok((-1, visible_end, epoch)),
        EARLIEST | EARLIEST_LOCAL => Ok((-1, p.log_start_offset(), epoch)),
        MAX_TIMESTAMP => match p.log().max_timestamp()? {
            Some((ts, offset)) if offset < visible_end => Ok((ts, offset, epoch)),
            _ => Ok((-1, -1, epoch)),
        },
        ts if ts < 0 => Err(CoreError::InvalidRequest(format!(
            "unknown special timestamp {ts}"
        ))),
        ts => match p.log().offset_for_timestamp(ts)? {
            Some((offset, found_ts)) if offset < visible_end => Ok((found_ts, offset, epoch)),
            _ => Ok((-1, -1, epoch)),
        },
    }
}
