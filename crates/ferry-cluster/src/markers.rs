//! Transaction markers for partitions led by another broker: the transaction
//! coordinator sends WriteTxnMarkers to their leader over the Kafka protocol,
//! as Kafka's coordinator does.

use std::time::Duration;

use ferry_client::kafka_protocol::messages::write_txn_markers_request::{
    WritableTxnMarker, WritableTxnMarkerTopic,
};
use ferry_client::kafka_protocol::messages::{ProducerId, TopicName, WriteTxnMarkersRequest};
use ferry_client::kafka_protocol::protocol::StrBytes;
use ferry_client::kafka_protocol::ResponseError;
use ferry_client::{Connection, ConnectionConfig};
use ferry_core::{CoreError, TopicPartition};

const WRITE_TXN_MARKERS_VERSION: i16 = 1;

/// Has the broker at `addr` write one transaction's markers to `partitions`.
pub async fn write(
    addr: &str,
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    partitions: Vec<TopicPartition>,
) -> Result<(), CoreError> {
    let config = ConnectionConfig {
        client_id: "ferry-txn-coordinator".to_string(),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(40),
        ..ConnectionConfig::default()
    };
    let connection = Connection::connect(addr, config)
        .await
        .map_err(|e| CoreError::Storage(format!("markers to {addr}: {e}")))?;
    let mut topics: Vec<WritableTxnMarkerTopic> = Vec::new();
    for tp in &partitions {
        match topics.iter_mut().find(|t| t.name.0.as_str() == tp.topic) {
            Some(t) => t.partition_indexes.push(tp.partition),
            None => topics.push(
                WritableTxnMarkerTopic::default()
                    .with_name(TopicName(StrBytes::from_string(tp.topic.clone())))
                    .with_partition_indexes(vec![tp.partition]),
            ),
        }
    }
    let request =
        WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(producer_epoch)
            .with_transaction_result(commit)
            .with_topics(topics)
            .with_coordinator_epoch(0)]);
    let response = connection
        .send_version(&request, WRITE_TXN_MARKERS_VERSION)
        .await
        .map_err(|e| CoreError::Storage(format!("markers to {addr}: {e}")))?;
    for marker in &response.markers {
        for topic in &marker.topics {
            for p in &topic.partitions {
                if p.error_code != 0 {
                    let error = ResponseError::try_from_code(p.error_code);
                    return Err(CoreError::Storage(format!(
                        "marker for {}-{} at {addr}: {error:?}",
                        topic.name.0.as_str(),
                        p.partition_index
                    )));
                }
            }
        }
    }
    Ok(())
}
