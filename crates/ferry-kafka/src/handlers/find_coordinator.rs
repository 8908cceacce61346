//! FindCoordinator: this node coordinates every group and every transactional id
//! (a single node is a cluster of one). v4+ batches several keys.

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
    let options = ctx.broker.options();
    let node = BrokerId(ctx.broker.node_id());
    let host = StrBytes::from_string(options.advertised_host.clone());
    let port = options.advertised_port;
    let error_for = |key: &str| -> Option<ResponseError> {
        if !KEY_TYPES.contains(&req.key_type) {
            Some(ResponseError::InvalidRequest)
        } else if key.is_empty() && req.key_type == 0 {
            Some(ResponseError::InvalidGroupId)
        } else {
            None
        }
    };
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .iter()
            .take(KEYS_MAX)
            .map(|key| match error_for(key) {
                Some(e) => Coordinator::default()
                    .with_key(key.clone())
                    .with_node_id(BrokerId(-1))
                    .with_host(StrBytes::from_static_str(""))
                    .with_port(-1)
                    .with_error_code(e.code())
                    .with_error_message(Some(StrBytes::from_string(e.to_string()))),
                None => Coordinator::default()
                    .with_key(key.clone())
                    .with_node_id(node)
                    .with_host(host.clone())
                    .with_port(port),
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    match error_for(&req.key) {
        Some(e) => FindCoordinatorResponse::default()
            .with_error_code(e.code())
            .with_error_message(Some(StrBytes::from_string(e.to_string())))
            .with_node_id(BrokerId(-1))
            .with_host(StrBytes::from_static_str(""))
            .with_port(-1),
        None => FindCoordinatorResponse::default()
            .with_node_id(node)
            .with_host(host)
            .with_port(port),
    }
}
