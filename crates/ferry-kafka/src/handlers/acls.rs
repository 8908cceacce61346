//! DescribeAcls, CreateAcls and DeleteAcls on a broker without an authorizer:
//! ferry has no ACLs yet, so it answers as Kafka does when no
//! `authorizer.class.name` is set, with SECURITY_DISABLED for the request (or
//! each creation and filter in it). Admin tools and consoles then report that
//! security is disabled instead of failing on an unknown API.

use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::DeleteAclsFilterResult;
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::dispatch::RequestContext;

const NO_AUTHORIZER: &str = "No Authorizer is configured.";

fn disabled() -> (i16, Option<StrBytes>) {
    (
        ResponseError::SecurityDisabled.code(),
        Some(StrBytes::from_static_str(NO_AUTHORIZER)),
    )
}

pub async fn describe(
    _ctx: &RequestContext,
    _version: i16,
    _req: DescribeAclsRequest,
) -> DescribeAclsResponse {
    let (code, message) = disabled();
    DescribeAclsResponse::default()
        .with_error_code(code)
        .with_error_message(message)
}

pub async fn create(
    _ctx: &RequestContext,
    _version: i16,
    req: CreateAclsRequest,
) -> CreateAclsResponse {
    let results = req
        .creations
        .iter()
        .map(|_| {
            let (code, message) = disabled();
            AclCreationResult::default()
                .with_error_code(code)
                .with_error_message(message)
        })
        .collect();
    CreateAclsResponse::default().with_results(results)
}

pub async fn delete(
    _ctx: &RequestContext,
    _version: i16,
    req: DeleteAclsRequest,
) -> DeleteAclsResponse {
    let results = req
        .filters
        .iter()
        .map(|_| {
            let (code, message) = disabled();
            DeleteAclsFilterResult::default()
                .with_error_code(code)
                .with_error_message(message)
        })
        .collect();
    DeleteAclsResponse::default().with_filter_results(results)
}
