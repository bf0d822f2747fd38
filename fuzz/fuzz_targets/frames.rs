//! Fuzz target: peer frames back to back, read by the transport's `read_frame`.
//! The harness (and what must hold) is `raftkit::fuzz::frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    raftkit::fuzz::frames(data);
});
