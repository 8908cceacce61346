//! Failover on three `ferry serve` processes that all vote in the metadata
//! quorum, driven with librdkafka: partition leaders killed with SIGKILL under a
//! continuous idempotent `acks=all` load, and the active controller killed.
//!
//! What a user checks afterwards: every acknowledged record is stored once, at
//! the offset it was acknowledged with, in produce order, and every replica holds
//! the same bytes. Failover times are printed, never asserted.

mod cluster_support;
mod reliability;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cluster_support::*;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use reliability::*;

const TOPIC: &str = "failover";
const PARTITIONS: i32 = 3;
/// Leaders killed in turn, one partition after the other.
const KILLS: usize = 3;
/// Records acknowledged on every partition before the first kill.
const WARM_UP_ACKS: usize = 50;

/// What the producing thread did.
struct Load {
    /// Records handed to librdkafka, per partition.
    sent: Vec<u64>,
    /// Records librdkafka refused to queue (other than a full queue).
    refused: usize,
    /// A fatal error of the idempotent producer (it stops producing for good).
    fatal: Option<(RDKafkaErrorCode, String)>,
}

/// Values are `p<partition>-<sequence>`: the sequence counts up per partition in
/// produce order.
fn value(partition: i32, sequence: u64) -> String {
    format!("p{partition}-{sequence:09}")
}

/// Produces to every partition in turn until `stop`, with an idempotent
/// `acks=all` producer, then flushes.
fn produce_continuously(
    bootstrap: String,
    acks: Arc<Acks>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Load> {
    std::thread::spawn(move || {
        let producer = producer(&bootstrap, "all", acks);
        let mut sent = vec![0u64; PARTITIONS as usize];
        let mut refused = 0;
        'load: while !stop.load(Ordering::Relaxed) {
            for p in 0..PARTITIONS {
                let v = value(p, sent[p as usize]);
                loop {
                    let record = BaseRecord::<(), str>::to(TOPIC).partition(p).payload(&v);
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                            if stop.load(Ordering::Relaxed) {
                                break 'load;
                            }
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err((e, _)) => {
                            eprintln!("send refused: {e}");
                            refused += 1;
                            break;
                        }
                    }
                }
                sent[p as usize] += 1;
            }
            std::thread::sleep(Duration::from_millis(3));
        }
        if let Err(e) = producer.flush(Duration::from_secs(60)) {
            eprintln!("flush: {e}");
        }
        Load {
            sent,
            refused,
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

fn wait_for_full_isr(bootstrap: &str, topic: &str, partitions: i32) {
    for p in 0..partitions {
        wait_for(bootstrap, topic, p, "a leader and a full ISR", |l, isr| {
            l >= 0 && isr.len() == 3
        });
    }
}

/// RF=3, `min.insync.replicas=2`, three partitions: each partition's leader is
/// killed in turn (SIGKILL) while an idempotent `acks=all` producer keeps
/// producing, and restarted once another replica leads. Nothing acknowledged is
/// lost, duplicated or reordered, and the replicas end up byte-identical.
#[test]
fn leaders_killed_under_acks_all_load_lose_no_acknowledged_record() {
    let mut cluster = Cluster::start(3);
    let bootstrap = cluster.bootstrap();
    create_replicated_topic(&bootstrap, TOPIC, PARTITIONS);
    wait_for_full_isr(&bootstrap, TOPIC, PARTITIONS);

    let acks = Arc::new(Acks::default());
    let stop = Arc::new(AtomicBool::new(false));
    let load = produce_continuously(bootstrap.clone(), acks.clone(), stop.clone());
    let stop = StopOnDrop(stop);
    let end = Instant::now() + Duration::from_secs(60);
    while (0..PARTITIONS).any(|p| acks.of_partition(p).len() < WARM_UP_ACKS) {
        assert!(Instant::now() < end, "the producer got no acknowledgements");
        std::thread::sleep(Duration::from_millis(20));
    }

    let started = Instant::now();
    for round in 0..KILLS {
        let partition = round as i32 % PARTITIONS;
        let (leader, _) = wait_for(&bootstrap, TOPIC, partition, "a leader", |l, _| l >= 0);
        cluster.node(leader).kill9();
        let killed_at = Instant::now();
        let (next, _) = wait_for(&bootstrap, TOPIC, partition, "a new leader", |l, _| {
            l >= 0 && l != leader
        });
        let elected = killed_at.elapsed();
        let acked_at = acks
            .wait_acked_after(partition, killed_at, Duration::from_secs(60))
            .unwrap_or_else(|| {
                panic!(
                    "{TOPIC}-{partition}: nothing acknowledged within 60 s of killing its leader"
                )
            });
        eprintln!(
            "kill {}: node {leader} led {TOPIC}-{partition}; clients saw node {next} lead after {elected:?}; \
             first produce acknowledged {:?} after the kill",
            round + 1,
            acked_at.duration_since(killed_at)
        );
        cluster.node(leader).restart();
        wait_for_full_isr(&bootstrap, TOPIC, PARTITIONS);
    }
    // Some load after the last restart, on every partition.
    let after = Instant::now();
    for p in 0..PARTITIONS {
        acks.wait_acked_after(p, after, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("{TOPIC}-{p}: nothing acknowledged after the last restart"));
    }
    eprintln!("{KILLS} kills and restarts took {:?}", started.elapsed());
    drop(stop);
    let load = load.join().expect("producer thread");
    assert_eq!(load.fatal, None, "the idempotent producer failed for good");

    let failed = acks.failed.load(Ordering::Relaxed);
    let sent: u64 = load.sent.iter().sum();
    let mut acked_total = 0;
    for p in 0..PARTITIONS {
        let acked = acks.of_partition(p);
        let stored = check_acked_stored_once(&bootstrap, TOPIC, p, &acked);
        eprintln!(
            "{TOPIC}-{p}: sent {}, acknowledged {}, stored {} (every acknowledged one found once)",
            load.sent[p as usize],
            acked.len(),
            stored.len()
        );
        acked_total += acked.len();
    }
    eprintln!(
        "sent {sent}, acknowledged {acked_total}, all found, failed {failed}, refused {}",
        load.refused
    );
    assert_eq!(
        (acked_total + failed) as u64 + load.refused as u64,
        sent,
        "every record sent got a delivery report"
    );

    // The replicas converge while running, and are identical offline.
    let end = Instant::now() + Duration::from_secs(60);
    for p in 0..PARTITIONS {
        loop {
            let bytes: Vec<(i32, Vec<u8>)> = (1..=3)
                .map(|id| (id, segment_bytes(&cluster.data_dir(id), TOPIC, p)))
                .collect();
            let Some(difference) = first_difference(&bytes) else {
                break;
            };
            assert!(
                Instant::now() < end,
                "{TOPIC}-{p}: replicas differ: {difference}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    stop_and_compare_offline(&mut cluster, TOPIC, PARTITIONS);
    let truncations: usize = cluster
        .nodes
        .values()
        .map(|p| p.stderr().matches("truncated to the leader's log").count())
        .sum();
    eprintln!("divergent tails the returning replicas truncated: {truncations}");
}

/// The active controller killed (SIGKILL): the two other voters elect one of
/// themselves, which fences the dead broker, creates topics and moves leaders.
#[test]
fn the_controller_killed_another_takes_over_and_still_creates_topics_and_moves_leaders() {
    let mut cluster = Cluster::start(3);
    let bootstrap = cluster.bootstrap();
    create_replicated_topic(&bootstrap, "before", 3);
    wait_for_full_isr(&bootstrap, "before", 3);
    let controller = cluster.wait_for_controller("a controller", |_| true);

    cluster.node(controller).kill9();
    let killed_at = Instant::now();
    let next = cluster.wait_for_controller("another controller", |id| id != controller);
    eprintln!(
        "controller {controller} killed; brokers named {next} after {:?}",
        killed_at.elapsed()
    );
    // The new controller fences the dead broker: its leaderships move.
    cluster.wait_for_brokers(2);
    for p in 0..3 {
        wait_for(
            &bootstrap,
            "before",
            p,
            "a leader that is alive",
            |l, isr| l >= 0 && l != controller && !isr.contains(&controller),
        );
    }
    // Two live brokers: three replicas are refused, as Kafka does; two are placed.
    assert_eq!(
        try_create_topic(&bootstrap, "three-of-two", 1, 3, &[]),
        Err(RDKafkaErrorCode::InvalidReplicationFactor)
    );
    create_topic_everywhere(&bootstrap, "during", 2, 2, &[]);
    for p in 0..2 {
        wait_for(
            &bootstrap,
            "during",
            p,
            "a leader and both replicas in sync",
            |l, isr| l >= 0 && isr.len() == 2,
        );
    }

    cluster.node(controller).restart();
    cluster.wait_for_brokers(3);
    wait_for_full_isr(&bootstrap, "before", 3);
    create_replicated_topic(&bootstrap, "after", 3);
    wait_for_full_isr(&bootstrap, "after", 3);

    // A partition leader killed (one that is not the controller, if any).
    let current = cluster.wait_for_controller("a controller", |_| true);
    let leaders: Vec<i32> = (0..3)
        .map(|p| wait_for(&bootstrap, "after", p, "a leader", |l, _| l >= 0).0)
        .collect();
    let partition = (0..3)
        .find(|p| leaders[*p as usize] != current)
        .unwrap_or(0);
    let leader = leaders[partition as usize];
    cluster.node(leader).kill9();
    let killed_at = Instant::now();
    let (moved_to, _) = wait_for(&bootstrap, "after", partition, "a new leader", |l, _| {
        l >= 0 && l != leader
    });
    eprintln!(
        "after-{partition}: leader {leader} killed, node {moved_to} leads after {:?} (controller {current})",
        killed_at.elapsed()
    );
    // And it takes acks=all produce with the two replicas left.
    let acks = Arc::new(Acks::default());
    let p = producer(&bootstrap, "all", acks.clone());
    for i in 0..20 {
        p.send(
            BaseRecord::<(), str>::to("after")
                .partition(partition)
                .payload(&format!("moved-{i}")),
        )
        .expect("queue");
    }
    p.flush(Duration::from_secs(30)).expect("flush");
    assert_eq!(acks.acked.lock().expect("acks").len(), 20);
    // librdkafka reports the dead broker's transport failures to a consumer that
    // knows it: read through the live ones.
    let live = cluster.live_bootstrap();
    let read = read_partition(&live, "after", partition).expect("read back");
    assert_eq!(
        values(&read),
        (0..20).map(|i| format!("moved-{i}")).collect::<Vec<_>>()
    );
}
