//! Interleavings of appends, syncs, truncation, rolls and readers that once went wrong: each test
//! drives one of them and checks that nothing hangs and nothing is acknowledged that is not the
//! caller's own, durable record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use commitlog::faults::{self, EIO, Fault, FileOp, Injector};
use commitlog::{Error, Log, LogOptions, Message, SyncPolicy};
use parking_lot::{Condvar, Mutex};

mod common;

use common::{OpRecorder, crash_copy, raw_record_at};

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
            "{what}: no progress for {STALL:?} at {seen:?} (a hang)"
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

/// An injector that holds the first `.log` sync until [`Gate::release`] and, if asked, fails
/// every later one with `EIO`; it counts `.log` writes. It lets a test stop a sync round in the
/// middle.
#[derive(Clone, Default)]
struct Gate {
    state: Arc<(Mutex<GateState>, Condvar)>,
    fail_later_syncs: bool,
}

impl Gate {
    fn new(fail_later_syncs: bool) -> Gate {
        Gate {
            fail_later_syncs,
            ..Gate::default()
        }
    }

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
                    return self.fail_later_syncs.then_some(Fault {
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
    let gate = Gate::new(true);
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

/// An append under `Always` whose records a truncation removes while it waits for its sync gets
/// an error, whatever is appended at those offsets afterwards. It once went on syncing towards
/// an end the cut had lowered, in a loop that never slept, and returned `Ok` with its offsets as
/// soon as other appends had filled them again: records that were not its own.
#[test]
fn an_append_cut_by_a_truncation_before_its_sync_is_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), always()).unwrap();
    log.append(&[Message::new("kept")]).unwrap();
    let gate = Gate::new(false);
    let _faults = faults::inject(dir.path(), gate.clone());
    let cut_append = {
        let log = log.clone();
        std::thread::spawn(move || {
            let batch: Vec<Message> = (1..=5).map(|i| Message::new(format!("cut{i}"))).collect();
            log.append(&batch)
        })
    };
    // Its round holds the sync while the truncation removes offsets 3 and up.
    gate.wait_for("the append's round", |g| g.holding);
    log.truncate(3).unwrap();
    gate.release();
    let others = log
        .append(&[
            Message::new("other3"),
            Message::new("other4"),
            Message::new("other5"),
        ])
        .unwrap();
    assert_eq!((others.first_offset, others.last_offset), (3, 5));
    let result = cut_append.join().unwrap();
    assert!(
        matches!(result, Err(Error::Truncated { offset: 3 })),
        "offsets 3..=5 hold other appends' records, yet: {result:?}"
    );
    let values: Vec<String> = (0..=5)
        .map(|o| String::from_utf8(log.read_at(o).unwrap().unwrap().value.to_vec()).unwrap())
        .collect();
    assert_eq!(
        values,
        ["kept", "cut1", "cut2", "other3", "other4", "other5"]
    );
}

/// `Log::sync` asked for before a truncation returns once what is left is durable; it does not
/// wait for appends to reach the end from before the cut.
#[test]
fn a_sync_across_a_truncation_returns() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let batch: Vec<Message> = (0..6).map(|i| Message::new(format!("m{i}"))).collect();
    log.append(&batch).unwrap();
    let gate = Gate::new(false);
    let _faults = faults::inject(dir.path(), gate.clone());
    let syncer = {
        let log = log.clone();
        std::thread::spawn(move || log.sync())
    };
    gate.wait_for("the sync round", |g| g.holding);
    log.truncate(2).unwrap();
    gate.release();
    let done = Arc::new(AtomicU64::new(0));
    let waiter = {
        let done = done.clone();
        std::thread::spawn(move || {
            let r = syncer.join().unwrap();
            done.store(1, Ordering::Release);
            r
        })
    };
    watch("the sync", &[(&done, 1)]);
    waiter.join().unwrap().unwrap();
    assert_eq!(log.next_offset(), 2);
}

/// A truncation below the high watermark lowers the checkpoint too, before it returns. It once
/// lowered only the mark in memory: after a crash, the old checkpoint came back and covered the
/// records appended again at the cut offsets, which no replica had committed.
#[test]
fn a_truncation_lowers_the_checkpointed_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let batch: Vec<Message> = (0..10).map(|i| Message::new(format!("old{i}"))).collect();
    log.append(&batch).unwrap();
    log.set_high_watermark(9).unwrap();
    log.checkpoint_high_watermark().unwrap();
    log.truncate(5).unwrap();
    let on_disk = std::fs::read_to_string(dir.path().join(commitlog::HW_FILE)).unwrap();
    assert_eq!(on_disk.trim(), "4");
    let batch: Vec<Message> = (5..10).map(|i| Message::new(format!("new{i}"))).collect();
    log.append(&batch).unwrap();
    let crashed = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), crashed.path());
    let reopened = Log::open(crashed.path(), LogOptions::default()).unwrap();
    assert_eq!(reopened.high_watermark(), 4);
    let mut r = reopened.reader(0, commitlog::Isolation::Committed);
    let mut seen = Vec::new();
    while let Some(rec) = r.try_next().unwrap() {
        seen.push(String::from_utf8(rec.value.to_vec()).unwrap());
    }
    assert_eq!(seen, ["old0", "old1", "old2", "old3", "old4"]);
}

/// A checkpoint above the log end found at open (the tail it covered was lost in a machine
/// crash) is lowered on disk at once, not only in memory: records appended later at those
/// offsets must not come back committed after another crash.
#[test]
fn an_open_lowers_a_checkpoint_above_the_log_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let batch: Vec<Message> = (0..5).map(|i| Message::new(format!("old{i}"))).collect();
    log.append(&batch).unwrap();
    log.close().unwrap();
    std::fs::write(dir.path().join(commitlog::HW_FILE), "9").unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(log.high_watermark(), 4);
    let batch: Vec<Message> = (5..10).map(|i| Message::new(format!("new{i}"))).collect();
    log.append(&batch).unwrap();
    let crashed = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), crashed.path());
    let reopened = Log::open(crashed.path(), LogOptions::default()).unwrap();
    assert_eq!(reopened.high_watermark(), 4);
}

/// When the lowered checkpoint cannot be written, the truncation fails and so does the log:
/// nothing may be appended above a checkpoint that is too high.
#[test]
fn a_truncation_that_cannot_lower_the_checkpoint_fails_the_log() {
    use commitlog::faults::{Plan, Rule};
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let batch: Vec<Message> = (0..10).map(|i| Message::new(format!("old{i}"))).collect();
    log.append(&batch).unwrap();
    log.set_high_watermark(9).unwrap();
    log.checkpoint_high_watermark().unwrap();
    let _faults = faults::inject(
        dir.path(),
        Plan::new().with(Rule::new(FileOp::Create).on("offset-checkpoint.tmp")),
    );
    assert!(log.truncate(5).is_err());
    assert!(log.failure().is_some());
    assert!(matches!(
        log.append(&[Message::new("new5")]),
        Err(Error::Failed(_))
    ));
}

/// Checkpoints written from several threads at once never fail and never leave a torn or older
/// file: they once shared one temporary file without a lock, so one writer could rename another's
/// half-written file, or find its own already renamed away.
#[test]
fn concurrent_checkpoints_of_the_high_watermark_are_whole() {
    const THREADS: u64 = 4;
    const EACH: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let batch: Vec<Message> = (0..1000).map(|i| Message::new(format!("m{i}"))).collect();
    log.append(&batch).unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (log, done) = (log.clone(), done.clone());
            std::thread::spawn(move || {
                for i in 0..EACH {
                    log.set_high_watermark((i * THREADS + t) as i64).unwrap();
                    log.checkpoint_high_watermark().unwrap();
                    done.fetch_add(1, Ordering::Release);
                }
            })
        })
        .collect();
    watch("checkpoints", &[(&done, THREADS * EACH)]);
    for t in threads {
        t.join().unwrap();
    }
    let on_disk = std::fs::read_to_string(dir.path().join(commitlog::HW_FILE)).unwrap();
    assert_eq!(on_disk.trim(), log.high_watermark().to_string());
}

/// An open after a crash syncs every segment before it counts their records durable. It once
/// synced only the last one, though a roll can seal a segment whose newest records were written
/// but not yet synced when the process died: they were then replicated and committed as durable,
/// and a machine crash could still lose them.
#[test]
fn an_open_after_a_crash_syncs_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    for i in 0..3 {
        log.append(&[Message::new(format!("m{i}"))]).unwrap();
        log.roll().unwrap();
    }
    log.append(&[Message::new("last")]).unwrap();
    let crashed = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), crashed.path());
    let recorder = OpRecorder::new(FileOp::Sync);
    let _faults = faults::inject(crashed.path(), recorder.clone());
    let reopened = Log::open(crashed.path(), LogOptions::default()).unwrap();
    assert!(!reopened.recovery().clean_shutdown);
    let synced = recorder.paths();
    let segments = reopened.segments();
    assert_eq!(segments.len(), 4);
    for s in segments {
        let name = crashed.path().join(format!("{:020}.log", s.base_offset));
        assert!(
            synced.contains(&name),
            "{name:?} not synced; synced: {synced:?}"
        );
    }
}

/// This process's open files inside `dir`: (all, those whose file was deleted).
fn open_files_in(dir: &std::path::Path) -> (usize, usize) {
    let dir = dir.canonicalize().unwrap();
    let (mut all, mut deleted) = (0, 0);
    for e in std::fs::read_dir("/proc/self/fd").unwrap() {
        let Ok(target) = std::fs::read_link(e.unwrap().path()) else {
            continue; // closed meanwhile (the read_dir's own descriptor)
        };
        if target.starts_with(&dir) {
            all += 1;
            if target.to_string_lossy().ends_with(" (deleted)") {
                deleted += 1;
            }
        }
    }
    (all, deleted)
}

/// Segments that retention deletes are closed once no reader holds them, under every sync
/// policy. Under `Os` (the broker's default), and until the next sync under `EveryMessages` and
/// `Interval`, the list of segments waiting for a sync once kept every segment written: deleted
/// files stayed open, so their disk space was never freed and the descriptors leaked.
#[test]
fn deleted_segments_are_closed_under_every_sync_policy() {
    use commitlog::Retention;
    for sync in [
        SyncPolicy::Os,
        SyncPolicy::Always,
        SyncPolicy::EveryMessages(1_000_000),
        SyncPolicy::Interval(Duration::from_secs(3600)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions {
            sync,
            retention: Retention {
                max_messages: Some(10),
                ..Retention::default()
            },
            ..LogOptions::default()
        };
        let log = Log::open(dir.path(), opts).unwrap();
        let mut deleted_segments = 0;
        for i in 0..50 {
            let batch: Vec<Message> = (0..5).map(|j| Message::new(format!("{i}.{j}"))).collect();
            log.append(&batch).unwrap();
            log.roll().unwrap();
            // Retention deletes only committed records.
            log.set_high_watermark(log.newest_offset()).unwrap();
            deleted_segments += log.apply_retention().unwrap().segments;
        }
        assert!(deleted_segments >= 40, "{sync:?}: {deleted_segments}");
        let live = log.segments().len();
        let (open, deleted) = open_files_in(dir.path());
        assert_eq!(deleted, 0, "{sync:?}: deleted segments still open");
        // The segments' files and the lock file.
        assert!(
            open <= live + 1,
            "{sync:?}: {open} files open for {live} segments"
        );
        log.close().unwrap();
        drop(log);
        assert_eq!(open_files_in(dir.path()), (0, 0), "{sync:?}: after close");
    }
}

/// Folders that an open creates are made durable in their parents.
#[test]
fn an_open_makes_the_folders_it_creates_durable() {
    let root = tempfile::tempdir().unwrap();
    let recorder = OpRecorder::new(FileOp::SyncDir);
    let _faults = faults::inject(root.path(), recorder.clone());
    let dir = root.path().join("a").join("b");
    let log = Log::open(&dir, LogOptions::default()).unwrap();
    let synced = recorder.paths();
    for d in [
        root.path().to_path_buf(),
        root.path().join("a"),
        dir.clone(),
    ] {
        assert!(synced.contains(&d), "{d:?} not synced: {synced:?}");
    }
    log.close().unwrap();
}

/// A segment created by a roll under the OS policy is made durable in its folder by the next
/// sync asked for: syncing its data alone would not keep a machine crash from losing the file.
#[test]
fn a_sync_makes_a_rolled_segment_durable_in_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    log.append(&[Message::new("a")]).unwrap();
    let recorder = OpRecorder::new(FileOp::SyncDir);
    let _faults = faults::inject(dir.path(), recorder.clone());
    log.roll().unwrap();
    log.append(&[Message::new("b")]).unwrap();
    log.sync().unwrap();
    let synced = recorder.paths();
    assert!(
        synced.contains(&dir.path().to_path_buf()),
        "the folder was not synced: {synced:?}"
    );
}

/// A segment restarted far ahead for a follower's records (the active one was empty) is durable
/// in its folder when the append is acknowledged under `Always`.
#[test]
fn a_restarted_segment_is_durable_in_its_folder_under_always() {
    let far = 10_000_000_000i64;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), always()).unwrap();
    // An empty active segment, and a leader epoch already known (its checkpoint is not written
    // again).
    log.append(&[Message::new("first")]).unwrap();
    log.roll().unwrap();
    let recorder = OpRecorder::new(FileOp::SyncDir);
    let _faults = faults::inject(dir.path(), recorder.clone());
    log.append_raw(&raw_record_at(far)).unwrap();
    assert_eq!(log.segments().last().unwrap().base_offset, far);
    let synced = recorder.paths();
    assert!(
        synced.contains(&dir.path().to_path_buf()),
        "the folder was not synced: {synced:?}"
    );
}

/// Under `Always`, a truncation never makes readable what is not yet on stable storage. A cut at
/// a segment boundary removes the later segments and leaves the earlier one as it is, without a
/// sync: it published that segment's end as the log end while an append's records in it were
/// still waiting for their sync, so readers and followers could take records the disk might
/// not hold.
#[test]
fn a_truncation_at_a_segment_boundary_publishes_nothing_unsynced() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), always()).unwrap();
    let batch: Vec<Message> = (0..5).map(|i| Message::new(format!("m{i}"))).collect();
    log.append(&batch).unwrap();
    // The held sync succeeds once released; every later one (the truncation's own, if it
    // syncs) fails, so nothing below the cut is on disk before the release.
    let gate = Gate::new(true);
    let _faults = faults::inject(dir.path(), gate.clone());
    let held = {
        let log = log.clone();
        std::thread::spawn(move || {
            let batch: Vec<Message> = (5..10).map(|i| Message::new(format!("m{i}"))).collect();
            log.append(&batch)
        })
    };
    gate.wait_for("the append's round", |g| g.holding);
    log.roll().unwrap();
    let cut = {
        let log = log.clone();
        std::thread::spawn(move || log.append(&[Message::new("m10")]))
    };
    gate.wait_for("the second append's write", |g| g.writes >= 2);
    let _ = log.truncate(10);
    let visible = log.next_offset();
    gate.release();
    let _ = held.join().unwrap();
    assert!(cut.join().unwrap().is_err());
    assert_eq!(
        visible, 5,
        "offsets 5..=9 were readable before their sync completed"
    );
}

/// What a truncation leaves of an append cut while it waits for its sync is on disk once the
/// truncation returns (the cut syncs), and readable: the append fails with `Truncated`, and no
/// later sync round may be needed to publish the rest.
#[test]
fn what_a_truncation_leaves_of_a_waiting_append_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), always()).unwrap();
    let batch: Vec<Message> = (0..5).map(|i| Message::new(format!("m{i}"))).collect();
    log.append(&batch).unwrap();
    let gate = Gate::new(false);
    let _faults = faults::inject(dir.path(), gate.clone());
    let cut = {
        let log = log.clone();
        std::thread::spawn(move || {
            let batch: Vec<Message> = (5..10).map(|i| Message::new(format!("m{i}"))).collect();
            log.append(&batch)
        })
    };
    gate.wait_for("the append's round", |g| g.holding);
    log.truncate(7).unwrap();
    gate.release();
    assert!(matches!(
        cut.join().unwrap(),
        Err(Error::Truncated { offset: 7 })
    ));
    assert_eq!(log.next_offset(), 7);
    assert_eq!(&log.read_at(6).unwrap().unwrap().value[..], b"m6");
}
