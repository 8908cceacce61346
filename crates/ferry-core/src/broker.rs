//! The broker's domain service: topics, partitions, configs and the background
//! log maintenance, with no wire types.
//!
//! ```text
//!  frontend ──► Broker::create_topic / alter_configs ──► metadata log ──► image
//!           ──► Broker::produce / partition(tp).read ──► Partition ──► ferry-log
//!  background: retention, compaction, flush.ms  ──► every Partition
//! ```
//!
//! Every admin change is first a metadata record, made durable, then applied to the
//! image and to the partitions it concerns; replay at startup takes the same path,
//! so a restart sees exactly what clients were told succeeded.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use uuid::Uuid;

use crate::clock::Clock;
use crate::cluster::{ClusterLink, LocalMetadataStore, MetadataStore};
use crate::config::{validate_broker_configs, validate_topic_configs, BrokerConfig, TopicConfig};
use crate::error::CoreError;
use crate::group::{BrokerGroupStorage, GroupConfig, GroupCoordinator};
use crate::metadata::{MetadataImage, MetadataLog, MetadataRecord, TopicMetadata};
use crate::partition::{AppendResult, Partition, TopicPartition};
use crate::txn::{BrokerTxnHost, TransactionCoordinator};

/// The directory of the local metadata log, named as Kafka names it.
pub const METADATA_DIR: &str = "__cluster_metadata-0";

/// Producer ids reserved per metadata record.
const PRODUCER_ID_BLOCK: i64 = 1000;

/// Longest an `acks=all` produce waits for the in-sync replicas.
const PRODUCE_TIMEOUT_MS_MAX: i32 = 300_000;

/// Largest partition count of one topic; more is refused, never allocated.
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 10_000;

#[derive(Debug, Clone)]
pub struct BrokerOptions {
    pub node_id: i32,
    pub data_dir: PathBuf,
    /// Host and port clients are told to connect to.
    pub advertised_host: String,
    pub advertised_port: i32,
    pub rack: Option<String>,
    /// Static broker settings under Kafka's names.
    pub configs: BTreeMap<String, String>,
}

/// A topic to create.
#[derive(Debug, Clone, Default)]
pub struct NewTopic {
    pub name: String,
    /// -1: `num.partitions`.
    pub num_partitions: i32,
    /// -1: `default.replication.factor`.
    pub replication_factor: i16,
    /// Explicit replica lists per partition (empty: let the broker place them).
    pub assignments: Vec<Vec<i32>>,
    pub configs: BTreeMap<String, String>,
}

/// How AlterConfigs changes a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    Set(String, String),
    Delete(String),
    /// List configs only: add items.
    Append(String, String),
    /// List configs only: remove items.
    Subtract(String, String),
}

/// Which dynamic broker settings an AlterConfigs on the broker resource changes:
/// the cluster-wide default (resource "") or this broker's own (resource "N"),
/// which overrides the default on this broker only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerConfigScope {
    ClusterDefault,
    ThisNode,
}

/// Records appended by [`Broker::start_produce`], waiting for their acks level.
#[must_use = "the records are appended, but not yet acknowledged"]
pub struct PendingProduce {
    partition: Arc<Partition>,
    result: AppendResult,
    acks: i16,
    appended_at_ms: i64,
}

impl PendingProduce {
    /// Waits until the acks level is met: acks=all after the group-commit
    /// fsync and once every in-sync replica has the records (at most
    /// `timeout_ms`); acks=1 after an fsync only when `flush.messages` or
    /// `flush.ms` call for one.
    pub async fn finish(self, timeout_ms: i32) -> Result<AppendResult, CoreError> {
        let PendingProduce {
            partition,
            result,
            acks,
            appended_at_ms,
        } = self;
        if acks == -1 || partition.flush_due(appended_at_ms) {
            partition
                .flush_to(result.last_offset, appended_at_ms)
                .await?;
        }
        if acks == -1 {
            // Every in-sync replica has the records once the high watermark passes
            // them (at once on a replica of one).
            let deadline = tokio::time::Instant::now()
                + Duration::from_millis(timeout_ms.clamp(1, PRODUCE_TIMEOUT_MS_MAX) as u64);
            partition
                .wait_replicated(result.last_offset, deadline)
                .await?;
        }
        Ok(result)
    }
}

/// A log directory, as DescribeLogDirs reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogDirReport {
    pub path: PathBuf,
    /// The file system's size and the space left to unprivileged writers
    /// (`None` when it cannot be asked).
    pub total_bytes: Option<u64>,
    pub usable_bytes: Option<u64>,
    /// Every replica in the directory, in topic and partition order.
    pub replicas: Vec<ReplicaReport>,
}

/// One replica in a log directory.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaReport {
    pub tp: TopicPartition,
    /// Bytes of its segments on disk.
    pub size_bytes: u64,
    /// How far its log end is behind the high watermark (Kafka's offset lag:
    /// 0 on a leader).
    pub offset_lag: i64,
}

pub struct Broker {
    /// Held while the broker runs: a second process on the same data directory
    /// would corrupt it.
    _dir_lock: std::fs::File,
    options: BrokerOptions,
    /// From `meta.properties`; in a cluster, replaced by the quorum's.
    cluster_id: RwLock<ClusterId>,
    /// High watermarks of the last checkpoint before this start, handed to
    /// each replica as it opens.
    checkpointed_hws: Mutex<HashMap<TopicPartition, i64>>,
    clock: Arc<dyn Clock>,
    static_config: BrokerConfig,
    image: RwLock<Arc<MetadataImage>>,
    /// Where metadata changes become durable: the local log, or the quorum.
    store: Arc<dyn MetadataStore>,
    /// Serializes this broker's metadata changes and the reconciling of images.
    metadata_lock: Mutex<()>,
    /// Requests to the other nodes of a cluster.
    cluster_link: std::sync::OnceLock<Arc<dyn ClusterLink>>,
    partitions: RwLock<HashMap<TopicPartition, Arc<Partition>>>,
    /// Consumer groups and committed offsets, stored in `__consumer_offsets`.
    groups: GroupCoordinator,
    /// Transactional ids and transactions, stored in `__transaction_state`.
    txns: TransactionCoordinator,
    /// (next id to hand out, end of the reserved block).
    producer_ids: Mutex<(i64, i64)>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("node_id", &self.options.node_id)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Opens the data directory: replays the metadata log and opens (recovering) the
    /// log of every partition this node holds.
    pub fn open(options: BrokerOptions, clock: Arc<dyn Clock>) -> Result<Arc<Broker>, CoreError> {
        std::fs::create_dir_all(&options.data_dir)
            .map_err(|e| CoreError::Storage(e.to_string()))?;
        let dir_lock = lock_data_dir(&options.data_dir)?;
        let (metadata_log, records) = MetadataLog::open(&options.data_dir.join(METADATA_DIR))?;
        let mut image = MetadataImage::default();
        for r in &records {
            image.apply(r);
        }
        let store = Arc::new(LocalMetadataStore::new(metadata_log));
        let broker = Broker::open_with(options, clock, dir_lock, store, Arc::new(image))?;
        let me = MetadataRecord::BrokerRegistered {
            node_id: broker.options.node_id,
            host: broker.options.advertised_host.clone(),
            port: broker.options.advertised_port,
            rack: broker.options.rack.clone(),
        };
        if !broker.is_registered_as_itself() {
            broker.commit(vec![me])?;
        }
        Ok(broker)
    }

    /// Opens a broker of a cluster: `store` is the metadata quorum and `image`
    /// what it has applied so far. Registration is the cluster layer's job.
    pub fn open_clustered(
        options: BrokerOptions,
        clock: Arc<dyn Clock>,
        store: Arc<dyn MetadataStore>,
        image: Arc<MetadataImage>,
    ) -> Result<Arc<Broker>, CoreError> {
        std::fs::create_dir_all(&options.data_dir)
            .map_err(|e| CoreError::Storage(e.to_string()))?;
        let dir_lock = lock_data_dir(&options.data_dir)?;
        Broker::open_with(options, clock, dir_lock, store, image)
    }

    /// Whether the image has this broker registered with its current address.
    pub fn is_registered_as_itself(&self) -> bool {
        self.image()
            .brokers
            .get(&self.options.node_id)
            .is_some_and(|b| {
                (&b.host, b.port, &b.rack)
                    == (
                        &self.options.advertised_host,
                        self.options.advertised_port,
                        &self.options.rack,
                    )
            })
    }

    fn open_with(
        options: BrokerOptions,
        clock: Arc<dyn Clock>,
        dir_lock: std::fs::File,
        store: Arc<dyn MetadataStore>,
        image: Arc<MetadataImage>,
    ) -> Result<Arc<Broker>, CoreError> {
        let static_config = BrokerConfig::new(options.configs.clone())?;
        let cluster_id = ClusterId::load_or_create(&options.data_dir, options.node_id)?;
        let checkpointed_hws = crate::hw_checkpoint::read(&options.data_dir);
        let group_config = GroupConfig::from_broker(&static_config);
        let broker = Arc::new_cyclic(|me| Broker {
            options,
            cluster_id: RwLock::new(cluster_id),
            checkpointed_hws: Mutex::new(checkpointed_hws),
            groups: GroupCoordinator::new(
                Arc::new(BrokerGroupStorage::new(me.clone())),
                clock.clone(),
                group_config,
            ),
            txns: TransactionCoordinator::new(
                Arc::new(BrokerTxnHost::new(me.clone())),
                Arc::new(BrokerTxnHost::new(me.clone())),
                clock.clone(),
                static_config
                    .long("transaction.max.timeout.ms")
                    .clamp(1, i64::from(i32::MAX)) as i32,
            ),
            clock,
            static_config,
            image: RwLock::new(Arc::new(MetadataImage::default())),
            store,
            metadata_lock: Mutex::new(()),
            cluster_link: std::sync::OnceLock::new(),
            partitions: RwLock::new(HashMap::new()),
            producer_ids: Mutex::new((0, 0)),
            _dir_lock: dir_lock,
        });
        {
            let _guard = broker.metadata_lock.lock();
            broker.reconcile(image.clone())?;
        }
        broker.remove_orphan_dirs(&image);
        Ok(broker)
    }

    /// The cluster id: created with the data directory (`meta.properties`);
    /// in a cluster, the one the metadata quorum agreed on.
    pub fn cluster_id(&self) -> String {
        self.cluster_id.read().id.clone()
    }

    /// Takes the quorum's cluster id when this node has not agreed to one yet,
    /// and keeps it in `meta.properties`. A data directory that already
    /// agreed to another cluster's id is refused, as Kafka refuses an
    /// inconsistent cluster id: its partitions are another cluster's.
    fn adopt_cluster_id(&self, image: &MetadataImage) -> Result<(), CoreError> {
        let Some(id) = &image.cluster_id else {
            return Ok(());
        };
        let current = self.cluster_id.read().clone();
        if current.agreed {
            if current.id == *id {
                return Ok(());
            }
            return Err(CoreError::Storage(format!(
                "{} belongs to cluster {}, but the metadata quorum is cluster {id}",
                self.options.data_dir.display(),
                current.id
            )));
        }
        let agreed = ClusterId {
            id: id.clone(),
            agreed: true,
        };
        agreed.write(&self.options.data_dir, self.options.node_id)?;
        tracing::info!(cluster_id = %id, "taking the metadata quorum's cluster id");
        *self.cluster_id.write() = agreed;
        Ok(())
    }

    pub fn node_id(&self) -> i32 {
        self.options.node_id
    }

    pub fn options(&self) -> &BrokerOptions {
        &self.options
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The current metadata image.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.read().clone()
    }

    /// Static settings with the dynamic ones from the metadata log on top: the
    /// cluster-wide default, then this node's own.
    pub fn config(&self) -> BrokerConfig {
        let image = self.image();
        let mut config = self.static_config.clone();
        config.dynamic_configs = image.broker_configs.clone();
        config.node_configs = image.node_configs(self.options.node_id).clone();
        config
    }

    pub fn topic_config(&self, topic: &TopicMetadata) -> TopicConfig {
        self.config().topic_config(&topic.configs)
    }

    /// The group coordinator (consumer groups and committed offsets).
    pub fn groups(&self) -> &GroupCoordinator {
        &self.groups
    }

    /// The transaction coordinator.
    pub fn txns(&self) -> &TransactionCoordinator {
        &self.txns
    }

    pub fn partition(&self, tp: &TopicPartition) -> Option<Arc<Partition>> {
        self.partitions.read().get(tp).cloned()
    }

    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().values().cloned().collect()
    }

    /// A producer id never handed out before, also across restarts: ids are reserved
    /// in blocks through the metadata log, and a restart starts a new block.
    pub fn allocate_producer_id(&self) -> Result<i64, CoreError> {
        let mut ids = self.producer_ids.lock();
        if ids.0 >= ids.1 {
            let start = self.image().producer_ids_end;
            let end = start + PRODUCER_ID_BLOCK;
            self.commit(vec![MetadataRecord::ProducerIdsAllocated { end }])?;
            *ids = (start, end);
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    /// Makes records durable in the metadata store, then applies the image that
    /// follows them.
    fn commit(&self, records: Vec<MetadataRecord>) -> Result<Arc<MetadataImage>, CoreError> {
        let _guard = self.metadata_lock.lock();
        let image = self.store.commit(records, &self.image())?;
        self.reconcile(image.clone())?;
        Ok(self.image())
    }

    /// Whether this broker is part of a cluster (its metadata comes from a quorum).
    pub fn is_clustered(&self) -> bool {
        self.cluster_link.get().is_some()
    }

    /// The link to the cluster's controller and metadata quorum (`None` on a
    /// single node).
    pub fn cluster_link(&self) -> Option<&Arc<dyn ClusterLink>> {
        self.cluster_link.get()
    }

    /// Connects the broker to the active controller (a cluster only).
    pub fn set_cluster_link(&self, link: Arc<dyn ClusterLink>) {
        let _ = self.cluster_link.set(link);
    }

    /// Writes the markers that end a transaction to `partitions`: those this
    /// broker leads here, the others through their leaders (WriteTxnMarkers).
    pub async fn write_txn_markers(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        partitions: Vec<TopicPartition>,
    ) -> Result<(), CoreError> {
        let image = self.image();
        let mut by_leader: BTreeMap<i32, Vec<TopicPartition>> = BTreeMap::new();
        for tp in partitions {
            let leader = image
                .topic(&tp.topic)
                .and_then(|t| t.partitions.iter().find(|p| p.partition == tp.partition))
                .map(|p| p.leader);
            match leader {
                Some(leader) => by_leader.entry(leader).or_default().push(tp),
                None => {
                    tracing::warn!(partition = %tp, "no marker for a partition that no longer exists")
                }
            }
        }
        let me = self.options.node_id;
        let mut remote = Vec::new();
        for (leader, partitions) in by_leader {
            if leader == me {
                for (tp, result) in self
                    .write_local_txn_markers(producer_id, producer_epoch, commit, partitions)
                    .await
                {
                    result.map_err(|e| {
                        tracing::warn!(partition = %tp, error = %e, "could not write a transaction marker");
                        e
                    })?;
                }
            } else if leader < 0 {
                return Err(CoreError::NotLeaderOrFollower);
            } else {
                let link = self
                    .cluster_link
                    .get()
                    .ok_or(CoreError::NotLeaderOrFollower)?;
                remote.push(link.write_txn_markers(
                    leader,
                    producer_id,
                    producer_epoch,
                    commit,
                    partitions,
                ));
            }
        }
        for r in remote {
            r.await?;
        }
        Ok(())
    }

    /// WriteTxnMarkers on this broker: appends a marker to each partition it
    /// leads and waits until the in-sync replicas have it; completes the
    /// transactional offsets of `__consumer_offsets` partitions.
    pub async fn write_local_txn_markers(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        partitions: Vec<TopicPartition>,
    ) -> Vec<(TopicPartition, Result<(), CoreError>)> {
        let now = self.now_ms();
        let mut results = Vec::new();
        // Append every marker first, then wait: the flushes overlap.
        let mut written = Vec::new();
        for tp in partitions {
            let Some(p) = self.partition(&tp) else {
                results.push((tp, Err(CoreError::UnknownTopicOrPartition)));
                continue;
            };
            match p.append_marker(
                producer_id,
                producer_epoch,
                crate::txn::COORDINATOR_EPOCH,
                commit,
                now,
            ) {
                Ok(offset) => written.push((tp, p, offset)),
                Err(CoreError::ProducerFenced(why)) => {
                    tracing::warn!(partition = %tp, %why, "skipping a marker older than the partition's producer epoch");
                    results.push((tp, Ok(())));
                }
                Err(e) => results.push((tp, Err(e))),
            }
        }
        // Every marker is appended first, then each is made durable.
        for (tp, p, offset) in written {
            let outcome = crate::cluster::durable(&p, offset, now).await;
            if outcome.is_ok() && tp.topic == crate::group::OFFSETS_TOPIC {
                self.groups.complete_txn(producer_id, commit);
            }
            results.push((tp, outcome));
        }
        results
    }

    /// The active controller's node id (this node on a single node; -1 while a
    /// cluster has none).
    pub fn controller_id(&self) -> i32 {
        match self.cluster_link.get() {
            Some(link) => link.controller_id().unwrap_or(-1),
            None => self.options.node_id,
        }
    }

    /// Leader elections by the active controller (ElectLeaders); `None` for
    /// every partition. On one node every partition has its only leader already.
    pub async fn elect_leaders(
        &self,
        election_type: i8,
        partitions: Option<Vec<TopicPartition>>,
    ) -> Result<crate::cluster::ElectResults, CoreError> {
        if let Some(link) = self.cluster_link.get() {
            return link.elect_leaders(election_type, partitions).await;
        }
        let image = self.image();
        let exists = |tp: &TopicPartition| {
            image
                .topic(&tp.topic)
                .is_some_and(|t| t.partitions.iter().any(|p| p.partition == tp.partition))
        };
        let partitions = partitions.unwrap_or_else(|| {
            let all = image.topics.values().flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| TopicPartition::new(t.name.clone(), p.partition))
            });
            all.collect()
        });
        Ok(partitions
            .into_iter()
            .map(|tp| {
                let e = if exists(&tp) {
                    crate::cluster::ElectError::ElectionNotNeeded
                } else {
                    crate::cluster::ElectError::UnknownTopicOrPartition
                };
                (tp, Err(e))
            })
            .collect())
    }

    /// Starts (`Some(target)`) or cancels (`None`) partition reassignments
    /// through the active controller (AlterPartitionReassignments). On one node
    /// the only valid target is this node, which every partition has already.
    pub async fn alter_partition_reassignments(
        &self,
        reassignments: Vec<(TopicPartition, Option<Vec<i32>>)>,
    ) -> Result<crate::cluster::ReassignResults, CoreError> {
        use crate::cluster::ReassignError;
        if let Some(link) = self.cluster_link.get() {
            return link.alter_partition_reassignments(reassignments).await;
        }
        let image = self.image();
        let me = self.options.node_id;
        Ok(reassignments
            .into_iter()
            .map(|(tp, target)| {
                let exists = image
                    .topic(&tp.topic)
                    .is_some_and(|t| t.partitions.iter().any(|p| p.partition == tp.partition));
                let result = match target {
                    _ if !exists => Err(ReassignError::UnknownTopicOrPartition),
                    Some(target) if target == [me] => Ok(()),
                    Some(_) => Err(ReassignError::InvalidReplicaAssignment),
                    None => Err(ReassignError::NoReassignmentInProgress),
                };
                (tp, result)
            })
            .collect())
    }

    /// The partition reassignments in progress (ListPartitionReassignments) of
    /// `partitions`, or of every partition; never any on one node.
    pub async fn list_partition_reassignments(
        &self,
        partitions: Option<Vec<TopicPartition>>,
    ) -> Result<Vec<crate::cluster::OngoingReassignment>, CoreError> {
        match self.cluster_link.get() {
            Some(link) => link.list_partition_reassignments(partitions).await,
            None => Ok(Vec::new()),
        }
    }

    /// Sends a leader's ISR change to the controller, with the leader epoch and
    /// partition epoch it was computed on (a change the metadata replaced
    /// meanwhile is not sent); on one node there is no controller and no
    /// follower, so the change is dropped.
    pub fn propose_isr(&self, partition: &Arc<Partition>, isr: Vec<i32>) {
        match self.cluster_link.get() {
            Some(link) => {
                if let Some((leader_epoch, partition_epoch)) = partition.isr_proposal(&isr) {
                    link.alter_isr(partition.clone(), leader_epoch, partition_epoch, isr);
                }
            }
            None => partition.abort_isr_change(),
        }
    }

    /// Applies a committed metadata image (a cluster's every change arrives here).
    /// Images older than the current one are ignored.
    pub fn apply_image(&self, image: Arc<MetadataImage>) -> Result<(), CoreError> {
        let _guard = self.metadata_lock.lock();
        self.reconcile(image)
    }

    /// Makes this broker's replicas match `image`: opens the partitions assigned
    /// to it, gives each its role (leader or follower, epoch, ISR), applies
    /// config changes, and removes the replicas of deleted or moved partitions.
    /// Caller holds `metadata_lock`.
    fn reconcile(&self, image: Arc<MetadataImage>) -> Result<(), CoreError> {
        let old = self.image();
        if image.offset < old.offset {
            return Ok(());
        }
        self.adopt_cluster_id(&image)?;
        *self.image.write() = image.clone();
        let me = self.options.node_id;
        // Topics deleted: their replicas and files go.
        for (id, name) in &old.topic_names {
            if !image.topic_names.contains_key(id) {
                if let Some(topic) = old.topic(name) {
                    for p in &topic.partitions {
                        self.remove_replica(&TopicPartition::new(name.clone(), p.partition), *id);
                    }
                }
            }
        }
        let configs_changed = old.broker_configs != image.broker_configs
            || old.node_configs(me) != image.node_configs(me);
        let now = self.now_ms();
        let mut first_error = None;
        for topic in image.topics.values() {
            let before = old.topic_by_id(&topic.topic_id);
            if before == Some(topic) && !configs_changed {
                continue;
            }
            let config = self.topic_config(topic);
            for p in &topic.partitions {
                let tp = TopicPartition::new(topic.name.clone(), p.partition);
                if !p.replicas.contains(&me) {
                    if self.partitions.read().contains_key(&tp) {
                        self.remove_replica(&tp, topic.topic_id);
                    }
                    continue;
                }
                let before_p =
                    before.and_then(|t| t.partitions.iter().find(|x| x.partition == p.partition));
                let mut was_leader = false;
                let partition = match self.partition(&tp) {
                    Some(existing) => {
                        existing.set_config(config.clone());
                        if before_p == Some(p) {
                            continue;
                        }
                        was_leader = existing.is_leader();
                        existing
                    }
                    None => match self.open_partition(topic, p.partition, p.leader_epoch) {
                        Ok(opened) => opened,
                        Err(e) => {
                            tracing::error!(partition = %tp, error = %e, "could not open a replica");
                            first_error.get_or_insert(e);
                            continue;
                        }
                    },
                };
                let role = if p.leader == me {
                    partition.become_leader_at(
                        me,
                        p.leader_epoch,
                        p.partition_epoch,
                        p.replicas.clone(),
                        p.isr.clone(),
                        now,
                    )
                } else {
                    partition.become_follower(p.leader_epoch, p.leader)
                };
                if let Err(e) = role {
                    tracing::warn!(partition = %tp, leader = p.leader, leader_epoch = p.leader_epoch, error = %e, "could not take the role the metadata gives");
                }
                let is_leader = p.leader == me && partition.is_leader();
                if is_leader != was_leader {
                    self.coordinator_moved(&tp, is_leader);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A partition of an internal topic changed hands on this broker: the group
    /// or transaction coordinator loads its state, or lets it go.
    fn coordinator_moved(&self, tp: &TopicPartition, leads: bool) {
        let loaded = match (tp.topic.as_str(), leads) {
            (crate::group::OFFSETS_TOPIC, true) => self.groups.on_elected(tp.partition),
            (crate::group::OFFSETS_TOPIC, false) => {
                self.groups.on_resigned(tp.partition);
                Ok(())
            }
            (crate::txn::TRANSACTION_STATE_TOPIC, true) => self.txns.on_elected(tp.partition),
            (crate::txn::TRANSACTION_STATE_TOPIC, false) => {
                self.txns.on_resigned(tp.partition);
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = loaded {
            tracing::error!(partition = %tp, error = %e, "could not load a coordinator's state");
        }
    }

    /// Closes a replica this broker no longer holds and removes its files.
    fn remove_replica(&self, tp: &TopicPartition, topic_id: Uuid) {
        let removed = self.partitions.write().remove(tp);
        if let Some(partition) = removed {
            if partition.is_leader() {
                self.coordinator_moved(tp, false);
                // Produce requests waiting for their replicas get
                // NOT_LEADER_OR_FOLLOWER now, and retry at the new leader.
                let _ = partition.become_follower(partition.leader_epoch(), -1);
            }
            if let Err(e) = partition.close() {
                tracing::warn!(partition = %tp, error = %e, "closing a removed replica");
            }
        }
        let dir = self.partition_dir(tp);
        if dir.exists() {
            // Rename first so a crash in the middle of the removal is finished at startup.
            let doomed = self.options.data_dir.join(format!(
                "{}.{}-delete",
                tp.dir_name(),
                topic_id.simple()
            ));
            let target = match std::fs::rename(&dir, &doomed) {
                Ok(()) => doomed,
                Err(_) => dir,
            };
            if let Err(e) = std::fs::remove_dir_all(&target) {
                tracing::warn!(dir = %target.display(), error = %e, "could not remove a replica's files");
            }
        }
    }

    fn partition_dir(&self, tp: &TopicPartition) -> PathBuf {
        self.options.data_dir.join(tp.dir_name())
    }

    fn open_partition(
        &self,
        topic: &TopicMetadata,
        partition: i32,
        leader_epoch: i32,
    ) -> Result<Arc<Partition>, CoreError> {
        let tp = TopicPartition::new(topic.name.clone(), partition);
        let config = self.topic_config(topic);
        let p = Arc::new(Partition::open(
            tp.clone(),
            topic.topic_id,
            &self.partition_dir(&tp),
            config,
            leader_epoch,
            self.now_ms(),
        )?);
        if let Some(hw) = self.checkpointed_hws.lock().remove(&tp) {
            p.restore_high_watermark(hw);
        }
        self.partitions.write().insert(tp, p.clone());
        Ok(p)
    }

    /// Directories of deleted topics left by a crash in the middle of a delete.
    fn remove_orphan_dirs(&self, image: &MetadataImage) {
        let Ok(entries) = std::fs::read_dir(&self.options.data_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(stripped) = name.strip_suffix("-delete") {
                tracing::info!(dir = %stripped, "removing the files of a deleted topic");
                let _ = std::fs::remove_dir_all(entry.path());
            } else if name != METADATA_DIR && entry.path().is_dir() {
                let known = name
                    .rsplit_once('-')
                    .and_then(|(t, p)| p.parse::<i32>().ok().map(|p| (t, p)))
                    .is_some_and(|(t, p)| {
                        image
                            .topic(t)
                            .is_some_and(|t| t.partitions.iter().any(|x| x.partition == p))
                    });
                if !known {
                    tracing::warn!(dir = %name, "a directory in the data dir belongs to no known partition; leaving it alone");
                }
            }
        }
    }

    /// CreateTopics for one topic.
    pub fn create_topic(
        &self,
        new: NewTopic,
        validate_only: bool,
    ) -> Result<TopicMetadata, CoreError> {
        validate_topic_name(&new.name)?;
        let config = self.config();
        let image = self.image();
        if image.topic(&new.name).is_some() {
            return Err(CoreError::TopicAlreadyExists(new.name));
        }
        if let Some(other) = image.topics.keys().find(|t| collides(t, &new.name)) {
            return Err(CoreError::InvalidTopic(format!(
                "topic {} collides with existing topic {other}",
                new.name
            )));
        }
        validate_topic_configs(&new.configs)?;
        let live = rack_alternated(&image);
        let assignments = if !new.assignments.is_empty() {
            if new.num_partitions != -1 || new.replication_factor != -1 {
                return Err(CoreError::InvalidRequest(
                    "both a replica assignment and a partition count or replication factor were given".into(),
                ));
            }
            for replicas in &new.assignments {
                if replicas.is_empty() || replicas.iter().any(|r| !live.contains(r)) {
                    return Err(CoreError::InvalidReplicationFactor(format!(
                        "assignment {replicas:?} names a broker that does not exist"
                    )));
                }
            }
            new.assignments.clone()
        } else {
            let partitions = if new.num_partitions == -1 {
                config.long("num.partitions") as i32
            } else {
                new.num_partitions
            };
            let rf = if new.replication_factor == -1 {
                config.long("default.replication.factor") as i16
            } else {
                new.replication_factor
            };
            if partitions <= 0 || partitions > PARTITIONS_PER_TOPIC_MAX {
                return Err(CoreError::InvalidPartitions(format!(
                    "number of partitions must be between 1 and {PARTITIONS_PER_TOPIC_MAX}"
                )));
            }
            if rf <= 0 {
                return Err(CoreError::InvalidReplicationFactor(
                    "replication factor must be larger than 0".into(),
                ));
            }
            if rf as usize > live.len() {
                return Err(CoreError::InvalidReplicationFactor(format!(
                    "replication factor: {rf} larger than available brokers: {}",
                    live.len()
                )));
            }
            place_replicas(&live, partitions, rf as usize, 0)
        };
        let topic_id = Uuid::new_v4();
        let mut records = vec![MetadataRecord::TopicCreated {
            name: new.name.clone(),
            topic_id,
            configs: new.configs.clone(),
        }];
        for (i, replicas) in assignments.iter().enumerate() {
            records.push(MetadataRecord::PartitionCreated {
                topic_id,
                partition: i as i32,
                isr: replicas.clone(),
                leader: replicas[0],
                replicas: replicas.clone(),
                leader_epoch: 0,
            });
        }
        if validate_only {
            let mut image = (*image).clone();
            for r in &records {
                image.apply(r);
            }
            return image
                .topic(&new.name)
                .cloned()
                .ok_or(CoreError::UnknownTopicOrPartition);
        }
        let image = self.commit(records)?;
        let topic = image
            .topic(&new.name)
            .cloned()
            .ok_or(CoreError::UnknownTopicOrPartition)?;
        if topic.topic_id != topic_id {
            // Another node created the name first; its records won.
            return Err(CoreError::TopicAlreadyExists(new.name));
        }
        tracing::info!(topic = %topic.name, partitions = topic.partitions.len(), "created topic");
        Ok(topic)
    }

    /// Creates a compacted internal topic (`__consumer_offsets`,
    /// `__transaction_state`) on first use, with its own partition count and
    /// replication factor settings.
    pub fn ensure_internal_topic(&self, name: &str) -> Result<(), CoreError> {
        if self.image().topic(name).is_some() {
            return Ok(());
        }
        let (partitions_setting, replication_setting) = match name {
            crate::group::OFFSETS_TOPIC => (
                "offsets.topic.num.partitions",
                "offsets.topic.replication.factor",
            ),
            crate::txn::TRANSACTION_STATE_TOPIC => (
                "transaction.state.log.num.partitions",
                "transaction.state.log.replication.factor",
            ),
            other => {
                return Err(CoreError::InvalidTopic(format!(
                    "{other} is not an internal topic"
                )))
            }
        };
        let partitions = self.config().long(partitions_setting) as i32;
        let mut configs = BTreeMap::new();
        configs.insert("cleanup.policy".to_string(), "compact".to_string());
        let topic = NewTopic {
            name: name.to_string(),
            num_partitions: partitions,
            replication_factor: crate::cluster::internal_replication_factor(
                self,
                replication_setting,
            )?,
            assignments: Vec::new(),
            configs,
        };
        match self.create_topic(topic, false) {
            Ok(_) => {
                tracing::info!(partitions, "created {name}");
                Ok(())
            }
            Err(CoreError::TopicAlreadyExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether this broker coordinates the keys of `partition` of an internal
    /// topic: it leads it, or the topic does not exist yet (it is created on first
    /// use, and on one node this broker leads it).
    pub fn leads_internal_partition(&self, topic: &str, partition: i32) -> bool {
        if self.image().topic(topic).is_none() {
            return true;
        }
        self.partition(&TopicPartition::new(topic, partition))
            .is_some_and(|p| p.is_leader())
    }

    /// The broker coordinating a group (`transactional == false`) or a
    /// transactional id: the leader of the key's partition of the internal topic,
    /// which is created on first use. `None` while that partition has no leader.
    pub fn find_coordinator(
        &self,
        key: &str,
        transactional: bool,
    ) -> Result<Option<crate::metadata::BrokerMetadata>, CoreError> {
        let topic = if transactional {
            crate::txn::TRANSACTION_STATE_TOPIC
        } else {
            crate::group::OFFSETS_TOPIC
        };
        self.ensure_internal_topic(topic)?;
        let image = self.image();
        let Some(t) = image.topic(topic) else {
            return Ok(None);
        };
        let partition = crate::group::records::partition_for(key, t.partitions.len().max(1) as i32);
        let leader = t
            .partitions
            .iter()
            .find(|p| p.partition == partition)
            .map_or(-1, |p| p.leader);
        if image.fenced_brokers.contains(&leader) {
            return Ok(None);
        }
        Ok(image.brokers.get(&leader).cloned())
    }

    /// Creates a topic on first use when `auto.create.topics.enable` says so.
    pub fn auto_create_topic(&self, name: &str) -> Result<Option<TopicMetadata>, CoreError> {
        if let Some(t) = self.image().topic(name) {
            return Ok(Some(t.clone()));
        }
        if !self.config().bool("auto.create.topics.enable") {
            return Ok(None);
        }
        match self.create_topic(
            NewTopic {
                name: name.to_string(),
                num_partitions: -1,
                replication_factor: -1,
                ..Default::default()
            },
            false,
        ) {
            Ok(t) => Ok(Some(t)),
            Err(CoreError::TopicAlreadyExists(_)) => Ok(self.image().topic(name).cloned()),
            Err(e) => Err(e),
        }
    }

    /// DeleteTopics for one topic: the metadata record first, then the files.
    pub fn delete_topic(&self, topic_id: Uuid) -> Result<String, CoreError> {
        let image = self.image();
        let topic = image
            .topic_by_id(&topic_id)
            .cloned()
            .ok_or(CoreError::UnknownTopicOrPartition)?;
        // The replicas and their files go as the image without the topic is applied.
        self.commit(vec![MetadataRecord::TopicDeleted { topic_id }])?;
        tracing::info!(topic = %topic.name, "deleted topic");
        Ok(topic.name)
    }

    /// CreatePartitions: raises a topic's partition count.
    pub fn create_partitions(
        &self,
        name: &str,
        count: i32,
        assignments: Vec<Vec<i32>>,
        validate_only: bool,
    ) -> Result<(), CoreError> {
        let image = self.image();
        let topic = image
            .topic(name)
            .cloned()
            .ok_or(CoreError::UnknownTopicOrPartition)?;
        let current = topic.partitions.len() as i32;
        if count <= current {
            return Err(CoreError::InvalidPartitions(format!(
                "topic currently has {current} partitions, {count} would not be an increase"
            )));
        }
        if count > PARTITIONS_PER_TOPIC_MAX {
            return Err(CoreError::InvalidPartitions(format!(
                "at most {PARTITIONS_PER_TOPIC_MAX} partitions"
            )));
        }
        let live = rack_alternated(&image);
        let rf = topic
            .partitions
            .first()
            .map(|p| p.replicas.len())
            .unwrap_or(1);
        let new_assignments = if assignments.is_empty() {
            place_replicas(&live, count - current, rf, current as usize)
        } else {
            if assignments.len() as i32 != count - current {
                return Err(CoreError::InvalidRequest(
                    "the assignment does not list every new partition".into(),
                ));
            }
            if assignments
                .iter()
                .any(|r| r.is_empty() || r.iter().any(|b| !live.contains(b)))
            {
                return Err(CoreError::InvalidReplicationFactor(
                    "the assignment names a broker that does not exist".into(),
                ));
            }
            assignments
        };
        if validate_only {
            return Ok(());
        }
        let records = new_assignments
            .into_iter()
            .enumerate()
            .map(|(i, replicas)| MetadataRecord::PartitionCreated {
                topic_id: topic.topic_id,
                partition: current + i as i32,
                isr: replicas.clone(),
                leader: replicas[0],
                replicas,
                leader_epoch: 0,
            })
            .collect();
        self.commit(records)?;
        Ok(())
    }

    /// AlterConfigs (`incremental == false`: the changes replace every override) and
    /// IncrementalAlterConfigs on a topic.
    pub fn alter_topic_configs(
        &self,
        name: &str,
        changes: Vec<ConfigChange>,
        incremental: bool,
        validate_only: bool,
    ) -> Result<(), CoreError> {
        let image = self.image();
        let topic = image
            .topic(name)
            .cloned()
            .ok_or(CoreError::UnknownTopicOrPartition)?;
        let current = if incremental {
            topic.configs.clone()
        } else {
            BTreeMap::new()
        };
        let next = apply_changes(current, changes, |n| {
            crate::config::topic_config_def(n).map(|(_, d)| d.default)
        })?;
        validate_topic_configs(&next)?;
        if validate_only {
            return Ok(());
        }
        let records = diff_configs(&topic.configs, &next)
            .into_iter()
            .map(|(name, value)| MetadataRecord::TopicConfigChanged {
                topic_id: topic.topic_id,
                name,
                value,
            })
            .collect::<Vec<_>>();
        if records.is_empty() {
            return Ok(());
        }
        self.commit(records)?;
        Ok(())
    }

    /// AlterConfigs / IncrementalAlterConfigs on the broker (dynamic settings):
    /// changes the cluster-wide layer or this node's own, as `scope` says.
    pub fn alter_broker_configs(
        &self,
        scope: BrokerConfigScope,
        changes: Vec<ConfigChange>,
        incremental: bool,
        validate_only: bool,
    ) -> Result<(), CoreError> {
        let image = self.image();
        let (layer, node_id) = match scope {
            BrokerConfigScope::ClusterDefault => (&image.broker_configs, None),
            BrokerConfigScope::ThisNode => (
                image.node_configs(self.options.node_id),
                Some(self.options.node_id),
            ),
        };
        let current = if incremental {
            layer.clone()
        } else {
            BTreeMap::new()
        };
        let next = apply_changes(current, changes, |n| {
            crate::config::broker_config_def(n).map(|d| d.default)
        })?;
        validate_broker_configs(&next)?;
        if validate_only {
            return Ok(());
        }
        let records: Vec<_> = diff_configs(layer, &next)
            .into_iter()
            .map(|(name, value)| MetadataRecord::BrokerConfigChanged {
                node_id,
                name,
                value,
            })
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        self.commit(records)?;
        Ok(())
    }

    /// Produce: appends `records` and waits until the acks level is met
    /// (see [`Broker::start_produce`] and [`PendingProduce::finish`]).
    pub async fn produce(
        &self,
        tp: &TopicPartition,
        records: Bytes,
        acks: i16,
        timeout_ms: i32,
    ) -> Result<AppendResult, CoreError> {
        self.start_produce(tp, records, acks)?
            .finish(timeout_ms)
            .await
    }

    /// The first half of a produce: checks the acks level against the replica
    /// and appends `records` now. What it returns waits for the rest (the
    /// group-commit fsync, and for acks=all every in-sync replica), so a
    /// connection can append its next request's records meanwhile and one
    /// fsync covers both.
    pub fn start_produce(
        &self,
        tp: &TopicPartition,
        records: Bytes,
        acks: i16,
    ) -> Result<PendingProduce, CoreError> {
        let partition = self
            .partition(tp)
            .ok_or(CoreError::UnknownTopicOrPartition)?;
        if acks != 0 && acks != 1 && acks != -1 {
            return Err(CoreError::InvalidRequest(format!(
                "acks must be -1, 0 or 1, not {acks}"
            )));
        }
        if acks == -1 {
            // A follower has no ISR to count: the client must go to the leader
            // (NOT_LEADER_OR_FOLLOWER makes it refresh its metadata; a retriable
            // NOT_ENOUGH_REPLICAS would keep it retrying here).
            if !partition.is_leader() {
                return Err(CoreError::NotLeaderOrFollower);
            }
            if (partition.in_sync_count() as i64) < partition.config().min_insync_replicas {
                return Err(CoreError::NotEnoughReplicas);
            }
        }
        let now = self.now_ms();
        let result = partition.append(records, now)?;
        Ok(PendingProduce {
            partition,
            result,
            acks,
            appended_at_ms: now,
        })
    }

    /// Runs retention, compaction and `flush.ms` until `shutdown` fires.
    pub async fn run_maintenance(
        self: Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        tokio::spawn(GroupCoordinator::run_ticks(self.clone(), shutdown.clone()));
        tokio::spawn(TransactionCoordinator::run_ticks(
            self.clone(),
            shutdown.clone(),
        ));
        let mut next_retention = 0i64;
        let mut next_compaction = 0i64;
        let mut next_hw_checkpoint = self.now_ms()
            + self
                .config()
                .long("replica.high.watermark.checkpoint.interval.ms");
        loop {
            let config = self.config();
            let flush_interval = config
                .long("log.flush.scheduler.interval.ms")
                .clamp(1, 60_000);
            let tick = flush_interval
                .min(config.long("log.retention.check.interval.ms"))
                .min(config.long("log.cleaner.backoff.ms"))
                .max(1);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(tick as u64)) => {}
                _ = shutdown.changed() => return,
            }
            let now = self.now_ms();
            for p in self.partitions() {
                if p.flush_due(now) {
                    if let Err(e) = p.flush_to(p.log_end_offset() - 1, now).await {
                        tracing::warn!(partition = %p.tp, error = %e, "scheduled flush failed");
                    }
                }
            }
            if now >= next_hw_checkpoint {
                next_hw_checkpoint =
                    now + config.long("replica.high.watermark.checkpoint.interval.ms");
                let broker = self.clone();
                if let Err(e) =
                    tokio::task::spawn_blocking(move || broker.checkpoint_high_watermarks()).await
                {
                    tracing::warn!(error = %e, "the high-watermark checkpoint failed");
                }
            }
            let retention_due = now >= next_retention;
            let compaction_due = now >= next_compaction;
            if retention_due {
                next_retention = now + config.long("log.retention.check.interval.ms");
            }
            if compaction_due {
                next_compaction = now + config.long("log.cleaner.backoff.ms");
            }
            if !retention_due && !compaction_due {
                continue;
            }
            let partitions = self.partitions();
            let outcome = tokio::task::spawn_blocking(move || {
                for p in partitions {
                    let config = p.config();
                    if retention_due && config.cleanup_delete {
                        match p.log().enforce_retention(now) {
                            Ok(o) if o.segments_deleted > 0 => tracing::info!(
                                partition = %p.tp, segments = o.segments_deleted, log_start_offset = o.log_start_offset,
                                "retention deleted segments"
                            ),
                            Ok(_) => {}
                            Err(e) => tracing::warn!(partition = %p.tp, error = %e, "retention failed"),
                        }
                    }
                    if compaction_due && config.cleanup_compact {
                        if let Err(e) = p.log().compact(now) {
                            tracing::warn!(partition = %p.tp, error = %e, "compaction failed");
                        }
                    }
                }
            })
            .await;
            if let Err(e) = outcome {
                tracing::error!(error = %e, "log maintenance task failed");
            }
        }
    }

    /// Flushes and closes every partition.
    /// This broker's log directory as DescribeLogDirs reports it: its path,
    /// the file system's size and free space, and every replica in it with its
    /// size on disk and how far its log end is behind the high watermark.
    pub fn describe_log_dir(&self) -> LogDirReport {
        let dir = &self.options.data_dir;
        let space = rustix::fs::statvfs(dir).ok();
        let mut replicas: Vec<ReplicaReport> = self
            .partitions()
            .iter()
            .map(|p| ReplicaReport {
                tp: p.tp.clone(),
                size_bytes: p.log().size_bytes(),
                offset_lag: (p.high_watermark() - p.log_end_offset()).max(0),
            })
            .collect();
        replicas.sort_by(|a, b| a.tp.cmp(&b.tp));
        LogDirReport {
            path: std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone()),
            total_bytes: space
                .as_ref()
                .map(|s| s.f_blocks.saturating_mul(s.f_frsize)),
            usable_bytes: space
                .as_ref()
                .map(|s| s.f_bavail.saturating_mul(s.f_frsize)),
            replicas,
        }
    }

    /// Writes every replica's high watermark to the checkpoint file.
    pub fn checkpoint_high_watermarks(&self) {
        let mut entries: Vec<(TopicPartition, i64)> = self
            .partitions()
            .iter()
            .map(|p| (p.tp.clone(), p.high_watermark()))
            .collect();
        entries.sort();
        if let Err(e) = crate::hw_checkpoint::write(&self.options.data_dir, &entries) {
            tracing::warn!(error = %e, "could not write the high-watermark checkpoint");
        }
    }

    pub fn shutdown(&self) {
        self.checkpoint_high_watermarks();
        for p in self.partitions() {
            if let Err(e) = p.close() {
                tracing::warn!(partition = %p.tp, error = %e, "closing partition");
            }
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.options.data_dir
    }
}

fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, CoreError> {
    let path = data_dir.join(".lock");
    let file = std::fs::File::create(&path)
        .map_err(|e| CoreError::Storage(format!("{}: {e}", path.display())))?;
    file.try_lock().map_err(|_| {
        CoreError::Storage(format!(
            "{} is in use by another ferry process",
            data_dir.display()
        ))
    })?;
    Ok(file)
}

/// The cluster id in `meta.properties`, and whether a metadata quorum agreed
/// to it (`ferry.cluster.id.agreed=true`; a new data directory's random id has
/// not, and is replaced by the quorum's when the node first joins one).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterId {
    pub id: String,
    pub agreed: bool,
}

impl ClusterId {
    const AGREED: &'static str = "ferry.cluster.id.agreed=true";

    /// Reads `meta.properties`, writing a new random id on first start.
    pub fn load_or_create(data_dir: &Path, node_id: i32) -> Result<ClusterId, CoreError> {
        let path = data_dir.join("meta.properties");
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Some(id) = text.lines().find_map(|l| l.strip_prefix("cluster.id=")) {
                return Ok(ClusterId {
                    id: id.trim().to_string(),
                    agreed: text.lines().any(|l| l.trim() == Self::AGREED),
                });
            }
        }
        // Kafka's cluster ids are base64 of 16 random bytes; a uuid's simple form serves.
        let new = ClusterId {
            id: Uuid::new_v4().simple().to_string(),
            agreed: false,
        };
        new.write(data_dir, node_id)?;
        Ok(new)
    }

    fn write(&self, data_dir: &Path, node_id: i32) -> Result<(), CoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| CoreError::Storage(e.to_string()))?;
        let mut text = format!("version=1\ncluster.id={}\nnode.id={node_id}\n", self.id);
        if self.agreed {
            text.push_str(Self::AGREED);
            text.push('\n');
        }
        crate::partition::write_atomically(&data_dir.join("meta.properties"), text.as_bytes())
            .map_err(|e| CoreError::Storage(e.to_string()))
    }
}

/// Kafka's topic name rules.
pub fn validate_topic_name(name: &str) -> Result<(), CoreError> {
    if name.is_empty() {
        return Err(CoreError::InvalidTopic("topic name is empty".into()));
    }
    if name == "." || name == ".." {
        return Err(CoreError::InvalidTopic(format!(
            "topic name cannot be \"{name}\""
        )));
    }
    if name.len() > 249 {
        return Err(CoreError::InvalidTopic(format!(
            "topic name is longer than 249 characters: {}",
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '_' || *c == '-'))
    {
        return Err(CoreError::InvalidTopic(format!(
            "topic name {name:?} contains {c:?}; legal characters are ASCII letters and digits, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// Kafka refuses topics whose names differ only in '.' versus '_' (metric names clash).
fn collides(a: &str, b: &str) -> bool {
    a != b && a.replace('.', "_") == b.replace('.', "_")
}

/// Round-robin placement: partition i's replicas start at broker i (offset by `start`).
/// The live brokers in the order replicas are placed: one from each rack in
/// turn (`broker.rack`), as Kafka's rack-aware assignment does, so the
/// consecutive brokers a partition's replicas take sit on different racks
/// whenever there are enough racks. Without racks: node id order.
fn rack_alternated(image: &MetadataImage) -> Vec<i32> {
    let mut racks: BTreeMap<Option<&str>, Vec<i32>> = BTreeMap::new();
    for b in image.live_brokers() {
        racks.entry(b.rack.as_deref()).or_default().push(b.node_id);
    }
    let longest = racks.values().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|i| racks.values().filter_map(move |ids| ids.get(i).copied()))
        .collect()
}

/// Replicas of each new partition: `rf` consecutive brokers of `live`, the
/// window moving by one per partition (the first replica is the preferred leader).
fn place_replicas(live: &[i32], partitions: i32, rf: usize, start: usize) -> Vec<Vec<i32>> {
    (0..partitions as usize)
        .map(|i| {
            (0..rf)
                .map(|r| live[(start + i + r) % live.len()])
                .collect()
        })
        .collect()
}

fn apply_changes(
    mut configs: BTreeMap<String, String>,
    changes: Vec<ConfigChange>,
    default_of: impl Fn(&str) -> Option<&'static str>,
) -> Result<BTreeMap<String, String>, CoreError> {
    for change in changes {
        match change {
            ConfigChange::Set(k, v) => {
                configs.insert(k, v);
            }
            ConfigChange::Delete(k) => {
                configs.remove(&k);
            }
            ConfigChange::Append(k, v) | ConfigChange::Subtract(k, v)
                if default_of(&k).is_none() =>
            {
                return Err(CoreError::InvalidConfig(format!(
                    "unknown config {k} ({v})"
                )));
            }
            ConfigChange::Append(k, v) => {
                let mut items = list_items(&configs, &k, &default_of);
                for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if !items.iter().any(|i| i == item) {
                        items.push(item.to_string());
                    }
                }
                configs.insert(k, items.join(","));
            }
            ConfigChange::Subtract(k, v) => {
                let mut items = list_items(&configs, &k, &default_of);
                let removed: Vec<&str> = v.split(',').map(str::trim).collect();
                items.retain(|i| !removed.contains(&i.as_str()));
                configs.insert(k, items.join(","));
            }
        }
    }
    Ok(configs)
}

fn list_items(
    configs: &BTreeMap<String, String>,
    key: &str,
    default_of: &impl Fn(&str) -> Option<&'static str>,
) -> Vec<String> {
    let current = configs
        .get(key)
        .cloned()
        .or_else(|| default_of(key).map(str::to_string))
        .unwrap_or_default();
    current
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn diff_configs(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for (k, v) in new {
        if old.get(k) != Some(v) {
            out.push((k.clone(), Some(v.clone())));
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.push((k.clone(), None));
        }
    }
    out
}

#[cfg(test)]
mod placement_tests {
    use super::*;

    fn image(brokers: &[(i32, Option<&str>)]) -> MetadataImage {
        let mut image = MetadataImage::default();
        for (id, rack) in brokers {
            image.apply(&MetadataRecord::BrokerRegistered {
                node_id: *id,
                host: "127.0.0.1".into(),
                port: 9000 + id,
                rack: rack.map(str::to_string),
            });
        }
        image
    }

    #[test]
    fn replicas_of_a_partition_land_on_different_racks() {
        let image = image(&[
            (1, Some("a")),
            (2, Some("a")),
            (3, Some("b")),
            (4, Some("b")),
        ]);
        let live = rack_alternated(&image);
        assert_eq!(live, vec![1, 3, 2, 4]);
        let rack = |id: &i32| image.brokers[id].rack.clone();
        for replicas in place_replicas(&live, 8, 2, 0) {
            assert_ne!(rack(&replicas[0]), rack(&replicas[1]), "{replicas:?}");
        }
    }

    #[test]
    fn without_racks_replicas_go_round_robin_and_fenced_brokers_get_none() {
        let mut image = image(&[(1, None), (2, None), (3, None)]);
        assert_eq!(
            place_replicas(&rack_alternated(&image), 3, 3, 0),
            vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]]
        );
        image.apply(&MetadataRecord::BrokerFenced { node_id: 2 });
        assert_eq!(rack_alternated(&image), vec![1, 3]);
    }
}

#[cfg(test)]
mod produce_tests {
    use super::*;

    #[test]
    fn a_follower_answers_acks_all_with_not_leader_or_follower() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = BrokerOptions {
            node_id: 1,
            data_dir: dir.path().to_path_buf(),
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            rack: None,
            configs: BTreeMap::new(),
        };
        let broker = Broker::open(options, Arc::new(crate::SystemClock)).expect("broker");
        let topic = NewTopic {
            name: "t".into(),
            num_partitions: 1,
            replication_factor: 1,
            ..Default::default()
        };
        broker.create_topic(topic, false).expect("topic");
        let tp = TopicPartition::new("t", 0);
        let partition = broker.partition(&tp).expect("partition");
        partition.become_follower(1, 2).expect("follower");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // Before its ISR (none on a follower) is compared with min.insync.replicas.
        let result = runtime.block_on(broker.produce(&tp, Bytes::new(), -1, 1000));
        assert!(
            matches!(result, Err(CoreError::NotLeaderOrFollower)),
            "{result:?}"
        );
    }
}
