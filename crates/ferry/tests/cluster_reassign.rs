//! Partition reassignment on three `ferry serve` processes that all vote in the
//! metadata quorum: a partition on brokers [a, b] moves to [b, c] under a
//! continuous idempotent `acks=all` load (AlterPartitionReassignments), and
//! ListPartitionReassignments shows it until it completes.
//!
//! What a user checks afterwards: every acknowledged record is stored once, at
//! the offset it was acknowledged with, in produce order; broker a no longer
//! holds the partition; b and c hold the same bytes.

mod cluster_support;
mod reliability;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cluster_support::*;
use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, ApiKey, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use reliability::*;

const TOPIC: &str = "reassign";
/// Most records the load sends (it stops earlier once the move is done).
const SENT_MAX: u64 = 200_000;
/// Records acknowledged before the reassignment starts.
const WARM_UP_ACKS: usize = 200;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
const NO_REASSIGNMENT_IN_PROGRESS: i16 = 85;

/// AlterPartitionReassignments for one partition: its error code.
fn reassign(addr: &str, topic: &str, partition: i32, target: Option<&[i32]>) -> i16 {
    let request = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![ReassignableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![ReassignablePartition::default()
                .with_partition_index(partition)
                .with_replicas(
                    target.map(|t| t.iter().copied().map(BrokerId).collect()),
                )])]);
    let response: AlterPartitionReassignmentsResponse =
        call(addr, ApiKey::AlterPartitionReassignments, 0, &request);
    assert_eq!(response.error_code, 0, "{response:?}");
    let results: Vec<i16> = response
        .responses
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
        .collect();
    assert_eq!(results.len(), 1, "{response:?}");
    results[0]
}

/// ListPartitionReassignments for every partition: (topic, partition,
/// replicas, adding, removing).
type Ongoing = Vec<(String, i32, Vec<i32>, Vec<i32>, Vec<i32>)>;

fn ongoing(addr: &str) -> Ongoing {
    let response: ListPartitionReassignmentsResponse = call(
        addr,
        ApiKey::ListPartitionReassignments,
        0,
        &ListPartitionReassignmentsRequest::default().with_timeout_ms(30_000),
    );
    assert_eq!(response.error_code, 0, "{response:?}");
    let ids = |v: &[BrokerId]| v.iter().map(|b| b.0).collect::<Vec<_>>();
    response
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    t.name.0.to_string(),
                    p.partition_index,
                    ids(&p.replicas),
                    ids(&p.adding_replicas),
                    ids(&p.removing_replicas),
                )
            })
        })
        .collect()
}

/// The replicas of `TOPIC`-0 as the broker at `addr` reports them.
fn replicas(addr: &str) -> Option<Vec<i32>> {
    let metadata = raw_metadata(addr, &[TOPIC])?;
    let topic = metadata.topics.iter().find(|t| t.error_code == 0)?;
    let p = topic.partitions.iter().find(|p| p.partition_index == 0)?;
    Some(p.replica_nodes.iter().map(|r| r.0).collect())
}

/// What the producing thread did.
struct Load {
    sent: u64,
    fatal: Option<(RDKafkaErrorCode, String)>,
}

fn value(sequence: u64) -> String {
    format!("r-{sequence:09}")
}

/// Produces to partition 0 until `stop` (or `SENT_MAX` records), with an
/// idempotent `acks=all` producer, then flushes.
fn produce_continuously(
    bootstrap: String,
    acks: Arc<Acks>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Load> {
    std::thread::spawn(move || {
        let producer = producer(&bootstrap, "all", acks);
        let mut sent = 0u64;
        'load: while !stop.load(Ordering::Relaxed) && sent < SENT_MAX {
            let v = value(sent);
            loop {
                let record = BaseRecord::<(), str>::to(TOPIC).partition(0).payload(&v);
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        if stop.load(Ordering::Relaxed) {
                            break 'load;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err((e, _)) => panic!("send refused: {e}"),
                }
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Err(e) = producer.flush(Duration::from_secs(60)) {
            eprintln!("flush: {e}");
        }
        Load {
            sent,
            fatal: producer.client().fatal_error(),
        }
    })
}

/// Stops the producing thread when dropped, also when the test fails.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn wait_until(what: &str, check: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < end, "waited 60 s for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// RF=2 on [a, b], moved to [b, c] while an idempotent `acks=all` producer
/// keeps producing: the move completes, nothing acknowledged is lost,
/// duplicated or reordered, a's copy is gone and b and c hold the same bytes.
#[test]
fn a_partition_moves_to_another_broker_under_acks_all_load() {
    let cluster = Cluster::start(3);
    let bootstrap = cluster.bootstrap();
    let addr = bootstrap.split(',').next().expect("a broker").to_string();
    create_topic_everywhere(&bootstrap, TOPIC, 1, 2, &[("min.insync.replicas", "2")]);
    wait_for(&bootstrap, TOPIC, 0, "a full ISR", |l, isr| {
        l >= 0 && isr.len() == 2
    });
    let before = replicas(&addr).expect("replicas");
    let (a, b) = (before[0], before[1]);
    let c = (1..=3)
        .find(|id| !before.contains(id))
        .expect("a third broker");

    // Refusals, per partition.
    assert_eq!(
        reassign(&addr, "no-such-topic", 0, Some(&[b, c])),
        UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(
        reassign(&addr, TOPIC, 0, Some(&[b, b])),
        INVALID_REPLICA_ASSIGNMENT
    );
    assert_eq!(
        reassign(&addr, TOPIC, 0, Some(&[])),
        INVALID_REPLICA_ASSIGNMENT
    );
    assert_eq!(
        reassign(&addr, TOPIC, 0, Some(&[b, 42])),
        INVALID_REPLICA_ASSIGNMENT
    );
    assert_eq!(reassign(&addr, TOPIC, 0, None), NO_REASSIGNMENT_IN_PROGRESS);
    assert_eq!(ongoing(&addr), Ongoing::new());

    let acks = Arc::new(Acks::default());
    let stop = Arc::new(AtomicBool::new(false));
    let load = produce_continuously(bootstrap.clone(), acks.clone(), stop.clone());
    let stop = StopOnDrop(stop);
    wait_until("acknowledgements before the move", || {
        acks.of_partition(0).len() >= WARM_UP_ACKS
    });

    let started = Instant::now();
    assert_eq!(reassign(&addr, TOPIC, 0, Some(&[b, c])), 0);
    let seen = ongoing(&addr);
    eprintln!("in progress right after the request: {seen:?}");
    for (topic, partition, replicas, adding, removing) in &seen {
        assert_eq!((topic.as_str(), *partition), (TOPIC, 0));
        assert_eq!(
            (replicas.clone(), adding.clone(), removing.clone()),
            (vec![b, c, a], vec![c], vec![a])
        );
    }
    wait_until("the reassignment to complete", || {
        ongoing(&addr).is_empty()
            && bootstrap
                .split(',')
                .all(|addr| replicas(addr) == Some(vec![b, c]))
    });
    eprintln!(
        "moved from {:?} to {:?} in {:?}",
        [a, b],
        [b, c],
        started.elapsed()
    );
    // Load after the move, on the new replicas.
    let done = Instant::now();
    acks.wait_acked_after(0, done, Duration::from_secs(60))
        .expect("acknowledgements after the move");
    drop(stop);
    let load = load.join().expect("producer thread");
    assert_eq!(load.fatal, None, "the idempotent producer failed for good");
    assert_eq!(acks.failed.load(Ordering::Relaxed), 0, "records failed");

    let acked = acks.of_partition(0);
    let stored = check_acked_stored_once(&bootstrap, TOPIC, 0, &acked);
    eprintln!(
        "{} sent, {} acknowledged, {} stored",
        load.sent,
        acked.len(),
        stored.len()
    );

    let partition_dir = |id: i32| cluster.data_dir(id).join(format!("{TOPIC}-0"));
    wait_until("broker a to remove its replica", || {
        !partition_dir(a).exists()
    });
    // c may still be fetching the last records.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let bytes: Vec<(i32, Vec<u8>)> = [b, c]
            .iter()
            .map(|id| (*id, segment_bytes(&cluster.data_dir(*id), TOPIC, 0)))
            .collect();
        let Some(difference) = first_difference(&bytes) else {
            break;
        };
        assert!(
            Instant::now() < end,
            "replicas b and c differ: {difference}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `ferry cluster decommission` moves every replica off a broker: a dry run
/// first changes nothing, then `--execute` empties the broker while the data
/// stays readable.
#[test]
fn decommission_moves_every_replica_off_a_broker() {
    let cluster = Cluster::start(3);
    let bootstrap = cluster.bootstrap();
    create_replicated_topic(&bootstrap, "leaving", 3);
    for p in 0..3 {
        wait_for(&bootstrap, "leaving", p, "a full ISR", |l, isr| {
            l >= 0 && isr.len() == 3
        });
    }
    // RF 3 on 3 brokers has nowhere to go; a topic of RF 2 does.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .args(["--brokers", &bootstrap, "--json"])
            .output()
            .expect("run ferry");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = cli(&["topic", "create", "pairs", "-p", "3", "-r", "2"]);
    assert!(ok, "create: {err}");
    let holds_3 = |bootstrap: &str| {
        (0..3).any(|p| {
            raw_metadata(bootstrap.split(',').next().expect("addr"), &["pairs"])
                .and_then(|m| m.topics.into_iter().next())
                .and_then(|t| t.partitions.into_iter().find(|x| x.partition_index == p))
                .is_some_and(|x| x.replica_nodes.iter().any(|r| r.0 == 3))
        })
    };
    let end = Instant::now() + DEADLINE;
    while !holds_3(&bootstrap) {
        assert!(Instant::now() < end, "broker 3 holds no replica of pairs");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, dry, err) = cli(&["cluster", "decommission", "3"]);
    assert!(!ok, "RF 3 partitions cannot leave broker 3: {dry} {err}");
    assert!(holds_3(&bootstrap), "a refused plan moves nothing");
    let (ok, _, err) = cli(&["topic", "delete", "leaving"]);
    assert!(ok, "delete: {err}");
    // Every broker learns of the delete soon; until then the plan is refused.
    let end = Instant::now() + DEADLINE;
    let (ok, dry, err) = loop {
        let attempt = cli(&["cluster", "decommission", "3"]);
        if attempt.0 || Instant::now() > end {
            break attempt;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(ok, "dry run: {err}");
    let plan: serde_json::Value = serde_json::from_str(&dry).expect("json");
    assert_eq!(plan["executed"], false, "{dry}");
    assert!(
        plan["moves"].as_array().is_some_and(|m| !m.is_empty()),
        "{dry}"
    );
    assert!(holds_3(&bootstrap), "a dry run moves nothing");
    let (ok, out, err) = cli(&["cluster", "decommission", "3", "--execute"]);
    assert!(ok, "execute: {out} {err}");
    let end = Instant::now() + Duration::from_secs(60);
    while holds_3(&bootstrap) {
        assert!(Instant::now() < end, "broker 3 still holds replicas");
        std::thread::sleep(Duration::from_millis(200));
    }
}

const SPREAD: &str = "spread";
const SPREAD_PARTITIONS: i32 = 8;

/// (replicas held, preferred leaderships, current leaderships) per broker of
/// every partition of `SPREAD`, as the broker at `addr` reports them.
fn spread_of(addr: &str) -> Option<[BTreeMap<i32, usize>; 3]> {
    let metadata = raw_metadata(addr, &[SPREAD])?;
    let topic = metadata.topics.iter().find(|t| t.error_code == 0)?;
    if topic.partitions.len() != SPREAD_PARTITIONS as usize {
        return None;
    }
    let mut counts: [BTreeMap<i32, usize>; 3] = Default::default();
    for p in &topic.partitions {
        for r in &p.replica_nodes {
            *counts[0].entry(r.0).or_default() += 1;
        }
        *counts[1].entry(p.replica_nodes.first()?.0).or_default() += 1;
        *counts[2].entry(p.leader_id.0).or_default() += 1;
    }
    Some(counts)
}

/// A fourth broker joins a running cluster and is given nothing until asked;
/// `ferry cluster rebalance` (a dry run, then `--execute`) spreads replicas,
/// preferred leaders and, with the controller's automatic leader rebalancing,
/// leaderships evenly over the four brokers while an idempotent `acks=all`
/// producer keeps writing; nothing acknowledged is lost.
#[test]
fn rebalance_spreads_the_cluster_over_a_fourth_broker() {
    let mut cluster =
        Cluster::start_with(3, &["--set", "leader.imbalance.check.interval.seconds=1"]);
    let bootstrap = cluster.bootstrap();
    create_topic_everywhere(&bootstrap, SPREAD, SPREAD_PARTITIONS, 2, &[]);
    for p in 0..SPREAD_PARTITIONS {
        wait_for(&bootstrap, SPREAD, p, "a full ISR", |l, isr| {
            l >= 0 && isr.len() == 2
        });
    }
    let acks = Arc::new(Acks::default());
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let load = {
        let (bootstrap, acks, stop) = (bootstrap.clone(), acks.clone(), stop.clone());
        std::thread::spawn(move || {
            let producer = producer(&bootstrap, "all", acks);
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) && sent < SENT_MAX {
                let v = value(sent);
                let p = (sent % SPREAD_PARTITIONS as u64) as i32;
                match producer.send(BaseRecord::<(), str>::to(SPREAD).partition(p).payload(&v)) {
                    Ok(()) => sent += 1,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {}
                    Err((e, _)) => panic!("send refused: {e}"),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            if let Err(e) = producer.flush(Duration::from_secs(60)) {
                eprintln!("flush: {e}");
            }
            Load {
                sent,
                fatal: producer.client().fatal_error(),
            }
        })
    };
    acks.wait_acked_after(0, Instant::now(), Duration::from_secs(60))
        .expect("acknowledgements before the fourth broker joins");

    cluster.add_broker(4);
    let addr = cluster.node(1).addr.clone();
    let before = spread_of(&addr).expect("metadata");
    assert_eq!(
        before[0].get(&4),
        None,
        "a new broker gets no replica unasked"
    );
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .args(["--brokers", &bootstrap, "--json"])
            .output()
            .expect("run ferry");
        assert!(
            out.status.success(),
            "ferry {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let dry = cli(&["cluster", "rebalance"]);
    assert_eq!(dry["executed"], false, "{dry}");
    assert!(
        dry["moves"].as_array().is_some_and(|m| !m.is_empty()),
        "{dry}"
    );
    assert_eq!(
        spread_of(&addr).expect("metadata")[0].get(&4),
        None,
        "a dry run moves nothing"
    );

    let started = Instant::now();
    let done = cli(&["cluster", "rebalance", "--execute"]);
    assert_eq!(done["executed"], true, "{done}");
    // 16 replicas and 8 leaderships over 4 brokers: 4 and 2 each.
    let even =
        |counts: &BTreeMap<i32, usize>, each: usize| (1..=4).all(|b| counts.get(&b) == Some(&each));
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (moving, spread) = (ongoing(&addr), spread_of(&addr));
        let balanced = spread
            .as_ref()
            .is_some_and(|[replicas, preferred, leaders]| {
                even(replicas, 4) && even(preferred, 2) && even(leaders, 2)
            });
        if moving.is_empty() && balanced {
            break;
        }
        assert!(
            Instant::now() < end,
            "not spread evenly over four brokers after 60 s: (replicas, preferred \
             leaders, leaders) per broker {spread:?}, moves under way {moving:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("rebalanced in {:?}", started.elapsed());
    for p in 0..SPREAD_PARTITIONS {
        wait_for(&bootstrap, SPREAD, p, "a full ISR", |l, isr| {
            l >= 0 && isr.len() == 2
        });
    }
    let after = Instant::now();
    for p in 0..SPREAD_PARTITIONS {
        acks.wait_acked_after(p, after, Duration::from_secs(60))
            .unwrap_or_else(|| {
                panic!(
                    "{SPREAD}-{p}: nothing acknowledged after the rebalance; (leader, isr) {:?}, \
                     {} failed, the latest with {:?}",
                    leader_and_isr(&bootstrap, SPREAD, p),
                    acks.failed.load(Ordering::Relaxed),
                    acks.last_error.lock().expect("acks"),
                )
            });
    }
    drop(_stop_on_drop);
    let load = load.join().expect("producer thread");
    assert_eq!(load.fatal, None, "the idempotent producer failed for good");
    assert_eq!(acks.failed.load(Ordering::Relaxed), 0, "records failed");
    let mut acked_total = 0;
    for p in 0..SPREAD_PARTITIONS {
        let acked = acks.of_partition(p);
        check_acked_stored_once(&bootstrap, SPREAD, p, &acked);
        acked_total += acked.len();
    }
    eprintln!(
        "{} sent, {acked_total} acknowledged, all stored once",
        load.sent
    );
}
