//! Three `ferry serve` processes on 127.0.0.1 forming a cluster, driven with
//! librdkafka: replication with an ISR, `acks=all` with `min.insync.replicas`,
//! leaders killed with SIGKILL and restarted, and replicas compared offline.

mod cluster_support;
mod reliability;

use std::time::{Duration, Instant};

use cluster_support::*;
use rdkafka::producer::{BaseRecord, Producer};
use reliability::*;

/// Two of three brokers down: with the quorum on the surviving broker (the only
/// voter), the dead ones are fenced and leave the ISR, so `acks=all` gets
/// NOT_ENOUGH_REPLICAS and `acks=1` still works; once back they catch up, rejoin
/// the ISR, and every replica holds the same bytes.
#[test]
fn two_brokers_down_acks_all_is_refused_and_they_catch_up_when_back() {
    let mut cluster = Cluster::start(1);
    let bootstrap = cluster.bootstrap();
    create_replicated_topic(&bootstrap, "rep", 1);
    let (leader, _) = wait_for(&bootstrap, "rep", 0, "a full ISR", |l, isr| {
        l >= 0 && isr.len() == 3
    });

    let acks = std::sync::Arc::new(Acks::default());
    let p = producer(&bootstrap, "all", acks.clone());
    for i in 0..200 {
        p.send(
            BaseRecord::<(), str>::to("rep")
                .partition(0)
                .payload(&format!("all-{i}")),
        )
        .expect("queue");
    }
    p.flush(Duration::from_secs(30)).expect("flush");
    assert_eq!(
        acks.acked.lock().expect("acks").len(),
        200,
        "acks=all with 3 in sync"
    );

    // Stop the two brokers that are neither the voter (1) nor... the voter is node 1;
    // the leader moves to it if it was elsewhere.
    let _ = leader;
    cluster.node(2).kill9();
    cluster.node(3).kill9();
    wait_for(&bootstrap, "rep", 0, "node 1 alone in the ISR", |l, isr| {
        l == 1 && isr == [1]
    });

    let addr1 = cluster.nodes[&1].addr.clone();
    let code = produce_raw(&addr1, "rep", 0, record_batch("refused-", 5, 10));
    assert_eq!(
        code, 19,
        "acks=all with one in-sync replica: NOT_ENOUGH_REPLICAS"
    );

    let acks1 = std::sync::Arc::new(Acks::default());
    let p1 = producer(&addr1, "1", acks1.clone());
    for i in 0..50 {
        p1.send(
            BaseRecord::<(), str>::to("rep")
                .partition(0)
                .payload(&format!("one-{i}")),
        )
        .expect("queue");
    }
    p1.flush(Duration::from_secs(30)).expect("flush");
    assert_eq!(
        acks1.acked.lock().expect("acks").len(),
        50,
        "acks=1 works with one replica"
    );
    let read = read_partition(&addr1, "rep", 0).expect("read");
    assert_eq!(read.len(), 250, "reads keep working");

    cluster.node(2).restart();
    cluster.node(3).restart();
    wait_for(
        &bootstrap,
        "rep",
        0,
        "the ISR to be whole again",
        |_, isr| isr.len() == 3,
    );
    // acks=all works again (the client retries while the leader has yet to apply
    // the ISR change it just read about).
    let again = std::sync::Arc::new(Acks::default());
    let p = producer(&bootstrap, "all", again.clone());
    for i in 0..5 {
        p.send(
            BaseRecord::<(), str>::to("rep")
                .partition(0)
                .payload(&format!("again-{i}")),
        )
        .expect("queue");
    }
    p.flush(Duration::from_secs(30)).expect("flush");
    assert_eq!(
        again.acked.lock().expect("acks").len(),
        5,
        "acks=all once the replicas are back in sync"
    );
    let expected = 250 + 5;
    let read = read_partition(&bootstrap, "rep", 0).expect("read");
    assert_eq!(read.len(), expected);

    // Offline: every replica holds the same bytes.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let bytes: Vec<Vec<u8>> = (1..=3)
            .map(|id| segment_bytes(&cluster.data_dir(id), "rep", 0))
            .collect();
        if bytes[0] == bytes[1] && bytes[1] == bytes[2] {
            break;
        }
        assert!(
            Instant::now() < end,
            "replicas differ: {:?}",
            bytes.iter().map(Vec::len).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for id in 1..=3 {
        cluster.node(id).stop();
        let (ok, report) = verify(&cluster.data_dir(id));
        assert!(ok, "node {id}: {report}");
    }
}

/// A follower that was down while the leader dropped records it never got
/// (DeleteRecords) restarts its log at the leader's log start, catches up and
/// rejoins the ISR; the others drop what the leader dropped.
#[test]
fn a_follower_behind_the_leaders_log_start_restarts_there_and_rejoins() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let mut cluster = Cluster::start(3);
    let bootstrap = cluster.bootstrap();
    create_replicated_topic(&bootstrap, "trim", 1);
    let (leader, _) = wait_for(&bootstrap, "trim", 0, "a full ISR", |l, isr| {
        l >= 0 && isr.len() == 3
    });
    let send = |prefix: &str| {
        let acks = std::sync::Arc::new(Acks::default());
        let p = producer(&bootstrap, "all", acks.clone());
        for i in 0..100 {
            p.send(
                BaseRecord::<(), str>::to("trim")
                    .partition(0)
                    .payload(&format!("{prefix}-{i}")),
            )
            .expect("queue");
        }
        p.flush(Duration::from_secs(30)).expect("flush");
        assert_eq!(acks.acked.lock().expect("acks").len(), 100);
    };
    send("first");
    let behind = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.node(behind).kill9();
    wait_for(
        &bootstrap,
        "trim",
        0,
        "the dead follower out of the ISR",
        |_, isr| !isr.contains(&behind),
    );
    send("second");

    // The leader drops everything the dead follower has, and more.
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        client(&bootstrap).create().expect("admin");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("trim", 0, rdkafka::Offset::Offset(150))
        .expect("offset");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime
        .block_on(admin.delete_records(&tpl, &AdminOptions::new()))
        .expect("delete records");
    let low = result
        .find_partition("trim", 0)
        .map(|e| e.offset())
        .expect("result");
    assert_eq!(low, rdkafka::Offset::Offset(150), "new log start");

    cluster.node(behind).restart();
    wait_for(
        &bootstrap,
        "trim",
        0,
        "the restarted follower back in the ISR",
        |_, isr| isr.len() == 3,
    );
    let read = read_partition(&bootstrap, "trim", 0).expect("read");
    assert_eq!(read.len(), 50, "offsets 150-199 remain");
    for id in 1..=3 {
        cluster.node(id).stop();
        let (ok, report) = verify(&cluster.data_dir(id));
        assert!(ok, "node {id}: {report}");
    }
}

/// The cluster id every node of the cluster reports (Metadata), or why not:
/// one that does not answer, or two that differ.
fn common_cluster_id(cluster: &Cluster) -> Result<String, String> {
    let ids: Vec<Option<String>> = cluster
        .nodes
        .values()
        .map(|n| raw_metadata(&n.addr, &[]).and_then(|m| m.cluster_id.map(|c| c.to_string())))
        .collect();
    match ids.first() {
        Some(Some(first)) if ids.iter().all(|i| i.as_ref() == Some(first)) => Ok(first.clone()),
        _ => Err(format!("{ids:?}")),
    }
}

fn meta_properties_cluster_id(dir: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(dir.join("meta.properties"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("cluster.id=").map(str::to_string))
}

/// Every node reports one cluster id, the quorum's, keeps it in its
/// `meta.properties`, and still reports it after a restart; a broker that
/// joins later takes it too. A data directory that agreed to another
/// cluster's id is refused rather than joined.
#[test]
fn every_node_reports_the_same_cluster_id_across_restarts() {
    let mut cluster = Cluster::start(3);
    let mut last = String::new();
    let end = Instant::now() + Duration::from_secs(30);
    let id = loop {
        match common_cluster_id(&cluster) {
            Ok(id) => break id,
            Err(seen) if Instant::now() < end => {
                last = seen;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(seen) => panic!("the nodes never agreed on a cluster id: {seen} (before: {last})"),
        }
    };
    for node in 1..=3 {
        assert_eq!(
            meta_properties_cluster_id(&cluster.data_dir(node)).as_deref(),
            Some(id.as_str()),
            "node {node}'s meta.properties"
        );
    }
    cluster.node(2).kill9();
    cluster.node(2).restart();
    cluster.add_broker(4);
    assert_eq!(
        common_cluster_id(&cluster),
        Ok(id.clone()),
        "after a restart and a new broker"
    );
    // Node 3's directory, as if it belonged to another cluster.
    cluster.node(3).kill9();
    let meta = cluster.data_dir(3).join("meta.properties");
    let text = std::fs::read_to_string(&meta).expect("meta.properties");
    assert!(text.contains("ferry.cluster.id.agreed=true"), "{text}");
    std::fs::write(&meta, text.replace(&id, "someotherclusterid")).expect("rewrite");
    match cluster.node(3).try_restart() {
        Ok(()) => panic!("a node of another cluster joined this one"),
        Err(e) => assert!(
            e.contains("belongs to cluster someotherclusterid"),
            "unexpected failure: {e}"
        ),
    }
}

/// A leader restarted while its followers are still down serves what was
/// committed before at once: its high watermark starts from the checkpoint
/// (`replication-offset-checkpoint`, written at shutdown and every few
/// seconds), not from the log start. Long session and lag timeouts keep the
/// ISR whole, so only the checkpoint can give the high watermark.
#[test]
fn a_leader_restarted_alone_serves_what_was_committed_before() {
    let mut cluster = Cluster::start_with(
        1,
        &[
            "--set",
            "broker.session.timeout.ms=60000",
            "--set",
            "replica.lag.time.max.ms=60000",
        ],
    );
    let bootstrap = cluster.bootstrap();
    create_replicated_topic(&bootstrap, "hw", 3);
    // Preferred leaders go round the brokers: one partition is node 1's.
    let mut partition = None;
    for p in 0..3 {
        let (leader, _) = wait_for(&bootstrap, "hw", p, "a full ISR", |l, isr| {
            l >= 0 && isr.len() == 3
        });
        if leader == 1 {
            partition = Some(p);
        }
    }
    let partition = partition.expect("node 1 leads one of the three partitions");
    let acks = std::sync::Arc::new(Acks::default());
    let p = producer(&bootstrap, "all", acks.clone());
    for i in 0..50 {
        p.send(
            BaseRecord::<(), str>::to("hw")
                .partition(partition)
                .payload(&format!("before-{i}")),
        )
        .expect("queue");
    }
    p.flush(Duration::from_secs(30)).expect("flush");
    assert_eq!(acks.acked.lock().expect("acks").len(), 50);
    drop(p);

    // The controller (the only voter) stops first, so nothing leaves the ISR.
    for id in 1..=3 {
        cluster.node(id).stop();
    }
    cluster.node(1).restart();
    let addr1 = cluster.nodes[&1].addr.clone();
    // librdkafka reports the two stopped brokers as transport failures; what
    // matters is what node 1 serves.
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let consumer: BaseConsumer = client(&addr1)
        .set("group.id", "hw-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("hw", partition, rdkafka::Offset::Beginning)
        .expect("assignment");
    consumer.assign(&tpl).expect("assign");
    let mut read = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    while read.len() < 50 && Instant::now() < end {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            read.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    assert_eq!(
        read,
        (0..50).map(|i| format!("before-{i}")).collect::<Vec<_>>(),
        "what the restarted leader served while its followers were down"
    );
}

/// Pipelined acks=all produces wait for their followers without holding
/// request memory: with a budget of 2 MB (`queued.max.request.bytes`) and a
/// client that keeps 50 requests of 64 KB in flight per connection, the
/// followers' fetches still get read, so every record is acknowledged. (A
/// produce that kept its frame's bytes while waiting would fill the budget
/// and stall replication until the produce timed out.)
#[test]
fn pipelined_acks_all_produces_leave_room_for_the_followers_fetches() {
    let cluster = Cluster::start_with(
        1,
        &[
            "--set",
            "socket.request.max.bytes=1048576",
            "--set",
            "queued.max.request.bytes=2097152",
        ],
    );
    let bootstrap = cluster.bootstrap();
    create_replicated_topic(&bootstrap, "pipelined", 1);
    wait_for(&bootstrap, "pipelined", 0, "a full ISR", |l, isr| {
        l >= 0 && isr.len() == 3
    });
    let acks = std::sync::Arc::new(Acks::default());
    let p: rdkafka::producer::ThreadedProducer<AckContext> = client(&bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("max.in.flight.requests.per.connection", "50")
        .set("batch.size", "65536")
        .set("linger.ms", "2")
        // A stalled produce fails (the broker answers REQUEST_TIMED_OUT after
        // the request timeout) instead of being retried until it goes through.
        .set("request.timeout.ms", "10000")
        .set("message.send.max.retries", "0")
        .set("message.timeout.ms", "60000")
        .create_with_context(AckContext(acks.clone()))
        .expect("producer");
    let value = "v".repeat(1024);
    for _ in 0..20_000 {
        let mut record = BaseRecord::<(), str>::to("pipelined")
            .partition(0)
            .payload(&value);
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((e, back)) => {
                    assert!(Instant::now() < end, "the producer queue stayed full: {e}");
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).expect("flush");
    assert_eq!(
        (
            acks.acked.lock().expect("acks").len(),
            acks.failed.load(std::sync::atomic::Ordering::SeqCst)
        ),
        (20_000, 0),
        "last error: {:?}",
        acks.last_error.lock().expect("error")
    );
}
