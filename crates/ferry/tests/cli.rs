//! The `ferry` CLI against a running broker: every command's `--json` output,
//! failures as one line with a non-zero exit, and a topic and group made by
//! librdkafka read back through the CLI.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::TopicPartitionList;
use serde_json::Value;

/// Runs `ferry ARGS` against `broker` with `stdin`; returns (success, stdout, stderr).
fn ferry(broker: &Broker, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(args)
        .env("FERRY_BROKERS", broker.bootstrap())
        .env("NO_COLOR", "1");
    let out = run_with_deadline(cmd, stdin.as_bytes(), OP_DEADLINE * 2);
    (out.status.success(), out.stdout, out.stderr)
}

/// Runs a command that must succeed and parses its JSON output.
fn ferry_json(broker: &Broker, args: &[&str], stdin: &str) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, stdout, stderr) = ferry(broker, &all, stdin);
    assert!(
        ok,
        "ferry {args:?} failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("ferry {args:?} printed no JSON ({e}): {stdout}"))
}

/// JSON Lines output of `consume --json`.
fn consume_json(broker: &Broker, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["consume"];
    all.extend_from_slice(args);
    all.push("--json");
    let (ok, stdout, stderr) = ferry(broker, &all, "");
    assert!(
        ok,
        "ferry {all:?} failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn topic_commands_report_json() {
    let broker = Broker::start();
    let topic = unique_topic("cli-topic");
    let created = ferry_json(
        &broker,
        &[
            "topic",
            "create",
            &topic,
            "-p",
            "3",
            "-c",
            "retention.ms=123456",
        ],
        "",
    );
    assert_eq!(created["topic"], topic.as_str());
    assert_eq!(created["partitions"], 3);
    assert_eq!(created["replication_factor"], 1);

    let listed = ferry_json(&broker, &["topic", "list"], "");
    let entry = listed
        .as_array()
        .expect("array")
        .iter()
        .find(|t| t["topic"] == topic.as_str())
        .expect("listed");
    assert_eq!(entry["partitions"], 3);

    let described = ferry_json(&broker, &["topic", "describe", &topic], "");
    assert_eq!(
        described["partitions"]
            .as_array()
            .expect("partitions")
            .len(),
        3
    );
    assert_eq!(described["partitions"][0]["leader"], 1);
    assert_eq!(described["partitions"][0]["isr"], serde_json::json!([1]));
    assert_eq!(described["partitions"][0]["high_watermark"], 0);
    assert_eq!(described["configs"]["retention.ms"], "123456");

    let altered = ferry_json(
        &broker,
        &[
            "topic",
            "alter-config",
            &topic,
            "--set",
            "cleanup.policy=compact",
            "--delete",
            "retention.ms",
        ],
        "",
    );
    assert_eq!(altered["set"]["cleanup.policy"], "compact");
    let described = ferry_json(&broker, &["topic", "describe", &topic], "");
    assert_eq!(described["configs"]["cleanup.policy"], "compact");
    assert!(
        described["configs"].get("retention.ms").is_none(),
        "{described}"
    );

    let added = ferry_json(
        &broker,
        &["topic", "add-partitions", &topic, "--num", "2"],
        "",
    );
    assert_eq!(
        (
            added["partitions_before"].clone(),
            added["partitions"].clone()
        ),
        (Value::from(3), Value::from(5))
    );

    let deleted = ferry_json(&broker, &["topic", "delete", &topic], "");
    assert_eq!(deleted[0]["deleted"], true);
    let (ok, stdout, stderr) = ferry(&broker, &["topic", "describe", &topic], "");
    assert!(!ok, "describing a deleted topic succeeded: {stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with("ferry: "), "{stderr}");
}

#[test]
fn produce_and_consume_round_trip_keys_headers_and_formats() {
    let broker = Broker::start();
    let topic = unique_topic("cli-pc");
    create_topic(&broker, &topic, 2, &[]);
    let produced = ferry_json(
        &broker,
        &[
            "produce",
            &topic,
            "-k",
            ":",
            "-H",
            "source=cli",
            "--compression",
            "lz4",
        ],
        "alice:hello\nbob:world\ncarol:!\n",
    );
    assert_eq!(produced["records"], 3);
    // Keys land where librdkafka's murmur2 partitioner would put them.
    let records = consume_json(&broker, &[&topic, "--from-beginning", "-n", "3"]);
    assert_eq!(records.len(), 3);
    let mut seen: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap_or("").to_string(),
                r["value"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("alice".into(), "hello".into()),
            ("bob".into(), "world".into()),
            ("carol".into(), "!".into())
        ]
    );
    assert!(records.iter().all(|r| r["headers"]["source"] == "cli"));
    let by_rdkafka: usize = (0..2)
        .map(|p| read_all(&broker, &topic, p, rdkafka::Offset::Beginning).len())
        .sum();
    assert_eq!(by_rdkafka, 3);

    // A file with --partition and acks=0; then --offset and --format.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("lines.txt");
    std::fs::write(
        &file,
        (0..100).map(|i| format!("line-{i}\n")).collect::<String>(),
    )
    .expect("write");
    let produced = ferry_json(
        &broker,
        &[
            "produce",
            &topic,
            "--partition",
            "1",
            "--acks",
            "1",
            "--file",
            file.to_str().expect("utf8"),
        ],
        "",
    );
    assert_eq!(produced["records"], 100);
    let first = produced["partitions"]["1"]["first_offset"]
        .as_i64()
        .expect("first offset");
    let (ok, stdout, stderr) = ferry(
        &broker,
        &[
            "consume",
            &topic,
            "-p",
            "1",
            "--offset",
            &(first + 98).to_string(),
            "-n",
            "2",
            "--format",
            "%p:%o:%v\\n",
        ],
        "",
    );
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        format!("1:{}:line-98\n1:{}:line-99\n", first + 98, first + 99)
    );

    // --timestamp far in the past starts at the beginning.
    let records = consume_json(
        &broker,
        &[
            &topic,
            "-p",
            "1",
            "--timestamp",
            "2000-01-01T00:00:00Z",
            "-n",
            "1",
        ],
    );
    assert_eq!(records[0]["offset"], 0);
    let records = consume_json(
        &broker,
        &[
            &topic,
            "-p",
            "0",
            "--from-beginning",
            "-n",
            "1",
            "--isolation",
            "read_committed",
        ],
    );
    assert_eq!(records.len(), 1);
}

#[test]
fn group_commands_follow_a_cli_consumer_group() {
    let broker = Broker::start();
    let topic = unique_topic("cli-group");
    let group = unique_topic("cli-g");
    create_topic(&broker, &topic, 2, &[]);
    ferry_json(&broker, &["produce", &topic, "-p", "0"], "a\nb\nc\nd\n");
    // A group member reads 3 of the 4 records and commits where it stopped.
    let records = consume_json(
        &broker,
        &[&topic, "--group", &group, "--from-beginning", "-n", "3"],
    );
    assert_eq!(records.len(), 3);

    let listed = ferry_json(&broker, &["group", "list"], "");
    assert!(
        listed
            .as_array()
            .expect("array")
            .iter()
            .any(|g| g["group"] == group.as_str() && g["protocol_type"] == "consumer"),
        "{listed}"
    );

    let described = ferry_json(&broker, &["group", "describe", &group], "");
    assert_eq!(described["state"], "Empty");
    let offsets = described["offsets"].as_array().expect("offsets");
    let p0 = offsets
        .iter()
        .find(|o| o["partition"] == 0)
        .expect("partition 0");
    assert_eq!(
        (
            p0["committed_offset"].clone(),
            p0["log_end_offset"].clone(),
            p0["lag"].clone()
        ),
        (Value::from(3), Value::from(4), Value::from(1))
    );

    // The next member continues at the committed offset.
    let records = consume_json(&broker, &[&topic, "--group", &group, "-n", "1"]);
    assert_eq!(records[0]["value"], "d");

    let dry = ferry_json(
        &broker,
        &[
            "group",
            "reset-offsets",
            &group,
            "--topic",
            &topic,
            "--to-earliest",
        ],
        "",
    );
    assert_eq!(dry["executed"], false);
    let described = ferry_json(&broker, &["group", "describe", &group], "");
    let p0 = described["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .find(|o| o["partition"] == 0)
        .cloned()
        .expect("p0");
    assert_eq!(p0["committed_offset"], 4, "a dry run changed nothing");

    let shifted = ferry_json(
        &broker,
        &[
            "group",
            "reset-offsets",
            &group,
            "--topic",
            &topic,
            "--shift-by",
            "-2",
            "--execute",
        ],
        "",
    );
    assert_eq!(shifted["executed"], true);
    let p0 = shifted["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .find(|p| p["partition"] == 0)
        .cloned()
        .expect("p0");
    assert_eq!(
        (p0["current_offset"].clone(), p0["new_offset"].clone()),
        (Value::from(4), Value::from(2))
    );
    let records = consume_json(&broker, &[&topic, "--group", &group, "-n", "2"]);
    assert_eq!(
        records
            .iter()
            .map(|r| r["value"].as_str().unwrap_or(""))
            .collect::<Vec<_>>(),
        ["c", "d"]
    );

    for (flag, value, expect) in [
        ("--to-latest", None, 4),
        ("--to-offset", Some("1"), 1),
        ("--to-datetime", Some("2000-01-01"), 0),
    ] {
        let mut args = vec![
            "group",
            "reset-offsets",
            group.as_str(),
            "--topic",
            topic.as_str(),
            flag,
        ];
        args.extend(value);
        args.push("--execute");
        let r = ferry_json(&broker, &args, "");
        let p0 = r["partitions"]
            .as_array()
            .expect("partitions")
            .iter()
            .find(|p| p["partition"] == 0)
            .cloned()
            .expect("p0");
        assert_eq!(p0["new_offset"], expect, "{flag}");
    }

    let deleted = ferry_json(&broker, &["group", "delete", &group], "");
    assert_eq!(deleted[0]["deleted"], true);
    let (ok, _, stderr) = ferry(&broker, &["group", "describe", &group, "--json"], "");
    // A deleted group describes as Dead (Kafka) or is unknown.
    assert!(!ok || !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn cluster_commands_report_json() {
    let broker = Broker::start();
    let info = ferry_json(&broker, &["cluster", "info"], "");
    assert_eq!(info["controller_id"], 1);
    assert_eq!(info["brokers"][0]["port"], broker.port());
    assert!(
        info["api_versions"]["Fetch"]["max"]
            .as_i64()
            .expect("fetch")
            >= 4
    );
    let got = ferry_json(&broker, &["cluster", "config", "get", "num.partitions"], "");
    assert_eq!(got["configs"]["num.partitions"], "1");
    let set = ferry_json(
        &broker,
        &["cluster", "config", "set", "num.partitions=4"],
        "",
    );
    assert_eq!(set["set"]["num.partitions"], "4");
    let got = ferry_json(&broker, &["cluster", "config", "get", "num.partitions"], "");
    assert_eq!(got["configs"]["num.partitions"], "4");
}

#[test]
fn failures_are_one_line_and_non_zero() {
    let broker = Broker::start();
    for args in [
        vec!["produce", "no-such-topic"],
        vec!["consume", "no-such-topic", "-n", "1"],
        vec!["topic", "create", "bad/name"],
    ] {
        let (ok, _, stderr) = ferry(&broker, &args, "x\n");
        assert!(!ok, "{args:?} succeeded");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["topic", "list", "--brokers", "127.0.0.1:1"]);
    let out = run_with_deadline(cmd, b"", OP_DEADLINE);
    assert!(!out.status.success());
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
}

#[test]
fn the_cli_reads_a_topic_and_group_made_by_librdkafka() {
    let broker = Broker::start();
    let topic = unique_topic("cli-rdk");
    let group = unique_topic("rdk-g");
    create_topic(&broker, &topic, 3, &[]);
    let producer = producer(&broker, &[]);
    let recs: Vec<Rec> = (0..9)
        .map(|i| Rec::kv(&format!("k{i}"), &format!("v{i}")))
        .collect();
    send_all(&producer, &topic, None, &recs);

    // librdkafka joins the group, reads everything and commits.
    let consumer = consumer(
        &broker,
        &[
            ("group.id", group.as_str()),
            ("enable.partition.eof", "false"),
        ],
    );
    consumer.subscribe(&[&topic]).expect("subscribe");
    let got = poll_n(&consumer, 9, OP_DEADLINE * 2);
    assert_eq!(got.len(), 9);
    let mut offsets = TopicPartitionList::new();
    for p in 0..3 {
        let (_, high) = watermarks(&broker, &topic, p);
        offsets
            .add_partition_offset(&topic, p, rdkafka::Offset::Offset(high))
            .expect("offset");
    }
    consumer.commit(&offsets, CommitMode::Sync).expect("commit");

    let described = ferry_json(&broker, &["group", "describe", &group], "");
    assert_eq!(described["state"], "Stable");
    assert_eq!(described["members"].as_array().expect("members").len(), 1);
    let assigned: usize = described["members"][0]["assignments"]
        .as_array()
        .expect("assignments")
        .iter()
        .map(|a| a["partitions"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(assigned, 3, "{described}");
    let lags: Vec<i64> = described["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|o| o["lag"].as_i64().expect("lag"))
        .collect();
    assert_eq!(lags, [0, 0, 0]);
    drop(consumer);

    let records = consume_json(&broker, &[&topic, "--from-beginning", "-n", "9"]);
    let mut values: Vec<&str> = records.iter().filter_map(|r| r["value"].as_str()).collect();
    values.sort();
    assert_eq!(values, (0..9).map(|i| format!("v{i}")).collect::<Vec<_>>());
    std::thread::sleep(Duration::from_millis(10));
}
