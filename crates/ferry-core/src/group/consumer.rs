//! The consumer group protocol of KIP-848 (ConsumerGroupHeartbeat), following
//! Apache Kafka's new group coordinator (`GroupMetadataManager.consumerGroupHeartbeat`,
//! `CurrentAssignmentBuilder`).
//!
//! ```text
//!  heartbeat ──► 1. create/update the member; subscription or topic metadata
//!                   changed ──► group epoch + 1
//!                2. group epoch > assignment epoch ──► the assignor computes a new
//!                   target assignment; assignment epoch = group epoch
//!                3. reconcile the member towards its target:
//!                     owns partitions the target moved away ──► UNREVOKED_PARTITIONS
//!                       (same epoch; it must stop owning them, within its rebalance timeout)
//!                     wants partitions another member still owns ──► UNRELEASED_PARTITIONS
//!                       (target epoch; it gets them on a later heartbeat)
//!                     otherwise ──► STABLE at the target epoch
//!  tick ──► members past their session timeout (or stuck revoking past their
//!           rebalance timeout) are fenced: removed, group epoch + 1
//! ```
//!
//! Group states: Empty (no members), Assigning (group epoch ahead of the target),
//! Reconciling (some member not yet at the target), Stable.
//!
//! A consumer group lives in the same [`ClassicGroup`] entry as a classic one
//! (which keeps its committed offsets), with its membership in
//! [`ClassicGroup::consumer`]. Its whole membership is persisted as one ferry
//! record (key version [`super::records::CONSUMER_GROUP_KEY_VERSION`], JSON value)
//! written whenever it changes, so the latest record of a group is its state.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::assignor::{self, Assignment, MemberSpec};
use super::coordinator::{
    ClassicGroup, GroupError, GroupManager, GroupRecord, GroupState, GroupType,
};
use super::records::{RecordError, RecordKey};

/// Member epoch of a member that leaves the group.
pub const LEAVE_GROUP_MEMBER_EPOCH: i32 = -1;
/// Member epoch of a static member that leaves for now (and may come back).
pub const LEAVE_GROUP_STATIC_MEMBER_EPOCH: i32 = -2;
/// Most topics one member may subscribe to.
pub const SUBSCRIBED_TOPICS_MAX: usize = 10_000;
/// Most partitions one member may report as owned.
pub const OWNED_PARTITIONS_MAX: usize = 1_000_000;
/// Longest member id, instance id, rack id or assignor name.
pub const ID_BYTES_MAX: usize = 1024;
/// Version of the JSON value of a consumer group record.
const VALUE_VERSION: i16 = 0;

/// A topic as the group sees it: its id and partition count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    pub topic_id: Uuid,
    pub partitions: i32,
}

/// Where a member is in its reconciliation (Kafka's `MemberState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    Stable,
    UnrevokedPartitions,
    UnreleasedPartitions,
}

impl MemberState {
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Stable => "stable",
            MemberState::UnrevokedPartitions => "unrevoked_partitions",
            MemberState::UnreleasedPartitions => "unreleased_partitions",
        }
    }
}

/// One member of a consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub subscribed_topic_names: BTreeSet<String>,
    pub server_assignor: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub member_epoch: i32,
    pub previous_member_epoch: i32,
    pub state: MemberState,
    /// Partitions the member owns (or may own) at its epoch.
    pub assigned: Assignment,
    /// Partitions the member must give up before it moves on.
    pub pending_revocation: Assignment,
}

impl ConsumerMember {
    fn new(member_id: String) -> ConsumerMember {
        ConsumerMember {
            member_id,
            instance_id: None,
            rack_id: None,
            client_id: String::new(),
            client_host: String::new(),
            subscribed_topic_names: BTreeSet::new(),
            server_assignor: None,
            rebalance_timeout_ms: 300_000,
            member_epoch: 0,
            previous_member_epoch: 0,
            state: MemberState::Stable,
            assigned: Assignment::new(),
            pending_revocation: Assignment::new(),
        }
    }

    fn is_reconciled_to(&self, epoch: i32) -> bool {
        self.state == MemberState::Stable && self.member_epoch == epoch
    }
}

/// Deadlines of one member; not persisted (a loaded group gives every member a
/// fresh session, as Kafka does).
#[derive(Debug, Clone, Copy, Default)]
struct Timers {
    session_deadline_ms: i64,
    /// While revoking: (deadline, the epoch it must leave by then).
    rebalance_deadline: Option<(i64, i32)>,
}

/// The membership of a consumer (KIP-848) group.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConsumerGroup {
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub members: BTreeMap<String, ConsumerMember>,
    /// Target assignment by member id, as of `assignment_epoch`.
    pub target: BTreeMap<String, Assignment>,
    /// Subscribed topics as of the last epoch bump: name → id and partitions.
    pub subscription_metadata: BTreeMap<String, TopicInfo>,
    /// The assignor of the last target assignment.
    pub assignor_name: String,
    #[serde(skip)]
    timers: HashMap<String, Timers>,
}

/// A ConsumerGroupHeartbeat, in domain terms.
#[derive(Debug, Clone, Default)]
pub struct ConsumerHeartbeat {
    pub group_id: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    /// -1: unchanged.
    pub rebalance_timeout_ms: i32,
    /// `None`: unchanged.
    pub subscribed_topic_names: Option<Vec<String>>,
    pub subscribed_topic_regex: Option<String>,
    /// `None`: unchanged.
    pub server_assignor: Option<String>,
    /// Partitions the member owns; `None`: not reported.
    pub owned: Option<Vec<(Uuid, Vec<i32>)>>,
    pub client_id: String,
    pub client_host: String,
}

/// A ConsumerGroupHeartbeat answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerHeartbeatResponse {
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// Set when the member must (re)learn its assignment.
    pub assignment: Option<Assignment>,
}

/// One member, as ConsumerGroupDescribe shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerMemberSummary {
    pub member: ConsumerMember,
    pub target: Assignment,
}

/// ConsumerGroupDescribe of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupSummary {
    pub group_id: String,
    pub state: GroupState,
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub assignor_name: String,
    pub members: Vec<ConsumerMemberSummary>,
}

/// Looks a topic up by name in the current metadata.
pub type TopicLookup<'a> = &'a dyn Fn(&str) -> Option<TopicInfo>;

fn invalid(why: &str) -> GroupError {
    GroupError::InvalidRequest(why.to_string())
}

impl ConsumerGroup {
    /// Kafka's `ConsumerGroup.state()`.
    pub fn state(&self) -> GroupState {
        if self.members.is_empty() {
            GroupState::Empty
        } else if self.group_epoch > self.assignment_epoch {
            GroupState::Assigning
        } else if self
            .members
            .values()
            .all(|m| m.is_reconciled_to(self.assignment_epoch))
        {
            GroupState::Stable
        } else {
            GroupState::Reconciling
        }
    }

    /// Every topic some member subscribes to.
    pub fn subscribed_topic_names(&self) -> HashSet<String> {
        self.members
            .values()
            .flat_map(|m| m.subscribed_topic_names.iter().cloned())
            .collect()
    }

    fn static_member(&self, instance_id: &str) -> Option<&ConsumerMember> {
        self.members
            .values()
            .find(|m| m.instance_id.as_deref() == Some(instance_id))
    }

    /// Kafka's `validateOffsetCommit` for consumer groups: a commit without a member
    /// epoch is allowed only while the group is empty; otherwise the member must
    /// exist and send its current epoch.
    pub fn validate_offset_commit(
        &self,
        member_id: &str,
        member_epoch: i32,
    ) -> Result<(), GroupError> {
        if member_epoch < 0 && self.members.is_empty() {
            return Ok(());
        }
        let member = self
            .members
            .get(member_id)
            .ok_or(GroupError::UnknownMemberId)?;
        if member_epoch != member.member_epoch {
            return Err(GroupError::StaleMemberEpoch);
        }
        Ok(())
    }

    /// Subscribed topics that exist, by name.
    fn compute_subscription_metadata(&self, topics: TopicLookup) -> BTreeMap<String, TopicInfo> {
        self.subscribed_topic_names()
            .into_iter()
            .filter_map(|name| topics(&name).map(|t| (name, t)))
            .collect()
    }

    /// Kafka's `computePreferredServerAssignor`: the assignor most members ask for.
    fn preferred_assignor(&self) -> String {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(a) = &m.server_assignor {
                *votes.entry(a.as_str()).or_default() += 1;
            }
        }
        let mut best: Option<(&str, usize)> = None;
        for (name, n) in votes {
            if best.is_none_or(|(_, b)| n > b) {
                best = Some((name, n));
            }
        }
        best.map(|(n, _)| n.to_string())
            .unwrap_or_else(|| assignor::DEFAULT_ASSIGNOR.to_string())
    }

    /// Computes the target assignment of every member at the group epoch.
    fn compute_target_assignment(&mut self) {
        let by_name = &self.subscription_metadata;
        let topics: BTreeMap<Uuid, i32> = by_name
            .values()
            .map(|t| (t.topic_id, t.partitions))
            .collect();
        let specs: BTreeMap<String, MemberSpec> = self
            .members
            .iter()
            .map(|(id, m)| {
                let subscribed = m
                    .subscribed_topic_names
                    .iter()
                    .filter_map(|n| by_name.get(n).map(|t| t.topic_id))
                    .collect();
                let previous = self.target.get(id).cloned().unwrap_or_default();
                (
                    id.clone(),
                    MemberSpec {
                        subscribed,
                        previous,
                    },
                )
            })
            .collect();
        let name = self.preferred_assignor();
        self.target = assignor::assign(&name, &specs, &topics);
        self.assignor_name = name;
        self.assignment_epoch = self.group_epoch;
    }

    /// Partitions owned (assigned or pending revocation) by members other than `except`.
    fn owned_by_others(&self, except: &str) -> HashSet<(Uuid, i32)> {
        let mut owned = HashSet::new();
        for m in self.members.values().filter(|m| m.member_id != except) {
            for a in [&m.assigned, &m.pending_revocation] {
                for (t, ps) in a {
                    owned.extend(ps.iter().map(|p| (*t, *p)));
                }
            }
        }
        owned
    }

    /// Removes a member (Kafka's `consumerGroupFenceMember`): its partitions are
    /// released and the group epoch bumps so the rest rebalance.
    fn fence(&mut self, member_id: &str) -> bool {
        if self.members.remove(member_id).is_none() {
            return false;
        }
        self.target.remove(member_id);
        self.timers.remove(member_id);
        self.group_epoch += 1;
        true
    }
}

/// Whether the owned partitions still include any of `revoking`. Not reported
/// counts as still owning them.
fn owns_any(owned: Option<&[(Uuid, Vec<i32>)]>, revoking: &Assignment) -> bool {
    let Some(owned) = owned else {
        return true;
    };
    owned.iter().any(|(t, ps)| {
        revoking
            .get(t)
            .is_some_and(|r| ps.iter().any(|p| r.contains(p)))
    })
}

fn is_subset(owned: Option<&[(Uuid, Vec<i32>)]>, assigned: &Assignment) -> bool {
    let Some(owned) = owned else {
        return false;
    };
    owned.iter().all(|(t, ps)| {
        ps.is_empty()
            || assigned
                .get(t)
                .is_some_and(|a| ps.iter().all(|p| a.contains(p)))
    })
}

/// Kafka's `CurrentAssignmentBuilder`: moves `member` one step towards `target`.
fn reconcile(
    member: &ConsumerMember,
    target_epoch: i32,
    target: &Assignment,
    owned_by_others: &HashSet<(Uuid, i32)>,
    owned: Option<&[(Uuid, Vec<i32>)]>,
) -> ConsumerMember {
    match member.state {
        MemberState::Stable if member.member_epoch == target_epoch => member.clone(),
        MemberState::UnrevokedPartitions if owns_any(owned, &member.pending_revocation) => {
            // Still revoking: no progress until the member stops owning them.
            member.clone()
        }
        MemberState::UnrevokedPartitions => next_assignment(
            member,
            member.member_epoch + 1,
            target_epoch,
            target,
            owned_by_others,
            owned,
        ),
        MemberState::Stable | MemberState::UnreleasedPartitions => next_assignment(
            member,
            member.member_epoch,
            target_epoch,
            target,
            owned_by_others,
            owned,
        ),
    }
}

fn next_assignment(
    member: &ConsumerMember,
    member_epoch: i32,
    target_epoch: i32,
    target: &Assignment,
    owned_by_others: &HashSet<(Uuid, i32)>,
    owned: Option<&[(Uuid, Vec<i32>)]>,
) -> ConsumerMember {
    let mut assigned = Assignment::new();
    let mut revoking = Assignment::new();
    let mut to_assign = Assignment::new();
    let mut unreleased = false;
    let topics: BTreeSet<Uuid> = member
        .assigned
        .keys()
        .chain(target.keys())
        .copied()
        .collect();
    let empty = BTreeSet::new();
    for t in topics {
        let current = member.assigned.get(&t).unwrap_or(&empty);
        let wanted = target.get(&t).unwrap_or(&empty);
        let keep: BTreeSet<i32> = current.intersection(wanted).copied().collect();
        let revoke: BTreeSet<i32> = current.difference(wanted).copied().collect();
        let mut add = BTreeSet::new();
        for &p in wanted.difference(current) {
            // A partition is free once no other member owns it (this member's own
            // pending revocations do not hold it back).
            if owned_by_others.contains(&(t, p)) {
                unreleased = true;
            } else {
                add.insert(p);
            }
        }
        if !keep.is_empty() {
            assigned.insert(t, keep);
        }
        if !revoke.is_empty() {
            revoking.insert(t, revoke);
        }
        if !add.is_empty() {
            to_assign.insert(t, add);
        }
    }
    let mut next = member.clone();
    if !revoking.is_empty() && owns_any(owned, &revoking) {
        // Revoke first: the member stays at its epoch and keeps only what the target
        // keeps; new partitions come after the revocation is acknowledged.
        next.state = MemberState::UnrevokedPartitions;
        set_epoch(&mut next, member_epoch);
        next.assigned = assigned;
        next.pending_revocation = revoking;
        return next;
    }
    for (t, ps) in to_assign {
        assigned.entry(t).or_default().extend(ps);
    }
    next.state = if unreleased {
        MemberState::UnreleasedPartitions
    } else {
        MemberState::Stable
    };
    set_epoch(&mut next, target_epoch);
    next.assigned = assigned;
    next.pending_revocation = Assignment::new();
    next
}

fn set_epoch(member: &mut ConsumerMember, epoch: i32) {
    if member.member_epoch != epoch {
        member.previous_member_epoch = member.member_epoch;
        member.member_epoch = epoch;
    }
}

/// The record holding a consumer group's membership (`None`: tombstone).
pub(super) fn consumer_record(group_id: &str, group: Option<&ConsumerGroup>) -> GroupRecord {
    GroupRecord {
        group_id: group_id.to_string(),
        key: RecordKey::ConsumerGroup {
            group: group_id.to_string(),
        }
        .encode(),
        value: group.map(encode_value),
    }
}

fn encode_value(group: &ConsumerGroup) -> Bytes {
    let json = serde_json::to_vec(group).unwrap_or_default();
    let mut buf = BytesMut::with_capacity(2 + json.len());
    buf.put_i16(VALUE_VERSION);
    buf.put_slice(&json);
    buf.freeze()
}

fn decode_value(bytes: &[u8]) -> Result<ConsumerGroup, RecordError> {
    if bytes.len() < 2 {
        return Err(RecordError("truncated consumer group value".into()));
    }
    let version = i16::from_be_bytes([bytes[0], bytes[1]]);
    if version != VALUE_VERSION {
        return Err(RecordError(format!(
            "unknown consumer group value version {version}"
        )));
    }
    serde_json::from_slice(&bytes[2..]).map_err(|e| RecordError(e.to_string()))
}

fn validate_request(req: &ConsumerHeartbeat) -> Result<(), GroupError> {
    if req.group_id.is_empty() {
        return Err(invalid("GroupId can't be empty."));
    }
    for (what, id) in [
        ("InstanceId", req.instance_id.as_deref()),
        ("RackId", req.rack_id.as_deref()),
    ] {
        if id.is_some_and(str::is_empty) {
            return Err(invalid(&format!("{what} can't be empty.")));
        }
    }
    let too_long = [
        Some(req.member_id.as_str()),
        req.instance_id.as_deref(),
        req.rack_id.as_deref(),
        req.server_assignor.as_deref(),
    ]
    .into_iter()
    .flatten()
    .any(|s| s.len() > ID_BYTES_MAX);
    if too_long {
        return Err(invalid(&format!(
            "an id is longer than {ID_BYTES_MAX} bytes"
        )));
    }
    if req
        .subscribed_topic_names
        .as_ref()
        .is_some_and(|t| t.len() > SUBSCRIBED_TOPICS_MAX)
    {
        return Err(invalid(&format!(
            "more than {SUBSCRIBED_TOPICS_MAX} subscribed topics"
        )));
    }
    let owned: usize = req.owned.iter().flatten().map(|(_, ps)| ps.len()).sum();
    if owned > OWNED_PARTITIONS_MAX {
        return Err(invalid(&format!(
            "more than {OWNED_PARTITIONS_MAX} owned partitions"
        )));
    }
    match req.member_epoch {
        0 => {
            if req.rebalance_timeout_ms == -1 {
                return Err(invalid(
                    "RebalanceTimeoutMs must be provided in first request.",
                ));
            }
            if req.owned.as_ref().is_none_or(|o| !o.is_empty()) {
                return Err(invalid("TopicPartitions must be empty when (re-)joining."));
            }
            if req.subscribed_topic_names.is_none() && req.subscribed_topic_regex.is_none() {
                return Err(invalid(
                    "SubscribedTopicNames or SubscribedTopicRegex must be set in first request.",
                ));
            }
        }
        LEAVE_GROUP_STATIC_MEMBER_EPOCH if req.instance_id.is_none() => {
            return Err(invalid("InstanceId can't be null."));
        }
        e if e < LEAVE_GROUP_STATIC_MEMBER_EPOCH => {
            return Err(invalid("MemberEpoch is invalid."));
        }
        _ if req.member_id.is_empty() => return Err(invalid("MemberId can't be empty.")),
        _ => {}
    }
    if req
        .subscribed_topic_regex
        .as_deref()
        .is_some_and(|r| !r.is_empty())
    {
        // Regex subscriptions (KIP-848 with RE2/J patterns) are not implemented.
        return Err(invalid(
            "SubscribedTopicRegex is not supported by this broker.",
        ));
    }
    if let Some(a) = &req.server_assignor {
        if !assignor::is_supported(a) {
            return Err(GroupError::UnsupportedAssignor(a.clone()));
        }
    }
    Ok(())
}

/// Kafka's `throwIfMemberEpochIsInvalid`.
fn check_member_epoch(
    member: &ConsumerMember,
    received: i32,
    owned: Option<&[(Uuid, Vec<i32>)]>,
) -> Result<(), GroupError> {
    if received > member.member_epoch {
        return Err(GroupError::FencedMemberEpoch(format!(
            "epoch {received} is newer than the coordinator's {}",
            member.member_epoch
        )));
    }
    if received < member.member_epoch
        && (received != member.previous_member_epoch || !is_subset(owned, &member.assigned))
    {
        return Err(GroupError::FencedMemberEpoch(format!(
            "epoch {received} is older than the coordinator's {}",
            member.member_epoch
        )));
    }
    Ok(())
}

impl GroupManager {
    /// ConsumerGroupHeartbeat: join, heartbeat, reconcile, or leave.
    pub fn consumer_heartbeat(
        &mut self,
        req: ConsumerHeartbeat,
        topics: TopicLookup,
        now_ms: i64,
    ) -> Result<ConsumerHeartbeatResponse, GroupError> {
        validate_request(&req)?;
        let group_id = req.group_id.clone();
        let result = if req.member_epoch < 0 {
            self.consumer_leave(&req, now_ms)
        } else {
            self.consumer_join_or_heartbeat(req, topics, now_ms)
        };
        self.sync_consumer_shell(&group_id, now_ms);
        result
    }

    /// The group entry as a consumer group, converting an empty classic group
    /// (Kafka's online upgrade of an empty group) when `create` is set.
    fn consumer_group_mut(
        &mut self,
        group_id: &str,
        create: bool,
        now_ms: i64,
    ) -> Result<&mut ClassicGroup, GroupError> {
        if create {
            self.get_or_create(group_id, now_ms)?;
        }
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(GroupError::GroupIdNotFound)?;
        if group.consumer.is_none() {
            let empty_classic = group.members.is_empty()
                && group.pending_members.is_empty()
                && matches!(group.state, GroupState::Empty | GroupState::Dead);
            if !create || !empty_classic {
                return Err(GroupError::GroupIdNotFound);
            }
            tracing::info!(group = %group_id, "the group now uses the consumer protocol");
            group.group_type = GroupType::Consumer;
            group.protocol_type = Some("consumer".to_string());
            group.protocol_name = None;
            group.leader_id = None;
            group.consumer = Some(Box::default());
        }
        Ok(group)
    }

    fn consumer_leave(
        &mut self,
        req: &ConsumerHeartbeat,
        now_ms: i64,
    ) -> Result<ConsumerHeartbeatResponse, GroupError> {
        let group = self.consumer_group_mut(&req.group_id, false, now_ms)?;
        let consumer = group.consumer.as_mut().ok_or(GroupError::GroupIdNotFound)?;
        let member_id = match &req.instance_id {
            None => {
                if !consumer.members.contains_key(&req.member_id) {
                    return Err(GroupError::UnknownMemberId);
                }
                req.member_id.clone()
            }
            Some(instance) => {
                let member = consumer
                    .static_member(instance)
                    .ok_or(GroupError::UnknownMemberId)?;
                if member.member_id != req.member_id {
                    return Err(GroupError::FencedInstanceId);
                }
                member.member_id.clone()
            }
        };
        if req.member_epoch == LEAVE_GROUP_STATIC_MEMBER_EPOCH {
            // A static member leaves for now: it keeps its assignment for
            // `session timeout` and its instance id may rejoin under a new member id.
            tracing::info!(group = %req.group_id, member = %member_id, "static member left temporarily");
            if let Some(m) = consumer.members.get_mut(&member_id) {
                m.member_epoch = LEAVE_GROUP_STATIC_MEMBER_EPOCH;
                m.pending_revocation.clear();
            }
        } else {
            tracing::info!(group = %req.group_id, member = %member_id, "member left the consumer group");
            consumer.fence(&member_id);
        }
        let record = consumer_record(&req.group_id, Some(consumer));
        self.emit(record);
        Ok(ConsumerHeartbeatResponse {
            member_id: req.member_id.clone(),
            member_epoch: req.member_epoch,
            heartbeat_interval_ms: 0,
            assignment: None,
        })
    }

    fn consumer_join_or_heartbeat(
        &mut self,
        mut req: ConsumerHeartbeat,
        topics: TopicLookup,
        now_ms: i64,
    ) -> Result<ConsumerHeartbeatResponse, GroupError> {
        let max_size = self.config.consumer_max_size.max(1);
        let session_ms = self.config.consumer_session_timeout_ms;
        let interval_ms = i32::try_from(self.config.consumer_heartbeat_interval_ms).unwrap_or(5000);
        let joining = req.member_epoch == 0;
        let group_id = req.group_id.clone();
        if !joining && !self.groups.contains_key(&group_id) {
            // Kafka answers GROUP_ID_NOT_FOUND here, which librdkafka does not act
            // on (it keeps heartbeating the lost epoch); UNKNOWN_MEMBER_ID makes
            // any client rejoin, e.g. after group records were lost in a crash.
            return Err(GroupError::UnknownMemberId);
        }
        let group = self.consumer_group_mut(&group_id, joining, now_ms)?;
        let consumer = group.consumer.as_mut().ok_or(GroupError::GroupIdNotFound)?;
        let known = !req.member_id.is_empty() && consumer.members.contains_key(&req.member_id);
        if consumer.members.len() >= max_size && !known {
            return Err(GroupError::GroupMaxSizeReached);
        }
        if req.member_id.is_empty() {
            // ConsumerGroupHeartbeat v0: the coordinator names new members.
            req.member_id = Uuid::new_v4().to_string();
        }
        let member_id = req.member_id.clone();
        let owned = req.owned.as_deref();
        let mut bump = false;
        let mut replaced_static: Option<ConsumerMember> = None;
        let existing: Option<ConsumerMember> = match &req.instance_id {
            None => match consumer.members.get(&member_id) {
                None if !joining => return Err(GroupError::UnknownMemberId),
                None => None,
                Some(m) => match check_member_epoch(m, req.member_epoch, owned) {
                    Ok(()) => Some(m.clone()),
                    Err(_) if joining => {
                        // The member lost its state and rejoins under the same id (a
                        // client keeps its id for life, KIP-1082): the old incarnation
                        // is fenced and the member starts over.
                        tracing::info!(group = %group_id, member = %member_id, "member rejoins; fencing its previous epoch");
                        consumer.fence(&member_id);
                        None
                    }
                    Err(e) => return Err(e),
                },
            },
            Some(instance) => match consumer.static_member(instance).cloned() {
                None if !joining => return Err(GroupError::UnknownMemberId),
                None => consumer.members.get(&member_id).cloned(),
                Some(old) if joining && old.member_id != member_id => {
                    if old.member_epoch != LEAVE_GROUP_STATIC_MEMBER_EPOCH {
                        return Err(GroupError::UnreleasedInstanceId(format!(
                            "instance id {instance} is owned by member {}",
                            old.member_id
                        )));
                    }
                    tracing::info!(group = %group_id, member = %member_id, instance = %instance, "static member rejoins and replaces its previous member");
                    replaced_static = Some(old);
                    None
                }
                Some(old) => {
                    if old.member_id != member_id {
                        return Err(GroupError::FencedInstanceId);
                    }
                    if joining && old.member_epoch == LEAVE_GROUP_STATIC_MEMBER_EPOCH {
                        Some(old)
                    } else {
                        check_member_epoch(&old, req.member_epoch, owned)?;
                        Some(old)
                    }
                }
            },
        };
        let before = existing.clone();
        let mut member = match (&existing, &replaced_static) {
            (Some(m), _) => m.clone(),
            (None, Some(old)) => {
                // The replacement takes the old member's place: its subscription
                // and its partitions (Kafka keeps the assignment, so no rebalance).
                let mut m = old.clone();
                m.member_id = member_id.clone();
                m.member_epoch = 0;
                m.previous_member_epoch = 0;
                m.state = MemberState::Stable;
                m.pending_revocation.clear();
                m
            }
            (None, None) => {
                tracing::info!(group = %group_id, member = %member_id, "member joins the consumer group");
                ConsumerMember::new(member_id.clone())
            }
        };
        if member.member_epoch == LEAVE_GROUP_STATIC_MEMBER_EPOCH {
            // A static member back under its own member id resumes where it was.
            member.member_epoch = consumer.assignment_epoch;
        }
        if let Some(old) = &replaced_static {
            consumer.members.remove(&old.member_id);
            consumer.timers.remove(&old.member_id);
            if let Some(t) = consumer.target.remove(&old.member_id) {
                consumer.target.insert(member_id.clone(), t);
            }
        }
        if req.instance_id.is_some() {
            member.instance_id = req.instance_id.clone();
        }
        if req.rack_id.is_some() {
            member.rack_id = req.rack_id.clone();
        }
        if req.rebalance_timeout_ms >= 0 {
            member.rebalance_timeout_ms = req.rebalance_timeout_ms;
        }
        if req.server_assignor.is_some() {
            member.server_assignor = req.server_assignor.clone();
        }
        if let Some(names) = &req.subscribed_topic_names {
            let names: BTreeSet<String> = names.iter().cloned().collect();
            if names != member.subscribed_topic_names {
                tracing::info!(group = %group_id, member = %member_id, topics = ?names, "member updated its subscription");
                member.subscribed_topic_names = names;
                bump = true;
            }
        }
        member.client_id = req.client_id.clone();
        member.client_host = req.client_host.clone();
        if before.is_none() && replaced_static.is_none() {
            bump = true;
        }
        consumer.members.insert(member_id.clone(), member.clone());
        // Subscription metadata: a topic created, deleted or grown also rebalances.
        let metadata = consumer.compute_subscription_metadata(topics);
        if metadata != consumer.subscription_metadata {
            tracing::info!(group = %group_id, "subscribed topic metadata changed");
            consumer.subscription_metadata = metadata;
            bump = true;
        }
        if bump {
            consumer.group_epoch += 1;
            tracing::info!(group = %group_id, epoch = consumer.group_epoch, "bumped the group epoch");
        }
        if consumer.group_epoch > consumer.assignment_epoch || replaced_static.is_some() {
            consumer.compute_target_assignment();
            tracing::info!(group = %group_id, epoch = consumer.assignment_epoch, assignor = %consumer.assignor_name, "computed a new target assignment");
        }
        // Reconcile.
        let target = consumer.target.get(&member_id).cloned().unwrap_or_default();
        if !member.is_reconciled_to(consumer.assignment_epoch) {
            let others = consumer.owned_by_others(&member_id);
            let next = reconcile(&member, consumer.assignment_epoch, &target, &others, owned);
            if next != member {
                tracing::info!(
                    group = %group_id, member = %member_id, epoch = next.member_epoch,
                    state = next.state.name(), assigned = assignor::partition_count(&next.assigned),
                    revoking = assignor::partition_count(&next.pending_revocation),
                    "member assignment moved"
                );
            }
            let timers = consumer.timers.entry(member_id.clone()).or_default();
            if next.state == MemberState::UnrevokedPartitions {
                if timers
                    .rebalance_deadline
                    .is_none_or(|(_, e)| e != next.member_epoch)
                {
                    timers.rebalance_deadline = Some((
                        now_ms + i64::from(next.rebalance_timeout_ms.max(0)),
                        next.member_epoch,
                    ));
                }
            } else {
                timers.rebalance_deadline = None;
            }
            member = next;
            consumer.members.insert(member_id.clone(), member.clone());
        }
        consumer
            .timers
            .entry(member_id.clone())
            .or_default()
            .session_deadline_ms = now_ms + session_ms;
        let assigned_changed = before
            .as_ref()
            .is_none_or(|b| b.assigned != member.assigned);
        let changed = bump || before.as_ref() != Some(&member);
        if changed {
            let record = consumer_record(&group_id, Some(consumer));
            self.emit(record);
        }
        let send_assignment = owned.is_some() || joining || assigned_changed;
        Ok(ConsumerHeartbeatResponse {
            member_id,
            member_epoch: member.member_epoch,
            heartbeat_interval_ms: interval_ms,
            assignment: send_assignment.then(|| member.assigned.clone()),
        })
    }

    /// Mirrors a consumer group's state into its entry (for ListGroups, offset
    /// expiry and DeleteGroups).
    pub(super) fn sync_consumer_shell(&mut self, group_id: &str, now_ms: i64) {
        let Some(group) = self.groups.get_mut(group_id) else {
            return;
        };
        let Some(consumer) = &group.consumer else {
            return;
        };
        let state = consumer.state();
        if state != group.state {
            if state == GroupState::Empty || group.state == GroupState::Empty {
                group.state_timestamp_ms = now_ms;
            }
            group.state = state;
        }
        group.generation_id = consumer.group_epoch;
    }

    /// Fences consumer group members whose session or rebalance timeout expired.
    pub(super) fn tick_consumer(&mut self, group_id: &str, now_ms: i64) {
        let Some(consumer) = self
            .groups
            .get_mut(group_id)
            .and_then(|g| g.consumer.as_mut())
        else {
            return;
        };
        let mut fenced = Vec::new();
        for (id, m) in &consumer.members {
            let timers = consumer.timers.entry(id.clone()).or_insert(Timers {
                session_deadline_ms: now_ms + self.config.consumer_session_timeout_ms,
                rebalance_deadline: None,
            });
            if now_ms >= timers.session_deadline_ms {
                tracing::info!(group = %group_id, member = %id, "member fenced: its session expired");
                fenced.push(id.clone());
            } else if let Some((deadline, epoch)) = timers.rebalance_deadline {
                if now_ms >= deadline && m.member_epoch == epoch {
                    tracing::info!(group = %group_id, member = %id, epoch, "member fenced: it did not revoke its partitions within its rebalance timeout");
                    fenced.push(id.clone());
                }
            }
        }
        if fenced.is_empty() {
            return;
        }
        for id in &fenced {
            consumer.fence(id);
        }
        let record = consumer_record(group_id, Some(consumer));
        self.emit(record);
        self.sync_consumer_shell(group_id, now_ms);
    }

    /// ConsumerGroupDescribe of one group.
    pub fn consumer_describe(&self, group_id: &str) -> Result<ConsumerGroupSummary, GroupError> {
        let group = self
            .groups
            .get(group_id)
            .ok_or(GroupError::GroupIdNotFound)?;
        let consumer = group.consumer.as_ref().ok_or(GroupError::GroupIdNotFound)?;
        Ok(ConsumerGroupSummary {
            group_id: group_id.to_string(),
            state: consumer.state(),
            group_epoch: consumer.group_epoch,
            assignment_epoch: consumer.assignment_epoch,
            assignor_name: if consumer.assignor_name.is_empty() {
                assignor::DEFAULT_ASSIGNOR.to_string()
            } else {
                consumer.assignor_name.clone()
            },
            members: consumer
                .members
                .values()
                .map(|m| ConsumerMemberSummary {
                    member: m.clone(),
                    target: consumer
                        .target
                        .get(&m.member_id)
                        .cloned()
                        .unwrap_or_default(),
                })
                .collect(),
        })
    }

    /// Replays a consumer group record read back from `__consumer_offsets`.
    pub(super) fn replay_consumer_group(
        &mut self,
        group_id: String,
        value: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<(), RecordError> {
        match value {
            None => {
                if let Some(g) = self.groups.get_mut(&group_id) {
                    g.consumer = None;
                    g.group_type = GroupType::Classic;
                    g.state = GroupState::Empty;
                }
            }
            Some(v) => {
                let mut consumer = decode_value(v)?;
                // Kafka's onLoaded: every member gets a fresh session.
                let session = self.config.consumer_session_timeout_ms;
                for id in consumer.members.keys() {
                    consumer.timers.insert(
                        id.clone(),
                        Timers {
                            session_deadline_ms: now_ms + session,
                            rebalance_deadline: None,
                        },
                    );
                }
                let g = self
                    .groups
                    .entry(group_id.clone())
                    .or_insert_with(|| ClassicGroup::new(group_id.clone(), now_ms));
                g.group_type = GroupType::Consumer;
                g.protocol_type = Some("consumer".to_string());
                g.members.clear();
                g.static_members.clear();
                g.consumer = Some(Box::new(consumer));
                self.sync_consumer_shell(&group_id, now_ms);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::coordinator::GroupConfig;
    use crate::group::offsets::{CommitRequest, OffsetCommit};
    use crate::partition::TopicPartition;

    const T: &str = "t";

    fn topic_id() -> Uuid {
        Uuid::from_u128(42)
    }

    fn manager() -> GroupManager {
        GroupManager::new(GroupConfig {
            consumer_session_timeout_ms: 45_000,
            consumer_heartbeat_interval_ms: 5_000,
            ..GroupConfig::default()
        })
    }

    /// A metadata view with topic `t` of `partitions` partitions.
    fn topics(partitions: i32) -> impl Fn(&str) -> Option<TopicInfo> {
        move |name: &str| {
            (name == T).then_some(TopicInfo {
                topic_id: topic_id(),
                partitions,
            })
        }
    }

    fn join(member: &str) -> ConsumerHeartbeat {
        ConsumerHeartbeat {
            group_id: "g".into(),
            member_id: member.into(),
            member_epoch: 0,
            rebalance_timeout_ms: 30_000,
            subscribed_topic_names: Some(vec![T.into()]),
            owned: Some(Vec::new()),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            ..ConsumerHeartbeat::default()
        }
    }

    fn beat(member: &str, epoch: i32, owned: &Assignment) -> ConsumerHeartbeat {
        ConsumerHeartbeat {
            group_id: "g".into(),
            member_id: member.into(),
            member_epoch: epoch,
            rebalance_timeout_ms: -1,
            owned: Some(
                owned
                    .iter()
                    .map(|(t, ps)| (*t, ps.iter().copied().collect()))
                    .collect(),
            ),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            ..ConsumerHeartbeat::default()
        }
    }

    /// A client: heartbeats and owns exactly what it was last given (revocations are
    /// acknowledged at once, as librdkafka does after its rebalance callback).
    struct Client {
        id: String,
        epoch: i32,
        owned: Assignment,
    }

    impl Client {
        fn join(m: &mut GroupManager, id: &str, partitions: i32, now: i64) -> Client {
            let r = m
                .consumer_heartbeat(join(id), &topics(partitions), now)
                .expect("join");
            Client {
                id: r.member_id,
                epoch: r.member_epoch,
                owned: r.assignment.unwrap_or_default(),
            }
        }

        fn beat(
            &mut self,
            m: &mut GroupManager,
            partitions: i32,
            now: i64,
        ) -> ConsumerHeartbeatResponse {
            let r = m
                .consumer_heartbeat(
                    beat(&self.id, self.epoch, &self.owned),
                    &topics(partitions),
                    now,
                )
                .expect("heartbeat");
            self.epoch = r.member_epoch;
            if let Some(a) = &r.assignment {
                self.owned = a.clone();
            }
            r
        }

        fn partitions(&self) -> BTreeSet<i32> {
            self.owned.get(&topic_id()).cloned().unwrap_or_default()
        }
    }

    /// Heartbeats every client until the group is Stable (bounded).
    fn settle(m: &mut GroupManager, clients: &mut [Client], partitions: i32, now: i64) {
        for _ in 0..10 {
            for c in clients.iter_mut() {
                c.beat(m, partitions, now);
            }
            if m.consumer_describe("g").expect("present").state == GroupState::Stable {
                return;
            }
        }
        panic!("group did not settle: {:?}", m.consumer_describe("g"));
    }

    fn assert_disjoint_complete(clients: &[Client], partitions: i32) {
        let mut all: Vec<i32> = clients.iter().flat_map(|c| c.partitions()).collect();
        all.sort();
        assert_eq!(all, (0..partitions).collect::<Vec<_>>());
    }

    #[test]
    fn members_join_and_get_a_disjoint_complete_assignment() {
        let mut m = manager();
        let mut clients = vec![
            Client::join(&mut m, "a", 6, 0),
            Client::join(&mut m, "b", 6, 0),
            Client::join(&mut m, "c", 6, 0),
        ];
        settle(&mut m, &mut clients, 6, 10);
        assert_disjoint_complete(&clients, 6);
        for c in &clients {
            assert_eq!(c.partitions().len(), 2);
        }
        let d = m.consumer_describe("g").expect("present");
        assert_eq!(d.group_epoch, 3);
        assert_eq!(d.assignment_epoch, 3);
        assert_eq!(d.assignor_name, "uniform");
        assert!(clients.iter().all(|c| c.epoch == 3));
        assert_eq!(m.group("g").expect("present").state(), GroupState::Stable);
    }

    #[test]
    fn a_new_member_waits_until_the_owner_revokes() {
        let mut m = manager();
        let mut a = Client::join(&mut m, "a", 4, 0);
        assert_eq!(a.partitions().len(), 4);
        let mut b = Client::join(&mut m, "b", 4, 1);
        // b's target partitions are still a's: b waits, unreleased.
        assert!(b.partitions().is_empty());
        let d = m.consumer_describe("g").expect("present");
        let bm = d
            .members
            .iter()
            .find(|x| x.member.member_id == "b")
            .expect("present");
        assert_eq!(bm.member.state, MemberState::UnreleasedPartitions);
        assert_eq!(d.state, GroupState::Reconciling);
        // a is asked to revoke two partitions and stays at its epoch.
        let old_epoch = a.epoch;
        let r = m
            .consumer_heartbeat(beat("a", a.epoch, &a.owned), &topics(4), 2)
            .expect("present");
        assert_eq!(r.member_epoch, old_epoch);
        let kept = r.assignment.expect("present");
        assert_eq!(kept[&topic_id()].len(), 2);
        // Before a acknowledges, b still gets nothing.
        b.beat(&mut m, 4, 3);
        assert!(b.partitions().is_empty());
        // a acknowledges (reports only the kept partitions) and moves to the new epoch.
        a.owned = kept;
        let r = a.beat(&mut m, 4, 4);
        assert_eq!(r.member_epoch, 2);
        b.beat(&mut m, 4, 5);
        assert_eq!(b.partitions().len(), 2);
        assert!(a.partitions().is_disjoint(&b.partitions()));
        let mut clients = vec![a, b];
        settle(&mut m, &mut clients, 4, 6);
        assert_disjoint_complete(&clients, 4);
    }

    #[test]
    fn a_member_that_leaves_hands_its_partitions_over() {
        let mut m = manager();
        let mut clients = vec![
            Client::join(&mut m, "a", 6, 0),
            Client::join(&mut m, "b", 6, 0),
        ];
        settle(&mut m, &mut clients, 6, 1);
        let epoch = m.consumer_describe("g").expect("present").group_epoch;
        let leave = ConsumerHeartbeat {
            member_epoch: LEAVE_GROUP_MEMBER_EPOCH,
            ..beat("b", clients[1].epoch, &Assignment::new())
        };
        let r = m.consumer_heartbeat(leave, &topics(6), 2).expect("present");
        assert_eq!(r.member_epoch, -1);
        assert_eq!(
            m.consumer_describe("g").expect("present").group_epoch,
            epoch + 1
        );
        clients.pop();
        settle(&mut m, &mut clients, 6, 3);
        assert_eq!(clients[0].partitions().len(), 6);
        // The one who left is unknown now.
        let err = m
            .consumer_heartbeat(beat("b", 5, &Assignment::new()), &topics(6), 4)
            .expect_err("an error");
        assert_eq!(err, GroupError::UnknownMemberId);
    }

    #[test]
    fn session_timeout_fences_a_silent_member() {
        let mut m = manager();
        let mut clients = vec![
            Client::join(&mut m, "a", 2, 0),
            Client::join(&mut m, "b", 2, 0),
        ];
        settle(&mut m, &mut clients, 2, 0);
        m.tick(44_000);
        assert_eq!(m.consumer_describe("g").expect("present").members.len(), 2);
        clients[0].beat(&mut m, 2, 40_000);
        m.tick(45_000);
        // b was last heard of at 0: fenced at 45 s; a heartbeated at 40 s.
        let d = m.consumer_describe("g").expect("present");
        assert_eq!(d.members.len(), 1);
        assert_eq!(d.state, GroupState::Assigning);
        clients.pop();
        settle(&mut m, &mut clients, 2, 46_000);
        assert_eq!(clients[0].partitions().len(), 2);
        m.tick(46_000 + 45_000);
        assert_eq!(
            m.consumer_describe("g").expect("present").state,
            GroupState::Empty
        );
        assert_eq!(m.group("g").expect("present").state(), GroupState::Empty);
    }

    #[test]
    fn a_member_stuck_revoking_is_fenced_after_its_rebalance_timeout() {
        let mut m = manager();
        let mut a = Client::join(&mut m, "a", 2, 0);
        let _b = Client::join(&mut m, "b", 2, 0);
        // a is asked to revoke but never acknowledges (it reports no owned partitions).
        let mut req = beat("a", a.epoch, &a.owned);
        req.owned = None;
        m.consumer_heartbeat(req.clone(), &topics(2), 1)
            .expect("present");
        let a_state = |m: &GroupManager| {
            m.consumer_describe("g")
                .expect("present")
                .members
                .iter()
                .find(|x| x.member.member_id == "a")
                .map(|x| x.member.state)
        };
        assert_eq!(a_state(&m), Some(MemberState::UnrevokedPartitions));
        a.epoch = m
            .consumer_heartbeat(req, &topics(2), 20_000)
            .expect("present")
            .member_epoch;
        m.tick(30_001);
        assert_eq!(a_state(&m), None, "fenced after the 30 s rebalance timeout");
    }

    #[test]
    fn wrong_epochs_are_fenced_and_an_old_epoch_with_a_subset_is_accepted() {
        let mut m = manager();
        let mut a = Client::join(&mut m, "a", 2, 0);
        a.beat(&mut m, 2, 1);
        let err = m
            .consumer_heartbeat(beat("a", a.epoch + 1, &a.owned), &topics(2), 2)
            .expect_err("an error");
        assert!(matches!(err, GroupError::FencedMemberEpoch(_)));
        // b joins: epoch 2; a moves to 2 after revoking; its previous epoch 1 with a
        // subset of its partitions is still accepted (a lost response).
        let mut clients = vec![a, Client::join(&mut m, "b", 2, 3)];
        settle(&mut m, &mut clients, 2, 4);
        let a = &clients[0];
        let r = m.consumer_heartbeat(beat("a", 1, &a.owned), &topics(2), 5);
        assert!(r.is_ok(), "{r:?}");
        let err = m
            .consumer_heartbeat(beat("a", 0, &a.owned), &topics(2), 5)
            .expect_err("an error");
        assert!(
            matches!(err, GroupError::InvalidRequest(_)),
            "epoch 0 must own nothing: {err:?}"
        );
    }

    #[test]
    fn a_member_rejoining_with_epoch_zero_starts_over() {
        let mut m = manager();
        let mut clients = vec![
            Client::join(&mut m, "a", 2, 0),
            Client::join(&mut m, "b", 2, 0),
        ];
        settle(&mut m, &mut clients, 2, 1);
        let a2 = Client::join(&mut m, "a", 2, 2);
        assert_eq!(a2.id, "a");
        let d = m.consumer_describe("g").expect("present");
        assert_eq!(d.members.len(), 2);
    }

    #[test]
    fn bad_requests_get_kafkas_errors() {
        let mut m = manager();
        let mut r = join("a");
        r.group_id.clear();
        assert!(matches!(
            m.consumer_heartbeat(r, &topics(1), 0),
            Err(GroupError::InvalidRequest(_))
        ));
        let mut r = join("a");
        r.server_assignor = Some("sticky".into());
        assert_eq!(
            m.consumer_heartbeat(r, &topics(1), 0),
            Err(GroupError::UnsupportedAssignor("sticky".into()))
        );
        let mut r = join("a");
        r.rebalance_timeout_ms = -1;
        assert!(matches!(
            m.consumer_heartbeat(r, &topics(1), 0),
            Err(GroupError::InvalidRequest(_))
        ));
        let mut r = join("a");
        r.subscribed_topic_names = None;
        assert!(matches!(
            m.consumer_heartbeat(r, &topics(1), 0),
            Err(GroupError::InvalidRequest(_))
        ));
        // Heartbeat of a member that never joined, in a group that does not exist.
        assert_eq!(
            m.consumer_heartbeat(beat("x", 1, &Assignment::new()), &topics(1), 0),
            Err(GroupError::UnknownMemberId)
        );
        Client::join(&mut m, "a", 1, 0);
        assert_eq!(
            m.consumer_heartbeat(beat("x", 1, &Assignment::new()), &topics(1), 0),
            Err(GroupError::UnknownMemberId)
        );
        // Other groups are unaffected.
        assert_eq!(m.consumer_describe("g").expect("present").members.len(), 1);
    }

    #[test]
    fn group_max_size_is_enforced() {
        let mut m = GroupManager::new(GroupConfig {
            consumer_max_size: 2,
            ..GroupConfig::default()
        });
        Client::join(&mut m, "a", 1, 0);
        Client::join(&mut m, "b", 1, 0);
        assert_eq!(
            m.consumer_heartbeat(join("c"), &topics(1), 0),
            Err(GroupError::GroupMaxSizeReached)
        );
    }

    #[test]
    fn the_range_assignor_is_used_when_members_ask_for_it() {
        let mut m = manager();
        let mut r = join("a");
        r.server_assignor = Some("range".into());
        let resp = m.consumer_heartbeat(r, &topics(3), 0).expect("present");
        assert_eq!(resp.assignment.expect("present")[&topic_id()].len(), 3);
        assert_eq!(
            m.consumer_describe("g").expect("present").assignor_name,
            "range"
        );
    }

    #[test]
    fn new_partitions_rebalance_the_group() {
        let mut m = manager();
        let mut clients = vec![
            Client::join(&mut m, "a", 2, 0),
            Client::join(&mut m, "b", 2, 0),
        ];
        settle(&mut m, &mut clients, 2, 1);
        let epoch = m.consumer_describe("g").expect("present").group_epoch;
        settle(&mut m, &mut clients, 4, 2);
        assert_eq!(
            m.consumer_describe("g").expect("present").group_epoch,
            epoch + 1
        );
        assert_disjoint_complete(&clients, 4);
    }

    #[test]
    fn static_member_leaves_temporarily_and_its_replacement_takes_over() {
        let mut m = manager();
        let mut r = join("a1");
        r.instance_id = Some("i".into());
        let first = m
            .consumer_heartbeat(r.clone(), &topics(2), 0)
            .expect("present");
        let owned = first.assignment.clone().expect("present");
        // Another member id with the same instance id while a1 is active.
        let mut r2 = r.clone();
        r2.member_id = "a2".into();
        assert!(matches!(
            m.consumer_heartbeat(r2.clone(), &topics(2), 1),
            Err(GroupError::UnreleasedInstanceId(_))
        ));
        let mut leave = beat("a1", first.member_epoch, &owned);
        leave.member_epoch = LEAVE_GROUP_STATIC_MEMBER_EPOCH;
        leave.instance_id = Some("i".into());
        m.consumer_heartbeat(leave, &topics(2), 2).expect("present");
        let epoch = m.consumer_describe("g").expect("present").group_epoch;
        let resp = m.consumer_heartbeat(r2, &topics(2), 3).expect("present");
        assert_eq!(resp.assignment, Some(owned), "same partitions back");
        let d = m.consumer_describe("g").expect("present");
        assert_eq!(d.group_epoch, epoch, "no rebalance");
        assert_eq!(d.members.len(), 1);
        assert_eq!(d.members[0].member.member_id, "a2");
    }

    #[test]
    fn offset_commits_check_the_member_epoch() {
        let mut m = manager();
        let a = Client::join(&mut m, "a", 1, 0);
        let commit = |member: &str, epoch: i32| CommitRequest {
            group_id: "g".into(),
            generation_id: epoch,
            member_id: member.into(),
            group_instance_id: None,
            offsets: vec![(
                TopicPartition::new(T, 0),
                OffsetCommit {
                    offset: 5,
                    leader_epoch: -1,
                    metadata: None,
                },
            )],
            missing_group_error: GroupError::GroupIdNotFound,
        };
        assert!(m.commit_offsets(commit("a", a.epoch), 1).is_ok());
        assert_eq!(
            m.commit_offsets(commit("a", a.epoch + 1), 1)
                .expect_err("an error"),
            GroupError::StaleMemberEpoch
        );
        assert_eq!(
            m.commit_offsets(commit("zz", a.epoch), 1)
                .expect_err("an error"),
            GroupError::UnknownMemberId
        );
        assert_eq!(
            m.commit_offsets(commit("", -1), 1).expect_err("an error"),
            GroupError::UnknownMemberId,
            "a simple commit needs an empty group"
        );
        assert_eq!(
            m.fetch_offsets("g", None)[0]
                .1
                .as_ref()
                .expect("present")
                .offset,
            5
        );
    }

    #[test]
    fn records_replay_into_the_same_group() {
        let mut m = manager();
        let mut clients = vec![
            Client::join(&mut m, "a", 3, 0),
            Client::join(&mut m, "b", 3, 0),
        ];
        settle(&mut m, &mut clients, 3, 1);
        let records = m.take_records();
        assert!(!records.is_empty());
        let mut restored = manager();
        for r in &records {
            restored
                .replay(&r.key, r.value.as_deref(), 100)
                .expect("present");
        }
        let before = m.consumer_describe("g").expect("present");
        let after = restored.consumer_describe("g").expect("present");
        assert_eq!(before, after);
        assert_eq!(restored.list()[0].group_type, GroupType::Consumer);
        // Members keep heartbeating at their epoch after the restart.
        for c in clients.iter_mut() {
            c.beat(&mut restored, 3, 200);
        }
        assert_eq!(
            restored.consumer_describe("g").expect("present").state,
            GroupState::Stable
        );
        // A tombstone removes the membership.
        let t = consumer_record("g", None);
        restored.replay(&t.key, None, 300).expect("present");
        assert!(restored.consumer_describe("g").is_err());
    }

    #[test]
    fn an_empty_consumer_group_can_be_deleted_and_classic_joins_are_refused_while_busy() {
        let mut m = manager();
        let a = Client::join(&mut m, "a", 1, 0);
        assert_eq!(
            m.delete_groups(&["g".into()]),
            vec![Err(GroupError::NonEmptyGroup)]
        );
        let leave = ConsumerHeartbeat {
            member_epoch: LEAVE_GROUP_MEMBER_EPOCH,
            ..beat(&a.id, a.epoch, &Assignment::new())
        };
        m.consumer_heartbeat(leave, &topics(1), 1).expect("present");
        assert_eq!(m.list()[0].state, GroupState::Empty);
        assert_eq!(m.delete_groups(&["g".into()]), vec![Ok(())]);
        assert!(m.list().is_empty());
    }
}
