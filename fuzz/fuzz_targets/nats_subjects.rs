//! Builds the embedded NATS server's subscription index from arbitrary subscriptions and
//! matches an arbitrary subject against it: it must never panic, and one match must visit at
//! most the root plus, per subscription, one node per subject token and its `>`, whatever the
//! subject holds (a literal `*` token once doubled the work per token).
//!
//! The input is lines: the first is the subject, the others subscriptions (invalid ones are
//! skipped, as the server refuses them). Run on stable with `cargo fuzz run -s none
//! nats_subjects` from this folder. The same checks run under proptest in CI
//! (`crates/natsd/tests/sublist_props.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use natsd::sublist::{Sublist, Subscription, is_valid_subject};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.lines();
    let Some(subject) = lines.next() else {
        return;
    };
    let list = Sublist::default();
    let mut n = 0;
    for s in lines.filter(|s| is_valid_subject(s)).take(256) {
        list.insert(Subscription::detached(s));
        n += 1;
    }
    let (found, work) = list.match_with_work(subject);
    assert!(work <= 1 + n * (subject.split('.').count() + 1));
    assert!(found.len() <= n);
});
