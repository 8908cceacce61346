//! Raw mode: the broker's own capacity, with a client that costs almost nothing.
//!
//! The producer encodes one record batch up front and sends it over and over in
//! Produce requests, several in flight on one connection; the consumer fetches and
//! counts records from batch headers without decoding them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use ferry_client::{Client, ClientConfig, Connection};
use ferry_log::record::BatchBuilder;
use ferry_log::{batch, Compression};
use hdrhistogram::Histogram;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{FetchRequest, ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::Summary;

#[derive(clap::Args, Debug, Clone)]
pub struct RawProduceArgs {
    #[arg(long, default_value = "127.0.0.1:9092", env = "FERRY_BROKERS")]
    pub brokers: String,
    #[arg(long, default_value = "ferry-bench-raw")]
    pub topic: String,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    pub record_size: usize,
    /// Records per batch (one batch per Produce request).
    #[arg(long, default_value_t = 512)]
    pub batch_records: usize,
    /// Bytes to send in all.
    #[arg(long, default_value_t = 2_000_000_000)]
    pub total_bytes: u64,
    /// Produce requests in flight at once.
    #[arg(long, default_value_t = 8)]
    pub inflight: usize,
    /// acks: -1, 0 or 1.
    #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
    pub acks: i16,
    #[arg(long, default_value_t = 120)]
    pub duration: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RawConsumeArgs {
    #[arg(long, default_value = "127.0.0.1:9092", env = "FERRY_BROKERS")]
    pub brokers: String,
    #[arg(long, default_value = "ferry-bench-raw")]
    pub topic: String,
    /// Bytes asked for per Fetch.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub fetch_bytes: i32,
    /// Stop after this many bytes (or at the end of the partition).
    #[arg(long, default_value_t = u64::MAX)]
    pub total_bytes: u64,
    #[arg(long, default_value_t = 120)]
    pub duration: u64,
    #[arg(long)]
    pub json: bool,
}

async fn leader_connection(
    brokers: &str,
    topic: &str,
) -> anyhow::Result<(Client, Arc<Connection>)> {
    let client = Client::connect(ClientConfig::new(brokers.split(',').map(str::to_string))).await?;
    client.refresh_metadata(Some(&[topic])).await?;
    let leader = client
        .leader(topic, 0)
        .await
        .with_context(|| format!("leader of {topic}-0"))?;
    let conn = client.connection(leader).await?;
    Ok((client, conn))
}

pub async fn produce(args: RawProduceArgs) -> anyhow::Result<Summary> {
    let (_client, conn) = leader_connection(&args.brokers, &args.topic).await?;
    let mut builder = BatchBuilder::new(Compression::None);
    let value = Bytes::from(vec![b'x'; args.record_size]);
    let now = crate::now_micros() as i64 / 1000;
    for _ in 0..args.batch_records {
        builder.append(now, None, Some(value.clone()));
    }
    let batch = Bytes::from(builder.build()?);
    let request = ProduceRequest::default()
        .with_acks(args.acks)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(args.topic.clone())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch.clone()))])]);
    let request = Arc::new(request);
    let sent = Arc::new(AtomicU64::new(0));
    let records = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let latency = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let r = records.clone();
    let record_size = args.record_size as u64;
    let ticker = crate::progress("raw-produce", stop.clone(), move || {
        let n = r.load(Ordering::Relaxed);
        (n, n * record_size)
    });
    let mut tasks = Vec::new();
    for _ in 0..args.inflight.max(1) {
        let (conn, request, sent, records, latency) = (
            conn.clone(),
            request.clone(),
            sent.clone(),
            records.clone(),
            latency.clone(),
        );
        let (total, batch_len, batch_records, acks) = (
            args.total_bytes,
            batch.len() as u64,
            args.batch_records as u64,
            args.acks,
        );
        tasks.push(tokio::spawn(async move {
            while sent.fetch_add(batch_len, Ordering::Relaxed) < total && Instant::now() < deadline
            {
                let t = Instant::now();
                if acks == 0 {
                    let version = conn.version_for::<ProduceRequest>(None)?;
                    conn.send_no_response(&*request, version).await?;
                } else {
                    let resp = conn.send(&*request).await?;
                    for p in resp.responses.iter().flat_map(|t| &t.partition_responses) {
                        if p.error_code != 0 {
                            bail!("produce failed with error code {}", p.error_code);
                        }
                    }
                }
                if let Ok(mut h) = latency.lock() {
                    let _ = h.record((t.elapsed().as_micros() as u64).max(1));
                }
                records.fetch_add(batch_records, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let seconds = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    let n = records.load(Ordering::Relaxed);
    Ok(Summary {
        name: "raw-produce",
        records: n,
        bytes: n * args.record_size as u64,
        errors: 0,
        seconds,
        latency: latency.lock().ok().map(|h| h.clone()),
    })
}

pub async fn consume(args: RawConsumeArgs) -> anyhow::Result<Summary> {
    let (_client, conn) = leader_connection(&args.brokers, &args.topic).await?;
    let mut offset = 0i64;
    let (mut records, mut bytes) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let start = Instant::now();
    while bytes < args.total_bytes && Instant::now() < deadline {
        let req = FetchRequest::default()
            .with_max_wait_ms(100)
            .with_min_bytes(1)
            .with_max_bytes(args.fetch_bytes)
            .with_topics(vec![FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(args.topic.clone())))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(args.fetch_bytes)])]);
        let resp = conn.send(&req).await?;
        let Some(p) = resp.responses.first().and_then(|t| t.partitions.first()) else {
            bail!("empty fetch response");
        };
        if p.error_code != 0 {
            bail!("fetch failed with error code {}", p.error_code);
        }
        let data = p.records.clone().unwrap_or_default();
        if data.is_empty() {
            if offset >= p.high_watermark {
                break;
            }
            continue;
        }
        // Count from headers only: the point is the broker's cost, not the client's.
        for b in batch::batches(&data) {
            let Ok((header, _)) = b else { break };
            if header.last_offset() >= offset {
                records += u64::from(header.records_count.max(0) as u32);
                bytes += header.total_size() as u64;
                offset = header.last_offset() + 1;
            }
        }
    }
    Ok(Summary {
        name: "raw-consume",
        records,
        bytes,
        errors: 0,
        seconds: start.elapsed().as_secs_f64(),
        latency: None,
    })
}
