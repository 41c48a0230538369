//! Interleavings and faults around truncation that must not leave the log inconsistent.

use commitlog::faults::{self, FileOp, Plan, Rule};
use commitlog::{Error, Log, LogOptions, Message};

mod common;

use common::{crash_copy, raw_record_at};

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

/// A follower's batch far past the end rolls to a segment based at the batch. When the batch's
/// write then fails (and is undone, so the log stays writable), that empty segment stays the
/// active one, based above the log end: the next append at the end went into it below its base,
/// so its offset wrapped relative to the base. The append was acknowledged, but could not be
/// read at its offset, and a reopening cut it.
#[test]
fn an_append_after_a_failed_far_batch_is_readable_at_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    log.append(&[Message::new("zero")]).unwrap();
    let far = 1i64 << 33;
    {
        let _faults = faults::inject(
            dir.path(),
            Plan::new().with(Rule::new(FileOp::Write).on(".log").times(1)),
        );
        assert!(log.append_raw(&raw_record_at(far)).is_err());
    }
    assert!(log.failure().is_none(), "the failed write was undone");
    let at = log.append(&[Message::new("one")]).unwrap();
    assert_eq!(at.first_offset, 1);
    let rec = log.read_at(1).unwrap().expect("offset 1 is readable");
    assert_eq!((rec.offset, &rec.value[..]), (1, &b"one"[..]));
    log.close().unwrap();
    let reopened = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(reopened.next_offset(), 2);
    let rec = reopened
        .read_at(1)
        .unwrap()
        .expect("offset 1 survives a reopen");
    assert_eq!(&rec.value[..], b"one");
}

/// An index file that passes its checks (its CRC included) but counts fewer records than the
/// log holds is trusted after a clean close: only the records after its last entry are checked
/// against the log. A truncation then subtracted more records than the count held, which
/// overflowed (a panic in debug builds, a wrapped count in release). Bad input on disk must
/// never panic.
#[test]
fn an_index_that_undercounts_its_records_does_not_panic_a_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    for i in 0..10 {
        log.append(&[Message::new(format!("m{i}"))]).unwrap();
    }
    log.close().unwrap();
    let index = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "index"))
        .expect("an index file after a clean close");
    let mut b = std::fs::read(&index).unwrap();
    b[36..40].copy_from_slice(&1u32.to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..44]), &b[48..]);
    b[44..48].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(&index, &b).unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let truncated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| log.truncate(3)));
    assert!(truncated.is_ok(), "truncate panicked");
    assert_eq!(log.next_offset(), 3);
    let rec = log.read_at(2).unwrap().unwrap();
    assert_eq!(&rec.value[..], b"m2");
}

/// A truncation whose cut of the file fails changes nothing (the log stays writable, as
/// documented), so the segment's facts must stay too. It dropped the index entries past the cut
/// before cutting the file: with a cut at the segment's first record, the segment then claimed
/// no first offset though all its records were still there, so the oldest offset was -1 and a
/// reverse reader found nothing.
#[test]
fn a_truncation_whose_cut_fails_leaves_the_records_findable() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let batch: Vec<Message> = (0..5).map(|i| Message::new(format!("m{i}"))).collect();
    log.append(&batch).unwrap();
    {
        let _faults = faults::inject(
            dir.path(),
            Plan::new().with(Rule::new(FileOp::SetLen).on(".log").times(1)),
        );
        assert!(log.truncate(0).is_err());
    }
    assert!(log.failure().is_none(), "nothing changed");
    assert_eq!(log.next_offset(), 5);
    assert_eq!(log.oldest_offset(), 0);
    let mut r = log.reverse_reader(4, commitlog::Isolation::Uncommitted);
    let rec = r.next().unwrap().expect("the newest record");
    assert_eq!(&rec.value[..], b"m4");
}

/// A reader past a truncation continues from the cut, however many truncations came after it
/// while the reader was idle. The log remembers only the latest 256 cuts; a reader older than
/// all of them took the lowest remembered cut, which can be above the cut that concerned it,
/// and so skipped the records appended again below it.
#[test]
fn a_reader_idle_across_many_truncations_continues_from_the_lowest_cut() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let batch: Vec<Message> = (0..10).map(|i| Message::new(format!("old{i}"))).collect();
    log.append(&batch).unwrap();
    let mut r = log.reader(0, commitlog::Isolation::Uncommitted);
    for _ in 0..10 {
        r.try_next().unwrap().unwrap();
    }
    log.truncate(0).unwrap();
    let batch: Vec<Message> = (0..10).map(|i| Message::new(format!("new{i}"))).collect();
    log.append(&batch).unwrap();
    for _ in 0..300 {
        log.append(&[Message::new("x")]).unwrap();
        log.truncate(10).unwrap();
    }
    let rec = r
        .try_next()
        .unwrap()
        .expect("the records appended again below the reader");
    assert_eq!((rec.offset, &rec.value[..]), (0, &b"new0"[..]));
}

/// A closed log's handle must not write the high-watermark checkpoint: the folder may belong
/// to a log opened since, whose checkpoint it would replace with an older, higher mark (over
/// records that log truncated and appended again, which no replica committed).
#[test]
fn a_closed_log_does_not_write_the_checkpoint_of_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let old = Log::open(dir.path(), LogOptions::default()).unwrap();
    let batch: Vec<Message> = (0..10).map(|i| Message::new(format!("old{i}"))).collect();
    old.append(&batch).unwrap();
    old.set_high_watermark(9).unwrap();
    old.close().unwrap();
    let new = Log::open(dir.path(), LogOptions::default()).unwrap();
    new.truncate(5).unwrap();
    let stale = old.checkpoint_high_watermark();
    assert!(matches!(stale, Err(Error::Closed)), "{stale:?}");
    let on_disk = std::fs::read_to_string(dir.path().join(commitlog::HW_FILE)).unwrap();
    assert_eq!(on_disk.trim(), "4");
}

/// Compaction moves the rewritten log over the old one, then writes its index. When that index
/// write failed, the log kept the old segment, whose file handle was the replaced file: a later
/// truncation into that segment cut the replaced file, and the appends after it went there too,
/// acknowledged under `Always` and lost at the next open, which reads the file on disk.
#[test]
fn appends_after_a_compaction_whose_index_write_failed_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || LogOptions {
        sync: commitlog::SyncPolicy::Always,
        ..LogOptions::default()
    };
    let log = Log::open(dir.path(), opts()).unwrap();
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
    {
        let _faults = faults::inject(
            dir.path(),
            Plan::new().with(Rule::new(FileOp::Create).on(".index")),
        );
        assert!(log.compact().is_err());
    }
    log.truncate(3).unwrap();
    let at = log
        .append(&[Message::new("new3"), Message::new("new4")])
        .unwrap();
    assert_eq!((at.first_offset, at.last_offset), (3, 4));
    log.close().unwrap();
    let reopened = Log::open(dir.path(), opts()).unwrap();
    let values: Vec<String> = (0..5)
        .map(|o| {
            reopened
                .read_at(o)
                .unwrap()
                .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(values, ["v0", "v1", "v2", "new3", "new4"]);
}

/// A leader that started epoch 3 (its checkpoint is written durably at once) and lost every
/// record it wrote in it to a power loss (the OS sync policy) must still find epoch 3 as its
/// latest when it reopens: the broker moves a partition to a new epoch when its log holds the
/// one it is asked to lead, since followers may hold the lost records. Dropping the epoch with
/// its records hid the restart, so the leader wrote different records at the same offsets and
/// epoch, and a follower's claim to the old ones counted for the high watermark.
#[test]
fn an_open_keeps_the_latest_epoch_whose_records_were_all_lost() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    log.assign_leader_epoch(1).unwrap();
    let batch: Vec<Message> = (0..5)
        .map(|i| Message::new(format!("old{i}")).with_leader_epoch(1))
        .collect();
    log.append(&batch).unwrap();
    log.close().unwrap();
    // What the disk holds durably before epoch 3.
    let image = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), image.path());

    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    log.assign_leader_epoch(3).unwrap();
    let batch: Vec<Message> = (5..8)
        .map(|i| Message::new(format!("lost{i}")).with_leader_epoch(3))
        .collect();
    log.append(&batch).unwrap();
    log.close().unwrap();
    // The power loss: the epoch checkpoint (synced when written) survives, the records do not.
    std::fs::copy(
        dir.path().join(commitlog::EPOCH_FILE),
        image.path().join(commitlog::EPOCH_FILE),
    )
    .unwrap();

    let reopened = Log::open(image.path(), LogOptions::default()).unwrap();
    assert_eq!(reopened.next_offset(), 5);
    assert_eq!(
        reopened.last_leader_epoch(),
        Some(3),
        "epochs {:?}",
        reopened.leader_epochs()
    );
    // Epoch 1 ends where the log ends; epoch 3 starts there.
    assert_eq!(reopened.leader_epoch_end_offset(1), Some((1, 5)));
    assert_eq!(reopened.leader_epoch_end_offset(3), Some((3, 5)));
}
