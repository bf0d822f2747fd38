//! Watch benchmark: what 16 watchers receive while 64 clients write, and
//! what watching costs the writers, in the same run.
//!
//! `cargo bench --bench watch`. Environment:
//! - `RAFTKIT_BENCH_SECS`: measured seconds per cell (default 3), after a
//!   warm-up of a fifth of that (at least 0.5 s);
//! - `RAFTKIT_BENCH_RUNS`: runs (default 3), each on a fresh cluster;
//!   figures are medians over the runs;
//! - `RAFTKIT_BENCH_DIR`: where the peers keep their data (default: the
//!   system temporary directory).
//!
//! # What is measured
//!
//! Three peers over QUIC on loopback with their write-ahead logs on disk
//! (fdatasync on every group commit), as in `benches/cluster.rs`: 64 tasks
//! run sequential `put(key, 16-byte value)` calls through 4 network
//! clients (16 tasks each). Each run measures two cells on the same
//! cluster, in alternating order from run to run:
//!
//! - `no watchers`: the writers alone;
//! - `16 watchers`: the writers while 16 watchers, each with its own
//!   network client (spread round robin over the three members), watch
//!   from "now" and take every event as it comes.
//!
//! Reported: writes/s of each cell and their ratio (the cost of watching),
//! events/s delivered to all watchers together, and how far the slowest
//! watcher trailed at the end of the window (events written in the window
//! minus events it received in it; a watcher that keeps up trails by a
//! batch at most).
//!
//! Peers run on one tokio runtime of 2 workers (`cluster`), writers and
//! watchers on another (`loadgen`). The machine this was written for has
//! 2 cores shared with other work: compare figures of one run only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raftkit::client::{Client, ClientOptions};
use raftkit::core::Role;
use raftkit::prelude::*;
use raftkit::tls::{Identity, dev_cluster};

mod support;
use support::{bench_dir, free_sockets};

#[path = "support/benchkv.rs"]
mod benchkv;
use benchkv::*;

const VALUE: &str = "0123456789abcdef"; // 16 bytes
const WRITERS: usize = 64;
const WRITER_CONNS: usize = 4;
const WATCHERS: usize = 16;

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

struct Cluster {
    _dir: tempfile::TempDir,
    addrs: Vec<String>,
    peers: Vec<Peer<Kv>>,
    client_identity: Identity,
}

async fn start() -> Cluster {
    let (sockets, addrs) = free_sockets(3);
    let names: Vec<String> = addrs.iter().map(|a| format!("benchkv@{a}")).collect();
    let (ca, ids) = dev_cluster(&names).expect("dev CA");
    let client_identity = ca.issue_client("client").expect("client identity");
    let dir = bench_dir();
    let mut peers = Vec::new();
    for ((addr, id), socket) in addrs.iter().zip(ids).zip(sockets) {
        let peer = Kv::peer()
            .listen_socket(socket)
            .bootstrap_members(addrs.clone())
            .identity(id)
            .data_dir(dir.path().join(addr))
            .start()
            .await
            .expect("peer starts");
        peers.push(peer);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader = peers
            .iter()
            .find(|p| p.status().role == Role::Leader)
            .map(|p| p.status());
        if let Some(s) = leader
            && s.applied >= s.commit
            && s.commit > 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "no leader within 20 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Cluster {
        _dir: dir,
        addrs,
        peers,
        client_identity,
    }
}

impl Cluster {
    async fn client(&self) -> KvClient {
        KvClient::new(
            Client::connect_with_for::<Kv, _, _>(
                &self.addrs,
                self.client_identity.clone(),
                ClientOptions::default(),
            )
            .await
            .expect("client connects"),
        )
    }
}

/// One measured window: writes acknowledged in it, and events each
/// watcher received in it.
struct Window {
    writes: u64,
    events: Vec<u64>,
}

/// Runs the writers for `warm + secs` and counts what happens in the last
/// `secs`; `watched` are the watchers' event counters.
async fn measure(writers: &[KvClient], watched: &[Arc<AtomicU64>], warm: f64, secs: f64) -> Window {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..WRITERS {
        let kv = writers[t % writers.len()].clone();
        let (stop, acked) = (stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let key = format!("k{t:04}");
            while !stop.load(Ordering::Relaxed) {
                if kv.put(key.clone(), VALUE.into()).await.is_ok() {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(warm)).await;
    let w0 = acked.load(Ordering::Relaxed);
    let e0: Vec<u64> = watched.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let w1 = acked.load(Ordering::Relaxed);
    let e1: Vec<u64> = watched.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Window {
        writes: w1 - w0,
        events: e1.iter().zip(&e0).map(|(b, a)| b - a).collect(),
    }
}

#[derive(Default)]
struct Figures {
    plain: Vec<f64>,
    watched: Vec<f64>,
    ratio: Vec<f64>,
    events: Vec<f64>,
    trail: Vec<f64>,
    errors: Vec<f64>,
}

fn main() {
    let secs = env_f64("RAFTKIT_BENCH_SECS", 3.0);
    let runs = env_f64("RAFTKIT_BENCH_RUNS", 3.0).max(1.0) as usize;
    let warm = (secs / 5.0).max(0.5);
    let cluster_rt = runtime("cluster");
    let load_rt = runtime("loadgen");
    let mut f = Figures::default();
    for run in 0..runs {
        eprintln!("run {}/{runs}", run + 1);
        let cluster = cluster_rt.block_on(start());
        let (plain, watched, events, errors) = load_rt.block_on(async {
            let mut writers = Vec::new();
            for _ in 0..WRITER_CONNS {
                writers.push(cluster.client().await);
            }
            let counters: Vec<Arc<AtomicU64>> =
                (0..WATCHERS).map(|_| Arc::new(AtomicU64::new(0))).collect();
            let errors = Arc::new(AtomicU64::new(0));
            let watch_all = async {
                let mut handles = Vec::new();
                for c in &counters {
                    let kv = cluster.client().await;
                    let mut w = kv.watch_from_now().await.expect("watch opens");
                    let (c, errors) = (c.clone(), errors.clone());
                    handles.push(tokio::spawn(async move {
                        let _kv = kv;
                        while let Some(e) = w.next().await {
                            match e {
                                Ok(_) => {
                                    c.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(_) => {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }));
                }
                handles
            };
            let (plain, watched) = if run % 2 == 0 {
                let plain = measure(&writers, &[], warm, secs).await;
                let handles = watch_all.await;
                let watched = measure(&writers, &counters, warm, secs).await;
                handles.iter().for_each(|h| h.abort());
                (plain, watched)
            } else {
                let handles = watch_all.await;
                let watched = measure(&writers, &counters, warm, secs).await;
                handles.iter().for_each(|h| h.abort());
                let plain = measure(&writers, &[], warm, secs).await;
                (plain, watched)
            };
            let events: u64 = watched.events.iter().sum();
            (plain, watched, events, errors.load(Ordering::Relaxed))
        });
        let trail = watched
            .events
            .iter()
            .map(|&e| watched.writes.saturating_sub(e))
            .max()
            .unwrap_or(0);
        let (p, w) = (plain.writes as f64 / secs, watched.writes as f64 / secs);
        eprintln!(
            "  writes/s: {p:.0} alone, {w:.0} with {WATCHERS} watchers; events/s delivered: {:.0}; slowest watcher trailed by {trail}; watch errors: {errors}",
            events as f64 / secs
        );
        f.plain.push(p);
        f.watched.push(w);
        f.ratio.push(w / p);
        f.events.push(events as f64 / secs);
        f.trail.push(trail as f64);
        f.errors.push(errors as f64);
        cluster_rt.block_on(async {
            for p in &cluster.peers {
                let _ = p.shutdown().await;
            }
        });
    }
    println!(
        "watch: 3 durable peers over QUIC, {WRITERS} writers (16-byte puts), {WATCHERS} watchers; medians of {runs} runs of {secs} s"
    );
    println!("| cell | writes/s | events/s delivered (all watchers) |");
    println!("|---|---|---|");
    println!("| no watchers | {:.0} | - |", median(f.plain));
    println!(
        "| {WATCHERS} watchers | {:.0} | {:.0} |",
        median(f.watched),
        median(f.events.clone())
    );
    println!(
        "write throughput with / without watchers: {:.2} (median of per-run ratios); events/s per watcher: {:.0}; slowest watcher's trail at the window's end: {:.0} events; watch errors: {:.0}",
        median(f.ratio),
        median(f.events) / WATCHERS as f64,
        median(f.trail),
        median(f.errors),
    );
}

fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}
