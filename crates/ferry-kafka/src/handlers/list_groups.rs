//! ListGroups, filtered by state (v4+) and by type (v5+), case-insensitively.

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::protocol::StrBytes;

use crate::dispatch::RequestContext;

pub async fn handle(
    ctx: &RequestContext,
    _version: i16,
    req: ListGroupsRequest,
) -> ListGroupsResponse {
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_lowercase()).collect();
    let types: Vec<String> = req.types_filter.iter().map(|s| s.to_lowercase()).collect();
    let groups = ctx
        .broker
        .groups()
        .list()
        .into_iter()
        .filter(|g| states.is_empty() || states.contains(&g.state.name().to_lowercase()))
        .filter(|g| types.is_empty() || types.contains(&g.group_type.name().to_string()))
        .map(|g| {
            ListedGroup::default()
                .with_group_id(GroupId(StrBytes::from_string(g.group_id)))
                .with_protocol_type(StrBytes::from_string(g.protocol_type))
                .with_group_state(StrBytes::from_static_str(g.state.name()))
                .with_group_type(StrBytes::from_static_str(g.group_type.name()))
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}
