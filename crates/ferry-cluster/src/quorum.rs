//! [`MetadataQuorum`]: starts the Raft node and routes requests to the leader.
//!
//! ```text
//!   propose(records)
//!     ├─ register a waiter for the proposal's request id (on this node)
//!     ├─ until the deadline: send to the leader (local client_write, or forward);
//!     │    not the leader / unreachable → retry with the new leader
//!     └─ wait until THIS node's state machine applies it → image right after it
//! ```
//!
//! A proposal keeps its request id across retries, and the state machine skips
//! an id it has already applied, so a retry after a lost answer never applies the
//! records twice.
//!
//! The controller's decisions take another path, [`MetadataQuorum::propose_as`]:
//! appended on this node only, in the term the decision was made in, never
//! forwarded nor retried elsewhere (as Kafka's controller appends at its own
//! epoch and gets NOT_LEADER otherwise). A deposed controller's decisions are
//! dropped: they were made on an image the new leader has moved on from.
//!
//! Voters change at run time ([`MetadataQuorum::add_voter`],
//! [`MetadataQuorum::remove_voter`]); the membership persisted in the log is
//! what a restarted node goes by. A node restarted as a voter of its persisted
//! membership does not campaign until it has heard from a leader or one election
//! timeout has passed: a voter that was removed while it was down learns of its
//! removal from the leader (which still replicates to it, now a learner) instead
//! of deposing that leader with a higher term.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_core::cluster::{QuorumDescription, VoterChangeError};
use ferry_core::metadata::{MetadataImage, MetadataRecord};
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{Config, ServerState, SnapshotPolicy};
use parking_lot::{Mutex, RwLock};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use crate::log_store::{IoHandle, LogStore};
use crate::network::{
    serve, CallError, ConnPool, LeaderError, NetworkFactory, Request, RequestEnvelope, Response,
    ServerCtx,
};
use crate::state_machine::{SmShared, StateMachine};
use crate::types::{
    ControllerHandler, ControllerRequest, ControllerResponse, Leadership, LogId, Node, NodeId,
    Proposal, Raft,
};
use crate::{QuorumConfig, QuorumError};

/// Largest proposal (as JSON): half a frame, so one always fits in an
/// AppendEntries request with room to spare.
pub const PROPOSAL_BYTES_MAX: usize = crate::frame::FRAME_BYTES_MAX / 2;
/// Pause between two attempts to reach the leader.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// Pause between two attempts of a non-voter to join as a learner.
const JOIN_RETRY: Duration = Duration::from_millis(500);
/// How often a learner asks the leader to keep it a member. A learner removed
/// from the membership (an unregistered broker that still runs) never hears of
/// its removal: the leader stops replicating to it before that entry reaches
/// it, so it asks, and is added again if it was removed.
const LEARNER_RECHECK: Duration = Duration::from_secs(3);

/// One node's handle on the replicated metadata log.
pub struct MetadataQuorum {
    node_id: NodeId,
    voters: Arc<BTreeMap<NodeId, String>>,
    raft: Raft,
    ctx: Arc<ServerCtx>,
    local_addr: SocketAddr,
    sm: Arc<SmShared>,
    image_rx: watch::Receiver<Arc<MetadataImage>>,
    pool: Arc<ConnPool>,
    io: IoHandle,
    request_timeout: Duration,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stopped: AtomicBool,
}

/// A request only the leader serves.
#[derive(Clone)]
enum LeaderCall {
    Propose(Proposal),
    Controller(ControllerRequest),
    AddLearner { node_id: NodeId, addr: String },
    AddVoter { node_id: NodeId, wait_ms: u64 },
    RemoveVoter { node_id: NodeId },
    DescribeQuorum,
}

enum LeaderReply {
    Propose(#[allow(dead_code)] LogId),
    Controller(ControllerResponse),
    AddLearner,
    VoterChange(Result<(), VoterChangeError>),
    DescribeQuorum(QuorumDescription),
}

/// Why one attempt to reach the leader failed.
enum AttemptError {
    Leader(LeaderError),
    Transport(CallError),
    Unexpected(String),
    /// Another node became the known leader while the attempt was in flight.
    LeaderMoved,
}

fn validate(config: &QuorumConfig) -> Result<(), QuorumError> {
    let bad = |msg: String| Err(QuorumError::Config(msg));
    if config.voters.is_empty() {
        return bad("no voters".into());
    }
    if config.election_timeout_min_ms >= config.election_timeout_max_ms {
        return bad(format!(
            "election_timeout_min_ms ({}) must be below election_timeout_max_ms ({})",
            config.election_timeout_min_ms, config.election_timeout_max_ms
        ));
    }
    if config.heartbeat_interval_ms == 0
        || config.heartbeat_interval_ms >= config.election_timeout_min_ms
    {
        return bad(format!(
            "heartbeat_interval_ms ({}) must be above 0 and below election_timeout_min_ms ({})",
            config.heartbeat_interval_ms, config.election_timeout_min_ms
        ));
    }
    if config.request_timeout_ms == 0 || config.snapshot_interval_entries == 0 {
        return bad("request_timeout_ms and snapshot_interval_entries must be above 0".into());
    }
    Ok(())
}

fn raft_config(config: &QuorumConfig) -> Result<Config, QuorumError> {
    Config {
        cluster_name: "ferry-metadata".into(),
        election_timeout_min: config.election_timeout_min_ms,
        election_timeout_max: config.election_timeout_max_ms,
        heartbeat_interval: config.heartbeat_interval_ms,
        install_snapshot_timeout: config.request_timeout_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_interval_entries),
        max_in_snapshot_log_to_keep: config.snapshot_keep_entries,
        // Turned on once the node knows it may campaign (see `start_inner`).
        enable_elect: false,
        ..Default::default()
    }
    .validate()
    .map_err(|e| QuorumError::Config(e.to_string()))
}

impl MetadataQuorum {
    /// Opens the storage in `config.dir`, binds `config.listen_addr` and starts the
    /// Raft node. On the lowest voter id of a cluster that was never initialized,
    /// it also initializes the membership with all voters (a no-op on every later
    /// start). A node that is not in the membership keeps asking the leader to add
    /// it as a learner until it is.
    pub async fn start(config: QuorumConfig) -> Result<Arc<MetadataQuorum>, QuorumError> {
        validate(&config)?;
        let listener = TcpListener::bind(&config.listen_addr).await?;
        Self::start_inner(config, listener).await
    }

    /// Like [`start`](Self::start) with a listener the caller already bound (so a
    /// test can learn every node's port before any node starts).
    /// `config.listen_addr` is ignored.
    pub async fn start_with_listener(
        config: QuorumConfig,
        listener: std::net::TcpListener,
    ) -> Result<Arc<MetadataQuorum>, QuorumError> {
        validate(&config)?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        Self::start_inner(config, listener).await
    }

    async fn start_inner(
        config: QuorumConfig,
        listener: TcpListener,
    ) -> Result<Arc<MetadataQuorum>, QuorumError> {
        let raft_config = Arc::new(raft_config(&config)?);
        let local_addr = listener.local_addr()?;
        let node_id = config.node_id;
        let voters = Arc::new(config.voters.clone());
        let dir = config.dir.clone();
        let (log, sm, sm_shared) = tokio::task::spawn_blocking(move || {
            let log = LogStore::open(&dir)?;
            let (sm, shared) = StateMachine::open(&dir)?;
            Ok::<_, std::io::Error>((log, sm, shared))
        })
        .await
        .map_err(|e| QuorumError::Io(std::io::Error::other(e)))??;
        let io = log.io_handle();
        let network = NetworkFactory {
            node_id,
            voters: voters.clone(),
        };
        let raft = match Raft::new(node_id, raft_config, network, log, sm).await {
            Ok(raft) => raft,
            Err(e) => {
                io.stop().await;
                return Err(QuorumError::Raft(e.to_string()));
            }
        };
        let request_timeout = Duration::from_millis(config.request_timeout_ms);
        let ctx = Arc::new(ServerCtx {
            node_id,
            raft: raft.clone(),
            handler: RwLock::new(None),
            request_timeout,
        });
        let server = tokio::spawn(serve(listener, ctx.clone()));
        let quorum = Arc::new(MetadataQuorum {
            node_id,
            voters: voters.clone(),
            raft: raft.clone(),
            ctx,
            local_addr,
            image_rx: sm_shared.subscribe(),
            sm: sm_shared,
            pool: Arc::new(ConnPool::default()),
            io,
            request_timeout,
            tasks: Mutex::new(vec![server]),
            stopped: AtomicBool::new(false),
        });

        let initialized = match raft.is_initialized().await {
            Ok(initialized) => initialized,
            Err(e) => {
                quorum.shutdown().await;
                return Err(QuorumError::Raft(e.to_string()));
            }
        };
        let sole_voter = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            let ids: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            ids == [node_id]
        };
        if !initialized || sole_voter {
            // A new node has no stale term to disrupt anyone with; a sole voter
            // cannot have been removed without its own vote.
            raft.runtime_config().elect(true);
        } else {
            let grace = Duration::from_millis(config.election_timeout_max_ms);
            let gate = tokio::spawn(allow_elections_after_leader_or(raft.clone(), grace));
            quorum.tasks.lock().push(gate);
        }

        if config.is_voter() {
            let lowest = voters.keys().next().copied();
            if lowest == Some(node_id) && !initialized {
                let members: BTreeMap<NodeId, Node> = voters
                    .iter()
                    .map(|(id, addr)| (*id, Node::new(addr.clone())))
                    .collect();
                tracing::info!(node_id, voters = ?members.keys().collect::<Vec<_>>(), "initializing the metadata quorum");
                match raft.initialize(members).await {
                    Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                    Err(e) => {
                        quorum.shutdown().await;
                        return Err(QuorumError::Raft(e.to_string()));
                    }
                }
            }
        }
        {
            let addr = config
                .advertised_addr
                .clone()
                .unwrap_or_else(|| local_addr.to_string());
            // A configured voter is normally made a member by the initializing
            // voter: it asks only if that has not happened after a while (its
            // data was lost, or the cluster was formed without it). The task
            // keeps watching: a leader that removed itself from the voters left
            // the membership to step down, and joins again as a learner; a
            // learner asks now and then whether it still is one (see
            // LEARNER_RECHECK).
            let first_wait = if config.is_voter() {
                Duration::from_millis(config.election_timeout_max_ms * 2)
            } else {
                Duration::ZERO
            };
            let weak = Arc::downgrade(&quorum);
            let join = tokio::spawn(async move {
                tokio::time::sleep(first_wait).await;
                let mut last_check = Instant::now();
                loop {
                    let Some(quorum) = weak.upgrade() else { return };
                    let member = quorum.is_member();
                    let recheck = member
                        && !quorum.voter_ids().contains(&node_id)
                        && last_check.elapsed() >= LEARNER_RECHECK;
                    if member && !recheck {
                        drop(quorum);
                        tokio::time::sleep(JOIN_RETRY).await;
                        continue;
                    }
                    last_check = Instant::now();
                    let call = LeaderCall::AddLearner {
                        node_id,
                        addr: addr.clone(),
                    };
                    let deadline = Instant::now() + quorum.request_timeout;
                    if let Err(e) = quorum
                        .to_leader(&call, deadline, Duration::MAX, &mut || false)
                        .await
                    {
                        if member {
                            tracing::debug!(node_id, error = %e, "could not confirm this learner's membership with the leader");
                        } else {
                            tracing::info!(node_id, error = %e, "not yet added to the metadata quorum as a learner");
                        }
                    }
                    drop(quorum);
                    tokio::time::sleep(JOIN_RETRY).await;
                }
            });
            quorum.tasks.lock().push(join);
        }
        Ok(quorum)
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The address the controller listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Appends `records` as one entry through the leader (forwarded when this node
    /// is not the leader, retried across leader changes until the request
    /// deadline) and returns once this node has applied it, with the image right
    /// after it.
    pub async fn propose(
        &self,
        records: Vec<MetadataRecord>,
    ) -> Result<Arc<MetadataImage>, QuorumError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(QuorumError::Shutdown);
        }
        let deadline = Instant::now() + self.request_timeout;
        let proposal = Proposal {
            request_id: Uuid::new_v4(),
            records,
            only_in: None,
        };
        check_size(&proposal)?;
        let (_guard, mut applied) = self.sm.wait_for(proposal.request_id);
        let call = LeaderCall::Propose(proposal);
        // Between attempts, stop retrying if this node already applied the proposal
        // (an earlier attempt committed but its answer was lost). An attempt in
        // flight is never abandoned for that, so openraft always has someone to
        // answer to.
        let mut early = None;
        let appended = self
            .to_leader(
                &call,
                deadline,
                Duration::MAX,
                &mut || match applied.try_recv() {
                    Ok(image) => {
                        early = Some(image);
                        true
                    }
                    Err(_) => false,
                },
            )
            .await;
        if let Some(image) = early {
            return Ok(image);
        }
        if let Err(e) = appended {
            return applied.try_recv().map_err(|_| e);
        }
        match tokio::time::timeout_at(deadline, applied).await {
            Ok(Ok(image)) => Ok(image),
            Ok(Err(_)) => Err(QuorumError::Shutdown),
            Err(_) => Err(QuorumError::Timeout(
                "the entry is committed but this node has not applied it yet".into(),
            )),
        }
    }

    /// The term this node leads, once its image holds everything committed
    /// before that term (it has applied an entry of its own term); `None`
    /// otherwise. A controller decides on the image only while this is `Some`,
    /// and commits with [`propose_as`](Self::propose_as) in that term.
    pub fn leadership(&self) -> Option<Leadership> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leadership = Leadership {
            term: m.current_term,
            node_id: self.node_id,
        };
        let leads = m.state == ServerState::Leader && m.current_leader == Some(self.node_id);
        let caught_up = m.last_applied.is_some_and(|l| leadership.appended(&l));
        (leads && caught_up).then_some(leadership)
    }

    /// [`leadership`](Self::leadership), waiting up to `timeout` for a node that
    /// leads to apply the first entry of its term; `None` at once when this node
    /// does not lead.
    pub async fn wait_leadership(&self, timeout: Duration) -> Option<Leadership> {
        let mut metrics = self.raft.metrics();
        let wait = async {
            loop {
                if let Some(leadership) = self.leadership() {
                    return Some(leadership);
                }
                if !self.is_leader() || metrics.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// Appends a controller decision made in `leadership` (see
    /// [`leadership`](Self::leadership)) on this node only and returns once it
    /// is applied here, with the image right after it. Never forwarded nor
    /// retried: once this node no longer leads that term the decision fails with
    /// [`QuorumError::NotLeader`], and if its entry reaches the log in another
    /// term anyway every node ignores its records.
    pub async fn propose_as(
        &self,
        leadership: Leadership,
        records: Vec<MetadataRecord>,
    ) -> Result<Arc<MetadataImage>, QuorumError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(QuorumError::Shutdown);
        }
        let not_leader = |reason: &str| QuorumError::NotLeader {
            term: leadership.term,
            reason: reason.to_string(),
        };
        if self.leadership() != Some(leadership) {
            return Err(not_leader("this node no longer leads that term"));
        }
        let deadline = Instant::now() + self.request_timeout;
        let proposal = Proposal {
            request_id: Uuid::new_v4(),
            records,
            only_in: Some(leadership),
        };
        check_size(&proposal)?;
        let (_guard, applied) = self.sm.wait_for(proposal.request_id);
        let log_id = match tokio::time::timeout_at(deadline, self.raft.client_write(proposal)).await
        {
            Err(_) => {
                return Err(QuorumError::Timeout(
                    "the decision was not committed in time".into(),
                ))
            }
            Ok(Ok(written)) => written.log_id,
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                return Err(not_leader("deposed before the decision was committed"))
            }
            Ok(Err(e)) => return Err(QuorumError::Raft(e.to_string())),
        };
        if !leadership.appended(&log_id) {
            // Deposed and elected again in between: the entry is a no-op.
            return Err(not_leader("the decision was appended in another term"));
        }
        match tokio::time::timeout_at(deadline, applied).await {
            Ok(Ok(image)) => Ok(image),
            Ok(Err(_)) => Err(QuorumError::Shutdown),
            Err(_) => Err(QuorumError::Timeout(
                "the decision is committed but this node has not applied it yet".into(),
            )),
        }
    }

    /// Like [`call_leader`](Self::call_leader) with a deadline of `total`, each
    /// attempt limited to `attempt`: for calls that are soon stale, such as
    /// heartbeats, which must reach a new leader well within a session.
    pub async fn call_leader_within(
        &self,
        request: ControllerRequest,
        total: Duration,
        attempt: Duration,
    ) -> Result<ControllerResponse, QuorumError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(QuorumError::Shutdown);
        }
        let deadline = Instant::now() + total;
        match self
            .to_leader(
                &LeaderCall::Controller(request),
                deadline,
                attempt,
                &mut || false,
            )
            .await?
        {
            LeaderReply::Controller(response) => Ok(response),
            _ => Err(QuorumError::Raft("mismatched leader reply".into())),
        }
    }

    /// Sends a controller RPC to the leader's [`ControllerHandler`] (retried across
    /// leader changes until the request deadline).
    pub async fn call_leader(
        &self,
        request: ControllerRequest,
    ) -> Result<ControllerResponse, QuorumError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(QuorumError::Shutdown);
        }
        let deadline = Instant::now() + self.request_timeout;
        match self
            .to_leader(
                &LeaderCall::Controller(request),
                deadline,
                Duration::MAX,
                &mut || false,
            )
            .await?
        {
            LeaderReply::Controller(response) => Ok(response),
            _ => Err(QuorumError::Raft("mismatched leader reply".into())),
        }
    }

    /// Promotes `node_id`, a learner, to voter (Kafka's AddRaftVoter): the
    /// leader waits up to `wait` for the learner to have every entry it has
    /// applied, then commits the new membership. A voter already is
    /// [`VoterChangeError::DuplicateVoter`]; a node that is not a caught-up
    /// learner in time [`VoterChangeError::TimedOut`].
    pub async fn add_voter(&self, node_id: NodeId, wait: Duration) -> Result<(), QuorumError> {
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        match self
            .leader_call(LeaderCall::AddVoter { node_id, wait_ms }, wait)
            .await?
        {
            LeaderReply::VoterChange(r) => r.map_err(QuorumError::Voter),
            _ => Err(QuorumError::Raft("mismatched leader reply".into())),
        }
    }

    /// Demotes voter `node_id` to learner (Kafka's RemoveRaftVoter): it keeps
    /// receiving the log without a vote. The leader may remove itself: it steps
    /// down once the change is committed and the other voters elect a leader.
    /// A node that is not a voter is [`VoterChangeError::VoterNotFound`]; the
    /// last voter [`VoterChangeError::Invalid`].
    pub async fn remove_voter(&self, node_id: NodeId) -> Result<(), QuorumError> {
        match self
            .leader_call(LeaderCall::RemoveVoter { node_id }, Duration::ZERO)
            .await?
        {
            LeaderReply::VoterChange(r) => r.map_err(QuorumError::Voter),
            _ => Err(QuorumError::Raft("mismatched leader reply".into())),
        }
    }

    /// Removes learner `node_id` from the membership, on this node, which must
    /// lead (the active controller calls it while it carries out an
    /// UnregisterBroker): the leader stops replicating to it. `Ok(false)` when it
    /// is no learner (a voter is never removed here: [`remove_voter`] first).
    /// A node that is still running asks to join again as a learner.
    ///
    /// [`remove_voter`]: Self::remove_voter
    pub async fn remove_learner(&self, node_id: NodeId) -> Result<bool, QuorumError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(QuorumError::Shutdown);
        }
        if !self.learner_ids().contains(&node_id) {
            return Ok(false);
        }
        let changes = openraft::ChangeMembers::RemoveNodes(BTreeSet::from([node_id]));
        let change = self.raft.change_membership(changes, false);
        match tokio::time::timeout(self.request_timeout, change).await {
            Err(_) => Err(QuorumError::Timeout(
                "the membership change was not committed in time".into(),
            )),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(QuorumError::NotLeader {
                    term: self.term(),
                    reason: "deposed before the learner was removed".into(),
                })
            }
            Ok(Err(e)) => Err(QuorumError::Raft(e.to_string())),
        }
    }

    /// The quorum as its leader sees it (Kafka's DescribeQuorum).
    pub async fn describe(&self) -> Result<QuorumDescription, QuorumError> {
        match self
            .leader_call(LeaderCall::DescribeQuorum, Duration::ZERO)
            .await?
        {
            LeaderReply::DescribeQuorum(d) => Ok(d),
            _ => Err(QuorumError::Raft("mismatched leader reply".into())),
        }
    }

    /// Runs `call` on the leader with the request deadline plus `extra`.
    async fn leader_call(
        &self,
        call: LeaderCall,
        extra: Duration,
    ) -> Result<LeaderReply, QuorumError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(QuorumError::Shutdown);
        }
        let deadline = Instant::now() + self.request_timeout + extra;
        self.to_leader(&call, deadline, Duration::MAX, &mut || false)
            .await
    }

    /// The voters of the membership this node has.
    pub fn voter_ids(&self) -> BTreeSet<NodeId> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let voters = membership.membership().voter_ids().collect();
        voters
    }

    /// The learners of the membership this node has.
    pub fn learner_ids(&self) -> BTreeSet<NodeId> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let learners = membership.membership().learner_ids().collect();
        learners
    }

    /// The Raft term this node is in.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Installs the handler that answers controller RPCs while this node leads.
    pub fn set_handler(&self, handler: Arc<dyn ControllerHandler>) {
        *self.ctx.handler.write() = Some(handler);
    }

    pub fn clear_handler(&self) {
        *self.ctx.handler.write() = None;
    }

    /// Every image this node applies, latest first.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.image_rx.clone()
    }

    /// The latest image applied on this node.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image_rx.borrow().clone()
    }

    /// The leader this node knows of (not itself once it stepped down, though
    /// its vote still names it until it hears of the next leader).
    pub fn leader_id(&self) -> Option<NodeId> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.current_leader
            .filter(|l| *l != self.node_id || m.state == ServerState::Leader)
    }

    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id)
    }

    /// Waits until some node is known as leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, QuorumError> {
        let mut metrics = self.raft.metrics();
        let wait = async {
            loop {
                if let Some(leader) = metrics.borrow_and_update().current_leader {
                    return Ok(leader);
                }
                if metrics.changed().await.is_err() {
                    return Err(QuorumError::Shutdown);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| QuorumError::Timeout("no leader elected".into()))?
    }

    /// Whether this node is in the membership (as voter or learner).
    fn is_member(&self) -> bool {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let member = membership
            .membership()
            .nodes()
            .any(|(id, _)| *id == self.node_id);
        member
    }

    /// Stops the Raft node and the listener and waits for the last log write.
    /// Pending `propose` calls fail with [`QuorumError::Shutdown`]. Idempotent.
    pub async fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let tasks: Vec<JoinHandle<()>> = self.tasks.lock().drain(..).collect();
        for task in tasks {
            task.abort();
            // Wait until the task is gone, so the listener is closed (and its port
            // free) when this returns.
            let _ = task.await;
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft core ended abnormally");
        }
        self.io.stop().await;
        self.sm.clear_waiters();
        self.pool.clear();
    }

    /// Where to reach `node`: the address the membership records, else its
    /// configured voter address.
    fn addr_of(&self, node: NodeId) -> Option<String> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let addr = membership
            .membership()
            .get_node(&node)
            .map(|n| n.addr.clone())
            .filter(|a| !a.is_empty());
        addr.or_else(|| self.voters.get(&node).cloned())
    }

    /// Every other node this one knows of: the membership's, then the
    /// configured voters.
    fn known_nodes(&self) -> Vec<NodeId> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let mut ids: BTreeSet<NodeId> =
            membership.membership().nodes().map(|(id, _)| *id).collect();
        ids.extend(self.voters.keys().copied());
        ids.remove(&self.node_id);
        ids.into_iter().collect()
    }

    /// Runs `call` on the leader, following leader changes until `deadline`, or
    /// until `done` (asked before every retry) says the outcome is known anyway;
    /// then the error is [`QuorumError::Shutdown`] and the caller has its answer.
    ///
    /// One attempt lasts at most `attempt_max`, and an attempt to another node
    /// is given up as soon as this node learns of a different leader: a leader
    /// that became unreachable must not hold the call for the whole deadline.
    async fn to_leader(
        &self,
        call: &LeaderCall,
        deadline: Instant,
        attempt_max: Duration,
        done: &mut (dyn FnMut() -> bool + Send),
    ) -> Result<LeaderReply, QuorumError> {
        let mut hint: Option<NodeId> = None;
        let mut next_voter = 0usize;
        let mut last_error = String::from("no leader known");
        loop {
            if self.stopped.load(Ordering::Acquire) || done() {
                return Err(QuorumError::Shutdown);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(QuorumError::Timeout(last_error));
            }
            // Who to ask: the leader this node knows, else a hint from a previous
            // answer, else every other node it knows of in turn (a node outside
            // the membership, or one the leader no longer replicates to, may
            // never hear of a leader otherwise).
            let leader = self.leader_id();
            let hint_elsewhere = hint.take().filter(|h| *h != self.node_id);
            let target = leader.or(hint_elsewhere).or_else(|| {
                let others = self.known_nodes();
                let v = others.get(next_voter % others.len().max(1)).copied();
                next_voter += 1;
                v
            });
            let Some(target) = target else {
                tokio::time::sleep(RETRY_BACKOFF.min(deadline - now)).await;
                continue;
            };
            let ttl = (deadline - now).min(attempt_max);
            let attempt = if target == self.node_id {
                // A deposed leader answers its own pending calls (NotLeader).
                self.run_local(call, ttl).await
            } else {
                tokio::select! {
                    reply = self.run_remote(target, call, ttl) => reply,
                    () = self.leader_moves_from(target) => Err(AttemptError::LeaderMoved),
                }
            };
            match attempt {
                Ok(reply) => return Ok(reply),
                Err(AttemptError::Leader(LeaderError::NoHandler)) => {
                    return Err(QuorumError::NoHandler)
                }
                Err(AttemptError::Leader(LeaderError::NotLeader { leader_id })) => {
                    last_error = format!("node {target} is not the leader");
                    hint = leader_id.filter(|l| *l != target);
                    if hint.is_some() {
                        continue;
                    }
                }
                Err(AttemptError::Leader(LeaderError::Failed(msg))) => {
                    last_error = format!("leader {target}: {msg}");
                }
                Err(AttemptError::Transport(e)) => {
                    last_error = format!("node {target}: {e}");
                }
                Err(AttemptError::Unexpected(msg)) => {
                    last_error = format!("node {target}: {msg}");
                }
                Err(AttemptError::LeaderMoved) => {
                    last_error = format!("node {target} is no longer the leader");
                    continue;
                }
            }
            tracing::debug!(node_id = self.node_id, error = %last_error, "retrying a request to the metadata leader");
            let now = Instant::now();
            tokio::time::sleep(RETRY_BACKOFF.min(deadline.saturating_duration_since(now))).await;
        }
    }

    /// Returns once this node knows of a leader other than `target`.
    async fn leader_moves_from(&self, target: NodeId) {
        let mut metrics = self.raft.metrics();
        loop {
            if self.leader_id().is_some_and(|l| l != target) {
                return;
            }
            if metrics.changed().await.is_err() {
                // The Raft core stopped: nothing will move any more.
                std::future::pending::<()>().await;
            }
        }
    }

    async fn run_local(
        &self,
        call: &LeaderCall,
        ttl: Duration,
    ) -> Result<LeaderReply, AttemptError> {
        let work = async {
            match call.clone() {
                LeaderCall::Propose(p) => self.ctx.propose_local(p).await.map(LeaderReply::Propose),
                LeaderCall::Controller(r) => self
                    .ctx
                    .controller_local(r)
                    .await
                    .map(LeaderReply::Controller),
                // A leader is a member; only non-members join.
                LeaderCall::AddLearner { .. } => Err(LeaderError::Failed(
                    "a member does not join as a learner".into(),
                )),
                LeaderCall::AddVoter { node_id, wait_ms } => self
                    .ctx
                    .add_voter_local(node_id, Duration::from_millis(wait_ms))
                    .await
                    .map(LeaderReply::VoterChange),
                LeaderCall::RemoveVoter { node_id } => self
                    .ctx
                    .remove_voter_local(node_id)
                    .await
                    .map(LeaderReply::VoterChange),
                LeaderCall::DescribeQuorum => {
                    self.ctx.describe_local().map(LeaderReply::DescribeQuorum)
                }
            }
        };
        match tokio::time::timeout(ttl, work).await {
            Ok(result) => result.map_err(AttemptError::Leader),
            Err(_) => Err(AttemptError::Leader(LeaderError::Failed(
                "timed out".into(),
            ))),
        }
    }

    async fn run_remote(
        &self,
        target: NodeId,
        call: &LeaderCall,
        ttl: Duration,
    ) -> Result<LeaderReply, AttemptError> {
        let Some(addr) = self.addr_of(target) else {
            return Err(AttemptError::Unexpected(format!(
                "no address known for node {target}"
            )));
        };
        let body = match call.clone() {
            LeaderCall::Propose(p) => Request::Propose(p),
            LeaderCall::Controller(r) => Request::Controller(r),
            LeaderCall::AddLearner { node_id, addr } => Request::AddLearner { node_id, addr },
            LeaderCall::AddVoter { node_id, wait_ms } => Request::AddVoter { node_id, wait_ms },
            LeaderCall::RemoveVoter { node_id } => Request::RemoveVoter { node_id },
            LeaderCall::DescribeQuorum => Request::DescribeQuorum,
        };
        let request = RequestEnvelope { to: target, body };
        let reply = self
            .pool
            .call(&addr, &request, ttl)
            .await
            .map_err(AttemptError::Transport)?;
        match reply {
            Response::Propose(r) => r.map(LeaderReply::Propose).map_err(AttemptError::Leader),
            Response::Controller(r) => r.map(LeaderReply::Controller).map_err(AttemptError::Leader),
            Response::AddLearner(r) => r
                .map(|()| LeaderReply::AddLearner)
                .map_err(AttemptError::Leader),
            Response::VoterChange(r) => r
                .map(LeaderReply::VoterChange)
                .map_err(AttemptError::Leader),
            Response::DescribeQuorum(r) => r
                .map(LeaderReply::DescribeQuorum)
                .map_err(AttemptError::Leader),
            other => Err(AttemptError::Unexpected(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }
}

/// A proposal too large for one entry is refused before it is sent.
fn check_size(proposal: &Proposal) -> Result<(), QuorumError> {
    let bytes = serde_json::to_vec(proposal)
        .map_err(|e| QuorumError::Io(std::io::Error::other(e)))?
        .len();
    if bytes > PROPOSAL_BYTES_MAX {
        return Err(QuorumError::TooLarge {
            bytes,
            max: PROPOSAL_BYTES_MAX,
        });
    }
    Ok(())
}

/// Lets a restarted voter campaign once it has heard from a leader (then it
/// has the membership that leader replicates, which may have removed it) or
/// after `grace` without one (the whole quorum restarted). Heard from means
/// something arrived: a new vote, entries or membership (the leader the metrics
/// name right after the start is only the one of the persisted vote).
async fn allow_elections_after_leader_or(raft: Raft, grace: Duration) {
    let mut metrics = raft.metrics();
    let (node_id, vote, last_log, membership) = {
        let m = metrics.borrow_and_update();
        (
            m.id,
            m.vote,
            m.last_log_index,
            m.membership_config.log_id().to_owned(),
        )
    };
    let heard = async {
        loop {
            if metrics.changed().await.is_err() {
                return;
            }
            let m = metrics.borrow_and_update();
            let news = m.vote != vote
                || m.last_log_index != last_log
                || m.membership_config.log_id() != &membership;
            if news && m.current_leader.is_some_and(|l| l != node_id) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(grace, heard).await;
    raft.runtime_config().elect(true);
}

impl Drop for MetadataQuorum {
    /// Without [`shutdown`](MetadataQuorum::shutdown), dropping still stops the
    /// listener; the Raft core stops once its last handle is gone.
    fn drop(&mut self) {
        for task in self.tasks.get_mut().drain(..) {
            task.abort();
        }
    }
}
