//! LeaveGroup: one member (v0–v2) or a batch of members (v3+, KIP-345).

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use crate::dispatch::RequestContext;
use crate::errors::group_error_code;

/// Most members removed by one request.
const MEMBERS_MAX: usize = 10_000;

pub async fn handle(
    ctx: &RequestContext,
    version: i16,
    req: LeaveGroupRequest,
) -> LeaveGroupResponse {
    let members: Vec<(String, Option<String>)> = if version < 3 {
        vec![(req.member_id.to_string(), None)]
    } else {
        req.members
            .iter()
            .take(MEMBERS_MAX)
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    };
    match ctx.broker.groups().leave(req.group_id.0.as_str(), &members) {
        Err(e) => LeaveGroupResponse::default().with_error_code(group_error_code(&e)),
        Ok(results) if version < 3 => {
            let code = results
                .first()
                .and_then(|r| r.as_ref().err())
                .map_or(0, group_error_code);
            LeaveGroupResponse::default().with_error_code(code)
        }
        Ok(results) => {
            let responses = req
                .members
                .into_iter()
                .zip(results)
                .map(|(m, r)| {
                    MemberResponse::default()
                        .with_member_id(m.member_id)
                        .with_group_instance_id(m.group_instance_id)
                        .with_error_code(r.err().as_ref().map_or(0, group_error_code))
                })
                .collect();
            LeaveGroupResponse::default().with_members(responses)
        }
    }
}
