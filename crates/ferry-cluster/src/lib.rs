//! The metadata quorum: ferry's metadata log replicated by openraft among the
//! controller nodes (KRaft's design, architecture decision 5).
//!
//! ```text
//!            propose(records) / call_leader(req)            (any node)
//!                    │  forwarded over TCP when this node is not the leader
//!                    ▼
//!   ┌──────── leader ─────────┐   AppendEntries    ┌──────── follower ───────┐
//!   │ openraft                │ ─────────────────► │ openraft                │
//!   │  LogStore (fsync'd log) │ ◄───────────────── │  LogStore (fsync'd log) │
//!   │  StateMachine           │      acks          │  StateMachine           │
//!   │   MetadataImage::apply  │                    │   MetadataImage::apply  │
//!   └───────────┬─────────────┘                    └───────────┬─────────────┘
//!               ▼                                              ▼
//!      watch<Arc<MetadataImage>>                      watch<Arc<MetadataImage>>
//!      (subscribe / image)                            (subscribe / image)
//! ```
//!
//! - `log_store`: the Raft log and vote on disk, written by one I/O thread.
//! - `state_machine`: committed [`MetadataRecord`]s applied to the image;
//!   snapshots of the image.
//! - `network` and `frame`: the controller listener and its clients.
//! - `quorum`: [`MetadataQuorum`], what the broker uses.
//! - `controller`: the active controller's decisions (registration, fencing,
//!   leader election, ISR changes), written back as metadata records.
//! - `fetcher`: followers fetching from their leaders over the Kafka protocol.
//! - `node`: [`ClusterNode`], a broker in a cluster, wiring all of the above.
//!
//! The configured voters (`--controller-voters`, KRaft's
//! `controller.quorum.voters`) are the bootstrap set: the lowest voter id
//! initializes the cluster with all of them the first time it starts; the others
//! wait to hear from it. A node that is not a member asks the leader to add it as
//! a learner and then receives the log like a follower, without a vote.
//!
//! After that the membership is dynamic, as in KIP-853: a caught-up learner is
//! promoted to voter and a voter demoted to learner with openraft's
//! `change_membership` (Kafka's AddRaftVoter / RemoveRaftVoter, see
//! [`MetadataQuorum::add_voter`]). The membership persisted in the Raft log and
//! snapshot is then the truth, and also says where each node is reached; the
//! configured voters only help a node find the quorum.
//!
//! [`MetadataRecord`]: ferry_core::metadata::MetadataRecord

use std::collections::BTreeMap;
use std::path::PathBuf;

pub mod controller;
mod durable;
pub mod fetcher;
mod frame;
mod log_store;
mod markers;
mod network;
mod node;
mod quorum;
mod state_machine;
mod types;

pub use node::{ClusterNode, ClusterOptions};
pub use quorum::{MetadataQuorum, PROPOSAL_BYTES_MAX};
pub use types::{
    ControllerHandler, ControllerRequest, ControllerResponse, HandlerFuture, Leadership, NodeId,
    Proposal, ProposalApplied, TypeConfig,
};

/// How one node takes part in the metadata quorum.
#[derive(Debug, Clone)]
pub struct QuorumConfig {
    pub node_id: u64,
    /// Voter id → `host:port` of its controller listener: the voters the
    /// cluster is initialized with (the same on every node), and where a node
    /// looks for the quorum. Once the cluster exists, the membership in the Raft
    /// log decides who votes and where each node is reached.
    pub voters: BTreeMap<u64, String>,
    /// Where this node's controller listener binds (`host:port`; port 0 picks one).
    pub listen_addr: String,
    /// The address a node that joins as a learner gives the leader to reach it
    /// (kept in the membership); the bound address when `None`.
    pub advertised_addr: Option<String>,
    /// Directory of the Raft log, vote and snapshot, e.g.
    /// `DATA_DIR/__cluster_metadata-0/raft`.
    pub dir: PathBuf,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// Deadline of one `propose` or `call_leader`, retries included; also the
    /// timeout of sending a snapshot.
    pub request_timeout_ms: u64,
    /// A snapshot is taken once this many entries were applied since the last.
    pub snapshot_interval_entries: u64,
    /// Entries kept in the log behind the last snapshot, so a follower that lags
    /// a little catches up from the log instead of a snapshot.
    pub snapshot_keep_entries: u64,
}

impl QuorumConfig {
    /// A config with the default timings: elections after 1.5–3 s without a
    /// leader, heartbeats every 500 ms, 10 s per request. openraft also uses the
    /// heartbeat interval as the timeout of every AppendEntries, which includes
    /// the follower's fsync: a shorter one starves a follower on a loaded disk
    /// (it retries the same entries forever). KRaft's own defaults are of this
    /// order (an election after 1 s, a fetch timeout of 2 s).
    pub fn new(
        node_id: u64,
        voters: BTreeMap<u64, String>,
        listen_addr: impl Into<String>,
        dir: impl Into<PathBuf>,
    ) -> Self {
        QuorumConfig {
            node_id,
            voters,
            listen_addr: listen_addr.into(),
            advertised_addr: None,
            dir: dir.into(),
            election_timeout_min_ms: 1500,
            election_timeout_max_ms: 3000,
            heartbeat_interval_ms: 500,
            request_timeout_ms: 10_000,
            snapshot_interval_entries: 5000,
            snapshot_keep_entries: 1000,
        }
    }

    pub fn is_voter(&self) -> bool {
        self.voters.contains_key(&self.node_id)
    }
}

/// Errors of the metadata quorum.
#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    #[error("invalid metadata quorum config: {0}")]
    Config(String),
    #[error("metadata quorum I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("raft: {0}")]
    Raft(String),
    /// The deadline passed: no leader was reachable, or the entry was committed
    /// but this node has not applied it yet.
    #[error("metadata quorum request timed out: {0}")]
    Timeout(String),
    #[error("no controller handler is installed on the leader")]
    NoHandler,
    /// This node does not lead the term a controller decision was made in
    /// (it was deposed, or never led it): the decision is dropped.
    #[error("not the leader of the metadata quorum in term {term}: {reason}")]
    NotLeader { term: u64, reason: String },
    #[error("a proposal of {bytes} bytes exceeds the limit of {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("the metadata quorum is shut down")]
    Shutdown,
    /// The leader refused a voter change.
    #[error("{0}")]
    Voter(#[from] ferry_core::cluster::VoterChangeError),
}
