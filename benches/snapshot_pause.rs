//! What a snapshot of a large state costs the writers: a 3-node cluster
//! whose state machine holds 100 MB takes a snapshot on every node while
//! 16 writers keep writing.
//!
//! `cargo bench --bench snapshot_pause`. Environment:
//! - `RAFTKIT_BENCH_SECS`: measured seconds per cell (default 6; at least 3);
//! - `RAFTKIT_BENCH_RUNS`: runs (default 3); figures are medians over runs;
//! - `RAFTKIT_BENCH_DIR`: where the nodes keep their data (default: the
//!   system temporary directory);
//! - `RAFTKIT_BENCH_STATE_MB`: the state's size in MB (default 100).
//!
//! # What is measured
//!
//! Three peers in one process over the in-process transport, each with its
//! write-ahead log and snapshots on disk (fdatasync on). The state is filled
//! with 1 MiB values (100 of them by default), then 16 writer tasks call
//! the leader back to back with 16-byte puts for the measured window, and
//! every write's latency is recorded. Two cells per run:
//!
//! - `snapshot`: `snapshot_every` (150,000) and small writes before the
//!   window are set so that every node starts one snapshot of the whole
//!   state about a thousand writes into the window:
//!   each serializes 100 MB on its apply thread and saves it (write,
//!   fsync, rename, directory fsync) on its snapshot thread, then compacts
//!   its log;
//! - `copied`: as `snapshot`, with the same state in a state machine that
//!   gives a copy of itself (`#[raftkit(snapshot = "clone")]`, its values
//!   shared `Bytes`, so a clone copies the map's 100-odd entries, not the
//!   100 MB): each node's snapshot thread serializes the copy while its
//!   apply thread goes on;
//! - `baseline`: the same without snapshots.
//!
//! Reported: writes per second, p50, p99 and the longest write; the longest
//! apply pause (the longest time any node's state machine stopped applying
//! to serialize the snapshot, from `PeerStatus::longest_apply_pause`); and
//! whether every node finished its snapshot within the window.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftkit::core::Role;
use raftkit::prelude::*;
use raftkit::transport::{MemoryNetwork, Transport};

mod support;
use support::{bench_dir, percentile};

#[path = "support/benchkv.rs"]
mod benchkv;
use benchkv::*;

/// [`Kv`] with shared values and snapshots of a copy: its clone shares
/// every value, so the apply thread pauses only to copy the map's entries.
#[derive(StateMachine, Default, Clone, Serialize, Deserialize)]
#[raftkit(name = "copiedkv", snapshot = "clone")]
pub struct CopiedKv {
    map: BTreeMap<String, bytes::Bytes>,
}

#[raftkit::state_machine]
impl CopiedKv {
    #[write]
    fn put(&mut self, key: String, value: String) {
        self.map.insert(key, value.into());
    }
}

/// The write a cell sends, for either state machine.
trait Put: StateMachine + Default {
    fn put(key: String, value: String) -> Self::Write;
}

impl Put for Kv {
    fn put(key: String, value: String) -> KvWrite {
        KvWrite::Put { key, value }
    }
}

impl Put for CopiedKv {
    fn put(key: String, value: String) -> CopiedKvWrite {
        CopiedKvWrite::Put { key, value }
    }
}

const WRITERS: usize = 16;
/// Entries between snapshots: far more than a window writes, so that the
/// window sees exactly one snapshot per node.
const SNAPSHOT_EVERY: u64 = 150_000;
/// Small writes into the window before the snapshot starts.
const WRITES_BEFORE_SNAPSHOT: u64 = 1_000;

struct Measured {
    ops: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    pause: Duration,
    snapshotted: bool,
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn cell<S: Put>(state_mb: usize, secs: f64, snapshot: bool) -> Measured {
    const ADDRS: [&str; 3] = ["s1:1", "s2:1", "s3:1"];
    let dir = bench_dir();
    let net = MemoryNetwork::new(0);
    let every = if snapshot { SNAPSHOT_EVERY } else { 0 };
    let mut peers = Vec::new();
    for addr in ADDRS {
        let net = net.clone();
        peers.push(
            S::peer()
                .listen(addr)
                .data_dir(dir.path().join(addr))
                .bootstrap_members(ADDRS)
                .snapshot_every(every)
                .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)) as Arc<dyn Transport>)
                .start()
                .await
                .expect("peer starts"),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        if let Some(p) = peers.iter().find(|p| p.status().role == Role::Leader) {
            break p.clone();
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let big = "x".repeat(1 << 20);
    for i in 0..state_mb {
        leader
            .write(S::put(format!("big{i:04}"), big.clone()))
            .await
            .expect("fill");
    }
    // Bring the log to about WRITES_BEFORE_SNAPSHOT entries short of the
    // snapshot threshold (the bootstrap configuration and the leader's no-op
    // came first), with small writes that leave the state's size alone.
    let prefill = SNAPSHOT_EVERY - WRITES_BEFORE_SNAPSHOT - state_mb as u64 - 2;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut fillers = Vec::new();
    for t in 0..64 {
        let (leader, next) = (leader.clone(), next.clone());
        fillers.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < prefill {
                leader
                    .write(S::put(
                        format!("w{:02}", t % WRITERS),
                        "0123456789abcdef".into(),
                    ))
                    .await
                    .expect("prefill");
            }
        }));
    }
    for f in fillers {
        f.await.expect("filler");
    }
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for t in 0..WRITERS {
        let leader = leader.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("w{t:02}");
            let mut lat = Vec::new();
            while Instant::now() < end {
                let began = Instant::now();
                leader
                    .write(S::put(key.clone(), "0123456789abcdef".into()))
                    .await
                    .expect("write");
                lat.push(began.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("writer"));
    }
    lat.sort_unstable();
    let statuses: Vec<_> = peers.iter().map(|p| p.status()).collect();
    for p in &peers {
        let _ = p.shutdown().await;
    }
    Measured {
        ops: lat.len() as f64 / secs,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        max: lat.last().copied().unwrap_or_default(),
        pause: statuses
            .iter()
            .map(|s| s.longest_apply_pause)
            .max()
            .unwrap_or_default(),
        snapshotted: statuses.iter().all(|s| s.snapshot_index > 0),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let secs: f64 = env("RAFTKIT_BENCH_SECS", 6.0f64).max(3.0);
    let runs: usize = env("RAFTKIT_BENCH_RUNS", 3usize).max(1);
    let state_mb: usize = env("RAFTKIT_BENCH_STATE_MB", 100usize).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows: BTreeMap<&str, Vec<Measured>> = BTreeMap::new();
    for run in 1..=runs {
        for name in ["snapshot", "copied", "baseline"] {
            let m = match name {
                "snapshot" => rt.block_on(cell::<Kv>(state_mb, secs, true)),
                "copied" => rt.block_on(cell::<CopiedKv>(state_mb, secs, true)),
                _ => rt.block_on(cell::<Kv>(state_mb, secs, false)),
            };
            eprintln!(
                "run {run}/{runs} {name}: {:.0} writes/s p50 {:.2} ms p99 {:.2} ms max {:.1} ms; longest apply pause {:.1} ms; every node snapshotted: {}",
                m.ops,
                ms(m.p50),
                ms(m.p99),
                ms(m.max),
                ms(m.pause),
                m.snapshotted
            );
            rows.entry(name).or_default().push(m);
        }
    }
    println!();
    println!(
        "snapshot of a {state_mb} MB state on all 3 nodes while {WRITERS} writers write (in-process transport, WAL with fdatasync); {secs} s windows; median of {runs} run(s)"
    );
    println!();
    println!(
        "| cell | writes/s | p50 ms | p99 ms | longest write ms | longest apply pause ms | snapshot done on every node |"
    );
    println!("|---|--:|--:|--:|--:|--:|---|");
    for name in ["snapshot", "copied", "baseline"] {
        let Some(ms_) = rows.get(name) else { continue };
        let m = |f: fn(&Measured) -> f64| median(ms_.iter().map(f).collect());
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {} |",
            m(|x| x.ops),
            m(|x| ms(x.p50)),
            m(|x| ms(x.p99)),
            m(|x| ms(x.max)),
            m(|x| ms(x.pause)),
            if name == "baseline" {
                "-".to_string()
            } else {
                format!(
                    "{} of {runs} runs",
                    ms_.iter().filter(|x| x.snapshotted).count()
                )
            }
        );
    }
}
