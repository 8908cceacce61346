//! A cluster of three `ferry serve` processes on 127.0.0.1 for tests, and the
//! librdkafka helpers they share: leader and ISR as clients see them, producers
//! that record every acknowledged record, and replicas' stored bytes.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
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

/// Attempts at starting a cluster whose picked ports another process took.
const START_ATTEMPTS: usize = 3;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct Cluster {
    /// Dropped before the directory, so a failing test still prints their logs.
    pub nodes: BTreeMap<i32, Proc>,
    /// Kept on disk (data and broker logs) after a failing test when
    /// `FERRY_KEEP_TEST_DIRS` is set, after any test when it is `always`.
    dir: Option<tempfile::TempDir>,
    /// `--controller-voters` of every node.
    voter_list: String,
    /// Broker arguments every node gets after [`FAST`].
    extra: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let keep = std::env::var("FERRY_KEEP_TEST_DIRS")
            .is_ok_and(|v| v == "always" || std::thread::panicking());
        if keep {
            if let Some(dir) = self.dir.take() {
                eprintln!("--- cluster data kept in {} ---", dir.keep().display());
            }
        }
    }
}

impl Cluster {
    /// Three brokers; `voters` of them (1, or 3) also run the metadata quorum.
    /// Kafka listeners take a port the kernel picks (kept across restarts); the
    /// controller ports, which every voter must know up front, are picked while
    /// all three are held, so they differ.
    pub fn start(voters: usize) -> Cluster {
        Cluster::start_with(voters, &[])
    }

    /// Like [`Cluster::start`], with `extra` broker arguments after [`FAST`].
    pub fn start_with(voters: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        // A controller port is picked by binding it and letting it go: another
        // process may take it before the node binds it again. Such a start is
        // tried again on fresh ports.
        let mut attempt = 0;
        let (nodes, voter_list) = loop {
            attempt += 1;
            match Cluster::try_start_nodes(dir.path(), voters, extra) {
                Ok(started) => break started,
                Err(e) if attempt < START_ATTEMPTS && e.contains("Address already in use") => {
                    for id in 1..=3 {
                        let _ = std::fs::remove_dir_all(dir.path().join(format!("node{id}")));
                    }
                }
                Err(e) => panic!("start a node: {e}"),
            }
        };
        let cluster = Cluster {
            dir: Some(dir),
            nodes,
            voter_list,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        cluster.wait_for_brokers(3);
        cluster
    }

    /// Starts nodes 1 to 3 under `dir` on freshly picked controller ports:
    /// the nodes and the voter list, or the first node's failure (the
    /// others are stopped then).
    fn try_start_nodes(
        dir: &Path,
        voters: usize,
        extra: &[&str],
    ) -> Result<(BTreeMap<i32, Proc>, String), String> {
        let held: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("free port"))
            .collect();
        let controller: BTreeMap<i32, u16> = (1..=3)
            .zip(&held)
            .map(|(id, l)| (id, l.local_addr().expect("port").port()))
            .collect();
        drop(held);
        let voter_list = (1..=voters as i32)
            .map(|id| format!("{id}@127.0.0.1:{}", controller[&id]))
            .collect::<Vec<_>>()
            .join(",");
        // Started together, as an operator would: a node reports that it listens
        // once it has caught up with the metadata quorum, which needs a majority
        // of the voters up.
        let started: Vec<(i32, Result<Proc, String>)> = std::thread::scope(|scope| {
            let starting: Vec<_> = (1..=3)
                .map(|id| {
                    let mut args: Vec<String> = vec![
                        "--node-id".into(),
                        id.to_string(),
                        "--controller-voters".into(),
                        voter_list.clone(),
                        "--controller-addr".into(),
                        format!("127.0.0.1:{}", controller[&id]),
                    ];
                    args.extend(FAST.iter().chain(extra).map(|s| s.to_string()));
                    let data = dir.join(format!("node{id}"));
                    scope.spawn(move || {
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        (id, Proc::try_start(&data, "127.0.0.1:0", &args))
                    })
                })
                .collect();
            starting
                .into_iter()
                .map(|s| s.join().expect("start a node"))
                .collect()
        });
        let mut nodes = BTreeMap::new();
        for (id, proc) in started {
            // A failure drops (stops) the nodes started so far.
            nodes.insert(id, proc.map_err(|e| format!("node {id}: {e}"))?);
        }
        Ok((nodes, voter_list))
    }

    /// Starts broker `id` (not a voter: it joins the quorum as a learner) with
    /// the cluster's voters and settings, as an operator adds a broker to a
    /// running cluster, and waits until every broker lists it.
    pub fn add_broker(&mut self, id: i32) {
        let dir = self
            .dir
            .as_ref()
            .expect("cluster dir")
            .path()
            .join(format!("node{id}"));
        let node_id = id.to_string();
        let mut attempt = 0;
        // The controller port may be taken before the node binds it (see
        // `start_with`).
        let node = loop {
            attempt += 1;
            let controller = format!("127.0.0.1:{}", free_port());
            let mut args: Vec<&str> = vec![
                "--node-id",
                &node_id,
                "--controller-voters",
                &self.voter_list,
                "--controller-addr",
                &controller,
            ];
            args.extend(FAST.iter().copied());
            args.extend(self.extra.iter().map(String::as_str));
            match Proc::try_start(&dir, "127.0.0.1:0", &args) {
                Ok(node) => break node,
                Err(e) if attempt < START_ATTEMPTS && e.contains("Address already in use") => {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                Err(e) => panic!("start node {id}: {e}"),
            }
        };
        self.nodes.insert(id, node);
        self.wait_for_brokers(self.nodes.len());
    }

    /// A cluster of brokers started by the caller (e.g. in network namespaces),
    /// with their data under `dir`.
    pub fn from_nodes(nodes: BTreeMap<i32, Proc>, dir: tempfile::TempDir) -> Cluster {
        Cluster {
            dir: Some(dir),
            nodes,
            // Not for add_broker, which starts on 127.0.0.1.
            voter_list: String::new(),
            extra: Vec::new(),
        }
    }

    /// The Kafka addresses of the brokers that are running.
    pub fn live_bootstrap(&mut self) -> String {
        self.nodes
            .values_mut()
            .filter_map(|p| p.is_running().then(|| p.addr.clone()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until every running broker lists `n` live brokers in its Metadata
    /// answers (each applies the metadata log on its own schedule, and answers
    /// from what it has applied).
    pub fn wait_for_brokers(&self, n: usize) {
        let addrs: Vec<String> = self.nodes.values().map(|p| p.addr.clone()).collect();
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            // A broker that is down does not answer, and is not waited for.
            let seen: Vec<usize> = addrs
                .iter()
                .filter_map(|a| raw_metadata(a, &[]))
                .map(|m| m.brokers.len())
                .collect();
            if !seen.is_empty() && seen.iter().all(|s| *s == n) {
                return;
            }
            assert!(
                Instant::now() < end,
                "brokers list {seen:?} live brokers, waited for {n}"
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

    /// The active controller as the running brokers report it: the id every
    /// answering broker agrees on, when that broker is running itself.
    pub fn controller(&mut self) -> Option<i32> {
        let running: Vec<(i32, String)> = self
            .nodes
            .iter_mut()
            .filter_map(|(id, p)| p.is_running().then(|| (*id, p.addr.clone())))
            .collect();
        let seen: Vec<i32> = running
            .iter()
            .filter_map(|(_, addr)| controller_id(addr))
            .collect();
        let first = *seen.first()?;
        let agreed = seen.len() == running.len() && seen.iter().all(|id| *id == first);
        (agreed && running.iter().any(|(id, _)| *id == first)).then_some(first)
    }

    /// Waits until the running brokers agree on a running controller that `check`
    /// accepts.
    pub fn wait_for_controller(&mut self, what: &str, check: impl Fn(i32) -> bool) -> i32 {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(id) = self.controller().filter(|id| check(*id)) {
                return id;
            }
            assert!(Instant::now() < end, "waited for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The `controller_id` of a Metadata response from the broker at `addr` (ferry
/// answers with the metadata quorum's leader); `None` if it cannot be asked or
/// knows none. librdkafka's metadata API does not expose this field.
pub fn controller_id(addr: &str) -> Option<i32> {
    let id = raw_metadata(addr, &[])?.controller_id.0;
    (id >= 0).then_some(id)
}

/// A Metadata request for `topics` (never auto-creating them) to the broker at
/// `addr`, over a raw connection: that broker's own view, which librdkafka does
/// not give. `None` if it does not answer.
pub fn raw_metadata(
    addr: &str,
    topics: &[&str],
) -> Option<kafka_protocol::messages::MetadataResponse> {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{
        ApiKey, MetadataRequest, MetadataResponse, ResponseHeader, TopicName,
    };
    use kafka_protocol::protocol::{Decodable, HeaderVersion, StrBytes};
    const VERSION: i16 = 9;
    let sock = addr.parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let topics = topics
        .iter()
        .map(|t| {
            MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(t.to_string()))))
        })
        .collect();
    let request = MetadataRequest::default()
        .with_topics(Some(topics))
        .with_allow_auto_topic_creation(false);
    stream
        .write_all(&encode_request(ApiKey::Metadata, VERSION, 1, &request))
        .ok()?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
    stream.read_exact(&mut body).ok()?;
    let mut buf = bytes::Bytes::from(body);
    ResponseHeader::decode(&mut buf, MetadataResponse::header_version(VERSION)).ok()?;
    MetadataResponse::decode(&mut buf, VERSION).ok()
}

/// Waits until every broker of `bootstrap` that answers knows `topic` with
/// `partitions` partitions, each with a leader. Brokers apply the metadata log
/// on their own schedule; a client that asks one that has yet to apply a new
/// topic would get it auto-created again there.
pub fn wait_for_topic_everywhere(bootstrap: &str, topic: &str, partitions: usize) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let views: Vec<Option<usize>> = bootstrap
            .split(',')
            .filter_map(|addr| raw_metadata(addr, &[topic]))
            .map(|m| {
                m.topics
                    .iter()
                    .find(|t| t.error_code == 0)
                    .filter(|t| t.partitions.iter().all(|p| p.leader_id.0 >= 0))
                    .map(|t| t.partitions.len())
            })
            .collect();
        if !views.is_empty() && views.iter().all(|v| *v == Some(partitions)) {
            return;
        }
        assert!(
            Instant::now() < end,
            "{topic}: brokers see {views:?} partitions with leaders, waited for {partitions}"
        );
        std::thread::sleep(Duration::from_millis(100));
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

/// RF=3 and `min.insync.replicas=2`; returns once every broker knows the topic.
pub fn create_replicated_topic(bootstrap: &str, topic: &str, partitions: i32) {
    create_topic_everywhere(
        bootstrap,
        topic,
        partitions,
        3,
        &[("min.insync.replicas", "2")],
    );
}

/// Creates a topic and waits until every broker knows it (see
/// [`wait_for_topic_everywhere`]).
pub fn create_topic_everywhere(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    replication_factor: i32,
    configs: &[(&str, &str)],
) {
    try_create_topic(bootstrap, topic, partitions, replication_factor, configs)
        .unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
    wait_for_topic_everywhere(bootstrap, topic, partitions as usize);
}

/// CreateTopics through librdkafka's admin API with a replication factor; the
/// broker's refusal comes back as the error code.
pub fn try_create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    replication_factor: i32,
    configs: &[(&str, &str)],
) -> Result<(), rdkafka::types::RDKafkaErrorCode> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        client(bootstrap).create().expect("admin client");
    let mut new = NewTopic::new(
        topic,
        partitions,
        TopicReplication::Fixed(replication_factor),
    );
    for (k, v) in configs {
        new = new.set(k, v);
    }
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
        r.map_err(|(_, e)| e)?;
    }
    Ok(())
}

/// Delivery reports of a producer: (partition, offset, value) of every
/// acknowledged record, and the count of failures.
#[derive(Default)]
pub struct Acks {
    pub acked: std::sync::Mutex<Vec<(i32, i64, String)>>,
    pub failed: std::sync::atomic::AtomicUsize,
    /// When the latest acknowledgement of each partition arrived.
    pub last_acked_at: std::sync::Mutex<BTreeMap<i32, Instant>>,
    /// The latest delivery error, for a failing test to show.
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl Acks {
    /// Records of `partition` acknowledged so far, as (offset, value) in the
    /// order their acknowledgements came.
    pub fn of_partition(&self, partition: i32) -> Vec<(i64, String)> {
        self.acked
            .lock()
            .expect("acks")
            .iter()
            .filter(|(p, _, _)| *p == partition)
            .map(|(_, o, v)| (*o, v.clone()))
            .collect()
    }

    /// Waits until a record of `partition` is acknowledged after `since`; returns
    /// when that acknowledgement came, or `None` if none came within `deadline`.
    pub fn wait_acked_after(
        &self,
        partition: i32,
        since: Instant,
        deadline: Duration,
    ) -> Option<Instant> {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            let at = self
                .last_acked_at
                .lock()
                .expect("acks")
                .get(&partition)
                .copied();
            if let Some(at) = at.filter(|at| *at > since) {
                return Some(at);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
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
                self.0
                    .last_acked_at
                    .lock()
                    .expect("acks")
                    .insert(m.partition(), Instant::now());
            }
            Err((e, m)) => {
                self.0
                    .failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.0
                    .last_error
                    .lock()
                    .expect("acks")
                    .replace(format!("partition {}: {e}", m.partition()));
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

/// Where replicas' stored bytes first differ, batch by batch: for a failure
/// message (`None` if they are the same).
pub fn first_difference(replicas: &[(i32, Vec<u8>)]) -> Option<String> {
    let (first_id, first) = replicas.first()?;
    if replicas.iter().all(|(_, b)| b == first) {
        return None;
    }
    let headers = |bytes: &[u8]| -> Vec<(ferry_log::BatchHeader, Vec<u8>)> {
        ferry_log::batch::batches(bytes)
            .map_while(Result::ok)
            .map(|(h, b)| (h, b.to_vec()))
            .collect()
    };
    let base = headers(first);
    let mut out = Vec::new();
    for (id, bytes) in &replicas[1..] {
        let other = headers(bytes);
        let at = base
            .iter()
            .zip(&other)
            .position(|(a, b)| a != b)
            .unwrap_or(base.len().min(other.len()));
        let show = |v: &[(ferry_log::BatchHeader, Vec<u8>)]| {
            v.get(at)
                .map(|(h, _)| {
                    format!(
                        "offsets {}..={} epoch {} pid {} seq {} len {}",
                        h.base_offset,
                        h.last_offset(),
                        h.partition_leader_epoch,
                        h.producer_id,
                        h.base_sequence,
                        h.batch_length
                    )
                })
                .unwrap_or_else(|| "end of log".into())
        };
        out.push(format!(
            "node {first_id} ({} batches) vs node {id} ({} batches): batch #{at}: [{}] vs [{}]",
            base.len(),
            other.len(),
            show(&base),
            show(&other)
        ));
    }
    Some(out.join("; "))
}

/// Reads `topic`-`partition` back and checks the records `acked` (as
/// [`Acks::of_partition`] gives them, in any order: a flush may run delivery
/// callbacks beside the producer's polling thread) against it: every record is stored once,
/// each acknowledged one at the offset it was acknowledged with, and the values,
/// which the tests make sort in produce order, ascend along the log. Returns
/// what is stored, as (offset, value).
pub fn check_acked_stored_once(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    acked: &[(i64, String)],
) -> Vec<(i64, String)> {
    use rdkafka::message::Message;
    let read = read_partition(bootstrap, topic, partition).expect("read back");
    let stored: Vec<(i64, String)> = read
        .iter()
        .map(|m| {
            let v = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            (m.offset(), v)
        })
        .collect();
    let mut offset_of: std::collections::HashMap<&str, i64> = Default::default();
    for (offset, v) in &stored {
        if let Some(first) = offset_of.insert(v, *offset) {
            panic!("{topic}-{partition}: {v} stored twice, at {first} and {offset}");
        }
    }
    let missing: Vec<_> = acked
        .iter()
        .filter(|(offset, v)| offset_of.get(v.as_str()) != Some(offset))
        .collect();
    if let Some(first) = missing.first() {
        panic!(
            "{topic}-{partition}: {} of {} acknowledged records are not where they were \
             acknowledged, e.g. {first:?} (stored at {:?})",
            missing.len(),
            acked.len(),
            offset_of.get(first.1.as_str()),
        );
    }
    let out_of_order = stored.windows(2).find(|w| w[0].1 >= w[1].1);
    assert_eq!(
        out_of_order, None,
        "{topic}-{partition}: stored out of produce order"
    );
    stored
}

/// One request and its decoded answer over a raw connection to `addr` (60 s
/// read timeout).
pub fn call<Req, Resp>(
    addr: &str,
    api_key: kafka_protocol::messages::ApiKey,
    version: i16,
    request: &Req,
) -> Resp
where
    Req: kafka_protocol::protocol::Encodable + kafka_protocol::protocol::HeaderVersion,
    Resp: kafka_protocol::protocol::Decodable + kafka_protocol::protocol::HeaderVersion,
{
    use kafka_protocol::messages::ResponseHeader;
    use kafka_protocol::protocol::Decodable;
    let mut stream = connect(addr);
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    stream
        .write_all(&encode_request(api_key, version, 7, request))
        .expect("send");
    let frame = read_frame(&mut stream).expect("an answer");
    let mut buf = bytes::Bytes::from(frame);
    let header = ResponseHeader::decode(&mut buf, Resp::header_version(version)).expect("header");
    assert_eq!(header.correlation_id, 7);
    Resp::decode(&mut buf, version).expect("response")
}

/// Runs `ferry ARGS --brokers BOOTSTRAP --json`: (success, stdout, stderr).
pub fn cli(bootstrap: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .args(["--brokers", bootstrap, "--json"])
        .output()
        .expect("run ferry");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Stops brokers 1 to 3, then checks that their replicas of every partition of
/// `topic` are identical on disk and that every log verifies.
pub fn stop_and_compare_offline(cluster: &mut Cluster, topic: &str, partitions: i32) {
    for id in 1..=3 {
        cluster.node(id).stop();
    }
    for p in 0..partitions {
        let bytes: Vec<(i32, Vec<u8>)> = (1..=3)
            .map(|id| (id, segment_bytes(&cluster.data_dir(id), topic, p)))
            .collect();
        if let Some(difference) = first_difference(&bytes) {
            panic!("{topic}-{p}: replicas differ offline: {difference}");
        }
    }
    for id in 1..=3 {
        let (ok, report) = verify(&cluster.data_dir(id));
        assert!(ok, "node {id}: {report}");
    }
}
