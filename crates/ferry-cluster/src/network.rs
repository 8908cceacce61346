//! The controller transport: Raft RPCs and the quorum's own requests over TCP.
//!
//! ```text
//!   node A                                         node B (controller listener)
//!   openraft ──► PeerNetwork ─┐                 ┌─► serve_connection ──► Raft::append_entries / vote / …
//!   propose / call_leader ────┼─ frame ─► TCP ──┤
//!     (ConnPool)              ┘  (one request,  └─► leader: client_write / ControllerHandler / add_learner
//!                                 one response)
//! ```
//!
//! A connection carries one request at a time and the response to it. A client
//! takes its connection out while a call is in flight, so a call that is cancelled
//! or times out drops the connection instead of leaving a late response behind for
//! the next call; the next call reconnects. Every request names the node it is
//! meant for, so a listener that moved to another node refuses it.

use std::collections::{BTreeMap, HashMap};
use std::error::Error;
use std::future::Future;
use std::io::{self, Cursor};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{
    ClientWriteError, Fatal, InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError,
    RaftError, RemoteError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::OptionalSend;
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

/// Creates a [`PeerNetwork`] per target; addresses come from the configured
/// voters first, then from the membership (learners).
pub(crate) struct NetworkFactory {
    pub node_id: NodeId,
    pub voters: Arc<BTreeMap<NodeId, String>>,
}

pub(crate) struct PeerNetwork {
    node_id: NodeId,
    target: NodeId,
    client: PeerClient,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerNetwork {
        let addr = self
            .voters
            .get(&target)
            .cloned()
            .unwrap_or_else(|| node.addr.clone());
        PeerNetwork {
            node_id: self.node_id,
            target,
            client: PeerClient::new(addr),
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
        match self
            .request(Request::AppendEntries(rpc), &[], option.hard_ttl())
            .await
        {
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
    pub(crate) fn leader_id(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    fn not_leader(&self) -> Option<LeaderError> {
        let leader_id = self.leader_id();
        (leader_id != Some(self.node_id)).then_some(LeaderError::NotLeader { leader_id })
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
        tokio::time::timeout(self.request_timeout, handler.handle(request))
            .await
            .map_err(|_| LeaderError::Failed("controller handler timed out".into()))
    }

    async fn add_learner(&self, node_id: NodeId, addr: String) -> Result<(), LeaderError> {
        if let Some(e) = self.not_leader() {
            return Err(e);
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
