//! JoinGroup: long-polls until the group's join phase completes.

use ferry_core::group::{GroupError, JoinRequest, JoinResponse, Reply};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use kafka_protocol::protocol::StrBytes;

use crate::dispatch::RequestContext;
use crate::errors::group_error_code;

pub async fn handle(
    ctx: &RequestContext,
    version: i16,
    req: JoinGroupRequest,
) -> JoinGroupResponse {
    let member_id = req.member_id.to_string();
    let group_instance_id = req.group_instance_id.as_ref().map(|s| s.to_string());
    let join = JoinRequest {
        group_id: req.group_id.0.to_string(),
        member_id: member_id.clone(),
        require_known_member_id: version >= 4 && group_instance_id.is_none(),
        group_instance_id,
        supports_skip_assignment: version >= 9,
        client_id: ctx.client_id.clone(),
        client_host: format!("/{}", ctx.peer.ip()),
        // v0 has no rebalance timeout: the session timeout serves.
        rebalance_timeout_ms: if version == 0 {
            req.session_timeout_ms
        } else {
            req.rebalance_timeout_ms
        },
        session_timeout_ms: req.session_timeout_ms,
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
    };
    let answer = match ctx.broker.groups().join(join) {
        Reply::Now(r) => r,
        Reply::Later(rx) => rx.await.unwrap_or_else(|_| {
            JoinResponse::error(member_id, GroupError::CoordinatorNotAvailable)
        }),
    };
    if let Some(e) = &answer.error {
        if !matches!(
            e,
            GroupError::MemberIdRequired | GroupError::RebalanceInProgress
        ) {
            tracing::debug!(peer = %ctx.peer, group = %req.group_id.0.as_str(), error = %e, "JoinGroup failed");
        }
    }
    let members = answer
        .members
        .into_iter()
        .map(|m| {
            JoinGroupResponseMember::default()
                .with_member_id(StrBytes::from_string(m.member_id))
                .with_group_instance_id(m.group_instance_id.map(StrBytes::from_string))
                .with_metadata(m.metadata)
        })
        .collect();
    // Before v7 the protocol name is not nullable.
    let protocol_name = match answer.protocol_name {
        Some(n) => Some(StrBytes::from_string(n)),
        None if version < 7 => Some(StrBytes::from_static_str("")),
        None => None,
    };
    JoinGroupResponse::default()
        .with_error_code(answer.error.as_ref().map_or(0, group_error_code))
        .with_generation_id(answer.generation_id)
        .with_protocol_type(answer.protocol_type.map(StrBytes::from_string))
        .with_protocol_name(protocol_name)
        .with_leader(StrBytes::from_string(answer.leader))
        .with_skip_assignment(answer.skip_assignment)
        .with_member_id(StrBytes::from_string(answer.member_id))
        .with_members(members)
}
