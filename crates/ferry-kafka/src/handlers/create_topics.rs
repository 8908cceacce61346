//! CreateTopics (v2–7): each topic is checked and created on its own, so one bad
//! topic does not fail the others. v5+ answers with the partition count,
//! replication factor and every config of the new topic; v7 with its id.
//!
//! Checks run in Kafka's order (`ControllerApis.createTopics`, then
//! `ReplicationControlManager`): a name given twice, the name itself, a topic
//! that exists, null config values, then the manual replica assignment.

use std::collections::{BTreeMap, HashMap, HashSet};

use ferry_core::broker::validate_topic_name;
use ferry_core::metadata::MetadataImage;
use ferry_core::{Broker, CoreError, NewTopic};
use kafka_protocol::messages::create_topics_request::{CreatableReplicaAssignment, CreatableTopic};
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use uuid::Uuid;

use crate::dispatch::RequestContext;
use crate::errors::kafka_error;
use crate::handlers::configs::topic_config_entries;
use crate::handlers::create_partitions::check_replica_list;

/// The name of KRaft's metadata topic; ferry's metadata log lives in its
/// partition-0 directory, so a user topic by that name is refused as Kafka does.
pub const CLUSTER_METADATA_TOPIC: &str = "__cluster_metadata";

pub async fn handle(
    ctx: &RequestContext,
    version: i16,
    req: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let broker = ctx.broker.clone();
    // Each created topic is an fsync of the metadata log plus new partition
    // directories: keep that off the runtime threads.
    let work = move || create_all(&broker, version, req);
    match tokio::task::spawn_blocking(work).await {
        Ok(response) => response,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn create_all(broker: &Broker, version: i16, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut occurrences: HashMap<String, usize> = HashMap::new();
    for t in &req.topics {
        *occurrences.entry(t.name.0.to_string()).or_default() += 1;
    }
    let mut reported = HashSet::new();
    let mut results = Vec::with_capacity(req.topics.len());
    for topic in req.topics {
        let name = topic.name.0.to_string();
        if occurrences.get(&name).is_some_and(|n| *n > 1) {
            // One answer per duplicated name, as Kafka gives.
            if reported.insert(name) {
                results.push(error_result(
                    topic.name,
                    ResponseError::InvalidRequest,
                    "Duplicate topic name.",
                ));
            }
            continue;
        }
        results.push(create_one(broker, version, req.validate_only, topic));
    }
    CreateTopicsResponse::default().with_topics(results)
}

fn create_one(
    broker: &Broker,
    version: i16,
    validate_only: bool,
    topic: CreatableTopic,
) -> CreatableTopicResult {
    let wire_name = topic.name.clone();
    let new = match prepare(broker, topic) {
        Ok(new) => new,
        Err((error, message)) => return error_result(wire_name, error, message),
    };
    match broker.create_topic(new, validate_only) {
        Ok(created) => {
            let mut result = CreatableTopicResult::default()
                .with_name(wire_name)
                .with_error_message(None);
            if version >= 7 && !validate_only {
                result.topic_id = created.topic_id;
            }
            if version >= 5 {
                let config = broker.config();
                result.num_partitions = created.partitions.len() as i32;
                result.replication_factor = created
                    .partitions
                    .first()
                    .map_or(0, |p| p.replicas.len() as i16);
                result.configs = Some(
                    topic_config_entries(&config, &created.configs)
                        .into_iter()
                        .map(|e| {
                            CreatableTopicConfigs::default()
                                .with_name(StrBytes::from_static_str(e.name))
                                .with_value(Some(StrBytes::from_string(e.value)))
                                .with_read_only(false)
                                .with_config_source(e.source as i8)
                                .with_is_sensitive(false)
                        })
                        .collect(),
                );
            }
            result
        }
        Err(e) => error_result(wire_name, kafka_error(&e), e.to_string()),
    }
}

/// Checks what ferry-core does not check the way Kafka does, and builds the topic.
fn prepare(broker: &Broker, topic: CreatableTopic) -> Result<NewTopic, (ResponseError, String)> {
    let name = topic.name.0.to_string();
    if name == CLUSTER_METADATA_TOPIC {
        return Err((
            ResponseError::TopicAuthorizationFailed,
            format!("Creation of internal topic {CLUSTER_METADATA_TOPIC} is prohibited."),
        ));
    }
    validate_topic_name(&name).map_err(|e| core_error(&e))?;
    let image = broker.image();
    if image.topic(&name).is_some() {
        return Err((
            ResponseError::TopicAlreadyExists,
            format!("Topic '{name}' already exists."),
        ));
    }
    let mut configs = BTreeMap::new();
    let mut nulls = Vec::new();
    for c in &topic.configs {
        match &c.value {
            // A name given twice: the last value wins, as in Kafka.
            Some(v) => {
                configs.insert(c.name.to_string(), v.to_string());
            }
            None => nulls.push(c.name.to_string()),
        }
    }
    if !nulls.is_empty() {
        return Err((
            ResponseError::InvalidConfig,
            format!(
                "Null value not supported for topic configs: {}",
                nulls.join(",")
            ),
        ));
    }
    let assignments = if topic.assignments.is_empty() {
        Vec::new()
    } else {
        if topic.replication_factor != -1 {
            return Err((
                ResponseError::InvalidRequest,
                "A manual partition assignment was specified, but replication factor was not set to -1.".into(),
            ));
        }
        if topic.num_partitions != -1 {
            return Err((
                ResponseError::InvalidRequest,
                "A manual partition assignment was specified, but numPartitions was not set to -1."
                    .into(),
            ));
        }
        check_assignments(&image, &topic.assignments)?
    };
    Ok(NewTopic {
        name,
        num_partitions: topic.num_partitions,
        replication_factor: topic.replication_factor,
        assignments,
        configs,
    })
}

/// Kafka's rules for a manual assignment: partitions 0, 1, 2, … in order, each
/// with the same number of distinct, registered brokers.
fn check_assignments(
    image: &MetadataImage,
    assignments: &[CreatableReplicaAssignment],
) -> Result<Vec<Vec<i32>>, (ResponseError, String)> {
    let mut replica_lists: Vec<Vec<i32>> = Vec::with_capacity(assignments.len());
    for a in assignments {
        if a.partition_index != replica_lists.len() as i32 {
            return Err((
                ResponseError::InvalidReplicaAssignment,
                "partitions should be a consecutive 0-based integer sequence".into(),
            ));
        }
        let replicas: Vec<i32> = a.broker_ids.iter().map(|b| b.0).collect();
        let expected = replica_lists.first().map(Vec::len);
        check_replica_list(image, &replicas, expected)
            .map_err(|m| (ResponseError::InvalidReplicaAssignment, m))?;
        replica_lists.push(replicas);
    }
    Ok(replica_lists)
}

fn core_error(e: &CoreError) -> (ResponseError, String) {
    (kafka_error(e), e.to_string())
}

fn error_result(
    name: kafka_protocol::messages::TopicName,
    error: ResponseError,
    message: impl Into<String>,
) -> CreatableTopicResult {
    CreatableTopicResult::default()
        .with_name(name)
        .with_topic_id(Uuid::nil())
        .with_error_code(error.code())
        .with_error_message(Some(StrBytes::from_string(message.into())))
}

/// A broker on a temp dir and a request context around it, for handler tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use bytes::Bytes;
    use ferry_core::{Broker, BrokerOptions, SystemClock};
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::{CreateTopicsRequest, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    use crate::dispatch::RequestContext;

    pub fn context(dir: &std::path::Path) -> RequestContext {
        context_with(dir, BTreeMap::new())
    }

    pub fn context_with(
        dir: &std::path::Path,
        configs: BTreeMap<String, String>,
    ) -> RequestContext {
        let options = BrokerOptions {
            node_id: 1,
            data_dir: dir.to_path_buf(),
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            rack: None,
            configs,
        };
        let broker = Broker::open(options, Arc::new(SystemClock)).expect("broker opens");
        RequestContext::new(
            broker,
            "127.0.0.1:50000".parse().expect("addr"),
            "test".into(),
            crate::budget::ResponseBudget::unlimited(),
        )
    }

    pub fn s(v: &str) -> StrBytes {
        StrBytes::from_string(v.to_string())
    }

    pub fn topic_name(v: &str) -> TopicName {
        TopicName(s(v))
    }

    pub fn creatable(name: &str, partitions: i32, configs: &[(&str, &str)]) -> CreatableTopic {
        CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(1)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(s(k))
                            .with_value(Some(s(v)))
                    })
                    .collect(),
            )
    }

    /// Creates topics through the handler and asserts that every one succeeded.
    pub async fn create_topics_ok(ctx: &RequestContext, topics: Vec<CreatableTopic>) {
        let req = CreateTopicsRequest::default()
            .with_topics(topics)
            .with_timeout_ms(5000);
        let resp = super::handle(ctx, 7, req).await;
        for t in &resp.topics {
            assert_eq!(
                t.error_code,
                0,
                "creating {}: {:?}",
                t.name.0.as_str(),
                t.error_message
            );
        }
    }

    /// One record batch of `count` records, as a producer would send it.
    pub fn batch(count: usize) -> Bytes {
        let records: Vec<Record> = (0..count)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: -1,
                timestamp: 1_700_000_000_000 + i as i64,
                key: None,
                value: Some(Bytes::from(format!("value-{i}"))),
                headers: Default::default(),
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).expect("batch encodes");
        buf.freeze()
    }

    /// Asserts that a response encodes at `version` (fields absent there are skipped).
    pub fn assert_encodes<R: Encodable>(resp: &R, version: i16) {
        let mut buf = bytes::BytesMut::new();
        resp.encode(&mut buf, version).expect("response encodes");
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::create_topics_request::CreatableReplicaAssignment;
    use kafka_protocol::messages::BrokerId;

    use super::test_support::*;
    use super::*;

    fn request(topics: Vec<CreatableTopic>, validate_only: bool) -> CreateTopicsRequest {
        CreateTopicsRequest::default()
            .with_topics(topics)
            .with_timeout_ms(5000)
            .with_validate_only(validate_only)
    }

    #[tokio::test]
    async fn creates_a_topic_and_reports_its_settings_in_v5_plus() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        let resp = handle(
            &ctx,
            7,
            request(
                vec![creatable("orders", 3, &[("retention.ms", "1000")])],
                false,
            ),
        )
        .await;
        assert_encodes(&resp, 7);
        let t = &resp.topics[0];
        assert_eq!((t.error_code, t.error_message.as_ref()), (0, None));
        assert_eq!((t.num_partitions, t.replication_factor), (3, 1));
        let image = ctx.broker.image();
        let created = image.topic("orders").expect("topic exists");
        assert_eq!(t.topic_id, created.topic_id);
        assert_eq!(created.partitions.len(), 3);
        let configs = t.configs.as_ref().expect("configs in v5+");
        let retention = configs
            .iter()
            .find(|c| c.name.as_str() == "retention.ms")
            .expect("retention.ms");
        assert_eq!(
            (
                retention.value.as_ref().map(|v| v.as_str()),
                retention.config_source
            ),
            (Some("1000"), 1)
        );
        let segment = configs
            .iter()
            .find(|c| c.name.as_str() == "segment.bytes")
            .expect("segment.bytes");
        assert_eq!(
            (
                segment.value.as_ref().map(|v| v.as_str()),
                segment.config_source
            ),
            (Some("1073741824"), 5)
        );
        assert_eq!(configs.len(), ferry_core::config::TOPIC_CONFIGS.len());
    }

    #[tokio::test]
    async fn old_versions_leave_out_the_v5_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        let resp = handle(&ctx, 2, request(vec![creatable("old", 1, &[])], false)).await;
        assert_encodes(&resp, 2);
        assert_eq!(resp.topics[0].error_code, 0);
        assert_eq!(resp.topics[0].num_partitions, -1);
        assert!(resp.topics[0].topic_id.is_nil());
    }

    #[tokio::test]
    async fn validate_only_answers_like_a_create_but_creates_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        let resp = handle(&ctx, 6, request(vec![creatable("dry", 2, &[])], true)).await;
        let t = &resp.topics[0];
        assert_eq!(
            (t.error_code, t.num_partitions, t.replication_factor),
            (0, 2, 1)
        );
        assert!(ctx.broker.image().topic("dry").is_none());
        assert!(ctx
            .broker
            .partition(&ferry_core::TopicPartition::new("dry", 0))
            .is_none());
        // A validate-only request still reports the errors a real one would.
        let resp = handle(
            &ctx,
            6,
            request(vec![creatable("dry", 1, &[("retention.ms", "soon")])], true),
        )
        .await;
        assert_eq!(
            resp.topics[0].error_code,
            ResponseError::InvalidConfig.code()
        );
    }

    #[tokio::test]
    async fn refuses_what_kafka_refuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        create_topics_ok(
            &ctx,
            vec![creatable("exists", 1, &[]), creatable("my_topic", 1, &[])],
        )
        .await;
        let mut rf3 = creatable("rf3", 1, &[]);
        rf3.replication_factor = 3;
        let mut zero = creatable("zero", 0, &[]);
        zero.num_partitions = 0;
        let topics = vec![
            creatable("exists", 1, &[]),
            creatable("bad/name", 1, &[]),
            rf3,
            zero,
            creatable("cfg", 1, &[("no.such.config", "1")]),
            creatable("dup", 1, &[]),
            creatable("dup", 2, &[]),
            creatable(CLUSTER_METADATA_TOPIC, 1, &[]),
            creatable("my.topic", 1, &[]),
            creatable("fresh", 1, &[]),
        ];
        let resp = handle(&ctx, 7, request(topics, false)).await;
        let codes: Vec<(&str, i16)> = resp
            .topics
            .iter()
            .map(|t| (t.name.0.as_str(), t.error_code))
            .collect();
        assert_eq!(
            codes,
            vec![
                ("exists", ResponseError::TopicAlreadyExists.code()),
                ("bad/name", ResponseError::InvalidTopicException.code()),
                ("rf3", ResponseError::InvalidReplicationFactor.code()),
                ("zero", ResponseError::InvalidPartitions.code()),
                ("cfg", ResponseError::InvalidConfig.code()),
                ("dup", ResponseError::InvalidRequest.code()),
                (
                    CLUSTER_METADATA_TOPIC,
                    ResponseError::TopicAuthorizationFailed.code()
                ),
                ("my.topic", ResponseError::InvalidTopicException.code()),
                ("fresh", 0),
            ]
        );
        assert!(resp
            .topics
            .iter()
            .filter(|t| t.error_code != 0)
            .all(|t| t.error_message.is_some()));
        assert!(ctx.broker.image().topic("dup").is_none());
        assert!(ctx.broker.image().topic("rf3").is_none());
    }

    #[tokio::test]
    async fn takes_a_manual_assignment_and_checks_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        let assign = |index: i32, brokers: &[i32]| {
            CreatableReplicaAssignment::default()
                .with_partition_index(index)
                .with_broker_ids(brokers.iter().map(|b| BrokerId(*b)).collect())
        };
        let manual = |name: &str, assignments: Vec<CreatableReplicaAssignment>| {
            let mut t = creatable(name, -1, &[]);
            t.replication_factor = -1;
            t.assignments = assignments;
            t
        };
        let mut both = manual("both", vec![assign(0, &[1])]);
        both.num_partitions = 2;
        let topics = vec![
            manual("good", vec![assign(0, &[1]), assign(1, &[1])]),
            manual("gap", vec![assign(1, &[1])]),
            manual("nobody", vec![assign(0, &[7])]),
            manual("twice", vec![assign(0, &[1, 1])]),
            manual("empty", vec![assign(0, &[])]),
            both,
        ];
        let resp = handle(&ctx, 7, request(topics, false)).await;
        let codes: Vec<i16> = resp.topics.iter().map(|t| t.error_code).collect();
        let bad = ResponseError::InvalidReplicaAssignment.code();
        assert_eq!(
            codes,
            vec![0, bad, bad, bad, bad, ResponseError::InvalidRequest.code()]
        );
        assert_eq!(
            ctx.broker.image().topic("good").map(|t| t.partitions.len()),
            Some(2)
        );
    }

    #[tokio::test]
    async fn minus_one_takes_the_broker_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let configs = [("num.partitions".to_string(), "4".to_string())]
            .into_iter()
            .collect();
        let ctx = context_with(dir.path(), configs);
        let mut t = creatable("defaults", -1, &[]);
        t.replication_factor = -1;
        let resp = handle(&ctx, 7, request(vec![t], false)).await;
        assert_eq!(
            (
                resp.topics[0].error_code,
                resp.topics[0].num_partitions,
                resp.topics[0].replication_factor
            ),
            (0, 4, 1)
        );
    }

    #[tokio::test]
    async fn a_null_config_value_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        let mut t = creatable("nulls", 1, &[]);
        t.configs.push(
            kafka_protocol::messages::create_topics_request::CreatableTopicConfig::default()
                .with_name(s("retention.ms"))
                .with_value(None),
        );
        let resp = handle(&ctx, 7, request(vec![t], false)).await;
        assert_eq!(
            resp.topics[0].error_code,
            ResponseError::InvalidConfig.code()
        );
        assert!(ctx.broker.image().topic("nulls").is_none());
    }
}
