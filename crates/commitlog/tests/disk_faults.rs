//! Disk faults injected through `commitlog::faults`: a failed write, sync, file creation, rename
//! or removal never makes unacknowledged data readable, never leaves records that were not
//! written whole, and never stops the log from reopening with every acknowledged record, byte
//! for byte.

use std::collections::HashMap;
use std::path::Path;

use commitlog::faults::{self, ENOSPC, FileOp, Plan, Rule};
use commitlog::{Error, Isolation, Log, LogOptions, Message, Retention, SyncPolicy};
use proptest::prelude::*;

fn opts(sync: SyncPolicy) -> LogOptions {
    LogOptions {
        segment_max_bytes: 4096,
        index_interval_bytes: 256,
        sync,
        ..LogOptions::default()
    }
}

/// Messages of one size, so that records of different batches line up byte for byte.
fn msg(tag: &str, i: usize) -> Message {
    Message::new(format!("{tag}-{i:04}"))
        .with_key(format!("k{}", i % 4))
        .with_timestamp(1_000 + i as i64)
        .with_leader_epoch(1)
}

fn batch(tag: &str, n: usize) -> Vec<Message> {
    (0..n).map(|i| msg(tag, i)).collect()
}

/// Every record, in order, as (offset, value), read as a follower or a consumer would.
fn contents(log: &Log) -> Vec<(i64, String)> {
    let mut r = log.reader(0, Isolation::Uncommitted);
    let mut out = Vec::new();
    for _ in 0..100_000 {
        match r.try_next().unwrap() {
            Some(rec) => out.push((rec.offset, String::from_utf8(rec.value.to_vec()).unwrap())),
            None => return out,
        }
    }
    panic!("the log did not end");
}

fn values(tag: &str, n: usize, first: i64) -> Vec<(i64, String)> {
    (0..n)
        .map(|i| (first + i as i64, format!("{tag}-{i:04}")))
        .collect()
}

fn reopen(dir: &Path, log: Log, sync: SyncPolicy) -> Log {
    let _ = log.close();
    drop(log);
    Log::open(dir, opts(sync)).unwrap()
}

#[test]
fn a_failed_sync_leaves_nothing_visible_and_the_log_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts(SyncPolicy::Always)).unwrap();
    log.append(&batch("ok", 3)).unwrap();
    let plan = Plan::new().with(Rule::new(FileOp::Sync).on(".log"));
    let fault = faults::inject(dir.path(), plan.clone());

    let err = log.append(&batch("lost", 5)).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_eq!(plan.injected(), 1);
    assert_eq!(
        log.next_offset(),
        3,
        "the unsynced batch must not be visible"
    );
    assert_eq!(contents(&log), values("ok", 3, 0));
    assert_eq!(log.read_raw(3, 1 << 20).unwrap(), None, "nor replicable");
    assert_eq!(log.set_high_watermark(7).unwrap(), 2, "nor committable");
    assert!(log.failure().is_some());

    // The disk is fine again, but the kernel may have dropped the pages: still refused.
    drop(fault);
    assert!(matches!(
        log.append(&batch("after", 1)),
        Err(Error::Failed(_))
    ));
    assert!(log.close().is_err(), "a failed log is not closed as clean");

    // Reopening recovers what the disk holds: every acknowledged record, and here the failed
    // batch too (its bytes reached the page cache), whole: an error means "maybe", never a
    // torn record.
    let log = Log::open(dir.path(), opts(SyncPolicy::Always)).unwrap();
    assert!(!log.recovery().clean_shutdown);
    let mut expected = values("ok", 3, 0);
    expected.extend(values("lost", 5, 3));
    assert_eq!(contents(&log), expected);
    log.append(&batch("next", 2)).unwrap();
    assert_eq!(log.next_offset(), 10);
}

#[test]
fn a_waiting_appender_shares_the_failed_sync_and_sees_nothing_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts(SyncPolicy::Always)).unwrap();
    let _fault = faults::inject(
        dir.path(),
        Plan::new().with(Rule::new(FileOp::Sync).on(".log")),
    );
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || log.append(&batch(&format!("t{t}"), 10)).is_ok())
        })
        .collect();
    let acked = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(acked, 0, "no append may succeed while every sync fails");
    assert_eq!(log.next_offset(), 0);
    assert!(contents(&log).is_empty());
}

#[test]
fn a_torn_write_is_cut_back_so_no_phantom_records_survive() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts(SyncPolicy::Os)).unwrap();
    log.append(&batch("ok", 2)).unwrap();
    let plan = Plan::new().with(
        Rule::new(FileOp::Write)
            .on(".log")
            .times(1)
            .errno(ENOSPC)
            .torn(),
    );
    let fault = faults::inject(dir.path(), plan.clone());
    let err = log.append(&batch("tt", 10)).unwrap_err();
    assert!(matches!(&err, Error::Io { source, .. } if source.raw_os_error() == Some(ENOSPC)));
    assert_eq!(plan.injected(), 1);
    assert_eq!(log.next_offset(), 2);
    assert!(
        log.failure().is_none(),
        "space may come back: the log stays writable"
    );
    drop(fault);

    // Same-sized records at the same offsets: without the cut, the torn batch's tail would
    // line up behind them and come back as records on recovery.
    let at = log.append(&batch("re", 2)).unwrap();
    assert_eq!((at.first_offset, at.last_offset), (2, 3));
    let mut expected = values("ok", 2, 0);
    expected.extend(values("re", 2, 2));
    assert_eq!(contents(&log), expected);

    // A crash (no clean close) and a recovery: the same, byte for byte.
    std::mem::forget(log);
    let copy = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let e = e.unwrap();
        if e.file_name() != ".lock" {
            std::fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
        }
    }
    let log = Log::open(copy.path(), opts(SyncPolicy::Os)).unwrap();
    assert_eq!(contents(&log), expected);
}

#[test]
fn a_torn_write_that_cannot_be_cut_fails_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts(SyncPolicy::Os)).unwrap();
    log.append(&batch("ok", 2)).unwrap();
    let fault = faults::inject(
        dir.path(),
        Plan::new()
            .with(Rule::new(FileOp::Write).on(".log").torn())
            .with(Rule::new(FileOp::SetLen)),
    );
    assert!(matches!(
        log.append(&batch("torn", 10)),
        Err(Error::Failed(_))
    ));
    drop(fault);
    assert!(matches!(log.append(&batch("x", 1)), Err(Error::Failed(_))));
    let log = reopen(dir.path(), log, SyncPolicy::Os);
    // Recovery keeps the whole records of the torn write and cuts the rest.
    let got = contents(&log);
    assert_eq!(&got[..2], &values("ok", 2, 0)[..]);
    assert!(got.len() < 12, "{got:?}");
    assert_eq!(&got[2..], &values("torn", got.len() - 2, 2)[..]);
}

#[test]
fn a_failed_roll_refuses_the_batch_and_the_next_one_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts(SyncPolicy::Os)).unwrap();
    let big = |tag: &str| -> Vec<Message> {
        (0..20)
            .map(|i| Message::new(format!("{tag}-{i:04}-{}", "v".repeat(100))))
            .collect()
    };
    log.append(&big("a")).unwrap();
    let fault = faults::inject(
        dir.path(),
        Plan::new().with(Rule::new(FileOp::Create).errno(ENOSPC)),
    );
    // 20 more records of ~140 bytes do not fit the 4 KiB segment: a roll, which fails.
    assert!(log.append(&big("b")).is_err());
    assert_eq!(log.next_offset(), 20);
    assert_eq!(log.segments().len(), 1);
    drop(fault);
    log.append(&big("c")).unwrap();
    assert_eq!(log.segments().len(), 2);
    let log = reopen(dir.path(), log, SyncPolicy::Os);
    assert_eq!(log.next_offset(), 40);
    let second = log.read_at(20).unwrap().unwrap();
    assert!(second.value.starts_with(b"c-0000"));
}

#[test]
fn a_roll_whose_index_write_fails_leaves_no_segment_behind() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts(SyncPolicy::Always)).unwrap();
    let big = |tag: &str, n: usize| -> Vec<Message> {
        (0..n)
            .map(|i| Message::new(format!("{tag}-{i:04}-{}", "v".repeat(100))))
            .collect()
    };
    log.append(&big("a", 20)).unwrap();
    let fault = faults::inject(
        dir.path(),
        Plan::new().with(Rule::new(FileOp::Write).on(".index")),
    );
    assert!(log.append(&big("b", 20)).is_err(), "the roll fails");
    drop(fault);
    // Fits the old segment: no roll, acknowledged.
    let at = log.append(&big("c", 1)).unwrap();
    assert_eq!(at.first_offset, 20);
    let log = reopen(dir.path(), log, SyncPolicy::Always);
    assert_eq!(log.next_offset(), 21);
    let rec = log.read_at(20).unwrap().expect("the acknowledged record");
    assert!(rec.value.starts_with(b"c-0000"));
}

/// A log of 8 sealed segments of 20 keyed records each, all committed.
fn filled(dir: &Path) -> Log {
    let mut o = opts(SyncPolicy::Os);
    o.retention = Retention {
        max_messages: Some(10),
        ..Retention::default()
    };
    let log = Log::open(dir, o).unwrap();
    for round in 0..8 {
        log.append(&batch(&format!("r{round}"), 20)).unwrap();
        log.roll().unwrap();
    }
    log.set_high_watermark(log.newest_offset()).unwrap();
    log.checkpoint_high_watermark().unwrap();
    log
}

fn file_names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_failed_checkpoint_leaves_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path());
    let hw_file = std::fs::read(dir.path().join(commitlog::HW_FILE)).unwrap();
    log.append(&batch("more", 5)).unwrap();
    log.set_high_watermark(log.newest_offset()).unwrap();
    for op in [FileOp::Create, FileOp::Write, FileOp::Sync, FileOp::Rename] {
        let fault = faults::inject(dir.path(), Plan::new().with(Rule::new(op)));
        assert!(log.checkpoint_high_watermark().is_err(), "{op:?}");
        drop(fault);
        assert_eq!(
            std::fs::read(dir.path().join(commitlog::HW_FILE)).unwrap(),
            hw_file,
            "a checkpoint failed at {op:?} leaves the old one"
        );
    }
    log.checkpoint_high_watermark().unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join(commitlog::HW_FILE)).unwrap(),
        "164"
    );
}

#[test]
fn a_failed_compaction_leaves_a_consistent_log_that_compacts_later() {
    let twin = tempfile::tempdir().unwrap();
    let expected = {
        let log = filled(twin.path());
        log.compact().unwrap();
        contents(&log)
    };
    assert!(expected.len() < 160, "the fixture compacts");
    for op in [FileOp::Create, FileOp::Write, FileOp::Sync, FileOp::Rename] {
        let dir = tempfile::tempdir().unwrap();
        let log = filled(dir.path());
        let before = contents(&log);
        // Every sealed segment but the newest loses all its records and is dropped without a
        // rename; the newest is rewritten and renamed.
        let skip = if op == FileOp::Rename { 0 } else { 1 };
        let fault = faults::inject(dir.path(), Plan::new().with(Rule::new(op).after(skip)));
        assert!(
            log.compact().is_err(),
            "compaction must report the failed {op:?}"
        );
        drop(fault);
        assert!(
            !file_names(dir.path())
                .iter()
                .any(|n| n.ends_with(".cleaned")),
            "a compaction failed at {op:?} leaves no file behind: {:?}",
            file_names(dir.path())
        );
        // Partly compacted at most: the newest record of every key is still there.
        let now = contents(&log);
        for e in &expected {
            assert!(now.contains(e), "{op:?}: {e:?} lost");
        }
        assert!(now.iter().all(|e| before.contains(e)));
        let log = reopen(dir.path(), log, SyncPolicy::Os);
        assert_eq!(contents(&log), now, "{op:?}: reopened");
        log.set_high_watermark(log.newest_offset()).unwrap();
        log.compact().unwrap();
        assert_eq!(
            contents(&log),
            expected,
            "{op:?}: compacted after the fault"
        );
    }
}

#[test]
fn a_failed_retention_keeps_what_it_could_not_delete() {
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path());
    let fault = faults::inject(
        dir.path(),
        Plan::new().with(Rule::new(FileOp::Remove).on(".log").after(2)),
    );
    assert!(log.apply_retention().is_err());
    drop(fault);
    // Two segments went; the third failed and stays, with everything after it.
    assert_eq!(log.oldest_offset(), 40);
    assert_eq!(contents(&log), {
        let mut v = Vec::new();
        for round in 2..8 {
            v.extend(values(&format!("r{round}"), 20, round * 20));
        }
        v
    });
    let report = log.apply_retention().unwrap();
    assert_eq!(report.segments, 6);
    assert_eq!(
        log.oldest_offset(),
        -1,
        "only the empty active segment is left"
    );
    let log = reopen(dir.path(), log, SyncPolicy::Os);
    assert_eq!(log.oldest_offset(), -1);
    assert_eq!(log.next_offset(), 160);
}

/// One step of the random schedule.
#[derive(Debug, Clone)]
enum Step {
    Append(usize),
    Fault(FileOp, bool),
    Heal,
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (1usize..12).prop_map(Step::Append),
        2 => (
            prop_oneof![
                Just(FileOp::Write),
                Just(FileOp::Sync),
                Just(FileOp::Create),
                Just(FileOp::SetLen),
                Just(FileOp::SyncDir),
            ],
            any::<bool>()
        )
            .prop_map(|(op, torn)| Step::Fault(op, torn)),
        2 => Just(Step::Heal),
        1 => Just(Step::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Under any schedule of faults: every acknowledged message is in the log at its offset,
    /// byte for byte, after any number of reopenings; nothing else is, except whole records of
    /// appends that reported an error; and what a reader sees never runs ahead of the disk.
    #[test]
    fn acknowledged_messages_survive_any_fault_schedule(steps in prop::collection::vec(step(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let sync = SyncPolicy::Always;
        let mut log = Log::open(dir.path(), opts(sync)).unwrap();
        let plan = Plan::new();
        let _fault = faults::inject(dir.path(), plan.clone());
        let mut acked: HashMap<i64, String> = HashMap::new();
        let mut maybe: Vec<String> = Vec::new();
        for (n, s) in steps.iter().enumerate() {
            match s {
                Step::Append(k) => {
                    let tag = format!("s{n}");
                    let before = log.next_offset();
                    match log.append(&batch(&tag, *k)) {
                        Ok(at) => {
                            prop_assert_eq!(at.first_offset, before);
                            for (i, (o, v)) in values(&tag, *k, at.first_offset).into_iter().enumerate() {
                                prop_assert_eq!(o, at.first_offset + i as i64);
                                acked.insert(o, v);
                            }
                        }
                        Err(_) => {
                            prop_assert_eq!(log.next_offset(), before, "a failed append is not visible");
                            maybe.extend(values(&tag, *k, 0).into_iter().map(|(_, v)| v));
                        }
                    }
                }
                Step::Fault(op, torn) => {
                    let rule = Rule::new(*op).times(1);
                    let _ = plan.clone().with(if *torn { rule.torn() } else { rule });
                }
                Step::Heal => plan.clear(),
                Step::Reopen => {
                    plan.clear();
                    let _ = log.close();
                    drop(log);
                    log = Log::open(dir.path(), opts(sync)).unwrap();
                }
            }
            for (o, v) in contents(&log) {
                match acked.get(&o) {
                    Some(a) => prop_assert_eq!(&v, a, "offset {}", o),
                    None => prop_assert!(maybe.contains(&v), "offset {} holds {:?}, never written", o, v),
                }
            }
        }
        plan.clear();
        let _ = log.close();
        drop(log);
        let log = Log::open(dir.path(), opts(sync)).unwrap();
        let got: HashMap<i64, String> = contents(&log).into_iter().collect();
        for (o, v) in &acked {
            prop_assert_eq!(got.get(o), Some(v), "acknowledged offset {} lost", o);
        }
    }
}
