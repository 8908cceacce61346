//! OffsetDelete: removes committed offsets of topics the group does not consume.

use ferry_core::group::GroupError;
use ferry_core::TopicPartition;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};

use crate::dispatch::RequestContext;
use crate::errors::group_error_code;

pub async fn handle(
    ctx: &RequestContext,
    _version: i16,
    req: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let image = ctx.broker.image();
    let mut plan: Vec<(TopicPartition, Option<GroupError>)> = Vec::new();
    for t in &req.topics {
        let name = t.name.0.to_string();
        let known = image.topic(&name);
        for p in &t.partitions {
            let exists = known.is_some_and(|k| {
                k.partitions
                    .iter()
                    .any(|x| x.partition == p.partition_index)
            });
            let early = (!exists).then_some(GroupError::UnknownTopicOrPartition);
            plan.push((TopicPartition::new(name.clone(), p.partition_index), early));
        }
    }
    let wanted: Vec<TopicPartition> = plan
        .iter()
        .filter(|(_, e)| e.is_none())
        .map(|(tp, _)| tp.clone())
        .collect();
    let results = match ctx
        .broker
        .groups()
        .delete_offsets(req.group_id.0.as_str(), &wanted)
        .await
    {
        Ok(r) => r,
        Err(e) => return OffsetDeleteResponse::default().with_error_code(group_error_code(&e)),
    };
    let mut topics: Vec<OffsetDeleteResponseTopic> = Vec::new();
    for (tp, early) in plan {
        let result = match early {
            Some(e) => Err(e),
            None => results
                .iter()
                .find(|(t, _)| *t == tp)
                .map(|(_, r)| r.clone())
                .unwrap_or(Ok(())),
        };
        let p = OffsetDeleteResponsePartition::default()
            .with_partition_index(tp.partition)
            .with_error_code(result.err().as_ref().map_or(0, group_error_code));
        match topics.iter_mut().find(|t| t.name.0.as_str() == tp.topic) {
            Some(t) => t.partitions.push(p),
            None => topics.push(
                OffsetDeleteResponseTopic::default()
                    .with_name(kafka_protocol::messages::TopicName(
                        kafka_protocol::protocol::StrBytes::from_string(tp.topic.clone()),
                    ))
                    .with_partitions(vec![p]),
            ),
        }
    }
    OffsetDeleteResponse::default().with_topics(topics)
}
