//! ferry-bench: throughput and latency of any Kafka-compatible broker, measured
//! with librdkafka (what users experience).
//!
//! ```text
//!  produce: N producer threads ──► broker       (acks latency per record)
//!  consume: one consumer, every partition from the start
//!  e2e:     produce at a fixed rate + consume; latency = consumed − stamped time
//!  raw-*:   the broker's own capacity, with a client that costs almost nothing
//!           (raw.rs), and its cost per partition (partitions.rs)
//! ```
//!
//! Every record's value starts with the microseconds since the epoch at which it
//! was handed to the client, so any consumer can compute end-to-end latency.

mod partitions;
mod raw;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

#[derive(Parser, Debug)]
#[command(
    name = "ferry-bench",
    about = "Throughput and latency of a Kafka-compatible broker, measured with librdkafka"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Produce records as fast as allowed (or at --rate) and report throughput and ack latency.
    Produce(ProduceArgs),
    /// Consume every partition of a topic from the beginning and report throughput.
    Consume(ConsumeArgs),
    /// Produce at a fixed rate while consuming; report end-to-end latency.
    E2e(ProduceArgs),
    /// The broker's capacity: one pre-encoded batch sent over and over, several
    /// requests in flight (partition 0 of --topic, which must exist).
    RawProduce(raw::RawProduceArgs),
    /// The broker's capacity: fetch partition 0 from offset 0, counting records from
    /// batch headers without decoding them.
    RawConsume(raw::RawConsumeArgs),
    /// The broker's cost per partition: create many topics of many partitions and
    /// write a few records to every partition (bench/partitions.sh reads RSS, file
    /// descriptors and restart time from outside).
    RawPartitions(partitions::RawPartitionsArgs),
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092", env = "FERRY_BROKERS")]
    brokers: String,
    /// Topic to use (created with --partitions if missing).
    #[arg(long, default_value = "ferry-bench")]
    topic: String,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug, Clone)]
struct ProduceArgs {
    #[command(flatten)]
    common: Common,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Records to send in all (the run also stops after --duration).
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Longest run in seconds.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Target records per second over all producers (0: unlimited).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// acks: 0, 1 or all.
    #[arg(long, default_value = "1")]
    acks: String,
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// batch.size in bytes.
    #[arg(long, default_value_t = 1_000_000)]
    batch_size: u64,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    compression: String,
    /// Producer threads, each with its own client.
    #[arg(long, default_value_t = 1)]
    producers: u32,
    /// Give every record a key (spreads by key hash instead of sticky partitioning).
    #[arg(long)]
    keyed: bool,
    /// Send inside transactions (transactional.id per producer thread), committing
    /// every --txn-records records.
    #[arg(long)]
    transactional: bool,
    /// Records per transaction with --transactional.
    #[arg(long, default_value_t = 1000)]
    txn_records: u64,
}

#[derive(Args, Debug, Clone)]
struct ConsumeArgs {
    #[command(flatten)]
    common: Common,
    /// Records to read before stopping (also stops after --duration or 5 s without data).
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    #[arg(long, default_value_t = 60)]
    duration: u64,
}

pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// Counts acknowledged records and their latency.
struct Stats {
    records: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
}

impl Stats {
    fn new() -> anyhow::Result<Arc<Stats>> {
        Ok(Arc::new(Stats {
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency_us: Mutex::new(histogram()?),
        }))
    }

    fn record_latency(&self, sent_us: u64) {
        let latency = now_micros().saturating_sub(sent_us).max(1);
        if let Ok(mut h) = self.latency_us.lock() {
            let _ = h.record(latency.min(60_000_000));
        }
    }
}

struct AckContext {
    stats: Arc<Stats>,
}

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                self.stats.records.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .bytes
                    .fetch_add(m.payload_len() as u64, Ordering::Relaxed);
                if let Some(sent) = m.payload().and_then(stamp) {
                    self.stats.record_latency(sent);
                }
            }
            Err(_) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn stamp(payload: &[u8]) -> Option<u64> {
    payload
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

fn ensure_topic(common: &Common) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &common.brokers)
        .create()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let topic = NewTopic::new(&common.topic, common.partitions, TopicReplication::Fixed(1));
    let results = rt.block_on(admin.create_topics(
        [&topic],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))?;
    for r in results {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("creating topic {t}: {e}"),
        }
    }
    Ok(())
}

fn producer_config(args: &ProduceArgs) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &args.common.brokers)
        .set("acks", &args.acks)
        .set("linger.ms", args.linger_ms.to_string())
        .set("batch.size", args.batch_size.to_string())
        .set("compression.type", &args.compression)
        .set("queue.buffering.max.kbytes", "1048576")
        .set("queue.buffering.max.messages", "1000000")
        .set(
            "message.max.bytes",
            (args.batch_size.max(1_000_000) + 1024).to_string(),
        );
    c
}

pub(crate) struct Summary {
    name: &'static str,
    records: u64,
    bytes: u64,
    errors: u64,
    seconds: f64,
    latency: Option<Histogram<u64>>,
}

impl Summary {
    fn print(&self, json: bool) {
        let rps = self.records as f64 / self.seconds.max(1e-9);
        let mbps = self.bytes as f64 / self.seconds.max(1e-9) / 1e6;
        let pct = |q: f64| {
            self.latency
                .as_ref()
                .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
        };
        if json {
            let v = serde_json::json!({
                "mode": self.name, "records": self.records, "bytes": self.bytes, "errors": self.errors,
                "seconds": self.seconds, "records_per_sec": rps, "mb_per_sec": mbps,
                "latency_ms": self.latency.as_ref().map(|h| serde_json::json!({
                    "p50": h.value_at_quantile(0.5) as f64 / 1000.0, "p95": h.value_at_quantile(0.95) as f64 / 1000.0,
                    "p99": h.value_at_quantile(0.99) as f64 / 1000.0, "p99.9": h.value_at_quantile(0.999) as f64 / 1000.0,
                    "max": h.max() as f64 / 1000.0,
                })),
            });
            println!("{v}");
            return;
        }
        println!(
            "{}: {} records, {:.1} MB in {:.2} s: {:.0} records/s, {:.1} MB/s, {} errors",
            self.name,
            self.records,
            self.bytes as f64 / 1e6,
            self.seconds,
            rps,
            mbps,
            self.errors
        );
        if let (Some(p50), Some(p95), Some(p99), Some(p999)) =
            (pct(0.5), pct(0.95), pct(0.99), pct(0.999))
        {
            let max = self
                .latency
                .as_ref()
                .map(|h| h.max() as f64 / 1000.0)
                .unwrap_or(0.0);
            println!("latency ms: p50 {p50:.2}  p95 {p95:.2}  p99 {p99:.2}  p99.9 {p999:.2}  max {max:.2}");
        }
    }
}

fn progress(
    name: &'static str,
    stop: Arc<AtomicBool>,
    counter: impl Fn() -> (u64, u64) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut last_r, mut last_b) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(1));
            let (r, b) = counter();
            eprintln!(
                "{name}: {} records/s, {:.1} MB/s, {r} total",
                r - last_r,
                (b - last_b) as f64 / 1e6
            );
            (last_r, last_b) = (r, b);
        }
    })
}

fn run_produce(
    args: &ProduceArgs,
    name: &'static str,
) -> anyhow::Result<(Summary, Arc<AtomicBool>)> {
    let stats = Stats::new()?;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let start = Instant::now();
    let mut threads = Vec::new();
    for id in 0..args.producers {
        let mut config = producer_config(args);
        if args.transactional {
            config.set(
                "transactional.id",
                format!("ferry-bench-{}-{id}", std::process::id()),
            );
        }
        let producer: BaseProducer<AckContext> = config.create_with_context(AckContext {
            stats: stats.clone(),
        })?;
        if args.transactional {
            producer
                .init_transactions(Duration::from_secs(30))
                .context("init_transactions")?;
            producer.begin_transaction().context("begin_transaction")?;
        }
        let args = args.clone();
        let sent = sent.clone();
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut value = vec![b'x'; args.record_size.max(8)];
            let per_thread_rate = args.rate as f64 / f64::from(args.producers);
            let thread_start = Instant::now();
            let mut mine = 0u64;
            let mut key = String::new();
            loop {
                if Instant::now() >= deadline || sent.fetch_add(1, Ordering::Relaxed) >= args.count
                {
                    break;
                }
                if per_thread_rate > 0.0 {
                    let due = thread_start + Duration::from_secs_f64(mine as f64 / per_thread_rate);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                }
                value[..8].copy_from_slice(&now_micros().to_be_bytes());
                key.clear();
                key.push_str(&format!("{id}-{mine}"));
                loop {
                    let mut record = BaseRecord::to(&args.common.topic).payload(&value[..]);
                    if args.keyed {
                        record = record.key(key.as_str());
                    }
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((e, _))
                            if e.rdkafka_error_code()
                                == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                        {
                            producer.poll(Duration::from_millis(5));
                        }
                        Err((e, _)) => return Err(e.into()),
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                mine += 1;
                producer.poll(Duration::ZERO);
                if args.transactional && mine.is_multiple_of(args.txn_records.max(1)) {
                    producer
                        .commit_transaction(Duration::from_secs(30))
                        .context("commit_transaction")?;
                    producer.begin_transaction().context("begin_transaction")?;
                }
            }
            if args.transactional {
                producer
                    .commit_transaction(Duration::from_secs(30))
                    .context("commit_transaction")?;
            }
            producer
                .flush(Duration::from_secs(30))
                .context("flushing the producer")?;
            Ok(())
        }));
    }
    let s = stats.clone();
    let ticker = progress(name, stop.clone(), move || {
        (
            s.records.load(Ordering::Relaxed),
            s.bytes.load(Ordering::Relaxed),
        )
    });
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    }
    let seconds = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    let latency = stats.latency_us.lock().map(|h| h.clone()).ok();
    Ok((
        Summary {
            name,
            records: stats.records.load(Ordering::Relaxed),
            bytes: stats.bytes.load(Ordering::Relaxed),
            errors: stats.errors.load(Ordering::Relaxed),
            seconds,
            latency,
        },
        stop,
    ))
}

fn consumer(common: &Common) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &common.brokers)
        .set("group.id", "ferry-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "10485760")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(&common.topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(&common.topic, p.id(), Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Reads until `count` records, the deadline, or 5 s without data; `e2e` records latency.
fn consume_loop(
    consumer: &BaseConsumer,
    count: u64,
    deadline: Instant,
    e2e: bool,
    stop: Option<&AtomicBool>,
) -> anyhow::Result<Summary> {
    let records = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let ticker_stop = Arc::new(AtomicBool::new(false));
    let (r, b) = (records.clone(), bytes.clone());
    let ticker = progress("consume", ticker_stop.clone(), move || {
        (r.load(Ordering::Relaxed), b.load(Ordering::Relaxed))
    });
    let mut latency = histogram()?;
    let start = Instant::now();
    let mut last_data = Instant::now();
    while records.load(Ordering::Relaxed) < count && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_data = Instant::now();
                records.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(m.payload_len() as u64, Ordering::Relaxed);
                if e2e {
                    if let Some(sent) = m.payload().and_then(stamp) {
                        let _ =
                            latency.record(now_micros().saturating_sub(sent).clamp(1, 60_000_000));
                    }
                }
            }
            Some(Err(e)) => eprintln!("consume error: {e}"),
            None => {
                let producers_done = stop.is_none_or(|s| s.load(Ordering::Relaxed));
                if producers_done && last_data.elapsed() > Duration::from_secs(5) {
                    break;
                }
            }
        }
    }
    let seconds = last_data.duration_since(start).as_secs_f64();
    ticker_stop.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    Ok(Summary {
        name: if e2e { "e2e" } else { "consume" },
        records: records.load(Ordering::Relaxed),
        bytes: bytes.load(Ordering::Relaxed),
        errors: 0,
        seconds,
        latency: e2e.then_some(latency),
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.mode {
        Mode::Produce(args) => {
            ensure_topic(&args.common)?;
            let (summary, _) = run_produce(&args, "produce")?;
            summary.print(args.common.json);
        }
        Mode::Consume(args) => {
            let c = consumer(&args.common)?;
            let summary = consume_loop(
                &c,
                args.count,
                Instant::now() + Duration::from_secs(args.duration),
                false,
                None,
            )?;
            summary.print(args.common.json);
        }
        Mode::RawProduce(args) => {
            let json = args.json;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(raw::produce(args))?.print(json);
        }
        Mode::RawConsume(args) => {
            let json = args.json;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(raw::consume(args))?.print(json);
        }
        Mode::RawPartitions(args) => {
            let json = args.json;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(partitions::run(args))?.print(json);
        }
        Mode::E2e(args) => {
            ensure_topic(&args.common)?;
            let c = consumer(&args.common)?;
            // Start reading at the end: only records of this run count.
            let mut tpl = c.assignment()?;
            tpl.set_all_offsets(Offset::End)?;
            c.assign(&tpl)?;
            let done = Arc::new(AtomicBool::new(false));
            let producer_args = args.clone();
            let producer_done = done.clone();
            let producer = std::thread::spawn(move || -> anyhow::Result<Summary> {
                let result = run_produce(&producer_args, "produce").map(|(s, _)| s);
                producer_done.store(true, Ordering::Relaxed);
                result
            });
            let summary = consume_loop(
                &c,
                args.count,
                Instant::now() + Duration::from_secs(args.duration + 30),
                true,
                Some(&done),
            )?;
            let produced = producer
                .join()
                .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
            produced.print(args.common.json);
            summary.print(args.common.json);
        }
    }
    Ok(())
}
