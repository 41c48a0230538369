//! The protocol parser, the embedded server's most exposed surface, on arbitrary input: it
//! never panics, never buffers without a bound, and reads the same operations however the
//! input is split into reads. The fuzz target `fuzz/fuzz_targets/nats_parser.rs` runs the same
//! check on libFuzzer's inputs.

use natsd::parser::parse_chunked;
use proptest::prelude::*;

/// Pieces of the protocol, valid and nearly valid, to build inputs from.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"PING\r\n".to_vec()),
        Just(b"PONG\r\n".to_vec()),
        Just(b"CONNECT {\"verbose\":false}\r\n".to_vec()),
        Just(b"SUB a.* 1\r\n".to_vec()),
        Just(b"SUB a q 2\r\n".to_vec()),
        Just(b"UNSUB 1 5\r\n".to_vec()),
        (0usize..40).prop_map(|n| {
            let mut v = format!("PUB a.b {n}\r\n").into_bytes();
            v.extend(std::iter::repeat_n(b'x', n));
            v.extend_from_slice(b"\r\n");
            v
        }),
        (0usize..20, 0usize..20).prop_map(|(h, p)| {
            let mut v = format!("HPUB h r {h} {}\r\n", h + p).into_bytes();
            v.extend(std::iter::repeat_n(b'y', h + p));
            v.extend_from_slice(b"\r\n");
            v
        }),
        Just(b"PUB a 99999999999999999999999\r\n".to_vec()),
        Just(b"HPUB a 10 5\r\n".to_vec()),
        Just(b"PUB a -1\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..50),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_input_in_any_reads_parses_the_same_and_never_panics(
        pieces in proptest::collection::vec(piece(), 0..30),
        chunk in 1usize..64,
    ) {
        let data: Vec<u8> = pieces.concat();
        let whole = parse_chunked(&data, data.len().max(1), 256, 64);
        let split = parse_chunked(&data, chunk, 256, 64);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000), chunk in 1usize..300) {
        let _ = parse_chunked(&data, chunk, 128, 64);
    }
}
