//! A cluster of three `ferry serve` processes on 127.0.0.1 for tests, and the
//! librdkafka helpers they share: leader and ISR as clients see them, producers
//! that record every acknowledged record, and replicas' stored bytes.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use crate::reliability::*;

/// Broker settings that make failure detection quick enough for a test.
pub const FAST: &[&str] = &[
    "--set",
    "broker.session.timeout.ms=2000",
    "--set",
    "broker.heartbeat.interval.ms=300",
    "--set",
    "replica.lag.time.max.ms=3000",
    "--set",
    "replica.fetch.wait.max.ms=200",
    "--set",
    "default.replication.factor=3",
];

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct Cluster {
    /// Dropped before the directory, so a failing test still prints their logs.
    pub nodes: BTreeMap<i32, Proc>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Three brokers; `voters` of them (1, or 3) also run the metadata quorum.
    pub fn start(voters: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let kafka: BTreeMap<i32, u16> = (1..=3).map(|id| (id, free_port())).collect();
        let controller: BTreeMap<i32, u16> = (1..=3).map(|id| (id, free_port())).collect();
        let voter_list = (1..=voters as i32)
            .map(|id| format!("{id}@127.0.0.1:{}", controller[&id]))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = BTreeMap::new();
        for id in 1..=3 {
            let mut args: Vec<String> = vec![
                "--node-id".into(),
                id.to_string(),
                "--controller-voters".into(),
                voter_list.clone(),
                "--controller-addr".into(),
                format!("127.0.0.1:{}", controller[&id]),
            ];
            args.extend(FAST.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let data = dir.path().join(format!("node{id}"));
            nodes.insert(
                id,
                Proc::start(&data, &format!("127.0.0.1:{}", kafka[&id]), &args),
            );
        }
        let cluster = Cluster { _dir: dir, nodes };
        cluster.wait_for_brokers(3);
        cluster
    }

    /// Waits until clients see `n` live brokers.
    pub fn wait_for_brokers(&self, n: usize) {
        let bootstrap = self.bootstrap();
        let consumer: BaseConsumer = client(&bootstrap).create().expect("client");
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let seen = consumer
                .fetch_metadata(None, Duration::from_secs(5))
                .map(|m| m.brokers().len())
                .unwrap_or(0);
            if seen == n {
                return;
            }
            assert!(
                Instant::now() < end,
                "{seen} brokers registered, waited for {n}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn bootstrap(&self) -> String {
        self.nodes
            .values()
            .map(|p| p.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node(&mut self, id: i32) -> &mut Proc {
        self.nodes.get_mut(&id).expect("node")
    }

    pub fn data_dir(&self, id: i32) -> PathBuf {
        self.nodes[&id].data_dir.clone()
    }
}

/// (leader, isr) of a partition as a client sees it.
pub fn leader_and_isr(bootstrap: &str, topic: &str, partition: i32) -> Option<(i32, Vec<i32>)> {
    let consumer: BaseConsumer = client(bootstrap).create().expect("client");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let t = metadata.topics().iter().find(|t| t.name() == topic)?;
    let p = t.partitions().iter().find(|p| p.id() == partition)?;
    if p.error().is_some() {
        return None;
    }
    let mut isr = p.isr().to_vec();
    isr.sort_unstable();
    Some((p.leader(), isr))
}

/// Waits until `check` holds for the partition's (leader, isr).
pub fn wait_for(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    what: &str,
    check: impl Fn(i32, &[i32]) -> bool,
) -> (i32, Vec<i32>) {
    let end = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < end {
        if let Some((leader, isr)) = leader_and_isr(bootstrap, topic, partition) {
            if check(leader, &isr) {
                return (leader, isr);
            }
            last = Some((leader, isr));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{topic}-{partition}: waited for {what}; last seen (leader, isr) = {last:?}");
}

pub fn create_replicated_topic(bootstrap: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        client(bootstrap).create().expect("admin client");
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(3))
        .set("min.insync.replicas", "2");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let results = runtime
        .block_on(admin.create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(DEADLINE)),
        ))
        .expect("create_topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

/// Delivery reports of a producer: (partition, offset, value) of every
/// acknowledged record, and the count of failures.
#[derive(Default)]
pub struct Acks {
    pub acked: std::sync::Mutex<Vec<(i32, i64, String)>>,
    pub failed: std::sync::atomic::AtomicUsize,
}

pub struct AckContext(pub std::sync::Arc<Acks>);

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        use rdkafka::message::Message;
        match result {
            Ok(m) => {
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                self.0
                    .acked
                    .lock()
                    .expect("acks")
                    .push((m.partition(), m.offset(), value));
            }
            Err(_) => {
                self.0
                    .failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

pub fn producer(
    bootstrap: &str,
    acks: &str,
    acks_log: std::sync::Arc<Acks>,
) -> ThreadedProducer<AckContext> {
    client(bootstrap)
        .set("acks", acks)
        .set(
            "enable.idempotence",
            if acks == "all" { "true" } else { "false" },
        )
        .set("message.timeout.ms", "20000")
        .set("linger.ms", "5")
        .create_with_context(AckContext(acks_log))
        .expect("producer")
}

/// The stored segment bytes of a partition on one node (every `.log` file, in
/// order): replicas that agree hold the same bytes.
pub fn segment_bytes(data_dir: &Path, topic: &str, partition: i32) -> Vec<u8> {
    let dir = data_dir.join(format!("{topic}-{partition}"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| std::fs::read(f).expect("read segment"))
        .collect()
}
