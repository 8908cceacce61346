//! Committed offsets: OffsetCommit validation as Kafka's coordinator does it,
//! OffsetFetch, OffsetDelete and the expiry of offsets after
//! `offsets.retention.minutes`.
//!
//! Who may commit (Kafka's `validateOffsetCommit`):
//!
//! ```text
//!  generation >= 0, or a member id, or an instance id ──► must be the current member
//!                                                        of the current generation
//!  otherwise (a "simple" commit) ──► only while the group has no members
//!  then by state: Empty, PreparingRebalance, Stable ──► stored
//!                 CompletingRebalance ──► REBALANCE_IN_PROGRESS
//! ```

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;

use super::coordinator::{ClassicGroup, GroupError, GroupManager, GroupRecord, GroupState};
use super::records::{OffsetCommitValue, RecordError, RecordKey};
use crate::partition::TopicPartition;

/// Per-partition outcomes of OffsetCommit and OffsetDelete.
pub type PartitionResults = Vec<(TopicPartition, Result<(), GroupError>)>;

/// What a group committed for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    /// -1: unknown.
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// Set only by old commits that carried their own retention.
    pub expire_timestamp_ms: Option<i64>,
}

/// One partition of an OffsetCommit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommit {
    pub offset: i64,
    pub leader_epoch: i32,
    /// `None` is stored as "" (Kafka's `NoMetadata`).
    pub metadata: Option<String>,
}

/// An OffsetCommit, in domain terms.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    pub group_id: String,
    /// -1: a commit outside group management.
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub offsets: Vec<(TopicPartition, OffsetCommit)>,
    /// What to answer when the group does not exist and the generation is set
    /// (ILLEGAL_GENERATION before OffsetCommit v9, GROUP_ID_NOT_FOUND from v9).
    pub missing_group_error: GroupError,
}

/// The committed offsets of one group.
#[derive(Debug, Default, Clone)]
pub struct OffsetStore {
    offsets: BTreeMap<TopicPartition, CommittedOffset>,
}

impl OffsetStore {
    pub fn get(&self, tp: &TopicPartition) -> Option<&CommittedOffset> {
        self.offsets.get(tp)
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&TopicPartition, &CommittedOffset)> {
        self.offsets.iter()
    }

    /// Stores an offset committed by a transaction's commit marker.
    pub(super) fn insert_committed(&mut self, tp: TopicPartition, committed: CommittedOffset) {
        self.offsets.insert(tp, committed);
    }

    /// Tombstones for every offset (when the group is deleted).
    pub(super) fn tombstones(&self, group_id: &str) -> Vec<GroupRecord> {
        self.offsets
            .keys()
            .map(|tp| offset_record(group_id, tp, None))
            .collect()
    }
}

fn offset_record(
    group_id: &str,
    tp: &TopicPartition,
    value: Option<&CommittedOffset>,
) -> GroupRecord {
    GroupRecord {
        group_id: group_id.to_string(),
        key: RecordKey::Offset {
            group: group_id.to_string(),
            topic: tp.topic.clone(),
            partition: tp.partition,
        }
        .encode(),
        value: value.map(|c| {
            OffsetCommitValue {
                offset: c.offset,
                leader_epoch: c.leader_epoch,
                metadata: c.metadata.clone(),
                commit_timestamp_ms: c.commit_timestamp_ms,
                expire_timestamp_ms: None,
            }
            .encode()
        }),
    }
}

/// The topics of a `consumer` protocol subscription (ConsumerProtocolSubscription
/// v0–v3 all start with `version int16, topics [string]`); `None` if unreadable.
pub fn subscribed_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let mut buf = metadata;
    let mut take = |n: usize| -> Option<&[u8]> {
        if buf.len() < n {
            return None;
        }
        let (head, tail) = buf.split_at(n);
        buf = tail;
        Some(head)
    };
    let _version = take(2)?;
    let count = take(4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))?;
    if count < 0 || count as usize > metadata.len() / 2 {
        return None;
    }
    let mut topics = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))?;
        if len < 0 {
            return None;
        }
        let name = take(len as usize)?;
        topics.push(String::from_utf8(name.to_vec()).ok()?);
    }
    Some(topics)
}

/// Topics the members of a `consumer` group subscribe to; `None` when unknown
/// (another protocol type, or a subscription that does not decode).
fn group_subscriptions(group: &ClassicGroup) -> Option<HashSet<String>> {
    if let Some(consumer) = &group.consumer {
        return Some(consumer.subscribed_topic_names());
    }
    if group.protocol_type.as_deref() != Some("consumer") {
        return None;
    }
    let mut topics = HashSet::new();
    for metadata in group.selected_metadata() {
        topics.extend(subscribed_topics(&metadata)?);
    }
    Some(topics)
}

impl GroupManager {
    /// OffsetCommit. The outer error applies to every partition.
    pub fn commit_offsets(
        &mut self,
        req: CommitRequest,
        now_ms: i64,
    ) -> Result<PartitionResults, GroupError> {
        if !self.groups.contains_key(&req.group_id) {
            if req.generation_id >= 0 {
                return Err(req.missing_group_error);
            }
            // A group that uses Kafka only to store offsets.
            self.get_or_create(&req.group_id, now_ms)?;
        }
        let max_metadata = self.config.offset_metadata_max_bytes;
        let group = self
            .groups
            .get_mut(&req.group_id)
            .ok_or(GroupError::GroupIdNotFound)?;
        if group.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        if let Some(consumer) = &group.consumer {
            // KIP-848 groups check the member epoch instead of a generation.
            consumer.validate_offset_commit(&req.member_id, req.generation_id)?;
        } else {
            let as_member = req.generation_id >= 0
                || !req.member_id.is_empty()
                || req.group_instance_id.is_some();
            if as_member {
                group.check_committer(
                    &req.member_id,
                    req.group_instance_id.as_ref(),
                    req.generation_id,
                )?;
            } else if group.state != GroupState::Empty {
                // Only members may commit while the group has members.
                return Err(GroupError::UnknownMemberId);
            }
            match group.state {
                GroupState::CompletingRebalance => return Err(GroupError::RebalanceInProgress),
                GroupState::Stable | GroupState::PreparingRebalance => {
                    // A commit counts as a sign of life, as in Kafka.
                    group.touch_member(&req.member_id, now_ms);
                }
                GroupState::Empty | GroupState::Dead => {}
                GroupState::Assigning | GroupState::Reconciling => {}
            }
        }
        let mut results = Vec::with_capacity(req.offsets.len());
        let mut records = Vec::new();
        for (tp, commit) in req.offsets {
            let metadata = commit.metadata.unwrap_or_default();
            if metadata.len() > max_metadata {
                results.push((tp, Err(GroupError::OffsetMetadataTooLarge)));
                continue;
            }
            let committed = CommittedOffset {
                offset: commit.offset,
                leader_epoch: commit.leader_epoch,
                metadata,
                commit_timestamp_ms: now_ms,
                expire_timestamp_ms: None,
            };
            records.push(offset_record(&req.group_id, &tp, Some(&committed)));
            group.offsets.offsets.insert(tp.clone(), committed);
            results.push((tp, Ok(())));
        }
        for r in records {
            self.emit(r);
        }
        Ok(results)
    }

    /// OffsetFetch: the committed offset of each partition asked for (`None`: every
    /// partition the group has committed), `None` where nothing is committed.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[TopicPartition]>,
    ) -> Vec<(TopicPartition, Option<CommittedOffset>)> {
        let group = self.groups.get(group_id);
        match partitions {
            Some(ps) => ps
                .iter()
                .map(|tp| (tp.clone(), group.and_then(|g| g.offsets.get(tp).cloned())))
                .collect(),
            None => group
                .map(|g| {
                    g.offsets
                        .iter()
                        .map(|(tp, c)| (tp.clone(), Some(c.clone())))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// OffsetDelete. Offsets of topics the group's members subscribe to stay.
    pub fn delete_offsets(
        &mut self,
        group_id: &str,
        partitions: &[TopicPartition],
    ) -> Result<PartitionResults, GroupError> {
        let group = self
            .groups
            .get_mut(group_id)
            .ok_or(GroupError::GroupIdNotFound)?;
        let subscribed: Option<HashSet<String>> = match group.state {
            GroupState::Dead => return Err(GroupError::GroupIdNotFound),
            GroupState::Empty => Some(HashSet::new()),
            _ if group.protocol_type.as_deref() == Some("consumer") => {
                // Undecodable subscriptions count as subscribed to everything.
                group_subscriptions(group)
            }
            _ => return Err(GroupError::NonEmptyGroup),
        };
        let mut results = Vec::with_capacity(partitions.len());
        let mut records = Vec::new();
        for tp in partitions {
            let is_subscribed = subscribed.as_ref().is_none_or(|s| s.contains(&tp.topic));
            if is_subscribed {
                results.push((tp.clone(), Err(GroupError::GroupSubscribedToTopic)));
                continue;
            }
            if group.offsets.offsets.remove(tp).is_some() {
                records.push(offset_record(group_id, tp, None));
            }
            results.push((tp.clone(), Ok(())));
        }
        for r in records {
            self.emit(r);
        }
        Ok(results)
    }

    /// Kafka's offset expiry: offsets of an empty group expire `retention` after it
    /// became empty; a Stable consumer group's offsets of topics nobody subscribes
    /// to expire `retention` after their commit; simple groups' offsets `retention`
    /// after their commit. A group left empty and without offsets is removed.
    /// Returns how many offsets expired.
    pub fn expire_offsets(&mut self, now_ms: i64) -> usize {
        let retention = self.config.offsets_retention_ms;
        let mut records = Vec::new();
        let mut removed = 0;
        let mut dead = Vec::new();
        for (id, group) in self.groups.iter_mut() {
            let expired: Vec<TopicPartition> = {
                let by = |base: &dyn Fn(&CommittedOffset) -> i64,
                          keep: &HashSet<String>|
                 -> Vec<TopicPartition> {
                    group
                        .offsets
                        .iter()
                        .filter(|(tp, c)| {
                            !keep.contains(&tp.topic)
                                && match c.expire_timestamp_ms {
                                    Some(expire) => now_ms >= expire,
                                    None => now_ms - base(c) >= retention,
                                }
                        })
                        .map(|(tp, _)| tp.clone())
                        .collect()
                };
                let none = HashSet::new();
                match (&group.protocol_type, group.state) {
                    (Some(_), GroupState::Empty) => {
                        let since = group.state_timestamp_ms;
                        by(&|_| since, &none)
                    }
                    (None, _) => by(&|c| c.commit_timestamp_ms, &none),
                    (Some(pt), GroupState::Stable) if pt == "consumer" => {
                        match group_subscriptions(group) {
                            Some(topics) => by(&|c| c.commit_timestamp_ms, &topics),
                            None => Vec::new(),
                        }
                    }
                    _ => Vec::new(),
                }
            };
            for tp in expired {
                group.offsets.offsets.remove(&tp);
                records.push(offset_record(id, &tp, None));
                removed += 1;
            }
            if group.state == GroupState::Empty
                && group.offsets.is_empty()
                && group.members.is_empty()
                && group.pending_members.is_empty()
            {
                dead.push(id.clone());
            }
        }
        for id in dead {
            if let Some(mut g) = self.groups.remove(&id) {
                g.state = GroupState::Dead;
                tracing::info!(group = %id, "group is empty and has no offsets left; removing it");
                records.extend(g.tombstone_records());
            }
        }
        if removed > 0 {
            tracing::info!(offsets = removed, "expired committed offsets");
        }
        for r in records {
            self.emit(r);
        }
        removed
    }

    pub(super) fn replay_offset(
        &mut self,
        group_id: String,
        topic: String,
        partition: i32,
        value: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<(), RecordError> {
        let tp = TopicPartition::new(topic, partition);
        match value {
            None => {
                if let Some(g) = self.groups.get_mut(&group_id) {
                    g.offsets.offsets.remove(&tp);
                }
            }
            Some(v) => {
                let v = OffsetCommitValue::decode(v)?;
                let g = self
                    .groups
                    .entry(group_id.clone())
                    .or_insert_with(|| ClassicGroup::new(group_id, now_ms));
                g.offsets.offsets.insert(
                    tp,
                    CommittedOffset {
                        offset: v.offset,
                        leader_epoch: v.leader_epoch,
                        metadata: v.metadata,
                        commit_timestamp_ms: v.commit_timestamp_ms,
                        expire_timestamp_ms: v.expire_timestamp_ms,
                    },
                );
            }
        }
        Ok(())
    }
}

/// Encodes a `consumer` protocol subscription (v0) for tests and tools.
pub fn encode_subscription(topics: &[&str]) -> Bytes {
    use bytes::BufMut;
    let mut buf = bytes::BytesMut::new();
    buf.put_i16(0);
    buf.put_i32(topics.len() as i32);
    for t in topics {
        buf.put_i16(t.len() as i16);
        buf.put_slice(t.as_bytes());
    }
    buf.put_i32(-1);
    buf.freeze()
}
