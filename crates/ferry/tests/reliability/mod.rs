//! Helpers for the reliability tests (torture, torn files, full disk, limits):
//! a broker process with a data dir and address chosen by the test (so it can
//! sit on a tmpfs, or come back on the same port after a SIGKILL, which lets
//! producers keep their state), raw Kafka frames, `ferry log verify`, and
//! /proc figures (RSS, open fds).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::produce_response::ProduceResponse;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

pub const DEADLINE: Duration = Duration::from_secs(30);
const READY_PREFIX: &str = "ferry: kafka listening on ";

/// `ferry serve` on a given data dir and address.
pub struct Proc {
    child: Option<Child>,
    pub data_dir: PathBuf,
    /// What `--kafka-addr` asks for; after a start, the bound address.
    pub addr: String,
    args: Vec<String>,
    /// A command the broker runs under (e.g. `ip netns exec NS`); empty for none.
    prefix: Vec<String>,
    stderr: PathBuf,
    pub starts: u32,
}

impl Proc {
    /// Starts a broker; `addr` may be `127.0.0.1:0` (a fresh port each start) or a
    /// fixed port (kept across restarts).
    pub fn start(data_dir: &Path, addr: &str, args: &[&str]) -> Proc {
        Proc::start_under(&[], data_dir, addr, args)
    }

    /// Like [`Proc::start`], but a broker that does not start is an `Err`
    /// with its stderr (e.g. to retry on a port another process took).
    pub fn try_start(data_dir: &Path, addr: &str, args: &[&str]) -> Result<Proc, String> {
        let mut p = Proc::unstarted(&[], data_dir, addr, args);
        match p.try_spawn(addr.to_string()) {
            Ok(()) => Ok(p),
            Err(e) => Err(format!("{e}\n--- broker stderr ---\n{}", p.stderr_tail(20))),
        }
    }

    /// Like [`Proc::start`], with the broker run under `prefix` (a command that
    /// runs its arguments, such as `ip netns exec NS`), also on restarts.
    pub fn start_under(prefix: &[&str], data_dir: &Path, addr: &str, args: &[&str]) -> Proc {
        let mut p = Proc::unstarted(prefix, data_dir, addr, args);
        p.spawn(addr.to_string());
        p
    }

    fn unstarted(prefix: &[&str], data_dir: &Path, addr: &str, args: &[&str]) -> Proc {
        let stderr = data_dir.with_extension("stderr.log");
        Proc {
            child: None,
            data_dir: data_dir.to_path_buf(),
            addr: addr.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
            stderr,
            starts: 0,
        }
    }

    /// Starts the process; panics with its stderr if it does not start.
    fn spawn(&mut self, addr: String) {
        if let Err(e) = self.try_spawn(addr) {
            panic!("{e}\n--- broker stderr ---\n{}", self.stderr_tail(80));
        }
    }

    fn try_spawn(&mut self, addr: String) -> Result<(), String> {
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)
            .map_err(|e| e.to_string())?;
        let _ = writeln!(log, "=== start #{} ===", self.starts);
        let mut command = match self.prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(env!("CARGO_BIN_EXE_ferry"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_ferry")),
        };
        let mut child = command
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--kafka-addr")
            .arg(&addr)
            .arg("--http-addr")
            .arg("127.0.0.1:0")
            .args(&self.args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("spawn ferry: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let (false, Some(a)) = (sent, line.strip_prefix(READY_PREFIX)) {
                    let _ = tx.send(a.to_string());
                    sent = true;
                }
            }
        });
        match rx.recv_timeout(DEADLINE) {
            Ok(bound) => {
                self.addr = bound;
                self.child = Some(child);
                Ok(())
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                Err(format!("broker did not start: {status:?}"))
            }
        }
    }

    /// One attempt to start again on the same data dir and address, for a start
    /// that is meant to fail: the failure, with the broker's stderr.
    pub fn try_restart(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "restart of a running broker");
        let addr = self.addr.clone();
        self.try_spawn(addr)
            .map_err(|e| format!("{e}\n--- broker stderr ---\n{}", self.stderr_tail(20)))
    }

    /// Starts again on the same data dir and the same address (retrying while the
    /// port is still held by a socket of the killed process).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running broker");
        let addr = self.addr.clone();
        let end = Instant::now() + DEADLINE;
        loop {
            match self.try_spawn(addr.clone()) {
                Ok(()) => return,
                Err(e) if Instant::now() > end => {
                    panic!("{e}\n--- broker stderr ---\n{}", self.stderr_tail(80))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait; asserts a clean exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-s", "TERM", &child.id().to_string()])
            .status();
        let end = Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(status.success(), "broker exited with {status}");
                return;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("broker did not stop\n{}", self.stderr_tail(80));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(|c| c.id())
            .expect("broker is running")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn stderr_tail(&self, n: usize) -> String {
        let all = self.stderr();
        let lines: Vec<&str> = all.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Resident set size in KiB (VmRSS of /proc/<pid>/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc status")
    }

    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- broker stderr (data dir {}) ---\n{}",
                self.data_dir.display(),
                self.stderr_tail(150)
            );
        }
    }
}

/// Runs `ferry log verify DIR` and returns (success, stdout + stderr).
pub fn verify(data_dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["log", "verify"])
        .arg(data_dir)
        .output()
        .expect("run ferry log verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("client.id", "ferry-reliability")
        .set("log_level", "3");
    c
}

/// Creates a topic through the admin API.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        client(bootstrap).create().expect("admin client");
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        new = new.set(k, v);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let results = runtime
        .block_on(admin.create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(DEADLINE)),
        ))
        .expect("create_topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

/// Every record of `topic`/`partition` from the beginning to the high watermark.
pub fn read_partition(
    bootstrap: &str,
    topic: &str,
    partition: i32,
) -> Result<Vec<OwnedMessage>, KafkaError> {
    let consumer: BaseConsumer = client(bootstrap)
        .set("group.id", "ferry-reliability-reader")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("check.crcs", "true")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .expect("assignment");
    consumer.assign(&tpl)?;
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => out.push(m.detach()),
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(out),
            Some(Err(e)) => return Err(e),
        }
    }
    Err(KafkaError::MessageConsumption(
        rdkafka::types::RDKafkaErrorCode::RequestTimedOut,
    ))
}

pub fn values(messages: &[OwnedMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned())
        .collect()
}

// --- raw frames ---------------------------------------------------------------

pub fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s.set_write_timeout(Some(DEADLINE)).expect("timeout");
    s
}

pub fn encode_request<R: Encodable + HeaderVersion>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    request: &R,
) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("ferry-raw")));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, R::header_version(version))
        .expect("header");
    request.encode(&mut buf, version).expect("body");
    let mut frame = (buf.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&buf);
    frame
}

/// Reads one response frame; `None` when the connection was closed.
pub fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    if let Err(e) = stream.read_exact(&mut len) {
        assert!(
            matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
            ),
            "read failed: {e}"
        );
        return None;
    }
    let mut body = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(body)
}

/// One RecordBatch v2 of `n` records with values `{prefix}{i}` padded with dots
/// to `value_bytes`.
pub fn record_batch(prefix: &str, n: usize, value_bytes: usize) -> Bytes {
    let mut builder = ferry_log::BatchBuilder::new(ferry_log::Compression::None);
    for i in 0..n {
        let mut value = format!("{prefix}{i}").into_bytes();
        value.resize(value.len().max(value_bytes), b'.');
        builder.append(1_700_000_000_000 + i as i64, None, Some(Bytes::from(value)));
    }
    Bytes::from(builder.build().expect("build batch"))
}

pub const PRODUCE_VERSION: i16 = 9;

pub fn produce_frame(topic: &str, partition: i32, records: Bytes, correlation_id: i32) -> Vec<u8> {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(records))])]);
    encode_request(ApiKey::Produce, PRODUCE_VERSION, correlation_id, &request)
}

/// Produces `records` with acks=all on a new connection; returns the error code.
pub fn produce_raw(addr: &str, topic: &str, partition: i32, records: Bytes) -> i16 {
    let mut stream = connect(addr);
    stream
        .write_all(&produce_frame(topic, partition, records, 5))
        .expect("send produce");
    let frame = read_frame(&mut stream).expect("produce response");
    let mut buf = Bytes::from(frame);
    ResponseHeader::decode(&mut buf, ProduceResponse::header_version(PRODUCE_VERSION))
        .expect("response header");
    let response = ProduceResponse::decode(&mut buf, PRODUCE_VERSION).expect("produce response");
    response.responses[0].partition_responses[0].error_code
}
