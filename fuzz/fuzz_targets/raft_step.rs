//! Fuzz target: `Raft::step` of a live 3-node cluster of cores, invariants checked after every operation.
//! The harness (and what must hold) is `raftkit::fuzz::raft_step`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    raftkit::fuzz::raft_step(data);
});
