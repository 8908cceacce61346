//! ConsumerGroupHeartbeat (KIP-848): join, heartbeat, reconcile and leave a
//! consumer group; the broker assigns partitions (see ferry-core `group/consumer.rs`).
//!
//! librdkafka (2.4+) uses this API with `group.protocol=consumer` as soon as
//! ApiVersions lists it at v1; it does not look at the `group.version` feature,
//! so ApiVersions stays free of feature tags (old kcat mis-parses them).

use ferry_core::group::{Assignment, ConsumerHeartbeat, GroupError, TopicInfo};
use kafka_protocol::messages::consumer_group_heartbeat_response::{
    Assignment as WireAssignment, TopicPartitions,
};
use kafka_protocol::messages::{ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse};
use kafka_protocol::protocol::StrBytes;

use crate::dispatch::RequestContext;
use crate::errors::group_error_code;

pub async fn handle(
    ctx: &RequestContext,
    _version: i16,
    req: ConsumerGroupHeartbeatRequest,
) -> ConsumerGroupHeartbeatResponse {
    let image = ctx.broker.image();
    let lookup = |name: &str| {
        image.topic(name).map(|t| TopicInfo {
            topic_id: t.topic_id,
            partitions: t.partitions.len() as i32,
        })
    };
    let heartbeat = ConsumerHeartbeat {
        group_id: req.group_id.0.to_string(),
        member_id: req.member_id.to_string(),
        member_epoch: req.member_epoch,
        instance_id: req.instance_id.as_ref().map(|s| s.to_string()),
        rack_id: req.rack_id.as_ref().map(|s| s.to_string()),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        subscribed_topic_names: req
            .subscribed_topic_names
            .as_ref()
            .map(|ts| ts.iter().map(|t| t.0.to_string()).collect()),
        subscribed_topic_regex: req.subscribed_topic_regex.as_ref().map(|s| s.to_string()),
        server_assignor: req.server_assignor.as_ref().map(|s| s.to_string()),
        owned: req.topic_partitions.as_ref().map(|tps| {
            tps.iter()
                .map(|tp| (tp.topic_id, tp.partitions.clone()))
                .collect()
        }),
        client_id: ctx.client_id.clone(),
        client_host: format!("/{}", ctx.peer.ip()),
    };
    match ctx.broker.groups().consumer_heartbeat(heartbeat, &lookup) {
        Ok(r) => ConsumerGroupHeartbeatResponse::default()
            .with_member_id(Some(StrBytes::from_string(r.member_id)))
            .with_member_epoch(r.member_epoch)
            .with_heartbeat_interval_ms(r.heartbeat_interval_ms)
            .with_assignment(r.assignment.map(wire_assignment)),
        Err(e) => {
            log_refusal(ctx, req.group_id.0.as_str(), req.member_id.as_str(), &e);
            ConsumerGroupHeartbeatResponse::default()
                .with_error_code(group_error_code(&e))
                .with_error_message(Some(StrBytes::from_string(e.to_string())))
                .with_member_epoch(-1)
        }
    }
}

fn wire_assignment(a: Assignment) -> WireAssignment {
    WireAssignment::default().with_topic_partitions(
        a.into_iter()
            .map(|(topic_id, ps)| {
                TopicPartitions::default()
                    .with_topic_id(topic_id)
                    .with_partitions(ps.into_iter().collect())
            })
            .collect(),
    )
}

fn log_refusal(ctx: &RequestContext, group: &str, member: &str, e: &GroupError) {
    match e {
        GroupError::InvalidRequest(_)
        | GroupError::UnsupportedAssignor(_)
        | GroupError::GroupMaxSizeReached => {
            tracing::info!(peer = %ctx.peer, client_id = %ctx.client_id, group, member, error = %e, "ConsumerGroupHeartbeat refused")
        }
        _ => {
            tracing::debug!(peer = %ctx.peer, client_id = %ctx.client_id, group, member, error = %e, "ConsumerGroupHeartbeat refused")
        }
    }
}
