//! Interleavings and faults around truncation that must not leave the log inconsistent.

use commitlog::faults::{self, FileOp, Plan, Rule};
use commitlog::{Error, Log, LogOptions, Message};

/// Copies a log's files (not its lock) as a crash would leave them when the OS survives.
fn crash_copy(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != ".lock" {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A truncation whose leader-epoch checkpoint cannot be rewritten has already cut the log and
/// lowered the high watermark in memory. It must fail the log (as any failure after a step
/// changed the files does), or the records appended next at the cut offsets come back committed
/// after a crash, under the old, higher checkpoint.
#[test]
fn a_truncation_whose_epoch_save_fails_fails_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let batch: Vec<Message> = (0..5)
        .map(|i| Message::new(format!("old{i}")).with_leader_epoch(1))
        .collect();
    log.append(&batch).unwrap();
    let batch: Vec<Message> = (5..10)
        .map(|i| Message::new(format!("old{i}")).with_leader_epoch(2))
        .collect();
    log.append(&batch).unwrap();
    log.set_high_watermark(9).unwrap();
    log.checkpoint_high_watermark().unwrap();
    {
        let _faults = faults::inject(
            dir.path(),
            Plan::new().with(Rule::new(FileOp::Create).on("epoch-checkpoint.tmp")),
        );
        assert!(log.truncate(5).is_err());
    }
    assert_eq!(log.next_offset(), 5, "the cut happened");
    let appended = log.append(
        &(5..10)
            .map(|i| Message::new(format!("new{i}")))
            .collect::<Vec<_>>(),
    );
    assert!(
        matches!(appended, Err(Error::Failed(_))),
        "the log must refuse writes after a truncation failed part way: {appended:?}"
    );
    let crashed = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), crashed.path());
    let reopened = Log::open(crashed.path(), LogOptions::default()).unwrap();
    assert!(reopened.high_watermark() <= 4);
}
