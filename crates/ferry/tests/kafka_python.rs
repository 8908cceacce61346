//! kafka-python 3.x against ferry, with librdkafka cross-checks: what one
//! client writes, the other reads.
//!
//! The interpreter is `FERRY_PYTHON`, else `<workspace>/.venv/bin/python`
//! (scripts/test.sh creates it). A missing interpreter fails the test.

mod common;

use std::process::Command;

use common::*;
use rdkafka::message::Message;
use rdkafka::Offset;
use serde_json::Value;

/// Runs one scenario of `kafka_python_suite.py`; returns its JSON result.
fn run_scenario(broker: &Broker, scenario: &str, topic: &str) -> Value {
    let mut cmd = Command::new(python());
    cmd.arg(python_script("kafka_python_suite.py"))
        .arg(scenario)
        .arg(broker.bootstrap())
        .arg(topic);
    let out = run_with_deadline(cmd, b"", std::time::Duration::from_secs(120));
    assert!(
        out.status.success(),
        "kafka-python scenario {scenario} failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    let last = out.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("scenario {scenario} printed no JSON ({e}): {}", out.stdout))
}

#[test]
fn python_round_trip_with_every_codec_read_back_by_rdkafka() {
    let broker = Broker::start();
    let topic = unique_topic("py-roundtrip");
    let result = run_scenario(&broker, "roundtrip", &topic);
    let codecs: Vec<&str> = result["codecs"]
        .as_array()
        .expect("codecs")
        .iter()
        .map(|c| c.as_str().expect("codec name"))
        .collect();
    assert_eq!(
        codecs,
        vec!["gzip", "snappy", "lz4", "zstd"],
        "the Python environment lacks codec packages; run scripts/test.sh (installs lz4, zstandard, python-snappy, cramjam)"
    );
    // librdkafka reads exactly what kafka-python wrote.
    for codec in codecs {
        let written = &result["written"][codec];
        let partition = written["partition"].as_i64().expect("partition") as i32;
        let want: Vec<Rec> = written["records"]
            .as_array()
            .expect("records")
            .iter()
            .map(|r| {
                let mut rec = Rec::kv(r[0].as_str().expect("key"), r[1].as_str().expect("value"));
                for h in r[2].as_array().expect("headers") {
                    rec = rec.with_header(
                        h[0].as_str().expect("hk"),
                        Some(h[1].as_str().expect("hv").as_bytes()),
                    );
                }
                rec
            })
            .collect();
        let read = read_all(&broker, &topic, partition, Offset::Beginning);
        assert_same_records(
            &recs_of(&read),
            &want,
            &format!("codec {codec}: librdkafka read differs"),
        );
    }
}

#[test]
fn python_reads_what_rdkafka_wrote() {
    let broker = Broker::start();
    let topic = unique_topic("py-read");
    create_topic(&broker, &topic, 1, &[]);
    let producer = producer(
        &broker,
        &[("compression.type", "zstd"), ("linger.ms", "10")],
    );
    let mut recs: Vec<Rec> = (0..30)
        .map(|i| {
            Rec::kv(&format!("rk{i}"), &format!("from rdkafka {i}")).with_header("h", Some(b"x"))
        })
        .collect();
    recs.push(Rec {
        key: None,
        value: Some(b"no key".to_vec()),
        headers: vec![],
    });
    send_all(&producer, &topic, Some(0), &recs);

    let result = run_scenario(&broker, "read_rdkafka", &topic);
    let got = result["records"].as_array().expect("records");
    assert_eq!(got.len(), recs.len());
    for (i, (g, want)) in got.iter().zip(&recs).enumerate() {
        assert_eq!(g[0].as_i64(), Some(i as i64), "offset");
        let key = want
            .key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned());
        assert_eq!(g[1].as_str().map(str::to_string), key, "key of record {i}");
        let value = want
            .value
            .as_ref()
            .map(|v| String::from_utf8_lossy(v).into_owned());
        assert_eq!(
            g[2].as_str().map(str::to_string),
            value,
            "value of record {i}"
        );
        let headers: Vec<(String, Option<Vec<u8>>)> = g[3]
            .as_array()
            .expect("headers")
            .iter()
            .map(|h| {
                (
                    h[0].as_str().expect("hk").to_string(),
                    h[1].as_str().map(|v| v.as_bytes().to_vec()),
                )
            })
            .collect();
        assert_eq!(headers, want.headers, "headers of record {i}");
    }
}

#[test]
fn python_consumer_seeks_by_offset() {
    let broker = Broker::start();
    let topic = unique_topic("py-seek");
    create_topic(&broker, &topic, 1, &[]);
    run_scenario(&broker, "seek", &topic);
    let read = read_all(&broker, &topic, 0, Offset::Beginning);
    assert_eq!(read.len(), 20);
    assert_eq!(read[19].payload(), Some(&b"v19"[..]));
}

#[test]
fn python_admin_creates_and_deletes_topics() {
    let broker = Broker::start();
    let topic = unique_topic("py-admin");
    let result = run_scenario(&broker, "admin", &topic);
    assert_eq!(
        result["remaining"],
        serde_json::json!([format!("{topic}-other")])
    );
    assert_eq!(partition_count(&broker, &topic), None);
    assert_eq!(partition_count(&broker, &format!("{topic}-other")), Some(1));
}

#[test]
fn python_offsets_for_times() {
    let broker = Broker::start();
    let topic = unique_topic("py-times");
    create_topic(&broker, &topic, 1, &[]);
    let result = run_scenario(&broker, "offsets_for_times", &topic);
    assert_eq!(result["offset"], 5);
}

#[test]
fn python_incremental_alter_configs_and_describe_cluster() {
    let broker = Broker::start();
    let topic = unique_topic("py-configs");
    let result = run_scenario(&broker, "configs", &topic);
    assert!(result["cluster_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
}

#[test]
fn python_list_offsets_earliest_latest_and_max_timestamp() {
    let broker = Broker::start();
    let topic = unique_topic("py-listoffsets");
    create_topic(&broker, &topic, 1, &[]);
    let result = run_scenario(&broker, "list_offsets", &topic);
    assert_eq!(result["max_timestamp_offset"], 1);
}

/// DescribeLogDirs through kafka-python's admin client: the data directory,
/// with each partition's size equal to its segment files on disk.
#[test]
fn python_describe_log_dirs_reports_the_data_dir_and_replica_sizes() {
    let broker = Broker::start();
    let topic = unique_topic("py-logdirs");
    create_topic(&broker, &topic, 2, &[]);
    let result = run_scenario(&broker, "log_dirs", &topic);
    let data_dir = std::fs::canonicalize(broker.data_dir()).expect("data dir");
    assert_eq!(result["log_dir"], data_dir.display().to_string());
    for partition in 0..2 {
        let on_disk: u64 = std::fs::read_dir(data_dir.join(format!("{topic}-{partition}")))
            .expect("partition dir")
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum();
        assert!(on_disk > 1000, "ten records of 100 bytes: {on_disk}");
        assert_eq!(
            result["sizes"][partition.to_string()].as_u64(),
            Some(on_disk),
            "partition {partition}: {result}"
        );
    }
}

/// ACL requests through kafka-python's admin client get SECURITY_DISABLED
/// (54), as from a Kafka broker without an authorizer.
#[test]
fn python_acl_requests_get_security_disabled() {
    let broker = Broker::start();
    let topic = unique_topic("py-acls");
    create_topic(&broker, &topic, 1, &[]);
    let result = run_scenario(&broker, "acls", &topic);
    assert_eq!(
        result,
        serde_json::json!({"describe": 54, "create": [54], "delete": [54]})
    );
}
