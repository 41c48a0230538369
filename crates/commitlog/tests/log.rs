//! Behaviour of the public `Log` API, one concern per test.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use commitlog::{Error, Isolation, Log, LogOptions, ManualClock, Message, Retention, SyncPolicy};

fn small() -> LogOptions {
    LogOptions {
        segment_max_bytes: 1024,
        index_interval_bytes: 128,
        ..LogOptions::default()
    }
}

fn msg(i: i64) -> Message {
    Message::new(format!("value-{i}"))
        .with_timestamp(1_000 + i * 10)
        .with_header("n", i.to_string())
}

fn fill(log: &Log, n: i64) {
    for i in 0..n {
        let at = log.append(&[msg(i)]).unwrap();
        assert_eq!(at.first_offset, i);
    }
}

fn read_all(log: &Log, from: i64, iso: Isolation) -> Vec<i64> {
    let mut r = log.reader(from, iso);
    let mut out = Vec::new();
    while let Some(rec) = r.try_next().unwrap() {
        assert_eq!(rec.value, Bytes::from(format!("value-{}", rec.offset)));
        out.push(rec.offset);
    }
    out
}

#[test]
fn empty_log_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(
        (log.oldest_offset(), log.newest_offset(), log.next_offset()),
        (-1, -1, 0)
    );
    assert_eq!(log.high_watermark(), -1);
    assert!(
        log.reader(0, Isolation::Uncommitted)
            .try_next()
            .unwrap()
            .is_none()
    );
    assert!(
        log.reverse_reader(i64::MAX, Isolation::Uncommitted)
            .next()
            .unwrap()
            .is_none()
    );
    assert_eq!(log.offset_for_timestamp(0).unwrap(), None);
}

#[test]
fn batches_get_consecutive_offsets_and_fields_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let batch = vec![
        Message::new("a")
            .with_key("k1")
            .with_leader_epoch(3)
            .with_timestamp(77),
        Message::new(Bytes::new()),
        Message::new("c")
            .with_header("h1", "v1")
            .with_header("h2", Bytes::new()),
    ];
    let at = log.append(&batch).unwrap();
    assert_eq!((at.first_offset, at.last_offset), (0, 2));
    let mut r = log.reader(0, Isolation::Uncommitted);
    let a = r.try_next().unwrap().unwrap();
    assert_eq!(
        (
            a.offset,
            a.key.as_deref(),
            &a.value[..],
            a.leader_epoch,
            a.timestamp
        ),
        (0, Some(&b"k1"[..]), &b"a"[..], 3, 77)
    );
    let b = r.try_next().unwrap().unwrap();
    assert_eq!((b.offset, b.key.is_none(), b.value.len()), (1, true, 0));
    let c = r.try_next().unwrap().unwrap();
    assert_eq!(
        c.headers,
        vec![
            ("h1".into(), Bytes::from("v1")),
            ("h2".into(), Bytes::new())
        ]
    );
    assert!(r.try_next().unwrap().is_none());
}

#[test]
fn committed_readers_stop_at_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    fill(&log, 10);
    assert_eq!(read_all(&log, 0, Isolation::Committed), Vec::<i64>::new());
    assert_eq!(log.set_high_watermark(4).unwrap(), 4);
    assert_eq!(
        read_all(&log, 0, Isolation::Committed),
        (0..=4).collect::<Vec<_>>()
    );
    assert_eq!(
        read_all(&log, 0, Isolation::Uncommitted),
        (0..10).collect::<Vec<_>>()
    );
    // Lower values are ignored; higher ones are clamped to the newest offset.
    assert_eq!(log.set_high_watermark(2).unwrap(), 4);
    assert_eq!(log.set_high_watermark(100).unwrap(), 9);
}

#[test]
fn segments_roll_by_size_and_reads_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    fill(&log, 100);
    let segs = log.segments();
    assert!(segs.len() > 5, "only {} segments", segs.len());
    for pair in segs.windows(2) {
        assert_eq!(pair[0].next_offset, pair[1].base_offset);
        assert!(pair[0].sealed && pair[0].bytes <= 1024);
    }
    assert!(!segs.last().unwrap().sealed);
    assert_eq!(
        read_all(&log, 0, Isolation::Uncommitted),
        (0..100).collect::<Vec<_>>()
    );
    assert_eq!(
        read_all(&log, 57, Isolation::Uncommitted),
        (57..100).collect::<Vec<_>>()
    );
    for o in [0, 13, 50, 99] {
        assert_eq!(log.read_at(o).unwrap().unwrap().offset, o);
    }
    assert!(log.read_at(100).unwrap().is_none());
    // The files are named by base offset.
    let name = format!("{:020}.log", segs[1].base_offset);
    assert!(dir.path().join(name).exists());
}

#[test]
fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(0));
    let opts = LogOptions {
        segment_max_age: Some(Duration::from_secs(60)),
        clock: clock.clone(),
        ..LogOptions::default()
    };
    let log = Log::open(dir.path(), opts).unwrap();
    fill(&log, 3);
    assert!(!log.roll_if_due().unwrap());
    clock.advance(Duration::from_secs(61));
    assert!(log.roll_if_due().unwrap());
    assert_eq!(log.segments().len(), 2);
    fill_from(&log, 3, 1);
    clock.advance(Duration::from_secs(61));
    fill_from(&log, 4, 1); // the append itself rolls the aged segment first
    let bases: Vec<i64> = log.segments().iter().map(|s| s.base_offset).collect();
    assert_eq!(bases, vec![0, 3, 4]);
}

fn fill_from(log: &Log, start: i64, n: i64) {
    for i in start..start + n {
        assert_eq!(log.append(&[msg(i)]).unwrap().first_offset, i);
    }
}

#[test]
fn reopen_restores_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = Log::open(dir.path(), small()).unwrap();
        fill(&log, 50);
        log.set_high_watermark(30).unwrap();
        log.assign_leader_epoch(4).unwrap();
        fill_from(&log, 50, 1);
        log.close().unwrap();
        assert!(matches!(log.append(&[msg(0)]), Err(Error::Closed)));
    }
    let log = Log::open(dir.path(), small()).unwrap();
    assert!(log.recovery().clean_shutdown);
    assert!(log.recovery().repaired.is_empty(), "{:?}", log.recovery());
    assert_eq!(
        (
            log.oldest_offset(),
            log.newest_offset(),
            log.high_watermark()
        ),
        (0, 50, 30)
    );
    assert_eq!(log.leader_epoch_end_offset(4), Some((4, 51)));
    assert_eq!(
        read_all(&log, 0, Isolation::Uncommitted),
        (0..51).collect::<Vec<_>>()
    );
    fill_from(&log, 51, 5);
}

#[test]
fn a_second_open_of_the_same_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert!(matches!(
        Log::open(dir.path(), LogOptions::default()),
        Err(Error::Locked(_))
    ));
    // Closing releases the folder even while the old handle lives on.
    log.close().unwrap();
    Log::open(dir.path(), LogOptions::default()).unwrap();
}

#[test]
fn lookup_by_timestamp_finds_the_first_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    fill(&log, 100); // timestamps 1000, 1010, ...
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(1000).unwrap(), Some(0));
    assert_eq!(log.offset_for_timestamp(1001).unwrap(), Some(1));
    assert_eq!(log.offset_for_timestamp(1500).unwrap(), Some(50));
    assert_eq!(log.offset_for_timestamp(1990).unwrap(), Some(99));
    assert_eq!(log.offset_for_timestamp(1991).unwrap(), None);
}

#[test]
fn lookup_by_timestamp_with_out_of_order_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    let ts = [50, 10, 40, 20, 90, 30, 60, 70, 80, 100];
    for (i, t) in ts.iter().enumerate() {
        log.append(&[Message::new(format!("value-{i}")).with_timestamp(*t)])
            .unwrap();
    }
    for target in 0..=101 {
        let expect = ts.iter().position(|t| *t >= target).map(|p| p as i64);
        assert_eq!(
            log.offset_for_timestamp(target).unwrap(),
            expect,
            "target {target}"
        );
    }
}

#[test]
fn reverse_reader_returns_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    fill(&log, 60);
    log.set_high_watermark(44).unwrap();
    let collect = |mut r: commitlog::ReverseReader| {
        let mut v = Vec::new();
        while let Some(rec) = r.next().unwrap() {
            v.push(rec.offset);
        }
        v
    };
    assert_eq!(
        collect(log.reverse_reader(i64::MAX, Isolation::Committed)),
        (0..=44).rev().collect::<Vec<_>>()
    );
    assert_eq!(
        collect(log.reverse_reader(i64::MAX, Isolation::Uncommitted)),
        (0..60).rev().collect::<Vec<_>>()
    );
    assert_eq!(
        collect(log.reverse_reader(10, Isolation::Committed)),
        (0..=10).rev().collect::<Vec<_>>()
    );
}

#[test]
fn large_values_written_in_place_read_back_and_copy_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    // Large and small values mixed, and more large ones than one vectored write takes
    // (1,024 slices), so that the write goes in several calls.
    let value = |i: usize| {
        let len = if i.is_multiple_of(3) { 100 } else { 4096 + i };
        Bytes::from((0..len).map(|b| (b + i) as u8).collect::<Vec<u8>>())
    };
    let batch: Vec<Message> = (0..1200)
        .map(|i| {
            Message::new(value(i))
                .with_key(format!("k{i}"))
                .with_header("n", i.to_string())
        })
        .collect();
    let at = log.append(&batch).unwrap();
    assert_eq!((at.first_offset, at.last_offset), (0, 1199));
    log.append(&[Message::new(value(1))]).unwrap();
    let mut r = log.reader(0, Isolation::Uncommitted);
    for i in 0..1200 {
        let rec = r.try_next().unwrap().expect("a record");
        assert_eq!(rec.offset, i as i64);
        assert_eq!(rec.value, value(i), "value of {i}");
        assert_eq!(rec.key, Some(Bytes::from(format!("k{i}"))));
        assert_eq!(
            rec.headers,
            vec![("n".to_owned(), Bytes::from(i.to_string()))]
        );
    }
    assert_eq!(r.try_next().unwrap().expect("the last").value, value(1));
    // The stored bytes are whole records: a copy through the raw path is byte for byte.
    let copy_dir = tempfile::tempdir().unwrap();
    let copy = Log::open(copy_dir.path(), LogOptions::default()).unwrap();
    while let Some(b) = log.read_raw(copy.next_offset(), 1 << 20).unwrap() {
        copy.append_raw(&b.data).unwrap();
    }
    assert_eq!(copy.next_offset(), 1201);
    drop((log, copy));
    let seg = |d: &std::path::Path| {
        let mut names: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect::<Vec<_>>()
    };
    let stored = seg(dir.path());
    assert!(stored.iter().map(Vec::len).sum::<usize>() > 4096 * 800);
    assert_eq!(stored, seg(copy_dir.path()));
}

#[test]
fn raw_batches_copy_a_log_byte_for_byte() {
    let leader_dir = tempfile::tempdir().unwrap();
    let follower_dir = tempfile::tempdir().unwrap();
    let leader = Log::open(leader_dir.path(), small()).unwrap();
    let follower = Log::open(follower_dir.path(), small()).unwrap();
    // A read-only follower still copies what its leader accepted.
    follower.set_readonly(true);
    for i in 0..40 {
        leader
            .append(&[msg(i).with_leader_epoch(1 + i as u64 / 20)])
            .unwrap();
    }
    let mut copied = 0;
    while let Some(batch) = leader.read_raw(follower.next_offset(), 300).unwrap() {
        assert_eq!(batch.first_offset, follower.next_offset());
        let at = follower.append_raw(&batch.data).unwrap();
        assert_eq!(
            (at.first_offset, at.last_offset),
            (batch.first_offset, batch.last_offset)
        );
        copied += batch.count;
    }
    assert_eq!(copied, 40);
    assert_eq!(
        read_all(&follower, 0, Isolation::Uncommitted),
        (0..40).collect::<Vec<_>>()
    );
    assert_eq!(follower.leader_epochs(), leader.leader_epochs());
    assert_eq!(follower.leader_epoch_end_offset(1), Some((1, 20)));
    // Replaying old offsets, or garbage, is refused and writes nothing.
    let again = leader.read_raw(0, 100).unwrap().unwrap();
    assert!(matches!(
        follower.append_raw(&again.data),
        Err(Error::InvalidBatch(_))
    ));
    let mut bad = leader.read_raw(39, 100).unwrap().unwrap().data.to_vec();
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert!(matches!(
        follower.append_raw(&bad),
        Err(Error::InvalidBatch(_))
    ));
    assert_eq!(follower.next_offset(), 40);
    assert!(matches!(follower.append(&[msg(40)]), Err(Error::Readonly)));
}

#[test]
fn truncate_removes_the_tail_and_lowers_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    for i in 0..60 {
        log.append(&[msg(i).with_leader_epoch(if i < 30 { 1 } else { 2 })])
            .unwrap();
    }
    log.set_high_watermark(50).unwrap();
    log.truncate(25).unwrap();
    assert_eq!((log.newest_offset(), log.high_watermark()), (24, 24));
    assert_eq!(
        log.leader_epochs().len(),
        1,
        "epoch 2 started after the cut"
    );
    assert_eq!(
        read_all(&log, 0, Isolation::Uncommitted),
        (0..25).collect::<Vec<_>>()
    );
    let last = log.segments().last().copied().unwrap();
    assert!(!last.sealed && last.next_offset == 25);
    // The log continues at the cut, and survives a reopen.
    fill_from(&log, 25, 10);
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path(), small()).unwrap();
    assert_eq!(
        read_all(&log, 0, Isolation::Uncommitted),
        (0..35).collect::<Vec<_>>()
    );
    // Truncating at a segment's base offset, and everything.
    let base = log.segments()[2].base_offset;
    log.truncate(base).unwrap();
    assert_eq!(log.next_offset(), base);
    log.truncate(0).unwrap();
    assert_eq!(
        (log.oldest_offset(), log.next_offset(), log.segments().len()),
        (-1, 0, 1)
    );
    assert!(matches!(log.truncate(-1), Err(Error::InvalidBatch(_))));
}

#[test]
fn readers_follow_a_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    fill(&log, 20);
    let mut r = log.reader(0, Isolation::Uncommitted);
    for i in 0..15 {
        assert_eq!(r.try_next().unwrap().unwrap().offset, i);
    }
    log.truncate(10).unwrap();
    log.append(&[Message::new("replaced")]).unwrap();
    let rec = r.try_next().unwrap().unwrap();
    assert_eq!((rec.offset, &rec.value[..]), (10, &b"replaced"[..]));
}

#[test]
fn retention_by_messages_bytes_and_age_keeps_the_active_segment() {
    let clock = Arc::new(ManualClock::new(0));
    let with = |r: Retention| LogOptions {
        retention: r,
        clock: clock.clone(),
        ..small()
    };
    // By messages: the newest segments whose total stays within the limit.
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        with(Retention {
            max_messages: Some(30),
            ..Retention::default()
        }),
    )
    .unwrap();
    fill(&log, 100);
    log.set_high_watermark(99).unwrap(); // retention deletes only committed records
    let report = log.apply_retention().unwrap();
    assert!(report.segments > 0);
    let kept: u64 = log.segments().iter().map(|s| s.records).sum();
    assert!(kept <= 30 && kept + report.messages == 100, "kept {kept}");
    assert_eq!(
        read_all(&log, 0, Isolation::Uncommitted),
        (100 - kept as i64..100).collect::<Vec<_>>()
    );
    assert_eq!(log.oldest_offset(), 100 - kept as i64);

    // By bytes.
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        with(Retention {
            max_bytes: Some(2500),
            ..Retention::default()
        }),
    )
    .unwrap();
    fill(&log, 100);
    log.set_high_watermark(99).unwrap();
    log.apply_retention().unwrap();
    let bytes: u64 = log.segments().iter().map(|s| s.bytes).sum();
    assert!(bytes <= 2500 && bytes > 1000, "{bytes} bytes kept");

    // By age: timestamps are 1000 + 10 i ns; everything older than the cutoff goes, but never
    // the active segment.
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        with(Retention {
            max_age: Some(Duration::from_nanos(100)),
            ..Retention::default()
        }),
    )
    .unwrap();
    fill(&log, 100);
    log.set_high_watermark(99).unwrap();
    clock.set(1_000_000);
    log.apply_retention().unwrap();
    assert_eq!(log.segments().len(), 1);
    assert!(!log.segments()[0].sealed);
}

#[test]
fn readers_finish_a_segment_that_retention_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        retention: Retention {
            max_messages: Some(1),
            ..Retention::default()
        },
        ..small()
    };
    let log = Log::open(dir.path(), opts).unwrap();
    fill(&log, 100);
    let mut r = log.reader(0, Isolation::Uncommitted);
    assert_eq!(r.try_next().unwrap().unwrap().offset, 0);
    log.set_high_watermark(99).unwrap();
    log.apply_retention().unwrap();
    assert!(log.oldest_offset() > 50);
    // The reader finishes the segment it holds, then jumps to what is left.
    let mut seen = vec![0];
    while let Some(rec) = r.try_next().unwrap() {
        seen.push(rec.offset);
    }
    let first_seg_end = seen
        .windows(2)
        .position(|w| w[1] != w[0] + 1)
        .map_or(seen.len(), |p| p + 1);
    assert_eq!(
        seen[..first_seg_end],
        (0..first_seg_end as i64).collect::<Vec<_>>()[..]
    );
    assert_eq!(*seen.last().unwrap(), 99);
    assert_eq!(seen[first_seg_end], log.oldest_offset());
}

#[test]
fn compaction_keeps_the_newest_per_key_and_all_null_keys() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), small()).unwrap();
    // 60 messages: keys k0..k4 in turn, every 6th without a key.
    for i in 0..60i64 {
        let m = Message::new(format!("value-{i}"));
        let m = if i % 6 == 0 {
            m
        } else {
            m.with_key(format!("k{}", i % 5))
        };
        log.append(&[m]).unwrap();
    }
    log.set_high_watermark(49).unwrap();
    let mut reader = log.reader(0, Isolation::Committed);
    let first = reader.try_next().unwrap().unwrap();
    let report = log.compact().unwrap();
    assert!(report.messages_removed > 0 && report.segments_rewritten > 0);
    let sealed_end = log.segments().last().unwrap().base_offset;
    let survivors = read_all(&log, 0, Isolation::Uncommitted);
    for i in 0..60i64 {
        let key = (i % 6 != 0).then_some(i % 5);
        let newer_same_key = key.is_some_and(|k| (i + 1..=49).any(|j| j % 6 != 0 && j % 5 == k));
        let expect_gone = i < sealed_end && i <= 49 && newer_same_key;
        assert_eq!(!survivors.contains(&i), expect_gone, "offset {i}");
    }
    // A reader that started before compaction still reads a consistent, increasing sequence.
    let mut prev = first.offset;
    while let Some(rec) = reader.try_next().unwrap() {
        assert!(rec.offset > prev);
        prev = rec.offset;
    }
    assert_eq!(prev, 49);
    // The compacted log reopens cleanly, indexes intact.
    log.close().unwrap();
    drop((log, reader));
    let log = Log::open(dir.path(), small()).unwrap();
    assert!(log.recovery().repaired.is_empty());
    assert_eq!(read_all(&log, 0, Isolation::Uncommitted), survivors);
}

#[test]
fn readonly_logs_refuse_appends_and_end_committed_readers() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    fill(&log, 3);
    log.set_high_watermark(2).unwrap();
    log.set_readonly(true);
    assert!(matches!(log.append(&[msg(3)]), Err(Error::Readonly)));
    let mut r = log.reader(0, Isolation::Committed);
    for i in 0..3 {
        assert_eq!(r.try_next().unwrap().unwrap().offset, i);
    }
    assert!(matches!(r.try_next(), Err(Error::EndOfReadonly)));
    log.set_readonly(false);
    assert!(r.try_next().unwrap().is_none());
    fill_from(&log, 3, 1);
}

#[test]
fn bad_input_is_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        max_record_bytes: 1024,
        ..LogOptions::default()
    };
    let log = Log::open(dir.path(), opts).unwrap();
    assert!(matches!(log.append(&[]), Err(Error::InvalidBatch(_))));
    let big = Message::new(vec![0u8; 2000]);
    assert!(matches!(
        log.append(&[msg(0), big]),
        Err(Error::RecordTooLarge { limit: 1024, .. })
    ));
    assert!(matches!(
        log.append_raw(b"not a record at all, no"),
        Err(Error::InvalidBatch(_))
    ));
    assert_eq!(log.next_offset(), 0);
    let bad = LogOptions {
        segment_max_bytes: 5,
        ..LogOptions::default()
    };
    assert!(matches!(
        Log::open(dir.path().join("x"), bad),
        Err(Error::InvalidOption(_))
    ));
}

#[test]
fn blocking_readers_wake_on_append_and_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let mut r = log.reader(0, Isolation::Committed);
    assert!(r.next_timeout(Duration::from_millis(10)).unwrap().is_none());
    let waiter = std::thread::spawn(move || r.next_blocking().map(|rec| rec.offset));
    log.append(&[msg(0)]).unwrap();
    log.set_high_watermark(0).unwrap();
    assert_eq!(waiter.join().unwrap().unwrap(), 0);

    let mut r = log.reader(1, Isolation::Committed);
    let waiter = std::thread::spawn(move || r.next_blocking().map(|rec| rec.offset));
    log.close().unwrap();
    assert!(matches!(waiter.join().unwrap(), Err(Error::Closed)));
}

#[test]
fn poll_next_wakes_the_registered_waker() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Wake, Waker};
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    let count = Arc::new(Count(AtomicUsize::new(0)));
    let waker = Waker::from(count.clone());
    let mut cx = Context::from_waker(&waker);
    let mut r = log.reader(0, Isolation::Uncommitted);
    assert!(r.poll_next(&mut cx).is_pending());
    assert_eq!(count.0.load(Ordering::SeqCst), 0);
    log.append(&[msg(0)]).unwrap();
    assert_eq!(count.0.load(Ordering::SeqCst), 1);
    match r.poll_next(&mut cx) {
        Poll::Ready(Ok(rec)) => assert_eq!(rec.offset, 0),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_sync_policy_keeps_the_data() {
    for sync in [
        SyncPolicy::Os,
        SyncPolicy::Always,
        SyncPolicy::EveryMessages(3),
        SyncPolicy::Interval(Duration::from_millis(5)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let opts = LogOptions { sync, ..small() };
        let log = Log::open(dir.path(), opts.clone()).unwrap();
        fill(&log, 40);
        log.sync().unwrap();
        log.close().unwrap();
        drop(log);
        let log = Log::open(dir.path(), opts).unwrap();
        assert_eq!(
            read_all(&log, 0, Isolation::Uncommitted),
            (0..40).collect::<Vec<_>>(),
            "{sync:?}"
        );
    }
}

/// Counts the sync rounds it is told of, and the records they made durable.
#[derive(Debug, Default)]
struct Syncs {
    rounds: std::sync::atomic::AtomicU64,
    records: std::sync::atomic::AtomicU64,
}

impl commitlog::SyncObserver for Syncs {
    fn synced(&self, _took: Duration, records: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.rounds.fetch_add(1, Relaxed);
        self.records.fetch_add(records, Relaxed);
    }
}

#[test]
fn group_commit_with_concurrent_appenders() {
    let dir = tempfile::tempdir().unwrap();
    let syncs = Arc::new(Syncs::default());
    let opts = LogOptions {
        sync: SyncPolicy::Always,
        on_sync: Some(syncs.clone()),
        ..LogOptions::default()
    };
    let log = Log::open(dir.path(), opts).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..200)
                    .map(|i| {
                        log.append(&[Message::new(format!("{t}-{i}"))])
                            .unwrap()
                            .first_offset
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut offsets: Vec<i64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..1600).collect::<Vec<_>>());
    // Every append waited for a sync; concurrent ones can share one, never need more than one.
    let rounds = log.sync_rounds();
    assert!((1..=1600).contains(&rounds), "{rounds} sync rounds");
    // The observer hears of each round, and of each record once: a round that advances the
    // durable end always has written segments to sync.
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(syncs.rounds.load(Relaxed), rounds);
    assert_eq!(syncs.records.load(Relaxed), 1600);
}

#[test]
fn explicit_sync_flushes_under_every_policy() {
    for sync in [
        SyncPolicy::Os,
        SyncPolicy::EveryMessages(1000),
        SyncPolicy::Interval(Duration::from_secs(3600)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), LogOptions { sync, ..small() }).unwrap();
        fill(&log, 30); // several segments
        assert_eq!(log.sync_rounds(), 0, "{sync:?}");
        log.sync().unwrap();
        assert_eq!(log.sync_rounds(), 1, "{sync:?}");
        log.sync().unwrap();
        assert_eq!(log.sync_rounds(), 1, "nothing new to sync under {sync:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        LogOptions {
            sync: SyncPolicy::EveryMessages(10),
            ..small()
        },
    )
    .unwrap();
    fill(&log, 35);
    assert_eq!(log.sync_rounds(), 3);
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        LogOptions {
            sync: SyncPolicy::Always,
            ..small()
        },
    )
    .unwrap();
    fill(&log, 5);
    assert_eq!(log.sync_rounds(), 5, "one appender, one round per append");
}

#[test]
fn leader_epochs_follow_appends_and_assignments() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogOptions::default()).unwrap();
    assert_eq!(log.leader_epoch_end_offset(0), None);
    log.append(&[msg(0).with_leader_epoch(1), msg(1).with_leader_epoch(1)])
        .unwrap();
    assert!(log.assign_leader_epoch(3).unwrap());
    assert!(!log.assign_leader_epoch(2).unwrap());
    log.append(&[msg(2).with_leader_epoch(3)]).unwrap();
    assert_eq!(log.last_leader_epoch(), Some(3));
    assert_eq!(log.leader_epoch_end_offset(1), Some((1, 2)));
    assert_eq!(log.leader_epoch_end_offset(2), Some((1, 2)));
    assert_eq!(log.leader_epoch_end_offset(3), Some((3, 3)));
    let text = std::fs::read_to_string(dir.path().join(commitlog::EPOCH_FILE)).unwrap();
    assert_eq!(text, "0\n2\n1 0\n3 2\n");
}
