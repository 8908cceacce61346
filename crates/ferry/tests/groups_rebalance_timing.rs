//! How long a rebalance takes after a member leaves cleanly and after one is
//! killed, for the classic protocol and for KIP-848. A measurement, not a test:
//! it prints the figures and asserts only that the rebalance happened.
//!
//! ```text
//! cargo test -p ferry --test groups_rebalance_timing -- --ignored --nocapture --test-threads 1
//! ```
//!
//! A killed member is a child process (this test binary re-run as a member, or
//! the kafka-python member), so it can be SIGKILLed without leaving the group.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};

const DEADLINE: Duration = Duration::from_secs(120);
const PARTITIONS: i32 = 6;
/// Set in a child process: run as a group member until killed.
const CHILD_ENV: &str = "FERRY_TIMING_MEMBER";

fn start_broker() -> Broker {
    Broker::start_with(&[
        "--set",
        "group.initial.rebalance.delay.ms=0",
        "--set",
        "group.min.session.timeout.ms=1000",
    ])
}

/// Classic member settings: session.timeout.ms 6000, heartbeat.interval.ms 500.
fn classic(broker_bootstrap: &str, group: &str, topic: &str) -> BaseConsumer {
    let mut config = rdkafka::config::ClientConfig::new();
    config
        .set("bootstrap.servers", broker_bootstrap)
        .set("group.id", group)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("log_level", "3");
    let c: BaseConsumer = config.create().expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    c
}

/// KIP-848 member: the broker's session timeout and heartbeat interval apply.
fn modern(broker_bootstrap: &str, group: &str, topic: &str) -> BaseConsumer {
    let mut config = rdkafka::config::ClientConfig::new();
    config
        .set("bootstrap.servers", broker_bootstrap)
        .set("group.id", group)
        .set("group.protocol", "consumer")
        .set("log_level", "3");
    let c: BaseConsumer = config.create().expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    c
}

fn owned(c: &BaseConsumer) -> usize {
    c.assignment().map(|t| t.count()).unwrap_or(0)
}

/// Polls `c` until it owns `n` partitions; returns how long that took.
fn until_owns(c: &BaseConsumer, n: usize) -> Duration {
    let start = Instant::now();
    while owned(c) != n {
        let _ = c.poll(Duration::from_millis(10));
        assert!(start.elapsed() < DEADLINE, "never owned {n} partitions");
    }
    start.elapsed()
}

/// Polls both until they split the partitions between them.
fn until_split(a: &BaseConsumer, b: &BaseConsumer) {
    let start = Instant::now();
    loop {
        let _ = a.poll(Duration::from_millis(10));
        let _ = b.poll(Duration::from_millis(10));
        if owned(a) > 0 && owned(b) > 0 && owned(a) + owned(b) == PARTITIONS as usize {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "the two members never split");
    }
}

/// Polls `a` until it owns some but not all partitions (a child member took the rest).
fn until_shared(a: &BaseConsumer) {
    let start = Instant::now();
    loop {
        let _ = a.poll(Duration::from_millis(10));
        let n = owned(a);
        if n > 0 && n < PARTITIONS as usize {
            return;
        }
        assert!(start.elapsed() < DEADLINE, "the child member never joined");
    }
}

fn child_member(broker: &Broker, protocol: &str, group: &str, topic: &str) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "member_process", "--ignored", "--nocapture"])
        .env(
            CHILD_ENV,
            format!("{protocol} {} {group} {topic}", broker.bootstrap()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a member process")
}

/// The body of a child member process (does nothing in a normal run).
#[test]
#[ignore]
fn member_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(' ').collect();
    let c = match parts[0] {
        "classic" => classic(parts[1], parts[2], parts[3]),
        _ => modern(parts[1], parts[2], parts[3]),
    };
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        let _ = c.poll(Duration::from_millis(50));
    }
}

fn measure(protocol: &str) {
    let broker = start_broker();
    let topic = unique_topic(&format!("timing-{protocol}"));
    create_topic(&broker, &topic, PARTITIONS, &[]);
    let make = |group: &str| match protocol {
        "classic" => classic(&broker.bootstrap(), group, &topic),
        _ => modern(&broker.bootstrap(), group, &topic),
    };

    // A clean leave: b closes (LeaveGroup / heartbeat with epoch -1).
    let group = format!("timing-leave-{protocol}");
    let a = make(&group);
    let b = make(&group);
    until_split(&a, &b);
    let start = Instant::now();
    drop(b);
    let _ = until_owns(&a, PARTITIONS as usize);
    let leave = start.elapsed();

    // A killed member: SIGKILL, so only the session timeout notices.
    let group = format!("timing-kill-{protocol}");
    let a = make(&group);
    let _ = until_owns(&a, PARTITIONS as usize);
    let mut child = child_member(&broker, protocol, &group, &topic);
    until_shared(&a);
    let start = Instant::now();
    child.kill().expect("SIGKILL the member");
    let _ = child.wait();
    let _ = until_owns(&a, PARTITIONS as usize);
    let killed = start.elapsed();

    println!(
        "REBALANCE {protocol}: clean leave -> survivor owns all {PARTITIONS} partitions after {} ms; \
         killed member -> after {} ms",
        leave.as_millis(),
        killed.as_millis()
    );
}

#[test]
#[ignore]
fn rebalance_after_leave_and_kill_classic() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    measure("classic");
}

#[test]
#[ignore]
fn rebalance_after_leave_and_kill_consumer_protocol() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    measure("consumer");
}
