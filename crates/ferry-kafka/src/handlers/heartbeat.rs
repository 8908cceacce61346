//! Heartbeat: keeps a member's session alive; tells it when to rejoin.

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use crate::dispatch::RequestContext;
use crate::errors::group_error_code;

pub async fn handle(
    ctx: &RequestContext,
    _version: i16,
    req: HeartbeatRequest,
) -> HeartbeatResponse {
    let result = ctx.broker.groups().heartbeat(
        req.group_id.0.as_str(),
        req.member_id.as_str(),
        req.group_instance_id.as_ref().map(|s| s.as_str()),
        req.generation_id,
    );
    HeartbeatResponse::default().with_error_code(result.err().as_ref().map_or(0, group_error_code))
}
