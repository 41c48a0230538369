//! Feeds arbitrary bytes to the embedded NATS server's protocol parser, split into reads of a
//! size taken from the input: it must never panic nor buffer without a bound.
//!
//! Run on stable with `cargo fuzz run -s none nats_parser` from this folder. The same checks
//! run under proptest in CI (`crates/natsd/tests/parser_props.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let _ = natsd::parser::parse_chunked(rest, usize::from(chunk) + 1, 256, 1024);
});
