//! DeleteGroups: only empty groups; their offsets go with them (tombstones).

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};

use crate::dispatch::RequestContext;
use crate::errors::group_error_code;

/// Most groups deleted by one request.
const GROUPS_MAX: usize = 10_000;

pub async fn handle(
    ctx: &RequestContext,
    _version: i16,
    req: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let ids: Vec<String> = req
        .groups_names
        .iter()
        .take(GROUPS_MAX)
        .map(|g| g.0.to_string())
        .collect();
    let results = ctx.broker.groups().delete_groups(&ids).await;
    let results = req
        .groups_names
        .into_iter()
        .zip(results)
        .map(|(id, r)| {
            DeletableGroupResult::default()
                .with_group_id(id)
                .with_error_code(r.err().as_ref().map_or(0, group_error_code))
        })
        .collect();
    DeleteGroupsResponse::default().with_results(results)
}
