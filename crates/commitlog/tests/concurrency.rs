//! One writer, many readers, and maintenance running underneath them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use commitlog::{Isolation, Log, LogOptions, Message, Retention};

const TOTAL: i64 = 20_000;
const DEADLINE: Duration = Duration::from_secs(120);

fn value(offset: i64) -> Bytes {
    Bytes::from(format!(
        "message {offset} {}",
        "p".repeat((offset % 50) as usize)
    ))
}

fn opts() -> LogOptions {
    LogOptions {
        segment_max_bytes: 64 * 1024,
        index_interval_bytes: 512,
        ..LogOptions::default()
    }
}

/// The writer appends in batches of up to 16 and raises the high watermark after each.
fn write_all(log: &Log) {
    let mut next = 0;
    while next < TOTAL {
        let n = (1 + next % 16).min(TOTAL - next);
        let batch: Vec<Message> = (next..next + n)
            .map(|o| {
                Message::new(value(o))
                    .with_key(format!("k{}", o % 100))
                    .with_timestamp(o)
            })
            .collect();
        let at = log.append(&batch).unwrap();
        assert_eq!(at.first_offset, next);
        next += n;
        log.set_high_watermark(next - 1).unwrap();
    }
}

#[test]
fn readers_see_every_committed_message_in_order_while_the_writer_runs() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    let readers: Vec<_> = (0..4)
        .map(|i| {
            let log = log.clone();
            let iso = if i == 0 {
                Isolation::Uncommitted
            } else {
                Isolation::Committed
            };
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut r = log.reader(0, iso);
                let mut expect = 0;
                while expect < TOTAL {
                    assert!(start.elapsed() < DEADLINE, "reader {i} stuck at {expect}");
                    let Some(rec) = r.next_timeout(Duration::from_millis(200)).unwrap() else {
                        continue;
                    };
                    assert_eq!(rec.offset, expect, "reader {i}");
                    assert_eq!(rec.value, value(expect));
                    if iso == Isolation::Committed {
                        assert!(
                            rec.offset <= log.high_watermark(),
                            "read past the high watermark"
                        );
                    }
                    expect += 1;
                }
                expect
            })
        })
        .collect();
    write_all(&log);
    for r in readers {
        assert_eq!(r.join().unwrap(), TOTAL);
    }
    assert!(log.segments().len() > 10);
}

#[test]
fn readers_stay_consistent_under_retention_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        retention: Retention {
            max_bytes: Some(512 * 1024),
            ..Retention::default()
        },
        ..opts()
    };
    let log = Log::open(dir.path(), opts).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let cleaner = {
        let (log, done) = (log.clone(), done.clone());
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !done.load(Ordering::Acquire) && rounds < 10_000 {
                log.compact().unwrap();
                log.apply_retention().unwrap();
                rounds += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            rounds
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|i| {
            let log = log.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut r = log.reader(0, Isolation::Committed);
                let mut last = -1;
                let mut count = 0u64;
                while last < TOTAL - 1 {
                    assert!(start.elapsed() < DEADLINE, "reader {i} stuck at {last}");
                    let Some(rec) = r.next_timeout(Duration::from_millis(200)).unwrap() else {
                        continue;
                    };
                    assert!(rec.offset > last, "reader {i}: {} after {last}", rec.offset);
                    assert_eq!(rec.value, value(rec.offset), "wrong data at {}", rec.offset);
                    last = rec.offset;
                    count += 1;
                }
                count
            })
        })
        .collect();
    write_all(&log);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
    done.store(true, Ordering::Release);
    assert!(cleaner.join().unwrap() > 0);
    // Compaction kept the newest message of every key.
    let mut r = log.reader(log.oldest_offset(), Isolation::Committed);
    let mut newest = std::collections::HashMap::new();
    while let Some(rec) = r.try_next().unwrap() {
        newest.insert(rec.key.clone().unwrap(), rec.offset);
    }
    for k in 0..100 {
        let key = Bytes::from(format!("k{k}"));
        assert_eq!(newest.get(&key), Some(&(TOTAL - 100 + k)), "key {k}");
    }
}
