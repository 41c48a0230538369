//! Criterion benchmarks of the commit log: append (with and without sync), sequential read, and
//! lookups by offset and by timestamp.
//!
//! `scripts/bench-commitlog.sh` runs them next to the machine's raw write bandwidth and prints
//! the medians as ratios; see docs/benchmarks.md.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use commitlog::{Isolation, Log, LogOptions, Message, Retention, SyncPolicy};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const SIZES: [(usize, &str); 3] = [(100, "100B"), (1024, "1KiB"), (64 * 1024, "64KiB")];

fn bench_dir() -> tempfile::TempDir {
    // Benchmarks write to the target folder's disk, not a RAM-backed /tmp.
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-data");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn opts(sync: SyncPolicy) -> LogOptions {
    LogOptions {
        segment_max_bytes: 64 * 1024 * 1024,
        sync,
        retention: Retention {
            max_bytes: Some(256 * 1024 * 1024),
            ..Retention::default()
        },
        ..LogOptions::default()
    }
}

fn batch(size: usize, n: usize) -> Vec<Message> {
    let value = Bytes::from(vec![b'x'; size]);
    (0..n)
        .map(|i| Message::new(value.clone()).with_timestamp(i as i64))
        .collect()
}

/// Appends `iters` batches, keeping the folder bounded by retention outside the timed part.
fn timed_appends(log: &Log, b: &[Message], iters: u64) -> Duration {
    let mut spent = Duration::ZERO;
    let mut start = Instant::now();
    for i in 0..iters {
        log.append(b).unwrap();
        if i % 64 == 63 {
            spent += start.elapsed();
            log.apply_retention().unwrap();
            start = Instant::now();
        }
    }
    spent + start.elapsed()
}

fn append_no_sync(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_no_sync");
    g.measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for (size, name) in SIZES {
        for n in [1usize, 100] {
            let dir = bench_dir();
            let log = Log::open(dir.path(), opts(SyncPolicy::Os)).unwrap();
            let b = batch(size, n);
            let bytes: u64 = b.iter().map(|m| m.encoded_len()).sum();
            g.throughput(Throughput::Bytes(bytes));
            g.bench_function(BenchmarkId::new(name, format!("batch{n}")), |bench| {
                bench.iter_custom(|iters| timed_appends(&log, &b, iters))
            });
            log.close().unwrap();
        }
    }
    g.finish();
}

/// The same bytes per batch written with plain positional writes into files rolled every 64 MiB
/// and deleted beyond 256 MiB: the log's write pattern without encoding, checksums or indexes.
/// It is the in-harness baseline for `append_no_sync`.
fn raw_file_write(c: &mut Criterion) {
    use std::os::unix::fs::FileExt;
    let mut g = c.benchmark_group("raw_file_write");
    g.measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for (size, name) in SIZES {
        for n in [1usize, 100] {
            let dir = bench_dir();
            let bytes: u64 = batch(size, n).iter().map(|m| m.encoded_len()).sum();
            let buf = vec![7u8; bytes as usize];
            let mut files = std::collections::VecDeque::new();
            let mut file = std::fs::File::create(dir.path().join("0")).unwrap();
            let mut pos = 0u64;
            let mut seq = 0u64;
            g.throughput(Throughput::Bytes(bytes));
            g.bench_function(BenchmarkId::new(name, format!("batch{n}")), |bench| {
                bench.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        if pos >= 64 * 1024 * 1024 {
                            seq += 1;
                            file = std::fs::File::create(dir.path().join(seq.to_string())).unwrap();
                            files.push_back(seq);
                            pos = 0;
                        }
                        file.write_all_at(&buf, pos).unwrap();
                        pos += bytes;
                        spent += start.elapsed();
                        if files.len() > 4 {
                            let old = files.pop_front().unwrap();
                            std::fs::remove_file(dir.path().join(old.to_string())).unwrap();
                        }
                    }
                    spent
                })
            });
        }
    }
    g.finish();
}

fn append_sync_8_appenders(c: &mut Criterion) {
    const APPENDERS: u64 = 8;
    let mut g = c.benchmark_group("append_sync_always_8_appenders");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(6))
        .warm_up_time(Duration::from_secs(1));
    for (size, name) in SIZES {
        for n in [1usize, 100] {
            let dir = bench_dir();
            let log = Log::open(dir.path(), opts(SyncPolicy::Always)).unwrap();
            let b = batch(size, n);
            let bytes: u64 = b.iter().map(|m| m.encoded_len()).sum();
            // One iteration is one batch appended (and synced) by one of the appenders.
            g.throughput(Throughput::Bytes(bytes));
            g.bench_function(BenchmarkId::new(name, format!("batch{n}")), |bench| {
                bench.iter_custom(|iters| {
                    let per = iters.div_ceil(APPENDERS);
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for _ in 0..APPENDERS {
                            s.spawn(|| {
                                for _ in 0..per {
                                    log.append(&b).unwrap();
                                }
                            });
                        }
                    });
                    let took = start.elapsed();
                    log.apply_retention().unwrap();
                    took.mul_f64(iters as f64 / (per * APPENDERS) as f64)
                })
            });
            log.close().unwrap();
        }
    }
    g.finish();
}

/// A closed log of about `total` bytes of 1 KiB messages, reopened for reading.
fn filled_log(total: usize) -> (tempfile::TempDir, Log, i64) {
    let dir = bench_dir();
    let opts = LogOptions {
        segment_max_bytes: 64 * 1024 * 1024,
        ..LogOptions::default()
    };
    let log = Log::open(dir.path(), opts.clone()).unwrap();
    let value = Bytes::from(vec![b'r'; 1024]);
    let n = total / 1024;
    let mut ts = 0i64;
    for _ in 0..n / 100 {
        let b: Vec<Message> = (0..100)
            .map(|_| {
                ts += 1000;
                Message::new(value.clone()).with_timestamp(ts)
            })
            .collect();
        log.append(&b).unwrap();
    }
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path(), opts).unwrap();
    log.set_high_watermark(log.newest_offset()).unwrap();
    (dir, log, ts)
}

fn sequential_read(c: &mut Criterion) {
    let (_dir, log, _) = filled_log(256 * 1024 * 1024);
    let bytes: u64 = log.segments().iter().map(|s| s.bytes).sum();
    let mut g = c.benchmark_group("sequential_read");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("1KiB_committed", |bench| {
        bench.iter(|| {
            let mut r = log.reader(0, Isolation::Committed);
            let mut n = 0u64;
            while let Some(rec) = r.try_next().unwrap() {
                n += rec.value.len() as u64;
            }
            black_box(n)
        })
    });
    g.bench_function("1KiB_raw_batches", |bench| {
        bench.iter(|| {
            let mut at = 0;
            let mut n = 0u64;
            while let Some(b) = log.read_raw(at, 1 << 20).unwrap() {
                n += b.data.len() as u64;
                at = b.last_offset + 1;
            }
            black_box(n)
        })
    });
    g.finish();
}

fn lookups(c: &mut Criterion) {
    let (_dir, log, max_ts) = filled_log(256 * 1024 * 1024);
    let newest = log.newest_offset();
    let mut g = c.benchmark_group("lookup");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    g.bench_function("by_offset", |bench| {
        bench.iter(|| {
            let o = (rand() % newest as u64) as i64;
            black_box(log.read_at(o).unwrap().unwrap().offset)
        })
    });
    g.bench_function("by_timestamp", |bench| {
        bench.iter(|| {
            let ts = (rand() % max_ts as u64) as i64;
            black_box(log.offset_for_timestamp(ts).unwrap())
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    raw_file_write,
    append_no_sync,
    append_sync_8_appenders,
    sequential_read,
    lookups
);
criterion_main!(benches);
