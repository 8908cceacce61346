//! Harness for ferry's end-to-end tests.
//!
//! Every test starts its own broker process (`ferry serve`) on an ephemeral
//! loopback port with its own temporary data directory, so the whole suite
//! runs in parallel. The broker's stderr goes to a file inside that temporary
//! directory; when a test panics while a [`Broker`] is alive, the tail of that
//! file is printed, so a failure shows what the broker said.
//!
//! ```text
//!   test ──spawn──▶ ferry serve --data-dir TMP/data --kafka-addr 127.0.0.1:0
//!     ▲                │ stdout: "ferry: kafka listening on 127.0.0.1:PORT"
//!     └── bootstrap ◀──┘ stderr: TMP/broker-stderr.log
//! ```
//!
//! Nothing here waits on time alone: loops poll a condition, bounded both in
//! iterations and by a generous deadline.

// Each test binary uses a different subset of the helpers.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::future_producer::Delivery;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tempfile::TempDir;

/// How long the broker may take to print its listening line.
pub const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a client operation may take before the test gives up.
pub const OP_DEADLINE: Duration = Duration::from_secs(30);
/// How long background work (retention, compaction) may take.
pub const BACKGROUND_DEADLINE: Duration = Duration::from_secs(90);

const READY_PREFIX: &str = "ferry: kafka listening on ";
const STDERR_FILE: &str = "broker-stderr.log";
const STDERR_TAIL_LINES: usize = 200;

/// A running `ferry serve` child process with its own data directory.
pub struct Broker {
    child: Option<Child>,
    dir: TempDir,
    extra_args: Vec<String>,
    extra_env: Vec<(String, String)>,
    addr: String,
    starts: u32,
    /// Every line the broker printed on stdout (all runs).
    stdout_lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Broker {
    /// Starts a broker with default settings.
    pub fn start() -> Broker {
        Broker::start_with(&[])
    }

    /// Starts a broker with extra command-line arguments after
    /// `serve --data-dir DIR --kafka-addr 127.0.0.1:0`, e.g.
    /// `&["--set", "num.partitions=3"]`.
    pub fn start_with(extra_args: &[&str]) -> Broker {
        Broker::start_with_env(extra_args, &[])
    }

    /// Like [`Broker::start_with`], with extra environment variables for the
    /// broker process (e.g. `FERRY_NUM_PARTITIONS`), kept for restarts.
    pub fn start_with_env(extra_args: &[&str], env: &[(&str, &str)]) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("ferry-e2e-")
            .tempdir()
            .expect("create temp dir for broker");
        let mut broker = Broker {
            child: None,
            dir,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            addr: String::new(),
            starts: 0,
            stdout_lines: Default::default(),
        };
        broker.spawn();
        broker
    }

    /// `host:port` to give clients as bootstrap servers.
    pub fn bootstrap(&self) -> String {
        self.addr.clone()
    }

    /// The bound port of the Kafka listener.
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("listening address has a port")
    }

    /// The HTTP listener's address from the `ferry: http listening on …`
    /// line of the current run, if the broker printed one.
    pub fn http_addr(&self) -> Option<String> {
        let mut found = None;
        wait_until(Duration::from_secs(5), || {
            found = self.stdout_lines.lock().ok().and_then(|lines| {
                lines.iter().rev().find_map(|l| {
                    l.strip_prefix("ferry: http listening on ")
                        .map(str::to_string)
                })
            });
            found.is_some()
        });
        found
    }

    /// The broker's data directory (kept across restarts).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Everything the broker wrote to stderr so far (all runs).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(STDERR_FILE)).unwrap_or_default()
    }

    /// The last lines of the broker's stderr, for failure messages.
    pub fn stderr_tail(&self) -> String {
        let all = self.stderr();
        let lines: Vec<&str> = all.lines().collect();
        let from = lines.len().saturating_sub(STDERR_TAIL_LINES);
        lines[from..].join("\n")
    }

    /// Kills the broker with SIGKILL and reaps it: no chance to flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status.
    /// Panics (with the broker's stderr) if it does not exit within the
    /// deadline.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with("TERM")
    }

    /// Sends `signal` (a name for `kill -s`, e.g. "TERM", "INT") and waits
    /// for the process to exit; returns its status.
    pub fn stop_with(&mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().expect("broker is running");
        let pid = child.id().to_string();
        let status = Command::new("kill")
            .args(["-s", signal, &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} {pid} failed");
        let deadline = Instant::now() + OP_DEADLINE;
        for _ in 0..10_000 {
            if let Some(status) = child.try_wait().expect("wait for broker") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "broker did not exit within {OP_DEADLINE:?} after SIG{signal}\n--- broker stderr ---\n{}",
                    self.stderr_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("broker did not exit after SIG{signal} (loop bound reached)");
    }

    /// Starts the broker again on the same data directory (a new ephemeral
    /// port: clients must be created again from [`Broker::bootstrap`]).
    /// A still-running broker is stopped with SIGTERM first.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            let status = self.stop();
            assert!(
                status.success(),
                "broker exited with {status} on SIGTERM\n--- broker stderr ---\n{}",
                self.stderr_tail()
            );
        }
        self.spawn();
    }

    /// Whether the child process is still alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let stderr_path = self.dir.path().join(STDERR_FILE);
        let mut stderr_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("open broker stderr file");
        {
            use std::io::Write;
            let _ = writeln!(
                stderr_file,
                "=== ferry test harness: start #{} ===",
                self.starts
            );
        }
        let data_dir = self.data_dir();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--kafka-addr")
            .arg("127.0.0.1:0");
        // An ephemeral HTTP port too, so brokers can run side by side, unless
        // the test chose one.
        let http_chosen = self
            .extra_args
            .iter()
            .any(|a| a == "--http-addr" || a.starts_with("--http-addr="))
            || self.extra_env.iter().any(|(k, _)| k == "FERRY_HTTP_ADDR");
        if !http_chosen {
            cmd.arg("--http-addr").arg("127.0.0.1:0");
        }
        cmd.args(&self.extra_args)
            .envs(self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // Plain text in the stderr file, which failures print.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file));
        let mut child = cmd.spawn().expect("spawn the ferry binary");
        let stdout = child.stdout.take().expect("child stdout is piped");

        // A thread reads stdout for the whole life of the process, so the
        // broker never blocks on a full pipe; it hands over the first line
        // that announces the listener.
        let (tx, rx) = mpsc::channel::<Result<String, String>>();
        let stdout_lines = self.stdout_lines.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut sent = false;
            let mut seen = Vec::new();
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if let Ok(mut lines) = stdout_lines.lock() {
                            if lines.len() < 1000 {
                                lines.push(line.trim_end().to_string());
                            }
                        }
                        if !sent {
                            if let Some(addr) = line.trim_end().strip_prefix(READY_PREFIX) {
                                let _ = tx.send(Ok(addr.to_string()));
                                sent = true;
                            } else if seen.len() < 100 {
                                seen.push(line);
                            }
                        }
                    }
                }
            }
            if !sent {
                let _ = tx.send(Err(format!(
                    "stdout closed before the listening line; stdout was:\n{}",
                    seen.concat()
                )));
            }
        });

        match rx.recv_timeout(START_DEADLINE) {
            Ok(Ok(addr)) => {
                self.addr = addr;
                self.child = Some(child);
            }
            Ok(Err(why)) => {
                let status = child.wait().ok();
                panic!(
                    "broker did not start ({why}); exit status {status:?}\n--- broker stderr ---\n{}",
                    self.stderr_tail()
                );
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "broker printed no '{READY_PREFIX}…' line within {START_DEADLINE:?}\n--- broker stderr ---\n{}",
                    self.stderr_tail()
                );
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- broker stderr (last {STDERR_TAIL_LINES} lines, data dir {}) ---\n{}\n--- end of broker stderr ---",
                self.data_dir().display(),
                self.stderr_tail()
            );
        }
    }
}

/// Polls `condition` until it returns true or the deadline passes. Returns
/// whether it became true. Bounded in iterations too.
pub fn wait_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(20);
    for _ in 0..100_000 {
        if condition() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
    false
}

/// Runs a future to completion on a small runtime (rdkafka's admin and
/// producer futures are driven by librdkafka's own threads).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build tokio runtime")
        .block_on(future)
}

/// A short name that no other test uses, so assertions cannot be confused
/// by leftovers. Topic names stay valid Kafka names.
pub fn unique_topic(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------
// rdkafka clients
// ---------------------------------------------------------------------------

/// Base client config: bootstrap plus quiet, fast-failing defaults.
pub fn client_config(broker: &Broker) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", broker.bootstrap())
        .set("client.id", "ferry-e2e")
        .set("socket.timeout.ms", "30000")
        .set("log_level", "4");
    config
}

/// A producer; `extra` overrides defaults (acks=all, no idempotence,
/// no batching delay, one request in flight).
///
/// One request in flight keeps each test about its own subject: the order of
/// pipelined Produce requests on one connection is checked by its own test
/// (`produce_fetch.rs`, `pipelined_produce_requests_keep_send_order`), which
/// overrides this.
pub fn producer(broker: &Broker, extra: &[(&str, &str)]) -> FutureProducer {
    let mut config = client_config(broker);
    config
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("max.in.flight.requests.per.connection", "1")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "30000")
        .set("topic.metadata.propagation.max.ms", "5000");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().expect("create rdkafka producer")
}

/// A consumer that is assigned partitions explicitly (no group membership,
/// no committed offsets: librdkafka needs a `group.id` for `assign` all the
/// same). Emits a partition-EOF event when it reaches the high watermark.
pub fn consumer(broker: &Broker, extra: &[(&str, &str)]) -> BaseConsumer {
    let mut config = client_config(broker);
    config
        .set("group.id", "ferry-e2e-assign-only")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().expect("create rdkafka consumer")
}

pub fn admin(broker: &Broker) -> AdminClient<DefaultClientContext> {
    client_config(broker)
        .create()
        .expect("create rdkafka admin client")
}

pub fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(OP_DEADLINE))
        .operation_timeout(Some(OP_DEADLINE))
}

/// Creates a topic through the admin API and panics unless it succeeds.
pub fn create_topic(broker: &Broker, name: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin = admin(broker);
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
    let results = block_on(admin.create_topics([&topic], &admin_options()))
        .unwrap_or_else(|e| panic!("create_topics({name}) failed: {e}"));
    assert_eq!(results.len(), 1);
    if let Err((topic, code)) = &results[0] {
        panic!("create_topics({topic}) returned {code:?}");
    }
    // Metadata is served by the same node, but wait until it is visible so
    // the next client does not race the creation.
    let ok = wait_until(OP_DEADLINE, || {
        partition_count(broker, name) == Some(partitions as usize)
    });
    assert!(ok, "topic {name} not visible in metadata after creation");
}

/// Number of partitions of `topic` according to a Metadata request for all
/// topics (which never auto-creates), or None when it is not listed.
pub fn partition_count(broker: &Broker, topic: &str) -> Option<usize> {
    let consumer = consumer(broker, &[]);
    let metadata = consumer.fetch_metadata(None, OP_DEADLINE).ok()?;
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
}

/// A record as the tests build and compare them.
#[derive(Clone, PartialEq, Eq)]
pub struct Rec {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Bytes as text for failure messages: lossy UTF-8, long values shortened.
fn show(bytes: &Option<Vec<u8>>) -> String {
    match bytes {
        None => "null".to_string(),
        Some(b) if b.len() > 60 => format!(
            "{:?}…({} bytes)",
            String::from_utf8_lossy(&b[..40]),
            b.len()
        ),
        Some(b) => format!("{:?}", String::from_utf8_lossy(b)),
    }
}

impl std::fmt::Debug for Rec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{{key: {}, value: {}",
            show(&self.key),
            show(&self.value)
        )?;
        for (k, v) in &self.headers {
            write!(f, ", {k:?}: {}", show(v))?;
        }
        write!(f, "}}")
    }
}

/// Asserts two record lists are equal; on failure names the count and the
/// first differing position instead of dumping both lists.
#[track_caller]
pub fn assert_same_records(got: &[Rec], want: &[Rec], context: &str) {
    if got == want {
        return;
    }
    let first_diff = got
        .iter()
        .zip(want)
        .position(|(g, w)| g != w)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{context}: records differ: got {} records, want {}; first difference at index {first_diff}:\n  got:  {:?}\n  want: {:?}",
        got.len(),
        want.len(),
        got.get(first_diff),
        want.get(first_diff)
    );
}

impl Rec {
    pub fn kv(key: &str, value: &str) -> Rec {
        Rec {
            key: Some(key.as_bytes().to_vec()),
            value: Some(value.as_bytes().to_vec()),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, key: &str, value: Option<&[u8]>) -> Rec {
        self.headers
            .push((key.to_string(), value.map(|v| v.to_vec())));
        self
    }

    pub fn of(message: &OwnedMessage) -> Rec {
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|hd| (hd.key.to_string(), hd.value.map(|v| v.to_vec())))
                    .collect()
            })
            .unwrap_or_default();
        Rec {
            key: message.key().map(|k| k.to_vec()),
            value: message.payload().map(|v| v.to_vec()),
            headers,
        }
    }

    fn owned_headers(&self) -> Option<OwnedHeaders> {
        if self.headers.is_empty() {
            return None;
        }
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len());
        for (key, value) in &self.headers {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        Some(headers)
    }
}

/// Sends one record and waits for its delivery report.
pub fn send(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    timestamp: Option<i64>,
    rec: &Rec,
) -> Result<Delivery, KafkaError> {
    let future = send_async(producer, topic, partition, timestamp, rec);
    block_on(future)
}

/// Enqueues one record; the returned future resolves with its delivery report.
pub fn send_async(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    timestamp: Option<i64>,
    rec: &Rec,
) -> impl std::future::Future<Output = Result<Delivery, KafkaError>> {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
    if let Some(key) = &rec.key {
        record = record.key(key.as_slice());
    }
    if let Some(value) = &rec.value {
        record = record.payload(value.as_slice());
    }
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    if let Some(timestamp) = timestamp {
        record = record.timestamp(timestamp);
    }
    if let Some(headers) = rec.owned_headers() {
        record = record.headers(headers);
    }
    let enqueued = producer.send_result(record).map_err(|(e, _)| e);
    async move {
        match enqueued {
            Ok(delivery) => match delivery.await {
                Ok(Ok(delivery)) => Ok(delivery),
                Ok(Err((e, _))) => Err(e),
                Err(_canceled) => Err(KafkaError::Canceled),
            },
            Err(e) => Err(e),
        }
    }
}

/// Sends all records (pipelined) and returns their delivery reports in order;
/// panics on the first failure.
pub fn send_all(
    producer: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    recs: &[Rec],
) -> Vec<Delivery> {
    let futures: Vec<_> = recs
        .iter()
        .map(|r| send_async(producer, topic, partition, None, r))
        .collect();
    block_on(async {
        let mut out = Vec::with_capacity(futures.len());
        for (i, f) in futures.into_iter().enumerate() {
            match f.await {
                Ok(d) => out.push(d),
                Err(e) => panic!("delivery of record {i} to {topic} failed: {e}"),
            }
        }
        out
    })
}

/// Reads partition `partition` of `topic` from `from` up to the high
/// watermark (the consumer's partition-EOF event) and returns every record.
/// Panics on a consumer error or when the end is not reached in time.
pub fn read_all(broker: &Broker, topic: &str, partition: i32, from: Offset) -> Vec<OwnedMessage> {
    match try_read_all(broker, topic, partition, from, &[]) {
        Ok(messages) => messages,
        Err(e) => panic!("reading {topic}/{partition} from {from:?} failed: {e}"),
    }
}

/// Like [`read_all`] but returns the first consumer error instead of
/// panicking.
pub fn try_read_all(
    broker: &Broker,
    topic: &str,
    partition: i32,
    from: Offset,
    extra: &[(&str, &str)],
) -> Result<Vec<OwnedMessage>, KafkaError> {
    let consumer = consumer(broker, extra);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, from)
        .expect("build assignment");
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let end = Instant::now() + OP_DEADLINE;
    for _ in 0..1_000_000 {
        if Instant::now() > end {
            return Err(KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::RequestTimedOut,
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Ok(m)) => {
                if m.topic() == topic && m.partition() == partition {
                    out.push(m.detach());
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) if p == partition => return Ok(out),
            Some(Err(KafkaError::PartitionEOF(_))) => continue,
            Some(Err(e)) => return Err(e),
        }
    }
    Err(KafkaError::MessageConsumption(
        rdkafka::types::RDKafkaErrorCode::RequestTimedOut,
    ))
}

/// Polls `consumer` until `n` records arrived (panics on errors other than
/// partition EOF, or when the deadline passes).
pub fn poll_n(consumer: &BaseConsumer, n: usize, deadline: Duration) -> Vec<OwnedMessage> {
    let mut out = Vec::new();
    let end = Instant::now() + deadline;
    for _ in 0..1_000_000 {
        if out.len() >= n {
            break;
        }
        assert!(
            Instant::now() <= end,
            "only {} of {n} records arrived within {deadline:?}",
            out.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => out.push(m.detach()),
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => panic!("consumer error after {} records: {e}", out.len()),
        }
    }
    out
}

/// Polls until the consumer reports partition EOF (its position is resolved
/// and it caught up); returns records seen on the way.
pub fn poll_until_eof(consumer: &BaseConsumer, deadline: Duration) -> Vec<OwnedMessage> {
    let mut out = Vec::new();
    let end = Instant::now() + deadline;
    for _ in 0..1_000_000 {
        assert!(
            Instant::now() <= end,
            "no partition EOF within {deadline:?}"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => out.push(m.detach()),
            Some(Err(KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("consumer error: {e}"),
        }
    }
    out
}

/// (low, high) watermarks of a partition via ListOffsets.
pub fn watermarks(broker: &Broker, topic: &str, partition: i32) -> (i64, i64) {
    let consumer = consumer(broker, &[]);
    consumer
        .fetch_watermarks(topic, partition, OP_DEADLINE)
        .unwrap_or_else(|e| panic!("fetch_watermarks({topic}/{partition}) failed: {e}"))
}

pub fn recs_of(messages: &[OwnedMessage]) -> Vec<Rec> {
    messages.iter().map(Rec::of).collect()
}

pub fn offsets_of(messages: &[OwnedMessage]) -> Vec<i64> {
    messages.iter().map(|m| m.offset()).collect()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Every file and directory under `root`, recursively (bounded).
pub fn list_tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if out.len() > 100_000 {
            break;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// External programs (kafka-python, kcat)
// ---------------------------------------------------------------------------

/// Output of an external program run by a test.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` with `stdin` as input, killing it if it outlives `deadline`.
pub fn run_with_deadline(mut cmd: Command, stdin: &[u8], deadline: Duration) -> Output {
    let dir = tempfile::tempdir().expect("temp dir for program output");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let described = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("could not run {described}: {e}"));
    {
        use std::io::Write;
        let mut child_stdin = child.stdin.take().expect("piped stdin");
        child_stdin.write_all(stdin).expect("write program stdin");
    }
    let end = Instant::now() + deadline;
    let mut status = None;
    for _ in 0..1_000_000 {
        if let Some(s) = child.try_wait().expect("wait for program") {
            status = Some(s);
            break;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let read = |p: &Path| {
        let mut s = String::new();
        File::open(p)
            .and_then(|mut f| f.read_to_string(&mut s))
            .map(|_| s)
            .unwrap_or_default()
    };
    let stdout = read(&out_path);
    let stderr = read(&err_path);
    let Some(status) = status else {
        panic!("{described} did not finish within {deadline:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    };
    Output {
        status,
        stdout,
        stderr,
    }
}

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("workspace root above crates/ferry")
        .to_path_buf()
}

/// The Python interpreter with kafka-python: `FERRY_PYTHON`, else the
/// workspace's `.venv`. Panics with instructions when neither exists: these
/// tests never skip silently.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_PYTHON") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "FERRY_PYTHON={} does not exist; run scripts/test.sh, which creates .venv with kafka-python",
            p.display()
        );
        return p;
    }
    let venv = workspace_root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no Python with kafka-python: set FERRY_PYTHON or run scripts/test.sh (it creates {})",
        venv.display()
    );
    venv
}

/// Path of a script under `crates/ferry/tests/python/`.
pub fn python_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// A file for a kafka-python script's debug log (the scripts write it when
/// `FERRY_PY_LOG` names it); a test prints its tail when it fails.
pub struct PythonLog {
    file: tempfile::NamedTempFile,
}

impl PythonLog {
    pub fn new() -> PythonLog {
        PythonLog {
            file: tempfile::NamedTempFile::new().expect("a temp file for the python log"),
        }
    }

    /// The environment variable that tells the script where to log.
    pub fn env(&self) -> (&'static str, &Path) {
        ("FERRY_PY_LOG", self.file.path())
    }

    /// The last `lines` lines written so far.
    pub fn tail(&self, lines: usize) -> String {
        let all = std::fs::read_to_string(self.file.path()).unwrap_or_default();
        let all: Vec<&str> = all.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Default for PythonLog {
    fn default() -> Self {
        Self::new()
    }
}

/// The `kcat` program; panics with instructions when it is missing.
pub fn kcat() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["kcat", "kafkacat"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("kcat is not installed: run scripts/test.sh (it installs Debian's kcat) or apt-get install kcat");
}
