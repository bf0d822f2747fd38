//! What the benchmarks share: where they write, percentiles, and the raw
//! fsync floor of the disk they write to.

#![allow(dead_code)] // each benchmark uses its own subset

use std::fs::OpenOptions;
use std::io::Write;
use std::time::{Duration, Instant};

/// A temporary directory on the disk under test (`RAFTKIT_BENCH_DIR`, or the
/// system's temporary directory).
pub fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("RAFTKIT_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).expect("tempdir in RAFTKIT_BENCH_DIR"),
        None => tempfile::tempdir().expect("tempdir"),
    }
}

/// The `p`-quantile of sorted samples (zero when there are none).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// The floor of any durable append: 16-byte writes each followed by
/// fdatasync, repeated for `secs`. Returns p50, p99 and the sample count.
pub fn raw_fsync(secs: f64) -> (Duration, Duration, usize) {
    let dir = bench_dir();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("raw"))
        .expect("open");
    let mut lat = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < deadline {
        let t = Instant::now();
        f.write_all(&[0xAB; 16]).expect("write");
        f.sync_data().expect("fdatasync");
        lat.push(t.elapsed());
    }
    lat.sort_unstable();
    (percentile(&lat, 0.5), percentile(&lat, 0.99), lat.len())
}

/// `n` UDP sockets bound to distinct free loopback ports, with their
/// addresses: each peer serves on its socket (`PeerBuilder::listen_socket`,
/// as `raftkit::dev` does), so no port is released for another process to
/// take before its peer listens.
pub fn free_sockets(n: usize) -> (Vec<std::net::UdpSocket>, Vec<String>) {
    let sockets: Vec<_> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let addrs = sockets
        .iter()
        .map(|s| s.local_addr().expect("addr").to_string())
        .collect();
    (sockets, addrs)
}
