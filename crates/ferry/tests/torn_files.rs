//! Torn and corrupt files: a broker is stopped, a file of its data dir is cut,
//! garbled or deleted, and the broker started again. Startup must recover to the
//! last valid batch, say in its log what it dropped, and a real client must read
//! back exactly the records that survive — never garbage. Afterwards
//! `ferry log verify` finds nothing wrong.

mod reliability;

use std::fs;
use std::path::{Path, PathBuf};

use reliability::*;

const TOPIC: &str = "torn";
const BATCHES: usize = 8;
const PER_BATCH: usize = 5;

/// A stopped broker whose partition holds `BATCHES` batches of `PER_BATCH` records.
/// `crashed`: it was killed with SIGKILL, so its recovery point is still where the
/// last start left it (0) and the next start scans and checks every batch, as after
/// a real crash. Otherwise it stopped cleanly and the next start trusts what was
/// fsynced (Kafka's recovery point) and checks only what follows.
struct Setup {
    _dir: tempfile::TempDir,
    broker: Proc,
    data: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        Setup::stopped(false)
    }

    fn crashed() -> Setup {
        Setup::stopped(true)
    }

    fn stopped(crash: bool) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let mut broker = Proc::start(&data, "127.0.0.1:0", &[]);
        // Small index interval: the index has several entries to damage.
        create_topic(&broker.addr, TOPIC, 1, &[("index.interval.bytes", "100")]);
        for b in 0..BATCHES {
            let code = produce_raw(
                &broker.addr,
                TOPIC,
                0,
                record_batch(&format!("b{b}-r"), PER_BATCH, 40),
            );
            assert_eq!(code, 0, "produce batch {b}");
        }
        if crash {
            broker.kill9();
        } else {
            broker.stop();
        }
        Setup {
            _dir: dir,
            broker,
            data,
        }
    }

    fn partition_dir(&self) -> PathBuf {
        self.data.join(format!("{TOPIC}-0"))
    }

    fn file(&self, suffix: &str) -> PathBuf {
        self.partition_dir().join(format!("{:020}{suffix}", 0))
    }

    /// Restarts, reads everything back, checks it is exactly the first `batches`
    /// batches, then stops and runs `ferry log verify`.
    fn expect_batches(&mut self, batches: usize, what: &str) {
        self.broker.restart();
        let got = values(&read_partition(&self.broker.addr, TOPIC, 0).expect("consume"));
        let got: Vec<String> = got
            .iter()
            .map(|v| v.trim_end_matches('.').to_string())
            .collect();
        assert_eq!(got, expected(batches), "records after {what}");
        // And the log still takes appends after the recovered end.
        let code = produce_raw(&self.broker.addr, TOPIC, 0, record_batch("after-", 1, 10));
        assert_eq!(code, 0, "produce after {what}");
        self.broker.stop();
        let (ok, report) = verify(&self.data);
        assert!(ok, "ferry log verify after {what}:\n{report}");
    }
}

fn expected(batches: usize) -> Vec<String> {
    (0..batches)
        .flat_map(|b| (0..PER_BATCH).map(move |r| format!("b{b}-r{r}")))
        .collect()
}

/// Byte positions at which each batch starts in a `.log` file.
fn batch_starts(log: &Path) -> Vec<usize> {
    let bytes = fs::read(log).expect("read log");
    let mut starts = Vec::new();
    let mut at = 0;
    while at + 12 <= bytes.len() {
        starts.push(at);
        let len = i32::from_be_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
        at += 12 + len as usize;
    }
    starts
}

#[test]
fn cut_inside_the_last_batch_drops_only_that_batch() {
    let mut s = Setup::new();
    let log = s.file(".log");
    let starts = batch_starts(&log);
    assert_eq!(starts.len(), BATCHES);
    let cut = starts[BATCHES - 1] + 30;
    let f = fs::OpenOptions::new().write(true).open(&log).expect("open");
    f.set_len(cut as u64).expect("cut");
    drop(f);
    s.expect_batches(BATCHES - 1, "a torn last batch");
    assert!(
        s.broker
            .stderr()
            .contains("truncated a torn or corrupt tail"),
        "the broker logs what it dropped:\n{}",
        s.broker.stderr_tail(30)
    );
}

#[test]
fn garbled_record_bytes_after_a_crash_fail_the_crc_and_the_tail_is_dropped() {
    let mut s = Setup::crashed();
    let log = s.file(".log");
    let starts = batch_starts(&log);
    let mut bytes = fs::read(&log).expect("read");
    // Inside the records of batch 5: everything from there on goes.
    bytes[starts[5] + 70] ^= 0x5a;
    fs::write(&log, &bytes).expect("write");
    s.expect_batches(
        5,
        "a garbled batch in the unflushed part of the active segment",
    );
    assert!(s.broker.stderr().contains("dropped_bytes"));
}

/// Bytes below the recovery point were fsynced; like Kafka, startup does not
/// re-read them and fetches serve stored batches without recomputing their CRC.
/// If they rot anyway, `ferry log verify` finds them and a client that checks
/// CRCs (librdkafka's `check.crcs`) refuses them rather than taking them as records.
#[test]
fn bit_rot_below_the_recovery_point_is_caught_by_verify_and_client_crc_checks() {
    let mut s = Setup::new();
    let log = s.file(".log");
    let starts = batch_starts(&log);
    let mut bytes = fs::read(&log).expect("read");
    bytes[starts[5] + 70] ^= 0x5a;
    fs::write(&log, &bytes).expect("write");
    let (ok, report) = verify(&s.data);
    assert!(
        !ok && report.contains("CRC"),
        "verify finds the rot:\n{report}"
    );
    s.broker.restart();
    match read_partition(&s.broker.addr, TOPIC, 0) {
        Ok(got) => panic!("a corrupt batch was served as records: {:?}", values(&got)),
        Err(e) => eprintln!("consumer stopped at the corrupt batch: {e}"),
    }
    s.broker.stop();
}

#[test]
fn garbage_after_the_last_batch_is_cut() {
    let mut s = Setup::new();
    let log = s.file(".log");
    let mut bytes = fs::read(&log).expect("read");
    bytes.extend_from_slice(&[0xff; 37]);
    fs::write(&log, &bytes).expect("write");
    s.expect_batches(BATCHES, "garbage after the last batch");
}

#[test]
fn zeroed_tail_as_after_a_power_loss_is_cut() {
    let mut s = Setup::new();
    let log = s.file(".log");
    let mut bytes = fs::read(&log).expect("read");
    bytes.extend_from_slice(&[0u8; 4096]);
    fs::write(&log, &bytes).expect("write");
    s.expect_batches(BATCHES, "a zero-filled tail");
}

#[test]
fn deleted_indexes_are_rebuilt() {
    let mut s = Setup::new();
    fs::remove_file(s.file(".index")).expect("rm index");
    fs::remove_file(s.file(".timeindex")).expect("rm timeindex");
    s.expect_batches(BATCHES, "deleting the indexes");
    assert!(s.file(".index").exists(), "index rebuilt");
}

#[test]
fn garbled_and_torn_indexes_are_rebuilt() {
    let mut s = Setup::new();
    let index = s.file(".index");
    let len = fs::metadata(&index).expect("index").len();
    assert!(len >= 16, "the index has entries to damage ({len} bytes)");
    let mut bytes = fs::read(&index).expect("read");
    for b in bytes.iter_mut().skip(4) {
        *b = b.wrapping_mul(31).wrapping_add(7);
    }
    fs::write(&index, &bytes).expect("write");
    let mut t = fs::read(s.file(".timeindex")).expect("read");
    t.truncate(t.len().saturating_sub(5));
    fs::write(s.file(".timeindex"), &t).expect("write");
    s.expect_batches(BATCHES, "garbled indexes");
}

#[test]
fn damaged_checkpoints_do_not_stop_startup_or_lose_records() {
    let mut s = Setup::new();
    let dir = s.partition_dir();
    fs::write(dir.join("recovery-point.checkpoint"), "0\n99999999\n").expect("write");
    fs::write(dir.join("log-start-offset.checkpoint"), "0\n").expect("write");
    fs::write(dir.join("leader-epoch-checkpoint"), b"\x00\xffgarbage").expect("write");
    s.expect_batches(BATCHES, "damaged checkpoints");
}

#[test]
fn torn_checkpoints_do_not_stop_startup_or_lose_records() {
    let mut s = Setup::new();
    let dir = s.partition_dir();
    for name in [
        "recovery-point.checkpoint",
        "log-start-offset.checkpoint",
        "leader-epoch-checkpoint",
    ] {
        let path = dir.join(name);
        if let Ok(text) = fs::read(&path) {
            fs::write(&path, &text[..text.len() / 2]).expect("cut checkpoint");
        }
    }
    s.expect_batches(BATCHES, "torn checkpoints");
}

#[test]
fn torn_metadata_log_tail_is_dropped_and_topics_survive() {
    let mut s = Setup::new();
    let path = s.data.join("__cluster_metadata-0/metadata.log");
    let mut bytes = fs::read(&path).expect("metadata log");
    // A record cut off half way, as a crash during an append leaves it.
    bytes.extend_from_slice(b"0badc0de {\"TopicCreated\":{\"na");
    fs::write(&path, &bytes).expect("write");
    s.expect_batches(BATCHES, "a torn metadata log tail");
    assert!(
        s.broker
            .stderr()
            .contains("dropping a torn or corrupt metadata log tail"),
        "the broker logs the dropped metadata tail"
    );
}

#[test]
fn garbled_metadata_record_is_dropped_without_crashing() {
    let mut s = Setup::new();
    let path = s.data.join("__cluster_metadata-0/metadata.log");
    let mut bytes = fs::read(&path).expect("metadata log");
    let n = bytes.len();
    // Flip a byte of the last record (its CRC no longer matches).
    bytes[n - 3] ^= 0x21;
    fs::write(&path, &bytes).expect("write");
    s.broker.restart();
    assert!(
        s.broker.is_running(),
        "broker starts with a garbled metadata record"
    );
    // Whatever survived is consistent: if the topic is still known, its records
    // are exactly the ones written.
    let consumer: rdkafka::consumer::BaseConsumer =
        client(&s.broker.addr).create().expect("client");
    let known = rdkafka::consumer::Consumer::fetch_metadata(&consumer, Some(TOPIC), DEADLINE)
        .map(|m| {
            m.topics()
                .iter()
                .any(|t| t.error().is_none() && !t.partitions().is_empty())
        })
        .unwrap_or(false);
    if known {
        let got: Vec<String> = values(&read_partition(&s.broker.addr, TOPIC, 0).expect("consume"))
            .iter()
            .map(|v| v.trim_end_matches('.').to_string())
            .collect();
        assert_eq!(
            got,
            expected(BATCHES),
            "records after a garbled metadata record"
        );
    }
    s.broker.stop();
    let (ok, report) = verify(&s.data);
    assert!(ok, "verify after a garbled metadata record:\n{report}");
}
