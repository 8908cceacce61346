//! A small, dependency-free metrics registry rendered in the Prometheus text
//! format.
//!
//! ```text
//!  hot paths ──► counters / histograms (atomics; a label set is looked up under a
//!                read lock and created once)
//!  scrape ─────► render(): the registry, plus gauges read from the broker's state
//!                at scrape time (log offsets and sizes, group lag) so nothing has
//!                to keep them up to date
//! ```
//!
//! The registry is process-wide ([`metrics()`]), like Prometheus clients' default
//! registry: instrumentation is one line at the place it measures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use parking_lot::RwLock;

use crate::broker::Broker;

/// Bucket upper bounds, in seconds, for request and fsync latencies.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Fixed-bucket histogram; the sum is kept in nanoseconds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts per bucket, plus one for +Inf.
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in self.bounds.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {}", braces(labels), self.count());
    }
}

/// A family of metrics of one name, one per label set.
pub struct Family<M> {
    name: &'static str,
    help: &'static str,
    label_names: &'static [&'static str],
    make: fn() -> M,
    members: RwLock<BTreeMap<Vec<String>, Arc<M>>>,
}

impl<M> Family<M> {
    pub fn new(
        name: &'static str,
        help: &'static str,
        label_names: &'static [&'static str],
        make: fn() -> M,
    ) -> Family<M> {
        Family {
            name,
            help,
            label_names,
            make,
            members: RwLock::new(BTreeMap::new()),
        }
    }

    /// The member for `labels` (in the order of the family's label names).
    pub fn with(&self, labels: &[&str]) -> Arc<M> {
        debug_assert_eq!(labels.len(), self.label_names.len());
        {
            let members = self.members.read();
            // BTreeMap<Vec<String>> cannot be searched by &[&str]; compare in place.
            if let Some((_, m)) = members
                .iter()
                .find(|(k, _)| k.iter().map(String::as_str).eq(labels.iter().copied()))
            {
                return m.clone();
            }
        }
        let key: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        self.members
            .write()
            .entry(key)
            .or_insert_with(|| Arc::new((self.make)()))
            .clone()
    }

    fn each(&self, mut f: impl FnMut(&str, &M)) {
        for (values, m) in self.members.read().iter() {
            f(&label_string(self.label_names, values), m);
        }
    }
}

fn label_string(names: &[&str], values: &[String]) -> String {
    let mut s = String::new();
    for (i, (n, v)) in names.iter().zip(values).enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{n}=\"{}\"", escape(v));
    }
    s
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

impl Family<Counter> {
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        self.each(|labels, c| {
            let _ = writeln!(out, "{}{{{labels}}} {}", self.name, c.get());
        });
    }
}

impl Family<Histogram> {
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        self.each(|labels, h| h.render(out, self.name, labels));
    }
}

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_SECONDS)
}

/// Every metric the broker records as it works.
pub struct Metrics {
    pub bytes_in: Family<Counter>,
    pub records_in: Family<Counter>,
    pub bytes_out: Family<Counter>,
    pub records_out: Family<Counter>,
    pub requests: Family<Counter>,
    pub request_duration: Family<Histogram>,
    pub errors: Family<Counter>,
    pub connections_open: Gauge,
    pub connections_accepted: Counter,
    pub connections_rejected: Counter,
    /// Fetch response bytes reserved from `queued.max.response.bytes`.
    pub response_bytes_held: Gauge,
    pub fsync_duration: Histogram,
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            bytes_in: Family::new("ferry_topic_bytes_in_total", "Record batch bytes produced to a topic.", &["topic"], Counter::default),
            records_in: Family::new("ferry_topic_records_in_total", "Records produced to a topic.", &["topic"], Counter::default),
            bytes_out: Family::new("ferry_topic_bytes_out_total", "Record batch bytes fetched from a topic.", &["topic"], Counter::default),
            records_out: Family::new("ferry_topic_records_out_total", "Records fetched from a topic (counted from batch headers).", &["topic"], Counter::default),
            requests: Family::new("ferry_kafka_requests_total", "Kafka requests handled, by API.", &["api"], Counter::default),
            request_duration: Family::new("ferry_kafka_request_duration_seconds", "Time from a request's arrival to its response, by API.", &["api"], latency),
            errors: Family::new("ferry_kafka_errors_total", "Errors returned to Kafka clients by error code (code \"none\": a request that closed its connection).", &["error", "code"], Counter::default),
            connections_open: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_rejected: Counter::default(),
            response_bytes_held: Gauge::default(),
            fsync_duration: latency(),
        }
    }

    /// Records one request of `api` that took `elapsed`.
    pub fn observe_request(&self, api: &str, elapsed: Duration) {
        self.requests.with(&[api]).inc();
        self.request_duration.with(&[api]).observe(elapsed);
    }

    /// Counts an error by its name and Kafka error code.
    pub fn count_error(&self, error: &str, code: &str) {
        self.errors.with(&[error, code]).inc();
    }

    /// Counts produced bytes and records for `topic`.
    pub fn produced(&self, topic: &str, bytes: u64, records: u64) {
        self.bytes_in.with(&[topic]).add(bytes);
        self.records_in.with(&[topic]).add(records);
    }

    /// Counts fetched bytes and records for `topic`.
    pub fn fetched(&self, topic: &str, bytes: u64, records: u64) {
        self.bytes_out.with(&[topic]).add(bytes);
        self.records_out.with(&[topic]).add(records);
    }

    /// The registry's metrics in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        self.bytes_in.render(out);
        self.records_in.render(out);
        self.bytes_out.render(out);
        self.records_out.render(out);
        self.requests.render(out);
        self.request_duration.render(out);
        self.errors.render(out);
        header(
            out,
            "ferry_kafka_connections_open",
            "Open Kafka client connections.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "ferry_kafka_connections_open {}",
            self.connections_open.get()
        );
        header(
            out,
            "ferry_kafka_connections_accepted_total",
            "Kafka client connections accepted.",
            "counter",
        );
        let _ = writeln!(
            out,
            "ferry_kafka_connections_accepted_total {}",
            self.connections_accepted.get()
        );
        header(
            out,
            "ferry_kafka_connections_rejected_total",
            "Kafka client connections refused over max.connections.",
            "counter",
        );
        let _ = writeln!(
            out,
            "ferry_kafka_connections_rejected_total {}",
            self.connections_rejected.get()
        );
        header(
            out,
            "ferry_kafka_response_bytes_held",
            "Fetch response bytes held in memory until written, out of queued.max.response.bytes.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "ferry_kafka_response_bytes_held {}",
            self.response_bytes_held.get()
        );
        header(
            out,
            "ferry_log_fsync_duration_seconds",
            "Time an fsync of a partition log took.",
            "histogram",
        );
        self.fsync_duration
            .render(out, "ferry_log_fsync_duration_seconds", "");
        crate::quota::render(out);
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide registry.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Counts the records of stored batches from their headers, never decoding them.
pub fn count_records(batches: &[u8]) -> u64 {
    ferry_log::batch::batches(batches)
        .map_while(|b| b.ok())
        .map(|(h, _)| u64::try_from(h.records_count).unwrap_or(0))
        .sum()
}

/// A per-partition gauge: metric name, help text, how to read it.
type PartitionGauge = (&'static str, &'static str, fn(&crate::Partition) -> i64);

/// The whole scrape: the registry, then gauges read from `broker`'s state.
pub fn render(broker: &Broker) -> String {
    let mut out = String::with_capacity(16 * 1024);
    metrics().render(&mut out);
    let mut partitions = broker.partitions();
    partitions.sort_by(|a, b| a.tp.cmp(&b.tp));
    let gauges: [PartitionGauge; 4] = [
        (
            "ferry_partition_log_start_offset",
            "First offset still in a partition's log.",
            |p| p.log_start_offset(),
        ),
        (
            "ferry_partition_log_end_offset",
            "Offset the next record of a partition gets.",
            |p| p.log_end_offset(),
        ),
        (
            "ferry_partition_high_watermark",
            "Offset up to which a partition is readable.",
            |p| p.high_watermark(),
        ),
        (
            "ferry_partition_size_bytes",
            "Bytes of a partition's log segments.",
            |p| i64::try_from(p.log().size_bytes()).unwrap_or(i64::MAX),
        ),
    ];
    for (name, help, value) in gauges {
        header(&mut out, name, help, "gauge");
        for p in &partitions {
            let _ = writeln!(
                out,
                "{name}{{topic=\"{}\",partition=\"{}\"}} {}",
                escape(&p.tp.topic),
                p.tp.partition,
                value(p)
            );
        }
    }
    header(
        &mut out,
        "ferry_under_replicated_partitions",
        "Partitions whose in-sync replicas are fewer than their replicas.",
        "gauge",
    );
    // A single node is every partition's only replica.
    let _ = writeln!(out, "ferry_under_replicated_partitions 0");
    header(
        &mut out,
        "ferry_consumer_group_committed_offset",
        "Offset a consumer group committed for a partition.",
        "gauge",
    );
    let mut lag_lines = String::new();
    let groups = broker.groups();
    let mut overviews = groups.list();
    overviews.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    for g in overviews {
        let mut offsets = groups.fetch_offsets(&g.group_id, None);
        offsets.sort_by(|a, b| a.0.cmp(&b.0));
        for (tp, committed) in offsets {
            let Some(committed) = committed else { continue };
            let labels = format!(
                "group=\"{}\",topic=\"{}\",partition=\"{}\"",
                escape(&g.group_id),
                escape(&tp.topic),
                tp.partition
            );
            let _ = writeln!(
                out,
                "ferry_consumer_group_committed_offset{{{labels}}} {}",
                committed.offset
            );
            if let Some(p) = broker.partition(&tp) {
                let lag = (p.high_watermark() - committed.offset).max(0);
                let _ = writeln!(lag_lines, "ferry_consumer_group_lag{{{labels}}} {lag}");
            }
        }
    }
    header(
        &mut out,
        "ferry_consumer_group_lag",
        "Records between a group's committed offset and the high watermark.",
        "gauge",
    );
    out.push_str(&lag_lines);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counters_labelled() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "api=\"Fetch\"");
        assert!(
            out.contains("x_seconds_bucket{api=\"Fetch\",le=\"0.001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{api=\"Fetch\",le=\"0.01\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{api=\"Fetch\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_count{api=\"Fetch\"} 3\n"), "{out}");

        let f: Family<Counter> = Family::new("y_total", "help", &["topic"], Counter::default);
        f.with(&["a\"b"]).add(2);
        f.with(&["a\"b"]).inc();
        let mut out = String::new();
        f.render(&mut out);
        assert!(out.contains("# TYPE y_total counter\n"), "{out}");
        assert!(out.contains("y_total{topic=\"a\\\"b\"} 3\n"), "{out}");
    }

    #[test]
    fn records_are_counted_from_batch_headers() {
        let mut b = ferry_log::record::BatchBuilder::new(ferry_log::Compression::Lz4);
        for i in 0..5 {
            b.append(i, None, Some(bytes::Bytes::from("v")));
        }
        let mut two = b.build().expect("build");
        two.extend_from_slice(&b.build().expect("build"));
        assert_eq!(count_records(&two), 10);
        // A torn tail (a fetch cut mid-batch) counts the whole batches only.
        assert_eq!(count_records(&two[..two.len() - 3]), 5);
    }
}
