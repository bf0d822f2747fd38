//! Helpers shared by the QUIC integration tests.

/// `n` distinct loopback addresses whose UDP ports were free a moment ago
/// (bound to port 0, then released for the peers to take).
pub fn free_addrs(n: usize) -> Vec<String> {
    let sockets: Vec<_> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().expect("addr").to_string())
        .collect()
}
