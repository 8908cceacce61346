//! The classic group protocol as a synchronous state machine, following Apache
//! Kafka's `GroupCoordinator`: the same states, transitions and error codes.
//!
//! ```text
//!            join (first member)               all members joined / rebalance timeout
//!  Empty ───────────────────────► PreparingRebalance ─────────────────────────► CompletingRebalance
//!    ▲   last member gone              ▲   ▲  member joins, leaves, changes metadata        │
//!    └─────────────────────────────────┘   └──────────────────────── Stable ◄──────────────┘
//!                                                                             leader's SyncGroup
//! ```
//!
//! Every call takes `now_ms`; nothing here reads a clock or sleeps. A JoinGroup or
//! SyncGroup that has to wait for the rest of the group gets a
//! [`tokio::sync::oneshot::Receiver`]; the state machine keeps the sender and
//! completes it when the group moves on. [`GroupManager::tick`] drives every
//! deadline: the delayed initial rebalance, the rebalance timeout, session timeouts,
//! pending members and pending SyncGroups.
//!
//! Changes that must survive a restart are emitted as [`GroupRecord`]s (Kafka's
//! `__consumer_offsets` key/value schemas); the owner drains them with
//! [`GroupManager::take_records`] and appends them to the log.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::offsets::OffsetStore;
use super::records::{GroupMetadataValue, MemberMetadataValue, RecordKey};

/// How long a new member may wait in a JoinGroup before it is dropped (Kafka's
/// `NewMemberJoinTimeoutMs`): it has no member id to heartbeat with yet.
pub const NEW_MEMBER_JOIN_TIMEOUT_MS: i64 = 5 * 60 * 1000;
/// Most protocols one member may offer in a JoinGroup.
pub const PROTOCOLS_PER_MEMBER_MAX: usize = 64;
/// Most bytes of protocol metadata one member may send in a JoinGroup.
pub const MEMBER_METADATA_BYTES_MAX: usize = 1 << 20;
/// Most bytes of one member's assignment in a SyncGroup.
pub const MEMBER_ASSIGNMENT_BYTES_MAX: usize = 1 << 20;
/// Most bytes of metadata plus assignments of a whole group (its stored record).
pub const GROUP_BYTES_MAX: usize = 32 << 20;
/// Hard cap on members (and on pending members) of one group, whatever
/// `group.max.size` says.
pub const GROUP_MEMBERS_MAX: usize = 100_000;
/// Most groups one coordinator holds.
pub const GROUPS_MAX: usize = 1_000_000;

/// Why a group call failed; the frontend maps each to its protocol's code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("the coordinator is not available")]
    CoordinatorNotAvailable,
    #[error("this broker is not the coordinator of the group")]
    NotCoordinator,
    #[error("invalid group id")]
    InvalidGroupId,
    #[error("the session timeout is outside group.min/max.session.timeout.ms")]
    InvalidSessionTimeout,
    #[error("the member's protocol type or protocols do not match the group's")]
    InconsistentGroupProtocol,
    #[error("a member id is required: rejoin with the one given")]
    MemberIdRequired,
    #[error("unknown member id")]
    UnknownMemberId,
    #[error("the generation is not the group's current one")]
    IllegalGeneration,
    #[error("the group is rebalancing")]
    RebalanceInProgress,
    #[error("another member with the same group.instance.id replaced this one")]
    FencedInstanceId,
    #[error("the group has reached group.max.size")]
    GroupMaxSizeReached,
    #[error("the group is not empty")]
    NonEmptyGroup,
    #[error("the group does not exist")]
    GroupIdNotFound,
    #[error("the group is subscribed to the topic")]
    GroupSubscribedToTopic,
    #[error("the offset metadata is larger than offset.metadata.max.bytes")]
    OffsetMetadataTooLarge,
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("the member epoch is fenced: abandon every partition and rejoin ({0})")]
    FencedMemberEpoch(String),
    #[error("the member epoch is stale: heartbeat for the current one")]
    StaleMemberEpoch,
    #[error("the server assignor is not supported: {0}")]
    UnsupportedAssignor(String),
    #[error("the instance id is still used by another member: {0}")]
    UnreleasedInstanceId(String),
}

/// The group settings, under the broker config names they come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// `group.initial.rebalance.delay.ms`
    pub initial_rebalance_delay_ms: i64,
    /// `group.min.session.timeout.ms`
    pub min_session_timeout_ms: i64,
    /// `group.max.session.timeout.ms`
    pub max_session_timeout_ms: i64,
    /// `group.max.size`
    pub max_size: usize,
    /// `offset.metadata.max.bytes`
    pub offset_metadata_max_bytes: usize,
    /// `offsets.retention.minutes`, in ms.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`
    pub offsets_retention_check_interval_ms: i64,
    /// `group.consumer.session.timeout.ms` (KIP-848 groups)
    pub consumer_session_timeout_ms: i64,
    /// `group.consumer.heartbeat.interval.ms` (KIP-848 groups)
    pub consumer_heartbeat_interval_ms: i64,
    /// `group.consumer.max.size` (KIP-848 groups)
    pub consumer_max_size: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay_ms: 3000,
            min_session_timeout_ms: 6000,
            max_session_timeout_ms: 1_800_000,
            max_size: i32::MAX as usize,
            offset_metadata_max_bytes: 4096,
            offsets_retention_ms: 10080 * 60 * 1000,
            offsets_retention_check_interval_ms: 600_000,
            consumer_session_timeout_ms: 45_000,
            consumer_heartbeat_interval_ms: 5_000,
            consumer_max_size: i32::MAX as usize,
        }
    }
}

impl GroupConfig {
    fn max_members(&self) -> usize {
        self.max_size.min(GROUP_MEMBERS_MAX)
    }
}

/// The state of a group, named as Kafka names it. `Assigning` and
/// `Reconciling` are states of consumer (KIP-848) groups only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
    Assigning,
    Reconciling,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
            GroupState::Assigning => "Assigning",
            GroupState::Reconciling => "Reconciling",
        }
    }
}

/// Which rebalance protocol a group uses: classic (JoinGroup/SyncGroup) or the
/// consumer protocol of KIP-848 (ConsumerGroupHeartbeat, see `consumer.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupType {
    Classic,
    Consumer,
}

impl GroupType {
    pub fn name(self) -> &'static str {
        match self {
            GroupType::Classic => "classic",
            GroupType::Consumer => "consumer",
        }
    }
}

/// A JoinGroup, in domain terms.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub group_id: String,
    /// Empty: a new member.
    pub member_id: String,
    pub group_instance_id: Option<String>,
    /// KIP-394 (JoinGroup v4+ without an instance id): a new member first gets an
    /// id and MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
    /// KIP-814 (JoinGroup v9+): a static leader that rejoins may skip assigning.
    pub supports_skip_assignment: bool,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub protocol_type: String,
    /// (name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

/// A JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinResponse {
    pub error: Option<GroupError>,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub skip_assignment: bool,
    pub member_id: String,
    /// Filled for the leader only: every member with its metadata for the
    /// selected protocol.
    pub members: Vec<JoinedMember>,
}

impl JoinResponse {
    pub fn error(member_id: impl Into<String>, error: GroupError) -> JoinResponse {
        JoinResponse {
            error: Some(error),
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            skip_assignment: false,
            member_id: member_id.into(),
            members: Vec::new(),
        }
    }
}

/// A SyncGroup, in domain terms.
#[derive(Debug, Clone)]
pub struct SyncRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    /// The leader's assignment: (member id, assignment).
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncResponse {
    pub error: Option<GroupError>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResponse {
    pub fn error(error: GroupError) -> SyncResponse {
        SyncResponse {
            error: Some(error),
            protocol_type: None,
            protocol_name: None,
            assignment: Bytes::new(),
        }
    }
}

/// An answer now, or one that arrives when the group moves on.
#[derive(Debug)]
pub enum Reply<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

/// A record for `__consumer_offsets` (encoded key, value; `None` = tombstone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub group_id: String,
    pub key: Bytes,
    pub value: Option<Bytes>,
}

/// One member, as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSummary {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

/// DescribeGroups of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    pub group_id: String,
    pub state: GroupState,
    pub group_type: GroupType,
    pub protocol_type: String,
    /// Empty unless Stable.
    pub protocol: String,
    pub members: Vec<MemberSummary>,
}

/// ListGroups of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOverview {
    pub group_id: String,
    pub protocol_type: String,
    pub state: GroupState,
    pub group_type: GroupType,
}

#[derive(Debug)]
pub(super) struct Member {
    pub(super) member_id: String,
    pub(super) group_instance_id: Option<String>,
    pub(super) client_id: String,
    pub(super) client_host: String,
    pub(super) rebalance_timeout_ms: i32,
    pub(super) session_timeout_ms: i32,
    pub(super) protocols: Vec<(String, Bytes)>,
    pub(super) assignment: Bytes,
    join_waiter: Option<oneshot::Sender<JoinResponse>>,
    sync_waiter: Option<oneshot::Sender<SyncResponse>>,
    /// Joined in the current rebalance and not yet told its id.
    is_new: bool,
    /// The member is dropped when `now >= heartbeat_deadline_ms` (see `alive`).
    heartbeat_deadline_ms: i64,
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn matches(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }

    fn awaiting_join(&self) -> bool {
        self.join_waiter.is_some()
    }

    /// Kafka's `hasSatisfiedHeartbeat`: members waiting in a JoinGroup or SyncGroup
    /// need no heartbeat, except new ones, which have their own join deadline.
    fn alive(&self, now_ms: i64) -> bool {
        if self.is_new {
            now_ms < self.heartbeat_deadline_ms
        } else if self.join_waiter.is_some() || self.sync_waiter.is_some() {
            true
        } else {
            now_ms < self.heartbeat_deadline_ms
        }
    }

    fn bytes(&self) -> usize {
        self.protocols
            .iter()
            .map(|(n, m)| n.len() + m.len())
            .sum::<usize>()
            + self.assignment.len()
    }

    fn reply_join(&mut self, response: JoinResponse) {
        if let Some(tx) = self.join_waiter.take() {
            let _ = tx.send(response);
        }
    }

    fn reply_sync(&mut self, response: SyncResponse) -> bool {
        match self.sync_waiter.take() {
            Some(tx) => {
                let _ = tx.send(response);
                true
            }
            None => false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct JoinTimer {
    deadline_ms: i64,
    /// Kafka's InitialDelayedJoin: (delay, remaining rebalance timeout). Completes
    /// only at its deadline, and extends itself while new members keep arriving.
    initial: Option<(i64, i64)>,
}

/// One classic group: membership, generation and committed offsets.
#[derive(Debug)]
pub struct ClassicGroup {
    pub(super) group_id: String,
    pub(super) group_type: GroupType,
    pub(super) state: GroupState,
    pub(super) state_timestamp_ms: i64,
    pub(super) generation_id: i32,
    pub(super) protocol_type: Option<String>,
    pub(super) protocol_name: Option<String>,
    pub(super) leader_id: Option<String>,
    pub(super) members: BTreeMap<String, Member>,
    /// group.instance.id → member id.
    pub(super) static_members: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED → when they lapse.
    pub(super) pending_members: HashMap<String, i64>,
    /// Members that have not sent SyncGroup since the join completed.
    pending_sync: HashSet<String>,
    sync_deadline_ms: Option<i64>,
    join_timer: Option<JoinTimer>,
    new_member_added: bool,
    pub(super) offsets: OffsetStore,
    /// Membership of a consumer (KIP-848) group; `None` for a classic group.
    pub(super) consumer: Option<Box<super::consumer::ConsumerGroup>>,
}

impl ClassicGroup {
    /// The member checks of OffsetCommit and TxnOffsetCommit: a static member must
    /// hold its instance id, a dynamic one must be known, and the generation must
    /// be the group's.
    pub(super) fn check_committer(
        &self,
        member_id: &str,
        group_instance_id: Option<&String>,
        generation_id: i32,
    ) -> Result<(), GroupError> {
        if let Some(instance) = group_instance_id {
            match self.static_members.get(instance) {
                Some(current) if current != member_id => return Err(GroupError::FencedInstanceId),
                Some(_) => {}
                None => return Err(GroupError::UnknownMemberId),
            }
        } else if !self.members.contains_key(member_id) {
            return Err(GroupError::UnknownMemberId);
        }
        if generation_id != self.generation_id {
            return Err(GroupError::IllegalGeneration);
        }
        Ok(())
    }

    pub(super) fn new(group_id: String, now_ms: i64) -> ClassicGroup {
        ClassicGroup {
            group_id,
            group_type: GroupType::Classic,
            state: GroupState::Empty,
            state_timestamp_ms: now_ms,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader_id: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending_members: HashMap::new(),
            pending_sync: HashSet::new(),
            sync_deadline_ms: None,
            join_timer: None,
            new_member_added: false,
            offsets: OffsetStore::default(),
            consumer: None,
        }
    }

    pub fn state(&self) -> GroupState {
        self.state
    }

    pub fn generation_id(&self) -> i32 {
        self.generation_id
    }

    pub fn leader_id(&self) -> Option<&str> {
        self.leader_id.as_deref()
    }

    pub fn member_ids(&self) -> Vec<String> {
        self.members.keys().cloned().collect()
    }

    pub fn protocol_name(&self) -> Option<&str> {
        self.protocol_name.as_deref()
    }

    fn transition(&mut self, state: GroupState, now_ms: i64) {
        self.state = state;
        self.state_timestamp_ms = now_ms;
    }

    fn is_leader(&self, member_id: &str) -> bool {
        self.leader_id.as_deref() == Some(member_id)
    }

    fn rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    fn awaiting_join_count(&self) -> usize {
        self.members.values().filter(|m| m.awaiting_join()).count()
    }

    fn all_members_joined(&self) -> bool {
        self.members.len() == self.awaiting_join_count() && self.pending_members.is_empty()
    }

    fn can_rebalance(&self) -> bool {
        matches!(
            self.state,
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty
        )
    }

    /// Protocols every member supports, in the first member's order.
    fn candidate_protocols(&self) -> Vec<String> {
        let mut members = self.members.values();
        let Some(first) = members.next() else {
            return Vec::new();
        };
        first
            .protocols
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(p, _)| p == n))
            })
            .collect()
    }

    /// Kafka's vote: each member votes for its most preferred candidate.
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: Vec<(String, usize)> = candidates.iter().map(|c| (c.clone(), 0)).collect();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(n)) {
                if let Some(v) = votes.iter_mut().find(|(c, _)| c == name) {
                    v.1 += 1;
                }
            }
        }
        let mut best: Option<(String, usize)> = None;
        for (c, n) in votes {
            if best.as_ref().is_none_or(|(_, b)| n > *b) {
                best = Some((c, n));
            }
        }
        best.map(|(c, _)| c)
    }

    fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            !protocol_type.is_empty() && !protocols.is_empty()
        } else {
            self.protocol_type.as_deref() == Some(protocol_type)
                && protocols.iter().any(|(p, _)| {
                    self.members
                        .values()
                        .all(|m| m.protocols.iter().any(|(n, _)| n == p))
                })
        }
    }

    /// Kafka's `validateCurrentMember`: a static member must be the current holder
    /// of its instance id; any member must exist.
    fn validate_member(&self, member_id: &str, instance_id: Option<&str>) -> Option<GroupError> {
        if let Some(instance) = instance_id {
            return match self.static_members.get(instance) {
                Some(current) if current != member_id => Some(GroupError::FencedInstanceId),
                Some(_) => None,
                None => Some(GroupError::UnknownMemberId),
            };
        }
        if self.members.contains_key(member_id) {
            None
        } else {
            Some(GroupError::UnknownMemberId)
        }
    }

    fn joined_members(&self) -> Vec<JoinedMember> {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        self.members
            .values()
            .map(|m| JoinedMember {
                member_id: m.member_id.clone(),
                group_instance_id: m.group_instance_id.clone(),
                metadata: m.metadata_for(&protocol),
            })
            .collect()
    }

    fn join_response(&self, member_id: &str, with_members: bool) -> JoinResponse {
        JoinResponse {
            error: None,
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader_id.clone().unwrap_or_default(),
            skip_assignment: false,
            member_id: member_id.to_string(),
            members: if with_members {
                self.joined_members()
            } else {
                Vec::new()
            },
        }
    }

    fn sync_response(&self, assignment: Bytes) -> SyncResponse {
        SyncResponse {
            error: None,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment,
        }
    }

    /// The group's record: members with their metadata for the selected protocol.
    fn metadata_record(&self) -> GroupRecord {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let value = GroupMetadataValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation_id,
            protocol: self.protocol_name.clone(),
            leader: self.leader_id.clone(),
            current_state_timestamp_ms: self.state_timestamp_ms,
            members: self
                .members
                .values()
                .map(|m| MemberMetadataValue {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m.metadata_for(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        };
        GroupRecord {
            group_id: self.group_id.clone(),
            key: RecordKey::GroupMetadata {
                group: self.group_id.clone(),
            }
            .encode(),
            value: Some(value.encode()),
        }
    }

    /// Tombstones for the group's own records (not its offsets).
    pub(super) fn tombstone_records(&self) -> Vec<GroupRecord> {
        let mut records = vec![self.tombstone_record()];
        if self.consumer.is_some() {
            records.push(super::consumer::consumer_record(&self.group_id, None));
        }
        records
    }

    pub(super) fn tombstone_record(&self) -> GroupRecord {
        GroupRecord {
            group_id: self.group_id.clone(),
            key: RecordKey::GroupMetadata {
                group: self.group_id.clone(),
            }
            .encode(),
            value: None,
        }
    }

    pub(super) fn summary(&self) -> GroupSummary {
        if let Some(consumer) = &self.consumer {
            // DescribeGroups of a consumer group: its members, without the classic
            // metadata and assignment bytes (ConsumerGroupDescribe has those).
            return GroupSummary {
                group_id: self.group_id.clone(),
                state: self.state,
                group_type: self.group_type,
                protocol_type: "consumer".to_string(),
                protocol: consumer.assignor_name.clone(),
                members: consumer
                    .members
                    .values()
                    .map(|m| MemberSummary {
                        member_id: m.member_id.clone(),
                        group_instance_id: m.instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        metadata: Bytes::new(),
                        assignment: Bytes::new(),
                    })
                    .collect(),
            };
        }
        let stable = self.state == GroupState::Stable;
        let protocol = self.protocol_name.clone().unwrap_or_default();
        GroupSummary {
            group_id: self.group_id.clone(),
            state: self.state,
            group_type: self.group_type,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol: if stable {
                protocol.clone()
            } else {
                String::new()
            },
            members: self
                .members
                .values()
                .map(|m| MemberSummary {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: if stable {
                        m.metadata_for(&protocol)
                    } else {
                        Bytes::new()
                    },
                    assignment: if stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
        }
    }

    pub(super) fn overview(&self) -> GroupOverview {
        GroupOverview {
            group_id: self.group_id.clone(),
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            state: self.state,
            group_type: self.group_type,
        }
    }

    /// Metadata of every member for the selected protocol (for subscriptions).
    pub(super) fn selected_metadata(&self) -> Vec<Bytes> {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        self.members
            .values()
            .map(|m| m.metadata_for(&protocol))
            .collect()
    }

    pub(super) fn touch_member(&mut self, member_id: &str, now_ms: i64) {
        if let Some(m) = self.members.get_mut(member_id) {
            m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
        }
    }
}

/// Every group of this coordinator.
#[derive(Debug)]
pub struct GroupManager {
    pub(super) config: GroupConfig,
    pub(super) groups: HashMap<String, ClassicGroup>,
    records: Vec<GroupRecord>,
    /// Offsets of open transactions (see `txn_offsets`).
    pub(super) pending_txn_offsets: super::txn_offsets::PendingTxnOffsets,
}

impl GroupManager {
    pub fn new(config: GroupConfig) -> GroupManager {
        GroupManager {
            config,
            groups: HashMap::new(),
            records: Vec::new(),
            pending_txn_offsets: Default::default(),
        }
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    pub fn set_config(&mut self, config: GroupConfig) {
        self.config = config;
    }

    pub fn group(&self, group_id: &str) -> Option<&ClassicGroup> {
        self.groups.get(group_id)
    }

    /// The records to append since the last call, in order.
    pub fn take_records(&mut self) -> Vec<GroupRecord> {
        std::mem::take(&mut self.records)
    }

    pub(super) fn emit(&mut self, record: GroupRecord) {
        self.records.push(record);
    }

    pub(super) fn get_or_create(
        &mut self,
        group_id: &str,
        now_ms: i64,
    ) -> Result<&mut ClassicGroup, GroupError> {
        if !self.groups.contains_key(group_id) && self.groups.len() >= GROUPS_MAX {
            return Err(GroupError::InvalidRequest(format!(
                "the coordinator holds {GROUPS_MAX} groups already"
            )));
        }
        Ok(self
            .groups
            .entry(group_id.to_string())
            .or_insert_with(|| ClassicGroup::new(group_id.to_string(), now_ms)))
    }

    // ---- JoinGroup -------------------------------------------------------------

    pub fn join(&mut self, req: JoinRequest, now_ms: i64) -> Reply<JoinResponse> {
        let member_id = req.member_id.clone();
        if req.group_id.is_empty() {
            return Reply::Now(JoinResponse::error(member_id, GroupError::InvalidGroupId));
        }
        let session = i64::from(req.session_timeout_ms);
        if session < self.config.min_session_timeout_ms
            || session > self.config.max_session_timeout_ms
        {
            return Reply::Now(JoinResponse::error(
                member_id,
                GroupError::InvalidSessionTimeout,
            ));
        }
        if let Some(e) = check_protocols(&req.protocols) {
            tracing::info!(group = %req.group_id, member = %member_id, error = %e, "JoinGroup refused");
            return Reply::Now(JoinResponse::error(member_id, e));
        }
        let is_unknown = member_id.is_empty();
        if !self.groups.contains_key(&req.group_id) && !is_unknown {
            return Reply::Now(JoinResponse::error(member_id, GroupError::UnknownMemberId));
        }
        let config = self.config.clone();
        let group_id = req.group_id.clone();
        let group = match self.get_or_create(&group_id, now_ms) {
            Ok(g) => g,
            Err(e) => return Reply::Now(JoinResponse::error(member_id, e)),
        };
        if group
            .consumer
            .as_ref()
            .is_some_and(|c| c.members.is_empty())
        {
            // Kafka's online downgrade: an empty consumer group becomes classic again.
            tracing::info!(group = %group_id, "the group now uses the classic protocol");
            group.consumer = None;
            group.group_type = GroupType::Classic;
            group.state = GroupState::Empty;
            let tombstone = super::consumer::consumer_record(&group_id, None);
            self.emit(tombstone);
        }
        let Some(group) = self.groups.get_mut(&group_id) else {
            return Reply::Now(JoinResponse::error(member_id, GroupError::UnknownMemberId));
        };
        if group.group_type != GroupType::Classic {
            return Reply::Now(JoinResponse::error(
                member_id,
                GroupError::InconsistentGroupProtocol,
            ));
        }
        let reply = if !accept_joining_member(group, &member_id, &config) {
            if group.members.contains_key(&member_id) {
                self.remove_member(&group_id, &member_id, now_ms, "group is over capacity");
            }
            Reply::Now(JoinResponse::error("", GroupError::GroupMaxSizeReached))
        } else if is_unknown {
            self.join_unknown_member(&group_id, req, now_ms)
        } else {
            self.join_known_member(&group_id, req, now_ms)
        };
        self.check_join(&group_id, now_ms);
        self.drop_if_unused(&group_id);
        reply
    }

    fn join_unknown_member(
        &mut self,
        group_id: &str,
        req: JoinRequest,
        now_ms: i64,
    ) -> Reply<JoinResponse> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return Reply::Now(JoinResponse::error("", GroupError::UnknownMemberId));
        };
        if !group.supports_protocols(&req.protocol_type, &req.protocols) {
            return Reply::Now(JoinResponse::error(
                "",
                GroupError::InconsistentGroupProtocol,
            ));
        }
        let prefix = req.group_instance_id.as_deref().unwrap_or(&req.client_id);
        let new_member_id = format!("{prefix}-{}", uuid::Uuid::new_v4());
        let known_static = req
            .group_instance_id
            .as_ref()
            .and_then(|i| group.static_members.get(i))
            .cloned();
        if let Some(old_member_id) = known_static {
            return self.rejoin_static_member(
                group_id,
                &old_member_id,
                &new_member_id,
                req,
                now_ms,
            );
        }
        if req.require_known_member_id {
            if group.pending_members.len() >= GROUP_MEMBERS_MAX {
                return Reply::Now(JoinResponse::error("", GroupError::GroupMaxSizeReached));
            }
            tracing::debug!(group = %group_id, member = %new_member_id, "new member must rejoin with its id");
            group.pending_members.insert(
                new_member_id.clone(),
                now_ms + i64::from(req.session_timeout_ms),
            );
            return Reply::Now(JoinResponse::error(
                new_member_id,
                GroupError::MemberIdRequired,
            ));
        }
        self.add_member_and_rebalance(group_id, new_member_id, req, now_ms)
    }

    fn join_known_member(
        &mut self,
        group_id: &str,
        req: JoinRequest,
        now_ms: i64,
    ) -> Reply<JoinResponse> {
        let member_id = req.member_id.clone();
        let Some(group) = self.groups.get_mut(group_id) else {
            return Reply::Now(JoinResponse::error(member_id, GroupError::UnknownMemberId));
        };
        if !group.supports_protocols(&req.protocol_type, &req.protocols) {
            return Reply::Now(JoinResponse::error(
                member_id,
                GroupError::InconsistentGroupProtocol,
            ));
        }
        if group.pending_members.contains_key(&member_id) {
            if req.group_instance_id.is_some() {
                // Pending members are dynamic by construction.
                return Reply::Now(JoinResponse::error(member_id, GroupError::UnknownMemberId));
            }
            return self.add_member_and_rebalance(group_id, member_id, req, now_ms);
        }
        if let Some(e) = group.validate_member(&member_id, req.group_instance_id.as_deref()) {
            return Reply::Now(JoinResponse::error(member_id, e));
        }
        let matches = group
            .members
            .get(&member_id)
            .is_some_and(|m| m.matches(&req.protocols));
        match group.state {
            GroupState::PreparingRebalance => {
                self.update_member_and_rebalance(group_id, req, now_ms)
            }
            GroupState::CompletingRebalance if matches => {
                // It probably lost the JoinGroup response: send it again.
                let leader = group.is_leader(&member_id);
                Reply::Now(group.join_response(&member_id, leader))
            }
            GroupState::CompletingRebalance => {
                self.update_member_and_rebalance(group_id, req, now_ms)
            }
            GroupState::Stable if group.is_leader(&member_id) || !matches => {
                // The leader may rejoin to force a rebalance (e.g. new topic metadata).
                self.update_member_and_rebalance(group_id, req, now_ms)
            }
            GroupState::Stable => Reply::Now(group.join_response(&member_id, false)),
            GroupState::Empty
            | GroupState::Dead
            | GroupState::Assigning
            | GroupState::Reconciling => {
                Reply::Now(JoinResponse::error(member_id, GroupError::UnknownMemberId))
            }
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        group_id: &str,
        member_id: String,
        req: JoinRequest,
        now_ms: i64,
    ) -> Reply<JoinResponse> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return Reply::Now(JoinResponse::error(member_id, GroupError::UnknownMemberId));
        };
        let group_bytes: usize = group.members.values().map(Member::bytes).sum();
        let member_bytes: usize = req.protocols.iter().map(|(n, m)| n.len() + m.len()).sum();
        if group_bytes + member_bytes > GROUP_BYTES_MAX {
            return Reply::Now(JoinResponse::error(
                "",
                GroupError::InvalidRequest(format!(
                    "the group's metadata would exceed {GROUP_BYTES_MAX} bytes"
                )),
            ));
        }
        let (tx, rx) = oneshot::channel();
        let member = Member {
            member_id: member_id.clone(),
            group_instance_id: req.group_instance_id.clone(),
            client_id: req.client_id,
            client_host: req.client_host,
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            session_timeout_ms: req.session_timeout_ms,
            protocols: req.protocols,
            assignment: Bytes::new(),
            join_waiter: Some(tx),
            sync_waiter: None,
            is_new: true,
            heartbeat_deadline_ms: now_ms + NEW_MEMBER_JOIN_TIMEOUT_MS,
        };
        if group.state == GroupState::PreparingRebalance && group.generation_id == 0 {
            group.new_member_added = true;
        }
        if group.members.is_empty() {
            group.protocol_type = Some(req.protocol_type);
        }
        if group.leader_id.is_none() {
            group.leader_id = Some(member_id.clone());
        }
        match &member.group_instance_id {
            Some(instance) => {
                group
                    .static_members
                    .insert(instance.clone(), member_id.clone());
            }
            None => {
                group.pending_members.remove(&member_id);
            }
        }
        tracing::info!(group = %group_id, member = %member_id, instance = ?member.group_instance_id, "member joins");
        group.members.insert(member_id.clone(), member);
        self.maybe_prepare_rebalance(group_id, now_ms, "a new member joins");
        Reply::Later(rx)
    }

    fn update_member_and_rebalance(
        &mut self,
        group_id: &str,
        req: JoinRequest,
        now_ms: i64,
    ) -> Reply<JoinResponse> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return Reply::Now(JoinResponse::error(
                req.member_id,
                GroupError::UnknownMemberId,
            ));
        };
        let Some(member) = group.members.get_mut(&req.member_id) else {
            return Reply::Now(JoinResponse::error(
                req.member_id,
                GroupError::UnknownMemberId,
            ));
        };
        let (tx, rx) = oneshot::channel();
        member.protocols = req.protocols;
        member.rebalance_timeout_ms = req.rebalance_timeout_ms;
        member.session_timeout_ms = req.session_timeout_ms;
        // A JoinGroup still waiting from before is superseded by this one.
        member.join_waiter = Some(tx);
        self.maybe_prepare_rebalance(group_id, now_ms, "a member rejoins");
        Reply::Later(rx)
    }

    /// KIP-345: a static member rejoins under a new member id. The old id is fenced;
    /// a Stable group whose selected protocol does not change does not rebalance.
    fn rejoin_static_member(
        &mut self,
        group_id: &str,
        old_member_id: &str,
        new_member_id: &str,
        req: JoinRequest,
        now_ms: i64,
    ) -> Reply<JoinResponse> {
        let Some(group) = self.groups.get_mut(group_id) else {
            return Reply::Now(JoinResponse::error("", GroupError::UnknownMemberId));
        };
        let old_leader = group.leader_id.clone().unwrap_or_default();
        let Some(mut member) = group.members.remove(old_member_id) else {
            return Reply::Now(JoinResponse::error("", GroupError::UnknownMemberId));
        };
        tracing::info!(group = %group_id, instance = ?req.group_instance_id, old = %old_member_id, new = %new_member_id, "static member rejoins; the old member id is fenced");
        member.reply_join(JoinResponse::error(
            old_member_id,
            GroupError::FencedInstanceId,
        ));
        member.reply_sync(SyncResponse::error(GroupError::FencedInstanceId));
        member.member_id = new_member_id.to_string();
        member.protocols = req.protocols;
        member.rebalance_timeout_ms = req.rebalance_timeout_ms;
        member.session_timeout_ms = req.session_timeout_ms;
        member.client_id = req.client_id;
        member.client_host = req.client_host;
        member.heartbeat_deadline_ms = now_ms + i64::from(req.session_timeout_ms);
        if let Some(instance) = &req.group_instance_id {
            group
                .static_members
                .insert(instance.clone(), new_member_id.to_string());
        }
        if group.is_leader(old_member_id) {
            group.leader_id = Some(new_member_id.to_string());
        }
        if group.pending_sync.remove(old_member_id) {
            group.pending_sync.insert(new_member_id.to_string());
        }
        group.members.insert(new_member_id.to_string(), member);
        match group.state {
            GroupState::Stable if group.select_protocol() == group.protocol_name => {
                let record = group.metadata_record();
                let is_leader = group.is_leader(new_member_id);
                let skip = is_leader && req.supports_skip_assignment;
                let mut response = group.join_response(new_member_id, skip);
                response.skip_assignment = skip;
                // Without KIP-814 the old leader id is returned, so a rejoining leader
                // does not compute an assignment a Stable group would never send.
                if !req.supports_skip_assignment {
                    response.leader = old_leader;
                }
                self.emit(record);
                Reply::Now(response)
            }
            GroupState::Empty
            | GroupState::Dead
            | GroupState::Assigning
            | GroupState::Reconciling => Reply::Now(JoinResponse::error(
                new_member_id,
                GroupError::UnknownMemberId,
            )),
            _ => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = group.members.get_mut(new_member_id) {
                    m.join_waiter = Some(tx);
                }
                if group.state != GroupState::PreparingRebalance {
                    self.prepare_rebalance(group_id, now_ms, "a static member rejoins");
                }
                Reply::Later(rx)
            }
        }
    }

    fn maybe_prepare_rebalance(&mut self, group_id: &str, now_ms: i64, reason: &str) {
        if self
            .groups
            .get(group_id)
            .is_some_and(ClassicGroup::can_rebalance)
        {
            self.prepare_rebalance(group_id, now_ms, reason);
        }
    }

    fn prepare_rebalance(&mut self, group_id: &str, now_ms: i64, reason: &str) {
        let initial_delay = self.config.initial_rebalance_delay_ms;
        let Some(group) = self.groups.get_mut(group_id) else {
            return;
        };
        if group.state == GroupState::CompletingRebalance {
            reset_and_propagate_error(group, GroupError::RebalanceInProgress, now_ms);
        }
        let rebalance_timeout = group.rebalance_timeout_ms();
        group.join_timer = Some(if group.state == GroupState::Empty {
            JoinTimer {
                deadline_ms: now_ms + initial_delay,
                initial: Some((initial_delay, (rebalance_timeout - initial_delay).max(0))),
            }
        } else {
            JoinTimer {
                deadline_ms: now_ms + rebalance_timeout,
                initial: None,
            }
        });
        group.pending_sync.clear();
        group.sync_deadline_ms = None;
        tracing::info!(group = %group_id, generation = group.generation_id, from = group.state.name(), reason, "preparing to rebalance");
        group.transition(GroupState::PreparingRebalance, now_ms);
    }

    /// Completes the join phase if it can complete now (Kafka's tryCompleteJoin).
    fn check_join(&mut self, group_id: &str, now_ms: i64) {
        let ready = self.groups.get(group_id).is_some_and(|g| {
            g.state == GroupState::PreparingRebalance
                && match g.join_timer {
                    Some(t) if t.initial.is_some() => false,
                    _ => g.all_members_joined(),
                }
        });
        if ready {
            self.complete_join(group_id, now_ms);
        }
    }

    /// Kafka's `onCompleteJoin`: drops dynamic members that did not rejoin, starts
    /// the next generation and answers every waiting JoinGroup.
    fn complete_join(&mut self, group_id: &str, now_ms: i64) {
        let Some(group) = self.groups.get_mut(group_id) else {
            return;
        };
        let gone: Vec<String> = group
            .members
            .values()
            .filter(|m| !m.awaiting_join() && m.group_instance_id.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for id in gone {
            tracing::info!(group = %group_id, member = %id, "member did not rejoin within the rebalance timeout; removing it");
            if let Some(mut m) = group.members.remove(&id) {
                m.reply_sync(SyncResponse::error(GroupError::UnknownMemberId));
            }
            if group.is_leader(&id) {
                group.leader_id = group.members.keys().next().cloned();
            }
        }
        // A leader that did not rejoin hands over to one that did.
        let leader_joined = group
            .leader_id
            .as_ref()
            .and_then(|l| group.members.get(l))
            .is_some_and(Member::awaiting_join);
        if !leader_joined {
            group.leader_id = group
                .members
                .values()
                .find(|m| m.awaiting_join())
                .map(|m| m.member_id.clone());
        }
        if group.leader_id.is_none() && !group.members.is_empty() {
            // Only static members that have not rejoined: wait another round.
            tracing::warn!(group = %group_id, "no member rejoined; waiting another rebalance timeout");
            group.join_timer = Some(JoinTimer {
                deadline_ms: now_ms + group.rebalance_timeout_ms(),
                initial: None,
            });
            return;
        }
        group.join_timer = None;
        group.new_member_added = false;
        group.generation_id += 1;
        group.pending_sync.clear();
        if group.members.is_empty() {
            group.protocol_name = None;
            group.transition(GroupState::Empty, now_ms);
            tracing::info!(group = %group_id, generation = group.generation_id, "group is now empty");
            let record = group.metadata_record();
            self.emit(record);
            return;
        }
        group.protocol_name = group.select_protocol();
        group.transition(GroupState::CompletingRebalance, now_ms);
        tracing::info!(group = %group_id, generation = group.generation_id, protocol = ?group.protocol_name, members = group.members.len(), "rebalance: join phase complete");
        let leader = group.leader_id.clone().unwrap_or_default();
        let leader_response = group.join_response(&leader, true);
        let response = group.join_response("", false);
        let ids: Vec<String> = group.members.keys().cloned().collect();
        for id in ids {
            let Some(m) = group.members.get_mut(&id) else {
                continue;
            };
            let mut r = if id == leader {
                leader_response.clone()
            } else {
                response.clone()
            };
            r.member_id = id.clone();
            m.reply_join(r);
            m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
            m.is_new = false;
            group.pending_sync.insert(id);
        }
        group.sync_deadline_ms = Some(now_ms + group.rebalance_timeout_ms());
    }

    /// Kafka's `removeMemberAndUpdateGroup`.
    pub(super) fn remove_member(
        &mut self,
        group_id: &str,
        member_id: &str,
        now_ms: i64,
        reason: &str,
    ) {
        let Some(group) = self.groups.get_mut(group_id) else {
            return;
        };
        let Some(mut member) = group.members.remove(member_id) else {
            return;
        };
        tracing::info!(group = %group_id, member = %member_id, reason, "removing member");
        member.reply_join(JoinResponse::error("", GroupError::UnknownMemberId));
        member.reply_sync(SyncResponse::error(GroupError::UnknownMemberId));
        if let Some(instance) = &member.group_instance_id {
            if group.static_members.get(instance).map(String::as_str) == Some(member_id) {
                group.static_members.remove(instance);
            }
        }
        group.pending_sync.remove(member_id);
        if group.is_leader(member_id) {
            group.leader_id = group.members.keys().next().cloned();
        }
        match group.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.maybe_prepare_rebalance(group_id, now_ms, reason);
                self.check_join(group_id, now_ms);
            }
            GroupState::PreparingRebalance => self.check_join(group_id, now_ms),
            GroupState::Empty
            | GroupState::Dead
            | GroupState::Assigning
            | GroupState::Reconciling => {}
        }
    }

    /// Removes a group that holds nothing: no members, no offsets, never stored.
    fn drop_if_unused(&mut self, group_id: &str) {
        let unused = self.groups.get(group_id).is_some_and(|g| {
            g.state == GroupState::Empty
                && g.generation_id == 0
                && g.members.is_empty()
                && g.pending_members.is_empty()
                && g.offsets.is_empty()
        });
        if unused {
            self.groups.remove(group_id);
        }
    }

    // ---- SyncGroup -------------------------------------------------------------

    pub fn sync(&mut self, req: SyncRequest, now_ms: i64) -> Reply<SyncResponse> {
        if req.group_id.is_empty() {
            return Reply::Now(SyncResponse::error(GroupError::InvalidGroupId));
        }
        let Some(group) = self.groups.get_mut(&req.group_id) else {
            return Reply::Now(SyncResponse::error(GroupError::UnknownMemberId));
        };
        if let Some(e) = group.validate_member(&req.member_id, req.group_instance_id.as_deref()) {
            return Reply::Now(SyncResponse::error(e));
        }
        if req.generation_id != group.generation_id {
            return Reply::Now(SyncResponse::error(GroupError::IllegalGeneration));
        }
        if req
            .protocol_type
            .as_ref()
            .is_some_and(|p| group.protocol_type.as_ref() != Some(p))
            || req
                .protocol_name
                .as_ref()
                .is_some_and(|p| group.protocol_name.as_ref() != Some(p))
        {
            return Reply::Now(SyncResponse::error(GroupError::InconsistentGroupProtocol));
        }
        match group.state {
            GroupState::Empty
            | GroupState::Dead
            | GroupState::Assigning
            | GroupState::Reconciling => {
                Reply::Now(SyncResponse::error(GroupError::UnknownMemberId))
            }
            GroupState::PreparingRebalance => {
                Reply::Now(SyncResponse::error(GroupError::RebalanceInProgress))
            }
            GroupState::Stable => {
                group.pending_sync.remove(&req.member_id);
                group.touch_member(&req.member_id, now_ms);
                let assignment = group
                    .members
                    .get(&req.member_id)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default();
                Reply::Now(group.sync_response(assignment))
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = group.members.get_mut(&req.member_id) {
                    m.sync_waiter = Some(tx);
                }
                group.pending_sync.remove(&req.member_id);
                if group.is_leader(&req.member_id) {
                    self.complete_sync(&req.group_id, req.assignments, now_ms);
                }
                Reply::Later(rx)
            }
        }
    }

    /// The leader's assignment arrived: store the group, answer every member.
    fn complete_sync(&mut self, group_id: &str, assignments: Vec<(String, Bytes)>, now_ms: i64) {
        let Some(group) = self.groups.get_mut(group_id) else {
            return;
        };
        let mut by_member: HashMap<String, Bytes> = HashMap::new();
        let mut total = 0usize;
        let mut too_large = None;
        for (member_id, assignment) in assignments {
            if !group.members.contains_key(&member_id) {
                continue;
            }
            total += assignment.len();
            if assignment.len() > MEMBER_ASSIGNMENT_BYTES_MAX {
                too_large = Some(format!(
                    "the assignment of {member_id} is {} bytes, more than {MEMBER_ASSIGNMENT_BYTES_MAX}",
                    assignment.len()
                ));
            }
            by_member.insert(member_id, assignment);
        }
        let metadata: usize = group.members.values().map(Member::bytes).sum();
        if too_large.is_none() && total + metadata > GROUP_BYTES_MAX {
            too_large = Some(format!(
                "the group's assignment exceeds {GROUP_BYTES_MAX} bytes"
            ));
        }
        if let Some(why) = too_large {
            tracing::warn!(group = %group_id, error = %why, "refusing the leader's assignment");
            reset_and_propagate_error(group, GroupError::InvalidRequest(why), now_ms);
            self.maybe_prepare_rebalance(group_id, now_ms, "the leader's assignment was refused");
            return;
        }
        for m in group.members.values_mut() {
            m.assignment = by_member.remove(&m.member_id).unwrap_or_default();
        }
        group.transition(GroupState::Stable, now_ms);
        tracing::info!(group = %group_id, generation = group.generation_id, "group is stable");
        let record = group.metadata_record();
        let (pt, pn) = (group.protocol_type.clone(), group.protocol_name.clone());
        for m in group.members.values_mut() {
            let response = SyncResponse {
                error: None,
                protocol_type: pt.clone(),
                protocol_name: pn.clone(),
                assignment: m.assignment.clone(),
            };
            if m.reply_sync(response) {
                m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
            }
        }
        self.emit(record);
    }

    // ---- Heartbeat and LeaveGroup -----------------------------------------------

    pub fn heartbeat(
        &mut self,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
        now_ms: i64,
    ) -> Result<(), GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(GroupError::UnknownMemberId)?;
        if let Some(e) = group.validate_member(member_id, group_instance_id) {
            return Err(e);
        }
        if generation_id != group.generation_id {
            return Err(GroupError::IllegalGeneration);
        }
        match group.state {
            GroupState::Empty
            | GroupState::Dead
            | GroupState::Assigning
            | GroupState::Reconciling => Err(GroupError::UnknownMemberId),
            GroupState::CompletingRebalance | GroupState::Stable => {
                group.touch_member(member_id, now_ms);
                Ok(())
            }
            GroupState::PreparingRebalance => {
                group.touch_member(member_id, now_ms);
                Err(GroupError::RebalanceInProgress)
            }
        }
    }

    /// LeaveGroup of several members (v3+; older versions send one). The outer
    /// error is for the whole request, the inner ones per member.
    pub fn leave(
        &mut self,
        group_id: &str,
        members: &[(String, Option<String>)],
        now_ms: i64,
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        if !self.groups.contains_key(group_id) {
            return Ok(members
                .iter()
                .map(|_| Err(GroupError::UnknownMemberId))
                .collect());
        }
        let mut results = Vec::with_capacity(members.len());
        for (member_id, instance_id) in members {
            let Some(group) = self.groups.get_mut(group_id) else {
                results.push(Err(GroupError::UnknownMemberId));
                continue;
            };
            if member_id.is_empty() {
                // Administrative removal by group.instance.id.
                match instance_id
                    .as_ref()
                    .and_then(|i| group.static_members.get(i))
                    .cloned()
                {
                    Some(current) => {
                        self.remove_member(group_id, &current, now_ms, "removed by LeaveGroup");
                        results.push(Ok(()));
                    }
                    None => results.push(Err(GroupError::UnknownMemberId)),
                }
            } else if group.pending_members.remove(member_id).is_some() {
                self.check_join(group_id, now_ms);
                results.push(Ok(()));
            } else if let Some(e) = group.validate_member(member_id, instance_id.as_deref()) {
                results.push(Err(e));
            } else {
                self.remove_member(group_id, member_id, now_ms, "the member left");
                results.push(Ok(()));
            }
        }
        Ok(results)
    }

    // ---- DescribeGroups, ListGroups, DeleteGroups ----------------------------------

    /// `None`: no such group (Kafka describes it as Dead).
    pub fn describe(&self, group_id: &str) -> Option<GroupSummary> {
        self.groups.get(group_id).map(ClassicGroup::summary)
    }

    pub fn list(&self) -> Vec<GroupOverview> {
        let mut groups: Vec<GroupOverview> =
            self.groups.values().map(ClassicGroup::overview).collect();
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        groups
    }

    pub fn delete_groups(&mut self, group_ids: &[String]) -> Vec<Result<(), GroupError>> {
        group_ids
            .iter()
            .map(|id| {
                let group = self.groups.get(id).ok_or(GroupError::GroupIdNotFound)?;
                match group.state {
                    GroupState::Dead => Err(GroupError::GroupIdNotFound),
                    GroupState::Empty => {
                        let mut records = group.offsets.tombstones(id);
                        records.extend(group.tombstone_records());
                        for r in records {
                            self.emit(r);
                        }
                        self.groups.remove(id);
                        tracing::info!(group = %id, "group deleted");
                        Ok(())
                    }
                    _ => Err(GroupError::NonEmptyGroup),
                }
            })
            .collect()
    }

    // ---- timeouts ------------------------------------------------------------------

    /// Drives every deadline that has passed at `now_ms`.
    pub fn tick(&mut self, now_ms: i64) {
        let ids: Vec<String> = self.groups.keys().cloned().collect();
        for id in ids {
            self.tick_group(&id, now_ms);
        }
    }

    fn tick_group(&mut self, group_id: &str, now_ms: i64) {
        if self
            .groups
            .get(group_id)
            .is_some_and(|g| g.consumer.is_some())
        {
            self.tick_consumer(group_id, now_ms);
            return;
        }
        let initial_delay = self.config.initial_rebalance_delay_ms;
        // The join phase: initial delay or rebalance timeout. An extended initial
        // delay may already be due (a delay of 0), hence the loop; it ends because
        // an extension clears `new_member_added`.
        for _ in 0..3 {
            let Some(group) = self.groups.get_mut(group_id) else {
                return;
            };
            let (GroupState::PreparingRebalance, Some(timer)) = (group.state, group.join_timer)
            else {
                break;
            };
            if now_ms < timer.deadline_ms {
                break;
            }
            match timer.initial {
                Some((delay, remaining)) if group.new_member_added && remaining > 0 => {
                    // More members arrived during the delay: wait a little more.
                    group.new_member_added = false;
                    let next = initial_delay.min(remaining);
                    group.join_timer = Some(JoinTimer {
                        deadline_ms: now_ms + next,
                        initial: Some((next, (remaining - delay).max(0))),
                    });
                }
                _ => {
                    self.complete_join(group_id, now_ms);
                    break;
                }
            }
        }
        // Member ids handed out but never used.
        if let Some(group) = self.groups.get_mut(group_id) {
            let before = group.pending_members.len();
            group
                .pending_members
                .retain(|_, deadline| now_ms < *deadline);
            if group.pending_members.len() != before {
                self.check_join(group_id, now_ms);
            }
        }
        // Session timeouts.
        let expired: Vec<String> = self
            .groups
            .get(group_id)
            .map(|g| {
                g.members
                    .values()
                    .filter(|m| !m.alive(now_ms))
                    .map(|m| m.member_id.clone())
                    .collect()
            })
            .unwrap_or_default();
        for id in expired {
            self.remove_member(group_id, &id, now_ms, "session timeout expired");
        }
        // Members that never sent SyncGroup.
        if let Some(group) = self.groups.get_mut(group_id) {
            let due = group.sync_deadline_ms.is_some_and(|d| now_ms >= d);
            if due {
                group.sync_deadline_ms = None;
                let missing: Vec<String> = group.pending_sync.drain().collect();
                if !missing.is_empty()
                    && matches!(
                        group.state,
                        GroupState::CompletingRebalance | GroupState::Stable
                    )
                {
                    for id in &missing {
                        tracing::info!(group = %group_id, member = %id, "member did not send SyncGroup in time; removing it");
                        if let Some(mut m) = group.members.remove(id) {
                            m.reply_join(JoinResponse::error("", GroupError::UnknownMemberId));
                            if let Some(instance) = &m.group_instance_id {
                                group.static_members.remove(instance);
                            }
                        }
                        if group.is_leader(id) {
                            group.leader_id = group.members.keys().next().cloned();
                        }
                    }
                    self.prepare_rebalance(group_id, now_ms, "members did not send SyncGroup");
                    self.check_join(group_id, now_ms);
                }
            }
        }
    }

    // ---- startup replay ---------------------------------------------------------

    /// Applies one record read back from `__consumer_offsets`, in log order.
    pub fn replay(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<(), super::records::RecordError> {
        match RecordKey::decode(key)? {
            RecordKey::Offset {
                group,
                topic,
                partition,
            } => {
                self.replay_offset(group, topic, partition, value, now_ms)?;
            }
            RecordKey::GroupMetadata { group } => match value {
                None => {
                    if let Some(g) = self.groups.get_mut(&group) {
                        // Offsets written after the tombstone survive it.
                        g.members.clear();
                        g.static_members.clear();
                        g.state = GroupState::Empty;
                        g.generation_id = 0;
                        g.protocol_type = None;
                        g.protocol_name = None;
                        g.leader_id = None;
                    }
                    self.drop_if_unused(&group);
                }
                Some(v) => {
                    let value = GroupMetadataValue::decode(v)?;
                    let g = self
                        .groups
                        .entry(group.clone())
                        .or_insert_with(|| ClassicGroup::new(group.clone(), now_ms));
                    load_group(g, value, now_ms);
                }
            },
            RecordKey::ConsumerGroup { group } => {
                self.replay_consumer_group(group, value, now_ms)?;
            }
        }
        Ok(())
    }
}

fn load_group(g: &mut ClassicGroup, value: GroupMetadataValue, now_ms: i64) {
    g.generation_id = value.generation;
    g.protocol_type = (!value.protocol_type.is_empty()).then_some(value.protocol_type);
    g.protocol_name = value.protocol.clone();
    g.leader_id = value.leader;
    g.state_timestamp_ms = if value.current_state_timestamp_ms >= 0 {
        value.current_state_timestamp_ms
    } else {
        now_ms
    };
    g.members.clear();
    g.static_members.clear();
    let protocol = value.protocol.unwrap_or_default();
    for m in value.members {
        if let Some(instance) = &m.group_instance_id {
            g.static_members
                .insert(instance.clone(), m.member_id.clone());
        }
        g.members.insert(
            m.member_id.clone(),
            Member {
                member_id: m.member_id,
                group_instance_id: m.group_instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                session_timeout_ms: m.session_timeout_ms,
                protocols: vec![(protocol.clone(), m.subscription)],
                assignment: m.assignment,
                join_waiter: None,
                sync_waiter: None,
                is_new: false,
                // Kafka's onGroupLoaded: every member gets a fresh session.
                heartbeat_deadline_ms: now_ms + i64::from(m.session_timeout_ms),
            },
        );
    }
    g.state = if g.members.is_empty() {
        GroupState::Empty
    } else {
        GroupState::Stable
    };
    if g.leader_id
        .as_ref()
        .is_some_and(|l| !g.members.contains_key(l))
    {
        g.leader_id = g.members.keys().next().cloned();
    }
}

/// Kafka's `acceptJoiningMember`.
fn accept_joining_member(group: &ClassicGroup, member_id: &str, config: &GroupConfig) -> bool {
    let max = config.max_members();
    match group.state {
        GroupState::Empty | GroupState::Dead | GroupState::Assigning | GroupState::Reconciling => {
            true
        }
        GroupState::PreparingRebalance => {
            group
                .members
                .get(member_id)
                .is_some_and(Member::awaiting_join)
                || group.awaiting_join_count() < max
        }
        GroupState::CompletingRebalance | GroupState::Stable => {
            group.members.contains_key(member_id) || group.members.len() < max
        }
    }
}

fn check_protocols(protocols: &[(String, Bytes)]) -> Option<GroupError> {
    if protocols.len() > PROTOCOLS_PER_MEMBER_MAX {
        return Some(GroupError::InvalidRequest(format!(
            "{} protocols, at most {PROTOCOLS_PER_MEMBER_MAX}",
            protocols.len()
        )));
    }
    let bytes: usize = protocols.iter().map(|(n, m)| n.len() + m.len()).sum();
    if bytes > MEMBER_METADATA_BYTES_MAX {
        return Some(GroupError::InvalidRequest(format!(
            "{bytes} bytes of protocol metadata, at most {MEMBER_METADATA_BYTES_MAX}"
        )));
    }
    None
}

/// Answers every waiting SyncGroup with `error` and forgets the assignments.
fn reset_and_propagate_error(group: &mut ClassicGroup, error: GroupError, now_ms: i64) {
    for m in group.members.values_mut() {
        m.assignment = Bytes::new();
        if m.reply_sync(SyncResponse::error(error.clone())) {
            m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
        }
    }
}
