//! Metadata: brokers, the controller and topic partitions with leaders, replicas
//! and ISR; creates topics on first use when `auto.create.topics.enable` allows.

use ferry_core::metadata::TopicMetadata;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::dispatch::RequestContext;
use crate::errors::error_code;

pub async fn handle(ctx: &RequestContext, version: i16, req: MetadataRequest) -> MetadataResponse {
    let broker = &ctx.broker;
    // v0: an empty list means every topic; v1+: null means every topic.
    let wanted: Option<Vec<_>> = match req.topics {
        None => None,
        Some(t) if t.is_empty() && version == 0 => None,
        Some(t) => Some(t),
    };
    let auto_create = version < 4 || req.allow_auto_topic_creation;
    let mut topics = Vec::new();
    match wanted {
        None => {
            for t in broker.image().topics.values() {
                topics.push(topic_entry(ctx, t));
            }
        }
        Some(requested) => {
            for t in requested {
                let image = broker.image();
                let found = match &t.name {
                    Some(name) => image.topic(name.0.as_str()).cloned(),
                    None => image.topic_by_id(&t.topic_id).cloned(),
                };
                if let Some(topic) = found {
                    topics.push(topic_entry(ctx, &topic));
                    continue;
                }
                let Some(name) = t.name else {
                    topics.push(
                        MetadataResponseTopic::default()
                            .with_topic_id(t.topic_id)
                            .with_error_code(ResponseError::UnknownTopicId.code()),
                    );
                    continue;
                };
                let error = if let Err(e) = ferry_core::broker::validate_topic_name(name.0.as_str())
                {
                    error_code(&e)
                } else if auto_create {
                    match broker.auto_create_topic(name.0.as_str()) {
                        Ok(Some(topic)) => {
                            topics.push(topic_entry(ctx, &topic));
                            continue;
                        }
                        Ok(None) => ResponseError::UnknownTopicOrPartition.code(),
                        Err(e) => {
                            tracing::warn!(topic = %name.0.as_str(), error = %e, "auto-creating a topic failed");
                            error_code(&e)
                        }
                    }
                } else {
                    ResponseError::UnknownTopicOrPartition.code()
                };
                topics.push(
                    MetadataResponseTopic::default()
                        .with_name(Some(name))
                        .with_error_code(error),
                );
            }
        }
    }
    let image = broker.image();
    let brokers = image
        .live_brokers()
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.node_id))
                .with_host(StrBytes::from_string(b.host.clone()))
                .with_port(b.port)
                .with_rack(b.rack.clone().map(StrBytes::from_string))
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_string(broker.cluster_id())))
        .with_controller_id(BrokerId(broker.controller_id()))
        .with_topics(topics)
        .with_cluster_authorized_operations(i32::MIN)
}

fn topic_entry(ctx: &RequestContext, topic: &TopicMetadata) -> MetadataResponseTopic {
    let partitions = topic
        .partitions
        .iter()
        .map(|p| {
            MetadataResponsePartition::default()
                .with_error_code(if p.leader < 0 {
                    ResponseError::LeaderNotAvailable.code()
                } else {
                    0
                })
                .with_partition_index(p.partition)
                .with_leader_id(BrokerId(p.leader))
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(p.replicas.iter().copied().map(BrokerId).collect())
                .with_isr_nodes(p.isr.iter().copied().map(BrokerId).collect())
        })
        .collect();
    let _ = ctx;
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.name.clone()))))
        .with_topic_id(topic.topic_id)
        .with_is_internal(topic.is_internal())
        .with_partitions(partitions)
        .with_topic_authorized_operations(i32::MIN)
}
