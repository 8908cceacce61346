//! FindCoordinator: a group's coordinator is the leader of its partition of
//! `__consumer_offsets`, a transactional id's the leader of its partition of
//! `__transaction_state` (created on first use). v4+ batches several keys.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::dispatch::RequestContext;

/// Key types: 0 group, 1 transactional id, 2 share group (all on this node).
const KEY_TYPES: [i8; 3] = [0, 1, 2];
/// Most keys answered in one batched request.
const KEYS_MAX: usize = 10_000;

pub async fn handle(
    ctx: &RequestContext,
    version: i16,
    req: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    // (node, host, port) of the key's coordinator, or the error to answer.
    let find = |key: &str| -> Result<(BrokerId, StrBytes, i32), ResponseError> {
        if !KEY_TYPES.contains(&req.key_type) {
            return Err(ResponseError::InvalidRequest);
        }
        if key.is_empty() && req.key_type == 0 {
            return Err(ResponseError::InvalidGroupId);
        }
        match ctx.broker.find_coordinator(key, req.key_type == 1) {
            Ok(Some(b)) => Ok((BrokerId(b.node_id), StrBytes::from_string(b.host), b.port)),
            Ok(None) | Err(_) => Err(ResponseError::CoordinatorNotAvailable),
        }
    };
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .iter()
            .take(KEYS_MAX)
            .map(|key| match find(key) {
                Err(e) => Coordinator::default()
                    .with_key(key.clone())
                    .with_node_id(BrokerId(-1))
                    .with_host(StrBytes::from_static_str(""))
                    .with_port(-1)
                    .with_error_code(e.code())
                    .with_error_message(Some(StrBytes::from_string(e.to_string()))),
                Ok((node, host, port)) => Coordinator::default()
                    .with_key(key.clone())
                    .with_node_id(node)
                    .with_host(host)
                    .with_port(port),
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match find(&req.key) {
        Err(e) => FindCoordinatorResponse::default()
            .with_error_code(e.code())
            .with_error_message(Some(StrBytes::from_string(e.to_string())))
            .with_node_id(BrokerId(-1))
            .with_host(StrBytes::from_static_str(""))
            .with_port(-1),
        Ok((node, host, port)) => FindCoordinatorResponse::default()
            .with_node_id(node)
            .with_host(host)
            .with_port(port),
    }
}
