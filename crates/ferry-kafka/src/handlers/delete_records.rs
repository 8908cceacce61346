//! DeleteRecords (v0–2): raises a partition's log start offset ("low watermark")
//! to the given offset; -1 means the high watermark. As in Kafka's
//! `Partition.deleteRecordsOnLeader`: an offset above the high watermark is
//! OFFSET_OUT_OF_RANGE, and a topic without `delete` in its cleanup.policy refuses
//! with POLICY_VIOLATION. A partition named twice is answered once.

use ferry_core::broker::validate_topic_name;
use ferry_core::{Broker, CoreError, TopicPartition};
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse, TopicName};
use kafka_protocol::ResponseError;

use crate::dispatch::RequestContext;
use crate::errors::error_code;

pub async fn handle(
    ctx: &RequestContext,
    _version: i16,
    req: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    // (topic, partitions in first-seen order with the last offset asked for each)
    let mut topics: Vec<(TopicName, Vec<(i32, i64)>)> = Vec::new();
    for topic in req.topics {
        let index = match topics.iter().position(|(n, _)| *n == topic.name) {
            Some(i) => i,
            None => {
                topics.push((topic.name.clone(), Vec::new()));
                topics.len() - 1
            }
        };
        let partitions = &mut topics[index].1;
        for p in topic.partitions {
            match partitions.iter_mut().find(|(i, _)| *i == p.partition_index) {
                Some(existing) => existing.1 = p.offset,
                None => partitions.push((p.partition_index, p.offset)),
            }
        }
    }
    let broker = ctx.broker.clone();
    let (peer, client_id) = (ctx.peer, ctx.client_id.clone());
    // Raising the log start may delete segment files.
    let work = move || {
        topics
            .into_iter()
            .map(|(name, partitions)| {
                let results = partitions
                    .into_iter()
                    .map(|(index, offset)| {
                        let tp = TopicPartition::new(name.0.as_str(), index);
                        let result = DeleteRecordsPartitionResult::default().with_partition_index(index);
                        match delete(&broker, &tp, offset) {
                            Ok(low_watermark) => {
                                tracing::info!(%peer, %client_id, partition = %tp, low_watermark, "deleted records on request");
                                result.with_low_watermark(low_watermark)
                            }
                            Err(e) => result.with_low_watermark(-1).with_error_code(e),
                        }
                    })
                    .collect();
                DeleteRecordsTopicResult::default().with_name(name).with_partitions(results)
            })
            .collect::<Vec<_>>()
    };
    let topics = match tokio::task::spawn_blocking(work).await {
        Ok(topics) => topics,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    DeleteRecordsResponse::default().with_topics(topics)
}

/// The new low watermark, or the error code.
fn delete(broker: &Broker, tp: &TopicPartition, offset: i64) -> Result<i64, i16> {
    validate_topic_name(&tp.topic).map_err(|e| error_code(&e))?;
    let image = broker.image();
    let known = image
        .topic(&tp.topic)
        .is_some_and(|t| t.partitions.iter().any(|p| p.partition == tp.partition));
    if !known {
        return Err(error_code(&CoreError::UnknownTopicOrPartition));
    }
    // Known to the cluster but not hosted here: another node leads it.
    let partition = broker
        .partition(tp)
        .ok_or(ResponseError::NotLeaderOrFollower.code())?;
    if !partition.config().cleanup_delete {
        return Err(ResponseError::PolicyViolation.code());
    }
    partition
        .delete_records_before(offset)
        .map_err(|e| error_code(&e))
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsTopic,
    };

    use super::*;
    use crate::handlers::create_topics::test_support::*;

    fn request(topic: &str, partitions: &[(i32, i64)]) -> DeleteRecordsRequest {
        DeleteRecordsRequest::default()
            .with_topics(vec![DeleteRecordsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|(i, o)| {
                            DeleteRecordsPartition::default()
                                .with_partition_index(*i)
                                .with_offset(*o)
                        })
                        .collect(),
                )])
            .with_timeout_ms(5000)
    }

    fn outcome(resp: &DeleteRecordsResponse) -> Vec<(i32, i16, i64)> {
        resp.topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (p.partition_index, p.error_code, p.low_watermark))
            })
            .collect()
    }

    #[tokio::test]
    async fn raises_the_low_watermark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        create_topics_ok(&ctx, vec![creatable("log", 2, &[])]).await;
        let tp = TopicPartition::new("log", 0);
        ctx.broker
            .produce(&tp, batch(10), -1, 30_000)
            .await
            .expect("produce");
        let resp = handle(&ctx, 2, request("log", &[(0, 4)])).await;
        assert_encodes(&resp, 2);
        assert_eq!(outcome(&resp), vec![(0, 0, 4)]);
        assert_eq!(
            ctx.broker
                .partition(&tp)
                .expect("partition")
                .log_start_offset(),
            4
        );

        // -1: up to the high watermark.
        let resp = handle(&ctx, 0, request("log", &[(0, -1)])).await;
        assert_eq!(outcome(&resp), vec![(0, 0, 10)]);
        // Above the high watermark, and partitions or topics that do not exist.
        let resp = handle(&ctx, 1, request("log", &[(0, 11), (1, 0), (7, 0)])).await;
        assert_eq!(
            outcome(&resp),
            vec![
                (0, ResponseError::OffsetOutOfRange.code(), -1),
                (1, 0, 0),
                (7, ResponseError::UnknownTopicOrPartition.code(), -1),
            ]
        );
        let resp = handle(&ctx, 1, request("nope", &[(0, 0)])).await;
        assert_eq!(
            outcome(&resp),
            vec![(0, ResponseError::UnknownTopicOrPartition.code(), -1)]
        );
        let resp = handle(&ctx, 1, request("bad/name", &[(0, 0)])).await;
        assert_eq!(
            outcome(&resp),
            vec![(0, ResponseError::InvalidTopicException.code(), -1)]
        );
    }

    #[tokio::test]
    async fn a_compacted_topic_refuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        create_topics_ok(
            &ctx,
            vec![creatable("compacted", 1, &[("cleanup.policy", "compact")])],
        )
        .await;
        let resp = handle(&ctx, 2, request("compacted", &[(0, -1)])).await;
        assert_eq!(
            outcome(&resp),
            vec![(0, ResponseError::PolicyViolation.code(), -1)]
        );
    }
}
