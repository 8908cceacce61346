//! The metadata quorum end to end: nodes on loopback, each with its own temp dir.
//! Tests wait on conditions with generous deadlines; none asserts on timing.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_cluster::{
    ControllerHandler, ControllerRequest, ControllerResponse, HandlerFuture, MetadataQuorum,
    QuorumConfig, QuorumError,
};
use ferry_core::cluster::VoterChangeError;
use ferry_core::metadata::{MetadataImage, MetadataRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const DEADLINE: Duration = Duration::from_secs(8);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

fn topic(name: &str) -> MetadataRecord {
    MetadataRecord::TopicCreated {
        name: name.into(),
        topic_id: Uuid::new_v4(),
        configs: BTreeMap::new(),
    }
}

fn has_topics(image: &MetadataImage, names: &[&str]) -> bool {
    names.iter().all(|n| image.topic(n).is_some())
}

fn config(id: u64, voters: &BTreeMap<u64, String>, dir: &Path) -> QuorumConfig {
    let mut c = QuorumConfig::new(id, voters.clone(), "127.0.0.1:0", dir);
    // Fast but stable under a loaded test machine.
    c.election_timeout_min_ms = 300;
    c.election_timeout_max_ms = 600;
    c.heartbeat_interval_ms = 100;
    c
}

/// Nodes on pre-bound loopback listeners, so every voter knows every address up front.
struct Cluster {
    _root: tempfile::TempDir,
    dirs: BTreeMap<u64, PathBuf>,
    /// The configured voters (every node's `voters`).
    voters: BTreeMap<u64, String>,
    /// Every node's listener address.
    addrs: BTreeMap<u64, String>,
    nodes: BTreeMap<u64, Arc<MetadataQuorum>>,
    tune: fn(&mut QuorumConfig),
}

impl Cluster {
    async fn start(n: u64, tune: fn(&mut QuorumConfig)) -> Cluster {
        Cluster::start_with_voters(n, n, tune).await
    }

    /// `n` nodes of which the first `voters` are the configured voters; the
    /// others join as learners.
    async fn start_with_voters(n: u64, voters: u64, tune: fn(&mut QuorumConfig)) -> Cluster {
        init_tracing();
        let root = tempfile::tempdir().expect("tempdir");
        let mut listeners = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        let mut dirs = BTreeMap::new();
        for id in 1..=n {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            addrs.insert(id, l.local_addr().expect("addr").to_string());
            listeners.insert(id, l);
            dirs.insert(id, root.path().join(format!("node-{id}")));
        }
        let voters = addrs
            .iter()
            .filter(|(id, _)| **id <= voters)
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        let mut cluster = Cluster {
            _root: root,
            dirs,
            voters,
            addrs,
            nodes: BTreeMap::new(),
            tune,
        };
        for (id, l) in listeners {
            cluster.start_node(id, l).await;
        }
        cluster
    }

    async fn start_node(&mut self, id: u64, listener: TcpListener) {
        let mut c = config(id, &self.voters, &self.dirs[&id]);
        (self.tune)(&mut c);
        let node = MetadataQuorum::start_with_listener(c, listener)
            .await
            .expect("start node");
        self.nodes.insert(id, node);
    }

    /// Restarts a stopped node from its directory, on its old address.
    async fn restart(&mut self, id: u64) {
        let listener = rebind(&self.addrs[&id]).await;
        self.start_node(id, listener).await;
    }

    async fn stop(&mut self, id: u64) {
        let node = self.nodes.remove(&id).expect("running node");
        node.shutdown().await;
    }

    fn node(&self, id: u64) -> &Arc<MetadataQuorum> {
        &self.nodes[&id]
    }

    /// Waits until every running node agrees on one leader among them.
    async fn leader(&self) -> u64 {
        wait_until("all nodes agree on a leader", || {
            let ids: Vec<Option<u64>> = self.nodes.values().map(|n| n.leader_id()).collect();
            match ids.first().copied().flatten() {
                Some(l) => self.nodes.contains_key(&l) && ids.iter().all(|i| *i == Some(l)),
                None => false,
            }
        })
        .await;
        self.nodes
            .values()
            .next()
            .and_then(|n| n.leader_id())
            .expect("leader")
    }

    fn follower(&self, leader: u64) -> u64 {
        *self
            .nodes
            .keys()
            .find(|id| **id != leader)
            .expect("a follower")
    }

    async fn all_have(&self, names: &[&str]) {
        wait_until("every node applied the topics", || {
            self.nodes.values().all(|n| has_topics(&n.image(), names))
        })
        .await;
    }

    async fn shutdown(self) {
        for node in self.nodes.values() {
            node.shutdown().await;
        }
    }
}

/// Binds a port again; a connection of another test may hold it as its local
/// port for a moment.
async fn rebind(addr: &str) -> TcpListener {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "rebind {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn no_tuning(_: &mut QuorumConfig) {}

struct EchoHandler {
    node: u64,
}

impl ControllerHandler for EchoHandler {
    fn handle(&self, request: ControllerRequest) -> HandlerFuture<'_> {
        let node = self.node;
        Box::pin(async move {
            match request {
                ControllerRequest::Heartbeat { node_id, .. } => ControllerResponse::Heartbeat {
                    is_fenced: node_id < 0,
                },
                ControllerRequest::AlterPartition {
                    leader_epoch,
                    partition_epoch,
                    new_isr,
                    ..
                } => ControllerResponse::AlterPartition {
                    leader_epoch,
                    isr: new_isr,
                    partition_epoch,
                },
                ControllerRequest::ElectLeaders { .. } => {
                    ControllerResponse::ElectLeaders { results: vec![] }
                }
                ControllerRequest::AlterPartitionReassignments { .. } => {
                    ControllerResponse::AlterPartitionReassignments { results: vec![] }
                }
                ControllerRequest::ListPartitionReassignments { .. } => {
                    ControllerResponse::ListPartitionReassignments { ongoing: vec![] }
                }
                ControllerRequest::UnregisterBroker { .. } => {
                    ControllerResponse::UnregisterBroker { result: Ok(()) }
                }
            }
            .with_node(node)
        })
    }
}

trait WithNode {
    fn with_node(self, node: u64) -> Self;
}

impl WithNode for ControllerResponse {
    /// Marks which node answered, through the ISR of an AlterPartition answer.
    fn with_node(self, node: u64) -> Self {
        match self {
            ControllerResponse::AlterPartition {
                leader_epoch,
                mut isr,
                partition_epoch,
            } => {
                isr.push(node as i32);
                ControllerResponse::AlterPartition {
                    leader_epoch,
                    isr,
                    partition_epoch,
                }
            }
            other => other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_proposals_reach_every_node_and_controller_rpcs_reach_the_leader() {
    let cluster = Cluster::start(3, no_tuning).await;
    let leader = cluster.leader().await;
    let follower = cluster.follower(leader);

    let image = cluster
        .node(follower)
        .propose(vec![topic("a"), topic("b")])
        .await
        .expect("propose from a follower");
    assert!(
        has_topics(&image, &["a", "b"]),
        "the returned image has the records"
    );
    cluster.all_have(&["a", "b"]).await;

    // The image returned is the one right after the proposal, even with more after it.
    let image = cluster
        .node(leader)
        .propose(vec![topic("c")])
        .await
        .expect("propose on the leader");
    assert!(has_topics(&image, &["a", "b", "c"]));
    let mut sub = cluster.node(follower).subscribe();
    wait_until("the follower's watch shows c", || {
        has_topics(&sub.borrow_and_update(), &["c"])
    })
    .await;

    // No handler on the leader yet: an error, not a hang.
    let err = cluster
        .node(follower)
        .call_leader(ControllerRequest::Heartbeat {
            node_id: 1,
            broker_epoch: 1,
            registration: None,
        })
        .await
        .expect_err("no handler");
    assert!(matches!(err, QuorumError::NoHandler), "{err:?}");

    for (id, node) in &cluster.nodes {
        node.set_handler(Arc::new(EchoHandler { node: *id }));
    }
    let reply = cluster
        .node(follower)
        .call_leader(ControllerRequest::AlterPartition {
            topic_id: Uuid::new_v4(),
            partition: 0,
            leader_epoch: 4,
            partition_epoch: Some(6),
            new_isr: vec![1, 2],
        })
        .await
        .expect("controller rpc from a follower");
    assert_eq!(
        reply,
        ControllerResponse::AlterPartition {
            leader_epoch: 4,
            isr: vec![1, 2, leader as i32],
            partition_epoch: Some(6),
        },
        "answered by the leader's handler"
    );
    let reply = cluster
        .node(leader)
        .call_leader(ControllerRequest::Heartbeat {
            node_id: -1,
            broker_epoch: 7,
            registration: None,
        })
        .await
        .expect("controller rpc on the leader");
    assert_eq!(reply, ControllerResponse::Heartbeat { is_fenced: true });
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leader_takes_over_and_a_restarted_node_catches_up() {
    let mut cluster = Cluster::start(3, no_tuning).await;
    let old_leader = cluster.leader().await;
    cluster
        .node(old_leader)
        .propose(vec![topic("before")])
        .await
        .expect("propose");
    cluster.all_have(&["before"]).await;

    cluster.stop(old_leader).await;
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader);
    let survivor = cluster.follower(new_leader);
    cluster
        .node(survivor)
        .propose(vec![topic("after-1")])
        .await
        .expect("propose after failover");
    cluster
        .node(new_leader)
        .propose(vec![topic("after-2")])
        .await
        .expect("propose on the new leader");
    cluster.all_have(&["before", "after-1", "after-2"]).await;

    // The old leader comes back from its directory and gets what it missed.
    cluster.restart(old_leader).await;
    cluster.all_have(&["before", "after-1", "after-2"]).await;
    let image = cluster
        .node(old_leader)
        .propose(vec![topic("back")])
        .await
        .expect("propose from the restarted node");
    assert!(has_topics(
        &image,
        &["before", "after-1", "after-2", "back"]
    ));
    cluster.all_have(&["back"]).await;
    let offsets: Vec<u64> = cluster.nodes.values().map(|n| n.image().offset).collect();
    assert!(
        offsets.iter().all(|o| *o == offsets[0]),
        "every record applied once: {offsets:?}"
    );
    cluster.shutdown().await;
}

/// A controller decision is appended only by the leader of the term it was
/// made in: once that leader is deposed its decisions fail, on itself and on
/// the new leader alike, and never reach the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deposed_leaders_decisions_fail_and_are_never_forwarded() {
    let mut cluster = Cluster::start(3, no_tuning).await;
    let first = cluster.leader().await;
    let mut old = None;
    wait_until("the leader applied an entry of its term", || {
        old = cluster.node(first).leadership();
        old.is_some()
    })
    .await;
    let old = old.expect("leadership");
    assert_eq!(old.node_id, first);
    let follower = cluster.follower(first);
    assert_eq!(cluster.node(follower).leadership(), None);
    cluster
        .node(first)
        .propose_as(old, vec![topic("decided")])
        .await
        .expect("a decision in its own term");
    cluster.all_have(&["decided"]).await;

    // Depose it: the others elect a leader in a later term, and it comes back
    // as a follower.
    cluster.stop(first).await;
    let second = cluster.leader().await;
    cluster.restart(first).await;
    assert_eq!(cluster.leader().await, second);
    let mut new = None;
    wait_until("the new leader applied an entry of its term", || {
        new = cluster.node(second).leadership();
        new.is_some()
    })
    .await;
    let new = new.expect("leadership");
    assert!(new.term > old.term, "{new:?} after {old:?}");

    for id in [first, second] {
        let err = cluster
            .node(id)
            .propose_as(old, vec![topic("stale")])
            .await
            .expect_err("a decision of a past term");
        assert!(
            matches!(err, QuorumError::NotLeader { term, .. } if term == old.term),
            "node {id}: {err:?}"
        );
    }
    cluster
        .node(second)
        .propose_as(new, vec![topic("current")])
        .await
        .expect("a decision in the new term");
    // Brokers' own proposals are still forwarded to the leader.
    cluster
        .node(first)
        .propose(vec![topic("forwarded")])
        .await
        .expect("a proposal forwarded from a follower");
    cluster.all_have(&["decided", "current", "forwarded"]).await;
    for (id, node) in &cluster.nodes {
        assert!(
            node.image().topic("stale").is_none(),
            "node {id} applied a deposed leader's decision"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_behind_the_purged_log_catches_up_from_a_snapshot() {
    fn small_snapshots(c: &mut QuorumConfig) {
        c.snapshot_interval_entries = 5;
        c.snapshot_keep_entries = 0;
    }
    let mut cluster = Cluster::start(3, small_snapshots).await;
    let leader = cluster.leader().await;
    let lagging = cluster.follower(leader);
    cluster.stop(lagging).await;

    let names: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
    for name in &names {
        cluster
            .node(leader)
            .propose(vec![topic(name)])
            .await
            .expect("propose");
    }
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    cluster.all_have(&all).await;

    cluster.restart(lagging).await;
    cluster.all_have(&all).await;
    let offsets: Vec<u64> = cluster.nodes.values().map(|n| n.image().offset).collect();
    assert!(offsets.iter().all(|o| *o == offsets[0]), "{offsets:?}");

    // And it restarts from its own snapshot and log.
    cluster.stop(lagging).await;
    cluster.restart(lagging).await;
    cluster.all_have(&all).await;
    cluster.shutdown().await;
}

fn append_garbage(dir: &Path) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("log"))
        .expect("open raft log");
    // Half a frame: a length, a CRC and the start of an entry.
    f.write_all(&[0, 0, 0, 200, 1, 2, 3, 4, b'{', b'"', b'l'])
        .expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_a_torn_log_tail_still_opens() {
    let mut cluster = Cluster::start(3, no_tuning).await;
    let leader = cluster.leader().await;
    cluster
        .node(leader)
        .propose(vec![topic("x")])
        .await
        .expect("propose");
    cluster.all_have(&["x"]).await;
    let victim = cluster.follower(leader);
    cluster.stop(victim).await;
    append_garbage(&cluster.dirs[&victim]);

    cluster.restart(victim).await;
    cluster.all_have(&["x"]).await;
    cluster
        .node(victim)
        .propose(vec![topic("y")])
        .await
        .expect("propose after recovery");
    cluster.all_have(&["x", "y"]).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_voter_recovers_its_image_from_a_torn_log() {
    init_tracing();
    let root = tempfile::tempdir().expect("tempdir");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let voters = BTreeMap::from([(1, addr.clone())]);
    let node = MetadataQuorum::start_with_listener(config(1, &voters, root.path()), l)
        .await
        .expect("start");
    node.propose(vec![topic("p"), topic("q")])
        .await
        .expect("propose");
    node.shutdown().await;
    append_garbage(root.path());

    let l = rebind(&addr).await;
    let node = MetadataQuorum::start_with_listener(config(1, &voters, root.path()), l)
        .await
        .expect("restart");
    wait_until("the image is rebuilt", || {
        has_topics(&node.image(), &["p", "q"])
    })
    .await;
    let image = node.propose(vec![topic("r")]).await.expect("propose");
    assert!(has_topics(&image, &["p", "q", "r"]));
    assert_eq!(image.offset, 3, "no record applied twice");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_voter_joins_as_a_learner_and_can_propose() {
    init_tracing();
    let root = tempfile::tempdir().expect("tempdir");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let voters = BTreeMap::from([(1, l.local_addr().expect("addr").to_string())]);
    let voter = MetadataQuorum::start_with_listener(config(1, &voters, &root.path().join("1")), l)
        .await
        .expect("start voter");
    voter.propose(vec![topic("early")]).await.expect("propose");

    let observer = MetadataQuorum::start(config(2, &voters, &root.path().join("2")))
        .await
        .expect("start observer");
    wait_until("the learner has the log", || {
        has_topics(&observer.image(), &["early"])
    })
    .await;
    let image = observer
        .propose(vec![topic("from-learner")])
        .await
        .expect("propose from a learner");
    assert!(has_topics(&image, &["early", "from-learner"]));
    assert!(!observer.is_leader());
    assert_eq!(observer.leader_id(), Some(1));
    observer.shutdown().await;
    voter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_listener_closes_that_connection_only() {
    init_tracing();
    let root = tempfile::tempdir().expect("tempdir");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let voters = BTreeMap::from([(1, addr.clone())]);
    let node = MetadataQuorum::start_with_listener(config(1, &voters, root.path()), l)
        .await
        .expect("start");
    assert_eq!(node.local_addr().to_string(), addr);

    let cases: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0xff; 64],
        // Valid length, header length past the frame.
        vec![0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0],
        // Valid framing, a header that is not a request.
        {
            let json = br#"{"to":1,"body":{"Nope":1}}"#;
            let mut f = ((4 + json.len()) as u32).to_be_bytes().to_vec();
            f.extend_from_slice(&(json.len() as u32).to_be_bytes());
            f.extend_from_slice(json);
            f
        },
    ];
    for case in cases {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        s.write_all(&case).await.expect("write");
        let mut buf = Vec::new();
        // The server closes the connection; the read ends (with or without error).
        let read = tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "connection left open after {case:?}");
    }
    let image = node
        .propose(vec![topic("still-up")])
        .await
        .expect("propose");
    assert!(has_topics(&image, &["still-up"]));
    node.shutdown().await;
}

/// Waits until node `on` sees exactly `voters` and `learners` in its membership.
async fn wait_for_membership(cluster: &Cluster, on: u64, voters: &[u64], learners: &[u64]) {
    let node = cluster.node(on);
    let (voters, learners) = (
        voters
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        learners
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
    );
    wait_until(
        &format!("node {on} sees voters {voters:?} and learners {learners:?}"),
        || node.voter_ids() == voters && node.learner_ids() == learners,
    )
    .await;
}

fn refused(result: Result<(), QuorumError>) -> VoterChangeError {
    match result {
        Err(QuorumError::Voter(e)) => e,
        other => panic!("expected a refused voter change, got {other:?}"),
    }
}

/// KIP-853's way to grow a quorum from one voter: learners are promoted, the
/// original voter dies, the two others carry on (and a restarted one comes back
/// as a voter from its persisted membership, not from its flags); the dead voter
/// is removed, and restarted with its old flags it comes back as a learner
/// without deposing the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn learners_become_voters_and_outlive_the_original_voter() {
    let mut cluster = Cluster::start_with_voters(3, 1, no_tuning).await;
    for id in 1..=3 {
        wait_for_membership(&cluster, id, &[1], &[2, 3]).await;
    }
    cluster
        .node(1)
        .propose(vec![topic("one-voter")])
        .await
        .expect("propose");
    cluster.all_have(&["one-voter"]).await;

    // Described by the leader, asked on a learner.
    let d = cluster.node(3).describe().await.expect("describe");
    assert_eq!(d.leader_id, 1);
    let ids = |rs: &[ferry_core::cluster::QuorumReplica]| {
        rs.iter().map(|r| r.node_id).collect::<Vec<_>>()
    };
    assert_eq!(ids(&d.voters), [1]);
    assert_eq!(ids(&d.observers), [2, 3]);
    assert_eq!(d.voters[0].addr, cluster.addrs[&1]);
    assert!(d.high_watermark > 0, "{d:?}");
    assert!(d.voters[0].log_end_offset >= d.high_watermark, "{d:?}");

    // Refusals, each with its Kafka meaning.
    let node2 = cluster.node(2).clone();
    assert!(matches!(
        refused(node2.add_voter(1, Duration::from_millis(200)).await),
        VoterChangeError::DuplicateVoter(_)
    ));
    assert!(matches!(
        refused(node2.add_voter(9, Duration::from_millis(200)).await),
        VoterChangeError::TimedOut(_)
    ));
    assert!(matches!(
        refused(node2.remove_voter(9).await),
        VoterChangeError::VoterNotFound(_)
    ));
    assert!(matches!(
        refused(node2.remove_voter(1).await),
        VoterChangeError::Invalid(_)
    ));

    // Promoted from a learner (forwarded to the leader).
    node2
        .add_voter(2, Duration::from_secs(5))
        .await
        .expect("add voter 2");
    node2
        .add_voter(3, Duration::from_secs(5))
        .await
        .expect("add voter 3");
    for id in 1..=3 {
        wait_for_membership(&cluster, id, &[1, 2, 3], &[]).await;
    }
    let d = cluster.node(1).describe().await.expect("describe");
    assert_eq!(ids(&d.voters), [1, 2, 3]);
    assert!(d.observers.is_empty());

    // The original voter dies: 2 and 3 are a majority of three.
    cluster.stop(1).await;
    let leader = cluster.leader().await;
    assert!(leader == 2 || leader == 3);
    cluster
        .node(2)
        .propose(vec![topic("without-1")])
        .await
        .expect("propose without node 1");

    // Restarted with its original flags (node 1 the only configured voter, and
    // down), node 3 is a voter again: without its vote nothing would commit.
    cluster.stop(3).await;
    cluster.restart(3).await;
    wait_for_membership(&cluster, 3, &[1, 2, 3], &[]).await;
    cluster
        .node(3)
        .propose(vec![topic("after-restart")])
        .await
        .expect("propose with the restarted voter");
    cluster
        .all_have(&["one-voter", "without-1", "after-restart"])
        .await;

    // The dead voter is removed (it stays a learner).
    cluster
        .node(3)
        .remove_voter(1)
        .await
        .expect("remove voter 1");
    wait_for_membership(&cluster, 2, &[2, 3], &[1]).await;
    wait_for_membership(&cluster, 3, &[2, 3], &[1]).await;
    let leader = cluster.leader().await;
    let term = cluster.node(leader).term();

    // Node 1 comes back with its old flags and an old log that says it votes:
    // it learns from the leader that it is a learner, and the leader stays.
    cluster.restart(1).await;
    wait_for_membership(&cluster, 1, &[2, 3], &[1]).await;
    cluster
        .node(1)
        .propose(vec![topic("from-removed")])
        .await
        .expect("propose from the removed voter");
    cluster.all_have(&["from-removed"]).await;
    // Past several election timeouts of node 1.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(cluster.leader().await, leader, "the leader was deposed");
    assert_eq!(cluster.node(leader).term(), term, "an election took place");
    assert!(!cluster.node(1).is_leader());
    cluster.shutdown().await;
}

/// Removing the leader: it commits its own removal, steps down to a learner,
/// and the remaining voters elect a leader among themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_the_leader_hands_over_to_another_voter() {
    let mut cluster = Cluster::start(3, no_tuning).await;
    let old = cluster.leader().await;
    let follower = cluster.follower(old);
    cluster
        .node(follower)
        .remove_voter(old)
        .await
        .expect("remove the leader");
    // The old leader steps down once its removal is committed; until the others
    // elect a leader, every node may still name it.
    wait_until("a leader other than the removed one", || {
        cluster.nodes.values().all(|n| {
            n.leader_id()
                .is_some_and(|l| l != old && cluster.nodes.contains_key(&l))
        })
    })
    .await;
    let new = cluster.leader().await;
    assert_ne!(new, old);
    let rest: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    for id in 1..=3 {
        wait_for_membership(&cluster, id, &rest, &[old]).await;
    }
    let image = cluster
        .node(old)
        .propose(vec![topic("from-old-leader")])
        .await
        .expect("propose from the demoted leader");
    assert!(has_topics(&image, &["from-old-leader"]));

    // Restarted, it is still a learner: its persisted membership says so.
    cluster.stop(old).await;
    cluster.restart(old).await;
    wait_for_membership(&cluster, old, &rest, &[old]).await;
    assert_eq!(cluster.leader().await, new);

    // And can be promoted back.
    cluster
        .node(new)
        .add_voter(old, Duration::from_secs(5))
        .await
        .expect("add the old leader back");
    wait_for_membership(&cluster, old, &[1, 2, 3], &[]).await;
    cluster.shutdown().await;
}

/// A follower removed from the voters while it was down comes back with its
/// old flags and a log that says it votes: it must learn from the leader that
/// it is a learner, not depose that leader with an election.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_voter_removed_while_down_comes_back_as_a_learner_without_an_election() {
    let mut cluster = Cluster::start(3, no_tuning).await;
    let leader = cluster.leader().await;
    let removed = cluster.follower(leader);
    cluster.stop(removed).await;
    cluster
        .node(leader)
        .remove_voter(removed)
        .await
        .expect("remove the stopped voter");
    cluster
        .node(leader)
        .propose(vec![topic("while-away")])
        .await
        .expect("propose");
    let rest: Vec<u64> = (1..=3).filter(|id| *id != removed).collect();
    let term = cluster.node(leader).term();

    cluster.restart(removed).await;
    wait_for_membership(&cluster, removed, &rest, &[removed]).await;
    cluster.all_have(&["while-away"]).await;
    // Past several of its election timeouts.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(cluster.leader().await, leader, "the leader was deposed");
    assert_eq!(cluster.node(leader).term(), term, "an election took place");
    cluster.shutdown().await;
}
