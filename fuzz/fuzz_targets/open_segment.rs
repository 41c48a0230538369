//! Opens arbitrary bytes as a segment file and its index; the log must never panic.
//!
//! Run on stable with `cargo fuzz run -s none open_segment` from this folder. The same function
//! runs under proptest in CI (`crates/commitlog/tests/fuzz_open.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes split the input into the segment and the index.
    if data.len() < 2 {
        return;
    }
    let split = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (log, index) = data[2..].split_at(split);
    commitlog::fuzzing::open_bytes(log, index, None);
});
