//! AddPartitionsToTxn v0–v3 (the client path): adds partitions to the producer's
//! transaction before it writes to them, so the coordinator knows where to put
//! the markers. v4+ (the batched broker-to-broker path) is not offered.

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{AddPartitionsToTxnRequest, AddPartitionsToTxnResponse};

use ferry_core::TopicPartition;

use crate::dispatch::RequestContext;
use crate::errors::txn_error;

pub async fn handle(
    ctx: &RequestContext,
    version: i16,
    req: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    let mut partitions = Vec::new();
    for t in &req.v3_and_below_topics {
        for p in &t.partitions {
            partitions.push(TopicPartition::new(t.name.0.as_str(), *p));
        }
    }
    let requested = partitions.clone();
    let result = ctx
        .broker
        .txns()
        .add_partitions(
            req.v3_and_below_transactional_id.0.as_str(),
            req.v3_and_below_producer_id.0,
            req.v3_and_below_producer_epoch,
            partitions,
        )
        .await;
    let codes: Vec<(TopicPartition, i16)> = match result {
        Ok(results) => results
            .into_iter()
            .map(|(tp, r)| {
                (
                    tp,
                    r.err().map_or(0, |e| txn_error(&e, version >= 2).code()),
                )
            })
            .collect(),
        Err(e) => {
            tracing::debug!(peer = %ctx.peer, error = %e, "AddPartitionsToTxn refused");
            let code = txn_error(&e, version >= 2).code();
            requested.into_iter().map(|tp| (tp, code)).collect()
        }
    };
    let mut topics: Vec<AddPartitionsToTxnTopicResult> = Vec::new();
    for (tp, code) in codes {
        let result = AddPartitionsToTxnPartitionResult::default()
            .with_partition_index(tp.partition)
            .with_partition_error_code(code);
        match topics.iter_mut().find(|t| t.name.0.as_str() == tp.topic) {
            Some(t) => t.results_by_partition.push(result),
            None => topics.push(
                AddPartitionsToTxnTopicResult::default()
                    .with_name(kafka_protocol::messages::TopicName(
                        kafka_protocol::protocol::StrBytes::from_string(tp.topic.clone()),
                    ))
                    .with_results_by_partition(vec![result]),
            ),
        }
    }
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(topics)
}
