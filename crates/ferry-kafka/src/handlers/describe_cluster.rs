//! DescribeCluster (v0–1): the cluster id, the controller and the registered
//! brokers, as Kafka's `AuthHelper.computeDescribeClusterResponse` answers on a
//! broker endpoint. On one node the controller is this node.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::dispatch::RequestContext;

/// Kafka's `EndpointType` ids (v1+): ferry's Kafka listener is a broker endpoint.
const ENDPOINT_UNKNOWN: i8 = 0;
const ENDPOINT_BROKER: i8 = 1;
const ENDPOINT_CONTROLLER: i8 = 2;

/// `cluster_authorized_operations` when the client did not ask for them.
const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;

/// AclOperation codes Kafka supports on the CLUSTER resource: CREATE (5), ALTER
/// (7), DESCRIBE (8), CLUSTER_ACTION (9), DESCRIBE_CONFIGS (10), ALTER_CONFIGS
/// (11), IDEMPOTENT_WRITE (12). Without an authorizer every one is allowed.
const CLUSTER_OPERATIONS: [u8; 7] = [5, 7, 8, 9, 10, 11, 12];

pub async fn handle(
    ctx: &RequestContext,
    version: i16,
    req: DescribeClusterRequest,
) -> DescribeClusterResponse {
    let broker = &ctx.broker;
    let response = DescribeClusterResponse::default();
    let endpoint_type = if version >= 1 {
        req.endpoint_type
    } else {
        ENDPOINT_BROKER
    };
    match endpoint_type {
        ENDPOINT_BROKER => {}
        ENDPOINT_UNKNOWN | ENDPOINT_CONTROLLER => {
            let wanted = if endpoint_type == ENDPOINT_CONTROLLER {
                "CONTROLLER"
            } else {
                "UNKNOWN"
            };
            return response.with_error_code(ResponseError::MismatchedEndpointType.code()).with_error_message(Some(
                StrBytes::from_string(format!("The request was sent to an endpoint of type BROKER, but we wanted an endpoint of type {wanted}")),
            ));
        }
        other => {
            return response
                .with_error_code(ResponseError::UnsupportedEndpointType.code())
                .with_error_message(Some(StrBytes::from_string(format!(
                    "Unsupported endpoint type {other}"
                ))));
        }
    }
    let operations = if req.include_cluster_authorized_operations {
        CLUSTER_OPERATIONS
            .iter()
            .fold(0i32, |bits, op| bits | (1 << op))
    } else {
        OPERATIONS_NOT_REQUESTED
    };
    let brokers = broker
        .image()
        .live_brokers()
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.node_id))
                .with_host(StrBytes::from_string(b.host.clone()))
                .with_port(b.port)
                .with_rack(b.rack.clone().map(StrBytes::from_string))
        })
        .collect();
    response
        .with_endpoint_type(ENDPOINT_BROKER)
        .with_cluster_id(StrBytes::from_string(broker.cluster_id()))
        .with_controller_id(BrokerId(broker.controller_id()))
        .with_brokers(brokers)
        .with_cluster_authorized_operations(operations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::create_topics::test_support::*;

    #[tokio::test]
    async fn describes_this_node_as_the_cluster() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        let resp = handle(&ctx, 1, DescribeClusterRequest::default()).await;
        assert_encodes(&resp, 1);
        assert_eq!(resp.error_code, 0);
        assert_eq!(resp.cluster_id.as_str(), ctx.broker.cluster_id());
        assert!(!resp.cluster_id.is_empty());
        assert_eq!(resp.controller_id.0, 1);
        assert_eq!(resp.cluster_authorized_operations, i32::MIN);
        let brokers: Vec<(i32, &str, i32)> = resp
            .brokers
            .iter()
            .map(|b| (b.broker_id.0, b.host.as_str(), b.port))
            .collect();
        assert_eq!(brokers, vec![(1, "127.0.0.1", 9092)]);

        let resp = handle(
            &ctx,
            0,
            DescribeClusterRequest::default().with_include_cluster_authorized_operations(true),
        )
        .await;
        assert_encodes(&resp, 0);
        assert_eq!(resp.cluster_authorized_operations, 8096);
    }

    #[tokio::test]
    async fn refuses_other_endpoint_types() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = context(dir.path());
        let resp = handle(
            &ctx,
            1,
            DescribeClusterRequest::default().with_endpoint_type(ENDPOINT_CONTROLLER),
        )
        .await;
        assert_eq!(
            resp.error_code,
            ResponseError::MismatchedEndpointType.code()
        );
        assert!(resp.brokers.is_empty());
        let resp = handle(
            &ctx,
            1,
            DescribeClusterRequest::default().with_endpoint_type(9),
        )
        .await;
        assert_eq!(
            resp.error_code,
            ResponseError::UnsupportedEndpointType.code()
        );
        // v0 has no endpoint type: it is a broker request.
        let resp = handle(
            &ctx,
            0,
            DescribeClusterRequest::default().with_endpoint_type(ENDPOINT_CONTROLLER),
        )
        .await;
        assert_eq!(resp.error_code, 0);
    }
}
