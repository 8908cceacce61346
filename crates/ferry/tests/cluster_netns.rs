//! Partitions of the network: three `ferry serve` processes, each in a network
//! namespace of its own, all voters of the metadata quorum; one of them is cut
//! off from the other two (their packets are dropped silently) while the
//! test's clients still reach all three.
//!
//! - A partition leader cut off cannot acknowledge `acks=all` writes; the two
//!   others elect a leader with a higher epoch; after healing, every
//!   acknowledged record is stored once, in order, on every replica, and the old
//!   leader has dropped what it appended alone.
//! - The active controller cut off: the two others elect one; after healing
//!   there is one controller and every broker describes the same metadata.
//! - Clients writing through a cut-off leader get errors or timeouts, never a
//!   success for a record that is then lost.
//!
//! The partition leaders cut off are chosen among brokers that are not the
//! active controller, so those tests test a partition's failover; cutting
//! off the controller is the second test's subject.
//!
//! Needs root (network namespaces); elsewhere each test prints `SKIPPED: ...`.

mod cluster_support;
mod netns_support;
mod reliability;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cluster_support::*;
use netns_support::*;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use reliability::*;

const WAIT: Duration = Duration::from_secs(60);

/// The brokers' Kafka addresses.
fn addrs(net: &Net, ids: &[i32]) -> Vec<String> {
    ids.iter().map(|id| net.kafka_addr(*id)).collect()
}

/// The partition as every view describes it, when they all agree.
fn agreed(views: &[MetadataView], topic: &str, partition: i32) -> Option<PartitionView> {
    let mut seen = views.iter().map(|v| {
        v.topic(topic)
            .and_then(|t| t.partitions.iter().find(|p| p.index == partition))
            .cloned()
    });
    let first = seen.next()??;
    seen.all(|p| p.as_ref() == Some(&first)).then_some(first)
}

/// Waits until the brokers at `addrs` agree on a leader and a full ISR of every
/// partition of `topic`.
fn wait_for_full_isr(addrs: &[String], topic: &str, partitions: i32) -> Vec<MetadataView> {
    wait_for_views(
        addrs,
        &format!("{topic}: one leader and a full ISR, everywhere alike"),
        WAIT,
        |v| {
            (0..partitions).all(|p| {
                agreed(v, topic, p)
                    .is_some_and(|p| p.leader >= 0 && p.isr.len() == p.replicas.len())
            })
        },
    )
}

/// A partition whose leader is not the active controller, and how every
/// broker describes it: cutting that leader off tests the partition's
/// failover, not the controller's.
fn led_by_a_non_controller(
    views: &[MetadataView],
    topic: &str,
    partitions: i32,
) -> (i32, PartitionView) {
    let controller = views[0].controller;
    (0..partitions)
        .filter_map(|p| agreed(views, topic, p).map(|v| (p, v)))
        .find(|(_, v)| v.leader != controller)
        .unwrap_or_else(|| panic!("{topic}: every partition is led by the controller {controller}"))
}

/// Reads the partition through `bootstrap` and checks every acknowledged
/// (offset, value) is stored at that offset; with `once`, also that no value
/// is stored twice and the log is in `acked` order. Returns what is stored.
fn check_acknowledged(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    acked: &[(i64, String)],
    once: bool,
) -> Vec<(i64, String)> {
    let stored: Vec<(i64, String)> = read_partition(bootstrap, topic, partition)
        .unwrap_or_else(|e| panic!("{topic}-{partition}: read back: {e}"))
        .iter()
        .map(|m| {
            let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            (m.offset(), v)
        })
        .collect();
    let at: HashMap<i64, &str> = stored.iter().map(|(o, v)| (*o, v.as_str())).collect();
    let missing: Vec<&(i64, String)> = acked
        .iter()
        .filter(|(o, v)| at.get(o) != Some(&v.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{topic}-{partition}: {} of {} acknowledged records are not stored where they were \
         acknowledged, e.g. {:?} (that offset holds {:?})",
        missing.len(),
        acked.len(),
        missing[0],
        at.get(&missing[0].0)
    );
    if once {
        let mut offset_of: HashMap<&str, i64> = HashMap::new();
        for (o, v) in &stored {
            if let Some(first) = offset_of.insert(v, *o) {
                panic!("{topic}-{partition}: {v} stored twice, at {first} and {o}");
            }
        }
        assert!(
            acked.windows(2).all(|w| w[0].0 < w[1].0),
            "{topic}-{partition}: acknowledged offsets do not ascend in acknowledgement order"
        );
    }
    stored
}

/// Waits until the replicas of a partition hold the same bytes; fails with
/// where they differ.
fn wait_for_identical_replicas(cluster: &Cluster, topic: &str, partition: i32) {
    let end = Instant::now() + WAIT;
    loop {
        let bytes: Vec<(i32, Vec<u8>)> = (1..=3)
            .map(|id| (id, segment_bytes(&cluster.data_dir(id), topic, partition)))
            .collect();
        let Some(difference) = first_difference(&bytes) else {
            return;
        };
        assert!(
            Instant::now() < end,
            "{topic}-{partition}: replicas differ: {difference}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends `values` to one partition and waits for their delivery reports.
fn send_all(
    producer: &ThreadedProducer<AckContext>,
    topic: &str,
    partition: i32,
    values: &[String],
) {
    for v in values {
        producer
            .send(
                BaseRecord::<(), str>::to(topic)
                    .partition(partition)
                    .payload(v),
            )
            .unwrap_or_else(|(e, _)| panic!("queue {v}: {e}"));
    }
    if let Err(e) = producer.flush(Duration::from_secs(30)) {
        eprintln!("flush: {e}");
    }
}

/// RF=3, `min.insync.replicas=2`: the leader of the partition is cut off from
/// both followers while writes keep reaching it.
#[test]
fn a_partition_leader_cut_off_acknowledges_nothing_and_drops_its_divergent_tail() {
    in_namespaces(
        "a_partition_leader_cut_off_acknowledges_nothing_and_drops_its_divergent_tail",
        3,
        leader_cut_off,
    );
}

fn leader_cut_off(net: &mut Net) {
    const TOPIC: &str = "cut-leader";
    const PARTITIONS: i32 = 3;
    let mut cluster = net.start_cluster(&[]);
    let everyone = addrs(net, &[1, 2, 3]);
    let bootstrap = everyone.join(",");
    create_replicated_topic(&bootstrap, TOPIC, PARTITIONS);
    let views = wait_for_full_isr(&everyone, TOPIC, PARTITIONS);
    let (part, before) = led_by_a_non_controller(&views, TOPIC, PARTITIONS);
    let old = before.leader;
    let others: Vec<i32> = (1..=3).filter(|id| *id != old).collect();

    let acks = Arc::new(Acks::default());
    let values = |prefix: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
    };
    send_all(
        &producer(&bootstrap, "all", acks.clone()),
        TOPIC,
        part,
        &values("before", 50),
    );
    let acked_before = acks.of_partition(part);
    assert_eq!(acked_before.len(), 50, "acknowledged before the cut");
    let end_before = acked_before.iter().map(|(o, _)| o + 1).max().unwrap_or(0);
    wait_for_identical_replicas(&cluster, TOPIC, part);

    net.cut(old, &others);
    let cut_at = Instant::now();
    eprintln!(
        "node {old} (leader of {TOPIC}-{part}, epoch {}) cut off from {others:?}",
        before.leader_epoch
    );
    // acks=all writes sent to the cut-off leader itself: a raw request, and a
    // producer that knows only that broker.
    let old_addr = net.kafka_addr(old);
    let raw = std::thread::spawn(move || {
        produce_acks_all(
            &old_addr,
            TOPIC,
            part,
            record_batch("cut-raw-", 10, 16),
            5_000,
        )
    });
    let through_old_acks = Arc::new(Acks::default());
    let through_old: ThreadedProducer<AckContext> = client(&net.kafka_addr(old))
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("request.timeout.ms", "5000")
        .set("message.timeout.ms", "10000")
        .set("linger.ms", "5")
        .create_with_context(AckContext(through_old_acks.clone()))
        .expect("producer");
    for v in values("cut-client", 10) {
        through_old
            .send(BaseRecord::<(), str>::to(TOPIC).partition(part).payload(&v))
            .unwrap_or_else(|(e, _)| panic!("queue {v}: {e}"));
    }

    // The two others elect a leader with a higher epoch.
    let during = wait_for_views(
        &addrs(net, &others),
        "a leader among the others, with a higher epoch",
        WAIT,
        |v| {
            agreed(v, TOPIC, part)
                .is_some_and(|p| others.contains(&p.leader) && p.leader_epoch > before.leader_epoch)
        },
    );
    let after = agreed(&during, TOPIC, part).expect("agreed");
    eprintln!(
        "{:?} after the cut the others name node {} leader, epoch {}, isr {:?}; node {old} says {:?}",
        cut_at.elapsed(),
        after.leader,
        after.leader_epoch,
        after.isr,
        metadata_view(&net.kafka_addr(old)).and_then(|v| agreed(&[v], TOPIC, part))
    );

    let code = raw.join().expect("raw produce");
    assert!(
        code.is_some_and(|c| c != 0),
        "an acks=all produce to the cut-off leader was answered with {code:?}, not an error"
    );
    if let Err(e) = through_old.flush(Duration::from_secs(20)) {
        eprintln!("flush through the old leader: {e}");
    }
    let cut_acked = through_old_acks.of_partition(part);
    eprintln!(
        "raw produce to node {old}: error {code:?}; producer through node {old}: {} acknowledged, {} failed",
        cut_acked.len(),
        through_old_acks.failed.load(Ordering::Relaxed)
    );
    // Whatever was acknowledged was written by the new leader, not by the old.
    drop(through_old);

    // The cut-off leader appended alone: a tail in its old epoch.
    let tail: Vec<(i64, i64, i32)> = batches(&segment_bytes(&cluster.data_dir(old), TOPIC, part))
        .into_iter()
        .filter(|b| b.0 >= end_before && b.2 <= before.leader_epoch)
        .collect();
    assert!(
        !tail.is_empty(),
        "node {old} appended nothing past offset {end_before} while cut off"
    );
    eprintln!("node {old}'s divergent tail: {tail:?}");

    // The new leader takes acks=all writes with two replicas in sync.
    send_all(
        &producer(&addrs(net, &others).join(","), "all", acks.clone()),
        TOPIC,
        part,
        &values("new-leader", 20),
    );
    assert_eq!(
        acks.of_partition(part).len(),
        70,
        "the new leader acknowledged all 20"
    );

    net.heal();
    let healed_at = Instant::now();
    let healed = wait_for_full_isr(&everyone, TOPIC, PARTITIONS);
    eprintln!(
        "healed: {:?} later all three name {:?}",
        healed_at.elapsed(),
        agreed(&healed, TOPIC, part)
    );
    wait_for_identical_replicas(&cluster, TOPIC, part);

    let mut acked = acks.of_partition(part);
    acked.extend(cut_acked);
    acked.sort();
    let stored = check_acknowledged(&bootstrap, TOPIC, part, &acked, true);
    let lost_tail: Vec<&(i64, String)> = stored
        .iter()
        .filter(|(_, v)| v.starts_with("cut-raw-"))
        .collect();
    assert!(
        lost_tail.is_empty(),
        "records the cut-off leader never acknowledged are stored: {lost_tail:?}"
    );
    // The old leader's log past the cut is the new leader's, in the new epoch.
    let old_log = batches(&segment_bytes(&cluster.data_dir(old), TOPIC, part));
    let stale: Vec<&(i64, i64, i32)> = old_log
        .iter()
        .filter(|b| b.0 >= end_before && b.2 <= before.leader_epoch)
        .collect();
    assert!(
        stale.is_empty(),
        "node {old} still holds batches of its old epoch past {end_before}: {stale:?}"
    );
    eprintln!(
        "stored {} records; every acknowledged one of {} once, in order",
        stored.len(),
        acked.len()
    );
    stop_and_compare_offline(&mut cluster, TOPIC, PARTITIONS);
}

/// The active controller cut off from the two other voters.
///
/// The cut-off controller keeps deciding on its stale image (it fences the
/// brokers it no longer hears from); none of those decisions may take effect
/// after healing (they once did: the pending proposal was forwarded to the
/// new leader, partitions went back to older leader epochs, replicas refused
/// those roles and the ISR never recovered).
#[test]
fn the_active_controller_cut_off_the_others_elect_one_and_healing_leaves_one_history() {
    in_namespaces(
        "the_active_controller_cut_off_the_others_elect_one_and_healing_leaves_one_history",
        3,
        controller_cut_off,
    );
}

fn controller_cut_off(net: &mut Net) {
    let _cluster = net.start_cluster(&[]);
    let everyone = addrs(net, &[1, 2, 3]);
    let bootstrap = everyone.join(",");
    create_replicated_topic(&bootstrap, "before", 3);
    let views = wait_for_views(
        &everyone,
        "one controller, and the same metadata everywhere",
        WAIT,
        |v| v[0].controller >= 0 && v[0].topic("before").is_some() && v.iter().all(|x| x == &v[0]),
    );
    let old = views[0].controller;
    let before_id = views[0].topic("before").expect("before").id.clone();
    let others: Vec<i32> = (1..=3).filter(|id| *id != old).collect();
    let majority = addrs(net, &others);

    net.cut(old, &others);
    let cut_at = Instant::now();
    let during = wait_for_views(
        &majority,
        "the others agree on a new controller and fence the old one",
        WAIT,
        |v| {
            v[0].controller >= 0
                && v[0].controller != old
                && v.iter()
                    .all(|x| x.controller == v[0].controller && !x.brokers.contains(&old))
        },
    );
    let new = during[0].controller;
    // Wait for the majority to move every leadership off the old controller:
    // the epochs the healed cluster must not go back from.
    let during = wait_for_views(
        &majority,
        "leaders of every partition among the others",
        WAIT,
        |v| (0..3).all(|p| agreed(v, "before", p).is_some_and(|p| others.contains(&p.leader))),
    );
    let epochs_during: Vec<i32> = (0..3)
        .map(|p| agreed(&during, "before", p).expect("agreed").leader_epoch)
        .collect();
    eprintln!(
        "controller {old} cut off; after {:?} nodes {others:?} name {new}; node {old} names {:?}",
        cut_at.elapsed(),
        metadata_view(&net.kafka_addr(old)).map(|v| v.controller)
    );

    // The old controller, alone, cannot create anything.
    let refused = create_topic_at(&net.kafka_addr(old), "alone", 5_000);
    eprintln!("CreateTopics at node {old} while cut off: {refused:?}");
    assert!(
        refused.is_some_and(|c| c != 0),
        "the cut-off controller answered CreateTopics with {refused:?}, not an error"
    );
    // The majority can.
    create_topic_everywhere(&majority.join(","), "during", 2, 2, &[]);
    let during_view = metadata_view(&majority[0]).expect("metadata");
    let during_id = during_view.topic("during").expect("during").id.clone();

    net.heal();
    let healed_at = Instant::now();
    let healed = wait_for_views(
        &everyone,
        "one controller, three brokers and the same metadata everywhere, in sync",
        WAIT,
        |v| {
            v[0].controller >= 0
                && v[0].brokers == [1, 2, 3]
                && v[0].topic("during").is_some()
                && v.iter().all(|x| x == &v[0])
                && (0..3).all(|p| agreed(v, "before", p).is_some_and(|p| p.isr.len() == 3))
        },
    );
    eprintln!(
        "healed: {:?} later all three name controller {} and describe the same {} topics",
        healed_at.elapsed(),
        healed[0].controller,
        healed[0].topics.len()
    );
    let image = &healed[0];
    assert_eq!(
        image.topic("before").map(|t| &t.id),
        Some(&before_id),
        "the topic created before the cut kept its id"
    );
    assert_eq!(
        image.topic("during").map(|t| &t.id),
        Some(&during_id),
        "the topic the majority created kept its id"
    );
    assert_eq!(
        image.topic("during").map(|t| t.partitions.len()),
        Some(2),
        "the topic the majority created kept its partitions"
    );
    // Nothing the old controller decided alone, on its stale image, took
    // effect: no partition went back to an older leader epoch.
    for (p, epoch) in epochs_during.iter().enumerate() {
        let healed_p = agreed(&healed, "before", p as i32).expect("agreed");
        assert!(
            healed_p.leader_epoch >= *epoch,
            "before-{p}: leader epoch {epoch} during the cut, {} after healing: {healed_p:?}",
            healed_p.leader_epoch
        );
    }
    assert!(
        image.topic("alone").is_none(),
        "the create the cut-off controller refused took effect: {:?}",
        image.topic("alone")
    );

    // The healed cluster goes on as one: a topic created through the old
    // controller's broker shows the same everywhere.
    create_topic_everywhere(&net.kafka_addr(old), "after", 3, 3, &[]);
    let last = wait_for_views(
        &everyone,
        "the topic created after healing, the same everywhere",
        WAIT,
        |v| v[0].topic("after").is_some() && v.iter().all(|x| x == &v[0]),
    );
    assert_eq!(last[0].topic("after").map(|t| t.partitions.len()), Some(3));
    assert!(last[0].topic("alone").is_none());
}

/// What a producing thread did.
struct Load {
    sent: u64,
    fatal: Option<(RDKafkaErrorCode, String)>,
}

/// Produces `{prefix}-{sequence}` to `partitions` in turn every `pause` until
/// `stop`, then flushes.
fn produce_until(
    producer: ThreadedProducer<AckContext>,
    topic: &'static str,
    partitions: Vec<i32>,
    prefix: &'static str,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Load> {
    std::thread::spawn(move || {
        let mut sent = 0u64;
        'load: while !stop.load(Ordering::Relaxed) {
            let p = partitions[sent as usize % partitions.len()];
            let v = format!("{prefix}-{sent:09}");
            loop {
                let record = BaseRecord::<(), str>::to(topic).partition(p).payload(&v);
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
            std::thread::sleep(pause);
        }
        if let Err(e) = producer.flush(Duration::from_secs(70)) {
            eprintln!("{prefix}: flush: {e}");
        }
        Load {
            sent,
            fatal: producer.client().fatal_error(),
        }
    })
}

/// Stops producing threads when dropped, also when the test fails.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Clients keep writing through a leader that is cut off from its followers,
/// and are still waiting for answers when the cut heals.
#[test]
fn clients_writing_through_a_cut_off_leader_get_no_success_for_a_record_then_lost() {
    in_namespaces(
        "clients_writing_through_a_cut_off_leader_get_no_success_for_a_record_then_lost",
        3,
        writes_through_a_cut_off_leader,
    );
}

fn writes_through_a_cut_off_leader(net: &mut Net) {
    const TOPIC: &str = "cut-writes";
    const PARTITIONS: i32 = 3;
    let mut cluster = net.start_cluster(&[]);
    let everyone = addrs(net, &[1, 2, 3]);
    let bootstrap = everyone.join(",");
    create_replicated_topic(&bootstrap, TOPIC, PARTITIONS);
    let views = wait_for_full_isr(&everyone, TOPIC, PARTITIONS);
    let (part, before) = led_by_a_non_controller(&views, TOPIC, PARTITIONS);
    let old = before.leader;
    let others: Vec<i32> = (1..=3).filter(|id| *id != old).collect();

    // An idempotent acks=all producer over every partition, knowing every
    // broker; and a plain acks=all producer to the partition, knowing only its
    // leader, with timeouts long enough that it still waits for that leader's
    // answers when the cut heals.
    let stop = Arc::new(AtomicBool::new(false));
    let _stop = StopOnDrop(stop.clone());
    let acks = Arc::new(Acks::default());
    let load = produce_until(
        producer(&bootstrap, "all", acks.clone()),
        TOPIC,
        (0..PARTITIONS).collect(),
        "all",
        Duration::from_millis(10),
        stop.clone(),
    );
    let old_acks = Arc::new(Acks::default());
    let old_load = produce_until(
        client(&net.kafka_addr(old))
            .set("acks", "all")
            .set("enable.idempotence", "false")
            .set("request.timeout.ms", "30000")
            .set("message.timeout.ms", "60000")
            .set("linger.ms", "5")
            .create_with_context(AckContext(old_acks.clone()))
            .expect("producer"),
        TOPIC,
        vec![part],
        "old",
        Duration::from_millis(50),
        stop.clone(),
    );
    let end = Instant::now() + WAIT;
    while (0..PARTITIONS).any(|p| acks.of_partition(p).len() < 20)
        || old_acks.of_partition(part).len() < 20
    {
        assert!(
            Instant::now() < end,
            "the producers got no acknowledgements"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    net.cut(old, &others);
    let cut_at = Instant::now();
    let acked_at_cut = (
        acks.of_partition(part).len(),
        old_acks.of_partition(part).len(),
    );
    let old_addr = net.kafka_addr(old);
    // A write whose answer the cut-off leader still owes when the cut heals.
    let raw = std::thread::spawn(move || {
        produce_acks_all(&old_addr, TOPIC, part, record_batch("raw-", 5, 16), 60_000)
    });
    let during = wait_for_views(
        &addrs(net, &others),
        "a new leader of the partition among the others",
        WAIT,
        |v| {
            agreed(v, TOPIC, part)
                .is_some_and(|p| others.contains(&p.leader) && p.leader_epoch > before.leader_epoch)
        },
    );
    eprintln!(
        "node {old} cut off; after {:?} the others name {:?}",
        cut_at.elapsed(),
        agreed(&during, TOPIC, part).map(|p| p.leader)
    );
    // Keep the cut a while longer, so writes pile up at the old leader.
    while cut_at.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let acked_during = (
        acks.of_partition(part).len() - acked_at_cut.0,
        old_acks.of_partition(part).len() - acked_at_cut.1,
    );
    net.heal();
    let healed_at = Instant::now();
    wait_for_full_isr(&everyone, TOPIC, PARTITIONS);
    for p in 0..PARTITIONS {
        acks.wait_acked_after(p, healed_at, WAIT)
            .unwrap_or_else(|| panic!("{TOPIC}-{p}: nothing acknowledged after healing"));
    }
    let old_after = old_acks.wait_acked_after(part, healed_at, WAIT);
    let code = raw.join().expect("raw produce");
    drop(_stop);
    let load = load.join().expect("producer thread");
    let old_load = old_load.join().expect("producer thread");
    assert_eq!(load.fatal, None, "the idempotent producer failed for good");
    eprintln!(
        "while cut off: {TOPIC}-{part} acknowledged {} (idempotent) and {} (through node {old}); \
         the raw write to node {old} was answered {code:?}; the producer through node {old} \
         had an acknowledgement after healing: {}",
        acked_during.0,
        acked_during.1,
        old_after.is_some()
    );
    for p in 0..PARTITIONS {
        wait_for_identical_replicas(&cluster, TOPIC, p);
    }

    let stored_part = check_acknowledged(
        &bootstrap,
        TOPIC,
        part,
        &{
            let mut a = acks.of_partition(part);
            a.extend(old_acks.of_partition(part));
            a.sort();
            a
        },
        false,
    );
    let mut acked_total = 0;
    for p in 0..PARTITIONS {
        let acked = acks.of_partition(p);
        let stored = check_acknowledged(&bootstrap, TOPIC, p, &acked, false);
        // The idempotent producer's records: once each, in produce order.
        let own: Vec<&str> = stored
            .iter()
            .filter(|(_, v)| v.starts_with("all-"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert!(
            own.windows(2).all(|w| w[0] < w[1]),
            "{TOPIC}-{p}: the idempotent producer's records are duplicated or out of order"
        );
        acked_total += acked.len();
    }
    // The raw write: an error or no answer; if it was a success, it is stored.
    let raw_stored = stored_part
        .iter()
        .filter(|(_, v)| v.starts_with("raw-"))
        .count();
    assert!(
        code != Some(0) || raw_stored == 5,
        "the raw acks=all write to the cut-off leader was acknowledged but {raw_stored} of its 5 records are stored"
    );
    eprintln!(
        "idempotent producer: sent {}, acknowledged {acked_total}, failed {}; through node {old}: \
         sent {}, acknowledged {}, failed {}; all acknowledged records stored where acknowledged",
        load.sent,
        acks.failed.load(Ordering::Relaxed),
        old_load.sent,
        old_acks.of_partition(part).len(),
        old_acks.failed.load(Ordering::Relaxed)
    );
    stop_and_compare_offline(&mut cluster, TOPIC, PARTITIONS);
}
