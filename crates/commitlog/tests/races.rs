//! Interleavings of appends, syncs, truncation, rolls and readers that once went wrong: each test
//! drives one of them and checks that nothing hangs and nothing is acknowledged that is not the
//! caller's own, durable record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use commitlog::faults::{self, EIO, Fault, FileOp, Injector};
use commitlog::{Error, Log, LogOptions, Message, SyncPolicy};
use parking_lot::{Condvar, Mutex};

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

/// How long a test waits for a condition that must come soon.
const DEADLINE: Duration = Duration::from_secs(60);

#[derive(Default)]
struct GateState {
    /// `.log` syncs asked for so far.
    syncs: u64,
    /// `.log` writes asked for so far.
    writes: u64,
    /// Whether the first sync is still held.
    holding: bool,
    released: bool,
}

/// An injector that holds the first `.log` sync until [`Gate::release`] and fails every later
/// one with `EIO`; it counts `.log` writes. It lets a test stop a sync round in the middle.
#[derive(Clone, Default)]
struct Gate {
    state: Arc<(Mutex<GateState>, Condvar)>,
}

impl Gate {
    /// Waits (bounded) until `cond` holds.
    fn wait_for(&self, what: &str, cond: impl Fn(&GateState) -> bool) {
        let (lock, cv) = &*self.state;
        let until = Instant::now() + DEADLINE;
        let mut st = lock.lock();
        while !cond(&st) {
            assert!(
                !cv.wait_until(&mut st, until).timed_out() || cond(&st),
                "timed out waiting for {what}"
            );
        }
    }

    fn release(&self) {
        let (lock, cv) = &*self.state;
        lock.lock().released = true;
        cv.notify_all();
    }
}

impl Injector for Gate {
    fn before(&self, op: FileOp, path: &std::path::Path) -> Option<Fault> {
        if path.extension().is_none_or(|e| e != "log") {
            return None;
        }
        let (lock, cv) = &*self.state;
        let mut st = lock.lock();
        match op {
            FileOp::Write => {
                st.writes += 1;
                cv.notify_all();
                None
            }
            FileOp::Sync => {
                st.syncs += 1;
                cv.notify_all();
                if st.syncs > 1 {
                    return Some(Fault {
                        errno: EIO,
                        torn: false,
                    });
                }
                st.holding = true;
                let until = Instant::now() + DEADLINE;
                while !st.released && !cv.wait_until(&mut st, until).timed_out() {}
                st.holding = false;
                None
            }
            _ => None,
        }
    }
}

fn always() -> LogOptions {
    LogOptions {
        sync: SyncPolicy::Always,
        ..LogOptions::default()
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

/// An append under `Always` that waits for a sync round while the log is closed shares the fate of
/// the close's syncs. The close once emptied the list of segments waiting for a sync before its
/// own syncs; when those failed, the waiting appender ran a round with nothing to sync and was told
/// its record was durable.
#[test]
fn close_never_acknowledges_an_append_it_did_not_sync() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), always()).unwrap();
    let gate = Gate::default();
    let _faults = faults::inject(dir.path(), gate.clone());
    // The first append's sync round is held in its sync…
    let first = {
        let log = log.clone();
        std::thread::spawn(move || log.append(&[Message::new("first")]))
    };
    gate.wait_for("the first round's sync", |g| g.holding);
    // …so the second append, once written, waits for that round to end.
    let second = {
        let log = log.clone();
        std::thread::spawn(move || log.append(&[Message::new("second")]))
    };
    gate.wait_for("the second append's write", |g| g.writes >= 2);
    // The close runs (after the second write: it takes the writer lock), and its syncs fail.
    let closer = {
        let log = log.clone();
        std::thread::spawn(move || log.close())
    };
    let closed = closer.join().unwrap();
    assert!(closed.is_err(), "every sync after the first fails");
    gate.release();
    let _ = first.join().unwrap();
    let second = second.join().unwrap();
    assert!(
        matches!(second, Err(Error::Failed(_) | Error::Io { .. })),
        "the second record was never synced, yet: {second:?}"
    );
}
