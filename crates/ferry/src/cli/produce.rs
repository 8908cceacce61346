//! `ferry produce TOPIC`: one record per line of stdin (or of `--file`).
//!
//! Records are gathered into one batch per partition (built with ferry-log's
//! `BatchBuilder`) and sent to each partition's leader, several Produce
//! requests in flight at once. Keys go to partitions as Kafka's default
//! partitioner sends them (murmur2), so a key lands where a Java or librdkafka
//! producer would put it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use ferry_client::kafka_protocol::messages::produce_request::{
    PartitionProduceData, TopicProduceData,
};
use ferry_client::kafka_protocol::messages::ProduceRequest;
use ferry_client::Client;
use ferry_log::record::BatchBuilder;
use ferry_log::Compression;
use serde_json::json;
use tokio::task::JoinSet;

use super::kafka::{check, key_value, name};
use super::output::{print_json, Progress};
use super::CommonArgs;

/// A batch is sent once it holds this many records…
const BATCH_RECORDS_MAX: usize = 10_000;
/// …or this many bytes of keys and values.
const BATCH_BYTES_MAX: usize = 512 * 1024;
/// Produce requests in flight at once.
const INFLIGHT_MAX: usize = 4;
/// Produce v11 is the last that names topics instead of using topic ids.
const PRODUCE_VERSION_MAX: i16 = 11;

#[derive(Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    pub topic: String,
    /// Split each line at the first SEP into key and value (no SEP in a line: no key)
    #[arg(short = 'k', long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// A header on every record (repeatable)
    #[arg(short = 'H', long = "header", value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
    /// Send every record to this partition [default: by key, else spread]
    #[arg(short, long)]
    pub partition: Option<i32>,
    /// all (-1), 1 or 0
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// none, gzip, snappy, lz4 or zstd
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// Read the lines from FILE instead of stdin (shows progress on a terminal)
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<std::path::PathBuf>,
}

fn parse_acks(s: &str) -> anyhow::Result<i16> {
    match s {
        "all" | "-1" => Ok(-1),
        "1" => Ok(1),
        "0" => Ok(0),
        _ => anyhow::bail!("--acks must be all, -1, 1 or 0, not {s:?}"),
    }
}

pub fn parse_compression(s: &str) -> anyhow::Result<Compression> {
    Ok(match s {
        "none" | "uncompressed" => Compression::None,
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        _ => anyhow::bail!("--compression must be none, gzip, snappy, lz4 or zstd, not {s:?}"),
    })
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for a key.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

struct Pending {
    builder: BatchBuilder,
    bytes: usize,
}

#[derive(Default)]
struct Sent {
    records: u64,
    /// partition → (first offset, last offset, records)
    partitions: BTreeMap<i32, (i64, i64, u64)>,
}

pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let acks = parse_acks(&args.acks)?;
    let compression = parse_compression(&args.compression)?;
    let headers: Vec<(String, Option<Bytes>)> = args
        .headers
        .iter()
        .map(|h| key_value(h).map(|(k, v)| (k, Some(Bytes::from(v)))))
        .collect::<anyhow::Result<_>>()?;
    let client = args.common.connect().await?;
    let topic = client.topic(&args.topic).await?;
    let partitions = topic.partitions.len() as i32;
    anyhow::ensure!(partitions > 0, "topic {} has no partitions", args.topic);
    if let Some(p) = args.partition {
        anyhow::ensure!(
            (0..partitions).contains(&p),
            "topic {} has no partition {p}",
            args.topic
        );
    }
    let (input, total): (Box<dyn Read + Send>, u64) = match &args.file {
        Some(path) => {
            let f =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            (Box::new(f), len)
        }
        None => (Box::new(std::io::stdin()), 0),
    };
    // Reading stdin blocks: lines come through a bounded channel from a thread.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(1024);
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(256 * 1024, input);
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if tx.blocking_send(Ok(line)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });

    let mut progress = Progress::new(&format!("producing to {}", args.topic));
    let mut pending: BTreeMap<i32, Pending> = BTreeMap::new();
    let mut inflight: JoinSet<anyhow::Result<(i32, i64, u64)>> = JoinSet::new();
    let mut sent = Sent::default();
    let mut read_bytes = 0u64;
    let mut spread_partition = 0i32;
    let separator = args.key_separator.as_deref().map(str::as_bytes);
    while let Some(line) = rx.recv().await {
        let mut line = line.context("reading input")?;
        read_bytes += line.len() as u64;
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        let (key, value) = match separator.and_then(|sep| find(&line, sep).map(|i| (i, sep.len())))
        {
            Some((i, n)) => (
                Some(Bytes::copy_from_slice(&line[..i])),
                Bytes::copy_from_slice(&line[i + n..]),
            ),
            None => (None, Bytes::from(line)),
        };
        let partition = match (args.partition, &key) {
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, partitions),
            (None, None) => spread_partition,
        };
        let size = key.as_ref().map_or(0, |k| k.len()) + value.len();
        let batch = pending.entry(partition).or_insert_with(|| Pending {
            builder: BatchBuilder::new(compression),
            bytes: 0,
        });
        batch
            .builder
            .append_with_headers(now_ms(), key, Some(value), headers.clone());
        batch.bytes += size;
        if batch.builder.len() >= BATCH_RECORDS_MAX || batch.bytes >= BATCH_BYTES_MAX {
            if let Some(batch) = pending.remove(&partition) {
                // Records without keys stick to a partition for a batch, then move on.
                spread_partition = (spread_partition + 1) % partitions;
                while inflight.len() >= INFLIGHT_MAX {
                    collect(&mut inflight, &mut sent).await?;
                }
                inflight.spawn(send(
                    client.clone(),
                    args.topic.clone(),
                    partition,
                    batch.builder,
                    acks,
                ));
            }
        }
        progress.update(read_bytes, total, "bytes");
    }
    for (partition, batch) in std::mem::take(&mut pending) {
        while inflight.len() >= INFLIGHT_MAX {
            collect(&mut inflight, &mut sent).await?;
        }
        inflight.spawn(send(
            client.clone(),
            args.topic.clone(),
            partition,
            batch.builder,
            acks,
        ));
    }
    while !inflight.is_empty() {
        collect(&mut inflight, &mut sent).await?;
    }
    if acks == 0 {
        // Nothing confirms an acks=0 request: a round trip on each leader's
        // connection shows the requests before it left this process.
        let leaders: std::collections::BTreeSet<i32> =
            topic.partitions.iter().map(|p| p.leader).collect();
        for leader in leaders {
            let conn = client.connection(leader).await?;
            conn.send(
                &ferry_client::kafka_protocol::messages::MetadataRequest::default()
                    .with_topics(Some(vec![])),
            )
            .await?;
        }
    }
    progress.finish();
    if args.common.json {
        let parts: serde_json::Map<String, serde_json::Value> = sent
            .partitions
            .iter()
            .map(|(p, (first, last, n))| {
                (
                    p.to_string(),
                    json!({"first_offset": first, "last_offset": last, "records": n}),
                )
            })
            .collect();
        print_json(&json!({"topic": args.topic, "records": sent.records, "partitions": parts}));
    } else {
        eprintln!("produced {} records to {}", sent.records, args.topic);
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn collect(
    inflight: &mut JoinSet<anyhow::Result<(i32, i64, u64)>>,
    sent: &mut Sent,
) -> anyhow::Result<()> {
    if let Some(joined) = inflight.join_next().await {
        let (partition, base_offset, n) = joined.context("a produce task failed")??;
        sent.records += n;
        let last = if base_offset < 0 {
            -1
        } else {
            base_offset + n as i64 - 1
        };
        let entry = sent
            .partitions
            .entry(partition)
            .or_insert((base_offset, last, 0));
        if entry.0 < 0 || (base_offset >= 0 && base_offset < entry.0) {
            entry.0 = base_offset;
        }
        entry.1 = entry.1.max(last);
        entry.2 += n;
    }
    Ok(())
}

/// Sends one batch to its partition's leader; returns (partition, base offset, records).
async fn send(
    client: Arc<Client>,
    topic: String,
    partition: i32,
    builder: BatchBuilder,
    acks: i16,
) -> anyhow::Result<(i32, i64, u64)> {
    let records = builder.len() as u64;
    let bytes = Bytes::from(builder.build().context("building a record batch")?);
    let req = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(name(&topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(bytes))])]);
    let leader = client.leader(&topic, partition).await?;
    let conn = client.connection(leader).await?;
    let version = conn.version_for::<ProduceRequest>(Some(PRODUCE_VERSION_MAX))?;
    if acks == 0 {
        conn.send_no_response(&req, version).await?;
        return Ok((partition, -1, records));
    }
    let resp = conn.send_version(&req, version).await?;
    let p = resp
        .responses
        .first()
        .and_then(|t| t.partition_responses.first())
        .context("Produce answered no partition")?;
    check(p.error_code, p.error_message.as_ref(), || {
        format!("producing to {topic}/{partition}")
    })?;
    Ok((partition, p.base_offset, records))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Vectors from Kafka's UtilsTest.
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58_897_971
        );
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }
}
