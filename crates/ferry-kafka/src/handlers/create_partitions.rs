//! CreatePartitions (v0–3): raises a topic's partition count, optionally with a
//! replica list per new partition. Each topic succeeds or fails on its own; the
//! checks and messages follow Kafka's `ReplicationControlManager.createPartitions`.

use std::collections::{HashMap, HashSet};

use ferry_core::broker::validate_topic_name;
use ferry_core::metadata::MetadataImage;
use ferry_core::{Broker, CoreError};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::dispatch::RequestContext;
use crate::errors::kafka_error;

pub async fn handle(
    ctx: &RequestContext,
    _version: i16,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let broker = ctx.broker.clone();
    let (peer, client_id) = (ctx.peer, ctx.client_id.clone());
    // New partitions mean a metadata fsync and new log directories.
    let work = move || {
        let mut occurrences: HashMap<String, usize> = HashMap::new();
        for t in &req.topics {
            *occurrences.entry(t.name.0.to_string()).or_default() += 1;
        }
        let mut reported = HashSet::new();
        let mut results = Vec::with_capacity(req.topics.len());
        for topic in req.topics {
            let name = topic.name.0.to_string();
            let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
            if occurrences.get(&name).is_some_and(|n| *n > 1) {
                if reported.insert(name) {
                    results.push(with_error(
                        result,
                        ResponseError::InvalidRequest,
                        "Duplicate topic name.",
                    ));
                }
                continue;
            }
            let count = topic.count;
            match create(&broker, topic, req.validate_only) {
                Ok(()) => {
                    if !req.validate_only {
                        tracing::info!(%peer, %client_id, topic = %name, partitions = count, "raised the partition count");
                    }
                    results.push(result);
                }
                Err((error, message)) => results.push(with_error(result, error, message)),
            }
        }
        CreatePartitionsResponse::default().with_results(results)
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(response) => response,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn create(
    broker: &Broker,
    topic: CreatePartitionsTopic,
    validate_only: bool,
) -> Result<(), (ResponseError, String)> {
    let name = topic.name.0.as_str();
    validate_topic_name(name).map_err(|e| core_error(&e))?;
    let image = broker.image();
    let existing = image
        .topic(name)
        .ok_or_else(|| core_error(&CoreError::UnknownTopicOrPartition))?;
    let current = existing.partitions.len() as i32;
    if topic.count == current {
        return Err((
            ResponseError::InvalidPartitions,
            format!("Topic already has {current} partition(s)."),
        ));
    }
    if topic.count < current {
        return Err((
            ResponseError::InvalidPartitions,
            format!("The topic {name} currently has {current} partition(s); {} would not be an increase.", topic.count),
        ));
    }
    let assignments = match &topic.assignments {
        None => Vec::new(),
        Some(assignments) => {
            let additional = topic.count - current;
            if assignments.len() as i32 != additional {
                return Err((
                    ResponseError::InvalidReplicaAssignment,
                    format!(
                        "Attempted to add {additional} additional partition(s), but only {} assignment(s) were specified.",
                        assignments.len()
                    ),
                ));
            }
            let replication_factor = existing.partitions.first().map(|p| p.replicas.len());
            let mut lists = Vec::with_capacity(assignments.len());
            for a in assignments {
                let replicas: Vec<i32> = a.broker_ids.iter().map(|b| b.0).collect();
                check_replica_list(&image, &replicas, replication_factor)
                    .map_err(|m| (ResponseError::InvalidReplicaAssignment, m))?;
                lists.push(replicas);
            }
            lists
        }
    };
    broker
        .create_partitions(name, topic.count, assignments, validate_only)
        .map_err(|e| core_error(&e))
}

/// Kafka's checks of one partition's manual replica list: not empty, no broker
/// twice, every broker registered, and as many replicas as the other partitions.
pub(crate) fn check_replica_list(
    image: &MetadataImage,
    replicas: &[i32],
    replication_factor: Option<usize>,
) -> Result<(), String> {
    if replicas.is_empty() {
        return Err("The manual partition assignment includes an empty replica list.".into());
    }
    let mut seen = HashSet::new();
    for broker_id in replicas {
        if !seen.insert(broker_id) {
            return Err(format!(
                "The manual partition assignment includes the broker {broker_id} more than once."
            ));
        }
        if !image.brokers.contains_key(broker_id) {
            return Err(format!("The manual partition assignment includes broker {broker_id}, but no such broker is registered."));
        }
    }
    if let Some(expected) = replication_factor.filter(|rf| *rf != replicas.len()) {
        return Err(format!(
            "The manual partition assignment includes a partition with {} replica(s), but this is not consistent with previous partitions, which have {expected} replica(s).",
            replicas.len()
        ));
    }
    Ok(())
}

fn core_error(e: &CoreError) -> (ResponseError, String) {
    (kafka_error(e), e.to_string())
}

fn with_error(
    result: CreatePartitionsTopicResult,
    error: ResponseError,
    message: impl Into<String>,
) -> CreatePartitionsTopicResult {
    result
        .with_error_code(error.code())
        .with_error_message(Some(StrBytes::from_string(message.into())))
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::create_partitions_request::CreatePartitionsAssignment;
    use kafka_protocol::messages::BrokerId;

    use super::*;
    use crate::handlers::create_topics::test_support::*;

    fn grow(name: &str, count: i32, assignments: Option<Vec<Vec<i32>>>) -> CreatePartitionsTopic {
        CreatePartitionsTopic::default()
            .with_name(topic_name(name))
            .with_count(count)
            .with_assignments(assignments.map(|lists| {
                lists
                    .into_iter()
                    .map(|l| {
                        CreatePartitionsAssignment::default()
                            .with_broker_ids(l.into_iter().map(BrokerId).collect())
                    })
                    .collect()
            }))
    }

    fn request(topics: Vec<CreatePartitionsTopic>, validate_only: bool) -> CreatePartitionsRequest {
        CreatePartitionsRequest::default()
            .with_topics(topics)
            .with_timeout_ms(5000)
            .with_validate_only(validate_only)
    }

    fn partitions(ctx: &RequestContext, name: &str) -> usize {
        ctx.broker
            .image()
            .topic(name)
            .map_or(0, |t| t.partitions.len())
    }

    #[tokio::test]
    async fn raises_the_count_and_opens_the_new_partitions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        create_topics_ok(
            &ctx,
            vec![creatable("grow", 1, &[]), creatable("manual", 1, &[])],
        )
        .await;
        let resp = handle(
            &ctx,
            3,
            request(
                vec![
                    grow("grow", 3, None),
                    grow("manual", 2, Some(vec![vec![1]])),
                ],
                false,
            ),
        )
        .await;
        assert_encodes(&resp, 3);
        assert!(
            resp.results
                .iter()
                .all(|r| r.error_code == 0 && r.error_message.is_none()),
            "{resp:?}"
        );
        assert_eq!(
            (partitions(&ctx, "grow"), partitions(&ctx, "manual")),
            (3, 2)
        );
        assert!(ctx
            .broker
            .partition(&ferry_core::TopicPartition::new("grow", 2))
            .is_some());
    }

    #[tokio::test]
    async fn validate_only_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        create_topics_ok(&ctx, vec![creatable("dry", 1, &[])]).await;
        let resp = handle(&ctx, 0, request(vec![grow("dry", 5, None)], true)).await;
        assert_eq!(resp.results[0].error_code, 0);
        assert_eq!(partitions(&ctx, "dry"), 1);
    }

    #[tokio::test]
    async fn refuses_what_kafka_refuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        create_topics_ok(&ctx, vec![creatable("t", 2, &[])]).await;
        let topics = vec![
            grow("missing", 3, None),
            grow("bad/name", 3, None),
            grow("t", 2, None),
            grow("t", 1, None),
            grow("dup", 4, None),
            grow("dup", 5, None),
        ];
        let resp = handle(&ctx, 1, request(topics, false)).await;
        let codes: Vec<i16> = resp.results.iter().map(|r| r.error_code).collect();
        assert_eq!(
            codes,
            vec![
                ResponseError::UnknownTopicOrPartition.code(),
                ResponseError::InvalidTopicException.code(),
                ResponseError::InvalidRequest.code(),
                ResponseError::InvalidRequest.code(),
            ]
        );
        let single =
            |topic| async { handle(&ctx, 3, request(vec![topic], false)).await.results[0].clone() };
        let same = single(grow("t", 2, None)).await;
        assert_eq!(same.error_code, ResponseError::InvalidPartitions.code());
        assert_eq!(
            same.error_message.as_ref().map(|m| m.as_str()),
            Some("Topic already has 2 partition(s).")
        );
        assert_eq!(
            single(grow("t", 1, None)).await.error_code,
            ResponseError::InvalidPartitions.code()
        );
        let bad = ResponseError::InvalidReplicaAssignment.code();
        assert_eq!(
            single(grow("t", 4, Some(vec![vec![1]]))).await.error_code,
            bad
        );
        assert_eq!(
            single(grow("t", 3, Some(vec![vec![9]]))).await.error_code,
            bad
        );
        assert_eq!(
            single(grow("t", 3, Some(vec![vec![]]))).await.error_code,
            bad
        );
        assert_eq!(partitions(&ctx, "t"), 2);
    }
}
