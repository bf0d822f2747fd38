//! Helpers shared by the QUIC integration tests.

use std::sync::atomic::{AtomicU32, Ordering};

/// `n` distinct loopback addresses whose UDP ports were free a moment ago
/// (bound, then released for the peers to take).
///
/// The ports are taken below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), never from it: a port the
/// kernel picked for a bind to port 0 was free only until the next such
/// bind, and every QUIC client endpoint of the process binds port 0, so
/// between this call and the node's own bind (tens to hundreds of ms for a
/// third node) another test's client could be handed the same port and the
/// node failed to start with "address in use". Below the ephemeral range
/// no bind to port 0 can take it; within this process the ports are handed
/// out once each (a counter), from an offset drawn per process so that two
/// test processes on one machine seldom probe the same ones. Falls back to
/// port 0 where the range cannot be read.
pub fn free_addrs(n: usize) -> Vec<String> {
    let sockets: Vec<std::net::UdpSocket> = match below_ephemeral() {
        Some((low, high)) => (0..n).map(|_| bind_unused(low, high)).collect(),
        None => (0..n)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .collect(),
    };
    sockets
        .iter()
        .map(|s| s.local_addr().expect("addr").to_string())
        .collect()
}

/// The ports `[low, high)` below the kernel's ephemeral range that
/// [`free_addrs`] hands out, if that range can be read and leaves enough.
fn below_ephemeral() -> Option<(u32, u32)> {
    const LOW: u32 = 10_000;
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let high: u32 = range.split_whitespace().next()?.parse().ok()?;
    (high >= LOW + 2_000).then_some((LOW, high))
}

/// A loopback UDP socket bound to a port of `[low, high)` that no earlier
/// call in this process handed out.
fn bind_unused(low: u32, high: u32) -> std::net::UdpSocket {
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
        let port = low + NEXT.fetch_add(1, Ordering::SeqCst) % span;
        if let Ok(socket) = std::net::UdpSocket::bind(("127.0.0.1", port as u16)) {
            return socket;
        }
    }
    panic!("no free UDP port in {low}..{high}");
}
