//! Replication throttling, as Kafka's `ReplicationQuotaManager` does it: a cap
//! on the bytes per second a broker sends to (leader side) or fetches for
//! (follower side) the replicas an operator marked as throttled, so that moving
//! a partition does not starve clients of disk and network.
//!
//! ```text
//!  broker configs (dynamic):  leader.replication.throttled.rate      bytes/s
//!                             follower.replication.throttled.rate    (default: unthrottled)
//!  topic configs:             leader.replication.throttled.replicas   "0:1,1:2" or "*"
//!                             follower.replication.throttled.replicas
//!
//!  leader (Fetch from a follower)        follower (replica fetcher)
//!   throttled here, follower not in ISR,  throttled here, this replica not in
//!   leader quota exceeded ─► no records   the ISR, follower quota exceeded ─►
//!   for that partition in this answer     the partition sits this fetch out
//! ```
//!
//! A partition is throttled on a broker when the list names it with that
//! broker's id (or is `*`). The bytes of every throttled partition count toward
//! the rate; only replicas out of the ISR are held back, so throttling never
//! slows in-sync replication, and a held-back replica goes on as soon as the
//! measured rate falls under the cap: it progresses at about the rate.
//!
//! The rate is measured as Kafka's `Rate` does: over `replication.quota.window.num`
//! samples of `replication.quota.window.size.seconds` each, and over at least all
//! but one sample's length (so a fresh meter does not read a small burst as a
//! huge rate; it does let a burst of about that many seconds' worth through).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Instant;

use parking_lot::Mutex;

use crate::config::BrokerConfig;

/// Broker config: bytes/s the leader sends to throttled, out-of-sync followers.
pub const LEADER_RATE: &str = "leader.replication.throttled.rate";
/// Broker config: bytes/s this broker fetches for throttled, out-of-sync replicas.
pub const FOLLOWER_RATE: &str = "follower.replication.throttled.rate";
/// Topic config: the replicas throttled on their leader's side.
pub const LEADER_REPLICAS: &str = "leader.replication.throttled.replicas";
/// Topic config: the replicas throttled on the fetching (follower) side.
pub const FOLLOWER_REPLICAS: &str = "follower.replication.throttled.replicas";
/// Broker config: how many samples the rate is measured over.
pub const WINDOW_NUM: &str = "replication.quota.window.num";
/// Broker config: the length of one sample, in seconds.
pub const WINDOW_SIZE_SECONDS: &str = "replication.quota.window.size.seconds";

/// Which replicas a `*.replication.throttled.replicas` value names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThrottledReplicas {
    /// `*`: every replica of the topic.
    All,
    /// (partition, broker id) pairs; empty: none.
    Listed(Vec<(i32, i32)>),
}

impl ThrottledReplicas {
    /// Whether `partition`'s replica on `broker` is named.
    pub fn contains(&self, partition: i32, broker: i32) -> bool {
        match self {
            ThrottledReplicas::All => true,
            ThrottledReplicas::Listed(pairs) => pairs.contains(&(partition, broker)),
        }
    }
}

/// Parses a throttled-replicas value: the literal `*`, or a comma-separated
/// list of `partitionId:brokerId` (empty: none), as Kafka's
/// `ThrottledReplicaListValidator` accepts.
pub fn parse_throttled_replicas(name: &str, value: &str) -> Result<ThrottledReplicas, String> {
    let bad = || {
        format!(
            "invalid value {value:?} for {name}: must be the literal '*' or a list of replicas \
             in the format [partitionId]:[brokerId],[partitionId]:[brokerId],..."
        )
    };
    let value = value.trim();
    if value.is_empty() {
        return Ok(ThrottledReplicas::Listed(Vec::new()));
    }
    if value == "*" {
        return Ok(ThrottledReplicas::All);
    }
    let number = |s: &str| -> Option<i32> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    value
        .split(',')
        .map(|item| {
            let (partition, broker) = item.split_once(':').ok_or_else(bad)?;
            Ok((
                number(partition).ok_or_else(bad)?,
                number(broker).ok_or_else(bad)?,
            ))
        })
        .collect::<Result<Vec<_>, String>>()
        .map(ThrottledReplicas::Listed)
}

/// Whether the topic whose overrides are `configs` throttles `partition`'s
/// replica on `broker` under `list` ([`LEADER_REPLICAS`] or [`FOLLOWER_REPLICAS`]).
/// A value that does not parse (it was validated when set) throttles nothing.
pub fn is_throttled(
    configs: &BTreeMap<String, String>,
    list: &str,
    partition: i32,
    broker: i32,
) -> bool {
    configs
        .get(list)
        .and_then(|v| parse_throttled_replicas(list, v).ok())
        .is_some_and(|r| r.contains(partition, broker))
}

/// The cap and the measuring window of one side, read from the broker config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// Bytes per second; `i64::MAX` (the default) is no cap.
    pub bytes_per_sec: i64,
    pub samples: u32,
    pub sample_ms: u64,
}

impl Throttle {
    /// The leader side's cap.
    pub fn leader(config: &BrokerConfig) -> Throttle {
        Throttle::of(config, LEADER_RATE)
    }

    /// The follower side's cap.
    pub fn follower(config: &BrokerConfig) -> Throttle {
        Throttle::of(config, FOLLOWER_RATE)
    }

    fn of(config: &BrokerConfig, rate: &str) -> Throttle {
        Throttle {
            bytes_per_sec: config.long(rate).max(0),
            samples: config.long(WINDOW_NUM).clamp(1, 1_000) as u32,
            sample_ms: (config.long(WINDOW_SIZE_SECONDS).clamp(1, 3_600) as u64) * 1000,
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.bytes_per_sec == i64::MAX
    }
}

/// One side's meter of throttled replication bytes.
pub struct ReplicationQuota {
    side: &'static str,
    /// (start of the sample in ms since `epoch`, bytes in it), oldest first.
    samples: Mutex<VecDeque<(u64, u64)>>,
    epoch: Instant,
    /// Bytes of throttled replicas counted toward the rate.
    recorded_bytes: AtomicU64,
    /// Times a replica was held back because the rate was over the cap.
    throttled: AtomicU64,
}

impl ReplicationQuota {
    pub fn new(side: &'static str) -> ReplicationQuota {
        ReplicationQuota {
            side,
            samples: Mutex::new(VecDeque::new()),
            epoch: Instant::now(),
            recorded_bytes: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Counts `bytes` of a throttled replica toward the rate.
    pub fn record(&self, throttle: &Throttle, bytes: u64) {
        self.record_at(throttle, bytes, self.now_ms());
    }

    fn record_at(&self, throttle: &Throttle, bytes: u64, now_ms: u64) {
        if bytes == 0 {
            return;
        }
        self.recorded_bytes.fetch_add(bytes, Ordering::Relaxed);
        let mut samples = self.samples.lock();
        purge(&mut samples, throttle, now_ms);
        match samples.back_mut() {
            Some((start, sum)) if now_ms < *start + throttle.sample_ms => *sum += bytes,
            _ => samples.push_back((now_ms, bytes)),
        }
        while samples.len() > throttle.samples as usize {
            samples.pop_front();
        }
    }

    /// Whether the measured rate is over the cap now (Kafka's `isQuotaExceeded`).
    pub fn is_exceeded(&self, throttle: &Throttle) -> bool {
        self.is_exceeded_at(throttle, self.now_ms())
    }

    fn is_exceeded_at(&self, throttle: &Throttle, now_ms: u64) -> bool {
        if throttle.is_unlimited() {
            return false;
        }
        self.rate_at(throttle, now_ms) > throttle.bytes_per_sec as f64
    }

    /// The measured rate in bytes per second.
    pub fn rate(&self, throttle: &Throttle) -> f64 {
        self.rate_at(throttle, self.now_ms())
    }

    fn rate_at(&self, throttle: &Throttle, now_ms: u64) -> f64 {
        let mut samples = self.samples.lock();
        purge(&mut samples, throttle, now_ms);
        let Some((oldest, _)) = samples.front() else {
            return 0.0;
        };
        let total: u64 = samples.iter().map(|(_, b)| b).sum();
        // Kafka's Rate.windowSize: what elapsed since the oldest sample began,
        // but at least all samples but one.
        let min_window = u64::from(throttle.samples.saturating_sub(1)) * throttle.sample_ms;
        let window_ms = now_ms.saturating_sub(*oldest).max(min_window).max(1);
        total as f64 * 1000.0 / window_ms as f64
    }

    /// Counts one replica held back because the rate was over the cap.
    pub fn count_throttled(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
    }

    pub fn recorded_bytes(&self) -> u64 {
        self.recorded_bytes.load(Ordering::Relaxed)
    }

    pub fn throttled_count(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }
}

/// Drops the samples that are entirely older than the window.
fn purge(samples: &mut VecDeque<(u64, u64)>, throttle: &Throttle, now_ms: u64) {
    let span = u64::from(throttle.samples) * throttle.sample_ms;
    while samples
        .front()
        .is_some_and(|(start, _)| start + span <= now_ms)
    {
        samples.pop_front();
    }
}

static LEADER: LazyLock<ReplicationQuota> = LazyLock::new(|| ReplicationQuota::new("leader"));
static FOLLOWER: LazyLock<ReplicationQuota> = LazyLock::new(|| ReplicationQuota::new("follower"));

/// This process's (one broker's) leader-side meter.
pub fn leader() -> &'static ReplicationQuota {
    &LEADER
}

/// This process's (one broker's) follower-side meter.
pub fn follower() -> &'static ReplicationQuota {
    &FOLLOWER
}

/// The meters in the Prometheus text format (part of /metrics).
pub fn render(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP ferry_replication_throttled_bytes_total Bytes of throttled replicas (leader.replication.throttled.replicas / follower.replication.throttled.replicas) sent (leader) or fetched (follower), counted toward the replication throttle."
    );
    let _ = writeln!(
        out,
        "# TYPE ferry_replication_throttled_bytes_total counter"
    );
    for q in [leader(), follower()] {
        let _ = writeln!(
            out,
            "ferry_replication_throttled_bytes_total{{side=\"{}\"}} {}",
            q.side,
            q.recorded_bytes()
        );
    }
    let _ = writeln!(
        out,
        "# HELP ferry_replication_throttled_total Times an out-of-sync throttled replica was held back because the replication rate was over leader.replication.throttled.rate (leader) or follower.replication.throttled.rate (follower)."
    );
    let _ = writeln!(out, "# TYPE ferry_replication_throttled_total counter");
    for q in [leader(), follower()] {
        let _ = writeln!(
            out,
            "ferry_replication_throttled_total{{side=\"{}\"}} {}",
            q.side,
            q.throttled_count()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(bytes_per_sec: i64, samples: u32) -> Throttle {
        Throttle {
            bytes_per_sec,
            samples,
            sample_ms: 1000,
        }
    }

    #[test]
    fn throttled_replica_lists_parse_as_kafka_accepts_them() {
        let parse = |v: &str| parse_throttled_replicas(LEADER_REPLICAS, v);
        assert_eq!(parse("*"), Ok(ThrottledReplicas::All));
        assert_eq!(parse(" * "), Ok(ThrottledReplicas::All));
        assert_eq!(parse(""), Ok(ThrottledReplicas::Listed(vec![])));
        assert_eq!(
            parse("0:1, 1:2 ,12:3"),
            Ok(ThrottledReplicas::Listed(vec![(0, 1), (1, 2), (12, 3)]))
        );
        for bad in [
            "0",
            "0:",
            ":1",
            "a:1",
            "0:b",
            "0:1:2",
            "0:1,",
            ",0:1",
            "*,0:1",
            "-1:2",
            "0:-2",
            "0;1",
            "all",
            "99999999999:1",
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(LEADER_REPLICAS), "{e}");
        }
    }

    #[test]
    fn a_replica_is_throttled_where_the_list_names_it() {
        let configs: BTreeMap<String, String> = [
            (LEADER_REPLICAS.to_string(), "0:1,1:2".to_string()),
            (FOLLOWER_REPLICAS.to_string(), "*".to_string()),
        ]
        .into();
        assert!(is_throttled(&configs, LEADER_REPLICAS, 0, 1));
        assert!(!is_throttled(&configs, LEADER_REPLICAS, 0, 2));
        assert!(is_throttled(&configs, LEADER_REPLICAS, 1, 2));
        assert!(is_throttled(&configs, FOLLOWER_REPLICAS, 7, 9));
        assert!(!is_throttled(&BTreeMap::new(), FOLLOWER_REPLICAS, 0, 1));
    }

    #[test]
    fn the_rate_is_measured_over_the_window_and_decays() {
        let q = ReplicationQuota::new("test");
        let t = throttle(1000, 3);
        // A fresh meter divides by at least two samples' length.
        q.record_at(&t, 1500, 0);
        assert_eq!(q.rate_at(&t, 0), 750.0);
        assert!(!q.is_exceeded_at(&t, 0));
        q.record_at(&t, 1000, 500);
        assert_eq!(q.rate_at(&t, 500), 1250.0);
        assert!(q.is_exceeded_at(&t, 500));
        // Past the window of three seconds the bytes no longer count.
        assert!(q.is_exceeded_at(&t, 2400));
        assert!(!q.is_exceeded_at(&t, 2500));
        assert_eq!(q.rate_at(&t, 3000), 0.0);
        assert!(!q.is_exceeded_at(&t, 3000));
        assert_eq!(q.recorded_bytes(), 2500);
    }

    #[test]
    fn an_unlimited_throttle_is_never_exceeded() {
        let q = ReplicationQuota::new("test");
        let t = throttle(i64::MAX, 11);
        q.record_at(&t, u64::MAX / 4, 0);
        assert!(!q.is_exceeded_at(&t, 1));
        // A cap of 0 holds replicas back once anything was counted.
        assert!(q.is_exceeded_at(&throttle(0, 11), 1));
    }
}
