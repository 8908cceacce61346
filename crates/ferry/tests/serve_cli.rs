//! `ferry serve` as an operator runs it: settings from a TOML file, the
//! environment and `--set`; bad settings refused at start; signals; one
//! process per data directory.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use rdkafka::consumer::Consumer;
use rdkafka::Offset;

/// Partition count of an auto-created topic (created by a Metadata request
/// naming it).
fn auto_created_partitions(broker: &Broker) -> usize {
    let topic = unique_topic("auto");
    let consumer = consumer(broker, &[("allow.auto.create.topics", "true")]);
    let mut count = 0;
    let created = wait_until(OP_DEADLINE, || {
        count = consumer
            .fetch_metadata(Some(&topic), OP_DEADLINE)
            .ok()
            .and_then(|m| {
                m.topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map(|t| t.partitions().len())
            })
            .unwrap_or(0);
        count > 0
    });
    assert!(created, "topic {topic} was not auto-created");
    count
}

#[test]
fn settings_from_toml_file_environment_and_flags() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, "[broker]\n\"num.partitions\" = 4\n").expect("write config");
    let config = config.to_string_lossy().into_owned();

    let from_file = Broker::start_with(&["--config", &config]);
    assert_eq!(
        auto_created_partitions(&from_file),
        4,
        "num.partitions from the TOML file"
    );

    let from_env = Broker::start_with_env(&["--config", &config], &[("FERRY_NUM_PARTITIONS", "5")]);
    assert_eq!(
        auto_created_partitions(&from_env),
        5,
        "FERRY_NUM_PARTITIONS beats the file"
    );

    let from_flag = Broker::start_with_env(
        &["--config", &config, "--set", "num.partitions=6"],
        &[("FERRY_NUM_PARTITIONS", "5")],
    );
    assert_eq!(
        auto_created_partitions(&from_flag),
        6,
        "--set beats the environment"
    );
}

#[test]
fn unknown_or_malformed_settings_are_refused_at_start() {
    for (args, needle) in [
        (vec!["--set", "no.such.setting=1"], "no.such.setting"),
        (vec!["--set", "num.partitions=zero"], "num.partitions"),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--kafka-addr")
            .arg("127.0.0.1:0")
            .arg("--http-addr")
            .arg("127.0.0.1:0")
            .args(&args)
            .env("NO_COLOR", "1");
        let out = run_with_deadline(cmd, b"", Duration::from_secs(30));
        assert!(!out.status.success(), "ferry serve {args:?} started anyway");
        assert!(
            out.stderr.contains(needle),
            "the error for {args:?} does not name {needle}:\n{}",
            out.stderr
        );
        assert!(!out.stdout.contains("listening"), "{}", out.stdout);
    }
}

#[test]
fn sigint_shuts_down_cleanly_and_data_survives() {
    let mut broker = Broker::start();
    let topic = unique_topic("sigint");
    create_topic(&broker, &topic, 1, &[]);
    let producer = producer(&broker, &[]);
    send_all(&producer, &topic, Some(0), &[Rec::kv("k", "before ctrl-c")]);
    drop(producer);
    let status = broker.stop_with("INT");
    assert!(status.success(), "exit status after SIGINT: {status}");
    broker.restart();
    assert_same_records(
        &recs_of(&read_all(&broker, &topic, 0, Offset::Beginning)),
        &[Rec::kv("k", "before ctrl-c")],
        "records after SIGINT and restart",
    );
}

#[test]
fn second_broker_on_the_same_data_dir_is_refused() {
    let broker = Broker::start();
    let topic = unique_topic("owner");
    create_topic(&broker, &topic, 1, &[]);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(broker.data_dir())
        .arg("--kafka-addr")
        .arg("127.0.0.1:0")
        .arg("--http-addr")
        .arg("127.0.0.1:0")
        .env("NO_COLOR", "1");
    let out = run_with_deadline(cmd, b"", Duration::from_secs(30));
    assert!(
        !out.status.success(),
        "a second broker started on a data dir in use\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains("in use"),
        "the refusal does not say the data dir is in use:\n{}",
        out.stderr
    );
    // The first broker is unaffected.
    let producer = producer(&broker, &[]);
    let d = send(
        &producer,
        &topic,
        Some(0),
        None,
        &Rec::kv("k", "still mine"),
    )
    .expect("produce");
    assert_eq!(d.offset, 0);
}
