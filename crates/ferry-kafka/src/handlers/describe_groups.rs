//! DescribeGroups: state, protocol and members (with metadata and assignment
//! while Stable) of each group.

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::dispatch::RequestContext;

/// Most groups described by one request.
const GROUPS_MAX: usize = 10_000;

pub async fn handle(
    ctx: &RequestContext,
    version: i16,
    req: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let groups = req
        .groups
        .into_iter()
        .take(GROUPS_MAX)
        .map(|id| match ctx.broker.groups().describe(id.0.as_str()) {
            // Kafka describes an unknown group as Dead; v6 adds GROUP_ID_NOT_FOUND.
            None => DescribedGroup::default()
                .with_group_id(id)
                .with_group_state(StrBytes::from_static_str("Dead"))
                .with_error_code(if version >= 6 {
                    ResponseError::GroupIdNotFound.code()
                } else {
                    0
                })
                .with_authorized_operations(i32::MIN),
            Some(summary) => {
                let members = summary
                    .members
                    .into_iter()
                    .map(|m| {
                        DescribedGroupMember::default()
                            .with_member_id(StrBytes::from_string(m.member_id))
                            .with_group_instance_id(m.group_instance_id.map(StrBytes::from_string))
                            .with_client_id(StrBytes::from_string(m.client_id))
                            .with_client_host(StrBytes::from_string(m.client_host))
                            .with_member_metadata(m.metadata)
                            .with_member_assignment(m.assignment)
                    })
                    .collect();
                DescribedGroup::default()
                    .with_group_id(id)
                    .with_group_state(StrBytes::from_static_str(summary.state.name()))
                    .with_protocol_type(StrBytes::from_string(summary.protocol_type))
                    .with_protocol_data(StrBytes::from_string(summary.protocol))
                    .with_members(members)
                    .with_authorized_operations(i32::MIN)
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}
