//! Model test: random sequences of operations against the log and against a plain in-memory
//! model of segments, compared after every step.

use std::collections::HashMap;

use bytes::Bytes;
use commitlog::{Isolation, Log, LogOptions, Message, Retention};
use proptest::prelude::*;

mod common;

use common::crash_copy;

const RETAIN_MESSAGES: u64 = 25;

#[derive(Debug, Clone)]
enum Op {
    /// Messages as (key, value length); keys come from a small set so compaction has work.
    Append(Vec<(Option<u8>, u16)>),
    Roll,
    /// Set the high watermark to this fraction (in 1/256) of the way from -1 to the newest.
    SetHw(u8),
    /// Truncate at this fraction of the way from the oldest offset to the end.
    Truncate(u8),
    Retention,
    Compact,
    Reopen,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec((prop::option::weighted(0.8, 0u8..6), 0u16..300), 1..6).prop_map(Op::Append),
        2 => Just(Op::Roll),
        3 => any::<u8>().prop_map(Op::SetHw),
        1 => any::<u8>().prop_map(Op::Truncate),
        1 => Just(Op::Retention),
        2 => Just(Op::Compact),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct Rec {
    offset: i64,
    key: Option<u8>,
    len: u16,
}

#[derive(Debug, Clone)]
struct Seg {
    base: i64,
    recs: Vec<Rec>,
}

#[derive(Debug)]
struct Model {
    segs: Vec<Seg>,
    hw: i64,
    hw_checkpoint: i64,
}

impl Model {
    fn next(&self) -> i64 {
        let last = self.segs.last().unwrap();
        last.recs.last().map_or(last.base, |r| r.offset + 1)
    }

    fn oldest(&self) -> i64 {
        self.segs
            .iter()
            .find_map(|s| s.recs.first())
            .map_or(-1, |r| r.offset)
    }

    fn all(&self) -> Vec<Rec> {
        self.segs.iter().flat_map(|s| s.recs.clone()).collect()
    }
}

fn value(offset: i64, len: u16) -> Bytes {
    let mut v = format!("{offset}/").into_bytes();
    v.resize(len as usize + v.len(), b'.');
    Bytes::from(v)
}

fn opts() -> LogOptions {
    LogOptions {
        segment_max_bytes: 1 << 20, // rolls happen only when the test says so
        index_interval_bytes: 64,
        retention: Retention {
            max_messages: Some(RETAIN_MESSAGES),
            ..Retention::default()
        },
        ..LogOptions::default()
    }
}

fn apply(log: &mut Log, model: &mut Model, op: &Op, root: &std::path::Path, crashes: &mut u32) {
    match op {
        Op::Append(msgs) => {
            let first = model.next();
            let batch: Vec<Message> = msgs
                .iter()
                .enumerate()
                .map(|(i, (k, len))| {
                    let m = Message::new(value(first + i as i64, *len))
                        .with_timestamp(first + i as i64);
                    match k {
                        Some(k) => m.with_key(vec![*k]),
                        None => m,
                    }
                })
                .collect();
            let at = log.append(&batch).unwrap();
            assert_eq!(at.first_offset, first);
            let last = model.segs.last_mut().unwrap();
            for (i, (k, len)) in msgs.iter().enumerate() {
                last.recs.push(Rec {
                    offset: first + i as i64,
                    key: *k,
                    len: *len,
                });
            }
        }
        Op::Roll => {
            log.roll().unwrap();
            if !model.segs.last().unwrap().recs.is_empty() {
                let base = model.next();
                model.segs.push(Seg { base, recs: vec![] });
            }
        }
        Op::SetHw(f) => {
            let newest = model.next() - 1;
            let target = -1 + ((newest + 1) * *f as i64) / 255;
            log.set_high_watermark(target).unwrap();
            model.hw = model.hw.max(target.min(newest));
        }
        Op::Truncate(f) => {
            let lo = model.oldest().max(0);
            let o = lo + ((model.next() - lo) * *f as i64) / 255;
            log.truncate(o).unwrap();
            if o < model.next() {
                while model.segs.len() > 1 && model.segs.last().unwrap().base >= o {
                    model.segs.pop();
                }
                let last = model.segs.last_mut().unwrap();
                if last.base > o {
                    *last = Seg {
                        base: o,
                        recs: vec![],
                    };
                } else {
                    last.recs.retain(|r| r.offset < o);
                }
                if model.hw > model.next() - 1 {
                    // A lowered mark is checkpointed before the truncation returns.
                    model.hw = model.next() - 1;
                    model.hw_checkpoint = model.hw;
                }
            }
        }
        Op::Retention => {
            log.apply_retention().unwrap();
            let mut keep_from = model.segs.len() - 1;
            let mut msgs = 0u64;
            for i in (0..model.segs.len()).rev() {
                msgs += model.segs[i].recs.len() as u64;
                if i + 1 < model.segs.len() && msgs > RETAIN_MESSAGES {
                    break;
                }
                keep_from = i;
            }
            // Only segments whose records are all committed.
            let committed = model.segs[..model.segs.len() - 1]
                .iter()
                .take_while(|s| s.recs.last().map_or(s.base, |r| r.offset + 1) <= model.hw + 1)
                .count();
            model.segs.drain(..keep_from.min(committed));
        }
        Op::Compact => {
            log.compact().unwrap();
            let hw = model.hw;
            if hw >= 0 && model.segs.len() >= 2 {
                let latest: HashMap<u8, i64> = model
                    .all()
                    .into_iter()
                    .filter(|r| r.offset <= hw)
                    .filter_map(|r| r.key.map(|k| (k, r.offset)))
                    .collect();
                let n = model.segs.len();
                let mut out = Vec::new();
                for (i, seg) in model.segs.drain(..).enumerate() {
                    let eligible = i + 1 < n && seg.recs.first().is_some_and(|r| r.offset <= hw);
                    if !eligible {
                        out.push(seg);
                        continue;
                    }
                    let recs: Vec<Rec> = seg
                        .recs
                        .into_iter()
                        .filter(|r| r.offset > hw || r.key.is_none_or(|k| latest[&k] == r.offset))
                        .collect();
                    if !recs.is_empty() {
                        out.push(Seg {
                            base: seg.base,
                            recs,
                        });
                    }
                }
                model.segs = out;
            }
        }
        Op::Reopen => {
            log.close().unwrap();
            *log = Log::open(log.dir(), opts()).unwrap();
            model.hw_checkpoint = model.hw;
            assert!(log.recovery().clean_shutdown);
            assert!(log.recovery().repaired.is_empty(), "{:?}", log.recovery());
        }
        Op::Crash => {
            *crashes += 1;
            let to = root.join(format!("crash{crashes}"));
            crash_copy(log.dir(), &to);
            let _ = std::fs::remove_file(to.join(commitlog::CLEAN_FILE));
            let old = std::mem::replace(log, Log::open(&to, opts()).unwrap());
            drop(old);
            model.hw = model.hw_checkpoint.min(model.next() - 1);
            // A checkpoint above the end is lowered on disk at open.
            model.hw_checkpoint = model.hw;
            assert_eq!(log.recovery().truncated_bytes(), 0);
        }
    }
}

fn check(log: &Log, model: &Model) {
    let bases: Vec<(i64, u64)> = log
        .segments()
        .iter()
        .map(|s| (s.base_offset, s.records))
        .collect();
    let expect: Vec<(i64, u64)> = model
        .segs
        .iter()
        .map(|s| (s.base, s.recs.len() as u64))
        .collect();
    assert_eq!(bases, expect, "segments");
    assert_eq!(log.next_offset(), model.next(), "next offset");
    assert_eq!(log.oldest_offset(), model.oldest(), "oldest offset");
    assert_eq!(log.high_watermark(), model.hw, "high watermark");
    let all = model.all();
    let mut r = log.reader(0, Isolation::Uncommitted);
    for m in &all {
        let rec = r.try_next().unwrap().expect("record missing");
        assert_eq!(rec.offset, m.offset);
        assert_eq!(rec.key, m.key.map(|k| Bytes::from(vec![k])));
        assert_eq!(rec.value, value(m.offset, m.len));
    }
    assert!(r.try_next().unwrap().is_none(), "extra record");
    let committed: Vec<i64> = all
        .iter()
        .map(|r| r.offset)
        .filter(|o| *o <= model.hw)
        .collect();
    let mut r = log.reader(0, Isolation::Committed);
    let mut got = Vec::new();
    while let Some(rec) = r.try_next().unwrap() {
        got.push(rec.offset);
    }
    assert_eq!(got, committed, "committed read");
    let mut rr = log.reverse_reader(i64::MAX, Isolation::Uncommitted);
    let mut back = Vec::new();
    while let Some(rec) = rr.next().unwrap() {
        back.push(rec.offset);
    }
    back.reverse();
    assert_eq!(
        back,
        all.iter().map(|r| r.offset).collect::<Vec<_>>(),
        "reverse read"
    );
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

proptest! {
    // PROPTEST_CASES raises the count for a longer local run.
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn log_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let root = tempfile::tempdir().unwrap();
        let mut log = Log::open(root.path().join("log"), opts()).unwrap();
        let mut model = Model { segs: vec![Seg { base: 0, recs: vec![] }], hw: -1, hw_checkpoint: -1 };
        let mut crashes = 0;
        for op in &ops {
            apply(&mut log, &mut model, op, root.path(), &mut crashes);
            check(&log, &model);
        }
        log.close().unwrap();
    }
}
