//! Loopback addresses for test nodes to listen on, shared by every test
//! crate of the workspace: the integration tests (`support/mod.rs`), the
//! library's unit tests and kv's tests include this file with `#[path]`.
//!
//! Why not bind port 0, drop the socket and hand its port on: a port the
//! kernel picked for a bind to port 0 was free only until the next such
//! bind, and every QUIC client endpoint binds port 0, so between that call
//! and the node's own bind (tens to hundreds of ms for a third node)
//! another test's client could be handed the same port and the node failed
//! to start with "address in use".
//!
//! Invariants:
//! - every port handed out lies below the kernel's ephemeral range
//!   (`/proc/sys/net/ipv4/ip_local_port_range`), so no bind to port 0 on
//!   this machine can take it; where that file cannot be read (not Linux)
//!   the ports lie in `[10000, 32768)`, below the ephemeral range of Linux
//!   (32768), the IANA range (49152, macOS, Windows) alike;
//! - within one process each port is handed out at most once (a counter
//!   from an offset drawn per process, so that two test processes on one
//!   machine seldom probe the same ones);
//! - each port was free for both UDP (QUIC) and TCP (kv's metrics page)
//!   when it was probed.
//!
//! There is no silent fallback to port 0: a machine whose ephemeral range
//! leaves too few ports below it fails the test that asked, saying why.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out.
const LOW: u32 = 10_000;
/// The fewest ports below the ephemeral range for the scheme to work.
const AT_LEAST: u32 = 2_000;
/// The upper end where the ephemeral range cannot be read: Linux's default
/// start of it, below the IANA one.
const UNKNOWN_RANGE_HIGH: u32 = 32_768;

/// `n` distinct loopback addresses (`127.0.0.1:port`) whose ports were
/// free a moment ago and are handed out once in this process (see the
/// module docs).
pub fn free_addrs(n: usize) -> Vec<String> {
    (0..n).map(|_| free_addr()).collect()
}

/// One loopback address as [`free_addrs`] hands them out.
pub fn free_addr() -> String {
    let (low, high) = below_ephemeral();
    format!("127.0.0.1:{}", probe_unused(low, high))
}

/// The ports `[low, high)` below the kernel's ephemeral range.
///
/// # Panics
///
/// If the ephemeral range starts less than [`AT_LEAST`] ports above
/// [`LOW`] (a machine tuned to hand out nearly every port): no port is
/// safe from binds to port 0 there.
fn below_ephemeral() -> (u32, u32) {
    let high = match std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") {
        Ok(range) => range
            .split_whitespace()
            .next()
            .and_then(|low| low.parse::<u32>().ok())
            .unwrap_or_else(|| panic!("test ports: cannot parse ip_local_port_range {range:?}")),
        // Not Linux: below every usual ephemeral range.
        Err(_) => UNKNOWN_RANGE_HIGH,
    };
    assert!(
        high >= LOW + AT_LEAST,
        "test ports: the kernel's ephemeral range starts at {high}, leaving fewer than \
         {AT_LEAST} ports above {LOW} that no bind to port 0 can take; raise its start \
         (sysctl net.ipv4.ip_local_port_range)"
    );
    (LOW, high)
}

/// A port of `[low, high)` that no earlier call in this process handed out
/// and that both UDP and TCP could bind on loopback just now.
fn probe_unused(low: u32, high: u32) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = high - low;
    // A per-process start: the process id and the clock's nanoseconds.
    let seed = std::process::id().wrapping_mul(7_919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    let _ = NEXT.compare_exchange(u32::MAX, seed % span, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..span {
        let Ok(port) = u16::try_from(low + NEXT.fetch_add(1, Ordering::SeqCst) % span) else {
            continue;
        };
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        if udp.is_ok() && tcp.is_ok() {
            return port;
        }
    }
    panic!("test ports: no free loopback port in {low}..{high}");
}
