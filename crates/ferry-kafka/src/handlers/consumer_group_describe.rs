//! ConsumerGroupDescribe (KIP-848): epochs, assignor and every member's current
//! and target assignment of consumer groups.

use ferry_core::group::Assignment;
use ferry_core::metadata::MetadataImage;
use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment as WireAssignment, DescribedGroup, Member, TopicPartitions,
};
use kafka_protocol::messages::{
    ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::dispatch::RequestContext;
use crate::errors::group_error_code;

/// Most groups described by one request.
const GROUPS_MAX: usize = 10_000;

pub async fn handle(
    ctx: &RequestContext,
    _version: i16,
    req: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    let image = ctx.broker.image();
    let groups = req
        .group_ids
        .into_iter()
        .take(GROUPS_MAX)
        .map(
            |id| match ctx.broker.groups().consumer_describe(id.0.as_str()) {
                Err(e) => DescribedGroup::default()
                    .with_group_id(id.clone())
                    .with_error_code(group_error_code(&e))
                    .with_error_message(Some(StrBytes::from_string(format!(
                        "group {} is not a consumer group",
                        id.0.as_str()
                    ))))
                    .with_authorized_operations(i32::MIN),
                Ok(s) => {
                    let members = s
                        .members
                        .into_iter()
                        .map(|m| {
                            Member::default()
                                .with_member_id(StrBytes::from_string(m.member.member_id))
                                .with_instance_id(m.member.instance_id.map(StrBytes::from_string))
                                .with_rack_id(m.member.rack_id.map(StrBytes::from_string))
                                .with_member_epoch(m.member.member_epoch)
                                .with_client_id(StrBytes::from_string(m.member.client_id))
                                .with_client_host(StrBytes::from_string(m.member.client_host))
                                .with_subscribed_topic_names(
                                    m.member
                                        .subscribed_topic_names
                                        .into_iter()
                                        .map(|t| TopicName(StrBytes::from_string(t)))
                                        .collect(),
                                )
                                .with_assignment(wire_assignment(&image, m.member.assigned))
                                .with_target_assignment(wire_assignment(&image, m.target))
                                .with_member_type(1)
                        })
                        .collect();
                    DescribedGroup::default()
                        .with_group_id(id)
                        .with_group_state(StrBytes::from_static_str(s.state.name()))
                        .with_group_epoch(s.group_epoch)
                        .with_assignment_epoch(s.assignment_epoch)
                        .with_assignor_name(StrBytes::from_string(s.assignor_name))
                        .with_members(members)
                        .with_authorized_operations(i32::MIN)
                }
            },
        )
        .collect();
    ConsumerGroupDescribeResponse::default().with_groups(groups)
}

fn wire_assignment(image: &MetadataImage, a: Assignment) -> WireAssignment {
    WireAssignment::default().with_topic_partitions(
        a.into_iter()
            .map(|(topic_id, ps)| {
                let name = image
                    .topic_by_id(&topic_id)
                    .map(|t| t.name.clone())
                    .unwrap_or_default();
                TopicPartitions::default()
                    .with_topic_id(topic_id)
                    .with_topic_name(TopicName(StrBytes::from_string(name)))
                    .with_partitions(ps.into_iter().collect())
            })
            .collect(),
    )
}
