//! Fuzz target: the client service's hello and request frames, authorized for every role.
//! The harness (and what must hold) is `raftkit::fuzz::client_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    raftkit::fuzz::client_request(data);
});
