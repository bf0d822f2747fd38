//! The unit tests' loopback ports ([`crate::test_ports`]) are distinct,
//! below the kernel's ephemeral range, and free when handed out.

use crate::test_ports::{free_addr, free_addrs};

/// The port of a `127.0.0.1:port` address.
fn port(addr: &str) -> u32 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

/// Fifty addresses: fifty ports, each below the ephemeral range (so no
/// bind to port 0 can take it meanwhile), each free for UDP and TCP.
#[test]
fn ports_are_distinct_below_the_ephemeral_range_and_free() {
    let first = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32_768u32);
    let mut addrs = free_addrs(49);
    addrs.push(free_addr());
    let mut ports: Vec<u32> = addrs.iter().map(|a| port(a)).collect();
    assert!(
        ports.iter().all(|&p| (10_000..first).contains(&p)),
        "a port outside 10000..{first}: {ports:?}"
    );
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 50, "a port was handed out twice: {addrs:?}");
    for a in &addrs {
        std::net::UdpSocket::bind(a).unwrap_or_else(|e| panic!("{a} (UDP): {e}"));
        std::net::TcpListener::bind(a).unwrap_or_else(|e| panic!("{a} (TCP): {e}"));
    }
}
