//! Routes a request to its handler by API key, after checking the version against
//! what ferry implements. [`SUPPORTED`] is the single table that both routing and
//! the ApiVersions answer read, so ferry advertises exactly what it implements.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use ferry_core::Broker;
use kafka_protocol::messages::*;
use parking_lot::Mutex;

use crate::budget::{Reservation, ResponseBudget};
use crate::frame::{self, ParsedHeader};
use crate::handlers;

/// What the connection does with a request.
#[derive(Debug)]
pub enum Outcome {
    Respond(Bytes),
    /// Produce with acks=0: the client expects nothing back.
    NoResponse,
    /// The request could not be parsed or answered: close the connection.
    Close,
}

/// Who sent a request, for handlers and log lines.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub broker: Arc<Broker>,
    pub peer: SocketAddr,
    pub client_id: String,
    /// The connection's share of the response memory budget.
    pub responses: ResponseBudget,
    /// Budget held by this request's response, set by its handler; the
    /// connection gives it back once the response is written.
    pub reservation: Arc<Mutex<Option<Reservation>>>,
}

impl RequestContext {
    pub fn new(
        broker: Arc<Broker>,
        peer: SocketAddr,
        client_id: String,
        responses: ResponseBudget,
    ) -> RequestContext {
        RequestContext {
            broker,
            peer,
            client_id,
            responses,
            reservation: Arc::new(Mutex::new(None)),
        }
    }

    /// Keeps `reservation` until this request's response is written.
    pub fn hold(&self, reservation: Reservation) {
        *self.reservation.lock() = Some(reservation);
    }
}

/// The APIs and versions ferry implements: (key, min version, max version).
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::TxnOffsetCommit, 0, 4),
    (ApiKey::EndTxn, 0, 4),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 0),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::DescribeQuorum, 0, 2),
    (ApiKey::AddRaftVoter, 0, 0),
    (ApiKey::RemoveRaftVoter, 0, 0),
    (ApiKey::UnregisterBroker, 0, 0),
    (ApiKey::DescribeLogDirs, 0, 4),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
];

/// The version range ferry implements for `key`.
pub fn supported(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, min, max)| (*min, *max))
}

macro_rules! route {
    ($ctx:ident, $key:ident, $version:ident, $corr:ident, $body:ident, { $($api:ident => $req:ty => $handler:path),* $(,)? }) => {
        match $key {
            $(
                ApiKey::$api => {
                    let req: $req = match frame::decode_body(&mut $body, $version) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(peer = %$ctx.peer, client_id = %$ctx.client_id, api = ?$key, version = $version, error = %e, "closing connection: malformed request");
                            return Outcome::Close;
                        }
                    };
                    let resp = $handler(&$ctx, $version, req).await;
                    encode($key, $version, $corr, &resp)
                }
            )*
            _ => {
                tracing::warn!(peer = %$ctx.peer, client_id = %$ctx.client_id, api = ?$key, "closing connection: API not implemented");
                Outcome::Close
            }
        }
    };
}

fn encode<R: kafka_protocol::protocol::Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    resp: &R,
) -> Outcome {
    match frame::encode_response(key, version, correlation_id, resp) {
        Ok(bytes) => Outcome::Respond(bytes),
        Err(e) => {
            tracing::error!(api = ?key, version, error = %e, "could not encode a response");
            Outcome::Close
        }
    }
}

/// What is left of a request whose order-sensitive part is done.
pub type Finishing = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

/// Starts one request; the returned future gives what to send back. A produce
/// runs in two steps: its records are appended when this returns (so a
/// connection's produces append in the order they came), and the future waits
/// for the acks level and answers, beside the requests that follow. Any other
/// request is handled whole in the future.
pub fn start(ctx: RequestContext, parsed: ParsedHeader, body: Bytes) -> Finishing {
    let ParsedHeader {
        api_key,
        api_version: version,
        header,
    } = parsed;
    let corr = header.correlation_id;
    // The header's client id borrows the frame's buffer; see `start_produce`.
    drop(header);
    if api_key != ApiKey::Produce {
        return Box::pin(handle(ctx, api_key, version, corr, body));
    }
    if let Err(outcome) = check_version(&ctx, api_key, version) {
        return Box::pin(std::future::ready(outcome));
    }
    Box::pin(start_produce(&ctx, version, corr, body))
}

/// Decodes a produce request and appends its records; the future answers.
fn start_produce(
    ctx: &RequestContext,
    version: i16,
    corr: i32,
    mut body: Bytes,
) -> impl Future<Output = Outcome> + Send + 'static {
    let req: Result<ProduceRequest, _> = frame::decode_body(&mut body, version);
    // The records share the frame's buffer; once the rest of the frame is gone the
    // partition can take that buffer instead of copying it.
    drop(body);
    let finishing = match req {
        Ok(req) => Some(handlers::produce::start(ctx, version, req)),
        Err(e) => {
            tracing::warn!(peer = %ctx.peer, client_id = %ctx.client_id, error = %e, "closing connection: malformed produce request");
            None
        }
    };
    async move {
        match finishing {
            None => Outcome::Close,
            Some(f) => match f.await {
                Some(resp) => encode(ApiKey::Produce, version, corr, &resp),
                None => Outcome::NoResponse,
            },
        }
    }
}

/// `Err(Outcome::Close)` (logged) for an API or version ferry does not implement.
fn check_version(ctx: &RequestContext, api_key: ApiKey, version: i16) -> Result<(), Outcome> {
    let Some((min, max)) = supported(api_key) else {
        tracing::warn!(peer = %ctx.peer, client_id = %ctx.client_id, api = ?api_key, "closing connection: API not implemented");
        return Err(Outcome::Close);
    };
    if version < min || version > max {
        tracing::warn!(peer = %ctx.peer, client_id = %ctx.client_id, api = ?api_key, version, "closing connection: unsupported API version");
        return Err(Outcome::Close);
    }
    Ok(())
}

/// Handles one request other than produce and returns what to send back.
async fn handle(
    ctx: RequestContext,
    api_key: ApiKey,
    version: i16,
    corr: i32,
    mut body: Bytes,
) -> Outcome {
    if api_key == ApiKey::ApiVersions {
        return handlers::api_versions::handle(&ctx, version, corr, body);
    }
    if let Err(outcome) = check_version(&ctx, api_key, version) {
        return outcome;
    }
    route!(ctx, api_key, version, corr, body, {
        Fetch => FetchRequest => handlers::fetch::handle,
        ListOffsets => ListOffsetsRequest => handlers::list_offsets::handle,
        Metadata => MetadataRequest => handlers::metadata::handle,
        CreateTopics => CreateTopicsRequest => handlers::create_topics::handle,
        DeleteTopics => DeleteTopicsRequest => handlers::delete_topics::handle,
        DeleteRecords => DeleteRecordsRequest => handlers::delete_records::handle,
        OffsetForLeaderEpoch => OffsetForLeaderEpochRequest => handlers::offset_for_leader_epoch::handle,
        DescribeConfigs => DescribeConfigsRequest => handlers::configs::describe,
        AlterConfigs => AlterConfigsRequest => handlers::configs::alter,
        IncrementalAlterConfigs => IncrementalAlterConfigsRequest => handlers::configs::incremental_alter,
        CreatePartitions => CreatePartitionsRequest => handlers::create_partitions::handle,
        DescribeCluster => DescribeClusterRequest => handlers::describe_cluster::handle,
        FindCoordinator => FindCoordinatorRequest => handlers::find_coordinator::handle,
        JoinGroup => JoinGroupRequest => handlers::join_group::handle,
        SyncGroup => SyncGroupRequest => handlers::sync_group::handle,
        Heartbeat => HeartbeatRequest => handlers::heartbeat::handle,
        LeaveGroup => LeaveGroupRequest => handlers::leave_group::handle,
        OffsetCommit => OffsetCommitRequest => handlers::offset_commit::handle,
        OffsetFetch => OffsetFetchRequest => handlers::offset_fetch::handle,
        DescribeGroups => DescribeGroupsRequest => handlers::describe_groups::handle,
        ListGroups => ListGroupsRequest => handlers::list_groups::handle,
        DeleteGroups => DeleteGroupsRequest => handlers::delete_groups::handle,
        OffsetDelete => OffsetDeleteRequest => handlers::offset_delete::handle,
        ConsumerGroupHeartbeat => ConsumerGroupHeartbeatRequest => handlers::consumer_group_heartbeat::handle,
        ConsumerGroupDescribe => ConsumerGroupDescribeRequest => handlers::consumer_group_describe::handle,
        InitProducerId => InitProducerIdRequest => handlers::init_producer_id::handle,
        AddPartitionsToTxn => AddPartitionsToTxnRequest => handlers::add_partitions_to_txn::handle,
        AddOffsetsToTxn => AddOffsetsToTxnRequest => handlers::add_offsets_to_txn::handle,
        TxnOffsetCommit => TxnOffsetCommitRequest => handlers::txn_offset_commit::handle,
        EndTxn => EndTxnRequest => handlers::end_txn::handle,
        DescribeProducers => DescribeProducersRequest => handlers::describe_producers::handle,
        DescribeTransactions => DescribeTransactionsRequest => handlers::describe_transactions::handle,
        ListTransactions => ListTransactionsRequest => handlers::list_transactions::handle,
        WriteTxnMarkers => WriteTxnMarkersRequest => handlers::write_txn_markers::handle,
        ElectLeaders => ElectLeadersRequest => handlers::elect_leaders::handle,
        AlterPartitionReassignments => AlterPartitionReassignmentsRequest => handlers::alter_partition_reassignments::handle,
        ListPartitionReassignments => ListPartitionReassignmentsRequest => handlers::list_partition_reassignments::handle,
        DescribeQuorum => DescribeQuorumRequest => handlers::raft_quorum::describe_quorum,
        AddRaftVoter => AddRaftVoterRequest => handlers::raft_quorum::add_raft_voter,
        RemoveRaftVoter => RemoveRaftVoterRequest => handlers::raft_quorum::remove_raft_voter,
        UnregisterBroker => UnregisterBrokerRequest => handlers::unregister_broker::handle,
        DescribeLogDirs => DescribeLogDirsRequest => handlers::describe_log_dirs::handle,
        DescribeAcls => DescribeAclsRequest => handlers::acls::describe,
        CreateAcls => CreateAclsRequest => handlers::acls::create,
        DeleteAcls => DeleteAclsRequest => handlers::acls::delete,
    })
}

/// Decodes a request body with the decoder `handle` uses for `api_key` at `version`
/// (the `kafka-protocol` message type), after the same version check, and drops it.
/// The entry point of the request-body fuzz target: every API and version ferry
/// accepts.
pub fn decode_request(api_key: ApiKey, version: i16, body: &mut Bytes) -> anyhow::Result<()> {
    let (min, max) = if api_key == ApiKey::ApiVersions {
        let range = api_key.valid_versions();
        (range.min, range.max)
    } else {
        supported(api_key).ok_or_else(|| anyhow::anyhow!("API {api_key:?} not implemented"))?
    };
    anyhow::ensure!(
        (min..=max).contains(&version),
        "unsupported version {version} of {api_key:?}"
    );
    macro_rules! decode {
        ($($api:ident => $req:ty),* $(,)?) => {
            match api_key {
                $(ApiKey::$api => frame::decode_body::<$req>(body, version).map(drop),)*
                _ => anyhow::bail!("API {api_key:?} has no decoder here"),
            }
        };
    }
    decode!(
        ApiVersions => ApiVersionsRequest,
        Produce => ProduceRequest,
        Fetch => FetchRequest,
        ListOffsets => ListOffsetsRequest,
        Metadata => MetadataRequest,
        CreateTopics => CreateTopicsRequest,
        DeleteTopics => DeleteTopicsRequest,
        DeleteRecords => DeleteRecordsRequest,
        OffsetForLeaderEpoch => OffsetForLeaderEpochRequest,
        DescribeConfigs => DescribeConfigsRequest,
        AlterConfigs => AlterConfigsRequest,
        IncrementalAlterConfigs => IncrementalAlterConfigsRequest,
        CreatePartitions => CreatePartitionsRequest,
        DescribeCluster => DescribeClusterRequest,
        FindCoordinator => FindCoordinatorRequest,
        JoinGroup => JoinGroupRequest,
        SyncGroup => SyncGroupRequest,
        Heartbeat => HeartbeatRequest,
        LeaveGroup => LeaveGroupRequest,
        OffsetCommit => OffsetCommitRequest,
        OffsetFetch => OffsetFetchRequest,
        DescribeGroups => DescribeGroupsRequest,
        ListGroups => ListGroupsRequest,
        DeleteGroups => DeleteGroupsRequest,
        OffsetDelete => OffsetDeleteRequest,
        InitProducerId => InitProducerIdRequest,
        ConsumerGroupHeartbeat => ConsumerGroupHeartbeatRequest,
        ConsumerGroupDescribe => ConsumerGroupDescribeRequest,
        AddPartitionsToTxn => AddPartitionsToTxnRequest,
        AddOffsetsToTxn => AddOffsetsToTxnRequest,
        TxnOffsetCommit => TxnOffsetCommitRequest,
        EndTxn => EndTxnRequest,
        DescribeProducers => DescribeProducersRequest,
        DescribeTransactions => DescribeTransactionsRequest,
        ListTransactions => ListTransactionsRequest,
        WriteTxnMarkers => WriteTxnMarkersRequest,
        ElectLeaders => ElectLeadersRequest,
        AlterPartitionReassignments => AlterPartitionReassignmentsRequest,
        ListPartitionReassignments => ListPartitionReassignmentsRequest,
        DescribeQuorum => DescribeQuorumRequest,
        AddRaftVoter => AddRaftVoterRequest,
        RemoveRaftVoter => RemoveRaftVoterRequest,
        UnregisterBroker => UnregisterBrokerRequest,
        DescribeLogDirs => DescribeLogDirsRequest,
        DescribeAcls => DescribeAclsRequest,
        CreateAcls => CreateAclsRequest,
        DeleteAcls => DeleteAclsRequest,
    )
}

#[cfg(test)]
mod decode_request_tests {
    use super::*;

    /// `decode_request` knows a decoder for every API in `SUPPORTED` (a new API
    /// needs a line there too).
    #[test]
    fn every_supported_api_has_a_decoder() {
        for (key, min, max) in SUPPORTED {
            for version in *min..=*max {
                if let Err(e) = decode_request(*key, version, &mut Bytes::new()) {
                    assert!(
                        !e.to_string().contains("no decoder"),
                        "{key:?} v{version}: {e}"
                    );
                }
            }
        }
    }
}
