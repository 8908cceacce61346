//! Produce: validate each partition's batches, append them, and answer once the
//! acks level is met (acks=all: after the group-commit fsync and once every
//! in-sync replica has the records; acks=0: no answer). The appends happen in
//! request order; the waiting runs beside the connection's later requests.

use std::future::Future;

use futures_util::future::join_all;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use ferry_core::{AppendResult, CoreError, TopicPartition};

use crate::dispatch::RequestContext;
use crate::errors::{error_code, error_message};

/// Appends every partition's records now, in the order the connection's
/// requests came, and returns what waits for the acks level and builds the
/// answer (`None` when the client asked for none: acks=0). The connection
/// reads its next request meanwhile, so pipelined produces share an fsync.
pub fn start(
    ctx: &RequestContext,
    version: i16,
    req: ProduceRequest,
) -> impl Future<Output = Option<ProduceResponse>> + Send + 'static {
    let broker = &ctx.broker;
    let (acks, timeout_ms) = (req.acks, req.timeout_ms);
    let mut started = Vec::new();
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
            let pending = match (topic_error.clone(), p.records) {
                (Some(e), _) => Err(e),
                (None, None) => Err(CoreError::InvalidRecord("produce without records".into())),
                (None, Some(records)) => {
                    let counted = (
                        records.len() as u64,
                        ferry_core::metrics::count_records(&records),
                    );
                    broker
                        .start_produce(&tp, records, acks)
                        .map(|pending| (pending, counted))
                }
            };
            started.push((tp, pending));
        }
    }
    let (peer, client_id) = (ctx.peer, ctx.client_id.clone());
    async move {
        let results = join_all(started.into_iter().map(|(tp, pending)| async move {
            let result = match pending {
                Err(e) => Err(e),
                Ok((pending, (bytes, count))) => {
                    let result = pending.finish(timeout_ms).await;
                    if result.is_ok() {
                        ferry_core::metrics::metrics().produced(&tp.topic, bytes, count);
                    }
                    result
                }
            };
            (tp, result)
        }))
        .await;
        respond(peer, &client_id, version, acks, results)
    }
}

fn respond(
    peer: std::net::SocketAddr,
    client_id: &str,
    version: i16,
    acks: i16,
    results: Vec<(TopicPartition, Result<AppendResult, CoreError>)>,
) -> Option<ProduceResponse> {
    if acks == 0 {
        for (tp, result) in &results {
            if let Err(e) = result {
                tracing::debug!(%peer, partition = %tp, error = %e, "acks=0 produce failed");
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
                    tracing::warn!(%peer, client_id, partition = %tp, error = %e, "produce refused");
                } else {
                    tracing::debug!(%peer, partition = %tp, error = %e, "produce failed");
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
