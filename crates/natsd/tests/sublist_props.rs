//! The subscription index on arbitrary subscriptions and subjects: a match finds exactly the
//! subscriptions NATS's rules say, and its work is bounded by the subject's tokens times the
//! subscriptions, whatever they are. A published token that is literally `*` or `>` must not
//! make a match revisit the index (it once cost 2^n for n such tokens). The fuzz target
//! `fuzz/fuzz_targets/nats_subjects.rs` runs the same check on libFuzzer's inputs.

use natsd::sublist::{Sublist, Subscription, is_valid_subject};
use proptest::prelude::*;

/// NATS's rule, token by token: `*` matches one token, a final `>` one or more.
fn reaches(pattern: &str, subject: &str) -> bool {
    let mut s = subject.split('.');
    for p in pattern.split('.') {
        match (p, s.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    s.next().is_none()
}

/// The most nodes one match may visit: the root, and per subscription one node per token of
/// the subject plus its `>`.
fn bound(subs: usize, subject: &str) -> usize {
    1 + subs * (subject.split('.').count() + 1)
}

fn check(subs: &[String], subject: &str) {
    let list = Sublist::default();
    let subs: Vec<_> = subs
        .iter()
        .filter(|s| is_valid_subject(s))
        .map(|s| Subscription::detached(s))
        .collect();
    for s in &subs {
        list.insert(s.clone());
    }
    let (found, work) = list.match_with_work(subject);
    assert!(
        work <= bound(subs.len(), subject),
        "{work} nodes visited for {subject:?} over {} subscriptions",
        subs.len()
    );
    // Each subscription at most once, and exactly those NATS's rule says (a published `*` is
    // an ordinary token to the rule only where the pattern has a wildcard).
    for s in &subs {
        let n = found
            .iter()
            .filter(|f| std::sync::Arc::ptr_eq(f, s))
            .count();
        let literal_tokens = !subject.split('.').any(|t| t == "*" || t == ">");
        if literal_tokens {
            assert_eq!(
                n,
                usize::from(reaches(&s.subject, subject)),
                "{} {subject}",
                s.subject
            );
        } else {
            assert!(n <= 1, "{} reached {n} times by {subject}", s.subject);
        }
    }
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("*".to_owned()),
        Just(">".to_owned()),
    ]
}

fn subject(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(token(), 1..max).prop_map(|t| t.join("."))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_match_is_exact_and_bounded(
        subs in prop::collection::vec(subject(8), 0..24),
        subject in subject(12),
    ) {
        check(&subs, &subject);
    }
}

/// The attack: a subscription of n `*` tokens, and a message on the same subject.
#[test]
fn wildcard_tokens_in_a_published_subject_cost_one_visit_each() {
    for n in [1usize, 8, 26, 64] {
        let s = vec!["*"; n].join(".");
        let list = Sublist::default();
        list.insert(Subscription::detached(&s));
        list.insert(Subscription::detached(&format!("_INBOX.{s}")));
        let (found, work) = list.match_with_work(&s);
        assert_eq!(found.len(), 1, "{n}");
        assert!(work <= n + 2, "{work} nodes visited for {n} tokens");
    }
}
