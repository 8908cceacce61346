//! kcat (Debian's, on librdkafka 2.0.2) against ferry: metadata listing,
//! keyed produce with headers, consume to the end.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use rdkafka::Offset;

const KCAT_DEADLINE: Duration = Duration::from_secs(60);

fn kcat_run(broker: &Broker, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(kcat());
    cmd.arg("-b").arg(broker.bootstrap()).args(args);
    let out = run_with_deadline(cmd, stdin, KCAT_DEADLINE);
    assert!(
        out.status.success(),
        "kcat {args:?} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out
}

#[test]
fn kcat_lists_metadata() {
    let broker = Broker::start();
    let topic = unique_topic("kcat-meta");
    create_topic(&broker, &topic, 2, &[]);
    let out = kcat_run(&broker, &["-L"], b"");
    let expected_broker = format!("broker 1 at 127.0.0.1:{}", broker.port());
    assert!(
        out.stdout.contains(&expected_broker),
        "no '{expected_broker}' in:\n{}",
        out.stdout
    );
    let expected_topic = format!("topic \"{topic}\" with 2 partitions");
    assert!(
        out.stdout.contains(&expected_topic),
        "no '{expected_topic}' in:\n{}",
        out.stdout
    );
    for p in 0..2 {
        let line = format!("partition {p}, leader 1, replicas: 1, isrs: 1");
        assert!(
            out.stdout.contains(&line),
            "no '{line}' in:\n{}",
            out.stdout
        );
    }

    // Metadata for one topic as JSON.
    let out = kcat_run(&broker, &["-L", "-J", "-t", &topic], b"");
    let json: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).expect("kcat -J output is JSON");
    assert_eq!(json["topics"][0]["topic"], serde_json::json!(topic));
    assert_eq!(
        json["topics"][0]["partitions"].as_array().map(Vec::len),
        Some(2)
    );
}

#[test]
fn kcat_produces_keys_and_headers_and_consumes_them() {
    let broker = Broker::start();
    let topic = unique_topic("kcat-rw");
    create_topic(&broker, &topic, 1, &[]);
    let input = b"alpha:one\nbravo:two\ncharlie:three four\n";
    kcat_run(
        &broker,
        &[
            "-P",
            "-t",
            &topic,
            "-p",
            "0",
            "-K:",
            "-H",
            "source=kcat",
            "-H",
            "n=1",
            "-z",
            "gzip",
        ],
        input,
    );

    let out = kcat_run(
        &broker,
        &[
            "-C",
            "-t",
            &topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%k %s %h\\n",
        ],
        b"",
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            "alpha one source=kcat,n=1",
            "bravo two source=kcat,n=1",
            "charlie three four source=kcat,n=1",
        ],
        "kcat consume output; stderr:\n{}",
        out.stderr
    );

    // librdkafka 2.12 reads the same records.
    let read = read_all(&broker, &topic, 0, Offset::Beginning);
    let want: Vec<Rec> = [
        ("alpha", "one"),
        ("bravo", "two"),
        ("charlie", "three four"),
    ]
    .iter()
    .map(|(k, v)| {
        Rec::kv(k, v)
            .with_header("source", Some(b"kcat"))
            .with_header("n", Some(b"1"))
    })
    .collect();
    assert_same_records(&recs_of(&read), &want, "records");
}

#[test]
fn kcat_consumes_from_offset_and_end() {
    let broker = Broker::start();
    let topic = unique_topic("kcat-offsets");
    create_topic(&broker, &topic, 1, &[]);
    let producer = producer(&broker, &[]);
    let recs: Vec<Rec> = (0..10)
        .map(|i| Rec::kv(&format!("k{i}"), &format!("v{i}")))
        .collect();
    send_all(&producer, &topic, Some(0), &recs);

    let out = kcat_run(
        &broker,
        &[
            "-C",
            "-t",
            &topic,
            "-o",
            "7",
            "-e",
            "-q",
            "-f",
            "%o %k %s\\n",
        ],
        b"",
    );
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        vec!["7 k7 v7", "8 k8 v8", "9 k9 v9"]
    );

    // Negative offset: the last two records.
    let out = kcat_run(
        &broker,
        &["-C", "-t", &topic, "-o", "-2", "-e", "-q", "-f", "%o %s\\n"],
        b"",
    );
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), vec!["8 v8", "9 v9"]);
}
