//! The metadata quorum's admin APIs (KIP-853): DescribeQuorum (v0–2) lists the
//! voters and observers (openraft learners) with each one's log end, and
//! AddRaftVoter / RemoveRaftVoter (v0) promote a caught-up learner to voter or
//! demote a voter to learner. Any broker answers: the request goes to the
//! quorum's leader, which alone knows every replica's progress and may change
//! the membership.
//!
//! ferry has no directory ids: a replica's is the zero UUID, and the one in a
//! request is not checked. A new voter is reached at the address it joined the
//! quorum with, so AddRaftVoter's listeners are not used.

use std::time::Duration;

use ferry_core::cluster::{QuorumDescription, QuorumReplica, VoterChangeError};
use ferry_core::CoreError;
use kafka_protocol::messages::describe_quorum_response::{
    Listener, Node, PartitionData, ReplicaState, TopicData,
};
use kafka_protocol::messages::{
    AddRaftVoterRequest, AddRaftVoterResponse, BrokerId, DescribeQuorumRequest,
    DescribeQuorumResponse, RemoveRaftVoterRequest, RemoveRaftVoterResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::dispatch::RequestContext;
use crate::errors::{error_code, error_message};

/// The metadata log's topic, as KRaft names it.
pub const METADATA_TOPIC: &str = "__cluster_metadata";
/// The listener name a voter's controller address is reported under.
const CONTROLLER_LISTENER: &str = "CONTROLLER";
/// Longest AddRaftVoter waits for the learner to catch up.
const ADD_VOTER_WAIT_MAX: Duration = Duration::from_secs(60);

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// The code and message of a refused voter change.
fn voter_error(e: &VoterChangeError) -> (ResponseError, String) {
    let code = match e {
        VoterChangeError::DuplicateVoter(_) => ResponseError::DuplicateVoter,
        VoterChangeError::VoterNotFound(_) => ResponseError::VoterNotFound,
        VoterChangeError::TimedOut(_) => ResponseError::RequestTimedOut,
        VoterChangeError::Invalid(_) => ResponseError::InvalidRequest,
    };
    (code, e.to_string())
}

/// `Some((code, message))` when the request names a cluster id (neither null
/// nor empty) that is not this cluster's.
fn check_cluster_id(ctx: &RequestContext, cluster_id: Option<&StrBytes>) -> Option<(i16, String)> {
    let ours = ctx.broker.cluster_id();
    match cluster_id {
        Some(id) if !id.is_empty() && id.as_str() != ours => Some((
            ResponseError::InconsistentClusterId.code(),
            format!("the cluster id is {ours}, not {}", id.as_str()),
        )),
        _ => None,
    }
}

fn no_quorum() -> CoreError {
    CoreError::InvalidRequest("a single node has no metadata quorum".into())
}

pub async fn describe_quorum(
    ctx: &RequestContext,
    version: i16,
    req: DescribeQuorumRequest,
) -> DescribeQuorumResponse {
    let error = |code: i16, message: String| {
        DescribeQuorumResponse::default()
            .with_error_code(code)
            .with_error_message((version >= 2).then(|| text(message)))
    };
    let asks_metadata_partition = matches!(
        req.topics.as_slice(),
        [t] if t.topic_name.0.as_str() == METADATA_TOPIC
            && matches!(t.partitions.as_slice(), [p] if p.partition_index == 0)
    );
    if !asks_metadata_partition {
        let e = ResponseError::UnknownTopicOrPartition;
        return error(
            e.code(),
            format!("only {METADATA_TOPIC}-0 can be described"),
        );
    }
    let Some(link) = ctx.broker.cluster_link() else {
        let e = no_quorum();
        return error(error_code(&e), e.to_string());
    };
    match link.describe_quorum().await {
        Ok(d) => describe_response(version, d),
        Err(e) => {
            tracing::info!(peer = %ctx.peer, error = %e, "describing the metadata quorum failed");
            error(error_code(&e), e.to_string())
        }
    }
}

fn describe_response(version: i16, d: QuorumDescription) -> DescribeQuorumResponse {
    let state = |r: &QuorumReplica| {
        ReplicaState::default()
            .with_replica_id(BrokerId(r.node_id))
            .with_log_end_offset(r.log_end_offset)
            .with_last_fetch_timestamp(-1)
            .with_last_caught_up_timestamp(-1)
    };
    let partition = PartitionData::default()
        .with_partition_index(0)
        .with_leader_id(BrokerId(d.leader_id))
        .with_leader_epoch(d.leader_epoch)
        .with_high_watermark(d.high_watermark)
        .with_current_voters(d.voters.iter().map(state).collect())
        .with_observers(d.observers.iter().map(state).collect());
    let topic = TopicData::default()
        .with_topic_name(TopicName(text(METADATA_TOPIC)))
        .with_partitions(vec![partition]);
    let mut response = DescribeQuorumResponse::default().with_topics(vec![topic]);
    if version >= 2 {
        // Every member's controller endpoint: the voters', as Kafka reports,
        // and the observers' too, which ferry knows from the membership.
        let nodes = d
            .voters
            .iter()
            .chain(&d.observers)
            .map(|r| {
                let listeners = r
                    .addr
                    .rsplit_once(':')
                    .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
                    .map(|(host, port)| {
                        Listener::default()
                            .with_name(text(CONTROLLER_LISTENER))
                            .with_host(text(host))
                            .with_port(port)
                    });
                Node::default()
                    .with_node_id(BrokerId(r.node_id))
                    .with_listeners(listeners.into_iter().collect())
            })
            .collect();
        response = response.with_nodes(nodes);
    }
    response
}

pub async fn add_raft_voter(
    ctx: &RequestContext,
    _version: i16,
    req: AddRaftVoterRequest,
) -> AddRaftVoterResponse {
    let respond = |code: i16, message: Option<String>| {
        AddRaftVoterResponse::default()
            .with_error_code(code)
            .with_error_message(message.map(text))
    };
    if let Some((code, message)) = check_cluster_id(ctx, req.cluster_id.as_ref()) {
        return respond(code, Some(message));
    }
    let Some(link) = ctx.broker.cluster_link() else {
        let e = no_quorum();
        return respond(error_code(&e), Some(e.to_string()));
    };
    let wait = Duration::from_millis(req.timeout_ms.max(0) as u64).min(ADD_VOTER_WAIT_MAX);
    match link.add_voter(req.voter_id, wait).await {
        Ok(Ok(())) => {
            tracing::info!(peer = %ctx.peer, voter = req.voter_id, "added a voter to the metadata quorum");
            respond(0, None)
        }
        Ok(Err(e)) => {
            let (code, message) = voter_error(&e);
            respond(code.code(), Some(message))
        }
        Err(e) => {
            tracing::info!(peer = %ctx.peer, error = %e, "adding a voter failed");
            respond(error_code(&e), error_message(&e).map(|m| m.to_string()))
        }
    }
}

pub async fn remove_raft_voter(
    ctx: &RequestContext,
    _version: i16,
    req: RemoveRaftVoterRequest,
) -> RemoveRaftVoterResponse {
    let respond = |code: i16, message: Option<String>| {
        RemoveRaftVoterResponse::default()
            .with_error_code(code)
            .with_error_message(message.map(text))
    };
    if let Some((code, message)) = check_cluster_id(ctx, req.cluster_id.as_ref()) {
        return respond(code, Some(message));
    }
    let Some(link) = ctx.broker.cluster_link() else {
        let e = no_quorum();
        return respond(error_code(&e), Some(e.to_string()));
    };
    match link.remove_voter(req.voter_id).await {
        Ok(Ok(())) => {
            tracing::info!(peer = %ctx.peer, voter = req.voter_id, "removed a voter from the metadata quorum");
            respond(0, None)
        }
        Ok(Err(e)) => {
            let (code, message) = voter_error(&e);
            respond(code.code(), Some(message))
        }
        Err(e) => {
            tracing::info!(peer = %ctx.peer, error = %e, "removing a voter failed");
            respond(error_code(&e), error_message(&e).map(|m| m.to_string()))
        }
    }
}
