//! The coordinator service with in-memory storage, a recording host and a
//! manual clock.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::*;
use crate::clock::ManualClock;

/// A stored record: key and (None for a tombstone) value.
type Entry = (Bytes, Option<Bytes>);

#[derive(Default)]
struct MemoryStorage {
    partitions: Mutex<BTreeMap<i32, Vec<Entry>>>,
}

impl TxnStorage for MemoryStorage {
    fn partition_count(&self) -> i32 {
        3
    }
    fn append(
        &self,
        partition: i32,
        key: Bytes,
        value: Option<Bytes>,
        _now_ms: i64,
    ) -> Result<Durability, CoreError> {
        self.partitions
            .lock()
            .entry(partition)
            .or_default()
            .push((key, value));
        Ok(Box::pin(async { Ok(()) }))
    }
    fn read_all(&self, partition: i32) -> Result<Vec<(Bytes, Option<Bytes>)>, CoreError> {
        Ok(self
            .partitions
            .lock()
            .get(&partition)
            .cloned()
            .unwrap_or_default())
    }
}

/// (producer id, epoch, commit, partition) of every marker written.
#[derive(Default)]
struct RecordingHost {
    next_id: Mutex<i64>,
    markers: Mutex<Vec<(i64, i16, bool, TopicPartition)>>,
    fail_markers: Mutex<bool>,
}

impl TxnHost for RecordingHost {
    fn allocate_producer_id(&self) -> Result<i64, CoreError> {
        let mut n = self.next_id.lock();
        *n += 1;
        Ok(*n)
    }
    fn partition_exists(&self, tp: &TopicPartition) -> bool {
        tp.topic != "missing"
    }
    fn offsets_partition(&self, _group_id: &str) -> Result<TopicPartition, CoreError> {
        Ok(TopicPartition::new(OFFSETS_TOPIC, 0))
    }
    fn write_markers(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        partitions: Vec<TopicPartition>,
    ) -> Pin<Box<dyn Future<Output = Result<(), CoreError>> + Send>> {
        if *self.fail_markers.lock() {
            return Box::pin(async { Err(CoreError::Storage("disk gone".into())) });
        }
        let mut m = self.markers.lock();
        for tp in partitions {
            m.push((producer_id, producer_epoch, commit, tp));
        }
        Box::pin(async { Ok(()) })
    }
}

fn setup() -> (
    Arc<MemoryStorage>,
    Arc<RecordingHost>,
    Arc<ManualClock>,
    TransactionCoordinator,
) {
    let storage = Arc::new(MemoryStorage::default());
    let host = Arc::new(RecordingHost::default());
    let clock = Arc::new(ManualClock::new(10_000));
    let c = TransactionCoordinator::new(storage.clone(), host.clone(), clock.clone(), 900_000);
    (storage, host, clock, c)
}

fn tp(topic: &str, p: i32) -> TopicPartition {
    TopicPartition::new(topic, p)
}

#[tokio::test]
async fn commit_writes_markers_to_every_partition_and_persists_completion() {
    let (storage, host, _clock, c) = setup();
    let (pid, epoch) = c
        .init_producer_id(Some("tx"), 60_000, None, 0)
        .await
        .expect("init");
    c.add_partitions("tx", pid, epoch, vec![tp("a", 0), tp("b", 1)])
        .await
        .expect("add");
    c.add_offsets("tx", pid, epoch, "group")
        .await
        .expect("offsets");
    c.verify("tx", pid, epoch).expect("verify");
    c.end_txn("tx", pid, epoch, true).await.expect("commit");
    let markers = host.markers.lock().clone();
    assert_eq!(markers.len(), 3);
    assert!(markers
        .iter()
        .all(|(p, e, commit, _)| (*p, *e, *commit) == (pid, epoch, true)));
    assert_eq!(
        c.describe("tx").expect("txn").state,
        TxnState::CompleteCommit
    );
    // A retry is answered; the opposite outcome is refused.
    c.end_txn("tx", pid, epoch, true).await.expect("retry");
    assert!(matches!(
        c.end_txn("tx", pid, epoch, false).await,
        Err(TxnError::InvalidTxnState(_))
    ));
    // A restarted coordinator sees the same state.
    let reloaded =
        TransactionCoordinator::new(storage, host, Arc::new(ManualClock::new(0)), 900_000);
    reloaded.load().expect("load");
    assert_eq!(
        reloaded.describe("tx").expect("txn").state,
        TxnState::CompleteCommit
    );
}

#[tokio::test]
async fn a_second_producer_fences_the_first_and_aborts_its_transaction() {
    let (_storage, host, _clock, c) = setup();
    let (pid, e0) = c
        .init_producer_id(Some("tx"), 60_000, None, 0)
        .await
        .expect("init");
    c.add_partitions("tx", pid, e0, vec![tp("a", 0)])
        .await
        .expect("add");
    let (pid2, e1) = c
        .init_producer_id(Some("tx"), 60_000, None, 0)
        .await
        .expect("init again");
    assert_eq!(pid2, pid);
    assert!(e1 > e0);
    assert_eq!(
        host.markers.lock().clone(),
        vec![(pid, e0 + 1, false, tp("a", 0))]
    );
    assert_eq!(
        c.end_txn("tx", pid, e0, true).await,
        Err(TxnError::ProducerFenced)
    );
    assert_eq!(
        c.add_partitions("tx", pid, e0, vec![tp("a", 0)])
            .await
            .map(|_| ()),
        Err(TxnError::ProducerFenced)
    );
}

#[tokio::test]
async fn unknown_partitions_fail_the_request_and_unknown_ids_are_refused() {
    let (_storage, _host, _clock, c) = setup();
    assert_eq!(
        c.end_txn("nope", 1, 0, true).await,
        Err(TxnError::InvalidProducerIdMapping)
    );
    let (pid, epoch) = c
        .init_producer_id(Some("tx"), 60_000, None, 0)
        .await
        .expect("init");
    let results = c
        .add_partitions("tx", pid, epoch, vec![tp("a", 0), tp("missing", 0)])
        .await
        .expect("answered");
    assert_eq!(results[0].1, Err(TxnError::OperationNotAttempted));
    assert_eq!(results[1].1, Err(TxnError::UnknownTopicOrPartition));
    assert_eq!(c.describe("tx").expect("txn").state, TxnState::Empty);
    assert!(matches!(
        c.end_txn("tx", pid, epoch, false).await,
        Err(TxnError::InvalidTxnState(_))
    ));
}

#[tokio::test]
async fn the_tick_aborts_transactions_past_their_timeout() {
    let (_storage, host, clock, c) = setup();
    let (pid, epoch) = c
        .init_producer_id(Some("tx"), 5_000, None, 0)
        .await
        .expect("init");
    c.add_partitions("tx", pid, epoch, vec![tp("a", 0)])
        .await
        .expect("add");
    clock.advance(5_000);
    c.tick(0).await;
    assert!(host.markers.lock().is_empty());
    clock.advance(1);
    c.tick(0).await;
    assert_eq!(
        host.markers.lock().clone(),
        vec![(pid, epoch + 1, false, tp("a", 0))]
    );
    assert_eq!(
        c.describe("tx").expect("txn").state,
        TxnState::CompleteAbort
    );
    assert_eq!(
        c.end_txn("tx", pid, epoch, true).await,
        Err(TxnError::ProducerFenced)
    );
}

#[tokio::test]
async fn a_prepared_commit_left_by_a_crash_completes_after_restart() {
    let (storage, host, _clock, c) = setup();
    let (pid, epoch) = c
        .init_producer_id(Some("tx"), 60_000, None, 0)
        .await
        .expect("init");
    c.add_partitions("tx", pid, epoch, vec![tp("a", 0)])
        .await
        .expect("add");
    *host.fail_markers.lock() = true;
    assert!(c.end_txn("tx", pid, epoch, true).await.is_err());
    assert_eq!(
        c.describe("tx").expect("txn").state,
        TxnState::PrepareCommit
    );
    // "Restart": a new coordinator over the same storage.
    *host.fail_markers.lock() = false;
    let restarted = TransactionCoordinator::new(
        storage,
        host.clone(),
        Arc::new(ManualClock::new(20_000)),
        900_000,
    );
    restarted.load().expect("load");
    assert_eq!(
        restarted.describe("tx").expect("txn").state,
        TxnState::PrepareCommit
    );
    assert_eq!(
        restarted.end_txn("tx", pid, epoch, true).await,
        Err(TxnError::ConcurrentTransactions)
    );
    restarted.tick(1_000).await;
    assert_eq!(
        host.markers.lock().clone(),
        vec![(pid, epoch, true, tp("a", 0))]
    );
    assert_eq!(
        restarted.describe("tx").expect("txn").state,
        TxnState::CompleteCommit
    );
    restarted
        .end_txn("tx", pid, epoch, true)
        .await
        .expect("the client's retry succeeds");
}

#[tokio::test]
async fn idempotent_producers_get_new_ids_or_an_epoch_bump() {
    let (_storage, _host, _clock, c) = setup();
    let (a, ea) = c.init_producer_id(None, 0, None, 0).await.expect("init");
    assert_eq!(ea, 0);
    assert_eq!(
        c.init_producer_id(None, 0, Some((a, 0)), 100).await,
        Ok((a, 1))
    );
    // An id this cluster never handed out gets a fresh one.
    let (b, eb) = c
        .init_producer_id(None, 0, Some((5_000, 3)), 100)
        .await
        .expect("init");
    assert_ne!(b, 5_000);
    assert_eq!(eb, 0);
}

#[tokio::test]
async fn list_filters_by_state_and_producer() {
    let (_storage, _host, _clock, c) = setup();
    let (p1, e1) = c
        .init_producer_id(Some("one"), 60_000, None, 0)
        .await
        .expect("init");
    let (p2, _) = c
        .init_producer_id(Some("two"), 60_000, None, 0)
        .await
        .expect("init");
    c.add_partitions("one", p1, e1, vec![tp("a", 0)])
        .await
        .expect("add");
    let ongoing = c.list(&["Ongoing".to_string()], &[], -1);
    assert_eq!(
        ongoing
            .iter()
            .map(|m| m.transactional_id.as_str())
            .collect::<Vec<_>>(),
        vec!["one"]
    );
    assert_eq!(c.list(&[], &[p2], -1).len(), 1);
    assert_eq!(c.list(&[], &[], -1).len(), 2);
}
