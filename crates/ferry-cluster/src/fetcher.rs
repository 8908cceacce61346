//! Followers fetch from their leaders with the Kafka Fetch API, as Kafka's
//! replica fetcher threads do: one task per leader broker, one connection each,
//! every partition this broker follows there in the same fetch.
//!
//! ```text
//!  metadata image ──update()──► { leader id → partitions } ──► one task per leader
//!     task: Fetch(replica_id = me, fetch_offset = LEO, last_fetched_epoch)
//!       ├─ records ──► Partition::append_as_follower (leader's offsets, leader's HW)
//!       └─ diverging epoch ──► Partition::truncate_to, then fetch again
//! ```
//!
//! Replication throttling (ferry-core's quota.rs), Kafka's
//! `shouldFollowerThrottle`: a partition listed in
//! `follower.replication.throttled.replicas` for this broker sits a fetch out
//! while this replica is out of the ISR and the follower's measured rate is over
//! `follower.replication.throttled.rate`; the bytes fetched for listed
//! partitions count toward the rate. In-sync replicas are never held back.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ferry_client::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use ferry_client::kafka_protocol::messages::{BrokerId, FetchRequest, TopicName};
use ferry_client::kafka_protocol::protocol::StrBytes;
use ferry_client::kafka_protocol::ResponseError;
use ferry_client::{Connection, ConnectionConfig};
use ferry_core::metadata::MetadataImage;
use ferry_core::quota::{self, Throttle};
use ferry_core::{Broker, TopicPartition};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The Fetch version followers send (replica id and last fetched epoch).
const FETCH_VERSION: i16 = 12;

/// How often a fetcher with nothing to fetch checks again whether the broker has
/// taken the roles its assignment expects.
const ROLE_RECHECK: Duration = Duration::from_millis(100);

/// What one leader's fetcher fetches: partition → how it is followed.
type Assignment = BTreeMap<TopicPartition, Followed>;

/// One partition a fetcher follows, as the metadata image has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Followed {
    leader_epoch: i32,
    /// This replica is in the partition's ISR.
    in_sync: bool,
    /// `follower.replication.throttled.replicas` names this replica.
    throttled: bool,
}

pub struct ReplicaFetchers {
    broker: Arc<Broker>,
    fetchers: Mutex<HashMap<(i32, String), Fetcher>>,
}

struct Fetcher {
    assignment: watch::Sender<Assignment>,
    task: JoinHandle<()>,
}

impl ReplicaFetchers {
    pub fn new(broker: Arc<Broker>) -> Arc<ReplicaFetchers> {
        Arc::new(ReplicaFetchers {
            broker,
            fetchers: Mutex::new(HashMap::new()),
        })
    }

    /// Makes the fetchers match `image`: every partition this broker follows is
    /// fetched from its leader's current address.
    pub fn update(&self, image: &MetadataImage) {
        let me = self.broker.node_id();
        let mut wanted: HashMap<(i32, String), Assignment> = HashMap::new();
        for topic in image.topics.values() {
            for p in &topic.partitions {
                if p.leader == me || p.leader < 0 || !p.replicas.contains(&me) {
                    continue;
                }
                let Some(leader) = image.brokers.get(&p.leader) else {
                    continue;
                };
                wanted
                    .entry((p.leader, format!("{}:{}", leader.host, leader.port)))
                    .or_default()
                    .insert(
                        TopicPartition::new(topic.name.clone(), p.partition),
                        Followed {
                            leader_epoch: p.leader_epoch,
                            in_sync: p.isr.contains(&me),
                            throttled: quota::is_throttled(
                                &topic.configs,
                                quota::FOLLOWER_REPLICAS,
                                p.partition,
                                me,
                            ),
                        },
                    );
            }
        }
        let mut fetchers = self.fetchers.lock();
        fetchers.retain(|key, f| {
            let keep = wanted.contains_key(key) && !f.task.is_finished();
            if !keep {
                f.task.abort();
            }
            keep
        });
        for (key, assignment) in wanted {
            match fetchers.get(&key) {
                Some(f) => {
                    f.assignment.send_if_modified(|current| {
                        let changed = *current != assignment;
                        *current = assignment;
                        changed
                    });
                }
                None => {
                    let (tx, rx) = watch::channel(assignment);
                    let task = tokio::spawn(run(self.broker.clone(), key.0, key.1.clone(), rx));
                    fetchers.insert(
                        key,
                        Fetcher {
                            assignment: tx,
                            task,
                        },
                    );
                }
            }
        }
    }

    pub fn shutdown(&self) {
        for (_, f) in self.fetchers.lock().drain() {
            f.task.abort();
        }
    }
}

async fn run(
    broker: Arc<Broker>,
    leader: i32,
    addr: String,
    mut assignment: watch::Receiver<Assignment>,
) {
    let config = broker.config();
    let wait_ms = config.long("replica.fetch.wait.max.ms").clamp(0, 30_000) as i32;
    let partition_max_bytes = config
        .long("replica.fetch.max.bytes")
        .clamp(1024, i32::MAX as i64) as i32;
    let connection_config = ConnectionConfig {
        client_id: format!("ferry-replica-{}", broker.node_id()),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_millis(wait_ms as u64 + 10_000),
        ..ConnectionConfig::default()
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let connection = match Connection::connect(&addr, connection_config.clone()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(leader, %addr, error = %e, "replica fetcher cannot reach the leader");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        loop {
            let current = assignment.borrow_and_update().clone();
            // The cap is read only when something is throttled (the broker's
            // config is assembled from the image at each call).
            let throttle = current
                .values()
                .any(|f| f.throttled)
                .then(|| Throttle::follower(&broker.config()));
            let request = fetch_request(
                &broker,
                &current,
                throttle.as_ref(),
                wait_ms,
                partition_max_bytes,
            );
            let Some(request) = request else {
                // Nothing to fetch yet: wait for a new assignment, or for the broker
                // to take the roles of the image this one came from (it may lag the
                // assignment, as at startup, and then nothing else wakes us).
                tokio::select! {
                    changed = assignment.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = tokio::time::sleep(ROLE_RECHECK) => {}
                }
                continue;
            };
            let response = match connection.send_version(&request, FETCH_VERSION).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(leader, %addr, error = %e, "replica fetch failed; reconnecting");
                    break;
                }
            };
            let mut back_off = response.error_code != 0;
            for topic in &response.responses {
                for data in &topic.partitions {
                    let tp = TopicPartition::new(topic.topic.0.as_str(), data.partition_index);
                    let Some(followed) = current.get(&tp) else {
                        continue;
                    };
                    if let Some(throttle) = throttle.as_ref().filter(|_| followed.throttled) {
                        let bytes = data.records.as_ref().map_or(0, |r| r.len());
                        quota::follower().record(throttle, bytes as u64);
                    }
                    back_off |= !apply(&broker, &tp, followed.leader_epoch, data);
                }
            }
            if back_off {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

/// The next fetch for `assignment`: each partition from its log end offset,
/// but for throttled, out-of-sync ones while the follower's rate is over the
/// cap (`throttle`: the cap, when some partition is throttled).
fn fetch_request(
    broker: &Broker,
    assignment: &Assignment,
    throttle: Option<&Throttle>,
    wait_ms: i32,
    partition_max_bytes: i32,
) -> Option<FetchRequest> {
    let mut topics: Vec<FetchTopic> = Vec::new();
    let mut exceeded = None;
    for (tp, followed) in assignment {
        let leader_epoch = &followed.leader_epoch;
        if followed.throttled && !followed.in_sync {
            if let Some(throttle) = throttle {
                if *exceeded.get_or_insert_with(|| quota::follower().is_exceeded(throttle)) {
                    quota::follower().count_throttled();
                    continue;
                }
            }
        }
        let Some(partition) = broker.partition(tp) else {
            continue;
        };
        if partition.is_leader() || partition.leader_epoch() != *leader_epoch {
            // The image moved on and the broker has not applied it yet.
            continue;
        }
        let fetch_offset = partition.log_end_offset();
        let last_epoch = partition.latest_epoch();
        let p = FetchPartition::default()
            .with_partition(tp.partition)
            .with_current_leader_epoch(*leader_epoch)
            .with_fetch_offset(fetch_offset)
            .with_last_fetched_epoch(last_epoch)
            .with_log_start_offset(partition.log_start_offset())
            .with_partition_max_bytes(partition_max_bytes);
        match topics.last_mut() {
            Some(t) if t.topic.0.as_str() == tp.topic => t.partitions.push(p),
            _ => topics.push(
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(tp.topic.clone())))
                    .with_partitions(vec![p]),
            ),
        }
    }
    if topics.is_empty() {
        return None;
    }
    Some(
        FetchRequest::default()
            .with_replica_id(BrokerId(broker.node_id()))
            .with_max_wait_ms(wait_ms)
            .with_min_bytes(1)
            .with_max_bytes(i32::MAX)
            .with_isolation_level(0)
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(topics),
    )
}

/// Applies one partition of a fetch response for `leader_epoch`; false when the
/// fetcher should back off (an error, or nothing it could use).
fn apply(
    broker: &Broker,
    tp: &TopicPartition,
    leader_epoch: i32,
    data: &ferry_client::kafka_protocol::messages::fetch_response::PartitionData,
) -> bool {
    let Some(partition) = broker.partition(tp) else {
        return false;
    };
    if partition.is_leader() || partition.leader_epoch() != leader_epoch {
        // Leadership moved while the fetch was out: what the old leader sent is
        // not this epoch's log (Kafka drops it too). The next fetch asks the
        // current leader.
        return true;
    }
    if data.error_code == ResponseError::OffsetOutOfRange.code()
        && data.log_start_offset > partition.log_end_offset()
    {
        // The leader no longer has what this replica would fetch next.
        return match partition.truncate_fully_and_start_at(data.log_start_offset) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(partition = %tp, error = %e, "could not restart the log at the leader's log start");
                false
            }
        };
    }
    if data.error_code != 0 {
        let error = ResponseError::try_from_code(data.error_code);
        tracing::debug!(partition = %tp, ?error, "replica fetch error");
        return false;
    }
    if data.diverging_epoch.epoch >= 0 && data.diverging_epoch.end_offset >= 0 {
        // Our log has records the leader does not: cut back to where the two
        // agree, then fetch from there.
        let (epoch, end) = (data.diverging_epoch.epoch, data.diverging_epoch.end_offset);
        let (_, local_end) = partition.end_offset_for_epoch(epoch);
        let to = end.min(local_end);
        match partition.truncate_to(to) {
            Ok(leo) => {
                tracing::info!(partition = %tp, leader_epoch = epoch, log_end_offset = leo, "truncated to the leader's log")
            }
            Err(e) => {
                tracing::warn!(partition = %tp, error = %e, "could not truncate a divergent tail");
                return false;
            }
        }
        return true;
    }
    let records: &[u8] = data.records.as_deref().unwrap_or(&[]);
    // Fetching from the leader's log start, a freshly restarted (empty) log gets
    // the whole batch holding that offset, which starts below it: the log then
    // starts at the batch instead, as Kafka's follower does on its
    // UnexpectedAppendOffsetException.
    let first_base = records
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(i64::from_be_bytes);
    if let Some(base) = first_base {
        let (start, end) = (partition.log_start_offset(), partition.log_end_offset());
        if base < end && start == end {
            if let Err(e) = partition.truncate_fully_and_start_at(base) {
                tracing::warn!(partition = %tp, error = %e, "could not restart the log at the leader's first batch");
                return false;
            }
        }
    }
    match partition.append_as_follower(records, data.high_watermark, broker.now_ms()) {
        Ok(_) => {
            if let Err(e) = partition.follow_log_start(data.log_start_offset) {
                tracing::warn!(partition = %tp, error = %e, "could not follow the leader's log start");
            }
            true
        }
        Err(e) => {
            tracing::warn!(partition = %tp, error = %e, "could not append replicated records");
            false
        }
    }
}
