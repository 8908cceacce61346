//! Transactional offset commits (TxnOffsetCommit), as Kafka's group coordinator
//! keeps them: written at once to `__consumer_offsets` as a transactional batch of
//! the producer, held aside as pending, and made visible to OffsetFetch only when
//! the transaction's commit marker reaches that partition (an abort drops them).
//!
//! ```text
//!  TxnOffsetCommit ──► validate (member, generation) ──► transactional batch
//!                                                       (producer id, epoch)
//!                      pending[producer id][group][partition]
//!  commit marker ──► pending → committed offsets      abort marker ──► dropped
//!  startup: records of a producer wait for its marker in the same partition;
//!           still open at the end: pending (the transaction coordinator ends them)
//! ```

use std::collections::BTreeMap;

use bytes::Bytes;

use super::coordinator::{GroupError, GroupManager, GroupRecord, GroupState};
use super::offsets::{CommittedOffset, OffsetCommit, PartitionResults};
use super::records::{OffsetCommitValue, RecordError, RecordKey};
use crate::partition::TopicPartition;

/// Pending transactional offsets: producer id → group → partition → offset.
pub type PendingTxnOffsets =
    BTreeMap<i64, BTreeMap<String, BTreeMap<TopicPartition, CommittedOffset>>>;

/// A TxnOffsetCommit, in domain terms.
#[derive(Debug, Clone)]
pub struct TxnCommitRequest {
    pub group_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// -1: not given (TxnOffsetCommit before v3).
    pub generation_id: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub offsets: Vec<(TopicPartition, OffsetCommit)>,
}

/// One entry read back from a `__consumer_offsets` partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredEntry {
    /// `producer_id` is set for records of a transactional batch.
    Record {
        key: Bytes,
        value: Option<Bytes>,
        producer_id: Option<i64>,
    },
    /// A commit or abort marker of a producer's transaction.
    Marker { producer_id: i64, commit: bool },
}

impl GroupManager {
    /// Validates a TxnOffsetCommit. Returns the per-partition results, the records
    /// to append transactionally and the offsets to stage once they are appended.
    #[allow(clippy::type_complexity)]
    pub fn txn_commit_offsets(
        &mut self,
        req: &TxnCommitRequest,
        now_ms: i64,
    ) -> Result<
        (
            PartitionResults,
            Vec<GroupRecord>,
            Vec<(TopicPartition, CommittedOffset)>,
        ),
        GroupError,
    > {
        if !self.groups.contains_key(&req.group_id) {
            if req.generation_id >= 0 {
                return Err(GroupError::IllegalGeneration);
            }
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
        // Kafka validates the member only when the client sent one (v3+).
        if !req.member_id.is_empty() || req.generation_id >= 0 {
            group.check_committer(
                &req.member_id,
                req.group_instance_id.as_ref(),
                req.generation_id,
            )?;
        }
        let mut results = Vec::with_capacity(req.offsets.len());
        let mut records = Vec::new();
        let mut staged = Vec::new();
        for (tp, commit) in &req.offsets {
            let metadata = commit.metadata.clone().unwrap_or_default();
            if metadata.len() > max_metadata {
                results.push((tp.clone(), Err(GroupError::OffsetMetadataTooLarge)));
                continue;
            }
            let committed = CommittedOffset {
                offset: commit.offset,
                leader_epoch: commit.leader_epoch,
                metadata,
                commit_timestamp_ms: now_ms,
                expire_timestamp_ms: None,
            };
            records.push(offset_record(&req.group_id, tp, &committed));
            staged.push((tp.clone(), committed));
            results.push((tp.clone(), Ok(())));
        }
        Ok((results, records, staged))
    }

    /// Holds appended transactional offsets until their marker.
    pub fn stage_txn_offsets(
        &mut self,
        producer_id: i64,
        group_id: &str,
        offsets: Vec<(TopicPartition, CommittedOffset)>,
    ) {
        let pending = self
            .pending_txn_offsets
            .entry(producer_id)
            .or_default()
            .entry(group_id.to_string())
            .or_default();
        for (tp, c) in offsets {
            pending.insert(tp, c);
        }
    }

    /// A transaction's marker reached `__consumer_offsets`: its offsets become
    /// committed (commit) or are dropped (abort). Returns how many were pending.
    pub fn complete_txn_offsets(&mut self, producer_id: i64, commit: bool) -> usize {
        let Some(groups) = self.pending_txn_offsets.remove(&producer_id) else {
            return 0;
        };
        let mut count = 0;
        for (group_id, offsets) in groups {
            count += offsets.len();
            if !commit {
                continue;
            }
            let Some(group) = self.groups.get_mut(&group_id) else {
                continue;
            };
            for (tp, c) in offsets {
                group.offsets.insert_committed(tp, c);
            }
        }
        count
    }

    /// Whether an open transaction holds an offset of `tp` for the group
    /// (OffsetFetch answers UNSTABLE_OFFSET_COMMIT to clients that require stable offsets).
    pub fn has_pending_txn_offset(&self, group_id: &str, tp: &TopicPartition) -> bool {
        self.pending_txn_offsets
            .values()
            .any(|g| g.get(group_id).is_some_and(|o| o.contains_key(tp)))
    }

    /// Replays one partition's entries at startup. Returns the records seen.
    pub fn replay_entries(&mut self, entries: Vec<StoredEntry>, now_ms: i64) -> usize {
        let mut open: BTreeMap<i64, Vec<(Bytes, Option<Bytes>)>> = BTreeMap::new();
        let mut count = 0;
        for entry in entries {
            match entry {
                StoredEntry::Record {
                    key,
                    value,
                    producer_id: None,
                } => {
                    count += 1;
                    if let Err(e) = self.replay(&key, value.as_deref(), now_ms) {
                        tracing::warn!(error = %e, "skipping a record of __consumer_offsets");
                    }
                }
                StoredEntry::Record {
                    key,
                    value,
                    producer_id: Some(pid),
                } => {
                    count += 1;
                    open.entry(pid).or_default().push((key, value));
                }
                StoredEntry::Marker {
                    producer_id,
                    commit,
                } => {
                    let records = open.remove(&producer_id).unwrap_or_default();
                    if commit {
                        for (key, value) in records {
                            if let Err(e) = self.replay(&key, value.as_deref(), now_ms) {
                                tracing::warn!(error = %e, "skipping a transactional record of __consumer_offsets");
                            }
                        }
                    }
                }
            }
        }
        for (pid, records) in open {
            for (key, value) in records {
                if let Err(e) = self.stage_replayed(pid, &key, value.as_deref()) {
                    tracing::warn!(error = %e, "skipping a pending transactional offset");
                }
            }
        }
        count
    }

    fn stage_replayed(
        &mut self,
        producer_id: i64,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), RecordError> {
        let RecordKey::Offset {
            group,
            topic,
            partition,
        } = RecordKey::decode(key)?
        else {
            return Ok(());
        };
        let Some(value) = value else {
            return Ok(());
        };
        let v = OffsetCommitValue::decode(value)?;
        let committed = CommittedOffset {
            offset: v.offset,
            leader_epoch: v.leader_epoch,
            metadata: v.metadata,
            commit_timestamp_ms: v.commit_timestamp_ms,
            expire_timestamp_ms: v.expire_timestamp_ms,
        };
        if !self.groups.contains_key(&group) {
            let _ = self.get_or_create(&group, v.commit_timestamp_ms);
        }
        self.stage_txn_offsets(
            producer_id,
            &group,
            vec![(TopicPartition::new(topic, partition), committed)],
        );
        Ok(())
    }
}

fn offset_record(group_id: &str, tp: &TopicPartition, c: &CommittedOffset) -> GroupRecord {
    GroupRecord {
        group_id: group_id.to_string(),
        key: RecordKey::Offset {
            group: group_id.to_string(),
            topic: tp.topic.clone(),
            partition: tp.partition,
        }
        .encode(),
        value: Some(
            OffsetCommitValue {
                offset: c.offset,
                leader_epoch: c.leader_epoch,
                metadata: c.metadata.clone(),
                commit_timestamp_ms: c.commit_timestamp_ms,
                expire_timestamp_ms: None,
            }
            .encode(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::GroupConfig;

    fn manager() -> GroupManager {
        GroupManager::new(GroupConfig::from_broker(
            &crate::config::BrokerConfig::default(),
        ))
    }

    fn req(pid: i64, offset: i64) -> TxnCommitRequest {
        TxnCommitRequest {
            group_id: "g".into(),
            producer_id: pid,
            producer_epoch: 0,
            generation_id: -1,
            member_id: String::new(),
            group_instance_id: None,
            offsets: vec![(
                TopicPartition::new("in", 0),
                OffsetCommit {
                    offset,
                    leader_epoch: -1,
                    metadata: None,
                },
            )],
        }
    }

    #[test]
    fn offsets_become_visible_only_at_commit() {
        let mut m = manager();
        let (results, records, staged) = m.txn_commit_offsets(&req(7, 10), 1_000).expect("commit");
        assert!(results.iter().all(|(_, r)| r.is_ok()));
        assert_eq!(records.len(), 1);
        m.stage_txn_offsets(7, "g", staged);
        let tp = TopicPartition::new("in", 0);
        assert_eq!(
            m.fetch_offsets("g", Some(std::slice::from_ref(&tp)))[0].1,
            None
        );
        assert!(m.has_pending_txn_offset("g", &tp));
        assert_eq!(m.complete_txn_offsets(7, true), 1);
        assert_eq!(
            m.fetch_offsets("g", Some(std::slice::from_ref(&tp)))[0]
                .1
                .as_ref()
                .map(|c| c.offset),
            Some(10)
        );
        let (_, _, staged) = m.txn_commit_offsets(&req(7, 20), 1_000).expect("commit");
        m.stage_txn_offsets(7, "g", staged);
        m.complete_txn_offsets(7, false);
        assert_eq!(
            m.fetch_offsets("g", Some(&[tp]))[0]
                .1
                .as_ref()
                .map(|c| c.offset),
            Some(10)
        );
    }

    #[test]
    fn replay_applies_committed_and_keeps_open_transactions_pending() {
        let mut m = manager();
        let (_, committed, _) = m.txn_commit_offsets(&req(1, 5), 1_000).expect("commit");
        let (_, aborted, _) = m.txn_commit_offsets(&req(2, 6), 1_000).expect("commit");
        let (_, open, _) = m.txn_commit_offsets(&req(3, 7), 1_000).expect("commit");
        let rec = |r: &GroupRecord, pid| StoredEntry::Record {
            key: r.key.clone(),
            value: r.value.clone(),
            producer_id: Some(pid),
        };
        let entries = vec![
            rec(&committed[0], 1),
            rec(&aborted[0], 2),
            rec(&open[0], 3),
            StoredEntry::Marker {
                producer_id: 2,
                commit: false,
            },
            StoredEntry::Marker {
                producer_id: 1,
                commit: true,
            },
        ];
        let mut fresh = manager();
        fresh.replay_entries(entries, 1_000);
        let tp = TopicPartition::new("in", 0);
        assert_eq!(
            fresh.fetch_offsets("g", Some(std::slice::from_ref(&tp)))[0]
                .1
                .as_ref()
                .map(|c| c.offset),
            Some(5)
        );
        assert!(fresh.has_pending_txn_offset("g", &tp));
        fresh.complete_txn_offsets(3, true);
        assert_eq!(
            fresh.fetch_offsets("g", Some(&[tp]))[0]
                .1
                .as_ref()
                .map(|c| c.offset),
            Some(7)
        );
    }
}
