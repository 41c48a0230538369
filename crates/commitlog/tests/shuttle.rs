//! Model checking of the log's concurrency with shuttle: each test runs a few threads against
//! one log many times, under a scheduler that picks a different interleaving of their lock and
//! atomic operations each time (randomly, and by probabilistic concurrency testing), and fails
//! on a deadlock (every thread blocked) or a broken property.
//!
//! Built only with the `shuttle` feature, which puts the log on shuttle's locks and atomics
//! (`src/sync.rs`); files are real, in a temporary folder (in memory where `/dev/shm` exists).
//!
//! The properties, in every interleaving:
//! - nothing deadlocks;
//! - an append acknowledged under `SyncPolicy::Always` is durable: a sync of its segment file
//!   that succeeded, and began after the record was written, covered the record with the value
//!   the appender wrote (a fault seam, `faults::Injector`, sees every sync and reads the file);
//! - an acknowledged record is readable at its offset by `read_at`, the forward and the reverse
//!   reader, unless a truncation below it ran meanwhile (or retention or compaction removed it);
//! - readers return only records that were written at that offset, in order;
//! - the high watermark never exceeds the newest offset.
//!
//! `SHUTTLE_ITERATIONS` sets the number of interleavings tried per test and scheduler (default
//! 300).
#![cfg(feature = "shuttle")]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use commitlog::faults::{self, EIO, Fault, FileOp, Injector};
use commitlog::{Isolation, Log, LogOptions, Message, Retention, SyncPolicy};

fn iterations() -> usize {
    std::env::var("SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// Runs `f` under a random scheduler and under PCT, each for the configured iterations.
fn check(f: impl Fn() + Send + Sync + 'static) {
    let f = Arc::new(f);
    let g = f.clone();
    shuttle::check_random(move || g(), iterations());
    shuttle::check_pct(move || f(), iterations(), 3);
}

fn tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().unwrap()
}

/// Splits stored records into (offset, value), as the file holds them.
fn records(mut data: &[u8]) -> Vec<(i64, Vec<u8>)> {
    let be32 = |b: &[u8]| i32::from_be_bytes(b[..4].try_into().unwrap());
    let mut out = Vec::new();
    while data.len() >= 28 {
        let offset = i64::from_be_bytes(data[..8].try_into().unwrap());
        let size = be32(&data[24..]) as usize;
        if data.len() < 28 + size || size < 16 {
            break;
        }
        let body = &data[28..28 + size];
        let at = match be32(&body[6..]) {
            -1 => 10,
            n => 10 + n as usize,
        };
        let n = be32(&body[at..]).max(0) as usize;
        out.push((offset, body[at + 4..at + 4 + n].to_vec()));
        data = &data[28 + size..];
    }
    out
}

/// Records syncs covered, by offset and value, with when the last such sync ran.
type Durable = HashMap<(i64, Vec<u8>), u64>;

/// Sees every sync of a `.log` file: records what it covers, or fails it once `failing` is set.
#[derive(Clone, Default)]
struct Syncs {
    durable: Arc<Mutex<Durable>>,
    failing: Arc<AtomicBool>,
}

impl Injector for Syncs {
    fn before(&self, op: FileOp, path: &Path) -> Option<Fault> {
        if op != FileOp::Sync || path.extension().is_none_or(|e| e != "log") {
            return None;
        }
        if self.failing.load(Ordering::SeqCst) {
            return Some(Fault {
                errno: EIO,
                torn: false,
            });
        }
        // The data now in the file is what this sync makes durable.
        if let Ok(data) = std::fs::read(path) {
            let now = tick();
            let mut d = self.durable.lock().unwrap();
            for r in records(&data) {
                d.insert(r, now);
            }
        }
        None
    }
}

impl Syncs {
    fn covers(&self, offset: i64, value: &[u8]) -> bool {
        self.durable
            .lock()
            .unwrap()
            .contains_key(&(offset, value.to_vec()))
    }

    /// A sync after `since` covered another record at `offset`.
    fn replaced_since(&self, offset: i64, value: &[u8], since: u64) -> bool {
        self.durable
            .lock()
            .unwrap()
            .iter()
            .any(|((o, v), t)| *o == offset && v != value && *t > since)
    }
}

/// A total order of events across the threads (shuttle runs one thread at a time).
static CLOCK: AtomicU64 = AtomicU64::new(0);

fn tick() -> u64 {
    CLOCK.fetch_add(1, Ordering::SeqCst)
}

/// What happened, for the checks at the end.
#[derive(Default)]
struct History {
    /// offset → (value, when its append began, when it was acknowledged).
    acked: BTreeMap<i64, (Vec<u8>, u64, u64)>,
    /// Every value written at each offset; at -1 those whose offset is not known (in flight,
    /// or failed).
    written: BTreeMap<i64, Vec<Vec<u8>>>,
    /// (offset, when it began, when it returned) of each truncation that succeeded.
    truncations: Vec<(i64, u64, u64)>,
    /// (offset, when it began) of every truncation.
    truncating: Vec<(i64, u64)>,
}

type Shared = Arc<Mutex<History>>;

fn value(thread: usize, i: usize) -> Vec<u8> {
    format!("t{thread}-{i}").into_bytes()
}

/// Appends one message, records it, and checks an acknowledged one is durable.
fn append(log: &Log, h: &Shared, syncs: &Syncs, thread: usize, i: usize, key: Option<&str>) {
    let v = value(thread, i);
    let mut m = Message::new(v.clone());
    if let Some(k) = key {
        m = m.with_key(k.to_owned());
    }
    // Readers may see it before the append returns: until then its offset is unknown.
    h.lock()
        .unwrap()
        .written
        .entry(-1)
        .or_default()
        .push(v.clone());
    let began = tick();
    let res = log.append(&[m]);
    let done = tick();
    if let Ok(at) = res {
        let o = at.first_offset;
        if log.options().sync == SyncPolicy::Always && !syncs.covers(o, &v) {
            // Only a truncation below it, running meanwhile, may have cut it before the sync
            // (the append and the cut then both happened, in that order); but the offset must
            // not have been acknowledged for another record a sync covered meanwhile.
            let cut = (h.lock().unwrap().truncating.iter()).any(|(at, b)| *at <= o && *b < done);
            assert!(
                cut && !syncs.replaced_since(o, &v, began),
                "append of {:?} acknowledged at {o} without a sync that covered it",
                String::from_utf8_lossy(&v)
            );
        }
        let mut h = h.lock().unwrap();
        h.acked.insert(o, (v.clone(), began, done));
        h.written.entry(o).or_default().push(v);
    }
}

fn truncate(log: &Log, h: &Shared, at: i64) {
    let began = tick();
    h.lock().unwrap().truncating.push((at, began));
    let res = log.truncate(at);
    let done = tick();
    if res.is_ok() {
        h.lock().unwrap().truncations.push((at, began, done));
    }
}

/// A reader's record was written at its offset.
fn written_there(h: &History, offset: i64, v: &[u8]) -> bool {
    [offset, -1]
        .iter()
        .any(|o| h.written.get(o).is_some_and(|vs| vs.iter().any(|w| w == v)))
}

/// Every acknowledged record no truncation may have removed is readable at its offset, forward,
/// backward and by `read_at`; readers return only written records, in order; the high
/// watermark is at most the newest offset.
fn check_log(log: &Log, h: &History, removed_below: i64) {
    let mut fwd = Vec::new();
    let mut r = log.reader(0, Isolation::Uncommitted);
    while let Some(rec) = r.try_next().unwrap() {
        assert!(fwd.last().is_none_or(|(p, _)| rec.offset > *p));
        assert!(
            written_there(h, rec.offset, &rec.value),
            "a reader returned {:?} at {}, never written there",
            rec.value,
            rec.offset
        );
        fwd.push((rec.offset, rec.value.to_vec()));
    }
    let mut back = Vec::new();
    let mut r = log.reverse_reader(i64::MAX, Isolation::Uncommitted);
    while let Some(rec) = r.next().unwrap() {
        back.push((rec.offset, rec.value.to_vec()));
    }
    back.reverse();
    assert_eq!(fwd, back, "forward and reverse readers disagree");
    for (o, (v, began, _)) in &h.acked {
        let cut = h
            .truncations
            .iter()
            .any(|(at, _, done)| at <= o && done > began);
        if cut || *o < removed_below {
            continue;
        }
        assert!(
            fwd.iter().any(|(p, w)| p == o && w == v),
            "acknowledged {:?} at {o} is not read back: {fwd:?}",
            String::from_utf8_lossy(v)
        );
        let at = log.read_at(*o).unwrap().expect("read_at");
        assert_eq!((at.offset, &at.value[..]), (*o, &v[..]));
    }
    assert!(log.high_watermark() <= log.newest_offset());
}

struct Setup {
    _dir: tempfile::TempDir,
    path: PathBuf,
    log: Log,
    syncs: Syncs,
    _faults: faults::Injection,
    history: Shared,
}

fn setup(opts: LogOptions) -> Setup {
    let dir = tempdir();
    let path = dir.path().to_path_buf();
    let syncs = Syncs::default();
    let f = faults::inject(&path, syncs.clone());
    let log = Log::open(&path, opts).unwrap();
    Setup {
        _dir: dir,
        path,
        log,
        syncs,
        _faults: f,
        history: Shared::default(),
    }
}

fn always() -> LogOptions {
    LogOptions {
        sync: SyncPolicy::Always,
        segment_max_bytes: 1024,
        ..LogOptions::default()
    }
}

fn spawn(f: impl FnOnce() + Send + 'static) -> shuttle::thread::JoinHandle<()> {
    shuttle::thread::spawn(f)
}

/// Group commit: appenders under `Always`, an explicit sync and a roll share rounds; each
/// acknowledged append was covered by a sync that began after its write.
#[test]
fn always_appends_share_sync_rounds_and_each_ack_is_durable() {
    check(|| {
        let s = setup(always());
        let mut hs = Vec::new();
        for t in 0..2 {
            let (log, h, syncs) = (s.log.clone(), s.history.clone(), s.syncs.clone());
            hs.push(spawn(move || {
                for i in 0..2 {
                    append(&log, &h, &syncs, t, i, None);
                }
            }));
        }
        let log = s.log.clone();
        hs.push(spawn(move || {
            log.sync().unwrap();
            log.roll().unwrap();
        }));
        for h in hs {
            h.join().unwrap();
        }
        let h = s.history.lock().unwrap();
        assert_eq!(h.acked.len(), 4, "every append succeeds");
        check_log(&s.log, &h, 0);
    });
}

/// `close` while appends under `Always` wait for their sync, and the close's own syncs fail:
/// no append is acknowledged unless a sync that succeeded covered it; after a reopening every
/// acknowledged one is there.
#[test]
fn close_never_acknowledges_an_append_it_did_not_sync() {
    check(|| {
        let s = setup(always());
        let mut hs = Vec::new();
        for t in 0..2 {
            let (log, h, syncs) = (s.log.clone(), s.history.clone(), s.syncs.clone());
            hs.push(spawn(move || append(&log, &h, &syncs, t, 0, None)));
        }
        let (log, syncs) = (s.log.clone(), s.syncs.clone());
        hs.push(spawn(move || {
            syncs.failing.store(true, Ordering::SeqCst);
            let _ = log.close();
        }));
        for h in hs {
            h.join().unwrap();
        }
        s.syncs.failing.store(false, Ordering::SeqCst);
        let _ = s.log.close();
        let log = Log::open(&s.path, always()).unwrap();
        check_log(&log, &s.history.lock().unwrap(), 0);
        log.close().unwrap();
    });
}

/// A truncation under in-flight `Always` appends: nothing spins forever, and an append is never
/// acknowledged with offsets that hold another writer's records.
#[test]
fn truncation_under_always_appends_acknowledges_only_their_own_records() {
    check(|| {
        let s = setup(always());
        let (log, h, syncs) = (s.log.clone(), s.history.clone(), s.syncs.clone());
        append(&log, &h, &syncs, 9, 0, None);
        append(&log, &h, &syncs, 9, 1, None);
        let mut hs = Vec::new();
        for t in 0..2 {
            let (log, h, syncs) = (s.log.clone(), s.history.clone(), s.syncs.clone());
            hs.push(spawn(move || {
                for i in 0..2 {
                    append(&log, &h, &syncs, t, i, None);
                }
            }));
        }
        let (log, h) = (s.log.clone(), s.history.clone());
        hs.push(spawn(move || truncate(&log, &h, 1)));
        for h in hs {
            h.join().unwrap();
        }
        check_log(&s.log, &s.history.lock().unwrap(), 0);
    });
}

/// `set_high_watermark` racing `truncate` never leaves the high watermark above the log end,
/// and after a crash the checkpoint brings back none above it either.
#[test]
fn the_high_watermark_never_passes_the_end_under_truncation() {
    check(|| {
        let s = setup(LogOptions::default());
        let (log, h, syncs) = (s.log.clone(), s.history.clone(), s.syncs.clone());
        for i in 0..4 {
            append(&log, &h, &syncs, 0, i, None);
        }
        log.set_high_watermark(1).unwrap();
        let l1 = s.log.clone();
        let a = spawn(move || {
            let _ = l1.set_high_watermark(l1.newest_offset());
        });
        let (l2, h2) = (s.log.clone(), s.history.clone());
        let b = spawn(move || truncate(&l2, &h2, 2));
        let l3 = s.log.clone();
        let c = spawn(move || {
            let _ = l3.checkpoint_high_watermark();
        });
        // A reverse reader made before the truncation never returns what it removed.
        let mut rr = s.log.reverse_reader(i64::MAX, Isolation::Uncommitted);
        let h4 = s.history.clone();
        let d = spawn(move || {
            for _ in 0..4 {
                let asked = tick();
                let Some(rec) = rr.next().unwrap() else { break };
                let h = h4.lock().unwrap();
                let gone = h
                    .truncations
                    .iter()
                    .any(|(at, _, done)| *at <= rec.offset && *done < asked);
                assert!(
                    !gone,
                    "a reverse reader returned {} after its truncation",
                    rec.offset
                );
            }
        });
        for j in [a, b, c, d] {
            j.join().unwrap();
        }
        assert!(
            s.log.high_watermark() <= s.log.newest_offset(),
            "high watermark {} above the newest offset {}",
            s.log.high_watermark(),
            s.log.newest_offset()
        );
        check_log(&s.log, &s.history.lock().unwrap(), 0);
    });
}

/// Readers (forward, reverse, `read_raw`, `read_at` in a gap compaction left) while appends
/// roll segments and retention and compaction run: no deadlock, and readers return only
/// records written at their offsets, in order.
#[test]
fn readers_roll_retention_and_compaction_never_deadlock() {
    check(|| {
        let opts = LogOptions {
            segment_max_bytes: 1024,
            index_interval_bytes: 64,
            retention: Retention {
                max_messages: Some(12),
                ..Retention::default()
            },
            ..LogOptions::default()
        };
        let s = setup(opts);
        let (log, h, syncs) = (s.log.clone(), s.history.clone(), s.syncs.clone());
        // Three segments of keyed records, compacted, so that each ends in a gap: only its
        // first record has a key of its own.
        for i in 0..9 {
            let k = if i % 3 == 0 {
                format!("u{i}")
            } else {
                "a".into()
            };
            append(&log, &h, &syncs, 0, i, Some(&k));
            if i % 3 == 2 {
                log.roll().unwrap();
            }
        }
        log.set_high_watermark(log.newest_offset()).unwrap();
        log.compact().unwrap();
        let mut hs = Vec::new();
        let (l, hh, sy) = (s.log.clone(), s.history.clone(), s.syncs.clone());
        hs.push(spawn(move || {
            for i in 0..3 {
                append(&l, &hh, &sy, 1, i, Some("c"));
                l.roll().unwrap();
            }
        }));
        let l = s.log.clone();
        hs.push(spawn(move || {
            let _ = l.set_high_watermark(l.newest_offset());
            l.compact().unwrap();
            l.apply_retention().unwrap();
        }));
        let (l, hh) = (s.log.clone(), s.history.clone());
        hs.push(spawn(move || {
            for o in [1, 2, 4] {
                if let Some(b) = l.read_raw(o, 1).unwrap() {
                    assert!(b.first_offset >= o);
                }
                if let Some(r) = l.read_at(o).unwrap() {
                    assert!(r.offset >= o);
                    assert!(written_there(&hh.lock().unwrap(), r.offset, &r.value));
                }
            }
        }));
        let (l, hh) = (s.log.clone(), s.history.clone());
        hs.push(spawn(move || {
            let mut r = l.reader(0, Isolation::Uncommitted);
            let mut last = -1;
            for _ in 0..6 {
                match r.try_next().unwrap() {
                    Some(rec) => {
                        assert!(rec.offset > last);
                        last = rec.offset;
                        assert!(written_there(&hh.lock().unwrap(), rec.offset, &rec.value));
                    }
                    None => break,
                }
            }
            let mut rr = l.reverse_reader(i64::MAX, Isolation::Uncommitted);
            let mut prev = i64::MAX;
            for _ in 0..6 {
                match rr.next().unwrap() {
                    Some(rec) => {
                        assert!(rec.offset < prev);
                        prev = rec.offset;
                        assert!(written_there(&hh.lock().unwrap(), rec.offset, &rec.value));
                    }
                    None => break,
                }
            }
        }));
        for h in hs {
            h.join().unwrap();
        }
        // Retention and compaction remove what they may; what is left is read consistently.
        check_log(&s.log, &s.history.lock().unwrap(), i64::MAX);
    });
}

/// `close` while appends under `Always`, a roll, compaction, retention and a truncation run:
/// nothing deadlocks, whatever the order, and the log reopens consistent.
#[test]
fn close_during_maintenance_and_appends_never_deadlocks() {
    check(|| {
        let opts = LogOptions {
            retention: Retention {
                max_messages: Some(2),
                ..Retention::default()
            },
            ..always()
        };
        let s = setup(opts.clone());
        let (log, h, syncs) = (s.log.clone(), s.history.clone(), s.syncs.clone());
        for i in 0..3 {
            append(&log, &h, &syncs, 9, i, Some("k"));
            log.roll().unwrap();
        }
        log.set_high_watermark(2).unwrap();
        let mut hs = Vec::new();
        let (l, hh, sy) = (s.log.clone(), s.history.clone(), s.syncs.clone());
        hs.push(spawn(move || {
            for i in 0..2 {
                append(&l, &hh, &sy, 0, i, Some("k"));
            }
        }));
        let (l, hh) = (s.log.clone(), s.history.clone());
        hs.push(spawn(move || {
            let _ = l.roll();
            let _ = l.compact();
            let _ = l.apply_retention();
            truncate(&l, &hh, 2);
        }));
        let l = s.log.clone();
        hs.push(spawn(move || {
            let _ = l.close();
        }));
        for h in hs {
            h.join().unwrap();
        }
        let _ = s.log.close();
        let log = Log::open(&s.path, opts).unwrap();
        check_log(&log, &s.history.lock().unwrap(), i64::MAX);
        log.close().unwrap();
    });
}
