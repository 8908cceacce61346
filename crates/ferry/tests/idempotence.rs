//! Idempotent producers (librdkafka, `enable.idempotence=true`) across broker
//! crashes: every acknowledged record exactly once, in order per partition.

mod common;
mod eos_support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use eos_support::Proxy;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::Offset;

const PARTITIONS: i32 = 3;
const KILLS: usize = 4;
/// Records the sender enqueues per partition at most (bounds the test).
const RECORDS_MAX: usize = 60_000;

fn start_behind(proxy: &Proxy) -> Broker {
    let broker = Broker::start_with(&["--advertised-kafka-addr", &proxy.addr()]);
    proxy.point_to(broker.port());
    broker
}

fn idempotent_producer(bootstrap: &str) -> FutureProducer {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5")
        .set("linger.ms", "2")
        .set("batch.num.messages", "50")
        .set("message.timeout.ms", "80000")
        .set("retry.backoff.ms", "50")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500")
        .set("log_level", "3");
    config.create().expect("create idempotent producer")
}

#[test]
fn idempotent_producer_survives_kill9_with_every_acked_record_once_in_order() {
    let proxy = Proxy::start();
    let mut broker = start_behind(&proxy);
    let topic = unique_topic("idem");
    create_topic(&broker, &topic, PARTITIONS, &[]);

    let producer = Arc::new(idempotent_producer(&proxy.addr()));
    let stop = Arc::new(AtomicBool::new(false));
    // (partition, sequence number) of every record whose delivery was acknowledged.
    let acked: Arc<Mutex<Vec<(i32, usize)>>> = Arc::new(Mutex::new(Vec::new()));
    let failed: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let sender = {
        let (producer, stop, acked, failed, topic) = (
            producer.clone(),
            stop.clone(),
            acked.clone(),
            failed.clone(),
            topic.clone(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            let mut pending = Vec::new();
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) && sent < RECORDS_MAX {
                for p in 0..PARTITIONS {
                    let value = format!("{sent}");
                    let key = format!("p{p}");
                    let record: FutureRecord<'_, str, str> = FutureRecord::to(&topic)
                        .partition(p)
                        .key(key.as_str())
                        .payload(value.as_str());
                    match producer.send_result(record) {
                        Ok(delivery) => {
                            let (acked, failed) = (acked.clone(), failed.clone());
                            let seq = sent;
                            pending.push(rt.spawn(async move {
                                match delivery.await {
                                    Ok(Ok(_)) => acked.lock().expect("lock").push((p, seq)),
                                    Ok(Err((e, _))) => {
                                        failed.lock().expect("lock").push(e.to_string())
                                    }
                                    Err(_) => failed.lock().expect("lock").push("canceled".into()),
                                }
                            }));
                        }
                        Err((e, _)) => {
                            // Queue full: let deliveries drain.
                            let _ = e;
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    }
                }
                sent += 1;
                if sent.is_multiple_of(50) {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            let _ = producer.flush(Duration::from_secs(85));
            rt.block_on(async {
                for p in pending {
                    let _ = p.await;
                }
            });
            sent
        })
    };

    for round in 0..KILLS {
        // Let some records be acknowledged by this run, then crash it.
        let before = acked.lock().expect("lock").len();
        let ok = wait_until(BACKGROUND_DEADLINE, || {
            acked.lock().expect("lock").len() >= before + 300
        });
        assert!(
            ok,
            "round {round}: no progress after a restart; failures: {:?}",
            failed.lock().expect("lock").first()
        );
        broker.kill9();
        std::thread::sleep(Duration::from_millis(50 * (round as u64 + 1)));
        broker.restart();
        proxy.point_to(broker.port());
    }
    let before = acked.lock().expect("lock").len();
    assert!(
        wait_until(BACKGROUND_DEADLINE, || acked.lock().expect("lock").len()
            >= before + 300),
        "no progress after the last restart"
    );
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().expect("sender thread");
    let failed = failed.lock().expect("lock").clone();
    assert!(
        failed.is_empty(),
        "{} deliveries failed, first: {}",
        failed.len(),
        failed[0]
    );

    let acked = acked.lock().expect("lock").clone();
    eprintln!(
        "sent {sent} rounds of {PARTITIONS} records, {} acknowledged, {KILLS} SIGKILLs",
        acked.len()
    );
    let mut want: BTreeMap<i32, Vec<usize>> = BTreeMap::new();
    for (p, seq) in acked {
        want.entry(p).or_default().push(seq);
    }
    let deadline = Instant::now() + OP_DEADLINE * 2;
    for p in 0..PARTITIONS {
        let got: Vec<usize> = read_all(&broker, &topic, p, Offset::Beginning)
            .iter()
            .map(|m| {
                String::from_utf8_lossy(m.payload().expect("value"))
                    .parse()
                    .expect("number")
            })
            .collect();
        let mut counts: HashMap<usize, usize> = HashMap::new();
        for v in &got {
            *counts.entry(*v).or_default() += 1;
        }
        let dups: Vec<_> = counts
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(v, _)| *v)
            .collect();
        assert!(
            dups.is_empty(),
            "partition {p}: {} records written twice, e.g. {:?}",
            dups.len(),
            &dups[..dups.len().min(5)]
        );
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "partition {p}: records out of order"
        );
        let missing: Vec<_> = want
            .get(&p)
            .into_iter()
            .flatten()
            .filter(|s| !counts.contains_key(s))
            .collect();
        assert!(
            missing.is_empty(),
            "partition {p}: {} acknowledged records missing, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        assert!(Instant::now() < deadline, "reading back took too long");
    }
    assert!(sent > 0);
}
