//! WriteTxnMarkers: a transaction coordinator on another broker has this broker,
//! the leader of some of a transaction's partitions, write the markers that end
//! it. Answered per partition once the marker is durable on the in-sync replicas.

use ferry_core::TopicPartition;
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};

use crate::dispatch::RequestContext;
use crate::errors::error_code;

/// Most markers and partitions answered in one request.
const MARKERS_MAX: usize = 10_000;

pub async fn handle(
    ctx: &RequestContext,
    _version: i16,
    req: WriteTxnMarkersRequest,
) -> WriteTxnMarkersResponse {
    let mut results = Vec::new();
    for marker in req.markers.into_iter().take(MARKERS_MAX) {
        let partitions: Vec<TopicPartition> = marker
            .topics
            .iter()
            .flat_map(|t| {
                t.partition_indexes
                    .iter()
                    .map(|p| TopicPartition::new(t.name.0.as_str(), *p))
            })
            .take(MARKERS_MAX)
            .collect();
        let written = ctx
            .broker
            .write_local_txn_markers(
                marker.producer_id.0,
                marker.producer_epoch,
                marker.transaction_result,
                partitions,
            )
            .await;
        let mut topics: Vec<WritableTxnMarkerTopicResult> = Vec::new();
        for (tp, result) in written {
            let partition = WritableTxnMarkerPartitionResult::default()
                .with_partition_index(tp.partition)
                .with_error_code(result.as_ref().err().map_or(0, error_code));
            match topics.iter_mut().find(|t| t.name.0.as_str() == tp.topic) {
                Some(t) => t.partitions.push(partition),
                None => topics.push(
                    WritableTxnMarkerTopicResult::default()
                        .with_name(kafka_protocol::messages::TopicName(
                            kafka_protocol::protocol::StrBytes::from_string(tp.topic.clone()),
                        ))
                        .with_partitions(vec![partition]),
                ),
            }
        }
        results.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(marker.producer_id)
                .with_topics(topics),
        );
    }
    WriteTxnMarkersResponse::default().with_markers(results)
}
