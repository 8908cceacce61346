//! TxnOffsetCommit: offsets written as part of a transaction. They are stored
//! at once but become visible to OffsetFetch only when the transaction commits.

use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};

use ferry_core::group::{OffsetCommit, TxnCommitRequest};
use ferry_core::txn::TxnOffsetCommitError;
use ferry_core::TopicPartition;

use crate::dispatch::RequestContext;
use crate::errors::{group_error_code, txn_error};

pub async fn handle(
    ctx: &RequestContext,
    version: i16,
    req: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let mut offsets = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            offsets.push((
                TopicPartition::new(t.name.0.as_str(), p.partition_index),
                OffsetCommit {
                    offset: p.committed_offset,
                    leader_epoch: if version >= 2 {
                        p.committed_leader_epoch
                    } else {
                        -1
                    },
                    metadata: p
                        .committed_metadata
                        .as_ref()
                        .map(|m| m.as_str().to_string()),
                },
            ));
        }
    }
    let requested: Vec<TopicPartition> = offsets.iter().map(|(tp, _)| tp.clone()).collect();
    let commit = TxnCommitRequest {
        group_id: req.group_id.0.as_str().to_string(),
        producer_id: req.producer_id.0,
        producer_epoch: req.producer_epoch,
        generation_id: if version >= 3 { req.generation_id } else { -1 },
        member_id: if version >= 3 {
            req.member_id.as_str().to_string()
        } else {
            String::new()
        },
        group_instance_id: if version >= 3 {
            req.group_instance_id
                .as_ref()
                .map(|s| s.as_str().to_string())
        } else {
            None
        },
        offsets,
    };
    let codes: Vec<(TopicPartition, i16)> = match ferry_core::txn::txn_offset_commit(
        &ctx.broker,
        req.transactional_id.0.as_str(),
        commit,
    )
    .await
    {
        Ok(results) => results
            .into_iter()
            .map(|(tp, r)| (tp, r.err().map_or(0, |e| group_error_code(&e))))
            .collect(),
        Err(e) => {
            tracing::debug!(peer = %ctx.peer, error = ?e, "TxnOffsetCommit refused");
            let code = match &e {
                TxnOffsetCommitError::Txn(e) => txn_error(e, version >= 3).code(),
                TxnOffsetCommitError::Group(e) => group_error_code(e),
            };
            requested.into_iter().map(|tp| (tp, code)).collect()
        }
    };
    let mut topics: Vec<TxnOffsetCommitResponseTopic> = Vec::new();
    for (tp, code) in codes {
        let p = TxnOffsetCommitResponsePartition::default()
            .with_partition_index(tp.partition)
            .with_error_code(code);
        match topics.iter_mut().find(|t| t.name.0.as_str() == tp.topic) {
            Some(t) => t.partitions.push(p),
            None => topics.push(
                TxnOffsetCommitResponseTopic::default()
                    .with_name(kafka_protocol::messages::TopicName(
                        kafka_protocol::protocol::StrBytes::from_string(tp.topic.clone()),
                    ))
                    .with_partitions(vec![p]),
            ),
        }
    }
    TxnOffsetCommitResponse::default().with_topics(topics)
}
