//! What the broker needs from the cluster layer, as traits so that ferry-core
//! stays free of Raft and of the network:
//!
//! ```text
//!  Broker ──commit(records)──► MetadataStore ── one node: the local metadata log
//!     ▲                                       └─ cluster: the Raft quorum (ferry-cluster)
//!     └──apply_image(image)◄── every committed image, on every node
//!  Broker ──alter_isr(...)───► ClusterLink ── the active controller
//!         ──elect_leaders(...)─►
//!         ──alter/list_partition_reassignments(...)─►
//!         ──describe_quorum / add_voter / remove_voter─► the quorum's leader
//!         ──unregister_broker(...)─► the active controller
//! ```

use std::sync::Arc;

use crate::metadata::{MetadataImage, MetadataLog, MetadataRecord};
use crate::{CoreError, Partition};
use parking_lot::Mutex;

/// Where metadata records become durable.
///
/// To ensure correctness an implementation must: return only once the records
/// are durable (in a cluster: committed by a majority) and return an image that
/// contains them and everything committed before them. Records are applied in
/// the order committed, the same on every node.
pub trait MetadataStore: Send + Sync {
    fn commit(
        &self,
        records: Vec<MetadataRecord>,
        current: &MetadataImage,
    ) -> Result<Arc<MetadataImage>, CoreError>;
}

/// The local metadata log of a single node.
pub struct LocalMetadataStore {
    log: Mutex<MetadataLog>,
}

impl LocalMetadataStore {
    pub fn new(log: MetadataLog) -> LocalMetadataStore {
        LocalMetadataStore {
            log: Mutex::new(log),
        }
    }
}

impl MetadataStore for LocalMetadataStore {
    fn commit(
        &self,
        records: Vec<MetadataRecord>,
        current: &MetadataImage,
    ) -> Result<Arc<MetadataImage>, CoreError> {
        let mut log = self.log.lock();
        log.append(&records)?;
        let mut image = current.clone();
        for r in &records {
            image.apply(r);
        }
        Ok(Arc::new(image))
    }
}

/// A transaction marker write on another broker.
pub type MarkersFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), CoreError>> + Send>>;

/// Why a leader election (Kafka's ElectLeaders) left a partition as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ElectError {
    /// The partition already has the leader the election would choose
    /// (preferred: the preferred replica leads; unclean: it has a leader).
    ElectionNotNeeded,
    /// The preferred replica is fenced, unregistered or out of the ISR.
    PreferredLeaderNotAvailable,
    /// No live replica can lead the leaderless partition.
    EligibleLeadersNotAvailable,
    UnknownTopicOrPartition,
}

/// Kafka's election types (ElectLeaders' `election_type`).
pub const ELECTION_PREFERRED: i8 = 0;
pub const ELECTION_UNCLEAN: i8 = 1;

/// The outcome of a leader election per partition.
pub type ElectResults = Vec<(crate::TopicPartition, Result<(), ElectError>)>;

/// A leader election by the active controller.
pub type ElectFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<ElectResults, CoreError>> + Send>>;

/// Why a partition reassignment request (Kafka's AlterPartitionReassignments)
/// was refused for a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ReassignError {
    UnknownTopicOrPartition,
    /// The target is empty, names a broker twice, or names a broker that is
    /// unregistered or fenced; or a cancellation would leave no in-sync replica.
    InvalidReplicaAssignment,
    /// A cancellation for a partition that is not being reassigned.
    NoReassignmentInProgress,
}

/// The outcome of a reassignment request per partition.
pub type ReassignResults = Vec<(crate::TopicPartition, Result<(), ReassignError>)>;

/// A reassignment request to the active controller.
pub type ReassignFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<ReassignResults, CoreError>> + Send>>;

/// A partition reassignment in progress (Kafka's ListPartitionReassignments).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OngoingReassignment {
    pub topic: String,
    pub partition: i32,
    /// The target replicas, then those being removed.
    pub replicas: Vec<i32>,
    pub adding: Vec<i32>,
    pub removing: Vec<i32>,
}

/// The reassignments in progress, as the active controller sees them.
pub type ListReassignmentsFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Vec<OngoingReassignment>, CoreError>> + Send>,
>;

/// One replica of the metadata quorum as its leader sees it (a voter or an
/// observer of Kafka's DescribeQuorum; ferry's observers are openraft learners).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuorumReplica {
    pub node_id: i32,
    /// Where its controller listener is reached (`host:port`), as the
    /// membership in the metadata log records it.
    pub addr: String,
    /// The offset after the last metadata log entry the leader knows the
    /// replica has (the leader's own log end for the leader); -1 if unknown.
    pub log_end_offset: i64,
}

/// The metadata quorum as its leader describes it (Kafka's DescribeQuorum).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuorumDescription {
    pub leader_id: i32,
    /// The leader's Raft term (KRaft's leader epoch).
    pub leader_epoch: i32,
    /// The offset after the last entry the leader has applied (committed).
    pub high_watermark: i64,
    pub voters: Vec<QuorumReplica>,
    /// Replicas that receive the log without a vote.
    pub observers: Vec<QuorumReplica>,
}

/// Why a voter change (Kafka's AddRaftVoter / RemoveRaftVoter) was refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum VoterChangeError {
    /// The node is a voter already (Kafka's DUPLICATE_VOTER).
    #[error("{0}")]
    DuplicateVoter(String),
    /// The node is not a voter (Kafka's VOTER_NOT_FOUND).
    #[error("{0}")]
    VoterNotFound(String),
    /// The node is not a caught-up learner, another change is in progress, or
    /// the change was not committed in time (Kafka's REQUEST_TIMED_OUT).
    #[error("{0}")]
    TimedOut(String),
    /// The change would leave no voter (Kafka's INVALID_REQUEST).
    #[error("{0}")]
    Invalid(String),
}

/// The metadata quorum's description, from its leader.
pub type DescribeQuorumFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<QuorumDescription, CoreError>> + Send>,
>;

/// A voter change: committed (`Ok(Ok(()))`), refused, or not delivered.
pub type VoterChangeFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Result<(), VoterChangeError>, CoreError>> + Send>,
>;

/// Why an UnregisterBroker request was refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum UnregisterError {
    /// No broker has that id (Kafka's BROKER_ID_NOT_REGISTERED).
    #[error("{0}")]
    NotRegistered(String),
    /// The node still votes in the metadata quorum (Kafka's INVALID_REQUEST).
    #[error("{0}")]
    Invalid(String),
}

/// An unregistration: committed (`Ok(Ok(()))`), refused, or not delivered.
pub type UnregisterFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Result<(), UnregisterError>, CoreError>> + Send>,
>;

/// What a broker of a cluster asks of the other nodes: ISR changes of the
/// active controller (fire and forget: the outcome arrives as a metadata
/// change), leader elections, and transaction markers of partition leaders.
pub trait ClusterLink: Send + Sync {
    /// Asks for `isr` to become the in-sync replicas of `partition`, which this
    /// broker leads in `leader_epoch`, computed on the state at `partition_epoch`
    /// (Kafka's AlterPartition). The answer ends in
    /// [`Partition::confirm_isr_change`], or, refused or undelivered, in
    /// [`Partition::abort_isr_change_based_on`].
    fn alter_isr(
        &self,
        partition: Arc<Partition>,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<i32>,
    );

    /// The node id of the active controller, if one is known.
    fn controller_id(&self) -> Option<i32>;

    /// Has broker `leader` write the markers that end a transaction of
    /// `producer_id` to `partitions`, which it leads (Kafka's WriteTxnMarkers).
    fn write_txn_markers(
        &self,
        leader: i32,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        partitions: Vec<crate::TopicPartition>,
    ) -> MarkersFuture;

    /// Has the active controller elect leaders (Kafka's ElectLeaders):
    /// [`ELECTION_PREFERRED`] moves leadership to the preferred replica (the
    /// first assigned) when it is live and in sync; [`ELECTION_UNCLEAN`] gives a
    /// leaderless partition any live replica. `None` elects for every
    /// partition. Answers once the new leaders are committed; another election
    /// type is an [`CoreError::InvalidRequest`].
    fn elect_leaders(
        &self,
        election_type: i8,
        partitions: Option<Vec<crate::TopicPartition>>,
    ) -> ElectFuture;

    /// Has the active controller start (`Some(target)`) or cancel (`None`)
    /// the reassignment of each partition (Kafka's AlterPartitionReassignments).
    /// Answers once the reassignments are committed, not once they complete:
    /// the controller completes each when every target replica is in sync.
    fn alter_partition_reassignments(
        &self,
        reassignments: Vec<(crate::TopicPartition, Option<Vec<i32>>)>,
    ) -> ReassignFuture;

    /// The reassignments in progress of `partitions` (`None`: of every
    /// partition), as the active controller sees them.
    fn list_partition_reassignments(
        &self,
        partitions: Option<Vec<crate::TopicPartition>>,
    ) -> ListReassignmentsFuture;

    /// The metadata quorum as its leader sees it: voters, observers, leader and
    /// each replica's log end (Kafka's DescribeQuorum).
    fn describe_quorum(&self) -> DescribeQuorumFuture {
        Box::pin(async { Err(CoreError::InvalidRequest("no metadata quorum".into())) })
    }

    /// Promotes `node_id`, a learner of the metadata quorum, to voter once it
    /// has caught up (waiting up to `timeout` for that) (Kafka's AddRaftVoter).
    fn add_voter(&self, node_id: i32, timeout: std::time::Duration) -> VoterChangeFuture {
        let _ = (node_id, timeout);
        Box::pin(async { Err(CoreError::InvalidRequest("no metadata quorum".into())) })
    }

    /// Demotes voter `node_id` to a learner: it keeps receiving the metadata
    /// log, as every broker does, without a vote (Kafka's RemoveRaftVoter).
    fn remove_voter(&self, node_id: i32) -> VoterChangeFuture {
        let _ = node_id;
        Box::pin(async { Err(CoreError::InvalidRequest("no metadata quorum".into())) })
    }

    /// Has the active controller remove broker `node_id` (Kafka's
    /// UnregisterBroker): it leaves every ISR (partitions it leads get another
    /// leader), then the registered brokers, and leaves the metadata quorum if
    /// it is a learner there. A voter is refused: it must be removed as a
    /// voter first. A broker still running registers (and joins) again.
    fn unregister_broker(&self, node_id: i32) -> UnregisterFuture {
        let _ = node_id;
        Box::pin(async { Err(CoreError::InvalidRequest("no metadata quorum".into())) })
    }
}

/// Longest an internal topic's append waits for the in-sync replicas.
const INTERNAL_REPLICATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits until the records up to `offset` of an internal topic's partition are
/// flushed and every in-sync replica has them: what a coordinator waits for
/// before it answers (acks=all for its own writes).
pub async fn durable(partition: &Partition, offset: i64, now_ms: i64) -> Result<(), CoreError> {
    partition.flush_to(offset, now_ms).await?;
    let deadline = tokio::time::Instant::now() + INTERNAL_REPLICATION_TIMEOUT;
    partition.wait_replicated(offset, deadline).await
}

/// The replication factor of an internal topic created now. In a cluster, as in
/// Kafka, its setting: creation waits (the coordinator is not available) until
/// that many brokers are live, so an early request cannot leave the topic on
/// fewer replicas than asked for. A single node has one broker and caps it at 1.
pub fn internal_replication_factor(
    broker: &crate::Broker,
    setting: &str,
) -> Result<i16, CoreError> {
    let wanted = broker.config().long(setting).clamp(1, i16::MAX as i64);
    if !broker.is_clustered() {
        return Ok(1);
    }
    let live = broker.image().live_brokers().count() as i64;
    if live < wanted {
        return Err(CoreError::InvalidReplicationFactor(format!(
            "{setting} is {wanted} but only {live} brokers are live"
        )));
    }
    Ok(wanted as i16)
}
