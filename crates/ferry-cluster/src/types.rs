//! The types openraft is instantiated with, and the messages the quorum carries
//! besides Raft's own.

use std::fmt;
use std::future::Future;
use std::io::Cursor;
use std::pin::Pin;

use ferry_core::metadata::MetadataRecord;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

openraft::declare_raft_types!(
    /// openraft's type configuration for the metadata log.
    pub TypeConfig:
        D = Proposal,
        R = ProposalApplied,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Node = openraft::BasicNode;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Raft = openraft::Raft<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;

/// One normal entry of the metadata log: the records of one `propose` call.
///
/// `request_id` makes a retried proposal idempotent: a proposal whose append was
/// acknowledged by nobody may have been committed anyway, and the state machine
/// skips an id it has applied recently instead of applying the records twice.
///
/// `only_in` makes it a controller decision: its records take effect only if
/// the entry was appended by that leader in that term (its log id says so), so
/// a decision a deposed controller made on its stale image is dropped by every
/// node alike, however the entry reached the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub request_id: Uuid,
    pub records: Vec<MetadataRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_in: Option<Leadership>,
}

/// A term of the metadata quorum and the node that leads it: what a controller
/// decided in (see [`MetadataQuorum::leadership`](crate::MetadataQuorum::leadership)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leadership {
    pub term: u64,
    pub node_id: NodeId,
}

impl Leadership {
    /// Whether the entry with `log_id` was appended by this leader in this term.
    pub fn appended(&self, log_id: &LogId) -> bool {
        log_id.leader_id.term == self.term && log_id.leader_id.node_id == self.node_id
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Proposal({}, {} records)",
            self.request_id,
            self.records.len()
        )
    }
}

/// What the state machine answers for an applied entry (openraft's `R`). The
/// image itself reaches the proposer through a local waiter, not through Raft.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProposalApplied {
    /// The proposal had been applied before (a retry) and was skipped.
    pub duplicate: bool,
}

/// A controller RPC that is not a log append: sent to the current leader and
/// answered by the [`ControllerHandler`] installed there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControllerRequest {
    /// A broker says it is alive.
    /// A broker says it is alive, and where it listens (the controller registers
    /// it, or updates its address, from this).
    Heartbeat {
        node_id: i32,
        broker_epoch: i64,
        registration: Option<crate::controller::BrokerRegistration>,
    },
    /// A partition leader asks to change its ISR.
    AlterPartition {
        topic_id: Uuid,
        partition: i32,
        leader_epoch: i32,
        /// The partition epoch of the state the proposal was computed from
        /// (KIP-497); `None` from a broker older than partition epochs.
        #[serde(default)]
        partition_epoch: Option<i32>,
        new_isr: Vec<i32>,
    },
    /// An admin asks for leader elections (Kafka's ElectLeaders): `election_type`
    /// 0 preferred, 1 unclean; `partitions` (topic, partition) or `None` for all.
    ElectLeaders {
        election_type: i8,
        partitions: Option<Vec<(String, i32)>>,
    },
    /// An admin starts (`Some(target)`) or cancels (`None`) reassignments of
    /// (topic, partition) (Kafka's AlterPartitionReassignments).
    AlterPartitionReassignments {
        reassignments: Vec<(String, i32, Option<Vec<i32>>)>,
    },
    /// An admin lists the reassignments in progress of (topic, partition), or
    /// of every partition (Kafka's ListPartitionReassignments).
    ListPartitionReassignments {
        partitions: Option<Vec<(String, i32)>>,
    },
    /// An admin removes a broker that is gone for good (Kafka's
    /// UnregisterBroker): from the registered brokers, and from the metadata
    /// quorum's learners.
    UnregisterBroker { node_id: i32 },
}

/// The leader's answer to a [`ControllerRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControllerResponse {
    Heartbeat {
        /// The broker must not lead partitions until it is unfenced.
        is_fenced: bool,
    },
    /// The partition's state after the request (changed or not).
    AlterPartition {
        leader_epoch: i32,
        isr: Vec<i32>,
        /// The partition epoch after the request (`None` from a controller
        /// older than partition epochs).
        #[serde(default)]
        partition_epoch: Option<i32>,
    },
    /// Per partition (topic, partition): elected (committed), or why not.
    ElectLeaders {
        results: Vec<(String, i32, Result<(), ferry_core::cluster::ElectError>)>,
    },
    /// Per partition (topic, partition): started or cancelled (committed), or why not.
    AlterPartitionReassignments {
        results: Vec<(String, i32, Result<(), ferry_core::cluster::ReassignError>)>,
    },
    ListPartitionReassignments {
        ongoing: Vec<ferry_core::cluster::OngoingReassignment>,
    },
    /// Unregistered (committed), or why not.
    UnregisterBroker {
        result: Result<(), ferry_core::cluster::UnregisterError>,
    },
    /// The controller refused the request (stale epoch, unknown partition, …).
    Rejected { reason: String },
}

/// The future a [`ControllerHandler`] returns.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = ControllerResponse> + Send + 'a>>;

/// Answers controller RPCs on the leader. Installed with
/// [`MetadataQuorum::set_handler`](crate::MetadataQuorum::set_handler).
///
/// A handler that proposes records should hold the quorum through a `Weak`: the
/// quorum holds the handler, and an `Arc` both ways would never be freed.
pub trait ControllerHandler: Send + Sync + 'static {
    fn handle(&self, request: ControllerRequest) -> HandlerFuture<'_>;
}
