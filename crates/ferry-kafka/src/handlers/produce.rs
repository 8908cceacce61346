//! Produce: validate each partition's batches, append them, and answer once the
//! acks level is met (acks=all: after the group-commit fsync and once every
//! in-sync replica has the records; acks=0: no answer).

use futures_util::future::join_all;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use ferry_core::{CoreError, TopicPartition};

use crate::dispatch::RequestContext;
use crate::errors::{error_code, error_message};

/// `None` when the client asked for no response (acks=0).
pub async fn handle(
    ctx: &RequestContext,
    version: i16,
    req: ProduceRequest,
) -> Option<ProduceResponse> {
    let broker = &ctx.broker;
    let (acks, timeout_ms) = (req.acks, req.timeout_ms);
    let mut work = Vec::new();
    for topic in req.topic_data {
        let name = topic.name.0.as_str().to_string();
        let topic_error = match ferry_core::broker::validate_topic_name(&name) {
            Err(e) => Some(e),
            Ok(()) if broker.image().topic(&name).is_none() => {
                Some(CoreError::UnknownTopicOrPartition)
            }
            Ok(()) => None,
        };
        for p in topic.partition_data {
            let tp = TopicPartition::new(name.clone(), p.index);
            let topic_error = topic_error.clone();
            work.push(async move {
                let result = match (topic_error, p.records) {
                    (Some(e), _) => Err(e),
                    (None, None) => Err(CoreError::InvalidRecord("produce without records".into())),
                    (None, Some(records)) => {
                        let (bytes, count) = (
                            records.len() as u64,
                            ferry_core::metrics::count_records(&records),
                        );
                        let result = broker.produce(&tp, records, acks, timeout_ms).await;
                        if result.is_ok() {
                            ferry_core::metrics::metrics().produced(&tp.topic, bytes, count);
                        }
                        result
                    }
                };
                (tp, result)
            });
        }
    }
    let results = join_all(work).await;
    if acks == 0 {
        for (tp, result) in &results {
            if let Err(e) = result {
                tracing::debug!(peer = %ctx.peer, partition = %tp, error = %e, "acks=0 produce failed");
            }
        }
        return None;
    }
    let mut responses: Vec<TopicProduceResponse> = Vec::new();
    for (tp, result) in results {
        let partition = match &result {
            Ok(r) => PartitionProduceResponse::default()
                .with_index(tp.partition)
                .with_base_offset(r.base_offset)
                .with_log_append_time_ms(r.log_append_time)
                .with_log_start_offset(r.log_start_offset),
            Err(e) => {
                if matches!(
                    e,
                    CoreError::CorruptMessage(_)
                        | CoreError::InvalidRecord(_)
                        | CoreError::Storage(_)
                ) {
                    tracing::warn!(peer = %ctx.peer, client_id = %ctx.client_id, partition = %tp, error = %e, "produce refused");
                } else {
                    tracing::debug!(peer = %ctx.peer, partition = %tp, error = %e, "produce failed");
                }
                PartitionProduceResponse::default()
                    .with_index(tp.partition)
                    .with_error_code(error_code(e))
                    .with_base_offset(-1)
                    .with_log_append_time_ms(-1)
                    .with_log_start_offset(-1)
                    .with_error_message(if version >= 8 { error_message(e) } else { None })
            }
        };
        match responses.iter_mut().find(|t| t.name.0.as_str() == tp.topic) {
            Some(t) => t.partition_responses.push(partition),
            None => responses.push(
                TopicProduceResponse::default()
                    .with_name(kafka_protocol::messages::TopicName(
                        kafka_protocol::protocol::StrBytes::from_string(tp.topic.clone()),
                    ))
                    .with_partition_responses(vec![partition]),
            ),
        }
    }
    Some(ProduceResponse::default().with_responses(responses))
}
