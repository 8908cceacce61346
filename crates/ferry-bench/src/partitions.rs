//! Many partitions: create `--topics` topics of `--partitions` partitions each, then
//! write a few records into every partition, many partitions per Produce request.
//! What it measures is the broker's cost per partition (creation time, memory, file
//! descriptors, restart time — the last three read from outside by
//! `bench/partitions.sh`), not throughput.
//!
//! ```text
//!  create:  CreateTopics, one topic per request   PREFIX-0 … PREFIX-(topics-1)
//!  produce: one pre-encoded batch of --records records, sent to
//!           --partitions-per-request partitions in each Produce request,
//!           --inflight requests at once on one connection (a single broker)
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use ferry_client::{Client, ClientConfig};
use ferry_log::record::BatchBuilder;
use ferry_log::Compression;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{CreateTopicsRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::Summary;

/// Kafka's TOPIC_ALREADY_EXISTS: a rerun against the same data dir is fine.
const TOPIC_ALREADY_EXISTS: i16 = 36;

#[derive(clap::Args, Debug, Clone)]
pub struct RawPartitionsArgs {
    #[arg(long, default_value = "127.0.0.1:9092", env = "FERRY_BROKERS")]
    pub brokers: String,
    /// Topics are named PREFIX-0, PREFIX-1, …
    #[arg(long, default_value = "ferry-bench-p")]
    pub topic_prefix: String,
    #[arg(long, default_value_t = 50)]
    pub topics: u32,
    /// Partitions of each topic.
    #[arg(long, default_value_t = 1000)]
    pub partitions: i32,
    /// Records written to every partition (one batch).
    #[arg(long, default_value_t = 3)]
    pub records: usize,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,
    /// Partitions addressed by one Produce request.
    #[arg(long, default_value_t = 500)]
    pub partitions_per_request: usize,
    /// Produce requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub inflight: usize,
    /// Skip creating the topics (they exist).
    #[arg(long)]
    pub no_create: bool,
    /// Only create the topics.
    #[arg(long)]
    pub no_produce: bool,
    /// Longest run in seconds (creation and produce each).
    #[arg(long, default_value_t = 600)]
    pub duration: u64,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: RawPartitionsArgs) -> anyhow::Result<Summary> {
    let client = Client::connect(ClientConfig::new(
        args.brokers.split(',').map(str::to_string),
    ))
    .await?;
    let conn = client.any_connection().await?;
    let topics: Vec<String> = (0..args.topics)
        .map(|i| format!("{}-{i}", args.topic_prefix))
        .collect();
    let timeout = Duration::from_secs(args.duration);

    if !args.no_create {
        let start = Instant::now();
        for topic in &topics {
            let request = CreateTopicsRequest::default()
                .with_timeout_ms(i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX))
                .with_topics(vec![CreatableTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.clone())))
                    .with_num_partitions(args.partitions)
                    .with_replication_factor(1)]);
            let response = tokio::time::timeout(timeout, conn.send(&request))
                .await
                .with_context(|| format!("creating {topic} timed out"))??;
            for t in &response.topics {
                if t.error_code != 0 && t.error_code != TOPIC_ALREADY_EXISTS {
                    bail!(
                        "creating {topic}: error code {} {:?}",
                        t.error_code,
                        t.error_message.as_deref()
                    );
                }
            }
        }
        eprintln!(
            "raw-partitions: created {} topics x {} partitions in {:.1} s",
            topics.len(),
            args.partitions,
            start.elapsed().as_secs_f64()
        );
    }
    if args.no_produce {
        return Ok(Summary {
            name: "raw-partitions",
            records: 0,
            bytes: 0,
            errors: 0,
            seconds: 0.0,
            latency: None,
        });
    }

    let mut builder = BatchBuilder::new(Compression::None);
    let value = Bytes::from(vec![b'p'; args.record_size]);
    let now = crate::now_micros() as i64 / 1000;
    for _ in 0..args.records.max(1) {
        builder.append(now, None, Some(value.clone()));
    }
    let batch = Bytes::from(builder.build()?);
    // Every request up front: (topic, first partition, partitions).
    let chunk = i32::try_from(args.partitions_per_request.max(1)).unwrap_or(i32::MAX);
    let mut requests = Vec::new();
    for topic in &topics {
        let mut from = 0;
        while from < args.partitions {
            let partitions: Vec<_> = (from..args.partitions.min(from.saturating_add(chunk)))
                .map(|p| {
                    PartitionProduceData::default()
                        .with_index(p)
                        .with_records(Some(batch.clone()))
                })
                .collect();
            from = from.saturating_add(chunk);
            requests.push(
                ProduceRequest::default()
                    .with_acks(1)
                    .with_timeout_ms(30_000)
                    .with_topic_data(vec![TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_string(topic.clone())))
                        .with_partition_data(partitions)]),
            );
        }
    }
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicU64::new(0));
    let written = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + timeout;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.inflight.max(1) {
        let (conn, requests, next, written, errors) = (
            conn.clone(),
            requests.clone(),
            next.clone(),
            written.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = usize::try_from(next.fetch_add(1, Ordering::Relaxed)).unwrap_or(usize::MAX);
                let Some(request) = requests.get(i) else {
                    break;
                };
                if Instant::now() >= deadline {
                    bail!("produce did not finish within the duration");
                }
                let response = conn.send(request).await?;
                for p in response
                    .responses
                    .iter()
                    .flat_map(|t| &t.partition_responses)
                {
                    if p.error_code == 0 {
                        written.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let seconds = start.elapsed().as_secs_f64();
    let partitions = written.load(Ordering::Relaxed);
    let errors = errors.load(Ordering::Relaxed);
    eprintln!(
        "raw-partitions: wrote {} records to each of {partitions} partitions in {seconds:.1} s ({errors} partition errors)",
        args.records.max(1)
    );
    let records = partitions * args.records.max(1) as u64;
    Ok(Summary {
        name: "raw-partitions",
        records,
        bytes: records * args.record_size as u64,
        errors,
        seconds,
        latency: None,
    })
}
