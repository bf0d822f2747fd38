//! Fuzz target: the acceptor's hello checks against a certificate's principal (and certificate parsing).
//! The harness (and what must hold) is `raftkit::fuzz::hello`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    raftkit::fuzz::hello(data);
});
