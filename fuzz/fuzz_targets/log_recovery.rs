//! Segment and index recovery: the input becomes a segment (`.log`, and when the
//! first byte says so an `.index` / `.timeindex` cut from the tail), `Log::open`
//! recovers the directory, and everything it kept is read back. Recovery must
//! never panic, and whatever it keeps must be readable.
#![no_main]

use ferry_log::{Log, LogConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else { return };
    let base = "00000000000000000000";
    let (log_bytes, index_bytes) = if mode & 1 == 1 && rest.len() >= 32 {
        let cut = rest.len() - (usize::from(mode >> 1) % 32);
        rest.split_at(cut)
    } else {
        (rest, &[][..])
    };
    let path = |suffix: &str| dir.path().join(format!("{base}{suffix}"));
    let write = |suffix: &str, bytes: &[u8]| std::fs::write(path(suffix), bytes).is_ok();
    if !write(".log", log_bytes) {
        return;
    }
    if mode & 1 == 1 {
        let (index, time) = index_bytes.split_at(index_bytes.len() / 2);
        let _ = write(".index", index) && write(".timeindex", time);
    }
    if mode & 2 == 2 {
        let _ = std::fs::write(dir.path().join("recovery-point.checkpoint"), "0\n3\n");
    }
    let config = LogConfig {
        index_interval_bytes: 64,
        ..LogConfig::default()
    };
    let Ok(log) = Log::open(dir.path(), config, 0) else {
        return;
    };
    let (start, end) = (log.log_start_offset(), log.log_end_offset());
    assert!(start <= end);
    let mut offset = start;
    // Each read returns at least one batch or ends the loop.
    for _ in 0..10_000 {
        if offset >= end {
            break;
        }
        let read = log
            .read(offset, 4096, end)
            .expect("recovered data is readable");
        if read.next_offset <= offset {
            break;
        }
        ferry_log::batch::validate_stored_batches(&read.bytes)
            .expect("recovered batches are valid");
        offset = read.next_offset;
    }
    let _ = log.offset_for_timestamp(0);
    let _ = log.close();
});
