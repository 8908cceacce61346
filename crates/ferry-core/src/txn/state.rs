//! The transaction coordinator's state machine: `transactional.id` → producer id,
//! epoch, state and partitions. Pure: time comes in as `now_ms`, and every call
//! returns the metadata the owner must persist before answering.
//!
//! ```text
//!            InitProducerId (epoch bump)      AddPartitions/AddOffsets
//!  (none) ──────────────► Empty ─────────────────────────► Ongoing ◄──┐ more partitions
//!                           ▲                                 │  └────┘
//!                           │ InitProducerId     EndTxn(commit)│  EndTxn(abort), timeout,
//!                           │                                 ▼  InitProducerId (fence, epoch+1)
//!              CompleteCommit ◄── markers ── PrepareCommit   PrepareAbort ── markers ──► CompleteAbort
//! ```
//!
//! The Prepare states are persisted before any marker is written, so a crash
//! between the two is finished at restart (`pending_completions`).

use std::collections::{BTreeMap, BTreeSet};

use crate::partition::TopicPartition;

/// Kafka's `TransactionState`, with its ids in `__transaction_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
    Dead,
    PrepareEpochFence,
}

impl TxnState {
    pub fn id(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }

    pub fn from_id(id: i8) -> Option<TxnState> {
        Some(match id {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            6 => TxnState::Dead,
            7 => TxnState::PrepareEpochFence,
            _ => return None,
        })
    }

    /// The name DescribeTransactions and ListTransactions use.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    fn is_prepare(self) -> bool {
        matches!(
            self,
            TxnState::PrepareCommit | TxnState::PrepareAbort | TxnState::PrepareEpochFence
        )
    }
}

/// One transactional id's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMetadata {
    pub transactional_id: String,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<TopicPartition>,
    /// When the open transaction began (-1: none).
    pub start_ms: i64,
    pub last_update_ms: i64,
}

/// Why a transactional request was refused, in the coordinator's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    #[error("the producer id does not belong to the transactional id")]
    InvalidProducerIdMapping,
    #[error("a newer producer with the same transactional id fenced this one")]
    ProducerFenced,
    #[error("the transaction is completing; retry")]
    ConcurrentTransactions,
    #[error("invalid transaction state: {0}")]
    InvalidTxnState(String),
    #[error("transaction.timeout.ms is larger than transaction.max.timeout.ms")]
    InvalidTransactionTimeout,
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    #[error("not attempted because another partition failed")]
    OperationNotAttempted,
    #[error("the coordinator is not available")]
    CoordinatorNotAvailable,
    #[error("this broker does not coordinate the transactional id")]
    NotCoordinator,
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("storage error: {0}")]
    Storage(String),
}

/// What InitProducerId needs the owner to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitStep {
    /// Persist this, then answer its producer id and epoch.
    Ready(TxnMetadata),
    /// An open transaction was fenced (epoch bumped) and must be aborted first:
    /// persist this PrepareAbort, write the markers, complete it, then ask again.
    AbortFirst(TxnMetadata),
}

/// What EndTxn needs the owner to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndStep {
    /// A retry of a transaction that already ended this way.
    AlreadyDone,
    /// Persist this Prepare state, write the markers, then `complete`.
    Prepared(TxnMetadata),
}

/// Epochs stop short of the maximum, which Kafka reserves.
const EPOCH_MAX: i16 = i16::MAX - 1;

#[derive(Debug, Default)]
pub struct TxnManager {
    txns: BTreeMap<String, TxnMetadata>,
    /// `transaction.max.timeout.ms`
    pub max_timeout_ms: i32,
}

impl TxnManager {
    pub fn new(max_timeout_ms: i32) -> TxnManager {
        TxnManager {
            txns: BTreeMap::new(),
            max_timeout_ms,
        }
    }

    /// Keeps only the transactional ids `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.txns.retain(|id, _| keep(id));
    }

    pub fn get(&self, transactional_id: &str) -> Option<&TxnMetadata> {
        self.txns.get(transactional_id)
    }

    pub fn all(&self) -> impl Iterator<Item = &TxnMetadata> {
        self.txns.values()
    }

    /// InitProducerId with a transactional id. `expected` is the producer id and
    /// epoch the client holds (v3+, KIP-360), if any.
    pub fn init_producer_id(
        &mut self,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        new_producer_id: &mut dyn FnMut() -> Result<i64, TxnError>,
        now_ms: i64,
    ) -> Result<InitStep, TxnError> {
        if transactional_id.is_empty() {
            return Err(TxnError::InvalidRequest("empty transactional id".into()));
        }
        if timeout_ms <= 0 || timeout_ms > self.max_timeout_ms {
            return Err(TxnError::InvalidTransactionTimeout);
        }
        let Some(m) = self.txns.get_mut(transactional_id) else {
            let m = TxnMetadata {
                transactional_id: transactional_id.to_string(),
                producer_id: new_producer_id()?,
                producer_epoch: 0,
                timeout_ms,
                state: TxnState::Empty,
                partitions: BTreeSet::new(),
                start_ms: -1,
                last_update_ms: now_ms,
            };
            self.txns.insert(transactional_id.to_string(), m.clone());
            return Ok(InitStep::Ready(m));
        };
        if let Some((pid, epoch)) = expected {
            if pid != m.producer_id || epoch != m.producer_epoch {
                return Err(TxnError::ProducerFenced);
            }
        }
        match m.state {
            s if s.is_prepare() => Err(TxnError::ConcurrentTransactions),
            TxnState::Ongoing => {
                // Fence the running producer, then abort what it left open.
                m.producer_epoch = (m.producer_epoch + 1).min(EPOCH_MAX);
                m.state = TxnState::PrepareAbort;
                m.last_update_ms = now_ms;
                Ok(InitStep::AbortFirst(m.clone()))
            }
            _ => {
                if m.producer_epoch >= EPOCH_MAX - 1 {
                    m.producer_id = new_producer_id()?;
                    m.producer_epoch = 0;
                } else {
                    m.producer_epoch += 1;
                }
                m.state = TxnState::Empty;
                m.partitions.clear();
                m.timeout_ms = timeout_ms;
                m.start_ms = -1;
                m.last_update_ms = now_ms;
                Ok(InitStep::Ready(m.clone()))
            }
        }
    }

    /// The transaction of a request, checked against the producer id and epoch.
    pub fn verify(
        &self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
    ) -> Result<&TxnMetadata, TxnError> {
        let m = self
            .txns
            .get(transactional_id)
            .ok_or(TxnError::InvalidProducerIdMapping)?;
        if m.producer_id != producer_id {
            return Err(TxnError::InvalidProducerIdMapping);
        }
        if m.producer_epoch != producer_epoch {
            return Err(TxnError::ProducerFenced);
        }
        Ok(m)
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn. `None`: nothing changed.
    pub fn add_partitions(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[TopicPartition],
        now_ms: i64,
    ) -> Result<Option<TxnMetadata>, TxnError> {
        let state = self
            .verify(transactional_id, producer_id, producer_epoch)?
            .state;
        if state.is_prepare() {
            return Err(TxnError::ConcurrentTransactions);
        }
        if state == TxnState::Dead {
            return Err(TxnError::InvalidTxnState(
                "the transactional id is dead".into(),
            ));
        }
        let m = self
            .txns
            .get_mut(transactional_id)
            .ok_or(TxnError::InvalidProducerIdMapping)?;
        if m.state == TxnState::Ongoing && partitions.iter().all(|tp| m.partitions.contains(tp)) {
            return Ok(None);
        }
        if m.state != TxnState::Ongoing {
            m.partitions.clear();
            m.start_ms = now_ms;
        }
        m.partitions.extend(partitions.iter().cloned());
        m.state = TxnState::Ongoing;
        m.last_update_ms = now_ms;
        Ok(Some(m.clone()))
    }

    /// EndTxn.
    pub fn end_txn(
        &mut self,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        now_ms: i64,
    ) -> Result<EndStep, TxnError> {
        let state = self
            .verify(transactional_id, producer_id, producer_epoch)?
            .state;
        let wrong = |s: TxnState| {
            TxnError::InvalidTxnState(format!(
                "{} in state {}",
                if commit { "commit" } else { "abort" },
                s.name()
            ))
        };
        match (state, commit) {
            (TxnState::Ongoing, _) => {
                let m = self
                    .txns
                    .get_mut(transactional_id)
                    .ok_or(TxnError::InvalidProducerIdMapping)?;
                m.state = if commit {
                    TxnState::PrepareCommit
                } else {
                    TxnState::PrepareAbort
                };
                m.last_update_ms = now_ms;
                Ok(EndStep::Prepared(m.clone()))
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => {
                Ok(EndStep::AlreadyDone)
            }
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                Err(TxnError::ConcurrentTransactions)
            }
            (s, _) => Err(wrong(s)),
        }
    }

    /// Markers are written: PrepareCommit → CompleteCommit, PrepareAbort → CompleteAbort.
    pub fn complete(&mut self, transactional_id: &str, now_ms: i64) -> Option<TxnMetadata> {
        let m = self.txns.get_mut(transactional_id)?;
        m.state = match m.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            TxnState::PrepareAbort | TxnState::PrepareEpochFence => TxnState::CompleteAbort,
            _ => return None,
        };
        m.partitions.clear();
        m.start_ms = -1;
        m.last_update_ms = now_ms;
        Some(m.clone())
    }

    /// Open transactions past `transaction.timeout.ms`: fenced (epoch + 1) and
    /// moved to PrepareAbort. `skip` names ids whose completion is under way.
    pub fn time_out(&mut self, now_ms: i64, skip: &dyn Fn(&str) -> bool) -> Vec<TxnMetadata> {
        let mut out = Vec::new();
        for (id, m) in self.txns.iter_mut() {
            if m.state == TxnState::Ongoing
                && now_ms.saturating_sub(m.start_ms) > i64::from(m.timeout_ms)
                && !skip(id)
            {
                tracing::info!(transactional_id = %id, producer_id = m.producer_id, "aborting a transaction past its timeout");
                m.producer_epoch = (m.producer_epoch + 1).min(EPOCH_MAX);
                m.state = TxnState::PrepareAbort;
                m.last_update_ms = now_ms;
                out.push(m.clone());
            }
        }
        out
    }

    /// Transactions in a Prepare state (after a restart: their markers may be missing).
    pub fn pending_completions(&self) -> Vec<TxnMetadata> {
        self.txns
            .values()
            .filter(|m| m.state.is_prepare())
            .cloned()
            .collect()
    }

    /// Applies one record read back from `__transaction_state` (`None`: tombstone).
    pub fn replay(&mut self, transactional_id: String, value: Option<TxnMetadata>) {
        match value {
            Some(m) => {
                self.txns.insert(transactional_id, m);
            }
            None => {
                self.txns.remove(&transactional_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> impl FnMut() -> Result<i64, TxnError> {
        let mut next = 100;
        move || {
            next += 1;
            Ok(next)
        }
    }

    fn ready(step: InitStep) -> TxnMetadata {
        match step {
            InitStep::Ready(m) => m,
            other => panic!("expected Ready, got {other:?}"),
        }
    }

    #[test]
    fn init_allocates_then_bumps_the_epoch_and_fences_the_old_producer() {
        let mut alloc = ids();
        let mut t = TxnManager::new(900_000);
        let a = ready(
            t.init_producer_id("tx", 60_000, None, &mut alloc, 1_000)
                .expect("init"),
        );
        assert_eq!(
            (a.producer_id, a.producer_epoch, a.state),
            (101, 0, TxnState::Empty)
        );
        let b = ready(
            t.init_producer_id("tx", 60_000, None, &mut alloc, 2_000)
                .expect("init"),
        );
        assert_eq!((b.producer_id, b.producer_epoch), (101, 1));
        assert_eq!(
            t.add_partitions("tx", 101, 0, &[TopicPartition::new("t", 0)], 3_000),
            Err(TxnError::ProducerFenced)
        );
        assert_eq!(
            t.end_txn("tx", 101, 0, true, 3_000),
            Err(TxnError::ProducerFenced)
        );
        assert_eq!(
            t.end_txn("tx", 7, 1, true, 3_000),
            Err(TxnError::InvalidProducerIdMapping)
        );
        assert_eq!(
            t.init_producer_id("tx", 60_000, Some((101, 0)), &mut alloc, 3_000),
            Err(TxnError::ProducerFenced)
        );
        assert_eq!(
            t.init_producer_id("tx", 1_000_000, None, &mut alloc, 3_000),
            Err(TxnError::InvalidTransactionTimeout)
        );
    }

    #[test]
    fn commit_goes_through_prepare_and_retries_are_answered() {
        let mut alloc = ids();
        let mut t = TxnManager::new(900_000);
        let m = ready(
            t.init_producer_id("tx", 60_000, None, &mut alloc, 1_000)
                .expect("init"),
        );
        assert_eq!(
            t.end_txn("tx", m.producer_id, 0, true, 1_000),
            Err(TxnError::InvalidTxnState("commit in state Empty".into()))
        );
        let tp = TopicPartition::new("t", 0);
        let added = t
            .add_partitions("tx", m.producer_id, 0, std::slice::from_ref(&tp), 2_000)
            .expect("add")
            .expect("changed");
        assert_eq!((added.state, added.start_ms), (TxnState::Ongoing, 2_000));
        assert_eq!(
            t.add_partitions("tx", m.producer_id, 0, std::slice::from_ref(&tp), 2_500),
            Ok(None)
        );
        let EndStep::Prepared(p) = t.end_txn("tx", m.producer_id, 0, true, 3_000).expect("end")
        else {
            panic!("not prepared")
        };
        assert_eq!(p.state, TxnState::PrepareCommit);
        assert!(p.partitions.contains(&tp));
        assert_eq!(
            t.end_txn("tx", m.producer_id, 0, true, 3_000),
            Err(TxnError::ConcurrentTransactions)
        );
        assert_eq!(
            t.add_partitions("tx", m.producer_id, 0, std::slice::from_ref(&tp), 3_000),
            Err(TxnError::ConcurrentTransactions)
        );
        assert_eq!(t.pending_completions().len(), 1);
        let done = t.complete("tx", 4_000).expect("complete");
        assert_eq!(
            (done.state, done.partitions.len()),
            (TxnState::CompleteCommit, 0)
        );
        assert_eq!(
            t.end_txn("tx", m.producer_id, 0, true, 5_000),
            Ok(EndStep::AlreadyDone)
        );
        assert!(matches!(
            t.end_txn("tx", m.producer_id, 0, false, 5_000),
            Err(TxnError::InvalidTxnState(_))
        ));
    }

    #[test]
    fn init_during_an_open_transaction_fences_and_aborts_it_first() {
        let mut alloc = ids();
        let mut t = TxnManager::new(900_000);
        let m = ready(
            t.init_producer_id("tx", 60_000, None, &mut alloc, 1_000)
                .expect("init"),
        );
        t.add_partitions(
            "tx",
            m.producer_id,
            0,
            &[TopicPartition::new("t", 1)],
            2_000,
        )
        .expect("add");
        let InitStep::AbortFirst(abort) = t
            .init_producer_id("tx", 60_000, None, &mut alloc, 3_000)
            .expect("init")
        else {
            panic!("expected AbortFirst")
        };
        assert_eq!(
            (abort.state, abort.producer_epoch, abort.partitions.len()),
            (TxnState::PrepareAbort, 1, 1)
        );
        assert_eq!(
            t.init_producer_id("tx", 60_000, None, &mut alloc, 3_000),
            Err(TxnError::ConcurrentTransactions)
        );
        t.complete("tx", 3_100).expect("complete");
        let next = ready(
            t.init_producer_id("tx", 60_000, None, &mut alloc, 3_200)
                .expect("init"),
        );
        assert_eq!((next.producer_id, next.producer_epoch), (m.producer_id, 2));
    }

    #[test]
    fn transactions_past_their_timeout_are_fenced_and_aborted() {
        let mut alloc = ids();
        let mut t = TxnManager::new(900_000);
        let m = ready(
            t.init_producer_id("tx", 10_000, None, &mut alloc, 1_000)
                .expect("init"),
        );
        t.add_partitions(
            "tx",
            m.producer_id,
            0,
            &[TopicPartition::new("t", 0)],
            2_000,
        )
        .expect("add");
        assert!(t.time_out(12_000, &|_| false).is_empty());
        assert!(t.time_out(12_001, &|_| true).is_empty());
        let aborted = t.time_out(12_001, &|_| false);
        assert_eq!(aborted.len(), 1);
        assert_eq!(
            (aborted[0].state, aborted[0].producer_epoch),
            (TxnState::PrepareAbort, 1)
        );
        assert_eq!(
            t.end_txn("tx", m.producer_id, 0, true, 12_002),
            Err(TxnError::ProducerFenced)
        );
    }

    #[test]
    fn the_epoch_never_overflows_a_new_producer_id_takes_over() {
        let mut alloc = ids();
        let mut t = TxnManager::new(900_000);
        let mut m = ready(
            t.init_producer_id("tx", 10_000, None, &mut alloc, 1_000)
                .expect("init"),
        );
        m.producer_epoch = EPOCH_MAX - 1;
        t.replay("tx".into(), Some(m));
        let next = ready(
            t.init_producer_id("tx", 10_000, None, &mut alloc, 2_000)
                .expect("init"),
        );
        assert_eq!((next.producer_id, next.producer_epoch), (102, 0));
    }
}
