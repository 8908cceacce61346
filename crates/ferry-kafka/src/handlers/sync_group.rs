//! SyncGroup: the leader sends the assignment; every member long-polls for its own.

use ferry_core::group::{GroupError, Reply, SyncRequest, SyncResponse};
use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;

use crate::dispatch::RequestContext;
use crate::errors::group_error_code;

pub async fn handle(
    ctx: &RequestContext,
    _version: i16,
    req: SyncGroupRequest,
) -> SyncGroupResponse {
    let sync = SyncRequest {
        group_id: req.group_id.0.to_string(),
        generation_id: req.generation_id,
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
        protocol_type: req.protocol_type.as_ref().map(|s| s.to_string()),
        protocol_name: req.protocol_name.as_ref().map(|s| s.to_string()),
        assignments: req
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect(),
    };
    let answer = match ctx.broker.groups().sync(sync) {
        Reply::Now(r) => r,
        // The group moved on without answering (e.g. the member was replaced).
        Reply::Later(rx) => rx
            .await
            .unwrap_or_else(|_| SyncResponse::error(GroupError::RebalanceInProgress)),
    };
    if let Some(e) = &answer.error {
        tracing::debug!(peer = %ctx.peer, group = %req.group_id.0.as_str(), error = %e, "SyncGroup failed");
    }
    SyncGroupResponse::default()
        .with_error_code(answer.error.as_ref().map_or(0, group_error_code))
        .with_protocol_type(answer.protocol_type.map(StrBytes::from_string))
        .with_protocol_name(answer.protocol_name.map(StrBytes::from_string))
        .with_assignment(answer.assignment)
}
