//! UnregisterBroker (v0, KIP-631): an admin removes a broker that is gone for
//! good, so the metadata stops listing it as a (fenced) broker. Any broker
//! answers: the request goes to the active controller, which takes the broker
//! out of every ISR and the registered brokers, and out of the metadata
//! quorum's learners so the quorum's leader stops replicating to it.
//!
//! Partitions that still list it as a replica keep it (move them off first
//! with a reassignment, e.g. `ferry cluster decommission`). A voter of the
//! quorum is refused with INVALID_REQUEST (remove it as a voter first); an id
//! that is not registered gets BROKER_ID_NOT_REGISTERED. A broker that is still
//! running registers again with its next heartbeat, as a Kafka broker does.

use ferry_core::cluster::UnregisterError;
use kafka_protocol::messages::{UnregisterBrokerRequest, UnregisterBrokerResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::dispatch::RequestContext;
use crate::errors::{error_code, error_message};

fn respond(code: i16, message: Option<String>) -> UnregisterBrokerResponse {
    UnregisterBrokerResponse::default()
        .with_error_code(code)
        .with_error_message(message.map(StrBytes::from_string))
}

pub async fn handle(
    ctx: &RequestContext,
    _version: i16,
    req: UnregisterBrokerRequest,
) -> UnregisterBrokerResponse {
    let node_id = req.broker_id.0;
    let Some(link) = ctx.broker.cluster_link() else {
        // A single node knows one broker, itself, and it is running.
        return if ctx.broker.image().brokers.contains_key(&node_id) {
            respond(
                ResponseError::InvalidRequest.code(),
                Some(format!(
                    "broker {node_id} is this single node, which is running"
                )),
            )
        } else {
            respond(
                ResponseError::BrokerIdNotRegistered.code(),
                Some(format!("broker {node_id} is not registered")),
            )
        };
    };
    match link.unregister_broker(node_id).await {
        Ok(Ok(())) => {
            tracing::info!(peer = %ctx.peer, node_id, "unregistered a broker");
            respond(0, None)
        }
        Ok(Err(e)) => {
            let code = match e {
                UnregisterError::NotRegistered(_) => ResponseError::BrokerIdNotRegistered,
                UnregisterError::Invalid(_) => ResponseError::InvalidRequest,
            };
            respond(code.code(), Some(e.to_string()))
        }
        Err(e) => {
            tracing::info!(peer = %ctx.peer, node_id, error = %e, "unregistering a broker failed");
            respond(error_code(&e), error_message(&e).map(|m| m.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::create_topics::test_support::*;
    use kafka_protocol::messages::BrokerId;

    #[tokio::test]
    async fn a_single_node_refuses_to_unregister_itself_and_knows_no_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        let ask = |id: i32| UnregisterBrokerRequest::default().with_broker_id(BrokerId(id));
        let resp = handle(&ctx, 0, ask(1)).await;
        assert_encodes(&resp, 0);
        assert_eq!(resp.error_code, ResponseError::InvalidRequest.code());
        let resp = handle(&ctx, 0, ask(2)).await;
        assert_eq!(resp.error_code, ResponseError::BrokerIdNotRegistered.code());
        assert!(resp.error_message.is_some());
        assert!(ctx.broker.image().brokers.contains_key(&1));
    }
}
