//! Limits against hostile or broken clients: connections in total and per
//! client address, requests in flight per connection, `socket.request.max.bytes`,
//! the request memory budget (back-pressure instead of growth), a client that
//! dribbles bytes, one that never reads its responses and one that opens
//! connections in a loop. Each case checks the broker's memory (RSS) stays far
//! below 1 GiB and that another client is still served.

mod reliability;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersionsResponse;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, BrokerId, FetchRequest, FetchResponse, MetadataRequest,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, HeaderVersion, StrBytes};
use reliability::*;

const RSS_LIMIT_KIB: u64 = 1024 * 1024;

fn api_versions_frame(correlation_id: i32) -> Vec<u8> {
    encode_request(
        ApiKey::ApiVersions,
        0,
        correlation_id,
        &ApiVersionsRequest::default(),
    )
}

/// Whether `stream` gets an ApiVersions answer (false when the broker closed it).
fn served(stream: &mut TcpStream) -> bool {
    if stream.write_all(&api_versions_frame(1)).is_err() {
        return false;
    }
    let Some(frame) = read_frame(stream) else {
        return false;
    };
    let mut buf = Bytes::from(frame);
    ResponseHeader::decode(&mut buf, 0).expect("header");
    ApiVersionsResponse::decode(&mut buf, 0).is_ok()
}

/// A connection from a chosen source address of 127/8.
fn connect_from(source: &str, addr: &str) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let target: SocketAddr = addr.parse().expect("addr");
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        let ip: IpAddr = source.parse().expect("ip");
        socket.bind(SocketAddr::new(ip, 0)).expect("bind source");
        socket.connect(target).await.expect("connect")
    });
    let stream = stream.into_std().expect("std stream");
    stream.set_nonblocking(false).expect("blocking");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream
}

fn start(args: &[&str]) -> (tempfile::TempDir, Proc) {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Proc::start(&dir.path().join("data"), "127.0.0.1:0", args);
    (dir, broker)
}

#[test]
fn connections_are_limited_in_total_and_per_client_address() {
    let (_dir, broker) = start(&[
        "--set",
        "max.connections=4",
        "--set",
        "max.connections.per.ip=3",
    ]);
    let addr = broker.addr.clone();
    let mut from_one: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.1", &addr)).collect();
    for s in &mut from_one {
        assert!(served(s), "a connection within the limits is served");
    }
    let mut fourth = connect_from("127.0.0.1", &addr);
    assert!(
        !served(&mut fourth),
        "a 4th connection from one address is refused"
    );
    let mut other = connect_from("127.0.0.2", &addr);
    assert!(
        served(&mut other),
        "another address still gets a connection"
    );
    let mut fifth = connect_from("127.0.0.3", &addr);
    assert!(!served(&mut fifth), "a 5th connection in total is refused");
    // Closing one frees its slot.
    drop(from_one.pop());
    let mut again = None;
    let ok = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        let mut s = connect_from("127.0.0.1", &addr);
        let ok = served(&mut s);
        again = Some(s);
        ok
    });
    assert!(ok, "a freed slot is reused");
}

#[test]
fn oversized_frames_close_the_connection() {
    let (_dir, broker) = start(&["--set", "socket.request.max.bytes=4096"]);
    let mut s = connect(&broker.addr);
    let mut frame = 5000i32.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0u8; 64]);
    let _ = s.write_all(&frame);
    assert!(
        read_frame(&mut s).is_none(),
        "oversized frame closes the connection"
    );
    let mut other = connect(&broker.addr);
    assert!(served(&mut other));
}

/// A client that pipelines requests and never reads the responses: once its
/// requests in flight reach `queued.max.requests` the broker stops reading from
/// it, so its writes block instead of the broker buffering without bound.
#[test]
fn a_client_that_never_reads_is_throttled_not_buffered() {
    let (_dir, broker) = start(&["--set", "queued.max.requests=4"]);
    let rss_before = broker.rss_kib();
    let mut hog = connect(&broker.addr);
    hog.set_write_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let request = encode_request(ApiKey::Metadata, 9, 3, &MetadataRequest::default());
    let mut sent = 0usize;
    let blocked = loop {
        if hog.write_all(&request).is_err() {
            break true;
        }
        sent += 1;
        if sent > 2_000_000 {
            break false;
        }
    };
    assert!(
        blocked,
        "the broker kept reading {sent} requests nobody reads answers to"
    );
    let rss = broker.rss_kib();
    eprintln!("never-reading client: {sent} requests written before back-pressure; RSS {rss_before} KiB -> {rss} KiB");
    assert!(rss < RSS_LIMIT_KIB, "RSS {rss} KiB");
    let mut other = connect(&broker.addr);
    assert!(served(&mut other), "another client is served meanwhile");
    drop(hog);
}

/// Clients that announce large frames and then send a byte per second hold only
/// the bytes they sent, so the request memory budget stays available to others;
/// one that stops half way through a frame is cut off after the body read time.
#[test]
fn slow_clients_do_not_starve_others_of_the_request_budget() {
    let (_dir, broker) = start(&[
        "--set",
        "socket.request.max.bytes=1048576",
        "--set",
        "queued.max.request.bytes=1048576",
    ]);
    create_topic(&broker.addr, "slow", 1, &[]);
    // Each announces the largest frame allowed: together 20x the budget.
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = connect(&broker.addr);
            s.write_all(&1_048_576i32.to_be_bytes()).expect("size");
            s.write_all(&[0u8; 100]).expect("first bytes");
            s
        })
        .collect();
    for round in 0..3 {
        for s in &mut slow {
            let _ = s.write_all(&[0u8]);
        }
        let started = Instant::now();
        let code = produce_raw(&broker.addr, "slow", 0, record_batch("ok-", 10, 1000));
        assert_eq!(
            code, 0,
            "produce while slow clients hold frames open (round {round})"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a produce waited {:?} behind slow clients",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let rss = broker.rss_kib();
    eprintln!("20 slow clients: RSS {rss} KiB");
    assert!(rss < RSS_LIMIT_KIB);
}

/// Many producers pushing large requests at a small budget: the broker admits
/// them as memory frees up (back-pressure) and every one is answered.
#[test]
fn the_request_memory_budget_applies_back_pressure() {
    let (_dir, broker) = start(&[
        "--set",
        "socket.request.max.bytes=1048576",
        "--set",
        "queued.max.request.bytes=1048576",
    ]);
    create_topic(&broker.addr, "budget", 1, &[]);
    let addr = broker.addr.clone();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                for i in 0..5 {
                    let batch = record_batch(&format!("t{t}-{i}-"), 100, 5_000);
                    assert_eq!(
                        produce_raw(&addr, "budget", 0, batch),
                        0,
                        "produce t{t} #{i}"
                    );
                }
            })
        })
        .collect();
    let mut peak = 0;
    for t in threads {
        peak = peak.max(broker.rss_kib());
        t.join().expect("producer thread");
    }
    eprintln!("budget back-pressure: peak RSS {peak} KiB");
    assert!(peak < RSS_LIMIT_KIB);
    let records = read_partition(&addr, "budget", 0).expect("consume");
    assert_eq!(records.len(), 8 * 5 * 100, "every produce stored once");
}

/// A client that opens and abandons connections in a loop: descriptors and
/// memory come back, and others are served.
#[test]
fn connection_churn_does_not_leak() {
    let (_dir, broker) = start(&[]);
    let fds_before = broker.open_fds();
    for i in 0..2_000 {
        let mut s = connect(&broker.addr);
        if i % 2 == 0 {
            // Half leave a partial frame behind.
            let _ = s.write_all(&[0, 0, 1, 0, 7]);
        }
    }
    let settled = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        broker.open_fds() <= fds_before + 5
    });
    let (fds, rss) = (broker.open_fds(), broker.rss_kib());
    eprintln!("connection churn: fds {fds_before} -> {fds}, RSS {rss} KiB");
    assert!(settled, "descriptors leaked: {fds_before} -> {fds}");
    assert!(rss < RSS_LIMIT_KIB);
    let mut other = connect(&broker.addr);
    assert!(served(&mut other));
}

/// A client that pipelines fetches of megabytes and never reads the responses:
/// its connection runs one fetch at a time until that response is written, so it
/// pins one response, not a hundred; others are served meanwhile; and once a
/// response has waited `response.send.timeout.ms` the connection is closed.
#[test]
fn a_client_that_never_reads_its_fetches_pins_one_response() {
    let (_dir, broker) = start(&["--set", "response.send.timeout.ms=4000"]);
    create_topic(&broker.addr, "unread", 1, &[]);
    for i in 0..8 {
        let batch = record_batch(&format!("b{i}-"), 100, 9_000);
        assert_eq!(produce_raw(&broker.addr, "unread", 0, batch), 0);
    }
    let fetch = |correlation_id: i32| {
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(1)
            .with_max_bytes(8 << 20)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("unread")))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(8 << 20)])]);
        encode_request(ApiKey::Fetch, 12, correlation_id, &request)
    };
    let rss_before = broker.rss_kib();
    let mut hog = connect(&broker.addr);
    let fetches = 100;
    for i in 0..fetches {
        hog.write_all(&fetch(i)).expect("pipeline a fetch");
    }
    // Unbounded, the broker would hold ~100 responses of ~7 MiB here.
    let mut peak = rss_before;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(100));
        peak = peak.max(broker.rss_kib());
    }
    let mut other = connect(&broker.addr);
    other.write_all(&fetch(1)).expect("send fetch");
    let frame = read_frame(&mut other).expect("another client's fetch is answered");
    let mut buf = Bytes::from(frame);
    ResponseHeader::decode(&mut buf, FetchResponse::header_version(12)).expect("header");
    let response = FetchResponse::decode(&mut buf, 12).expect("fetch response");
    let records = response.responses[0].partitions[0]
        .records
        .as_ref()
        .map_or(0, |r| r.len());
    assert!(records > 0, "another client got records");
    drop(other);
    // The hog is cut off (checked without reading, which would let the broker go
    // on); what it reads now ends with the end of the stream.
    let local = hog.local_addr().expect("local addr");
    let started = std::time::Instant::now();
    while established(local) {
        assert!(
            started.elapsed() < DEADLINE,
            "the connection of a client that does not read stays open"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut received = 0usize;
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        match hog.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => received += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the closed connection: {e}"),
        }
    }
    eprintln!(
        "never-reading fetcher: RSS {rss_before} KiB -> peak {peak} KiB; it got {received} bytes of {fetches} responses before being closed"
    );
    assert!(
        peak < rss_before + 256 * 1024,
        "RSS grew from {rss_before} KiB to {peak} KiB for responses nobody reads"
    );
    assert!(
        received < fetches as usize * records,
        "the connection was closed before all responses were sent"
    );
    let mut third = connect(&broker.addr);
    assert!(served(&mut third));
}

/// Whether the loopback connection with local address `local` is still
/// established, from the kernel's table (`/proc/net/tcp`).
fn established(local: SocketAddr) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let wanted = format!(":{:04X}", local.port());
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3 && fields[1].ends_with(&wanted) && fields[3] == "01"
    })
}
