//! A micro-measure of what a call to the remembered leader pays to keep
//! the members up to date (stop 57 task #4): [`Members::current`] (a read
//! lock and an `Arc` clone) against [`Members::sync`] (atomic loads).
//! Ignored: it asserts nothing a loaded machine could keep; run it with
//! `cargo test -p raftkit --lib -- members_tests --ignored --nocapture`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::super::super::resolve::Names;
use super::Members;

/// Nanoseconds per call of `f`, made `calls` times on each of `threads`
/// threads at once.
fn per_call(threads: usize, calls: u32, f: impl Fn() + Sync) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..calls {
                    f();
                }
            });
        }
    });
    let took: Duration = start.elapsed();
    took.as_nanos() as f64 / f64::from(calls)
}

#[test]
#[ignore = "a measure, not a check: run by hand"]
fn the_leader_path_costs_atomic_loads_only() {
    let given: Vec<(String, SocketAddr)> = (0..3u16)
        .map(|i| {
            let addr = SocketAddr::from(([127, 0, 0, 1], 7600 + i));
            (addr.to_string(), addr)
        })
        .collect();
    let members = Members::new(given, Vec::new());
    let names = Names::default();
    const CALLS: u32 = 2_000_000;
    for threads in [1, 2] {
        let current = per_call(threads, CALLS, || {
            std::hint::black_box(members.current(&names, |_| {}));
        });
        let sync = per_call(threads, CALLS, || members.sync(&names, |_| {}));
        println!("{threads} thread(s): current {current:.1} ns/call, sync {sync:.1} ns/call");
    }
}
