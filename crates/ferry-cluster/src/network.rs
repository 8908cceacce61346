//! The controller transport: Raft RPCs and the quorum's own requests over TCP.
//!
//! ```text
//!   node A                                         node B (controller listener)
//!   openraft ──► PeerNetwork ─┐                 ┌─► serve_connection ──► Raft::append_entries / vote / …
//!   propose / call_leader ────┼─ frame ─► TCP ──┤
//!     (ConnPool)              ┘  (one request,  └─► leader: client_write / ControllerHandler / add_learner
//!                                 one response)        / voter changes / quorum description
//! ```
//!
//! A connection carries one request at a time and the response to it. A client
//! takes its connection out while a call is in flight, so a call that is cancelled
//! or times out drops the connection instead of leaving a late response behind for
//! the next call; the next call reconnects. Every request names the node it is
//! meant for, so a listener that moved to another node refuses it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::error::Error;
use std::future::Future;
use std::io::{self, Cursor};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::cluster::{QuorumDescription, QuorumReplica, VoterChangeError};
use openraft::error::{
    ChangeMembershipError, ClientWriteError, Fatal, InstallSnapshotError, NetworkError,
    PayloadTooLarge, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{ChangeMembers, OptionalSend};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::frame;
use crate::types::{
    ControllerHandler, ControllerRequest, ControllerResponse, LogId, Node, NodeId, Proposal, Raft,
    Snapshot, SnapshotMeta, TypeConfig, Vote,
};

/// Connections the listener serves at once; more are closed on accept.
pub(crate) const CONNECTIONS_MAX: usize = 256;
/// A server connection with no request for this long is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A pooled client connection idle for this long is not reused (the server may
/// be about to close it).
const POOL_IDLE_MAX: Duration = Duration::from_secs(60);
/// A peer that does not accept a connection within this long counts as
/// unreachable (so a request moves on to the next leader instead of waiting out
/// its whole deadline on a dead host).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Idle connections kept per peer address.
const POOL_CONNECTIONS_MAX: usize = 8;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RequestEnvelope {
    /// The node the sender means to reach.
    pub to: NodeId,
    pub body: Request,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A whole snapshot; its data is the frame's attachment.
    FullSnapshot {
        vote: Vote,
        meta: SnapshotMeta,
    },
    /// Append a proposal (sent to the leader).
    Propose(Proposal),
    /// A controller RPC (sent to the leader).
    Controller(ControllerRequest),
    /// A non-voter asks the leader to replicate the log to it.
    AddLearner {
        node_id: NodeId,
        addr: String,
    },
    /// Promote a learner to voter once it caught up (waiting up to `wait_ms`).
    AddVoter {
        node_id: NodeId,
        wait_ms: u64,
    },
    /// Demote a voter to learner.
    RemoveVoter {
        node_id: NodeId,
    },
    /// Describe the quorum (voters, learners, their progress).
    DescribeQuorum,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    FullSnapshot(Result<SnapshotResponse<NodeId>, Fatal<NodeId>>),
    Propose(Result<LogId, LeaderError>),
    Controller(Result<ControllerResponse, LeaderError>),
    AddLearner(Result<(), LeaderError>),
    VoterChange(Result<Result<(), VoterChangeError>, LeaderError>),
    DescribeQuorum(Result<QuorumDescription, LeaderError>),
    /// The request was not served at all (meant for another node).
    Refused(String),
}

/// Why a leader-only request was not served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub(crate) enum LeaderError {
    #[error("not the leader (leader: {leader_id:?})")]
    NotLeader { leader_id: Option<NodeId> },
    #[error("no controller handler is installed on the leader")]
    NoHandler,
    #[error("{0}")]
    Failed(String),
}

/// How a call failed on this side of the wire.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The request does not fit in a frame; nothing was sent.
    #[error("{0}")]
    TooLarge(String),
}

fn encode_request(request: &RequestEnvelope, attachment: &[u8]) -> Result<Vec<u8>, CallError> {
    frame::encode(request, attachment).map_err(|e| {
        if e.kind() == io::ErrorKind::InvalidInput {
            CallError::TooLarge(e.to_string())
        } else {
            CallError::Io(e)
        }
    })
}

async fn connect(addr: &str) -> Result<TcpStream, CallError> {
    let connecting = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr));
    let connected = connecting.await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {CONNECT_TIMEOUT:?}"),
        ))
    });
    let stream = connected.map_err(|source| CallError::Connect {
        addr: addr.to_string(),
        source,
    })?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn round_trip(
    stream: &mut TcpStream,
    frame: &[u8],
) -> Result<(Response, Vec<u8>), CallError> {
    stream.write_all(frame).await?;
    match frame::read_frame(stream).await? {
        Some(reply) => Ok(reply),
        None => {
            Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed the connection").into())
        }
    }
}

/// One lazily (re)connected connection to one peer, for openraft's RPCs.
pub(crate) struct PeerClient {
    addr: String,
    stream: Option<TcpStream>,
}

impl PeerClient {
    pub(crate) fn new(addr: String) -> Self {
        PeerClient { addr, stream: None }
    }

    pub(crate) async fn call(
        &mut self,
        request: &RequestEnvelope,
        attachment: &[u8],
        ttl: Duration,
    ) -> Result<(Response, Vec<u8>), CallError> {
        let frame = encode_request(request, attachment)?;
        let stream = self.stream.take();
        let addr = &self.addr;
        let attempt = async move {
            let mut stream = match stream {
                Some(s) => s,
                None => connect(addr).await?,
            };
            let reply = round_trip(&mut stream, &frame).await?;
            Ok::<_, CallError>((stream, reply))
        };
        match tokio::time::timeout(ttl, attempt).await {
            Err(_) => Err(CallError::Timeout(ttl)),
            Ok(Err(e)) => Err(e),
            Ok(Ok((stream, reply))) => {
                self.stream = Some(stream);
                Ok(reply)
            }
        }
    }
}

/// Idle connections by peer address, for the quorum's forwarded requests.
#[derive(Default)]
pub(crate) struct ConnPool {
    idle: Mutex<HashMap<String, Vec<(TcpStream, Instant)>>>,
}

impl ConnPool {
    fn take(&self, addr: &str) -> Option<TcpStream> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(addr)?;
        while let Some((stream, since)) = list.pop() {
            if since.elapsed() < POOL_IDLE_MAX {
                return Some(stream);
            }
        }
        None
    }

    fn put(&self, addr: &str, stream: TcpStream) {
        let mut idle = self.idle.lock();
        let list = idle.entry(addr.to_string()).or_default();
        if list.len() < POOL_CONNECTIONS_MAX {
            list.push((stream, Instant::now()));
        }
    }

    pub(crate) fn clear(&self) {
        self.idle.lock().clear();
    }

    pub(crate) async fn call(
        &self,
        addr: &str,
        request: &RequestEnvelope,
        ttl: Duration,
    ) -> Result<Response, CallError> {
        let frame = encode_request(request, &[])?;
        let pooled = self.take(addr);
        let attempt = async move {
            let mut stream = match pooled {
                Some(s) => s,
                None => connect(addr).await?,
            };
            let (reply, _) = round_trip(&mut stream, &frame).await?;
            Ok::<_, CallError>((stream, reply))
        };
        match tokio::time::timeout(ttl, attempt).await {
            Err(_) => Err(CallError::Timeout(ttl)),
            Ok(Err(e)) => Err(e),
            Ok(Ok((stream, reply))) => {
                self.put(addr, stream);
                Ok(reply)
            }
        }
    }
}

// ---- openraft's side ----

/// Creates a [`PeerNetwork`] per target, reached at the address the membership
/// records for it (the configured voters only when the membership has none).
pub(crate) struct NetworkFactory {
    pub node_id: NodeId,
    pub voters: Arc<BTreeMap<NodeId, String>>,
}

pub(crate) struct PeerNetwork {
    node_id: NodeId,
    target: NodeId,
    client: PeerClient,
    /// Since when AppendEntries to the target fail (openraft's own replication
    /// logs are filtered out by default: they repeat every heartbeat).
    failing_since: Option<std::time::Instant>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerNetwork {
        let addr = if node.addr.is_empty() {
            self.voters.get(&target).cloned().unwrap_or_default()
        } else {
            node.addr.clone()
        };
        PeerNetwork {
            node_id: self.node_id,
            target,
            client: PeerClient::new(addr),
            failing_since: None,
        }
    }
}

fn unexpected(reply: &Response) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected reply: {reply:?}"),
    )
}

impl PeerNetwork {
    fn rpc_error<E: Error>(&self, e: CallError, action: RPCTypes) -> RPCError<NodeId, Node, E> {
        match e {
            CallError::Connect { .. } => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Io(e) => RPCError::Network(NetworkError::new(&e)),
            CallError::TooLarge(_) => RPCError::Network(NetworkError::new(&e)),
            CallError::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                id: self.node_id,
                target: self.target,
                timeout,
            }),
        }
    }

    /// Logs the first failure to replicate to the target, and the recovery:
    /// once each, however many heartbeats fail in between.
    fn note_replication(&mut self, failure: Option<&CallError>) {
        match (failure, self.failing_since) {
            (Some(e), None) => {
                tracing::warn!(node = self.target, error = %e, "cannot replicate the metadata log to a quorum member; retrying");
                self.failing_since = Some(std::time::Instant::now());
            }
            (None, Some(since)) => {
                tracing::info!(node = self.target, after = ?since.elapsed(), "replicating the metadata log to a quorum member again");
                self.failing_since = None;
            }
            _ => {}
        }
    }

    async fn request(
        &mut self,
        body: Request,
        attachment: &[u8],
        ttl: Duration,
    ) -> Result<(Response, Vec<u8>), CallError> {
        let request = RequestEnvelope {
            to: self.target,
            body,
        };
        self.client.call(&request, attachment, ttl).await
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        let entries = rpc.entries.len() as u64;
        let reply = self
            .request(Request::AppendEntries(rpc), &[], option.hard_ttl())
            .await;
        self.note_replication(reply.as_ref().err());
        match reply {
            Ok((Response::AppendEntries(r), _)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok((other, _)) => Err(RPCError::Network(NetworkError::new(&unexpected(&other)))),
            // openraft retries with fewer entries. One entry always fits: `propose`
            // bounds a proposal to well under a frame.
            Err(CallError::TooLarge(_)) => Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint((entries / 2).max(1)),
            )),
            Err(e) => Err(self.rpc_error(e, RPCTypes::AppendEntries)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Node, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .request(Request::InstallSnapshot(rpc), &[], option.hard_ttl())
            .await
        {
            Ok((Response::InstallSnapshot(r), _)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok((other, _)) => Err(RPCError::Network(NetworkError::new(&unexpected(&other)))),
            Err(e) => Err(self.rpc_error(e, RPCTypes::InstallSnapshot)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Node, RaftError<NodeId>>> {
        match self
            .request(Request::Vote(rpc), &[], option.hard_ttl())
            .await
        {
            Ok((Response::Vote(r), _)) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok((other, _)) => Err(RPCError::Network(NetworkError::new(&unexpected(&other)))),
            Err(e) => Err(self.rpc_error(e, RPCTypes::Vote)),
        }
    }

    /// Sends the whole snapshot in one frame (metadata snapshots are small; the
    /// frame limit bounds them).
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let data = snapshot.snapshot.into_inner();
        let body = Request::FullSnapshot {
            vote,
            meta: snapshot.meta,
        };
        let ttl = option.hard_ttl();
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = self.request(body, &data, ttl) => reply,
        };
        match reply {
            Ok((Response::FullSnapshot(r), _)) => {
                r.map_err(|e| StreamingError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok((other, _)) => Err(StreamingError::Network(NetworkError::new(&unexpected(
                &other,
            )))),
            Err(e) => Err(
                match self.rpc_error::<Fatal<NodeId>>(e, RPCTypes::InstallSnapshot) {
                    RPCError::Timeout(t) => StreamingError::Timeout(t),
                    RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                    RPCError::Network(n) => StreamingError::Network(n),
                    other => StreamingError::Network(NetworkError::new(&other)),
                },
            ),
        }
    }
}

// ---- the listener's side ----

/// What the listener needs to serve requests; shared with the quorum.
pub(crate) struct ServerCtx {
    pub node_id: NodeId,
    pub raft: Raft,
    pub handler: RwLock<Option<Arc<dyn ControllerHandler>>>,
    pub request_timeout: Duration,
}

impl ServerCtx {
    /// `Some` unless this node leads (a leader that stepped down may still name
    /// itself as leader until it hears of the next one).
    fn not_leader(&self) -> Option<LeaderError> {
        let (leader_id, state) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (m.current_leader, m.state)
        };
        if leader_id == Some(self.node_id) && state == openraft::ServerState::Leader {
            return None;
        }
        let leader_id = leader_id.filter(|l| *l != self.node_id);
        Some(LeaderError::NotLeader { leader_id })
    }

    /// Appends a proposal on this node, which must be the leader.
    pub(crate) async fn propose_local(&self, proposal: Proposal) -> Result<LogId, LeaderError> {
        match tokio::time::timeout(self.request_timeout, self.raft.client_write(proposal)).await {
            Err(_) => Err(LeaderError::Failed("append timed out".into())),
            Ok(Ok(resp)) => Ok(resp.log_id),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(LeaderError::NotLeader {
                    leader_id: f.leader_id,
                })
            }
            Ok(Err(e)) => Err(LeaderError::Failed(e.to_string())),
        }
    }

    /// Runs a controller RPC on this node, which must be the leader.
    pub(crate) async fn controller_local(
        &self,
        request: ControllerRequest,
    ) -> Result<ControllerResponse, LeaderError> {
        if let Some(e) = self.not_leader() {
            return Err(e);
        }
        let handler = self.handler.read().clone();
        let Some(handler) = handler else {
            return Err(LeaderError::NoHandler);
        };
        // The handler runs as a task of its own: a caller that stops waiting
        // (its attempt timed out) does not cut a decision short between reading
        // the image and committing what it decided.
        let handling = tokio::spawn(async move { handler.handle(request).await });
        match tokio::time::timeout(self.request_timeout, handling).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(LeaderError::Failed(format!(
                "controller handler failed: {e}"
            ))),
            Err(_) => Err(LeaderError::Failed("controller handler timed out".into())),
        }
    }

    async fn add_learner(&self, node_id: NodeId, addr: String) -> Result<(), LeaderError> {
        if let Some(e) = self.not_leader() {
            return Err(e);
        }
        // Already a member (a voter, or a learner whose answer was lost): nothing
        // to write.
        let member = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&node_id)
            .is_some();
        if member {
            return Ok(());
        }
        let add = self.raft.add_learner(node_id, Node::new(addr), false);
        match tokio::time::timeout(self.request_timeout, add).await {
            Err(_) => Err(LeaderError::Failed("add learner timed out".into())),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(LeaderError::NotLeader {
                    leader_id: f.leader_id,
                })
            }
            Ok(Err(e)) => Err(LeaderError::Failed(e.to_string())),
        }
    }

    /// The quorum as this node, which must be the leader, sees it.
    pub(crate) fn describe_local(&self) -> Result<QuorumDescription, LeaderError> {
        if let Some(e) = self.not_leader() {
            return Err(e);
        }
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let progress = m.replication.clone().unwrap_or_default();
        let replica = |id: NodeId, node: &Node| {
            let log_end_offset = if id == self.node_id {
                m.last_log_index.map_or(0, |i| i as i64 + 1)
            } else {
                match progress.get(&id) {
                    Some(Some(matched)) => matched.index as i64 + 1,
                    Some(None) => 0,
                    None => -1,
                }
            };
            QuorumReplica {
                node_id: i32::try_from(id).unwrap_or(-1),
                addr: node.addr.clone(),
                log_end_offset,
            }
        };
        let (mut voter_list, mut observers) = (Vec::new(), Vec::new());
        for (id, node) in membership.nodes() {
            if voters.contains(id) {
                voter_list.push(replica(*id, node));
            } else {
                observers.push(replica(*id, node));
            }
        }
        Ok(QuorumDescription {
            leader_id: i32::try_from(self.node_id).unwrap_or(-1),
            leader_epoch: i32::try_from(m.current_term).unwrap_or(i32::MAX),
            high_watermark: m.last_applied.map_or(0, |l| l.index as i64 + 1),
            voters: voter_list,
            observers,
        })
    }

    /// Promotes learner `node_id` to voter on this node, which must be the
    /// leader, once the learner has every entry this node has applied (waiting
    /// up to `wait` for that).
    pub(crate) async fn add_voter_local(
        &self,
        node_id: NodeId,
        wait: Duration,
    ) -> Result<Result<(), VoterChangeError>, LeaderError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(e) = self.not_leader() {
                return Err(e);
            }
            let (is_voter, is_learner, caught_up) = {
                let metrics = self.raft.metrics();
                let m = metrics.borrow();
                let membership = m.membership_config.membership();
                let is_voter = membership.voter_ids().any(|id| id == node_id);
                let is_learner = membership.learner_ids().any(|id| id == node_id);
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&node_id).cloned())
                    .flatten()
                    .map(|l| l.index);
                let applied = m.last_applied.map(|l| l.index);
                (is_voter, is_learner, matched >= applied)
            };
            if is_voter {
                return Ok(Err(VoterChangeError::DuplicateVoter(format!(
                    "node {node_id} is a voter already"
                ))));
            }
            if is_learner && caught_up {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let why = if is_learner {
                    format!("node {node_id} has not caught up with the metadata log")
                } else {
                    format!(
                        "node {node_id} is not a learner of the metadata quorum: start it first \
                         (with --controller-voters naming the current voters)"
                    )
                };
                return Ok(Err(VoterChangeError::TimedOut(why)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let changes = ChangeMembers::AddVoterIds(BTreeSet::from([node_id]));
        self.change_membership(changes, true).await
    }

    /// Demotes voter `node_id` to learner on this node, which must be the leader.
    /// The leader itself leaves the membership instead (openraft keeps a leader
    /// that is a learner leading, and steps down only one that is no member),
    /// and joins again as a learner once another leader is elected.
    pub(crate) async fn remove_voter_local(
        &self,
        node_id: NodeId,
    ) -> Result<Result<(), VoterChangeError>, LeaderError> {
        if let Some(e) = self.not_leader() {
            return Err(e);
        }
        let voters: BTreeSet<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if !voters.contains(&node_id) {
            return Ok(Err(VoterChangeError::VoterNotFound(format!(
                "node {node_id} is not a voter (the voters are {voters:?})"
            ))));
        }
        if voters.len() == 1 {
            return Ok(Err(VoterChangeError::Invalid(format!(
                "node {node_id} is the only voter: add another voter first"
            ))));
        }
        let changes = ChangeMembers::RemoveVoters(BTreeSet::from([node_id]));
        self.change_membership(changes, node_id != self.node_id)
            .await
    }

    /// Commits a membership change (both steps of a joint change), keeping
    /// removed voters as learners if `retain`.
    async fn change_membership(
        &self,
        changes: ChangeMembers<NodeId, Node>,
        retain: bool,
    ) -> Result<Result<(), VoterChangeError>, LeaderError> {
        let change = self.raft.change_membership(changes, retain);
        match tokio::time::timeout(self.request_timeout, change).await {
            Err(_) => Ok(Err(VoterChangeError::TimedOut(
                "the membership change was not committed in time".into(),
            ))),
            Ok(Ok(_)) => Ok(Ok(())),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(LeaderError::NotLeader {
                    leader_id: f.leader_id,
                })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Ok(Err(match e {
                    ChangeMembershipError::EmptyMembership(e) => {
                        VoterChangeError::Invalid(e.to_string())
                    }
                    other => VoterChangeError::TimedOut(other.to_string()),
                }))
            }
            Ok(Err(e)) => Err(LeaderError::Failed(e.to_string())),
        }
    }

    async fn handle(&self, request: RequestEnvelope, attachment: Vec<u8>) -> Response {
        if request.to != self.node_id {
            return Response::Refused(format!(
                "this is node {}, not node {}",
                self.node_id, request.to
            ));
        }
        match request.body {
            Request::AppendEntries(rpc) => {
                Response::AppendEntries(self.raft.append_entries(rpc).await)
            }
            Request::Vote(rpc) => Response::Vote(self.raft.vote(rpc).await),
            Request::InstallSnapshot(rpc) => {
                Response::InstallSnapshot(self.raft.install_snapshot(rpc).await)
            }
            Request::FullSnapshot { vote, meta } => {
                let snapshot = Snapshot {
                    meta,
                    snapshot: Box::new(Cursor::new(attachment)),
                };
                Response::FullSnapshot(self.raft.install_full_snapshot(vote, snapshot).await)
            }
            Request::Propose(proposal) => {
                let result = match self.not_leader() {
                    Some(e) => Err(e),
                    None => self.propose_local(proposal).await,
                };
                Response::Propose(result)
            }
            Request::Controller(req) => Response::Controller(self.controller_local(req).await),
            Request::AddLearner { node_id, addr } => {
                Response::AddLearner(self.add_learner(node_id, addr).await)
            }
            Request::AddVoter { node_id, wait_ms } => Response::VoterChange(
                self.add_voter_local(node_id, Duration::from_millis(wait_ms))
                    .await,
            ),
            Request::RemoveVoter { node_id } => {
                Response::VoterChange(self.remove_voter_local(node_id).await)
            }
            Request::DescribeQuorum => Response::DescribeQuorum(self.describe_local()),
        }
    }
}

/// Accepts connections until the task is aborted; aborting it also aborts every
/// connection it serves.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<ServerCtx>) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, limit = CONNECTIONS_MAX, "controller listener is full; closing a connection");
                        continue;
                    };
                    let ctx = ctx.clone();
                    connections.spawn(async move {
                        let _permit = permit;
                        if let Err(e) = serve_connection(stream, &ctx).await {
                            tracing::debug!(%peer, error = %e, "controller connection closed");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "controller listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves requests on one connection, one at a time. A malformed frame ends the
/// connection (the error is returned, never a panic).
async fn serve_connection(mut stream: TcpStream, ctx: &ServerCtx) -> io::Result<()> {
    stream.set_nodelay(true)?;
    loop {
        let next = tokio::time::timeout(
            IDLE_TIMEOUT,
            frame::read_frame::<_, RequestEnvelope>(&mut stream),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "idle connection"))?;
        let Some((request, attachment)) = next? else {
            return Ok(());
        };
        let response = ctx.handle(request, attachment).await;
        frame::write_frame(&mut stream, &response, &[]).await?;
    }
}
