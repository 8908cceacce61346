//! Crash torture: idempotent `acks=all` librdkafka producers write to several
//! partitions while the broker is killed with SIGKILL at random moments (at least
//! 20 times) and restarted on the same port. Afterwards every record whose
//! delivery was acknowledged must be in its partition exactly once, and each
//! producer's records in a partition in the order it sent them; `ferry log verify`
//! must find nothing wrong. Bounded to about three minutes.

mod reliability;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use reliability::*;

const TOPIC: &str = "torture";
const PARTITIONS: i32 = 4;
const PRODUCERS: usize = 3;
const KILLS: usize = 22;
/// Messages per second per producer.
const RATE: u64 = 400;

/// Records acknowledged to one producer: (partition, value).
#[derive(Default)]
struct Acks {
    acked: Mutex<Vec<(i32, String)>>,
    failed: AtomicU64,
}

struct Context(Arc<Acks>);

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                if let Ok(mut acked) = self.0.acked.lock() {
                    acked.push((m.partition(), value));
                }
            }
            Err(_) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A small xorshift generator: the test needs varied kill moments, not quality.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("pick a free port")
        .port()
}

fn produce_loop(id: usize, addr: String, acks: Arc<Acks>, stop: Arc<AtomicBool>) -> u64 {
    let producer: ThreadedProducer<Context> = client(&addr)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000")
        .set("request.timeout.ms", "5000")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500")
        .set("retry.backoff.ms", "50")
        .set("log_level", "0")
        .create_with_context(Context(acks))
        .expect("producer");
    let started = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Acquire) {
        // Pace to RATE per second.
        let due = started.elapsed().as_millis() as u64 * RATE / 1000;
        if sent >= due {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let partition = (sent % PARTITIONS as u64) as i32;
        let value = format!("p{id}-{sent:08}");
        let key = format!("k{sent}");
        let mut record = BaseRecord::to(TOPIC)
            .partition(partition)
            .key(&key)
            .payload(&value);
        // Queue full while the broker is down: wait for room.
        for _ in 0..10_000 {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                }
            }
        }
        sent += 1;
    }
    // Deliver or fail everything still queued.
    let _ = producer.flush(Duration::from_secs(90));
    sent
}

#[test]
fn acknowledged_records_survive_repeated_sigkill_exactly_once_and_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut broker = Proc::start(&data, &addr, &[]);
    create_topic(
        &broker.addr,
        TOPIC,
        PARTITIONS,
        &[("segment.bytes", "262144")],
    );

    let stop = Arc::new(AtomicBool::new(false));
    let acks: Vec<Arc<Acks>> = (0..PRODUCERS).map(|_| Arc::new(Acks::default())).collect();
    let producers: Vec<_> = acks
        .iter()
        .enumerate()
        .map(|(id, a)| {
            let (addr, a, stop) = (broker.addr.clone(), a.clone(), stop.clone());
            std::thread::spawn(move || produce_loop(id, addr, a, stop))
        })
        .collect();

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    eprintln!("torture: seed {seed}");
    let mut rng = Rng(seed);
    let mut kills = 0;
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(1_000 + rng.below(3_000)));
        broker.kill9();
        kills += 1;
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        broker.restart();
    }
    // Let the producers catch up with a live broker, then stop them.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Release);
    let sent: u64 = producers
        .into_iter()
        .map(|p| p.join().expect("producer thread"))
        .sum();

    broker.stop();
    let (verified, report) = verify(&data);
    broker.restart();

    // Everything in the log, per partition, in offset order.
    let mut found: HashMap<String, usize> = HashMap::new();
    let mut order_errors = Vec::new();
    let mut total_found = 0usize;
    for partition in 0..PARTITIONS {
        let records = read_partition(&broker.addr, TOPIC, partition).expect("consume");
        total_found += records.len();
        let mut last_seq: HashMap<String, u64> = HashMap::new();
        for v in values(&records) {
            *found.entry(format!("{partition}/{v}")).or_default() += 1;
            let (producer, seq) = v.split_once('-').expect("value format");
            let seq: u64 = seq.parse().expect("sequence");
            if let Some(prev) = last_seq.insert(producer.to_string(), seq) {
                if seq <= prev && order_errors.len() < 10 {
                    order_errors.push(format!(
                        "partition {partition}: {producer} {seq} after {prev}"
                    ));
                }
            }
        }
    }
    let duplicates: usize = found.values().map(|n| n.saturating_sub(1)).sum();
    let acked: Vec<(i32, String)> = acks
        .iter()
        .flat_map(|a| a.acked.lock().map(|v| v.clone()).unwrap_or_default())
        .collect();
    let failed: u64 = acks.iter().map(|a| a.failed.load(Ordering::Relaxed)).sum();
    let lost: Vec<&(i32, String)> = acked
        .iter()
        .filter(|(p, v)| !found.contains_key(&format!("{p}/{v}")))
        .collect();
    eprintln!(
        "torture figures: kills={kills} sent={sent} acknowledged={} failed_deliveries={failed} \
         found={total_found} duplicates={duplicates} lost={} order_errors={}",
        acked.len(),
        lost.len(),
        order_errors.len()
    );
    broker.stop();

    assert!(kills >= 20, "only {kills} kills");
    assert!(!acked.is_empty(), "nothing was acknowledged");
    assert!(
        lost.is_empty(),
        "{} acknowledged records are missing, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(verified, "ferry log verify after the torture:\n{report}");
    assert!(
        order_errors.is_empty(),
        "records out of order: {order_errors:?}"
    );
    assert_eq!(duplicates, 0, "records stored more than once");
}
