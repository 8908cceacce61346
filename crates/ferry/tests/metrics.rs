//! The HTTP listener of `ferry serve`: /metrics counters move when records are
//! produced and fetched; /healthz and /readyz answer.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A broker with its HTTP listener on an ephemeral port; returns it and that address.
fn start() -> (Broker, String) {
    let broker = Broker::start_with(&["--http-addr", "127.0.0.1:0"]);
    // The harness reads only the first stdout line; the HTTP address is in the log.
    let mut addr = None;
    assert!(
        wait_until(OP_DEADLINE, || {
            addr = broker.stderr().lines().find_map(|l| {
                l.split("http_bound=")
                    .nth(1)
                    .map(|a| a.split_whitespace().next().unwrap_or("").to_string())
            });
            addr.is_some()
        }),
        "no http_bound in the broker log:\n{}",
        broker.stderr_tail()
    );
    (broker, addr.expect("address"))
}

fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the HTTP listener");
    s.set_read_timeout(Some(OP_DEADLINE)).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `name{labels}` (exact text before the value).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

#[test]
fn counters_move_when_records_are_produced_and_fetched() {
    let (broker, http) = start();
    let topic = unique_topic("metrics");
    create_topic(&broker, &topic, 1, &[]);
    let (_, before) = get(&http, "/metrics");
    let records_in = format!("ferry_topic_records_in_total{{topic=\"{topic}\"}}");
    let bytes_in = format!("ferry_topic_bytes_in_total{{topic=\"{topic}\"}}");
    let records_out = format!("ferry_topic_records_out_total{{topic=\"{topic}\"}}");
    let produce_requests = "ferry_kafka_requests_total{api=\"Produce\"}";
    assert_eq!(sample(&before, &records_in), 0.0);

    let producer = producer(&broker, &[]);
    let recs: Vec<Rec> = (0..5)
        .map(|i| Rec::kv("k", &format!("value-{i}")))
        .collect();
    send_all(&producer, &topic, Some(0), &recs);
    assert_eq!(
        read_all(&broker, &topic, 0, rdkafka::Offset::Beginning).len(),
        5
    );

    let (status, after) = get(&http, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(sample(&after, &records_in), 5.0, "{after}");
    assert!(sample(&after, &bytes_in) > 0.0);
    assert!(sample(&after, &records_out) >= 5.0);
    assert!(sample(&after, produce_requests) >= sample(&before, produce_requests) + 1.0);
    assert!(
        sample(
            &after,
            "ferry_kafka_request_duration_seconds_count{api=\"Produce\"}"
        ) >= 1.0
    );
    // acks=all waits for an fsync.
    assert!(sample(&after, "ferry_log_fsync_duration_seconds_count") >= 1.0);
    assert_eq!(
        sample(
            &after,
            &format!("ferry_partition_log_end_offset{{topic=\"{topic}\",partition=\"0\"}}")
        ),
        5.0
    );
    assert!(
        sample(
            &after,
            &format!("ferry_partition_size_bytes{{topic=\"{topic}\",partition=\"0\"}}")
        ) > 0.0
    );
    assert!(after.contains("# TYPE ferry_kafka_request_duration_seconds histogram"));
    assert!(after.contains("ferry_under_replicated_partitions 0"));
    assert!(after
        .lines()
        .any(|l| l.starts_with("ferry_kafka_connections_open ")));

    // A group's committed offset shows up as lag.
    let group = unique_topic("metrics-g");
    let consumer = consumer(&broker, &[("group.id", group.as_str())]);
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(2))
        .expect("tpl");
    rdkafka::consumer::Consumer::commit(&consumer, &tpl, rdkafka::consumer::CommitMode::Sync)
        .expect("commit");
    let lag =
        format!("ferry_consumer_group_lag{{group=\"{group}\",topic=\"{topic}\",partition=\"0\"}}");
    let (_, m) = get(&http, "/metrics");
    assert_eq!(sample(&m, &lag), 3.0, "{m}");
}

#[test]
fn health_and_readiness_answer() {
    let (_broker, http) = start();
    assert_eq!(get(&http, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(get(&http, "/readyz").0, 200);
    assert_eq!(get(&http, "/nope").0, 404);
}

#[test]
fn serve_prints_the_http_line_after_the_kafka_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "serve",
            "--kafka-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut text = String::new();
    let mut buf = [0u8; 256];
    let ok = wait_until(OP_DEADLINE, || {
        if let Ok(n) = stdout.read(&mut buf) {
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text.lines().count() >= 2
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "stdout: {text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("ferry: kafka listening on 127.0.0.1:"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("ferry: http listening on 127.0.0.1:"),
        "{text}"
    );
    std::thread::sleep(Duration::from_millis(1));
}
