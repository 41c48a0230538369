//! Damaged records, and offsets or sizes at the edges of what the format holds: readers deliver
//! every intact record before damage and then name it, opening never fails on one bad record,
//! and no offset or position ever wraps.

use std::path::Path;

use commitlog::faults::{self, FileOp, Plan, Rule};
use commitlog::{EPOCH_FILE, Error, Isolation, Log, LogOptions, Message};

/// Records of one size, so positions can be computed.
fn msg(i: i64) -> Message {
    Message::new(format!("value-{i:06}"))
        .with_timestamp(1_000 + i)
        .with_leader_epoch(1 + (i as u64) / 50)
}

fn opts() -> LogOptions {
    LogOptions {
        segment_max_bytes: 1 << 20,
        index_interval_bytes: 4096,
        ..LogOptions::default()
    }
}

fn fill(log: &Log, from: i64, n: i64) {
    for i in from..from + n {
        assert_eq!(log.append(&[msg(i)]).unwrap().first_offset, i);
    }
}

/// Flips a byte of the value of the `nth` record of the segment file `base` (records of one size).
fn damage(dir: &Path, base: i64, nth: u64, record_len: u64) {
    let p = dir.join(format!("{base:020}.log"));
    let mut b = std::fs::read(&p).unwrap();
    let at = ((nth + 1) * record_len - 3) as usize;
    b[at] ^= 0x40;
    std::fs::write(&p, b).unwrap();
}

fn expect_corrupt_at<T: std::fmt::Debug>(r: commitlog::Result<T>, offset: i64) {
    match r {
        Err(Error::Corrupt {
            offset: Some(o), ..
        }) => assert_eq!(o, offset),
        other => panic!("expected damage at offset {offset}, got {other:?}"),
    }
}

/// A log of 100 records in one sealed segment and 10 in the active one, closed cleanly; returns
/// the record length.
fn written(dir: &Path) -> u64 {
    let log = Log::open(dir, opts()).unwrap();
    fill(&log, 0, 100);
    log.roll().unwrap();
    fill(&log, 100, 10);
    let len = log.segments()[0].bytes / 100;
    log.close().unwrap();
    len
}

#[test]
fn readers_deliver_every_intact_record_before_damage_then_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let len = written(dir.path());
    damage(dir.path(), 0, 20, len);
    let log = Log::open(dir.path(), opts()).unwrap();

    let mut r = log.reader(0, Isolation::Uncommitted);
    for want in 0..20 {
        let rec = r.try_next().unwrap().expect("an intact record");
        assert_eq!(rec.offset, want);
        assert_eq!(rec.value, msg(want).value);
    }
    expect_corrupt_at(r.try_next(), 20);
    // The reader stays before the damage.
    expect_corrupt_at(r.try_next(), 20);
    assert_eq!(r.next_offset(), 20);

    // A follower copies everything before the damage, then is told where it is.
    let raw = log
        .read_raw(0, 1 << 20)
        .unwrap()
        .expect("the intact records");
    assert_eq!((raw.first_offset, raw.last_offset, raw.count), (0, 19, 20));
    let raw = log.read_raw(7, 1 << 20).unwrap().unwrap();
    assert_eq!((raw.first_offset, raw.last_offset), (7, 19));
    expect_corrupt_at(log.read_raw(20, 1 << 20), 20);

    assert_eq!(log.read_at(19).unwrap().unwrap().offset, 19);
    expect_corrupt_at(log.read_at(20), 20);
    // Backward: from before the damage everything; from behind it, the damage.
    let mut rr = log.reverse_reader(19, Isolation::Uncommitted);
    for want in (0..20).rev() {
        assert_eq!(rr.next().unwrap().unwrap().offset, want);
    }
    assert!(rr.next().unwrap().is_none());
    expect_corrupt_at(log.reverse_reader(30, Isolation::Uncommitted).next(), 30);
    // Beyond the damaged segment all is readable.
    assert_eq!(log.read_at(100).unwrap().unwrap().offset, 100);
}

#[test]
fn a_damaged_record_does_not_fail_the_open_that_rebuilds_the_epoch_cache() {
    let dir = tempfile::tempdir().unwrap();
    let len = written(dir.path());
    damage(dir.path(), 0, 20, len);
    std::fs::remove_file(dir.path().join(EPOCH_FILE)).unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    assert!(log.recovery().epoch_cache_rebuilt);
    let epochs: Vec<(u64, i64)> = log
        .leader_epochs()
        .iter()
        .map(|e| (e.epoch, e.start_offset))
        .collect();
    // Epoch 2 started (at 50) behind the damage; the epochs before and after it are known.
    assert_eq!(epochs, vec![(1, 0), (3, 100)]);
    // Said loudly: the segment is listed as repaired, with the damage as the reason.
    let report = log.recovery();
    let seg0 = report.repaired.iter().find(|r| r.base_offset == 0);
    let reason = seg0.and_then(|r| r.reason.as_deref()).unwrap_or_default();
    assert!(reason.contains("damaged"), "{report:?}");
    assert_eq!(report.truncated_bytes(), 0, "nothing is cut: {report:?}");
    assert_eq!(log.read_at(105).unwrap().unwrap().value, msg(105).value);
}

#[test]
fn a_reverse_reader_never_returns_records_a_truncation_removed() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    fill(&log, 0, 100);
    let mut rr = log.reverse_reader(i64::MAX, Isolation::Uncommitted);
    assert_eq!(rr.next().unwrap().unwrap().offset, 99);
    log.truncate(50).unwrap();
    assert_eq!(rr.next().unwrap().unwrap().offset, 49, "98 was cut");

    // Cut and written again: the reader reads what the log holds now.
    let mut rr = log.reverse_reader(i64::MAX, Isolation::Uncommitted);
    assert_eq!(rr.next().unwrap().unwrap().offset, 49);
    log.truncate(40).unwrap();
    for i in 40..45 {
        log.append(&[Message::new(format!("new-{i}"))]).unwrap();
    }
    let mut got = Vec::new();
    while let Some(rec) = rr.next().unwrap() {
        got.push((rec.offset, rec.value));
        assert!(got.len() <= 100);
    }
    let want: Vec<(i64, bytes::Bytes)> = (0..45)
        .rev()
        .map(|o| {
            let v = if o >= 40 {
                format!("new-{o}").into()
            } else {
                msg(o).value
            };
            (o, v)
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn read_raw_with_a_small_max_bytes_finds_a_record_in_the_middle_of_an_index_interval() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    fill(&log, 0, 100);
    for max in [1, 50, 200, 4096] {
        let raw = log.read_raw(50, max).unwrap().expect("offset 50 exists");
        assert_eq!(raw.first_offset, 50, "max_bytes {max}");
    }
}

#[test]
fn a_reader_finds_a_record_far_into_a_large_index_interval() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        LogOptions {
            segment_max_bytes: 1 << 30,
            index_interval_bytes: 1 << 30,
            ..LogOptions::default()
        },
    )
    .unwrap();
    // Records over half a read chunk (64 KiB), so each read holds one: 1,100 of them to skip.
    let value = bytes::Bytes::from(vec![b'x'; 33 * 1024]);
    for b in 0..11 {
        let batch: Vec<Message> = (0..100).map(|_| Message::new(value.clone())).collect();
        assert_eq!(log.append(&batch).unwrap().first_offset, b * 100);
    }
    log.append(&[Message::new("wanted")]).unwrap();
    let mut r = log.reader(1100, Isolation::Uncommitted);
    let rec = r.try_next().unwrap().expect("offset 1100 exists");
    assert_eq!((rec.offset, &rec.value[..]), (1100, &b"wanted"[..]));
}

/// Raw bytes of one record with offset `offset`, as a leader would ship them.
fn raw_record_at(offset: i64, value: &str) -> bytes::Bytes {
    let dir = tempfile::tempdir().unwrap();
    // An empty segment named by an offset makes a log whose next offset is that one.
    std::fs::write(dir.path().join(format!("{offset:020}.log")), b"").unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    assert_eq!(
        log.append(&[Message::new(value.to_owned())])
            .unwrap()
            .first_offset,
        offset
    );
    log.read_raw(offset, 1 << 20).unwrap().unwrap().data
}

#[test]
fn append_raw_far_past_a_non_empty_segment_starts_a_segment_at_the_batch() {
    let far = (1i64 << 32) + 10;
    let dir = tempfile::tempdir().unwrap();
    let o = LogOptions {
        sync: commitlog::SyncPolicy::Always,
        ..opts()
    };
    let log = Log::open(dir.path(), o.clone()).unwrap();
    fill(&log, 0, 3);
    let at = log.append_raw(&raw_record_at(far, "far")).unwrap();
    assert_eq!((at.first_offset, at.last_offset), (far, far));
    assert_eq!(log.segments().last().unwrap().base_offset, far);
    assert_eq!(&log.read_at(far).unwrap().unwrap().value[..], b"far");
    assert_eq!(log.read_at(1).unwrap().unwrap().offset, 1);
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path(), o).unwrap();
    assert_eq!(log.recovery().truncated_bytes(), 0, "{:?}", log.recovery());
    assert_eq!(&log.read_at(far).unwrap().unwrap().value[..], b"far");
    assert_eq!(log.next_offset(), far + 1);
}

/// `raw` (one record, as stored) with its offset changed and its checksum made right again.
fn with_offset(raw: &[u8], offset: i64) -> Vec<u8> {
    let mut b = raw.to_vec();
    b[0..8].copy_from_slice(&offset.to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&b[0..24]), &b[32..]);
    b[28..32].copy_from_slice(&crc.to_be_bytes());
    b
}

#[test]
fn offsets_that_no_record_could_follow_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    fill(&log, 0, 3);
    let raw = raw_record_at(5, "edge");
    match log.append_raw(&with_offset(&raw, i64::MAX)) {
        Err(Error::InvalidBatch(why)) => assert!(why.contains("largest"), "{why}"),
        other => panic!("offset i64::MAX was not refused: {other:?}"),
    }
    assert_eq!(log.next_offset(), 3, "nothing written");

    // The last usable offset is accepted; after it, appends are refused, never wrapped.
    let at = log.append_raw(&with_offset(&raw, i64::MAX - 1)).unwrap();
    assert_eq!(at.last_offset, i64::MAX - 1);
    assert_eq!(log.next_offset(), i64::MAX);
    assert!(matches!(
        log.append(&[Message::new("no room")]),
        Err(Error::InvalidBatch(_))
    ));
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path(), opts()).unwrap();
    assert_eq!(log.next_offset(), i64::MAX);
    assert_eq!(
        &log.read_at(i64::MAX - 1).unwrap().unwrap().value[..],
        b"edge"
    );
}

#[test]
fn a_stored_record_at_the_largest_offset_is_cut_at_open_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let base = i64::MAX - 10;
    let raw = raw_record_at(5, "edge");
    let mut file = with_offset(&raw, i64::MAX - 1);
    file.extend_from_slice(&with_offset(&raw, i64::MAX));
    std::fs::write(dir.path().join(format!("{base:020}.log")), &file).unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    assert_eq!(log.next_offset(), i64::MAX);
    assert_eq!(log.recovery().truncated_bytes(), raw.len() as u64);
    assert_eq!(
        &log.read_at(i64::MAX - 1).unwrap().unwrap().value[..],
        b"edge"
    );
}

fn small() -> LogOptions {
    LogOptions {
        segment_max_bytes: 1024,
        index_interval_bytes: 128,
        ..LogOptions::default()
    }
}

/// Every record, forward, as (offset, value).
fn contents(log: &Log) -> Vec<(i64, bytes::Bytes)> {
    let mut r = log.reader(0, Isolation::Uncommitted);
    let mut out = Vec::new();
    while let Some(rec) = r.try_next().unwrap() {
        out.push((rec.offset, rec.value));
        assert!(out.len() <= 10_000);
    }
    out
}

fn originals(range: std::ops::Range<i64>) -> Vec<(i64, bytes::Bytes)> {
    range.map(|o| (o, msg(o).value)).collect()
}

#[test]
fn a_truncation_whose_sync_fails_after_the_cut_fails_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    fill(&log, 0, 20);
    let plan = Plan::new().with(Rule::new(FileOp::Sync).on(".log"));
    let fault = faults::inject(dir.path(), plan.clone());
    assert!(log.truncate(10).is_err());
    assert_eq!(plan.injected(), 1);
    drop(fault);
    assert!(log.failure().is_some(), "the log must refuse writes");
    assert!(matches!(log.append(&[msg(10)]), Err(Error::Failed(_))));
    // What readers see matches the file: the cut records are gone, the rest readable.
    assert_eq!(contents(&log), originals(0..10));
    assert_eq!(log.next_offset(), 10);
    log.close().ok();
    drop(log);
    let log = Log::open(dir.path(), opts()).unwrap();
    assert_eq!(contents(&log), originals(0..10));
    fill(&log, 10, 3);
    assert_eq!(contents(&log), originals(0..13));
}

#[test]
fn a_truncation_that_cannot_delete_a_later_segment_fails_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    fill(&log, 0, 60);
    assert!(log.segments().len() >= 3);
    let plan = Plan::new().with(Rule::new(FileOp::Remove).on(".log"));
    let fault = faults::inject(dir.path(), plan.clone());
    assert!(log.truncate(5).is_err());
    drop(fault);
    assert!(log.failure().is_some(), "the log must refuse writes");
    assert!(matches!(log.append(&[msg(5)]), Err(Error::Failed(_))));
    let seen = contents(&log);
    assert_eq!(
        seen,
        originals(0..seen.len() as i64),
        "a prefix, nothing else"
    );
    log.close().ok();
    drop(log);
    // The truncation did not happen: reopened, the log is whole and takes the next offsets.
    let log = Log::open(dir.path(), small()).unwrap();
    assert_eq!(contents(&log), originals(0..60));
    log.truncate(5).unwrap();
    fill(&log, 5, 3);
    assert_eq!(contents(&log), originals(0..8));
}

#[test]
fn a_truncation_that_cannot_create_the_restarted_segment_never_leaves_the_log_without_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{:020}.log", 100)), b"").unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    fill(&log, 100, 5);
    let plan = Plan::new().with(Rule::new(FileOp::Create).on(".log"));
    let fault = faults::inject(dir.path(), plan.clone());
    assert!(log.truncate(50).is_err());
    assert_eq!(plan.injected(), 1);
    drop(fault);
    // No panic on any call; nothing was cut.
    assert_eq!(log.next_offset(), 105);
    assert_eq!(log.segments().len(), 1);
    assert_eq!(contents(&log), originals(100..105));
    // Done again with a healthy disk, it works.
    log.truncate(50).unwrap();
    assert_eq!(log.next_offset(), 50);
    fill(&log, 50, 2);
    assert_eq!(contents(&log), originals(50..52));
}

#[test]
fn restarting_an_empty_segment_whose_creation_fails_never_leaves_the_log_without_one() {
    let far = (1i64 << 32) + 10;
    let raw = raw_record_at(far, "far");
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    let plan = Plan::new().with(Rule::new(FileOp::Create).on(".log"));
    let fault = faults::inject(dir.path(), plan.clone());
    assert!(log.append_raw(&raw).is_err());
    assert_eq!(plan.injected(), 1);
    drop(fault);
    assert_eq!(log.segments().len(), 1);
    assert_eq!(log.next_offset(), 0);
    let at = log.append_raw(&raw).unwrap();
    assert_eq!(at.first_offset, far);
    assert_eq!(&log.read_at(far).unwrap().unwrap().value[..], b"far");
}

#[test]
fn a_segment_whose_name_disagrees_with_its_records_is_kept_aside_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    fill(&log, 0, 60);
    let segs = log.segments();
    assert!(segs.len() >= 3);
    let (mid, next) = (segs[1].base_offset, segs[2].base_offset);
    log.close().unwrap();
    drop(log);
    // The middle segment renamed to a base above its first record.
    let wrong = mid + 2;
    let old = dir.path().join(format!("{mid:020}.log"));
    let bytes = std::fs::read(&old).unwrap();
    std::fs::rename(&old, dir.path().join(format!("{wrong:020}.log"))).unwrap();
    std::fs::remove_file(dir.path().join(format!("{mid:020}.index"))).unwrap();

    let log = Log::open(dir.path(), small()).unwrap();
    let report = log.recovery().clone();
    let rec = report
        .repaired
        .iter()
        .find(|r| r.base_offset == wrong)
        .unwrap_or_else(|| panic!("not reported as repaired: {report:?}"));
    assert!(
        rec.reason.as_deref().unwrap_or_default().contains("range"),
        "{rec:?}"
    );
    let kept = rec.quarantined.clone().expect("the records are kept aside");
    assert_eq!(std::fs::read(&kept).unwrap(), bytes, "byte for byte");
    // The rest of the log is intact, with a gap where the misnamed records were.
    let want: Vec<(i64, bytes::Bytes)> = originals(0..60)
        .into_iter()
        .filter(|(o, _)| *o < mid || *o >= next)
        .collect();
    assert_eq!(contents(&log), want);
    // Opening again finds nothing more to do and keeps the file.
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path(), small()).unwrap();
    assert!(log.recovery().repaired.is_empty(), "{:?}", log.recovery());
    assert!(kept.exists());
}

/// Peak resident memory of this process (each test runs in its own under nextest), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[test]
fn oversized_index_and_checkpoint_files_are_not_read_into_memory() {
    const HUGE: u64 = 1 << 30;
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), opts()).unwrap();
    fill(&log, 0, 10);
    log.roll().unwrap();
    fill(&log, 10, 10);
    log.close().unwrap();
    drop(log);
    // Sparse files claiming to be an index, the epoch cache and the high watermark.
    for name in [format!("{:020}.index", 0), EPOCH_FILE.to_owned()] {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(dir.path().join(name))
            .unwrap();
        f.set_len(HUGE).unwrap();
    }
    let f = std::fs::File::create(dir.path().join(commitlog::HW_FILE)).unwrap();
    f.set_len(HUGE).unwrap();
    drop(f);
    let before = peak_rss();
    let log = Log::open(dir.path(), opts()).unwrap();
    let grew = peak_rss().saturating_sub(before);
    assert!(
        grew < HUGE / 4,
        "opening grew the peak memory by {grew} bytes"
    );
    assert!(log.recovery().epoch_cache_rebuilt);
    assert_eq!(contents(&log), originals(0..20));
    assert_eq!(log.high_watermark(), -1);
}

#[test]
fn retention_never_deletes_records_above_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        LogOptions {
            retention: commitlog::Retention {
                max_messages: Some(5),
                ..Default::default()
            },
            ..small()
        },
    )
    .unwrap();
    fill(&log, 0, 60);
    assert!(log.segments().len() >= 4);
    let report = log.apply_retention().unwrap();
    assert_eq!(report.segments, 0, "nothing is committed yet");
    assert_eq!(log.oldest_offset(), 0);

    let hw = log.segments()[2].base_offset; // the first record of the third segment
    log.set_high_watermark(hw).unwrap();
    let report = log.apply_retention().unwrap();
    assert_eq!(
        report.segments, 2,
        "only segments wholly at or below the high watermark"
    );
    assert_eq!(log.oldest_offset(), hw);
}
