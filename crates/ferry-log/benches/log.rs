//! Micro-benchmarks of the log engine: append of 16 KiB and 1 MiB batches,
//! sequential read, and offset / time index lookups.
//!
//! `cargo bench -p ferry-log` (results in target/criterion).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ferry_log::record::BatchBuilder;
use ferry_log::{Compression, Log, LogConfig};

const RECORD_BYTES: usize = 1024;

fn batch(bytes: usize, timestamp: i64) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    let value = Bytes::from(vec![b'x'; RECORD_BYTES]);
    for _ in 0..(bytes / RECORD_BYTES).max(1) {
        b.append(timestamp, None, Some(value.clone()));
    }
    b.build().expect("batch")
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 256 << 20,
        ..LogConfig::default()
    }
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    for size in [16 << 10, 1 << 20] {
        let template = batch(size, 0);
        group.throughput(Throughput::Bytes(template.len() as u64));
        group.bench_function(format!("{} KiB", size >> 10), |b| {
            let dir = tempfile::tempdir().expect("tempdir");
            let log = Log::open(dir.path(), config(), 0).expect("open");
            b.iter_batched_ref(
                || template.clone(),
                |bytes| log.append(bytes, 0, 0).expect("append"),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

/// A log of `count` 16 KiB batches whose timestamps are their batch index.
fn filled(count: i64) -> (tempfile::TempDir, Log, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path(), config(), 0).expect("open");
    let mut total = 0;
    for i in 0..count {
        let mut b = batch(16 << 10, i);
        total += b.len() as u64;
        log.append(&mut b, 0, 0).expect("append");
    }
    (dir, log, total)
}

fn read(c: &mut Criterion) {
    let (_dir, log, total) = filled(4096);
    let end = log.log_end_offset();
    let mut group = c.benchmark_group("read");
    group.throughput(Throughput::Bytes(total));
    group.sample_size(10);
    group.bench_function("sequential 1 MiB fetches", |b| {
        b.iter(|| {
            let mut offset = 0;
            while offset < end {
                offset = log.read(offset, 1 << 20, end).expect("read").next_offset;
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("lookup");
    let mut i = 0i64;
    group.bench_function("offset index", |b| {
        b.iter(|| {
            i = (i * 7919 + 13) % end;
            black_box(log.read(i, 1, end).expect("read"));
        })
    });
    let mut t = 0i64;
    group.bench_function("time index", |b| {
        b.iter(|| {
            t = (t * 7919 + 13) % 4096;
            black_box(log.offset_for_timestamp(t).expect("lookup"));
        })
    });
    group.finish();
}

criterion_group!(benches, append, read);
criterion_main!(benches);
