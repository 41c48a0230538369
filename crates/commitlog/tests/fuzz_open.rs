//! The fuzz target's function, run by proptest on stable: arbitrary bytes opened as a segment and
//! its index must never panic, and forward and reverse reads must agree
//! where both read.

use commitlog::fuzzing::open_bytes;
use commitlog::{Log, LogOptions, Message};
use proptest::prelude::*;

/// A valid segment and index to mutate: mutations of real data reach deeper than random bytes.
fn valid_segment() -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(
        dir.path(),
        LogOptions {
            index_interval_bytes: 64,
            ..LogOptions::default()
        },
    )
    .unwrap();
    for i in 0..20i64 {
        let m = Message::new(vec![b'v'; (i * 5) as usize])
            .with_timestamp(100 - i)
            .with_header("h", "x");
        log.append(&[if i % 2 == 0 {
            m.with_key(vec![i as u8])
        } else {
            m
        }])
        .unwrap();
    }
    log.close().unwrap();
    let log_bytes = std::fs::read(dir.path().join(format!("{:020}.log", 0))).unwrap();
    let index = std::fs::read(dir.path().join(format!("{:020}.index", 0))).unwrap();
    (log_bytes, index)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Cut(usize),
    Append(Vec<u8>),
    Overwrite(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Flip(a, b)),
        any::<usize>().prop_map(Mutation::Cut),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Mutation::Append),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(a, b)| Mutation::Overwrite(a, b)),
    ]
}

fn mutate(mut bytes: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        let n = bytes.len().max(1);
        match m {
            Mutation::Flip(at, bits) => {
                if !bytes.is_empty() {
                    bytes[at % n] ^= bits;
                }
            }
            Mutation::Cut(at) => bytes.truncate(at % (n + 1)),
            Mutation::Append(extra) => bytes.extend_from_slice(extra),
            Mutation::Overwrite(at, with) => {
                for (i, b) in with.iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(at % n + i) {
                        *slot = *b;
                    }
                }
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)))]

    #[test]
    fn random_bytes_never_panic(log in prop::collection::vec(any::<u8>(), 0..512),
                                index in prop::collection::vec(any::<u8>(), 0..128)) {
        open_bytes(&log, &index, None);
    }

    #[test]
    fn mutated_segments_never_panic(log_m in prop::collection::vec(mutation(), 0..4),
                                    index_m in prop::collection::vec(mutation(), 0..3),
                                    second in prop::option::of(prop::collection::vec(any::<u8>(), 0..200))) {
        let (log, index) = valid_segment();
        let log = mutate(log, &log_m);
        let index = mutate(index, &index_m);
        let out = open_bytes(&log, &index, second.as_deref());
        // Unmutated data must come back whole.
        if log_m.is_empty() && second.is_none() {
            prop_assert_eq!(out.forward, 20);
        }
    }
}
