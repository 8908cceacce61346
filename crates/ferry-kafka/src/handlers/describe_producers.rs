//! DescribeProducers: the idempotent and transactional producers a partition
//! knows, with their epoch, last sequence and open transaction.

use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse, ProducerState, TopicResponse,
};
use kafka_protocol::messages::{DescribeProducersRequest, DescribeProducersResponse, ProducerId};
use kafka_protocol::ResponseError;

use ferry_core::TopicPartition;

use crate::dispatch::RequestContext;

pub async fn handle(
    ctx: &RequestContext,
    _version: i16,
    req: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partition_indexes
                .iter()
                .map(|&index| {
                    match ctx
                        .broker
                        .partition(&TopicPartition::new(t.name.0.as_str(), index))
                    {
                        None => PartitionResponse::default()
                            .with_partition_index(index)
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code()),
                        Some(p) => PartitionResponse::default()
                            .with_partition_index(index)
                            .with_active_producers(
                                p.producer_entries()
                                    .into_iter()
                                    .map(|e| {
                                        ProducerState::default()
                                            .with_producer_id(ProducerId(e.producer_id))
                                            .with_producer_epoch(i32::from(e.epoch))
                                            .with_last_sequence(e.last_seq())
                                            .with_last_timestamp(e.last_timestamp_ms)
                                            .with_coordinator_epoch(e.coordinator_epoch)
                                            .with_current_txn_start_offset(
                                                e.current_txn_first_offset.unwrap_or(-1),
                                            )
                                    })
                                    .collect(),
                            ),
                    }
                })
                .collect();
            TopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}
