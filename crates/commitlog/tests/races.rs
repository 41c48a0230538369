//! Interleavings of appends, syncs, truncation, rolls and readers that once went wrong: each test
//! drives one of them and checks that nothing hangs and nothing is acknowledged that is not the
//! caller's own, durable record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use commitlog::{Log, LogOptions, Message};

/// How long a test waits without any thread making progress before it calls it a hang.
const STALL: Duration = Duration::from_secs(20);

/// Waits until every counter reaches its goal. Fails the test if none of them moves for
/// [`STALL`]: the threads are stuck (they are left behind; the test process ends with the test).
fn watch(what: &str, counters: &[(&AtomicU64, u64)]) {
    let mut seen: Vec<u64> = counters
        .iter()
        .map(|(c, _)| c.load(Ordering::Acquire))
        .collect();
    let mut moved = Instant::now();
    loop {
        let now: Vec<u64> = counters
            .iter()
            .map(|(c, _)| c.load(Ordering::Acquire))
            .collect();
        if counters.iter().zip(&now).all(|((_, goal), n)| n >= goal) {
            return;
        }
        if now != seen {
            seen = now;
            moved = Instant::now();
        }
        assert!(
            moved.elapsed() < STALL,
            "{what}: no progress for {STALL:?} at {seen:?} (a deadlock)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A log whose first segment, once compacted, ends in a gap: offsets 5..=9 were superseded by
/// later records with the same keys, in the second segment.
fn log_with_a_gap_at_the_end_of_a_segment(dir: &std::path::Path) -> Log {
    let log = Log::open(dir, LogOptions::default()).unwrap();
    for o in 0..10 {
        log.append(&[Message::new(format!("v{o}")).with_key(format!("k{o}"))])
            .unwrap();
    }
    log.roll().unwrap();
    for o in 5..10 {
        log.append(&[Message::new(format!("w{o}")).with_key(format!("k{o}"))])
            .unwrap();
    }
    log.roll().unwrap();
    log.set_high_watermark(log.newest_offset()).unwrap();
    let report = log.compact().unwrap();
    assert_eq!(report.messages_removed, 5);
    log
}

/// A reader of an offset in the gap at the end of a compacted segment goes on to the next
/// segment. It once did so while still holding the segment list's read lock, and took it again:
/// with a roll waiting for the write lock in between, the fair lock made the second read wait for
/// the roll, and the roll for the first read. Readers and appends then stopped for good.
#[test]
fn readers_crossing_a_segment_end_never_deadlock_with_rolls() {
    const ROLLS: u64 = 300;
    const READS: u64 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let log = log_with_a_gap_at_the_end_of_a_segment(dir.path());
    let rolled = Arc::new(AtomicU64::new(0));
    let read = Arc::new(AtomicU64::new(0));
    let roller = {
        let (log, rolled) = (log.clone(), rolled.clone());
        std::thread::spawn(move || {
            for i in 0..ROLLS {
                log.append(&[Message::new(format!("r{i}"))]).unwrap();
                log.roll().unwrap();
                rolled.fetch_add(1, Ordering::Release);
            }
        })
    };
    let reader = {
        let (log, read) = (log.clone(), read.clone());
        std::thread::spawn(move || {
            for i in 0..READS {
                if i % 2 == 0 {
                    let batch = log
                        .read_raw(7, 4096)
                        .unwrap()
                        .expect("records after the gap");
                    assert_eq!(batch.first_offset, 10);
                } else {
                    let rec = log.read_at(7).unwrap().expect("a record after the gap");
                    assert_eq!(rec.offset, 10);
                }
                read.fetch_add(1, Ordering::Release);
            }
        })
    };
    watch("rolls and reads", &[(&rolled, ROLLS), (&read, READS)]);
    roller.join().unwrap();
    reader.join().unwrap();
    assert_eq!(log.next_offset(), 15 + ROLLS as i64);
    log.close().unwrap();
}
