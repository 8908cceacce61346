//! The state machine ([`RaftStateMachine`]): committed proposals applied to a
//! [`MetadataImage`], and snapshots of that image.
//!
//! ```text
//!   committed entries ──► apply ──► image (Arc, copy-on-write) ──► watch ──► subscribers
//!                                      │
//!                                      └──► waiter of a local `propose` (image right after it)
//! ```
//!
//! The image lives in memory. It is rebuilt at start from the last snapshot
//! (`snapshot.json`, fsynced) plus the committed log entries after it, which
//! openraft re-applies. Blank and membership entries only move the applied
//! pointer; they never touch the image.
//!
//! `MetadataImage` has no serde form in ferry-core, so a snapshot stores a mirror
//! of it ([`ImageState`]), converted field by field with exhaustive destructuring:
//! a field added to the image fails to compile here until the snapshot carries it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_core::metadata::{BrokerMetadata, MetadataImage, PartitionMetadata, TopicMetadata};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftLogId, RaftSnapshotBuilder, StorageIOError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::durable;
use crate::types::{
    Entry, LogId, ProposalApplied, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};

const SNAPSHOT_FILE: &str = "snapshot.json";
/// How many applied proposal ids are remembered to skip a retried duplicate.
const RECENT_REQUESTS_MAX: usize = 10_000;

/// Shared between the state machine (owned by openraft) and the quorum.
pub(crate) struct SmShared {
    image_tx: watch::Sender<Arc<MetadataImage>>,
    /// `propose` calls on this node waiting for their entry to be applied here.
    waiters: Mutex<HashMap<Uuid, oneshot::Sender<Arc<MetadataImage>>>>,
}

impl SmShared {
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<MetadataImage>> {
        self.image_tx.subscribe()
    }

    /// Registers a waiter for proposal `id`; the guard removes it when dropped.
    pub(crate) fn wait_for(
        self: &Arc<Self>,
        id: Uuid,
    ) -> (WaiterGuard, oneshot::Receiver<Arc<MetadataImage>>) {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().insert(id, tx);
        (
            WaiterGuard {
                shared: self.clone(),
                id,
            },
            rx,
        )
    }

    /// Fails every waiting `propose` (their senders are dropped).
    pub(crate) fn clear_waiters(&self) {
        self.waiters.lock().clear();
    }

    fn notify(&self, id: &Uuid, image: &Arc<MetadataImage>) {
        if let Some(tx) = self.waiters.lock().remove(id) {
            let _ = tx.send(image.clone());
        }
    }
}

pub(crate) struct WaiterGuard {
    shared: Arc<SmShared>,
    id: Uuid,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        self.shared.waiters.lock().remove(&self.id);
    }
}

/// Proposal ids applied lately, oldest first.
#[derive(Clone, Default)]
struct RecentRequests {
    order: VecDeque<Uuid>,
    set: HashSet<Uuid>,
}

impl RecentRequests {
    fn contains(&self, id: &Uuid) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: Uuid) {
        if self.set.insert(id) {
            self.order.push_back(id);
            while self.order.len() > RECENT_REQUESTS_MAX {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn from_list(ids: Vec<Uuid>) -> Self {
        let mut recent = RecentRequests::default();
        for id in ids {
            recent.insert(id);
        }
        recent
    }
}

/// What a snapshot holds besides openraft's meta.
#[derive(Serialize, Deserialize)]
struct SnapshotState {
    image: ImageState,
    recent_requests: Vec<Uuid>,
}

/// The snapshot file: meta and state together, so one atomic rename installs both.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    state: SnapshotState,
}

#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

impl StoredSnapshot {
    fn to_snapshot(&self) -> Snapshot {
        Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(self.data.clone())),
        }
    }
}

/// The state machine handed to openraft.
pub(crate) struct StateMachine {
    dir: PathBuf,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    image: Arc<MetadataImage>,
    recent: RecentRequests,
    /// Shared with snapshot builders, which replace it when they finish.
    snapshot: Arc<SnapshotSlot>,
    shared: Arc<SmShared>,
}

/// Builds a snapshot from a copy of the state taken when openraft asked for it.
pub(crate) struct SnapshotBuilder {
    dir: PathBuf,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    image: Arc<MetadataImage>,
    recent: Vec<Uuid>,
    snapshot: Arc<SnapshotSlot>,
}

/// The current snapshot, shared by the state machine and its builders.
#[derive(Default)]
struct SnapshotSlot {
    /// In memory, for `get_current_snapshot`.
    current: Mutex<Option<StoredSnapshot>>,
    /// Held while `snapshot.json` is written, so that a builder that finishes late
    /// cannot replace a newer snapshot installed meanwhile, on disk or in memory.
    write: Mutex<()>,
}

impl SnapshotSlot {
    /// Makes `file` the current snapshot, durably, unless a newer one already is
    /// (blocking). Returns the snapshot data either way.
    fn store(&self, dir: &Path, file: SnapshotFile) -> io::Result<Vec<u8>> {
        let data = serde_json::to_vec(&file.state).map_err(io::Error::other)?;
        let _writing = self.write.lock();
        let newer = self
            .current
            .lock()
            .as_ref()
            .is_some_and(|c| c.meta.last_log_id > file.meta.last_log_id);
        if !newer {
            durable::write_json(&dir.join(SNAPSHOT_FILE), &file, true)?;
            *self.current.lock() = Some(StoredSnapshot {
                meta: file.meta,
                data: data.clone(),
            });
        }
        Ok(data)
    }
}

fn snapshot_write_err(e: &io::Error) -> StorageError {
    StorageIOError::write_snapshot(None, e).into()
}

impl StateMachine {
    /// Loads the last snapshot from `dir` (blocking).
    pub(crate) fn open(dir: &Path) -> io::Result<(StateMachine, Arc<SmShared>)> {
        let mut sm_state = (
            None,
            StoredMembership::default(),
            MetadataImage::default(),
            RecentRequests::default(),
        );
        let mut current = None;
        if let Some(file) = durable::read_json::<SnapshotFile>(&dir.join(SNAPSHOT_FILE))? {
            let data = serde_json::to_vec(&file.state).map_err(io::Error::other)?;
            sm_state = (
                file.meta.last_log_id,
                file.meta.last_membership.clone(),
                file.state.image.into_image(),
                RecentRequests::from_list(file.state.recent_requests),
            );
            current = Some(StoredSnapshot {
                meta: file.meta,
                data,
            });
        }
        let (last_applied, membership, image, recent) = sm_state;
        let image = Arc::new(image);
        let (image_tx, _) = watch::channel(image.clone());
        let shared = Arc::new(SmShared {
            image_tx,
            waiters: Mutex::new(HashMap::new()),
        });
        Ok((
            StateMachine {
                dir: dir.to_path_buf(),
                last_applied,
                membership,
                image,
                recent,
                snapshot: Arc::new(SnapshotSlot {
                    current: Mutex::new(current),
                    write: Mutex::new(()),
                }),
                shared: shared.clone(),
            },
            shared,
        ))
    }
}

/// [`SnapshotSlot::store`] off the runtime threads.
async fn persist_snapshot(
    dir: PathBuf,
    slot: Arc<SnapshotSlot>,
    file: SnapshotFile,
) -> io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || slot.store(&dir, file))
        .await
        .map_err(io::Error::other)?
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let snapshot_id = match self.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, Uuid::new_v4().simple()),
            None => format!("empty-{}", Uuid::new_v4().simple()),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let file = SnapshotFile {
            meta: meta.clone(),
            state: SnapshotState {
                image: ImageState::from_image(&self.image),
                recent_requests: std::mem::take(&mut self.recent),
            },
        };
        let data = persist_snapshot(self.dir.clone(), self.snapshot.clone(), file)
            .await
            .map_err(|e| snapshot_write_err(&e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ProposalApplied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        let mut changed = false;
        for entry in entries {
            self.last_applied = Some(*entry.get_log_id());
            match entry.payload {
                EntryPayload::Blank => replies.push(ProposalApplied::default()),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    replies.push(ProposalApplied::default());
                }
                EntryPayload::Normal(proposal) => {
                    let duplicate = self.recent.contains(&proposal.request_id);
                    // A controller decision appended outside the term it was
                    // made in (its controller was deposed) takes no effect.
                    let stale = proposal.only_in.is_some_and(|l| !l.appended(&entry.log_id));
                    if stale {
                        tracing::warn!(log_id = %entry.log_id, decided_in = ?proposal.only_in, "dropping a controller decision appended outside its term");
                    }
                    if !duplicate && !stale {
                        let image = Arc::make_mut(&mut self.image);
                        for record in &proposal.records {
                            image.apply(record);
                        }
                        self.recent.insert(proposal.request_id);
                        changed = true;
                    }
                    self.shared.notify(&proposal.request_id, &self.image);
                    replies.push(ProposalApplied { duplicate });
                }
            }
        }
        if changed {
            self.shared.image_tx.send_replace(self.image.clone());
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            dir: self.dir.clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            image: self.image.clone(),
            recent: self.recent.order.iter().copied().collect(),
            snapshot: self.snapshot.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state: SnapshotState = serde_json::from_slice(&data).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                &io::Error::new(io::ErrorKind::InvalidData, e),
            ))
        })?;
        let recent_ids = state.recent_requests.clone();
        let image = Arc::new(state.image.clone().into_image());
        persist_snapshot(
            self.dir.clone(),
            self.snapshot.clone(),
            SnapshotFile {
                meta: meta.clone(),
                state,
            },
        )
        .await
        .map_err(|e| snapshot_write_err(&e))?;

        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.image = image;
        self.recent = RecentRequests::from_list(recent_ids);
        // A local proposal the snapshot covers is applied as far as this node can tell.
        for id in &self.recent.order {
            self.shared.notify(id, &self.image);
        }
        self.shared.image_tx.send_replace(self.image.clone());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self
            .snapshot
            .current
            .lock()
            .as_ref()
            .map(StoredSnapshot::to_snapshot))
    }
}

// ---- the image's serde mirror ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ImageState {
    brokers: Vec<BrokerState>,
    topics: Vec<TopicState>,
    /// Kept as is (not derived from `topics`) so the rebuilt image is identical.
    topic_names: Vec<(Uuid, String)>,
    broker_configs: BTreeMap<String, String>,
    /// Fields added after the first snapshot format default when absent.
    #[serde(default)]
    fenced_brokers: BTreeSet<i32>,
    /// Per-broker dynamic settings, by node id.
    #[serde(default)]
    node_broker_configs: BTreeMap<i32, BTreeMap<String, String>>,
    producer_ids_end: i64,
    /// Snapshots written before the quorum kept a cluster id have none.
    #[serde(default)]
    cluster_id: Option<String>,
    offset: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct BrokerState {
    node_id: i32,
    host: String,
    port: i32,
    rack: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TopicState {
    name: String,
    topic_id: Uuid,
    configs: BTreeMap<String, String>,
    partitions: Vec<PartitionState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PartitionState {
    partition: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    leader: i32,
    leader_epoch: i32,
    /// Snapshots written before partition epochs existed read as 0.
    #[serde(default)]
    partition_epoch: i32,
    #[serde(default)]
    adding_replicas: Vec<i32>,
    #[serde(default)]
    removing_replicas: Vec<i32>,
}

impl ImageState {
    pub(crate) fn from_image(image: &MetadataImage) -> ImageState {
        let MetadataImage {
            brokers,
            topics,
            topic_names,
            broker_configs,
            node_broker_configs,
            fenced_brokers,
            producer_ids_end,
            cluster_id,
            offset,
        } = image;
        ImageState {
            brokers: brokers
                .values()
                .map(|b| {
                    let BrokerMetadata {
                        node_id,
                        host,
                        port,
                        rack,
                    } = b;
                    BrokerState {
                        node_id: *node_id,
                        host: host.clone(),
                        port: *port,
                        rack: rack.clone(),
                    }
                })
                .collect(),
            topics: topics
                .values()
                .map(|t| {
                    let TopicMetadata {
                        name,
                        topic_id,
                        configs,
                        partitions,
                    } = t;
                    TopicState {
                        name: name.clone(),
                        topic_id: *topic_id,
                        configs: configs.clone(),
                        partitions: partitions
                            .iter()
                            .map(|p| {
                                let PartitionMetadata {
                                    partition,
                                    replicas,
                                    isr,
                                    leader,
                                    leader_epoch,
                                    partition_epoch,
                                    adding_replicas,
                                    removing_replicas,
                                } = p;
                                PartitionState {
                                    partition: *partition,
                                    replicas: replicas.clone(),
                                    isr: isr.clone(),
                                    leader: *leader,
                                    leader_epoch: *leader_epoch,
                                    partition_epoch: *partition_epoch,
                                    adding_replicas: adding_replicas.clone(),
                                    removing_replicas: removing_replicas.clone(),
                                }
                            })
                            .collect(),
                    }
                })
                .collect(),
            topic_names: topic_names
                .iter()
                .map(|(id, name)| (*id, name.clone()))
                .collect(),
            broker_configs: broker_configs.clone(),
            fenced_brokers: fenced_brokers.clone(),
            node_broker_configs: node_broker_configs.clone(),
            producer_ids_end: *producer_ids_end,
            cluster_id: cluster_id.clone(),
            offset: *offset,
        }
    }

    pub(crate) fn into_image(self) -> MetadataImage {
        MetadataImage {
            brokers: self
                .brokers
                .into_iter()
                .map(|b| {
                    (
                        b.node_id,
                        BrokerMetadata {
                            node_id: b.node_id,
                            host: b.host,
                            port: b.port,
                            rack: b.rack,
                        },
                    )
                })
                .collect(),
            topics: self
                .topics
                .into_iter()
                .map(|t| {
                    (
                        t.name.clone(),
                        TopicMetadata {
                            name: t.name,
                            topic_id: t.topic_id,
                            configs: t.configs,
                            partitions: t
                                .partitions
                                .into_iter()
                                .map(|p| PartitionMetadata {
                                    partition: p.partition,
                                    replicas: p.replicas,
                                    isr: p.isr,
                                    leader: p.leader,
                                    leader_epoch: p.leader_epoch,
                                    partition_epoch: p.partition_epoch,
                                    adding_replicas: p.adding_replicas,
                                    removing_replicas: p.removing_replicas,
                                })
                                .collect(),
                        },
                    )
                })
                .collect(),
            topic_names: self.topic_names.into_iter().collect(),
            broker_configs: self.broker_configs,
            node_broker_configs: self.node_broker_configs,
            fenced_brokers: self.fenced_brokers,
            producer_ids_end: self.producer_ids_end,
            cluster_id: self.cluster_id,
            offset: self.offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::metadata::MetadataRecord;

    /// A normal entry appended by `leader` (term, node) carrying `proposal`.
    fn entry(term: u64, node_id: u64, index: u64, proposal: crate::types::Proposal) -> Entry {
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(term, node_id), index),
            payload: EntryPayload::Normal(proposal),
        }
    }

    #[test]
    fn a_decision_appended_outside_its_term_takes_no_effect() {
        use crate::types::{Leadership, Proposal};
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut sm, shared) = StateMachine::open(dir.path()).expect("open");
        let images = shared.subscribe();
        let create = |name: &str, only_in: Option<Leadership>| Proposal {
            request_id: Uuid::new_v4(),
            records: vec![MetadataRecord::TopicCreated {
                name: name.into(),
                topic_id: Uuid::new_v4(),
                configs: BTreeMap::new(),
            }],
            only_in,
        };
        let old = Leadership {
            term: 2,
            node_id: 1,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime
            .block_on(sm.apply([
                // Appended in its term: applies.
                entry(2, 1, 1, create("in-term", Some(old))),
                // The deposed controller's decision, appended (forwarded) by the
                // next leader in its term: every node ignores it.
                entry(3, 2, 2, create("stale", Some(old))),
                // A proposal that is no controller decision applies in any term.
                entry(3, 2, 3, create("any-term", None)),
            ]))
            .expect("apply");
        let image = images.borrow().clone();
        assert!(image.topic("in-term").is_some());
        assert!(image.topic("stale").is_none(), "a stale decision applied");
        assert!(image.topic("any-term").is_some());
    }

    #[test]
    fn image_survives_the_snapshot_mirror() {
        let id = Uuid::new_v4();
        let mut image = MetadataImage::default();
        for record in [
            MetadataRecord::BrokerRegistered {
                node_id: 1,
                host: "h".into(),
                port: 9092,
                rack: Some("r".into()),
            },
            MetadataRecord::TopicCreated {
                name: "t".into(),
                topic_id: id,
                configs: BTreeMap::from([("retention.ms".into(), "5".into())]),
            },
            MetadataRecord::PartitionCreated {
                topic_id: id,
                partition: 0,
                replicas: vec![1, 2],
                isr: vec![1],
                leader: 1,
                leader_epoch: 3,
            },
            MetadataRecord::BrokerConfigChanged {
                node_id: None,
                name: "x".into(),
                value: Some("y".into()),
            },
            MetadataRecord::BrokerConfigChanged {
                node_id: Some(2),
                name: "x".into(),
                value: Some("z".into()),
            },
            MetadataRecord::ProducerIdsAllocated { end: 1000 },
            MetadataRecord::BrokerFenced { node_id: 1 },
            MetadataRecord::PartitionReassignment {
                topic_id: id,
                partition: 0,
                replicas: vec![2, 3, 1],
                adding: vec![3],
                removing: vec![1],
            },
        ] {
            image.apply(&record);
        }
        assert_eq!(image.node_configs(2).len(), 1);
        assert_eq!(
            image.topic("t").expect("topic").partitions[0].partition_epoch,
            1
        );
        let json = serde_json::to_vec(&ImageState::from_image(&image)).expect("encode");
        let back: ImageState = serde_json::from_slice(&json).expect("decode");
        assert_eq!(back.into_image(), image);
    }

    #[test]
    fn a_snapshot_without_partition_epochs_reads_them_as_zero() {
        let id = Uuid::new_v4();
        let mut image = MetadataImage::default();
        image.apply(&MetadataRecord::TopicCreated {
            name: "t".into(),
            topic_id: id,
            configs: BTreeMap::new(),
        });
        image.apply(&MetadataRecord::PartitionCreated {
            topic_id: id,
            partition: 0,
            replicas: vec![1, 2],
            isr: vec![1, 2],
            leader: 1,
            leader_epoch: 0,
        });
        image.apply(&MetadataRecord::PartitionChanged {
            topic_id: id,
            partition: 0,
            leader: 1,
            isr: vec![1],
            leader_epoch: 0,
        });
        let mut json = serde_json::to_value(ImageState::from_image(&image)).expect("encode");
        let removed = json["topics"][0]["partitions"][0]
            .as_object_mut()
            .and_then(|o| o.remove("partition_epoch"));
        assert_eq!(removed, Some(serde_json::json!(1)));
        let back = serde_json::from_value::<ImageState>(json)
            .expect("decode older snapshot")
            .into_image();
        let p = &back.topic("t").expect("topic").partitions[0];
        assert_eq!((p.isr.clone(), p.partition_epoch), (vec![1], 0));
    }

    #[test]
    fn a_snapshot_without_per_broker_configs_still_reads() {
        let mut image = MetadataImage::default();
        image.apply(&MetadataRecord::BrokerConfigChanged {
            node_id: None,
            name: "x".into(),
            value: Some("y".into()),
        });
        let mut json = serde_json::to_value(ImageState::from_image(&image)).expect("encode");
        let removed = json
            .as_object_mut()
            .and_then(|o| o.remove("node_broker_configs"));
        assert!(removed.is_some());
        let back: ImageState = serde_json::from_value(json).expect("decode older snapshot");
        assert_eq!(back.into_image(), image);
    }
}
