//! Consumer groups: the classic rebalance protocol, the consumer protocol of
//! KIP-848 (`consumer.rs`, server-side assignors in `assignor.rs`) and committed
//! offsets, made durable in the compacted internal topic `__consumer_offsets`.
//!
//! ```text
//!  frontend ──► GroupCoordinator (lock, clock) ──► GroupManager (coordinator.rs, offsets.rs)
//!                     │                                 pure state machine: events in,
//!                     │                                 answers + GroupRecords out
//!                     ▼
//!               GroupStorage ──► __consumer_offsets-N (partition = hash(group) mod N)
//!                                append, then flush before a commit is acknowledged
//!  startup: every partition read from its start ──► GroupManager::replay
//!  maintenance: tick every ~100 ms (timeouts), offset expiry every retention check
//! ```
//!
//! Records reach the log in the order the state machine emitted them, because
//! they are appended while the state lock is held; only the fsync is awaited
//! outside it. A commit is answered after its records are durable. In-memory
//! state is updated at append time (like acks=1 for readers of the group state).

pub mod assignor;
pub mod consumer;
pub mod coordinator;
pub mod offsets;
pub mod records;
pub mod txn_offsets;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

pub use assignor::Assignment;
pub use consumer::{
    ConsumerGroupSummary, ConsumerHeartbeat, ConsumerHeartbeatResponse, ConsumerMember,
    ConsumerMemberSummary, MemberState, TopicInfo,
};
pub use coordinator::{
    GroupConfig, GroupError, GroupManager, GroupOverview, GroupRecord, GroupState, GroupSummary,
    GroupType, JoinRequest, JoinResponse, JoinedMember, MemberSummary, Reply, SyncRequest,
    SyncResponse,
};
pub use offsets::{
    subscribed_topics, CommitRequest, CommittedOffset, OffsetCommit, PartitionResults,
};
pub use txn_offsets::{StoredEntry, TxnCommitRequest};

use crate::broker::Broker;
use crate::clock::Clock;
use crate::config::BrokerConfig;
use crate::error::CoreError;
use crate::partition::TopicPartition;

/// The internal topic of committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// How often timeouts are checked.
pub const TICK_INTERVAL_MS: u64 = 100;

/// Waits until appended records are durable.
pub type Durability = Pin<Box<dyn Future<Output = Result<(), CoreError>> + Send>>;

/// Where group records live.
///
/// To ensure correctness an implementation must:
/// - keep the records of one partition in append order, and return them in that
///   order from `read_all` (after compaction: the latest record of each key, in order);
/// - report from `partition_count` the same number for the lifetime of the data,
///   since it decides which partition holds a group;
/// - make the records of an `append` durable by the time its [`Durability`] resolves.
pub trait GroupStorage: Send + Sync {
    fn partition_count(&self) -> i32;
    /// Appends `(key, value)` records (value `None`: tombstone) to one partition.
    fn append(
        &self,
        partition: i32,
        records: Vec<(Bytes, Option<Bytes>)>,
        now_ms: i64,
    ) -> Result<Durability, CoreError>;
    /// Every record of one partition, from its start.
    fn read_all(&self, partition: i32) -> Result<Vec<(Bytes, Option<Bytes>)>, CoreError>;

    /// Whether this broker coordinates the groups of `partition` (leads it).
    fn is_leader(&self, _partition: i32) -> bool {
        true
    }

    /// Creates what appends need (the internal topic) before the coordinator
    /// takes its lock: creating it elects this broker, which loads group state.
    fn ensure_ready(&self) -> Result<(), CoreError> {
        Ok(())
    }

    /// Appends records as one transactional batch of a producer (TxnOffsetCommit).
    fn append_txn(
        &self,
        _partition: i32,
        _records: Vec<(Bytes, Option<Bytes>)>,
        _producer_id: i64,
        _producer_epoch: i16,
        _now_ms: i64,
    ) -> Result<Durability, CoreError> {
        Err(CoreError::InvalidRequest(
            "this group storage keeps no transactional offsets".into(),
        ))
    }

    /// Every entry of one partition with its transaction information, from its start.
    fn read_entries(&self, partition: i32) -> Result<Vec<StoredEntry>, CoreError> {
        Ok(self
            .read_all(partition)?
            .into_iter()
            .map(|(key, value)| StoredEntry::Record {
                key,
                value,
                producer_id: None,
            })
            .collect())
    }
}

/// The group coordinator of this broker: the state machine behind a lock, with
/// its storage and clock.
pub struct GroupCoordinator {
    state: Mutex<GroupManager>,
    storage: Arc<dyn GroupStorage>,
    clock: Arc<dyn Clock>,
    next_expiry_ms: AtomicI64,
}

impl std::fmt::Debug for GroupCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCoordinator").finish_non_exhaustive()
    }
}

impl GroupConfig {
    /// The group settings of a broker configuration.
    pub fn from_broker(config: &BrokerConfig) -> GroupConfig {
        GroupConfig {
            initial_rebalance_delay_ms: config.long("group.initial.rebalance.delay.ms"),
            min_session_timeout_ms: config.long("group.min.session.timeout.ms"),
            max_session_timeout_ms: config.long("group.max.session.timeout.ms"),
            max_size: usize::try_from(config.long("group.max.size")).unwrap_or(1),
            offset_metadata_max_bytes: usize::try_from(config.long("offset.metadata.max.bytes"))
                .unwrap_or(0),
            offsets_retention_ms: config
                .long("offsets.retention.minutes")
                .saturating_mul(60_000),
            offsets_retention_check_interval_ms: config.long("offsets.retention.check.interval.ms"),
            consumer_session_timeout_ms: config.long("group.consumer.session.timeout.ms"),
            consumer_heartbeat_interval_ms: config.long("group.consumer.heartbeat.interval.ms"),
            consumer_max_size: usize::try_from(config.long("group.consumer.max.size")).unwrap_or(1),
        }
    }
}

impl GroupCoordinator {
    pub fn new(
        storage: Arc<dyn GroupStorage>,
        clock: Arc<dyn Clock>,
        config: GroupConfig,
    ) -> GroupCoordinator {
        GroupCoordinator {
            state: Mutex::new(GroupManager::new(config)),
            storage,
            clock,
            next_expiry_ms: AtomicI64::new(0),
        }
    }

    /// Rebuilds groups and offsets by reading every partition from its start.
    pub fn load(&self) -> Result<(), CoreError> {
        let now = self.clock.now_ms();
        let mut state = self.state.lock();
        let mut count = 0usize;
        for p in 0..self.storage.partition_count() {
            // Transactional offsets wait for their producer's marker (txn_offsets.rs).
            count += state.replay_entries(self.storage.read_entries(p)?, now);
        }
        if count > 0 {
            tracing::info!(
                records = count,
                groups = state.groups.len(),
                "loaded groups and offsets"
            );
        }
        Ok(())
    }

    pub fn partition_for(&self, group_id: &str) -> i32 {
        records::partition_for(group_id, self.storage.partition_count())
    }

    /// Whether this broker is `group_id`'s coordinator (it leads the group's
    /// partition of `__consumer_offsets`); others answer NOT_COORDINATOR.
    pub fn owns(&self, group_id: &str) -> bool {
        self.storage.is_leader(self.partition_for(group_id))
    }

    /// Creates `__consumer_offsets` on first use, before the state lock is
    /// taken (creating it elects this broker, which loads group state).
    fn ready(&self) -> Result<(), GroupError> {
        self.storage
            .ensure_ready()
            .map_err(|e| GroupError::Storage(e.to_string()))
    }

    fn check_owner(&self, group_id: &str) -> Result<(), GroupError> {
        if self.owns(group_id) {
            Ok(())
        } else {
            Err(GroupError::NotCoordinator)
        }
    }

    /// This broker now leads `partition` of `__consumer_offsets`: its groups and
    /// offsets are read back from it, as Kafka's coordinator loads a partition.
    pub fn on_elected(&self, partition: i32) -> Result<(), CoreError> {
        let now = self.clock.now_ms();
        let entries = self.storage.read_entries(partition)?;
        let mut state = self.state.lock();
        let count = state.replay_entries(entries, now);
        if count > 0 {
            tracing::info!(
                partition,
                records = count,
                "loaded the groups of a {OFFSETS_TOPIC} partition"
            );
        }
        Ok(())
    }

    /// This broker no longer leads `partition`: its groups leave memory (the new
    /// leader loads them).
    pub fn on_resigned(&self, partition: i32) {
        let count = self.storage.partition_count();
        let mut state = self.state.lock();
        let before = state.groups.len();
        state
            .groups
            .retain(|id, _| records::partition_for(id, count) != partition);
        if before > state.groups.len() {
            tracing::info!(
                partition,
                groups = before - state.groups.len(),
                "no longer coordinating the groups of a {OFFSETS_TOPIC} partition"
            );
        }
    }

    /// Runs `f` on the state machine and appends the records it emitted, in order,
    /// before the lock is released. The returned future waits for their fsync.
    fn run<T>(
        &self,
        f: impl FnOnce(&mut GroupManager, i64) -> T,
    ) -> (T, Result<Durability, CoreError>) {
        let now = self.clock.now_ms();
        let mut state = self.state.lock();
        let out = f(&mut state, now);
        let records = state.take_records();
        let durable = self.append(records, now);
        (out, durable)
    }

    fn append(&self, records: Vec<GroupRecord>, now_ms: i64) -> Result<Durability, CoreError> {
        if records.is_empty() {
            return Ok(Box::pin(async { Ok(()) }));
        }
        let count = self.storage.partition_count();
        let mut by_partition: BTreeMap<i32, Vec<(Bytes, Option<Bytes>)>> = BTreeMap::new();
        for r in records {
            by_partition
                .entry(records::partition_for(&r.group_id, count))
                .or_default()
                .push((r.key, r.value));
        }
        let mut waits = Vec::new();
        for (p, batch) in by_partition {
            waits.push(self.storage.append(p, batch, now_ms)?);
        }
        Ok(Box::pin(async move {
            for w in waits {
                w.await?;
            }
            Ok(())
        }))
    }

    fn log_unflushed(result: Result<Durability, CoreError>) {
        match result {
            Ok(durable) => {
                // Group metadata becomes durable with the next flush; nobody waits for it.
                drop(durable);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not write group records to {OFFSETS_TOPIC}")
            }
        }
    }

    pub fn join(&self, req: JoinRequest) -> Reply<JoinResponse> {
        // A group's first join creates `__consumer_offsets`.
        if self.ready().is_err() {
            return Reply::Now(JoinResponse::error(
                req.member_id,
                GroupError::CoordinatorNotAvailable,
            ));
        }
        if !self.owns(&req.group_id) {
            return Reply::Now(JoinResponse::error(
                req.member_id,
                GroupError::NotCoordinator,
            ));
        }
        let (reply, durable) = self.run(|s, now| s.join(req, now));
        Self::log_unflushed(durable);
        reply
    }

    pub fn sync(&self, req: SyncRequest) -> Reply<SyncResponse> {
        if !self.owns(&req.group_id) {
            return Reply::Now(SyncResponse::error(GroupError::NotCoordinator));
        }
        let (reply, durable) = self.run(|s, now| s.sync(req, now));
        Self::log_unflushed(durable);
        reply
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        group_instance_id: Option<&str>,
        generation_id: i32,
    ) -> Result<(), GroupError> {
        self.check_owner(group_id)?;
        let (result, durable) = self
            .run(|s, now| s.heartbeat(group_id, member_id, group_instance_id, generation_id, now));
        Self::log_unflushed(durable);
        result
    }

    pub fn leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<Result<(), GroupError>>, GroupError> {
        self.check_owner(group_id)?;
        let (result, durable) = self.run(|s, now| s.leave(group_id, members, now));
        Self::log_unflushed(durable);
        result
    }

    /// ConsumerGroupHeartbeat (KIP-848). `topics` looks subscribed topics up in
    /// the current metadata.
    pub fn consumer_heartbeat(
        &self,
        req: ConsumerHeartbeat,
        topics: consumer::TopicLookup,
    ) -> Result<ConsumerHeartbeatResponse, GroupError> {
        self.ready()?;
        self.check_owner(&req.group_id)?;
        let (result, durable) = self.run(|s, now| s.consumer_heartbeat(req, topics, now));
        Self::log_unflushed(durable);
        result
    }

    /// ConsumerGroupDescribe of one group.
    pub fn consumer_describe(&self, group_id: &str) -> Result<ConsumerGroupSummary, GroupError> {
        self.state.lock().consumer_describe(group_id)
    }

    /// OffsetCommit, answered once the commit is durable.
    pub async fn commit_offsets(&self, req: CommitRequest) -> Result<PartitionResults, GroupError> {
        self.ready()?;
        self.check_owner(&req.group_id)?;
        let (result, durable) = self.run(|s, now| s.commit_offsets(req, now));
        let result = result?;
        let storage_error = match durable {
            Ok(wait) => wait.await.err(),
            Err(e) => Some(e),
        };
        if let Some(e) = storage_error {
            tracing::warn!(error = %e, "an offset commit could not be made durable");
            return Err(GroupError::Storage(e.to_string()));
        }
        Ok(result)
    }

    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[TopicPartition]>,
    ) -> Vec<(TopicPartition, Option<CommittedOffset>)> {
        self.state.lock().fetch_offsets(group_id, partitions)
    }

    pub async fn delete_offsets(
        &self,
        group_id: &str,
        partitions: &[TopicPartition],
    ) -> Result<PartitionResults, GroupError> {
        self.check_owner(group_id)?;
        let (result, durable) = self.run(|s, _| s.delete_offsets(group_id, partitions));
        let result = result?;
        if let Err(e) = wait(durable).await {
            return Err(GroupError::Storage(e.to_string()));
        }
        Ok(result)
    }

    pub async fn delete_groups(&self, group_ids: &[String]) -> Vec<Result<(), GroupError>> {
        let (results, durable) = self.run(|s, _| s.delete_groups(group_ids));
        if let Err(e) = wait(durable).await {
            return results
                .into_iter()
                .map(|r| r.and(Err(GroupError::Storage(e.to_string()))))
                .collect();
        }
        results
    }

    /// TxnOffsetCommit: appends the offsets as a transactional batch of the
    /// producer and answers once it is durable; they stay pending until the
    /// transaction's marker ([`GroupCoordinator::complete_txn`]).
    pub async fn txn_commit_offsets(
        &self,
        req: TxnCommitRequest,
    ) -> Result<PartitionResults, GroupError> {
        self.ready()?;
        self.check_owner(&req.group_id)?;
        let now = self.clock.now_ms();
        let durable = {
            let mut state = self.state.lock();
            let (results, records, staged) = state.txn_commit_offsets(&req, now)?;
            if records.is_empty() {
                return Ok(results);
            }
            let partition = records::partition_for(&req.group_id, self.storage.partition_count());
            let batch = records.into_iter().map(|r| (r.key, r.value)).collect();
            let durable = self
                .storage
                .append_txn(partition, batch, req.producer_id, req.producer_epoch, now)
                .map_err(|e| GroupError::Storage(e.to_string()))?;
            state.stage_txn_offsets(req.producer_id, &req.group_id, staged);
            (results, durable)
        };
        let (results, durable) = durable;
        durable
            .await
            .map_err(|e| GroupError::Storage(e.to_string()))?;
        Ok(results)
    }

    /// The marker of `producer_id`'s transaction was written to `__consumer_offsets`.
    pub fn complete_txn(&self, producer_id: i64, commit: bool) {
        let n = self.state.lock().complete_txn_offsets(producer_id, commit);
        if n > 0 {
            tracing::debug!(
                producer_id,
                commit,
                offsets = n,
                "completed transactional offsets"
            );
        }
    }

    /// Whether an open transaction holds an offset of `tp` for `group_id`.
    pub fn has_pending_txn_offset(&self, group_id: &str, tp: &TopicPartition) -> bool {
        self.state.lock().has_pending_txn_offset(group_id, tp)
    }

    pub fn describe(&self, group_id: &str) -> Option<GroupSummary> {
        self.state.lock().describe(group_id)
    }

    pub fn list(&self) -> Vec<GroupOverview> {
        self.state.lock().list()
    }

    /// Drives timeouts; expires offsets every `offsets.retention.check.interval.ms`.
    pub fn tick(&self, config: GroupConfig) {
        let (_, durable) = self.run(|s, now| {
            let interval = config.offsets_retention_check_interval_ms.max(1);
            s.set_config(config);
            s.tick(now);
            if now >= self.next_expiry_ms.load(Ordering::Relaxed) {
                self.next_expiry_ms.store(now + interval, Ordering::Relaxed);
                s.expire_offsets(now);
            }
        });
        Self::log_unflushed(durable);
    }

    /// Ticks every [`TICK_INTERVAL_MS`] until `shutdown` fires.
    pub async fn run_ticks(broker: Arc<Broker>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(TICK_INTERVAL_MS)) => {}
                _ = shutdown.changed() => return,
            }
            broker
                .groups()
                .tick(GroupConfig::from_broker(&broker.config()));
        }
    }
}

async fn wait(durable: Result<Durability, CoreError>) -> Result<(), CoreError> {
    durable?.await
}

/// [`GroupStorage`] on the broker's own partitions of `__consumer_offsets`,
/// created (compacted) on first use.
pub struct BrokerGroupStorage {
    broker: Weak<Broker>,
}

impl BrokerGroupStorage {
    pub fn new(broker: Weak<Broker>) -> BrokerGroupStorage {
        BrokerGroupStorage { broker }
    }

    fn broker(&self) -> Result<Arc<Broker>, CoreError> {
        self.broker.upgrade().ok_or(CoreError::ShuttingDown)
    }
}

impl GroupStorage for BrokerGroupStorage {
    fn ensure_ready(&self) -> Result<(), CoreError> {
        self.broker()?.ensure_internal_topic(OFFSETS_TOPIC)
    }

    fn is_leader(&self, partition: i32) -> bool {
        self.broker()
            .is_ok_and(|b| b.leads_internal_partition(OFFSETS_TOPIC, partition))
    }

    fn partition_count(&self) -> i32 {
        let Ok(broker) = self.broker() else {
            return 1;
        };
        match broker.image().topic(OFFSETS_TOPIC) {
            Some(t) => (t.partitions.len() as i32).max(1),
            None => (broker.config().long("offsets.topic.num.partitions") as i32).max(1),
        }
    }

    fn append(
        &self,
        partition: i32,
        records: Vec<(Bytes, Option<Bytes>)>,
        now_ms: i64,
    ) -> Result<Durability, CoreError> {
        let broker = self.broker()?;
        broker.ensure_internal_topic(OFFSETS_TOPIC)?;
        let p = broker
            .partition(&TopicPartition::new(OFFSETS_TOPIC, partition))
            .ok_or(CoreError::UnknownTopicOrPartition)?;
        let mut builder = ferry_log::record::BatchBuilder::new(ferry_log::Compression::None);
        for (key, value) in records {
            builder.append(now_ms, Some(key), value);
        }
        let batch = builder.build()?;
        let result = p.append(Bytes::from(batch), now_ms)?;
        Ok(Box::pin(async move {
            crate::cluster::durable(&p, result.last_offset, now_ms).await
        }))
    }

    fn append_txn(
        &self,
        partition: i32,
        records: Vec<(Bytes, Option<Bytes>)>,
        producer_id: i64,
        producer_epoch: i16,
        now_ms: i64,
    ) -> Result<Durability, CoreError> {
        let broker = self.broker()?;
        broker.ensure_internal_topic(OFFSETS_TOPIC)?;
        let p = broker
            .partition(&TopicPartition::new(OFFSETS_TOPIC, partition))
            .ok_or(CoreError::UnknownTopicOrPartition)?;
        let mut builder = ferry_log::record::BatchBuilder::new(ferry_log::Compression::None)
            .producer(producer_id, producer_epoch, -1)
            .transactional(true);
        for (key, value) in records {
            builder.append(now_ms, Some(key), value);
        }
        let batch = builder.build()?;
        let result = p.append_from_coordinator(Bytes::from(batch), now_ms)?;
        Ok(Box::pin(async move {
            crate::cluster::durable(&p, result.last_offset, now_ms).await
        }))
    }

    fn read_entries(&self, partition: i32) -> Result<Vec<StoredEntry>, CoreError> {
        let broker = self.broker()?;
        let Some(p) = broker.partition(&TopicPartition::new(OFFSETS_TOPIC, partition)) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        p.replay(|header, records| {
            if header.is_control() {
                let commit = records
                    .first()
                    .and_then(|r| r.key.as_ref())
                    .is_some_and(|k| k.len() >= 4 && i16::from_be_bytes([k[2], k[3]]) == 1);
                out.push(StoredEntry::Marker {
                    producer_id: header.producer_id,
                    commit,
                });
                return Ok(());
            }
            let producer_id = header.is_transactional().then_some(header.producer_id);
            out.extend(records.into_iter().filter_map(|r| {
                r.key.map(|key| StoredEntry::Record {
                    key,
                    value: r.value,
                    producer_id,
                })
            }));
            Ok(())
        })?;
        Ok(out)
    }

    fn read_all(&self, partition: i32) -> Result<Vec<(Bytes, Option<Bytes>)>, CoreError> {
        let broker = self.broker()?;
        match broker.partition(&TopicPartition::new(OFFSETS_TOPIC, partition)) {
            Some(p) => p.read_keyed(),
            None => Ok(Vec::new()),
        }
    }
}
