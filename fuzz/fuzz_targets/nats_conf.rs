//! Feeds arbitrary text to the embedded NATS server's configuration reader, and what it parses
//! to the key check and the `authorization` and `tls` readers: none may panic, however deep or
//! odd the input.
//!
//! Run on stable with `cargo fuzz run -s none nats_conf` from this folder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(root) = natsd::conf::parse(text) else {
        return;
    };
    let _ = natsd::conf::check_keys(&root);
    let _ = natsd::conf::authorization(&root);
    let _ = natsd::conf::tls(&root);
});
