//! State-machine property test: random sequences of every operation a log takes — appends,
//! follower appends with gaps, truncation, high watermark and its checkpoint, rolls, retention,
//! compaction, clean reopening, crashes — with a fault injected into any file operation, against
//! a model that knows only which records were acknowledged.
//!
//! `tests/model.rs` checks the segment layout step by step on a fault-free log; this test does
//! not predict the layout (faults make it uncertain) but holds the log to what every client may
//! rely on, after every step:
//! - every acknowledged record is there, at its offset, byte for byte; anything else there is a
//!   record of an operation that reported an error (a "maybe");
//! - forward and reverse readers, committed and uncommitted, `read_raw` (with any byte budget)
//!   and `read_at` all agree with each other and with the model;
//! - the high watermark is the model's (a range of values after an operation that failed), and
//!   never above the newest offset, also after a crash;
//! - long-lived readers, created before the step, only ever return records the log held at that
//!   offset and that no truncation removed since.
//!
//! `PROPTEST_CASES` sets the number of cases (default 24, a few seconds) for a longer run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use commitlog::faults::{self, FileOp, Injector};
use commitlog::{
    Error, Isolation, Log, LogOptions, MAGIC_V2, Record, Retention, ReverseReader, SyncPolicy,
};
use proptest::prelude::*;

mod common;

use common::crash_copy;

const RETAIN_MESSAGES: u64 = 25;

/// What is at an offset: the value (unique in the whole run) and the key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Val {
    value: String,
    key: Option<u8>,
}

#[derive(Debug, Clone)]
enum Op {
    /// `n` messages with values of about `len` bytes, keyed from a small set.
    Append {
        n: u8,
        len: u8,
        keyed: bool,
    },
    /// A follower's append: `n` records from `gap` past the log end, `spread` apart.
    AppendRaw {
        gap: u8,
        n: u8,
        spread: u8,
    },
    /// The same beyond 2³² offsets past the end, as a follower of a log compacted that much.
    AppendRawFar,
    /// At this fraction (of 255) of the way from the oldest offset to the end.
    Truncate(u8),
    /// At this fraction (of 255) of the way from -1 to the newest offset.
    SetHw(u8),
    Checkpoint,
    Roll,
    Retention,
    Compact,
    Reopen,
    /// The process dies: the files as they are (the page cache included), no clean close.
    Crash,
    /// Long-lived readers take a few steps.
    Read,
}

/// A fault for one step: its `nth` file operation (of kind `op`, if set) fails, and a write
/// leaves half its bytes behind if `torn`.
#[derive(Debug, Clone)]
struct Fault {
    op: Option<FileOp>,
    nth: u8,
    torn: bool,
}

fn fault() -> impl Strategy<Value = Fault> {
    (
        prop::option::weighted(0.3, file_op()),
        0u8..8,
        any::<bool>(),
    )
        .prop_map(|(op, nth, torn)| Fault { op, nth, torn })
}

#[derive(Default)]
struct NthState {
    only: Option<FileOp>,
    countdown: Option<u64>,
    torn: bool,
    injected: u64,
}

/// Fails the nth file operation after being armed, once.
#[derive(Clone, Default)]
struct NthOp(std::sync::Arc<std::sync::Mutex<NthState>>);

impl NthOp {
    fn injected(&self) -> u64 {
        self.0.lock().unwrap().injected
    }

    fn clear(&self) {
        self.0.lock().unwrap().countdown = None;
    }
}

impl Injector for NthOp {
    fn before(&self, op: FileOp, _: &Path) -> Option<faults::Fault> {
        let mut st = self.0.lock().unwrap();
        if st.only.is_some_and(|o| o != op) {
            return None;
        }
        match st.countdown {
            Some(0) => {
                st.countdown = None;
                st.injected += 1;
                Some(faults::Fault {
                    errno: faults::EIO,
                    torn: st.torn,
                })
            }
            Some(n) => {
                st.countdown = Some(n - 1);
                None
            }
            None => None,
        }
    }
}

/// An operation, with a fault in a third of the steps.
fn step() -> impl Strategy<Value = (Op, Option<Fault>)> {
    (op(), prop::option::weighted(0.4, fault()))
}

fn file_op() -> impl Strategy<Value = FileOp> {
    prop_oneof![
        Just(FileOp::Create),
        Just(FileOp::Write),
        Just(FileOp::Sync),
        Just(FileOp::SyncDir),
        Just(FileOp::Rename),
        Just(FileOp::SetLen),
        Just(FileOp::Remove),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1u8..6, 0u8..120, any::<bool>()).prop_map(|(n, len, keyed)| Op::Append { n, len, keyed }),
        3 => (0u8..20, 1u8..5, 1u8..4).prop_map(|(gap, n, spread)| Op::AppendRaw { gap, n, spread }),
        1 => (1u8..255).prop_map(Op::Truncate),
        1 => Just(Op::AppendRawFar),
        3 => any::<u8>().prop_map(Op::SetHw),
        1 => Just(Op::Checkpoint),
        2 => Just(Op::Roll),
        1 => Just(Op::Retention),
        2 => Just(Op::Compact),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
        2 => Just(Op::Read),
    ]
}

/// A whole record in the stored format (v2), as a leader would ship it.
fn encode(offset: i64, v: &Val) -> Vec<u8> {
    let mut body = vec![MAGIC_V2 as u8, 0];
    match v.key {
        Some(k) => {
            body.extend_from_slice(&1i32.to_be_bytes());
            body.push(k);
        }
        None => body.extend_from_slice(&(-1i32).to_be_bytes()),
    }
    body.extend_from_slice(&(v.value.len() as i32).to_be_bytes());
    body.extend_from_slice(v.value.as_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    let mut head = Vec::new();
    head.extend_from_slice(&offset.to_be_bytes());
    head.extend_from_slice(&offset.to_be_bytes()); // timestamp
    head.extend_from_slice(&0u64.to_be_bytes()); // leader epoch
    let crc = crc32c::crc32c_append(crc32c::crc32c(&head), &body);
    head.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    head.extend_from_slice(&crc.to_be_bytes());
    head.extend_from_slice(&body);
    head
}

/// Splits stored records (as `encode` writes them), checking each one's checksum.
fn decode_all(mut data: &[u8]) -> Vec<(i64, Val)> {
    let be32 = |b: &[u8]| i32::from_be_bytes(b[..4].try_into().unwrap());
    let mut out = Vec::new();
    while !data.is_empty() {
        let offset = i64::from_be_bytes(data[..8].try_into().unwrap());
        let size = be32(&data[24..]) as usize;
        let (rec, rest) = data.split_at(28 + size);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&rec[..24]), &rec[32..]);
        assert_eq!(
            crc,
            be32(&rec[28..]) as u32,
            "checksum of the record at {offset}"
        );
        let body = &rec[32..];
        assert_eq!(body[0] as i8, MAGIC_V2);
        let (key, at) = match be32(&body[2..]) {
            -1 => (None, 6),
            n => (Some(body[6]), 6 + n as usize),
        };
        let n = be32(&body[at..]) as usize;
        let value = String::from_utf8(body[at + 4..at + 4 + n].to_vec()).unwrap();
        out.push((offset, Val { value, key }));
        data = rest;
    }
    out
}

fn val_of(r: &Record) -> Val {
    Val {
        value: String::from_utf8(r.value.to_vec()).expect("values are text"),
        key: r.key.as_ref().map(|k| k[0]),
    }
}

struct Model {
    /// Acknowledged and not removed by a successful truncation, retention or compaction.
    acked: BTreeMap<i64, Val>,
    /// Records that may or may not be there: written by an operation that failed, or meant to
    /// be removed by one that failed.
    maybe: BTreeMap<i64, BTreeSet<Val>>,
    /// Every value a reader may return at an offset: all written there and not truncated away.
    /// (A reader inside a segment that retention deleted or compaction replaced finishes it.)
    readable: BTreeMap<i64, BTreeSet<Val>>,
    /// The high watermark lies in this range (one value unless an operation failed).
    hw: (i64, i64),
    /// The checkpointed high watermark lies in this range.
    checkpoint: (i64, i64),
}

impl Model {
    fn add_maybe(&mut self, o: i64, v: Val) {
        self.maybe.entry(o).or_default().insert(v.clone());
        self.readable.entry(o).or_default().insert(v);
    }

    fn ack(&mut self, o: i64, v: Val) {
        self.acked.insert(o, v.clone());
        self.readable.entry(o).or_default().insert(v);
    }

    /// Removes from `acked` the records at `offsets`; they become maybes if `certain` is false.
    fn remove(&mut self, offsets: &[i64], certain: bool) {
        for o in offsets {
            if let Some(v) = self.acked.remove(o)
                && !certain
            {
                self.maybe.entry(*o).or_default().insert(v);
            }
            if certain {
                self.maybe.remove(o);
            }
        }
    }

    fn truncated(&mut self, at: i64, certain: bool) {
        let gone: Vec<i64> = self.acked.range(at..).map(|(o, _)| *o).collect();
        self.remove(&gone, certain);
        if certain {
            self.maybe.retain(|o, _| *o < at);
            self.readable.retain(|o, _| *o < at);
        }
    }
}

struct World {
    root: PathBuf,
    opts: LogOptions,
    plan: NthOp,
    log: Log,
    model: Model,
    fwd: commitlog::Reader,
    rev: ReverseReader,
    crashes: u32,
    serial: u64,
    /// The log was reopened in the last step: what recovery dropped is gone for good.
    reopened: bool,
}

/// Everything the log holds, read forward and uncommitted from the start.
fn contents(log: &Log) -> Vec<(i64, Val)> {
    let mut r = log.reader(0, Isolation::Uncommitted);
    let mut out: Vec<(i64, Val)> = Vec::new();
    while let Some(rec) = r.try_next().expect("forward read") {
        if let Some((p, _)) = out.last() {
            assert!(rec.offset > *p, "forward offsets {p} then {}", rec.offset);
        }
        out.push((rec.offset, val_of(&rec)));
        assert!(out.len() < 100_000, "a forward reader that never ends");
    }
    out
}

fn backward(log: &Log, iso: Isolation) -> Vec<(i64, Val)> {
    let mut r = log.reverse_reader(i64::MAX, iso);
    let mut out = Vec::new();
    while let Some(rec) = r.next().expect("reverse read") {
        out.push((rec.offset, val_of(&rec)));
        assert!(out.len() < 100_000, "a reverse reader that never ends");
    }
    out.reverse();
    out
}

impl World {
    fn open(&mut self, dir: &Path) -> Log {
        for _ in 0..2 {
            match Log::open(dir, self.opts.clone()) {
                Ok(l) => return l,
                // A fault armed for the next step may hit the recovery; then it goes again.
                Err(e) => {
                    assert!(
                        self.plan.injected() > 0,
                        "open failed with nothing injected: {e}"
                    );
                    self.plan.clear();
                }
            }
        }
        panic!("the log does not open without faults");
    }

    fn fresh_readers(&mut self) {
        self.fwd = self.log.reader(0, Isolation::Uncommitted);
        self.rev = self.log.reverse_reader(i64::MAX, Isolation::Uncommitted);
    }

    /// After a reopening that may have found an older checkpoint than the last high watermark.
    fn hw_from_checkpoint(&mut self) {
        let newest = self.log.newest_offset();
        self.model.hw = (
            self.model.checkpoint.0.min(newest),
            self.model.checkpoint.1.min(newest),
        );
    }

    fn tag(&mut self) -> String {
        self.serial += 1;
        format!("v{}", self.serial)
    }

    fn arm(&self, f: &Fault) {
        *self.plan.0.lock().unwrap() = NthState {
            only: f.op,
            countdown: Some(f.nth as u64),
            torn: f.torn,
            injected: self.plan.injected(),
        };
    }

    fn apply(&mut self, op: &Op) {
        let injected = self.plan.injected();
        match op {
            Op::Append { n, len, keyed } => {
                let before = self.log.next_offset();
                let tag = self.tag();
                let vals: Vec<Val> = (0..*n)
                    .map(|i| Val {
                        value: format!("{tag}.{i}{}", ".".repeat(*len as usize)),
                        key: keyed.then_some((self.serial as u8 + i) % 5),
                    })
                    .collect();
                let msgs: Vec<commitlog::Message> = vals
                    .iter()
                    .map(|v| {
                        let m = commitlog::Message::new(v.value.clone());
                        match v.key {
                            Some(k) => m.with_key(vec![k]),
                            None => m,
                        }
                    })
                    .collect();
                match self.log.append(&msgs) {
                    Ok(at) => {
                        assert_eq!(at.first_offset, before, "an append goes at the end");
                        for (i, v) in vals.into_iter().enumerate() {
                            self.model.ack(before + i as i64, v);
                        }
                    }
                    Err(e) => {
                        self.expect_fault(injected, &e);
                        for (i, v) in vals.into_iter().enumerate() {
                            self.model.add_maybe(before + i as i64, v);
                        }
                    }
                }
            }
            Op::AppendRaw { gap, n, spread } => {
                let first = self.log.next_offset() + *gap as i64;
                self.append_raw(injected, first, *n, *spread as i64);
            }
            Op::AppendRawFar => {
                let first = self.log.next_offset() + (1i64 << 32) + 7;
                self.append_raw(injected, first, 2, 1);
            }
            Op::Truncate(f) => {
                let next = self.log.next_offset();
                let lo = self.log.oldest_offset().max(0);
                let at = lo + ((next - lo) * *f as i64) / 255;
                match self.log.truncate(at) {
                    Ok(()) => {
                        self.model.truncated(at, true);
                        let newest = self.log.newest_offset();
                        let (lo, hi) = self.model.hw;
                        self.model.hw = (lo.min(newest), hi.min(newest));
                        // Durable when it returns: a crash must not bring back a higher mark.
                        // A truncation that lowered the mark writes it to the checkpoint.
                        let c = &mut self.model.checkpoint;
                        *c = (c.0.min(newest), c.1.min(newest));
                        if lo > newest {
                            *c = (newest, newest);
                        } else if hi > newest {
                            *c = (c.0, newest);
                        }
                    }
                    Err(e) => {
                        self.expect_fault(injected, &e);
                        self.model.truncated(at, false);
                        let newest = (at - 1).min(self.log.newest_offset());
                        self.model.hw.0 = self.model.hw.0.min(newest).max(-1);
                        // The cut may have happened and the lowered mark been checkpointed.
                        let c = &mut self.model.checkpoint;
                        *c = (c.0.min(newest).max(-1), c.1.max(self.log.high_watermark()));
                    }
                }
            }
            Op::SetHw(f) => {
                let newest = self.log.newest_offset();
                let target = -1 + ((newest + 1) * *f as i64) / 255;
                let now = self.log.set_high_watermark(target).unwrap();
                let t = target.min(newest);
                self.model.hw = (self.model.hw.0.max(t), self.model.hw.1.max(t));
                assert!(
                    (self.model.hw.0..=self.model.hw.1).contains(&now),
                    "set_high_watermark returned {now}, the model says {:?}",
                    self.model.hw
                );
            }
            Op::Checkpoint => {
                let hw = self.log.high_watermark();
                match self.log.checkpoint_high_watermark() {
                    Ok(()) => self.model.checkpoint = (hw, hw),
                    Err(e) => {
                        self.expect_fault(injected, &e);
                        let c = &mut self.model.checkpoint;
                        *c = (c.0.min(hw), c.1.max(hw));
                    }
                }
            }
            Op::Roll => {
                if let Err(e) = self.log.roll() {
                    self.expect_fault(injected, &e);
                }
            }
            Op::Retention => {
                let victims = self.retention_victims();
                match self.log.apply_retention() {
                    Ok(report) => {
                        assert_eq!(report.messages as usize, victims.len(), "retention deleted");
                        self.model.remove(&victims, true);
                    }
                    Err(e) => {
                        self.expect_fault(injected, &e);
                        self.model.remove(&victims, false);
                    }
                }
            }
            Op::Compact => {
                let victims = self.compaction_victims();
                match self.log.compact() {
                    Ok(report) => {
                        assert_eq!(
                            report.messages_removed as usize,
                            victims.len(),
                            "compaction removed"
                        );
                        self.model.remove(&victims, true);
                    }
                    Err(e) => {
                        self.expect_fault(injected, &e);
                        self.model.remove(&victims, false);
                    }
                }
            }
            Op::Reopen => {
                let closed = self.log.close();
                let dir = self.log.dir().to_path_buf();
                if let Err(e) = &closed {
                    self.expect_fault(injected, e);
                }
                let hw = self.log.high_watermark();
                self.log = self.open(&dir);
                match closed {
                    Ok(()) => {
                        self.model.checkpoint = (hw, hw);
                        self.model.hw = (hw, hw);
                    }
                    Err(_) => {
                        let c = &mut self.model.checkpoint;
                        *c = (c.0.min(hw), c.1.max(hw));
                        self.hw_from_checkpoint();
                    }
                }
                self.fresh_readers();
                self.reopened = true;
            }
            Op::Crash => {
                self.plan.clear();
                self.crashes += 1;
                let to = self.root.join(format!("crash{}", self.crashes));
                crash_copy(self.log.dir(), &to);
                let new = self.open(&to);
                drop(std::mem::replace(&mut self.log, new));
                assert!(!self.log.recovery().clean_shutdown);
                self.hw_from_checkpoint();
                self.fresh_readers();
                self.reopened = true;
            }
            Op::Read => self.step_readers(),
        }
        if self.log.failure().is_some() {
            // A log that refuses writes is reopened, as its owner would.
            self.apply(&Op::Crash);
        }
    }

    fn expect_fault(&self, injected_before: u64, e: &Error) {
        assert!(
            self.plan.injected() > injected_before || matches!(e, Error::Failed(_)),
            "an error with no fault injected: {e}"
        );
    }

    fn append_raw(&mut self, injected: u64, first: i64, n: u8, spread: i64) {
        let tag = self.tag();
        let recs: Vec<(i64, Val)> = (0..n as i64)
            .map(|i| {
                (
                    first + i * spread,
                    Val {
                        value: format!("{tag}.{i}"),
                        key: Some(((self.serial as i64 + i) % 5) as u8),
                    },
                )
            })
            .collect();
        let data: Vec<u8> = recs.iter().flat_map(|(o, v)| encode(*o, v)).collect();
        match self.log.append_raw(&data) {
            Ok(at) => {
                assert_eq!(
                    (at.first_offset, at.last_offset),
                    (first, recs.last().unwrap().0)
                );
                for (o, v) in recs {
                    self.model.ack(o, v);
                }
            }
            Err(e) => {
                self.expect_fault(injected, &e);
                for (o, v) in recs {
                    self.model.add_maybe(o, v);
                }
            }
        }
    }

    /// The offsets retention deletes, by the documented rule on the current segments.
    fn retention_victims(&self) -> Vec<i64> {
        let segs = self.log.segments();
        let mut keep_from = segs.len() - 1;
        let mut msgs = 0u64;
        for i in (0..segs.len()).rev() {
            msgs += segs[i].records;
            if i + 1 < segs.len() && msgs > RETAIN_MESSAGES {
                break;
            }
            keep_from = i;
        }
        // Only whole segments of committed records go.
        let hw = self.log.high_watermark();
        let committed = segs[..segs.len() - 1]
            .iter()
            .take_while(|s| s.next_offset <= hw + 1)
            .count();
        let keep_from = keep_from.min(committed);
        let below = segs[keep_from].base_offset;
        contents(&self.log)
            .into_iter()
            .map(|(o, _)| o)
            .filter(|o| *o < below)
            .collect()
    }

    /// The offsets compaction removes: committed keyed records of sealed segments with a newer
    /// committed record of the same key.
    fn compaction_victims(&self) -> Vec<i64> {
        let hw = self.log.high_watermark();
        let segs = self.log.segments();
        if hw < 0 || segs.len() < 2 {
            return Vec::new();
        }
        let active = segs.last().unwrap().base_offset;
        let all = contents(&self.log);
        let mut latest = BTreeMap::new();
        for (o, v) in all.iter().filter(|(o, _)| *o <= hw) {
            if let Some(k) = v.key {
                latest.insert(k, *o);
            }
        }
        all.iter()
            .filter(|(o, v)| *o <= hw && *o < active && v.key.is_some_and(|k| latest[&k] != *o))
            .map(|(o, _)| *o)
            .collect()
    }

    /// Long-lived readers step: what they return was in the log at that offset.
    fn step_readers(&mut self) {
        for _ in 0..3 {
            match self.fwd.try_next() {
                Ok(Some(r)) => {
                    let ok = self
                        .model
                        .readable
                        .get(&r.offset)
                        .is_some_and(|s| s.contains(&val_of(&r)));
                    assert!(
                        ok,
                        "a forward reader returned {:?} at {}",
                        val_of(&r),
                        r.offset
                    );
                }
                Ok(None) => break,
                Err(e) => panic!("forward reader: {e}"),
            }
        }
        for _ in 0..3 {
            match self.rev.next() {
                Ok(Some(r)) => {
                    let ok = self
                        .model
                        .readable
                        .get(&r.offset)
                        .is_some_and(|s| s.contains(&val_of(&r)));
                    assert!(
                        ok,
                        "a reverse reader returned {:?} at {}, removed by a truncation",
                        val_of(&r),
                        r.offset
                    );
                }
                Ok(None) => break,
                Err(e) => panic!("reverse reader: {e}"),
            }
        }
    }

    /// Everything a client can see agrees with the model; then the model takes in what the
    /// log shows where it was uncertain.
    fn check(&mut self) {
        let log = &self.log;
        let all = contents(log);
        let next = log.next_offset();
        // Nothing acknowledged is missing, nothing unknown is there.
        let got: BTreeMap<i64, Val> = all.iter().cloned().collect();
        for (o, v) in &self.model.acked {
            assert_eq!(got.get(o), Some(v), "acknowledged offset {o}");
        }
        for (o, v) in &got {
            if self.model.acked.get(o) != Some(v) {
                assert!(
                    self.model.maybe.get(o).is_some_and(|s| s.contains(v)),
                    "offset {o} holds {v:?}, never written there (or truncated away)"
                );
            }
        }
        if std::mem::take(&mut self.reopened) {
            self.model
                .maybe
                .retain(|o, s| got.get(o).is_some_and(|v| s.contains(v)));
        }
        // Offsets and the high watermark.
        assert!(all.iter().all(|(o, _)| *o < next), "a record past the end");
        assert_eq!(
            log.oldest_offset(),
            all.first().map_or(-1, |(o, _)| *o),
            "oldest"
        );
        let hw = log.high_watermark();
        assert!(
            hw < next,
            "high watermark {hw} above the newest offset {}",
            next - 1
        );
        assert!(
            (self.model.hw.0..=self.model.hw.1).contains(&hw),
            "high watermark {hw}, the model says {:?}",
            self.model.hw
        );
        self.model.hw = (hw, hw);
        // Readers in both directions, committed and not.
        assert_eq!(backward(log, Isolation::Uncommitted), all, "reverse read");
        let committed: Vec<(i64, Val)> = all.iter().filter(|(o, _)| *o <= hw).cloned().collect();
        let mut r = log.reader(0, Isolation::Committed);
        let mut fwd_committed = Vec::new();
        while let Some(rec) = r.try_next().expect("committed read") {
            fwd_committed.push((rec.offset, val_of(&rec)));
            assert!(
                fwd_committed.len() <= committed.len(),
                "committed read past the hw"
            );
        }
        assert_eq!(fwd_committed, committed, "committed read");
        assert_eq!(
            backward(log, Isolation::Committed),
            committed,
            "committed reverse read"
        );
        // A follower's reads, with a budget below one record and with a large one: whole,
        // valid records, every one of them once.
        for budget in [1usize, 4096] {
            let mut at = 0;
            let mut raw = Vec::new();
            while let Some(b) = log.read_raw(at, budget).expect("read_raw") {
                let recs = decode_all(&b.data);
                assert!(b.first_offset >= at && b.count == recs.len() && b.count > 0);
                assert_eq!(recs.first().map(|r| r.0), Some(b.first_offset));
                assert_eq!(recs.last().map(|r| r.0), Some(b.last_offset));
                raw.extend(recs);
                at = b.last_offset + 1;
                assert!(raw.len() <= all.len(), "read_raw past the end");
            }
            assert_eq!(raw, all, "read_raw with a budget of {budget} bytes");
        }
        // A lookup at every offset up to the end (and in every gap) finds the next record.
        let probes: BTreeSet<i64> = all
            .iter()
            .flat_map(|(o, _)| [*o - 1, *o, *o + 1])
            .chain([0, next - 1, next])
            .filter(|o| *o >= 0)
            .collect();
        for o in probes {
            let want = all.iter().find(|(p, _)| *p >= o).cloned();
            let got = log
                .read_at(o)
                .expect("read_at")
                .map(|r| (r.offset, val_of(&r)));
            assert_eq!(got, want, "read_at({o})");
        }
        // The segments account for every record.
        let segs = log.segments();
        assert_eq!(
            segs.iter().map(|s| s.records).sum::<u64>(),
            all.len() as u64,
            "records in the segments"
        );
        assert!(segs.windows(2).all(|w| w[0].base_offset < w[1].base_offset));
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

fn run(ops: &[(Op, Option<Fault>)], sync: SyncPolicy, interval: u64) {
    let root = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_max_bytes: 1024,
        index_interval_bytes: interval,
        sync,
        retention: Retention {
            max_messages: Some(RETAIN_MESSAGES),
            ..Retention::default()
        },
        ..LogOptions::default()
    };
    let plan = NthOp::default();
    // Registered for the whole root, so the folders of crashed logs are covered too.
    let _faults = faults::inject(root.path(), plan.clone());
    let log = Log::open(root.path().join("log"), opts.clone()).unwrap();
    let fwd = log.reader(0, Isolation::Uncommitted);
    let rev = log.reverse_reader(i64::MAX, Isolation::Uncommitted);
    let mut w = World {
        root: root.path().to_path_buf(),
        opts,
        plan,
        log,
        model: Model {
            acked: BTreeMap::new(),
            maybe: BTreeMap::new(),
            readable: BTreeMap::new(),
            hw: (-1, -1),
            checkpoint: (-1, -1),
        },
        fwd,
        rev,
        crashes: 0,
        serial: 0,
        reopened: false,
    };
    for (op, fault) in ops {
        if let Some(f) = fault {
            w.arm(f);
        }
        w.apply(op);
        w.plan.clear();
        w.check();
    }
    // A last clean close and reopening keeps everything acknowledged.
    w.plan.clear();
    w.apply(&Op::Reopen);
    w.check();
    w.log.close().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn the_log_keeps_what_it_acknowledged_under_any_schedule(
        ops in prop::collection::vec(step(), 1..40),
        always in any::<bool>(),
        wide_index in any::<bool>(),
    ) {
        let sync = if always { SyncPolicy::Always } else { SyncPolicy::Os };
        run(&ops, sync, if wide_index { 4096 } else { 64 });
    }
}

// Cases the schedule above found, kept as plain tests.

/// A follower's batch far past the end of an empty log restarts the active segment at the
/// batch's first offset. When a later step of that append fails (here the leader-epoch
/// checkpoint, the first file creation after the restart), the append reports an error but the
/// active segment stays based far above the log end: the next append then wrote its record
/// below the segment's base, acknowledged it, and no reader could find it.
#[test]
fn a_failed_far_append_leaves_no_segment_based_above_the_end() {
    let root = tempfile::tempdir().unwrap();
    let log = Log::open(root.path(), LogOptions::default()).unwrap();
    let far = (1i64 << 32) + 7;
    let v = |s: &str| Val {
        value: s.into(),
        key: None,
    };
    {
        let plan = faults::Plan::new().with(faults::Rule::new(FileOp::Create).on(".tmp"));
        let _f = faults::inject(root.path(), plan.clone());
        assert!(log.append_raw(&encode(far, &v("far"))).is_err());
        assert_eq!(plan.injected(), 1);
    }
    let at = log.append(&[commitlog::Message::new("next")]);
    if let Ok(at) = at {
        let got = log
            .read_at(at.first_offset)
            .unwrap()
            .map(|r| val_of(&r).value);
        assert_eq!(
            got.as_deref(),
            Some("next"),
            "acknowledged at {}",
            at.first_offset
        );
        let all = contents(&log);
        assert!(all.iter().any(|(o, _)| *o == at.first_offset), "{all:?}");
        log.close().unwrap();
        let log = Log::open(root.path(), LogOptions::default()).unwrap();
        let all = contents(&log);
        assert!(
            all.iter().any(|(o, _)| *o == at.first_offset),
            "after reopening: {all:?}, {:?}",
            log.recovery()
        );
    }
}

/// The same past a non-empty segment: the roll bases the new segment at the batch, and a write
/// that then fails leaves that segment active above the log end.
#[test]
fn a_far_append_whose_write_fails_leaves_no_segment_based_above_the_end() {
    let root = tempfile::tempdir().unwrap();
    let log = Log::open(root.path(), LogOptions::default()).unwrap();
    log.append(&[commitlog::Message::new("first")]).unwrap();
    let far = (1i64 << 32) + 7;
    let rec = encode(
        far,
        &Val {
            value: "far".into(),
            key: None,
        },
    );
    {
        let plan = faults::Plan::new().with(faults::Rule::new(FileOp::Write).on(".log"));
        let _f = faults::inject(root.path(), plan.clone());
        assert!(log.append_raw(&rec).is_err());
        assert_eq!(plan.injected(), 1);
    }
    if let Ok(at) = log.append(&[commitlog::Message::new("next")]) {
        let got = log
            .read_at(at.first_offset)
            .unwrap()
            .map(|r| val_of(&r).value);
        assert_eq!(
            got.as_deref(),
            Some("next"),
            "acknowledged at {}",
            at.first_offset
        );
        let all = contents(&log);
        assert!(all.iter().any(|(o, _)| *o == at.first_offset), "{all:?}");
        log.close().unwrap();
        let log = Log::open(root.path(), LogOptions::default()).unwrap();
        let all = contents(&log);
        assert!(
            all.iter().any(|(o, _)| *o == at.first_offset),
            "after reopening: {all:?}, {:?}",
            log.recovery()
        );
    }
}

/// A compaction that fails after moving the compacted file over its segment (writing the new
/// index fails) must leave the log working on that file: the old segment's handle points at the
/// replaced file, so a truncation through it cut the replaced file and left the compacted one
/// whole, and a reopening brought the truncated records back.
#[test]
fn a_compaction_failing_after_its_rename_leaves_no_stale_segment() {
    let root = tempfile::tempdir().unwrap();
    let log = Log::open(root.path(), LogOptions::default()).unwrap();
    for v in ["a1", "a2"] {
        log.append(&[commitlog::Message::new(v).with_key("a")])
            .unwrap();
    }
    log.append(&[commitlog::Message::new("b")]).unwrap();
    log.set_high_watermark(2).unwrap();
    log.roll().unwrap();
    {
        let plan = faults::Plan::new().with(faults::Rule::new(FileOp::Create).on(".index"));
        let _f = faults::inject(root.path(), plan.clone());
        assert!(log.compact().is_err());
        assert_eq!(plan.injected(), 1);
    }
    log.truncate(0).unwrap();
    assert_eq!(contents(&log), vec![]);
    log.close().unwrap();
    let log = Log::open(root.path(), LogOptions::default()).unwrap();
    assert_eq!(contents(&log), vec![], "truncated records came back");
}

/// A truncation whose cut itself fails (`ftruncate`) must leave the log as it was, or failed:
/// the segment's index had already dropped the entries past the cut, so `oldest_offset` said -1
/// while the records were still read, and later lookups went by a wrong index.
#[test]
fn a_truncation_whose_cut_fails_leaves_the_log_as_it_was() {
    let root = tempfile::tempdir().unwrap();
    let log = Log::open(root.path(), LogOptions::default()).unwrap();
    log.append(&[commitlog::Message::new("kept")]).unwrap();
    {
        let plan = faults::Plan::new().with(faults::Rule::new(FileOp::SetLen));
        let _f = faults::inject(root.path(), plan.clone());
        assert!(log.truncate(0).is_err());
        assert_eq!(plan.injected(), 1);
    }
    if log.failure().is_none() {
        let all = contents(&log);
        assert_eq!(all.len(), 1);
        assert_eq!(log.oldest_offset(), 0, "oldest offset of {all:?}");
        assert_eq!(log.segments()[0].first_offset, Some(0));
    }
}

/// Holds the first sync of a `.log` file until released, and fails every creation of a `.tmp`
/// file (the leader-epoch checkpoint's) once armed.
#[derive(Clone, Default)]
struct HoldFirstSync(std::sync::Arc<(std::sync::Mutex<GateState>, std::sync::Condvar)>);

/// Holding the sync, released, failing `.tmp` creations.
type GateState = (bool, bool, bool);

impl Injector for HoldFirstSync {
    fn before(&self, op: FileOp, path: &Path) -> Option<faults::Fault> {
        let (m, cv) = &*self.0;
        let mut st = m.lock().unwrap();
        let (holding, released, fail_tmp) = &mut *st;
        if op == FileOp::Create && *fail_tmp && path.extension().is_some_and(|e| e == "tmp") {
            return Some(faults::Fault {
                errno: faults::EIO,
                torn: false,
            });
        }
        if op == FileOp::Sync
            && path.extension().is_some_and(|e| e == "log")
            && !*holding
            && !*released
        {
            *holding = true;
            cv.notify_all();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !st.1 && std::time::Instant::now() < deadline {
                st = cv
                    .wait_timeout(st, std::time::Duration::from_millis(50))
                    .unwrap()
                    .0;
            }
        }
        None
    }
}

/// Found by the shuttle model checks (`tests/shuttle.rs`): an append under the always policy
/// waiting for its sync while a truncation cuts below it. The truncation counts its generation,
/// then saves the leader-epoch checkpoint, and only then records where it cut; until then the
/// appender cannot tell where the cut was and runs sync rounds in a busy loop. When the epoch
/// checkpoint fails, the truncation returns its error and never records the cut: the appender
/// spins for good (here: until the deadline).
#[test]
fn an_append_waiting_for_its_sync_returns_when_a_truncation_fails_after_its_cut() {
    let root = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        sync: SyncPolicy::Always,
        ..LogOptions::default()
    };
    let log = Log::open(root.path(), opts).unwrap();
    log.append(&[commitlog::Message::new("kept").with_leader_epoch(0)])
        .unwrap();
    log.append(&[commitlog::Message::new("e1").with_leader_epoch(1)])
        .unwrap();
    let gate = HoldFirstSync::default();
    let _f = faults::inject(root.path(), gate.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            let r = log.append(&[commitlog::Message::new("cut").with_leader_epoch(1)]);
            let _ = tx.send(r);
        });
    }
    {
        let (m, cv) = &*gate.0;
        let mut st = m.lock().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !st.0 && std::time::Instant::now() < deadline {
            st = cv
                .wait_timeout(st, std::time::Duration::from_millis(50))
                .unwrap()
                .0;
        }
        assert!(st.0, "the append's sync round never started");
        st.2 = true; // the epoch checkpoint now fails
    }
    assert!(log.truncate(1).is_err(), "the epoch checkpoint failed");
    {
        let (m, cv) = &*gate.0;
        m.lock().unwrap().1 = true;
        cv.notify_all();
    }
    let result = rx.recv_timeout(std::time::Duration::from_secs(10));
    assert!(
        matches!(result, Ok(Err(_))),
        "the append cut by the truncation: {result:?} (a timeout: still spinning)"
    );
}
