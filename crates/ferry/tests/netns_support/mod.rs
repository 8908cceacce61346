//! Brokers in network namespaces, for tests that cut the network between them.
//!
//! Layout, all of it made by the test and removed when [`Net`] is dropped:
//!
//! ```text
//!   <p>-b1 (10.77.1.2)   <p>-b2 (10.77.2.2)   <p>-b3 (10.77.3.2)   <p>-cl (10.77.9.2)
//!        e0                   e0                   e0                   e0
//!        │ veth               │                    │                    │
//!        v1 (10.77.1.1)       v2                   v3                   v9
//!        └──────────────── <p>-hub: routes between them ────────────────┘
//! ```
//!
//! Each broker has a namespace of its own, with one address; the test runs
//! itself again inside the client namespace ([`in_namespaces`]), so its
//! librdkafka clients and raw connections reach every broker, and nothing
//! reaches any address outside these namespaces (they have no link to the
//! root namespace). A cut
//! between two brokers is a pair of `blackhole` policy rules in the hub: their
//! packets to each other are dropped silently, as a broken network does, while
//! the client still reaches both.
//!
//! Where namespaces cannot be made (not root, no `ip`), the test prints
//! `SKIPPED: ...` and returns.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, MetadataRequest, MetadataResponse,
    ProduceRequest, ProduceResponse, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use crate::cluster_support::{Cluster, FAST};
use crate::reliability::{encode_request, Proc, PRODUCE_VERSION};

const KAFKA_PORT: u16 = 9092;
const CONTROLLER_PORT: u16 = 9093;
/// The client namespace's number in the addresses.
const CLIENT: i32 = 9;

/// Runs `ip ARGS`; the error carries its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Namespaces, veth pairs and routes of one test. The one that made them
/// (the outer run) deletes them when dropped, with every process left in them
/// (deleting a namespace deletes the veth pairs and rules in it).
pub struct Net {
    prefix: String,
    brokers: i32,
    /// Namespaces this value made, and deletes when dropped.
    created: Vec<String>,
    /// Blackhole rules in the hub: (from, to) addresses.
    cuts: Vec<(String, String)>,
}

impl Net {
    /// Namespaces for `brokers` brokers and the client. `Err` says why
    /// namespaces cannot be made here.
    pub fn create(brokers: i32) -> Result<Net, String> {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut net = Net {
            prefix: format!(
                "ferry{}x{}x{}",
                std::process::id(),
                COUNT.fetch_add(1, Ordering::Relaxed),
                nanos % 100_000
            ),
            brokers,
            created: Vec::new(),
            cuts: Vec::new(),
        };
        // The first namespace tells whether this machine allows them at all.
        let hub = net.ns_name("hub");
        ip(&["netns", "add", &hub])?;
        net.created.push(hub.clone());
        // From here on a failure is the test's, not the machine's.
        net.build()
            .unwrap_or_else(|e| panic!("network namespaces: {e}"));
        Ok(net)
    }

    fn build(&mut self) -> Result<(), String> {
        let hub = self.ns_name("hub");
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        let out = Command::new("ip")
            .args(["netns", "exec", &hub, "sh", "-c"])
            .arg("echo 1 > /proc/sys/net/ipv4/ip_forward")
            .status()
            .map_err(|e| e.to_string())?;
        if !out.success() {
            return Err("cannot enable forwarding in the hub".into());
        }
        let leaves: Vec<i32> = (1..=self.brokers).chain([CLIENT]).collect();
        for n in leaves {
            let ns = self.leaf(n);
            ip(&["netns", "add", &ns])?;
            self.created.push(ns.clone());
            let hub_end = format!("v{n}");
            ip(&[
                "-n", &hub, "link", "add", &hub_end, "type", "veth", "peer", "name", "e0", "netns",
                &ns,
            ])?;
            ip(&[
                "-n",
                &hub,
                "addr",
                "add",
                &format!("10.77.{n}.1/24"),
                "dev",
                &hub_end,
            ])?;
            ip(&["-n", &hub, "link", "set", &hub_end, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.77.{n}.2/24"),
                "dev",
                "e0",
            ])?;
            ip(&["-n", &ns, "link", "set", "e0", "up"])?;
            // The only way out of a leaf is the hub, which routes between leaves.
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "10.77.0.0/16",
                "via",
                &format!("10.77.{n}.1"),
            ])?;
        }
        // The links come up asynchronously: wait until the hub answers.
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let ready = (1..=self.brokers).chain([CLIENT]).all(|n| {
                Command::new("ip")
                    .args(["-n", &self.leaf(n), "-o", "link", "show", "e0", "up"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("LOWER_UP"))
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > end {
                return Err("veth links did not come up".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ns_name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// The namespace of broker `id` (or of the client, [`CLIENT`]).
    pub fn leaf(&self, n: i32) -> String {
        if n == CLIENT {
            self.ns_name("cl")
        } else {
            self.ns_name(&format!("b{n}"))
        }
    }

    /// The address of broker `id` in its namespace.
    pub fn ip_of(&self, id: i32) -> String {
        format!("10.77.{id}.2")
    }

    pub fn kafka_addr(&self, id: i32) -> String {
        format!("{}:{KAFKA_PORT}", self.ip_of(id))
    }

    /// Drops every packet between broker `id` and each of `others`, both ways;
    /// the client still reaches all of them.
    pub fn cut(&mut self, id: i32, others: &[i32]) {
        for other in others {
            for (from, to) in [
                (self.ip_of(id), self.ip_of(*other)),
                (self.ip_of(*other), self.ip_of(id)),
            ] {
                ip(&[
                    "-n",
                    &self.ns_name("hub"),
                    "rule",
                    "add",
                    "from",
                    &from,
                    "to",
                    &to,
                    "blackhole",
                ])
                .unwrap_or_else(|e| panic!("cut: {e}"));
                self.cuts.push((from, to));
            }
        }
    }

    /// Removes every cut.
    pub fn heal(&mut self) {
        for (from, to) in std::mem::take(&mut self.cuts) {
            ip(&[
                "-n",
                &self.ns_name("hub"),
                "rule",
                "del",
                "from",
                &from,
                "to",
                &to,
                "blackhole",
            ])
            .unwrap_or_else(|e| panic!("heal: {e}"));
        }
    }

    /// Three brokers, each in its namespace, all voters of the metadata quorum,
    /// with [`FAST`] failure detection and `extra` arguments; returns once every
    /// broker lists all three.
    pub fn start_cluster(&self, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let voters = (1..=self.brokers)
            .map(|id| format!("{id}@{}:{CONTROLLER_PORT}", self.ip_of(id)))
            .collect::<Vec<_>>()
            .join(",");
        let nodes: BTreeMap<i32, Proc> = std::thread::scope(|scope| {
            let starting: Vec<_> = (1..=self.brokers)
                .map(|id| {
                    let mut args: Vec<String> = vec![
                        "--node-id".into(),
                        id.to_string(),
                        "--controller-voters".into(),
                        voters.clone(),
                        "--controller-addr".into(),
                        format!("{}:{CONTROLLER_PORT}", self.ip_of(id)),
                    ];
                    args.extend(FAST.iter().chain(extra).map(|s| s.to_string()));
                    let data = dir.path().join(format!("node{id}"));
                    let ns = self.leaf(id);
                    let addr = self.kafka_addr(id);
                    scope.spawn(move || {
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        let prefix = ["ip", "netns", "exec", ns.as_str()];
                        (id, Proc::start_under(&prefix, &data, &addr, &args))
                    })
                })
                .collect();
            starting
                .into_iter()
                .map(|s| s.join().expect("start a node"))
                .collect()
        });
        let cluster = Cluster::from_nodes(nodes, dir);
        cluster.wait_for_brokers(self.brokers as usize);
        cluster
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            // Processes outlive their namespace's name: end them first.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Where the inner run finds the namespaces the outer one made.
const PREFIX_VAR: &str = "FERRY_TEST_NETNS";
const BROKERS_VAR: &str = "FERRY_TEST_NETNS_BROKERS";
/// The most an inner run may take.
const INNER_DEADLINE: Duration = Duration::from_secs(180);

/// Runs `body` with `brokers` broker namespaces and the test process itself in
/// the client namespace: the test (`name`, this test function's name) makes the
/// namespaces, runs itself again inside the client namespace (`ip netns exec`)
/// where `body` runs, and removes everything afterwards, also when `body`
/// fails or hangs. So the test's clients reach the brokers and nothing else:
/// the client namespace has no route out of these namespaces.
///
/// Where namespaces cannot be made, prints `SKIPPED: <why>` and returns.
pub fn in_namespaces(name: &str, brokers: i32, body: impl FnOnce(&mut Net)) {
    if let Ok(prefix) = std::env::var(PREFIX_VAR) {
        let brokers = std::env::var(BROKERS_VAR)
            .ok()
            .and_then(|b| b.parse().ok())
            .unwrap_or(brokers);
        let mut net = Net {
            prefix,
            brokers,
            created: Vec::new(),
            cuts: Vec::new(),
        };
        body(&mut net);
        return;
    }
    let net = match Net::create(brokers) {
        Ok(net) => net,
        Err(why) => {
            eprintln!("SKIPPED: {name}: network namespaces cannot be made here: {why}");
            return;
        }
    };
    let exe = std::env::current_exe().expect("the test binary");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &net.leaf(CLIENT)])
        .arg(exe)
        // The outer run was asked to run this test, ignored or not.
        .args(["--exact", name, "--include-ignored", "--nocapture"])
        .arg("--test-threads=1")
        .env(PREFIX_VAR, &net.prefix)
        .env(BROKERS_VAR, brokers.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the test in the client namespace");
    // Both pipes are drained while waiting, so a chatty run cannot block.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = r.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let end = Instant::now() + INNER_DEADLINE;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Ends the brokers, so the pipes they inherited close.
    drop(net);
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    // The inner run's own summary lines would read like this test binary's.
    for line in stdout
        .lines()
        .filter(|l| !(l.starts_with("running ") || l.starts_with("test result:") || l.is_empty()))
    {
        eprintln!("{line}");
    }
    eprint!("{stderr}");
    match status {
        // A name that matched no test would pass having run nothing.
        Some(s) if s.success() && !stdout.contains(" 1 passed") => {
            panic!("{name} did not run in its network namespace: no test of that name")
        }
        Some(s) if s.success() => {}
        Some(s) => panic!("{name} failed in its network namespace ({s}); its output is above"),
        None => panic!(
            "{name} did not finish within {INNER_DEADLINE:?} in its network namespace; \
             its output is above"
        ),
    }
}

/// One request to the broker at `addr` on a new connection, and its answer;
/// `None` if it cannot connect or no answer comes within `wait`.
fn call<Q, A>(addr: &str, api_key: ApiKey, version: i16, request: &Q, wait: Duration) -> Option<A>
where
    Q: Encodable + HeaderVersion,
    A: Decodable + HeaderVersion,
{
    let sock = addr.parse().ok()?;
    let mut stream = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(wait)).ok()?;
    stream
        .write_all(&encode_request(api_key, version, 1, request))
        .ok()?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
    stream.read_exact(&mut body).ok()?;
    let mut buf = bytes::Bytes::from(body);
    ResponseHeader::decode(&mut buf, A::header_version(version)).ok()?;
    A::decode(&mut buf, version).ok()
}

/// One partition as a broker describes it in Metadata v12.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    pub index: i32,
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

/// One topic as a broker describes it in Metadata v12.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicView {
    pub name: String,
    pub id: String,
    pub partitions: Vec<PartitionView>,
}

/// What a broker's Metadata v12 answer says: the controller and every topic
/// (sorted), or `None` if it does not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataView {
    pub controller: i32,
    pub brokers: Vec<i32>,
    pub topics: Vec<TopicView>,
}

impl MetadataView {
    pub fn topic(&self, name: &str) -> Option<&TopicView> {
        self.topics.iter().find(|t| t.name == name)
    }
}

/// Every topic a broker knows, with ids, from a Metadata v12 request for all
/// topics on a raw connection.
pub fn metadata_view(addr: &str) -> Option<MetadataView> {
    let request = MetadataRequest::default()
        .with_topics(None)
        .with_allow_auto_topic_creation(false);
    let response: MetadataResponse = call(
        addr,
        ApiKey::Metadata,
        12,
        &request,
        Duration::from_secs(10),
    )?;
    let mut brokers: Vec<i32> = response.brokers.iter().map(|b| b.node_id.0).collect();
    brokers.sort_unstable();
    let mut topics: Vec<TopicView> = response
        .topics
        .iter()
        .filter(|t| t.error_code == 0)
        .map(|t| {
            let mut partitions: Vec<PartitionView> = t
                .partitions
                .iter()
                .map(|p| {
                    let mut isr: Vec<i32> = p.isr_nodes.iter().map(|b| b.0).collect();
                    isr.sort_unstable();
                    PartitionView {
                        index: p.partition_index,
                        leader: p.leader_id.0,
                        leader_epoch: p.leader_epoch,
                        replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                        isr,
                    }
                })
                .collect();
            partitions.sort_by_key(|p| p.index);
            TopicView {
                name: t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
                id: t.topic_id.to_string(),
                partitions,
            }
        })
        .collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    Some(MetadataView {
        controller: response.controller_id.0,
        brokers,
        topics,
    })
}

/// Waits (at most `within`) until `check` accepts the Metadata answers of the
/// brokers at `addrs`, all of which must answer; returns them.
pub fn wait_for_views(
    addrs: &[String],
    what: &str,
    within: Duration,
    check: impl Fn(&[MetadataView]) -> bool,
) -> Vec<MetadataView> {
    let end = Instant::now() + within;
    loop {
        let views: Vec<Option<MetadataView>> = addrs.iter().map(|a| metadata_view(a)).collect();
        if views.iter().all(Option::is_some) {
            let views: Vec<MetadataView> = views.iter().flatten().cloned().collect();
            if check(&views) {
                return views;
            }
        }
        assert!(
            Instant::now() < end,
            "waited for {what}; last answers of {addrs:?}: {views:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Produces `records` with `acks=all` and the given request timeout on a new
/// connection to `addr`; the partition's error code, or `None` if no answer
/// came (the connection closed, or nothing within the timeout and 15 s more).
pub fn produce_acks_all(
    addr: &str,
    topic: &str,
    partition: i32,
    records: bytes::Bytes,
    timeout_ms: i32,
) -> Option<i16> {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])]);
    let wait = Duration::from_millis(timeout_ms.max(0) as u64) + Duration::from_secs(15);
    let response: ProduceResponse = call(addr, ApiKey::Produce, PRODUCE_VERSION, &request, wait)?;
    Some(
        response
            .responses
            .first()?
            .partition_responses
            .first()?
            .error_code,
    )
}

/// (base offset, last offset, partition leader epoch) of every batch stored
/// in `bytes` (a partition's segments, see `segment_bytes`).
pub fn batches(bytes: &[u8]) -> Vec<(i64, i64, i32)> {
    ferry_log::batch::batches(bytes)
        .map_while(Result::ok)
        .map(|(h, _)| (h.base_offset, h.last_offset(), h.partition_leader_epoch))
        .collect()
}

/// CreateTopics for one topic (one partition, one replica) with the given
/// timeout, sent to the broker at `addr` itself: the topic's error code, or
/// `None` if no answer came.
pub fn create_topic_at(addr: &str, topic: &str, timeout_ms: i32) -> Option<i16> {
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(timeout_ms)
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_num_partitions(1)
            .with_replication_factor(1)]);
    let wait = Duration::from_millis(timeout_ms.max(0) as u64) + Duration::from_secs(15);
    let response: CreateTopicsResponse = call(addr, ApiKey::CreateTopics, 5, &request, wait)?;
    Some(response.topics.first()?.error_code)
}
