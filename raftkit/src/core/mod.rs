//! The Raft protocol as a pure, deterministic state machine.
pub mod message;
pub mod types;
