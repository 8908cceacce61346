//! The transaction coordinator: transactional ids, their producer ids and epochs,
//! and the two-phase end of a transaction, with its state in the compacted
//! internal topic `__transaction_state`.
//!
//! ```text
//!  frontend ──► TransactionCoordinator (lock, clock) ──► TxnManager (state.rs): pure
//!                  │ record appended under the lock,       state machine
//!                  │ fsync awaited outside it
//!                  ▼
//!  TxnStorage ──► __transaction_state-N (N = hash(transactional.id) mod partitions)
//!  TxnHost    ──► markers (control batches) into every partition of the transaction,
//!                 and into __consumer_offsets, where they release pending offsets
//!
//!  EndTxn: Ongoing ──persist──► PrepareCommit ──markers, fsync──► CompleteCommit ──persist
//!  tick:   transaction.timeout.ms passed ──► fence (epoch+1), abort
//!          Prepare* left by a crash       ──► markers again, complete
//! ```
//!
//! A marker written twice (crash after some markers) is harmless: a partition
//! with no open transaction of the producer just records an empty one.

pub mod records;
pub mod state;

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

pub use state::{EndStep, InitStep, TxnError, TxnManager, TxnMetadata, TxnState};

use crate::broker::Broker;
use crate::clock::Clock;
use crate::error::CoreError;
use crate::group::{Durability, TxnCommitRequest, OFFSETS_TOPIC};
use crate::partition::TopicPartition;

/// The internal topic of transaction state.
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";
/// Ferry runs one coordinator incarnation per node; markers carry this epoch.
pub const COORDINATOR_EPOCH: i32 = 0;
/// How often the coordinator looks for work (timeouts, unfinished completions).
const TICK_INTERVAL_MS: u64 = 500;

/// Where transaction records live.
///
/// To ensure correctness an implementation must keep each partition's records in
/// append order, return them in that order from `read_all` (after compaction the
/// latest record of each key), keep `partition_count` fixed for the lifetime of the
/// data, and make an `append` durable by the time its [`Durability`] resolves.
pub trait TxnStorage: Send + Sync {
    fn partition_count(&self) -> i32;
    fn append(
        &self,
        partition: i32,
        key: Bytes,
        value: Option<Bytes>,
        now_ms: i64,
    ) -> Result<Durability, CoreError>;
    fn read_all(&self, partition: i32) -> Result<Vec<(Bytes, Option<Bytes>)>, CoreError>;

    /// Whether this broker coordinates the transactional ids of `partition`.
    fn is_leader(&self, _partition: i32) -> bool {
        true
    }

    /// Creates the internal topic before the coordinator takes its lock:
    /// creating it elects this broker, which loads transaction state.
    fn ensure_ready(&self) -> Result<(), CoreError> {
        Ok(())
    }
}

/// What the coordinator needs from the rest of the broker.
pub trait TxnHost: Send + Sync {
    fn allocate_producer_id(&self) -> Result<i64, CoreError>;
    fn partition_exists(&self, tp: &TopicPartition) -> bool;
    /// The `__consumer_offsets` partition of a group (creating the topic if needed).
    fn offsets_partition(&self, group_id: &str) -> Result<TopicPartition, CoreError>;
    /// Writes a commit or abort marker into each partition and makes it durable.
    fn write_markers(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        partitions: Vec<TopicPartition>,
    ) -> Pin<Box<dyn Future<Output = Result<(), CoreError>> + Send>>;
}

pub struct TransactionCoordinator {
    state: Mutex<TxnManager>,
    /// Transactional ids whose markers are being written right now.
    in_flight: Mutex<HashSet<String>>,
    storage: Arc<dyn TxnStorage>,
    host: Arc<dyn TxnHost>,
    clock: Arc<dyn Clock>,
    next_timeout_check_ms: AtomicI64,
}

impl std::fmt::Debug for TransactionCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionCoordinator")
            .finish_non_exhaustive()
    }
}

fn storage_error(e: CoreError) -> TxnError {
    TxnError::Storage(e.to_string())
}

impl TransactionCoordinator {
    pub fn new(
        storage: Arc<dyn TxnStorage>,
        host: Arc<dyn TxnHost>,
        clock: Arc<dyn Clock>,
        max_timeout_ms: i32,
    ) -> TransactionCoordinator {
        TransactionCoordinator {
            state: Mutex::new(TxnManager::new(max_timeout_ms)),
            in_flight: Mutex::new(HashSet::new()),
            storage,
            host,
            clock,
            next_timeout_check_ms: AtomicI64::new(0),
        }
    }

    /// Rebuilds the state from every partition of `__transaction_state` (a
    /// coordinator that leads them all). Transactions left in a Prepare state are
    /// completed by the next [`TransactionCoordinator::tick`].
    pub fn load(&self) -> Result<(), CoreError> {
        for p in 0..self.storage.partition_count() {
            self.on_elected(p)?;
        }
        Ok(())
    }

    /// This broker now leads `partition` of `__transaction_state`: the
    /// transactional ids it holds are read back from it.
    pub fn on_elected(&self, partition: i32) -> Result<(), CoreError> {
        let records = self.storage.read_all(partition)?;
        let mut state = self.state.lock();
        let mut count = 0usize;
        for (key, value) in records {
            count += 1;
            let id = match records::decode_key(&key) {
                Ok(id) => id,
                Err(e) => {
                    tracing::warn!(partition, error = %e, "skipping a record of {TRANSACTION_STATE_TOPIC}");
                    continue;
                }
            };
            match value.map(|v| records::decode_value(&id, &v)).transpose() {
                Ok(m) => state.replay(id, m),
                Err(e) => {
                    tracing::warn!(partition, error = %e, "skipping a record of {TRANSACTION_STATE_TOPIC}")
                }
            }
        }
        if count > 0 {
            tracing::info!(
                partition,
                records = count,
                pending = state.pending_completions().len(),
                "loaded transaction state"
            );
        }
        Ok(())
    }

    /// This broker no longer leads `partition`: its transactional ids leave
    /// memory (the new leader loads them and finishes what is pending).
    pub fn on_resigned(&self, partition: i32) {
        let count = self.storage.partition_count();
        self.state
            .lock()
            .retain(|id| crate::group::records::partition_for(id, count) != partition);
    }

    fn check_owner(&self, transactional_id: &str) -> Result<(), TxnError> {
        if self.owns(transactional_id) {
            Ok(())
        } else {
            Err(TxnError::NotCoordinator)
        }
    }

    /// Whether this broker coordinates `transactional_id`.
    pub fn owns(&self, transactional_id: &str) -> bool {
        let partition =
            crate::group::records::partition_for(transactional_id, self.storage.partition_count());
        self.storage.is_leader(partition)
    }

    pub fn set_max_timeout_ms(&self, max_timeout_ms: i32) {
        self.state.lock().max_timeout_ms = max_timeout_ms;
    }

    fn persist(&self, m: &TxnMetadata, now_ms: i64) -> Result<Durability, TxnError> {
        let partition = crate::group::records::partition_for(
            &m.transactional_id,
            self.storage.partition_count(),
        );
        self.storage
            .append(
                partition,
                records::encode_key(&m.transactional_id),
                Some(records::encode_value(m)),
                now_ms,
            )
            .map_err(storage_error)
    }

    /// InitProducerId. Without a transactional id: an idempotent producer gets a
    /// new producer id, or with KIP-360 (v3+) an epoch bump of the one it holds.
    pub async fn init_producer_id(
        &self,
        transactional_id: Option<&str>,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        producer_ids_end: i64,
    ) -> Result<(i64, i16), TxnError> {
        let Some(id) = transactional_id else {
            if let Some((pid, epoch)) = expected {
                // Only ids this cluster handed out; at the end of the epochs a new id.
                if pid < producer_ids_end && (0..i16::MAX - 2).contains(&epoch) {
                    return Ok((pid, epoch + 1));
                }
            }
            let pid = self.host.allocate_producer_id().map_err(storage_error)?;
            return Ok((pid, 0));
        };
        self.storage.ensure_ready().map_err(storage_error)?;
        self.check_owner(id)?;
        // At most two rounds: abort an open transaction, then bump.
        for _ in 0..3 {
            let now = self.clock.now_ms();
            let (step, durable) = {
                let mut state = self.state.lock();
                let host = self.host.clone();
                let mut alloc = move || host.allocate_producer_id().map_err(storage_error);
                let step = state.init_producer_id(id, timeout_ms, expected, &mut alloc, now)?;
                let m = match &step {
                    InitStep::Ready(m) | InitStep::AbortFirst(m) => m,
                };
                if matches!(step, InitStep::AbortFirst(_)) {
                    self.in_flight.lock().insert(id.to_string());
                }
                let durable = self.persist(m, now);
                (step, durable)
            };
            match step {
                InitStep::Ready(m) => {
                    durable?.await.map_err(storage_error)?;
                    return Ok((m.producer_id, m.producer_epoch));
                }
                InitStep::AbortFirst(m) => {
                    let result = async {
                        durable?.await.map_err(storage_error)?;
                        self.finish(m).await
                    }
                    .await;
                    self.in_flight.lock().remove(id);
                    result?;
                }
            }
        }
        Err(TxnError::ConcurrentTransactions)
    }

    /// Writes the markers of a prepared transaction, then records its completion.
    async fn finish(&self, m: TxnMetadata) -> Result<(), TxnError> {
        let commit = m.state == TxnState::PrepareCommit;
        let partitions: Vec<TopicPartition> = m.partitions.iter().cloned().collect();
        self.host
            .write_markers(m.producer_id, m.producer_epoch, commit, partitions)
            .await
            .map_err(storage_error)?;
        let now = self.clock.now_ms();
        let durable = {
            let mut state = self.state.lock();
            state
                .complete(&m.transactional_id, now)
                .map(|done| self.persist(&done, now))
        };
        if let Some(durable) = durable {
            durable?.await.map_err(storage_error)?;
        }
        tracing::debug!(transactional_id = %m.transactional_id, producer_id = m.producer_id, commit, "transaction completed");
        Ok(())
    }

    /// AddPartitionsToTxn: per-partition results. An unknown partition fails the
    /// request: it gets UNKNOWN_TOPIC_OR_PARTITION, the others OPERATION_NOT_ATTEMPTED.
    pub async fn add_partitions(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: Vec<TopicPartition>,
    ) -> Result<Vec<(TopicPartition, Result<(), TxnError>)>, TxnError> {
        self.check_owner(transactional_id)?;
        let unknown: HashSet<TopicPartition> = partitions
            .iter()
            .filter(|tp| !self.host.partition_exists(tp))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            self.state
                .lock()
                .verify(transactional_id, producer_id, producer_epoch)?;
            return Ok(partitions
                .into_iter()
                .map(|tp| {
                    let e = if unknown.contains(&tp) {
                        TxnError::UnknownTopicOrPartition
                    } else {
                        TxnError::OperationNotAttempted
                    };
                    (tp, Err(e))
                })
                .collect());
        }
        let now = self.clock.now_ms();
        let durable = {
            let mut state = self.state.lock();
            if self.in_flight.lock().contains(transactional_id) {
                return Err(TxnError::ConcurrentTransactions);
            }
            state
                .add_partitions(
                    transactional_id,
                    producer_id,
                    producer_epoch,
                    &partitions,
                    now,
                )?
                .map(|m| self.persist(&m, now))
        };
        if let Some(durable) = durable {
            durable?.await.map_err(storage_error)?;
        }
        Ok(partitions.into_iter().map(|tp| (tp, Ok(()))).collect())
    }

    /// AddOffsetsToTxn: adds the group's `__consumer_offsets` partition.
    pub async fn add_offsets(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        group_id: &str,
    ) -> Result<(), TxnError> {
        self.check_owner(transactional_id)?;
        let tp = self
            .host
            .offsets_partition(group_id)
            .map_err(storage_error)?;
        let results = self
            .add_partitions(transactional_id, producer_id, producer_epoch, vec![tp])
            .await?;
        results.into_iter().try_for_each(|(_, r)| r)
    }

    /// Checks that a TxnOffsetCommit comes from the transaction's current producer.
    pub fn verify(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
    ) -> Result<(), TxnError> {
        let state = self.state.lock();
        let m = state.verify(transactional_id, producer_id, producer_epoch)?;
        match m.state {
            TxnState::Ongoing => Ok(()),
            TxnState::PrepareCommit | TxnState::PrepareAbort | TxnState::PrepareEpochFence => {
                Err(TxnError::ConcurrentTransactions)
            }
            s => Err(TxnError::InvalidTxnState(format!(
                "offset commit in state {}",
                s.name()
            ))),
        }
    }

    /// EndTxn: persists the Prepare state, writes the markers, completes.
    pub async fn end_txn(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
    ) -> Result<(), TxnError> {
        self.check_owner(transactional_id)?;
        let now = self.clock.now_ms();
        let (step, durable) = {
            let mut state = self.state.lock();
            let step = state.end_txn(transactional_id, producer_id, producer_epoch, commit, now)?;
            match &step {
                EndStep::AlreadyDone => (step, None),
                EndStep::Prepared(m) => {
                    self.in_flight.lock().insert(transactional_id.to_string());
                    let durable = self.persist(m, now);
                    (step.clone(), Some(durable))
                }
            }
        };
        let EndStep::Prepared(m) = step else {
            return Ok(());
        };
        let result = async {
            if let Some(durable) = durable {
                durable?.await.map_err(storage_error)?;
            }
            self.finish(m).await
        }
        .await;
        self.in_flight.lock().remove(transactional_id);
        result
    }

    /// Aborts transactions past their timeout (at most every `check_interval_ms`)
    /// and completes ones a crash left prepared.
    pub async fn tick(&self, check_interval_ms: i64) {
        let now = self.clock.now_ms();
        let mut work = Vec::new();
        {
            let mut state = self.state.lock();
            let in_flight = self.in_flight.lock().clone();
            if now >= self.next_timeout_check_ms.load(Ordering::Relaxed) {
                self.next_timeout_check_ms
                    .store(now + check_interval_ms.max(1), Ordering::Relaxed);
                for m in state.time_out(now, &|id| in_flight.contains(id)) {
                    let durable = self.persist(&m, now);
                    work.push((m, Some(durable)));
                }
            }
            for m in state.pending_completions() {
                if !in_flight.contains(&m.transactional_id)
                    && !work
                        .iter()
                        .any(|(w, _)| w.transactional_id == m.transactional_id)
                {
                    work.push((m, None));
                }
            }
            let mut flying = self.in_flight.lock();
            for (m, _) in &work {
                flying.insert(m.transactional_id.clone());
            }
        }
        for (m, durable) in work {
            let id = m.transactional_id.clone();
            let result = async {
                if let Some(durable) = durable {
                    durable?.await.map_err(storage_error)?;
                }
                self.finish(m).await
            }
            .await;
            self.in_flight.lock().remove(&id);
            if let Err(e) = result {
                tracing::warn!(transactional_id = %id, error = %e, "could not complete a transaction; retrying later");
            }
        }
    }

    /// DescribeTransactions.
    pub fn describe(&self, transactional_id: &str) -> Option<TxnMetadata> {
        self.state.lock().get(transactional_id).cloned()
    }

    /// ListTransactions: every transactional id matching the filters (empty: any).
    pub fn list(
        &self,
        states: &[String],
        producer_ids: &[i64],
        min_duration_ms: i64,
    ) -> Vec<TxnMetadata> {
        let now = self.clock.now_ms();
        self.state
            .lock()
            .all()
            .filter(|m| states.is_empty() || states.iter().any(|s| s == m.state.name()))
            .filter(|m| producer_ids.is_empty() || producer_ids.contains(&m.producer_id))
            .filter(|m| {
                min_duration_ms < 0
                    || (m.state == TxnState::Ongoing && now - m.start_ms >= min_duration_ms)
            })
            .cloned()
            .collect()
    }

    /// Runs [`TransactionCoordinator::tick`] and producer-id expiry until `shutdown` fires.
    pub async fn run_ticks(broker: Arc<Broker>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut next_expiry = 0i64;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(TICK_INTERVAL_MS)) => {}
                _ = shutdown.changed() => return,
            }
            let config = broker.config();
            let txns = broker.txns();
            txns.set_max_timeout_ms(
                config
                    .long("transaction.max.timeout.ms")
                    .clamp(1, i64::from(i32::MAX)) as i32,
            );
            txns.tick(config.long("transaction.abort.timed.out.transaction.cleanup.interval.ms"))
                .await;
            let now = broker.now_ms();
            if now >= next_expiry {
                next_expiry = now
                    + config
                        .long("producer.id.expiration.check.interval.ms")
                        .max(1_000);
                let expiration = config.long("producer.id.expiration.ms");
                for p in broker.partitions() {
                    p.expire_producers(now, expiration);
                }
            }
        }
    }
}

/// [`TxnStorage`] and [`TxnHost`] on the broker itself.
pub struct BrokerTxnHost {
    broker: Weak<Broker>,
}

impl BrokerTxnHost {
    pub fn new(broker: Weak<Broker>) -> BrokerTxnHost {
        BrokerTxnHost { broker }
    }

    fn broker(&self) -> Result<Arc<Broker>, CoreError> {
        self.broker.upgrade().ok_or(CoreError::ShuttingDown)
    }
}

impl TxnStorage for BrokerTxnHost {
    fn partition_count(&self) -> i32 {
        let Ok(broker) = self.broker() else {
            return 1;
        };
        match broker.image().topic(TRANSACTION_STATE_TOPIC) {
            Some(t) => (t.partitions.len() as i32).max(1),
            None => (broker.config().long("transaction.state.log.num.partitions") as i32).max(1),
        }
    }

    fn append(
        &self,
        partition: i32,
        key: Bytes,
        value: Option<Bytes>,
        now_ms: i64,
    ) -> Result<Durability, CoreError> {
        let broker = self.broker()?;
        broker.ensure_internal_topic(TRANSACTION_STATE_TOPIC)?;
        let p = broker
            .partition(&TopicPartition::new(TRANSACTION_STATE_TOPIC, partition))
            .ok_or(CoreError::UnknownTopicOrPartition)?;
        let mut builder = ferry_log::record::BatchBuilder::new(ferry_log::Compression::None);
        builder.append(now_ms, Some(key), value);
        let result = p.append(Bytes::from(builder.build()?), now_ms)?;
        Ok(Box::pin(async move {
            crate::cluster::durable(&p, result.last_offset, now_ms).await
        }))
    }

    fn ensure_ready(&self) -> Result<(), CoreError> {
        self.broker()?
            .ensure_internal_topic(TRANSACTION_STATE_TOPIC)
    }

    fn is_leader(&self, partition: i32) -> bool {
        self.broker()
            .is_ok_and(|b| b.leads_internal_partition(TRANSACTION_STATE_TOPIC, partition))
    }

    fn read_all(&self, partition: i32) -> Result<Vec<(Bytes, Option<Bytes>)>, CoreError> {
        let broker = self.broker()?;
        match broker.partition(&TopicPartition::new(TRANSACTION_STATE_TOPIC, partition)) {
            Some(p) => p.read_keyed(),
            None => Ok(Vec::new()),
        }
    }
}

impl TxnHost for BrokerTxnHost {
    fn allocate_producer_id(&self) -> Result<i64, CoreError> {
        self.broker()?.allocate_producer_id()
    }

    fn partition_exists(&self, tp: &TopicPartition) -> bool {
        self.broker().is_ok_and(|b| {
            b.image()
                .topic(&tp.topic)
                .is_some_and(|t| t.partitions.iter().any(|p| p.partition == tp.partition))
        })
    }

    fn offsets_partition(&self, group_id: &str) -> Result<TopicPartition, CoreError> {
        let broker = self.broker()?;
        broker.ensure_internal_topic(OFFSETS_TOPIC)?;
        Ok(TopicPartition::new(
            OFFSETS_TOPIC,
            broker.groups().partition_for(group_id),
        ))
    }

    fn write_markers(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        partitions: Vec<TopicPartition>,
    ) -> Pin<Box<dyn Future<Output = Result<(), CoreError>> + Send>> {
        let broker = self.broker();
        Box::pin(async move {
            broker?
                .write_txn_markers(producer_id, producer_epoch, commit, partitions)
                .await
        })
    }
}

/// TxnOffsetCommit through both coordinators: the transaction must be the
/// producer's current one; the offsets go to the group coordinator as pending.
pub async fn txn_offset_commit(
    broker: &Broker,
    transactional_id: &str,
    req: TxnCommitRequest,
) -> Result<crate::group::PartitionResults, TxnOffsetCommitError> {
    // The transaction is checked where it is known; in a cluster its coordinator
    // may be another broker, and then the producer epoch check of the
    // `__consumer_offsets` partition is what fences a stale producer.
    if broker.txns().owns(transactional_id) {
        broker
            .txns()
            .verify(transactional_id, req.producer_id, req.producer_epoch)
            .map_err(TxnOffsetCommitError::Txn)?;
    }
    broker
        .groups()
        .txn_commit_offsets(req)
        .await
        .map_err(TxnOffsetCommitError::Group)
}

/// Why a TxnOffsetCommit failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOffsetCommitError {
    Txn(TxnError),
    Group(crate::group::GroupError),
}

#[cfg(test)]
mod tests;
