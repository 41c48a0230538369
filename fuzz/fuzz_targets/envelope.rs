//! Decodes arbitrary bytes as a Liftbridge envelope of every type; it must never panic.
//!
//! Run on stable with `cargo fuzz run -s none envelope` from this folder. The same checks run
//! under proptest in CI (`crates/natsbridge/tests/envelope_props.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use natsbridge::envelope::{self, MsgType};

fuzz_target!(|data: &[u8]| {
    let _ = envelope::peek(data);
    for ty in MsgType::ALL {
        if let Ok(payload) = envelope::decode(data, ty) {
            // What decodes must re-encode to the same payload.
            let again = envelope::encode(ty, payload, data.get(6).is_some_and(|f| f & 1 == 1));
            assert_eq!(envelope::decode(&again, ty).ok(), Some(payload));
        }
    }
    let _ = envelope::decode_replication_response(&bytes::Bytes::copy_from_slice(data));
});
