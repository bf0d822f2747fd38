//! Helpers shared by the QUIC integration tests.

mod ports;

/// `n` distinct loopback addresses whose ports were free a moment ago,
/// below the kernel's ephemeral range and handed out once per process
/// (`support/ports.rs` says why).
pub use ports::free_addrs;
