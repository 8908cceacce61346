//! Topic administration through librdkafka's AdminClient, metadata, and
//! automatic topic creation.

mod common;

use common::*;
use rdkafka::admin::{AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

/// Every topic listed by a Metadata request for all topics.
fn listed_topics(broker: &Broker) -> Vec<(String, usize)> {
    let consumer = consumer(broker, &[]);
    let metadata = consumer
        .fetch_metadata(None, OP_DEADLINE)
        .expect("metadata for all topics");
    metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect()
}

fn create_one(
    broker: &Broker,
    topic: &NewTopic<'_>,
    validate_only: bool,
) -> Result<String, (String, RDKafkaErrorCode)> {
    let admin = admin(broker);
    let results =
        block_on(admin.create_topics([topic], &admin_options().validate_only(validate_only)))
            .expect("create_topics request");
    assert_eq!(results.len(), 1);
    results.into_iter().next().expect("one result")
}

fn topic_config(broker: &Broker, topic: &str) -> Vec<(String, Option<String>)> {
    let admin = admin(broker);
    let results =
        block_on(admin.describe_configs([&ResourceSpecifier::Topic(topic)], &admin_options()))
            .expect("describe_configs request");
    assert_eq!(results.len(), 1);
    let resource = results
        .into_iter()
        .next()
        .expect("one result")
        .unwrap_or_else(|code| panic!("describe_configs({topic}) returned {code:?}"));
    resource
        .entries
        .into_iter()
        .map(|e| (e.name, e.value))
        .collect()
}

fn config_value(entries: &[(String, Option<String>)], name: &str) -> Option<String> {
    entries
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.clone())
}

#[test]
fn create_topic_with_configs_then_describe() {
    let broker = Broker::start();
    let name = unique_topic("configured");
    let topic = NewTopic::new(&name, 3, TopicReplication::Fixed(1))
        .set("retention.ms", "123456789")
        .set("cleanup.policy", "compact")
        .set("max.message.bytes", "65536");
    let result = create_one(&broker, &topic, false);
    assert_eq!(result, Ok(name.clone()));
    assert!(wait_until(OP_DEADLINE, || partition_count(&broker, &name) == Some(3)));

    let entries = topic_config(&broker, &name);
    assert_eq!(
        config_value(&entries, "retention.ms").as_deref(),
        Some("123456789"),
        "{entries:?}"
    );
    assert_eq!(
        config_value(&entries, "cleanup.policy").as_deref(),
        Some("compact"),
        "{entries:?}"
    );
    assert_eq!(
        config_value(&entries, "max.message.bytes").as_deref(),
        Some("65536"),
        "{entries:?}"
    );

    // Creating it again fails and leaves it as it was.
    let again = create_one(
        &broker,
        &NewTopic::new(&name, 1, TopicReplication::Fixed(1)),
        false,
    );
    assert_eq!(
        again,
        Err((name.clone(), RDKafkaErrorCode::TopicAlreadyExists))
    );
    assert_eq!(partition_count(&broker, &name), Some(3));
}

#[test]
fn validate_only_creates_nothing() {
    let broker = Broker::start();
    let name = unique_topic("validate");
    let topic = NewTopic::new(&name, 2, TopicReplication::Fixed(1));
    assert_eq!(create_one(&broker, &topic, true), Ok(name.clone()));
    assert!(
        !listed_topics(&broker).iter().any(|(n, _)| *n == name),
        "validate_only created the topic"
    );
    // A real creation still works afterwards.
    assert_eq!(create_one(&broker, &topic, false), Ok(name.clone()));
    assert!(wait_until(OP_DEADLINE, || partition_count(&broker, &name) == Some(2)));
}

#[test]
fn replication_factor_above_one_is_rejected_on_single_node() {
    let broker = Broker::start();
    let name = unique_topic("rf3");
    let topic = NewTopic::new(&name, 1, TopicReplication::Fixed(3));
    assert_eq!(
        create_one(&broker, &topic, false),
        Err((name.clone(), RDKafkaErrorCode::InvalidReplicationFactor))
    );
    assert!(!listed_topics(&broker).iter().any(|(n, _)| *n == name));
}

#[test]
fn invalid_topic_names_are_rejected() {
    let broker = Broker::start();
    let long = "a".repeat(250);
    for bad in ["bad name", "..", ".", "slash/topic", "star*", long.as_str()] {
        let topic = NewTopic::new(bad, 1, TopicReplication::Fixed(1));
        assert_eq!(
            create_one(&broker, &topic, false),
            Err((bad.to_string(), RDKafkaErrorCode::InvalidTopic)),
            "topic name {bad:?}"
        );
    }
    // 249 characters is the longest legal name.
    let longest = "b".repeat(249);
    let topic = NewTopic::new(&longest, 1, TopicReplication::Fixed(1));
    assert_eq!(create_one(&broker, &topic, false), Ok(longest.clone()));
    let listed = listed_topics(&broker);
    for (name, _) in &listed {
        assert!(
            !name.contains(' ') && name != ".." && name != ".",
            "invalid topic listed: {name:?}"
        );
    }
}

#[test]
fn delete_topic_removes_only_that_topic_and_its_data() {
    let broker = Broker::start();
    let doomed = unique_topic("doomed");
    let kept = unique_topic("kept");
    create_topic(&broker, &doomed, 2, &[]);
    create_topic(&broker, &kept, 1, &[]);
    let producer = producer(&broker, &[]);
    let doomed_recs: Vec<Rec> = (0..20)
        .map(|i| Rec::kv("d", &format!("doomed-{i}")))
        .collect();
    let kept_recs: Vec<Rec> = (0..20)
        .map(|i| Rec::kv("k", &format!("kept-{i}")))
        .collect();
    send_all(&producer, &doomed, Some(1), &doomed_recs);
    send_all(&producer, &kept, Some(0), &kept_recs);

    let data_dir = broker.data_dir();
    let paths_of = |topic: &str| -> Vec<std::path::PathBuf> {
        list_tree(&data_dir)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().contains(topic))
                    .unwrap_or(false)
            })
            .collect()
    };
    let before = paths_of(&doomed);
    assert!(
        !before.is_empty(),
        "no file or directory named after topic {doomed} under {}: {:?}",
        data_dir.display(),
        list_tree(&data_dir)
    );

    let admin = admin(&broker);
    let results = block_on(admin.delete_topics(&[doomed.as_str()], &admin_options()))
        .expect("delete_topics request");
    assert_eq!(results, vec![Ok(doomed.clone())]);

    let gone = wait_until(OP_DEADLINE, || {
        !listed_topics(&broker).iter().any(|(n, _)| *n == doomed)
    });
    assert!(gone, "deleted topic still listed in metadata");
    let removed = wait_until(BACKGROUND_DEADLINE, || paths_of(&doomed).is_empty());
    assert!(
        removed,
        "deleted topic's data still on disk: {:?}",
        paths_of(&doomed)
    );

    // The other topic keeps its data and stays writable.
    assert!(listed_topics(&broker)
        .iter()
        .any(|(n, c)| *n == kept && *c == 1));
    assert_eq!(
        recs_of(&read_all(&broker, &kept, 0, Offset::Beginning)),
        kept_recs
    );
    send(&producer, &kept, Some(0), None, &Rec::kv("k", "after")).expect("produce to kept topic");

    // Deleting an unknown topic reports it.
    let results = block_on(admin.delete_topics(&[doomed.as_str()], &admin_options()))
        .expect("delete_topics request");
    assert_eq!(
        results,
        vec![Err((
            doomed.clone(),
            RDKafkaErrorCode::UnknownTopicOrPartition
        ))]
    );
}

#[test]
fn create_partitions_adds_writable_partitions() {
    let broker = Broker::start();
    let name = unique_topic("grow");
    create_topic(&broker, &name, 1, &[]);
    let producer = producer(&broker, &[]);
    send_all(&producer, &name, Some(0), &[Rec::kv("k", "p0")]);

    let admin = admin(&broker);
    let grow = NewPartitions::new(&name, 3);
    let results = block_on(admin.create_partitions([&grow], &admin_options()))
        .expect("create_partitions request");
    assert_eq!(results, vec![Ok(name.clone())]);
    assert!(wait_until(OP_DEADLINE, || partition_count(&broker, &name) == Some(3)));

    // A fresh producer learns the new partitions.
    let producer = common::producer(&broker, &[]);
    let d = send(&producer, &name, Some(2), None, &Rec::kv("k", "p2"))
        .expect("produce to new partition");
    assert_eq!((d.partition, d.offset), (2, 0));
    assert_eq!(
        recs_of(&read_all(&broker, &name, 2, Offset::Beginning)),
        vec![Rec::kv("k", "p2")]
    );
    assert_eq!(
        recs_of(&read_all(&broker, &name, 0, Offset::Beginning)),
        vec![Rec::kv("k", "p0")]
    );

    // Shrinking is refused.
    let shrink = NewPartitions::new(&name, 2);
    let results = block_on(admin.create_partitions([&shrink], &admin_options()))
        .expect("create_partitions request");
    assert!(
        matches!(
            &results[..],
            [Err((_, RDKafkaErrorCode::InvalidPartitions))]
        ),
        "shrinking partitions: {results:?}"
    );
}

#[test]
fn alter_configs_changes_topic_config() {
    let broker = Broker::start();
    let name = unique_topic("alter");
    create_topic(&broker, &name, 1, &[("retention.ms", "111111")]);
    assert_eq!(
        config_value(&topic_config(&broker, &name), "retention.ms").as_deref(),
        Some("111111")
    );

    let admin = admin(&broker);
    let alter = AlterConfig::new(ResourceSpecifier::Topic(&name))
        .set("retention.ms", "222222")
        .set("segment.bytes", "2097152");
    let results =
        block_on(admin.alter_configs([&alter], &admin_options())).expect("alter_configs request");
    assert!(
        matches!(&results[..], [Ok(_)]),
        "alter_configs: {results:?}"
    );

    let entries = topic_config(&broker, &name);
    assert_eq!(
        config_value(&entries, "retention.ms").as_deref(),
        Some("222222"),
        "{entries:?}"
    );
    assert_eq!(
        config_value(&entries, "segment.bytes").as_deref(),
        Some("2097152"),
        "{entries:?}"
    );

    // A bad value is refused and changes nothing. (rdkafka 0.39 does not
    // surface per-resource AlterConfigs errors, so the check is on the effect;
    // the Python tests see the error code itself.)
    let bad = AlterConfig::new(ResourceSpecifier::Topic(&name)).set("retention.ms", "not-a-number");
    block_on(admin.alter_configs([&bad], &admin_options())).expect("alter_configs request");
    assert_eq!(
        config_value(&topic_config(&broker, &name), "retention.ms").as_deref(),
        Some("222222")
    );
}

#[test]
fn describe_broker_configs() {
    let broker = Broker::start_with(&["--set", "num.partitions=2"]);
    let admin = admin(&broker);
    let results =
        block_on(admin.describe_configs([&ResourceSpecifier::Broker(1)], &admin_options()))
            .expect("describe_configs request");
    let resource = match results.into_iter().next() {
        Some(Ok(resource)) => resource,
        other => panic!("describe broker 1 configs: {other:?}"),
    };
    let value = resource.get("num.partitions").and_then(|e| e.value.clone());
    assert_eq!(
        value.as_deref(),
        Some("2"),
        "num.partitions in {:?}",
        resource.entries
    );
}

#[test]
fn delete_records_moves_log_start_offset() {
    let broker = Broker::start();
    let name = unique_topic("trim");
    create_topic(&broker, &name, 1, &[]);
    let producer = producer(&broker, &[]);
    let recs: Vec<Rec> = (0..10).map(|i| Rec::kv("k", &format!("v{i}"))).collect();
    send_all(&producer, &name, Some(0), &recs);

    let admin = admin(&broker);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&name, 0, Offset::Offset(4))
        .expect("tpl");
    let result = block_on(admin.delete_records(&tpl, &admin_options())).expect("delete_records");
    let elem = result
        .find_partition(&name, 0)
        .expect("partition in result");
    assert!(
        elem.error().is_ok(),
        "delete_records error: {:?}",
        elem.error()
    );
    assert_eq!(elem.offset(), Offset::Offset(4), "new low watermark");

    assert_eq!(watermarks(&broker, &name, 0), (4, 10));
    let read = read_all(&broker, &name, 0, Offset::Beginning);
    assert_eq!(offsets_of(&read), (4..10).collect::<Vec<i64>>());
    assert_same_records(&recs_of(&read), &recs[4..], "records");

    // Reading below the log start offset is out of range.
    let below = try_read_all(
        &broker,
        &name,
        0,
        Offset::Offset(1),
        &[("auto.offset.reset", "error")],
    );
    assert!(
        matches!(
            below,
            Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset
            ))
        ),
        "fetch below log start: {:?}",
        below.map(|m| offsets_of(&m))
    );
}

#[test]
fn metadata_lists_topics_partitions_and_broker() {
    let broker = Broker::start();
    let a = unique_topic("meta-a");
    let b = unique_topic("meta-b");
    create_topic(&broker, &a, 1, &[]);
    create_topic(&broker, &b, 5, &[]);
    let consumer = consumer(&broker, &[]);
    let metadata = consumer
        .fetch_metadata(None, OP_DEADLINE)
        .expect("metadata");
    let brokers: Vec<(i32, String, i32)> = metadata
        .brokers()
        .iter()
        .map(|b| (b.id(), b.host().to_string(), b.port()))
        .collect();
    assert_eq!(
        brokers,
        vec![(1, "127.0.0.1".to_string(), broker.port() as i32)]
    );
    for (name, count) in [(&a, 1usize), (&b, 5usize)] {
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == name.as_str())
            .unwrap_or_else(|| panic!("topic {name} missing from metadata"));
        assert!(topic.error().is_none());
        let mut ids: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
        ids.sort();
        assert_eq!(ids, (0..count as i32).collect::<Vec<_>>());
        for p in topic.partitions() {
            assert_eq!(p.leader(), 1);
            assert_eq!(p.replicas(), &[1]);
            assert_eq!(p.isr(), &[1]);
        }
    }
}

#[test]
fn metadata_reports_advertised_address() {
    // Port 1 on loopback: nothing listens there, and no client needs to
    // connect for this test — the metadata answer itself is what is checked.
    let broker = Broker::start_with(&["--advertised-kafka-addr", "127.0.0.1:1"]);
    let consumer = consumer(&broker, &[]);
    let metadata = consumer
        .fetch_metadata(None, OP_DEADLINE)
        .expect("metadata");
    let brokers: Vec<(i32, String, i32)> = metadata
        .brokers()
        .iter()
        .map(|b| (b.id(), b.host().to_string(), b.port()))
        .collect();
    assert_eq!(brokers, vec![(1, "127.0.0.1".to_string(), 1)]);
}

#[test]
fn auto_create_on_metadata_and_produce_uses_num_partitions() {
    let broker = Broker::start_with(&["--set", "num.partitions=3"]);
    // A Metadata request naming the topic creates it.
    let by_metadata = unique_topic("auto-meta");
    let consumer = consumer(&broker, &[("allow.auto.create.topics", "true")]);
    let created = wait_until(OP_DEADLINE, || {
        consumer
            .fetch_metadata(Some(&by_metadata), OP_DEADLINE)
            .map(|m| {
                m.topics().iter().any(|t| {
                    t.name() == by_metadata && t.error().is_none() && t.partitions().len() == 3
                })
            })
            .unwrap_or(false)
    });
    assert!(
        created,
        "metadata did not auto-create {by_metadata} with 3 partitions"
    );

    // Producing to an unknown topic creates it too.
    let by_produce = unique_topic("auto-produce");
    let producer = producer(&broker, &[]);
    let d = send(&producer, &by_produce, None, None, &Rec::kv("k", "v"))
        .expect("produce to auto-created topic");
    assert!((0..3).contains(&d.partition));
    assert_eq!(partition_count(&broker, &by_produce), Some(3));
    assert_eq!(
        recs_of(&read_all(
            &broker,
            &by_produce,
            d.partition,
            Offset::Beginning
        )),
        vec![Rec::kv("k", "v")]
    );
}

#[test]
fn auto_create_disabled_reports_unknown_topic() {
    let broker = Broker::start_with(&["--set", "auto.create.topics.enable=false"]);
    let name = unique_topic("absent");
    let consumer = consumer(&broker, &[("allow.auto.create.topics", "true")]);
    let metadata = consumer
        .fetch_metadata(Some(&name), OP_DEADLINE)
        .expect("metadata");
    let topic = metadata.topics().iter().find(|t| t.name() == name);
    if let Some(t) = topic {
        assert_eq!(
            t.error().map(RDKafkaErrorCode::from),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition),
            "metadata for an absent topic"
        );
    }

    let producer = producer(&broker, &[("message.timeout.ms", "10000")]);
    match send(&producer, &name, None, None, &Rec::kv("k", "v")) {
        Err(KafkaError::MessageProduction(
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
        )) => {}
        other => panic!("produce to a missing topic with auto-create off: {other:?}"),
    }
    assert_eq!(
        partition_count(&broker, &name),
        None,
        "topic was created anyway"
    );
}

#[test]
fn recreated_topic_starts_empty() {
    let broker = Broker::start();
    let name = unique_topic("phoenix");
    create_topic(&broker, &name, 1, &[]);
    let producer = producer(&broker, &[]);
    send_all(&producer, &name, Some(0), &[Rec::kv("old", "life")]);
    drop(producer);
    let admin = admin(&broker);
    let results =
        block_on(admin.delete_topics(&[name.as_str()], &admin_options())).expect("delete_topics");
    assert_eq!(results, vec![Ok(name.clone())]);
    assert!(wait_until(OP_DEADLINE, || partition_count(&broker, &name).is_none()));

    create_topic(&broker, &name, 2, &[]);
    assert_eq!(watermarks(&broker, &name, 0), (0, 0), "old data came back");
    let producer = common::producer(&broker, &[]);
    let d = send(&producer, &name, Some(0), None, &Rec::kv("new", "life")).expect("produce");
    assert_eq!(d.offset, 0);
    assert_same_records(
        &recs_of(&read_all(&broker, &name, 0, Offset::Beginning)),
        &[Rec::kv("new", "life")],
        "recreated topic",
    );
}

#[test]
fn delete_all_records_empties_the_partition() {
    let broker = Broker::start();
    let name = unique_topic("wipe");
    create_topic(&broker, &name, 1, &[]);
    let producer = producer(&broker, &[]);
    let recs: Vec<Rec> = (0..7).map(|i| Rec::kv("k", &format!("v{i}"))).collect();
    send_all(&producer, &name, Some(0), &recs);
    let admin = admin(&broker);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&name, 0, Offset::End)
        .expect("tpl");
    let result = block_on(admin.delete_records(&tpl, &admin_options())).expect("delete_records");
    let elem = result
        .find_partition(&name, 0)
        .expect("partition in result");
    assert!(
        elem.error().is_ok(),
        "delete_records error: {:?}",
        elem.error()
    );
    assert_eq!(elem.offset(), Offset::Offset(7));
    assert_eq!(watermarks(&broker, &name, 0), (7, 7));
    assert!(read_all(&broker, &name, 0, Offset::Beginning).is_empty());
    // Beyond the high watermark is refused.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&name, 0, Offset::Offset(100))
        .expect("tpl");
    let result = block_on(admin.delete_records(&tpl, &admin_options()));
    let refused = match &result {
        Err(_) => true,
        Ok(tpl) => tpl
            .find_partition(&name, 0)
            .is_some_and(|e| e.error().is_err()),
    };
    assert!(
        refused,
        "delete_records beyond the high watermark: {result:?}"
    );
}
