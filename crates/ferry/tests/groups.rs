//! Consumer groups end to end with real clients (librdkafka through `rdkafka`,
//! kafka-python for a member that is killed): shared partitions, committed
//! offsets that survive consumer and broker restarts, independent groups,
//! cooperative-sticky and static membership.
//!
//! Every broker runs with `group.initial.rebalance.delay.ms=0` and a low minimum
//! session timeout so rebalances are quick; every wait is on a condition with a
//! generous deadline, never on time alone.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

const GROUP_DEADLINE: Duration = Duration::from_secs(45);

fn start_broker() -> Broker {
    Broker::start_with(&[
        "--set",
        "group.initial.rebalance.delay.ms=0",
        "--set",
        "group.min.session.timeout.ms=1000",
        "--set",
        "offsets.topic.num.partitions=10",
    ])
}

/// Records revocations and assignments, to see what a rebalance moved.
#[derive(Default, Clone)]
struct Recorder {
    revoked: Arc<Mutex<Vec<(String, i32)>>>,
    assigned: Arc<Mutex<Vec<(String, i32)>>>,
}

impl ClientContext for Recorder {}

impl ConsumerContext for Recorder {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut r = self.revoked.lock().expect("lock");
            r.extend(
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition())),
            );
        }
    }
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut a = self.assigned.lock().expect("lock");
            a.extend(
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition())),
            );
        }
    }
}

type GroupConsumer = BaseConsumer<Recorder>;

fn group_consumer(
    broker: &Broker,
    group: &str,
    topic: &str,
    extra: &[(&str, &str)],
) -> (GroupConsumer, Recorder) {
    let mut config: ClientConfig = client_config(broker);
    config
        .set("group.id", group)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "300")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .set("partition.assignment.strategy", "range");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    let recorder = Recorder::default();
    let consumer: GroupConsumer = config
        .create_with_context(recorder.clone())
        .expect("create group consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    (consumer, recorder)
}

fn assigned(c: &GroupConsumer) -> BTreeSet<i32> {
    c.assignment()
        .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

/// Polls every consumer in turn until `done` says so; returns the records each
/// one received as (partition, offset, value).
fn poll_all(
    consumers: &[&GroupConsumer],
    deadline: Duration,
    mut done: impl FnMut(&[Vec<(i32, i64, String)>]) -> bool,
) -> Vec<Vec<(i32, i64, String)>> {
    let mut got: Vec<Vec<(i32, i64, String)>> = vec![Vec::new(); consumers.len()];
    let start = Instant::now();
    while !done(&got) {
        assert!(
            start.elapsed() < deadline,
            "condition not reached within {deadline:?}"
        );
        for (i, c) in consumers.iter().enumerate() {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
                got[i].push((m.partition(), m.offset(), value));
            }
        }
    }
    got
}

/// Polls until the consumers' assignments are disjoint and cover `partitions`,
/// and each consumer has at least one partition.
fn wait_balanced(consumers: &[&GroupConsumer], partitions: i32) {
    let start = Instant::now();
    loop {
        for c in consumers {
            let _ = c.poll(Duration::from_millis(50));
        }
        let sets: Vec<BTreeSet<i32>> = consumers.iter().map(|c| assigned(c)).collect();
        let total: usize = sets.iter().map(BTreeSet::len).sum();
        let union: BTreeSet<i32> = sets.iter().flatten().copied().collect();
        if total == partitions as usize
            && union.len() == partitions as usize
            && sets.iter().all(|s| !s.is_empty())
        {
            return;
        }
        assert!(
            start.elapsed() < GROUP_DEADLINE,
            "assignments never balanced: {sets:?}"
        );
    }
}

fn produce_values(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    count: usize,
    tag: &str,
) -> BTreeSet<String> {
    let producer = producer(broker, &[]);
    let mut values = BTreeSet::new();
    for p in 0..partitions {
        let recs: Vec<Rec> = (0..count)
            .filter(|i| (*i as i32) % partitions == p)
            .map(|i| Rec::kv(&format!("k{i}"), &format!("{tag}-{i}")))
            .collect();
        for r in &recs {
            values.insert(
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).to_string(),
            );
        }
        send_all(&producer, topic, Some(p), &recs);
    }
    values
}

#[test]
fn three_consumers_share_six_partitions_and_read_every_record_once() {
    let broker = start_broker();
    let topic = unique_topic("groups-share");
    create_topic(&broker, &topic, 6, &[]);
    let consumers: Vec<(GroupConsumer, Recorder)> = (0..3)
        .map(|_| group_consumer(&broker, "share", &topic, &[]))
        .collect();
    let refs: Vec<&GroupConsumer> = consumers.iter().map(|(c, _)| c).collect();
    wait_balanced(&refs, 6);
    let sets: Vec<BTreeSet<i32>> = refs.iter().map(|c| assigned(c)).collect();
    assert!(
        sets.iter().all(|s| s.len() == 2),
        "range over 6 partitions and 3 members: {sets:?}"
    );

    let sent = produce_values(&broker, &topic, 6, 600, "v");
    let got = poll_all(&refs, GROUP_DEADLINE, |g| {
        g.iter().map(Vec::len).sum::<usize>() >= 600
    });
    let all: Vec<String> = got.iter().flatten().map(|(_, _, v)| v.clone()).collect();
    assert_eq!(all.len(), 600, "every record exactly once");
    assert_eq!(all.iter().cloned().collect::<BTreeSet<_>>(), sent);
    // Each consumer read only its own partitions.
    for (i, records) in got.iter().enumerate() {
        assert!(records.iter().all(|(p, _, _)| sets[i].contains(p)));
    }
}

#[test]
fn two_groups_each_receive_every_record() {
    let broker = start_broker();
    let topic = unique_topic("groups-pubsub");
    create_topic(&broker, &topic, 3, &[]);
    let sent = produce_values(&broker, &topic, 3, 90, "v");
    let (a, _) = group_consumer(&broker, "group-a", &topic, &[]);
    let (b, _) = group_consumer(&broker, "group-b", &topic, &[]);
    let got = poll_all(&[&a, &b], GROUP_DEADLINE, |g| {
        g[0].len() >= 90 && g[1].len() >= 90
    });
    for records in got {
        let values: BTreeSet<String> = records.into_iter().map(|(_, _, v)| v).collect();
        assert_eq!(values, sent);
    }
}

fn committed_offsets(c: &GroupConsumer, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, OP_DEADLINE).expect("OffsetFetch");
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

#[test]
fn committed_offsets_survive_consumer_and_broker_restarts() {
    let mut broker = start_broker();
    let topic = unique_topic("groups-commit");
    create_topic(&broker, &topic, 2, &[]);
    produce_values(&broker, &topic, 2, 40, "first");
    {
        let (c, _) = group_consumer(&broker, "resume", &topic, &[]);
        let got = poll_all(&[&c], GROUP_DEADLINE, |g| g[0].len() >= 40);
        assert_eq!(got[0].len(), 40);
        c.commit_consumer_state(CommitMode::Sync)
            .expect("sync commit");
        assert_eq!(
            committed_offsets(&c, &topic, 2),
            BTreeMap::from([(0, 20), (1, 20)])
        );
    }
    // A restarted consumer resumes after the committed records.
    produce_values(&broker, &topic, 2, 10, "second");
    {
        let (c, _) = group_consumer(&broker, "resume", &topic, &[]);
        let got = poll_all(&[&c], GROUP_DEADLINE, |g| g[0].len() >= 10);
        assert!(
            got[0].iter().all(|(_, _, v)| v.starts_with("second")),
            "{:?}",
            got[0]
        );
        c.commit_consumer_state(CommitMode::Async)
            .expect("async commit");
        assert!(
            wait_until(OP_DEADLINE, || committed_offsets(&c, &topic, 2)
                == BTreeMap::from([(0, 25), (1, 25)])),
            "the async commit lands"
        );
    }
    // The broker restarts: committed offsets come back from __consumer_offsets.
    broker.restart();
    produce_values(&broker, &topic, 2, 4, "third");
    let (c, _) = group_consumer(&broker, "resume", &topic, &[]);
    assert_eq!(
        committed_offsets(&c, &topic, 2),
        BTreeMap::from([(0, 25), (1, 25)])
    );
    let got = poll_all(&[&c], GROUP_DEADLINE, |g| g[0].len() >= 4);
    assert!(
        got[0].iter().all(|(_, _, v)| v.starts_with("third")),
        "{:?}",
        got[0]
    );
}

#[test]
fn auto_commit_stores_progress() {
    let broker = start_broker();
    let topic = unique_topic("groups-auto");
    create_topic(&broker, &topic, 1, &[]);
    produce_values(&broker, &topic, 1, 30, "v");
    let (c, _) = group_consumer(
        &broker,
        "auto",
        &topic,
        &[
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "200"),
        ],
    );
    poll_all(&[&c], GROUP_DEADLINE, |g| g[0].len() >= 30);
    let ok = wait_until(OP_DEADLINE, || {
        let _ = c.poll(Duration::from_millis(50));
        committed_offsets(&c, &topic, 1).get(&0) == Some(&30)
    });
    assert!(ok, "auto commit reaches the end of the partition");
}

#[test]
fn cooperative_sticky_moves_only_the_partitions_that_change_owner() {
    let broker = start_broker();
    let topic = unique_topic("groups-coop");
    create_topic(&broker, &topic, 6, &[]);
    let coop = [("partition.assignment.strategy", "cooperative-sticky")];
    let (a, rec_a) = group_consumer(&broker, "coop", &topic, &coop);
    let start = Instant::now();
    while assigned(&a).len() != 6 {
        let _ = a.poll(Duration::from_millis(50));
        assert!(
            start.elapsed() < GROUP_DEADLINE,
            "the first member never got all partitions"
        );
    }
    let (b, _) = group_consumer(&broker, "coop", &topic, &coop);
    wait_balanced(&[&a, &b], 6);
    let (sa, sb) = (assigned(&a), assigned(&b));
    assert_eq!(sa.len() + sb.len(), 6);
    let revoked: BTreeSet<i32> = rec_a
        .revoked
        .lock()
        .expect("lock")
        .iter()
        .map(|(_, p)| *p)
        .collect();
    assert_eq!(
        revoked, sb,
        "only the partitions that moved to the new member were revoked"
    );
    assert!(sa.is_disjoint(&revoked));
}

#[test]
fn static_member_restart_keeps_its_assignment_without_rebalance() {
    let broker = start_broker();
    let topic = unique_topic("groups-static");
    create_topic(&broker, &topic, 4, &[]);
    let stat = |id: &'static str| [("group.instance.id", id), ("session.timeout.ms", "10000")];
    let (a, _) = group_consumer(&broker, "static", &topic, &stat("a"));
    let (b, rec_b) = group_consumer(&broker, "static", &topic, &stat("b"));
    wait_balanced(&[&a, &b], 4);
    let before_a = assigned(&a);
    let before_b = assigned(&b);
    let b_assign_events = rec_b.assigned.lock().expect("lock").len();
    drop(a); // a static member does not leave the group when it closes
    let (a2, _) = group_consumer(&broker, "static", &topic, &stat("a"));
    let start = Instant::now();
    while assigned(&a2) != before_a {
        let _ = a2.poll(Duration::from_millis(50));
        let _ = b.poll(Duration::from_millis(10));
        assert!(
            start.elapsed() < GROUP_DEADLINE,
            "the restarted static member did not get its partitions back"
        );
    }
    // Give b a moment of polling: it must see no new assignment.
    for _ in 0..20 {
        let _ = b.poll(Duration::from_millis(50));
        let _ = a2.poll(Duration::from_millis(10));
    }
    assert_eq!(assigned(&b), before_b);
    assert_eq!(
        rec_b.assigned.lock().expect("lock").len(),
        b_assign_events,
        "b was not rebalanced"
    );
}

#[test]
#[ignore = "flaky: about one run in five the kafka-python member stops heartbeating right after its second join and never commits; not yet understood (run with --ignored)"]
fn killed_member_partitions_move_and_only_uncommitted_records_are_redelivered() {
    let broker = start_broker();
    let topic = unique_topic("groups-kill");
    create_topic(&broker, &topic, 4, &[]);
    let sent = produce_values(&broker, &topic, 4, 200, "v");
    // The victim: kafka-python, committing synchronously after each record and
    // printing the value once the commit succeeded.
    let victim_log = PythonLog::new();
    let (log_var, log_path) = victim_log.env();
    let mut victim = Command::new(python())
        .env(log_var, log_path)
        .arg(python_script("groups_member.py"))
        .arg(broker.bootstrap())
        .arg(&topic)
        .arg("kill-group")
        .arg("60")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the kafka-python member");
    let stdout = victim.stdout.take().expect("stdout");
    let committed: Arc<Mutex<Vec<String>>> = Arc::default();
    let consumed: Arc<Mutex<Vec<String>>> = Arc::default();
    let reader = {
        let (committed, consumed) = (committed.clone(), consumed.clone());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(v) = line.strip_prefix("committed ") {
                    committed.lock().expect("lock").push(v.to_string());
                } else if let Some(v) = line.strip_prefix("consumed ") {
                    consumed.lock().expect("lock").push(v.to_string());
                }
            }
        })
    };
    let ok = wait_until(GROUP_DEADLINE, || {
        committed.lock().expect("lock").len() >= 20
    });
    assert!(
        ok,
        "the python member did not commit 20 records; the last lines of its debug log:\n{}",
        victim_log.tail(150)
    );
    victim.kill().expect("SIGKILL the member");
    let _ = victim.wait();
    let _ = reader.join();
    let done: HashSet<String> = committed.lock().expect("lock").iter().cloned().collect();
    // Consumed by the victim; its commit may or may not have landed before the kill.
    let maybe: HashSet<String> = consumed.lock().expect("lock").iter().cloned().collect();

    // A librdkafka member takes over after the session timeout.
    let (c, _) = group_consumer(&broker, "kill-group", &topic, &[]);
    let expected = sent.len() - maybe.len();
    let got = poll_all(&[&c], Duration::from_secs(60), |g| {
        let values: HashSet<&String> = g[0].iter().map(|(_, _, v)| v).collect();
        sent.iter()
            .filter(|v| !maybe.contains(*v))
            .all(|v| values.contains(v))
    });
    let redelivered: Vec<&String> = got[0]
        .iter()
        .map(|(_, _, v)| v)
        .filter(|v| done.contains(*v))
        .collect();
    assert!(
        redelivered.is_empty(),
        "committed records came back: {redelivered:?}"
    );
    assert!(got[0].len() >= expected);
}

/// A kcat (librdkafka 2.0.2) balanced consumer with auto commit is killed without
/// leaving; an rdkafka member takes its partitions after the session timeout and
/// resumes exactly at the committed offsets: nothing committed comes back,
/// nothing after the commits is lost (at-least-once), including records produced
/// after the kill.
#[test]
fn killed_kcat_member_partitions_move_and_resume_at_committed_offsets() {
    let broker = start_broker();
    let topic = unique_topic("groups-kcat-kill");
    let group = "kcat-kill";
    create_topic(&broker, &topic, 4, &[]);
    produce_values(&broker, &topic, 4, 400, "v");
    let mut victim = Command::new(kcat())
        .args([
            "-b",
            &broker.bootstrap(),
            "-G",
            group,
            &topic,
            "-q",
            "-f",
            "%p %o\n",
        ])
        .args([
            "-X",
            "auto.offset.reset=earliest",
            "-X",
            "session.timeout.ms=6000",
        ])
        .args([
            "-X",
            "heartbeat.interval.ms=300",
            "-X",
            "enable.auto.commit=true",
        ])
        .args(["-X", "auto.commit.interval.ms=100"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kcat");
    // An observer that never joins the group reads its committed offsets.
    let observer: BaseConsumer = client_config(&broker)
        .set("group.id", group)
        .create()
        .expect("observer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition(&topic, p);
    }
    let committed = |tpl: &TopicPartitionList| -> BTreeMap<i32, i64> {
        observer
            .committed_offsets(tpl.clone(), Duration::from_secs(10))
            .map(|c| {
                c.elements()
                    .iter()
                    .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1).max(0)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let progressed = wait_until(GROUP_DEADLINE, || {
        committed(&tpl).values().sum::<i64>() >= 40
    });
    assert!(progressed, "kcat consumed and auto-committed");
    victim.kill().expect("SIGKILL kcat");
    let _ = victim.wait();
    let at_kill = committed(&tpl);
    // More records after the kill: the survivor must read them too.
    produce_values(&broker, &topic, 4, 400, "w");

    let (c, _) = group_consumer(&broker, group, &topic, &[]);
    let got = poll_all(&[&c], Duration::from_secs(60), |g| {
        (0..4).all(|p| {
            let from = at_kill.get(&p).copied().unwrap_or(0);
            let seen: BTreeSet<i64> = g[0]
                .iter()
                .filter(|(q, _, _)| *q == p)
                .map(|(_, o, _)| *o)
                .collect();
            (from..200).all(|o| seen.contains(&o))
        })
    });
    for (p, o, v) in &got[0] {
        let from = at_kill.get(p).copied().unwrap_or(0);
        assert!(
            *o >= from,
            "record {v} at {p}/{o} was committed (at {from}) yet came back"
        );
    }
}
