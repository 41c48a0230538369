//! Crash consistency: a log cut at any byte, or followed by garbage, reopens with every fully
//! written record and nothing else. Damage in sealed segments is found and reported, never
//! returned as data.
//!
//! A crash is simulated by copying the log's files while it is open (the copy sees exactly what
//! a crash would leave on disk when the OS survives), then damaging the copy.

use commitlog::{CLEAN_FILE, Error, Isolation, Log, LogOptions, Message};

mod common;

use common::crash_copy;

fn opts() -> LogOptions {
    LogOptions {
        segment_max_bytes: 2048,
        index_interval_bytes: 100,
        ..LogOptions::default()
    }
}

fn message(i: i64) -> Message {
    // Sizes vary so records straddle index intervals differently.
    let value = format!("{i}:{}", "x".repeat((i as usize * 7) % 90));
    let m = Message::new(value)
        .with_timestamp(i * 1000)
        .with_leader_epoch(1);
    if i % 3 == 0 {
        m.with_key(format!("key{i}")).with_header("h", "v")
    } else {
        m
    }
}

/// Reads everything, checking each record against the message it was written from.
fn read_back(log: &Log) -> Vec<i64> {
    let mut r = log.reader(0, Isolation::Uncommitted);
    let mut out = Vec::new();
    while let Some(rec) = r.try_next().unwrap() {
        let m = message(rec.offset);
        assert_eq!(
            (&rec.value, &rec.key, rec.timestamp),
            (&m.value, &m.key, m.timestamp),
            "offset {}",
            rec.offset
        );
        assert_eq!(rec.headers, m.headers);
        out.push(rec.offset);
    }
    out
}

struct Written {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    /// Byte position in the active segment where each of its records ends, with the offset.
    active_ends: Vec<(u64, i64)>,
    active_file: String,
    total: i64,
}

fn write_log(n: i64) -> Written {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log = Log::open(&path, opts()).unwrap();
    let mut active_ends = Vec::new();
    for i in 0..n {
        let before = log.segments().last().unwrap().base_offset;
        log.append(&[message(i)]).unwrap();
        let last = *log.segments().last().unwrap();
        if last.base_offset != before {
            active_ends.clear();
        }
        active_ends.push((last.bytes, i));
    }
    let active_file = format!("{:020}.log", log.segments().last().unwrap().base_offset);
    assert!(
        log.segments().len() >= 3,
        "the test wants sealed segments too"
    );
    log.close().unwrap();
    Written {
        _dir: dir,
        path,
        active_ends,
        active_file,
        total: n,
    }
}

#[test]
fn cutting_the_active_segment_at_every_byte_keeps_every_whole_record() {
    let w = write_log(120);
    let size = w.active_ends.last().unwrap().0;
    // Every byte of the last three records, plus the start of the segment.
    let from = w.active_ends[w.active_ends.len().saturating_sub(4)].0;
    let cuts: Vec<u64> = (0..=8).chain(from..=size).collect();
    for (n, cut) in cuts.into_iter().enumerate() {
        let crash = tempfile::tempdir().unwrap();
        crash_copy(&w.path, crash.path());
        // Half the cases also keep the clean-shutdown marker, as if the cut were tampering: the
        // recovery must not trust a marker that disagrees with the files.
        if n % 2 == 0 {
            std::fs::remove_file(crash.path().join(CLEAN_FILE)).unwrap();
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(crash.path().join(&w.active_file))
            .unwrap();
        f.set_len(cut).unwrap();
        drop(f);

        let log = Log::open(crash.path(), opts()).unwrap();
        let whole = w.active_ends.iter().rfind(|(end, _)| *end <= cut);
        let first_active = w.active_ends[0].1;
        let expect_newest = whole.map_or(first_active - 1, |(_, o)| *o);
        let kept_bytes = whole.map_or(0, |(end, _)| *end);
        assert_eq!(
            log.recovery().truncated_bytes(),
            cut - kept_bytes,
            "cut {cut}"
        );
        assert_eq!(
            read_back(&log),
            (0..=expect_newest).collect::<Vec<_>>(),
            "cut {cut}"
        );
        // The log goes on from there, and reopens cleanly.
        let at = log.append(&[message(expect_newest + 1)]).unwrap();
        assert_eq!(at.first_offset, expect_newest + 1);
        log.close().unwrap();
        drop(log);
        let log = Log::open(crash.path(), opts()).unwrap();
        assert!(log.recovery().repaired.is_empty());
        assert_eq!(log.newest_offset(), expect_newest + 1);
    }
}

#[test]
fn garbage_after_the_last_record_is_cut() {
    let w = write_log(60);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut garbages: Vec<Vec<u8>> = (1..40)
        .map(|len| (0..len).map(|_| next() as u8).collect())
        .collect();
    garbages.push(vec![0u8; 4096]); // a preallocated, zero-filled tail
    // A plausible header claiming a huge record, and one that claims a small valid-looking one.
    let mut fake = Vec::new();
    fake.extend_from_slice(&60i64.to_be_bytes());
    fake.extend_from_slice(&0i64.to_be_bytes());
    fake.extend_from_slice(&1u64.to_be_bytes());
    fake.extend_from_slice(&u32::MAX.to_be_bytes());
    garbages.push(fake.clone());
    fake.truncate(24);
    fake.extend_from_slice(&20u32.to_be_bytes());
    fake.extend_from_slice(&[0u8; 20]);
    garbages.push(fake);
    for g in garbages {
        let crash = tempfile::tempdir().unwrap();
        crash_copy(&w.path, crash.path());
        std::fs::remove_file(crash.path().join(CLEAN_FILE)).unwrap();
        let p = crash.path().join(&w.active_file);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.extend_from_slice(&g);
        std::fs::write(&p, bytes).unwrap();
        let log = Log::open(crash.path(), opts()).unwrap();
        assert_eq!(log.recovery().truncated_bytes(), g.len() as u64);
        assert_eq!(read_back(&log), (0..w.total).collect::<Vec<_>>());
    }
}

#[test]
fn missing_or_damaged_indexes_are_rebuilt() {
    let w = write_log(120);
    let indexes: Vec<_> = std::fs::read_dir(&w.path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "index"))
        .collect();
    assert!(indexes.len() >= 3);
    for damage in ["delete", "truncate", "flip", "swap"] {
        let crash = tempfile::tempdir().unwrap();
        crash_copy(&w.path, crash.path());
        for (i, ix) in indexes.iter().enumerate() {
            let p = crash.path().join(ix.file_name().unwrap());
            match damage {
                "delete" => std::fs::remove_file(&p).unwrap(),
                "truncate" => {
                    let len = std::fs::metadata(&p).unwrap().len();
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .unwrap()
                        .set_len(len / 2)
                        .unwrap();
                }
                "flip" => {
                    let mut b = std::fs::read(&p).unwrap();
                    let at = b.len() - 3;
                    b[at] ^= 0x40;
                    std::fs::write(&p, b).unwrap();
                }
                _ => {
                    // Another segment's index under this name.
                    let other = &indexes[(i + 1) % indexes.len()];
                    std::fs::copy(other, &p).unwrap();
                }
            }
        }
        let log = Log::open(crash.path(), opts()).unwrap();
        assert!(!log.recovery().repaired.is_empty(), "{damage}");
        assert_eq!(log.recovery().truncated_bytes(), 0, "{damage}");
        assert_eq!(
            read_back(&log),
            (0..w.total).collect::<Vec<_>>(),
            "{damage}"
        );
        for o in [0, 17, 64, 119] {
            assert_eq!(log.read_at(o).unwrap().unwrap().offset, o);
            assert_eq!(log.offset_for_timestamp(o * 1000).unwrap(), Some(o));
        }
    }
}

#[test]
fn a_flipped_bit_in_a_sealed_segment_is_an_error_never_data() {
    let w = write_log(120);
    let first = w.path.join(format!("{:020}.log", 0));
    let len = std::fs::metadata(&first).unwrap().len();
    for at in [40, len / 2, len - 5] {
        let crash = tempfile::tempdir().unwrap();
        crash_copy(&w.path, crash.path());
        let p = crash.path().join(format!("{:020}.log", 0));
        let mut b = std::fs::read(&p).unwrap();
        b[at as usize] ^= 0x01;
        std::fs::write(&p, b).unwrap();
        let log = Log::open(crash.path(), opts()).unwrap();
        let repaired = log
            .recovery()
            .repaired
            .iter()
            .any(|r| r.base_offset == 0 && r.truncated_bytes > 0);
        let mut r = log.reader(0, Isolation::Uncommitted);
        let mut good = Vec::new();
        let mut error = None;
        loop {
            match r.try_next() {
                Ok(Some(rec)) => {
                    assert_eq!(rec.value, message(rec.offset).value, "wrong data returned");
                    good.push(rec.offset);
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        match error {
            // Damage in the middle is found when read.
            Some(e) => assert!(matches!(e, Error::Corrupt { .. }), "{e}"),
            // Damage in the tail that recovery verifies is cut there, and reported.
            None => assert!(repaired, "damage at byte {at} went unnoticed"),
        }
        let prefix = good
            .iter()
            .take_while(|o| **o < log.segments()[1].base_offset)
            .count();
        assert_eq!(good[..prefix], (0..prefix as i64).collect::<Vec<_>>()[..]);
        // Later segments stay readable.
        let later = log.segments()[1].base_offset;
        assert_eq!(log.read_at(later).unwrap().unwrap().offset, later);
    }
}

#[test]
fn a_sealed_segment_that_lost_its_tail_keeps_later_segments() {
    let w = write_log(120);
    let crash = tempfile::tempdir().unwrap();
    crash_copy(&w.path, crash.path());
    std::fs::remove_file(crash.path().join(CLEAN_FILE)).unwrap();
    let p = crash.path().join(format!("{:020}.log", 0));
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let log = Log::open(crash.path(), opts()).unwrap();
    let report = log.recovery();
    assert_eq!(report.repaired[0].base_offset, 0);
    assert!(report.repaired[0].truncated_bytes > 0);
    let got = read_back(&log);
    let second = log.segments()[1].base_offset;
    // Only the torn record is missing: a gap of one offset before the second segment.
    let expect: Vec<i64> = (0..w.total).filter(|o| *o != second - 1).collect();
    assert_eq!(got, expect);
}

#[test]
fn leftovers_of_interrupted_operations_are_removed() {
    let w = write_log(60);
    let crash = tempfile::tempdir().unwrap();
    crash_copy(&w.path, crash.path());
    std::fs::remove_file(crash.path().join(CLEAN_FILE)).unwrap();
    std::fs::write(
        crash.path().join("00000000000000000000.log.cleaned"),
        b"half a compaction",
    )
    .unwrap();
    std::fs::write(
        crash.path().join("replication-offset-checkpoint.tmp"),
        b"12",
    )
    .unwrap();
    std::fs::write(crash.path().join("00000000000000099999.index"), b"orphan").unwrap();
    std::fs::write(crash.path().join("notes.txt"), b"not ours").unwrap();
    let log = Log::open(crash.path(), opts()).unwrap();
    assert_eq!(log.recovery().removed_files.len(), 3);
    assert!(
        crash.path().join("notes.txt").exists(),
        "files it does not own are left alone"
    );
    assert_eq!(read_back(&log), (0..60).collect::<Vec<_>>());
}
