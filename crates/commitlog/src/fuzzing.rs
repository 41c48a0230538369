//! An entry point for fuzzing recovery with untrusted bytes.
//!
//! [`open_bytes`] is shared by the `fuzz/` target (libFuzzer) and a proptest that runs on stable
//! in CI, so both exercise the same code.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Isolation, Log, LogOptions};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// What reading back arbitrary bytes produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Records read forward.
    pub forward: usize,
    /// Records read backward.
    pub backward: usize,
    /// The log end offset after recovery.
    pub next_offset: i64,
}

/// Writes `log` and `index` as segment 0 (and `second` as a later segment, if given) of a fresh
/// folder, opens it as a log, reads everything forward and backward, looks up a few offsets and
/// timestamps, appends once, and closes. It must never panic, whatever the bytes; errors are
/// fine. Records read forward and backward must agree (where both read, if damage stops them).
///
/// # Panics
/// Only if the log breaks one of its own invariants: that is the bug the fuzzer looks for.
pub fn open_bytes(log: &[u8], index: &[u8], second: Option<&[u8]>) -> Outcome {
    let dir = std::env::temp_dir().join(format!(
        "commitlog-fuzz-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let outcome = run(&dir, log, index, second);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn run(dir: &PathBuf, log: &[u8], index: &[u8], second: Option<&[u8]>) -> Outcome {
    let mut out = Outcome::default();
    if std::fs::create_dir_all(dir).is_err() {
        return out;
    }
    let _ = std::fs::write(dir.join(format!("{:020}.log", 0)), log);
    let _ = std::fs::write(dir.join(format!("{:020}.index", 0)), index);
    if let Some(s) = second {
        let _ = std::fs::write(dir.join(format!("{:020}.log", 1000)), s);
    }
    let opts = LogOptions {
        index_interval_bytes: 64,
        ..LogOptions::default()
    };
    let Ok(l) = Log::open(dir, opts) else {
        return out;
    };
    out.next_offset = l.next_offset();
    let mut forward = Vec::new();
    let mut r = l.reader(0, Isolation::Uncommitted);
    let mut forward_damaged = false;
    while let Some(rec) = r.try_next().unwrap_or_else(|_| {
        forward_damaged = true;
        None
    }) {
        assert!(
            forward.last().is_none_or(|p| rec.offset > *p),
            "offsets must increase"
        );
        assert!(rec.offset < l.next_offset(), "a record beyond the log end");
        forward.push(rec.offset);
        if forward.len() > 1_000_000 {
            break;
        }
    }
    out.forward = forward.len();
    let mut backward = Vec::new();
    let mut rr = l.reverse_reader(i64::MAX, Isolation::Uncommitted);
    let mut backward_damaged = false;
    while let Some(rec) = rr.next().unwrap_or_else(|_| {
        backward_damaged = true;
        None
    }) {
        backward.push(rec.offset);
        if backward.len() > 1_000_000 {
            break;
        }
    }
    out.backward = backward.len();
    backward.reverse();
    if forward_damaged || backward_damaged {
        // Each stops at damage: the forward reader after every intact record before it, the
        // reverse one after every record it could find behind it. Where both read, they agree.
        let lo = backward.first().copied().unwrap_or(i64::MAX);
        let hi = forward.last().copied().unwrap_or(i64::MIN);
        let f: Vec<i64> = forward.iter().copied().filter(|o| *o >= lo).collect();
        let b: Vec<i64> = backward.iter().copied().filter(|o| *o <= hi).collect();
        assert_eq!(f, b, "forward and reverse reads disagree where both read");
    } else {
        assert_eq!(forward, backward, "forward and reverse reads disagree");
    }
    for o in [0, 1, l.oldest_offset(), l.newest_offset()] {
        if let Ok(Some(rec)) = l.read_at(o) {
            assert!(rec.offset >= o);
        }
    }
    for ts in [i64::MIN, 0, i64::MAX] {
        let _ = l.offset_for_timestamp(ts);
    }
    let _ = l.append(&[crate::Message::new("after")]);
    let _ = l.close();
    out
}
