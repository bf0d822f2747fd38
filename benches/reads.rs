//! Read throughput by consistency and routing (issue 17): linearizable gets
//! served by the leader only vs spread over every member (follower reads,
//! thesis §6.4.1), lease reads on the leader and stale reads spread over
//! the members, on 3 and 5 in-memory peers over QUIC on loopback, at 64 and
//! 256 concurrent client tasks.
//!
//! `cargo bench --bench reads`. Environment:
//! - `RAFTKIT_BENCH_SECS`: measured seconds per cell (default 2), after a
//!   warm-up of half a second;
//! - `RAFTKIT_BENCH_RUNS`: runs (default 3); each figure is the median over
//!   the runs (each run starts fresh clusters);
//! - `RAFTKIT_BENCH_CLIENTS`: concurrencies (default `64,256`);
//! - `RAFTKIT_BENCH_NODES`: cluster sizes (default `3,5`).
//!
//! Every peer and the load generator run in this one process on one machine
//! (2 cores shared with other work when this was written): spreading reads
//! moves the state machine work off the leader but every member still
//! competes for the same cores, so the figures show the per-read costs
//! (rounds, hops) more than the scaling a cluster of separate machines gets.

use std::time::{Duration, Instant};

use raftkit::client::{Client, ClientOptions, Consistency, ReadRouting};
use raftkit::core::Role;
use raftkit::prelude::*;
use raftkit::tls::dev_cluster;

mod support;
use support::{free_sockets, percentile};

#[path = "support/benchkv.rs"]
mod benchkv;
use benchkv::*;

const TASKS_PER_CONN: usize = 16;
const MAX_CONNS: usize = 8;

#[derive(Clone, Copy)]
struct Mode {
    name: &'static str,
    routing: ReadRouting,
    consistency: Consistency,
}

const MODES: [Mode; 4] = [
    Mode {
        name: "linearizable, leader only",
        routing: ReadRouting::Leader,
        consistency: Consistency::Linearizable,
    },
    Mode {
        name: "linearizable, spread",
        routing: ReadRouting::AnyMember,
        consistency: Consistency::Linearizable,
    },
    Mode {
        name: "lease (leader)",
        routing: ReadRouting::Leader,
        consistency: Consistency::Lease,
    },
    Mode {
        name: "stale, spread",
        routing: ReadRouting::AnyMember,
        consistency: Consistency::Stale,
    },
];

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

struct Cluster {
    addrs: Vec<String>,
    peers: Vec<Peer<Kv>>,
    identity: raftkit::tls::Identity,
}

async fn start(nodes: usize) -> Cluster {
    let (sockets, addrs) = free_sockets(nodes);
    let names: Vec<String> = addrs.iter().map(|a| format!("benchkv@{a}")).collect();
    let (ca, ids) = dev_cluster(&names).expect("dev CA");
    let identity = ca.issue_client("client").expect("client identity");
    let mut peers = Vec::new();
    for (id, socket) in ids.into_iter().zip(sockets) {
        let peer = Kv::peer()
            .listen_socket(socket)
            .bootstrap_members(addrs.clone())
            .identity(id)
            .in_memory()
            .start()
            .await
            .expect("peer starts");
        peers.push(peer);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader = peers.iter().find(|p| p.status().role == Role::Leader);
        if let Some(l) = leader {
            let s = l.status();
            if s.commit > 0 && s.applied >= s.commit {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no leader within 20 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Cluster {
        addrs,
        peers,
        identity,
    }
}

/// (nodes, clients, mode index).
type CellKey = (usize, usize, usize);

/// (reads/s, p50 µs, p99 µs, errors).
type Figures = (f64, f64, f64, u64);

/// The figures of `tasks` tasks reading back to back.
async fn drive(cluster: &Cluster, mode: Mode, tasks: usize, secs: f64) -> Figures {
    let opts = ClientOptions::default()
        .with_timeout(Duration::from_secs(5))
        .with_reads(mode.routing);
    let conns = tasks.div_ceil(TASKS_PER_CONN).clamp(1, MAX_CONNS);
    let mut clients = Vec::new();
    for _ in 0..conns {
        let c = KvClient::<Client>::connect_with(
            &cluster.addrs,
            cluster.identity.clone(),
            opts.clone(),
        )
        .await
        .expect("client connects");
        clients.push(c.with(mode.consistency));
    }
    // The keys exist before the reads.
    for task in 0..tasks {
        let c = &clients[task % clients.len()];
        c.put(format!("k{task:04}"), "0123456789abcdef".into())
            .await
            .expect("put");
    }
    let t0 = Instant::now() + Duration::from_millis(500);
    let t1 = t0 + Duration::from_secs_f64(secs);
    let mut handles = Vec::new();
    for task in 0..tasks {
        let c = clients[task % clients.len()].clone();
        handles.push(tokio::spawn(async move {
            let key = format!("k{task:04}");
            let mut lat = Vec::new();
            let mut errors = 0u64;
            loop {
                let began = Instant::now();
                if began >= t1 {
                    break;
                }
                let r = c.get(key.clone()).await;
                let ended = Instant::now();
                if ended > t0 && ended <= t1 {
                    match r {
                        Ok(_) => lat.push(ended - began),
                        Err(_) => errors += 1,
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.await.expect("task");
        lat.extend(l);
        errors += e;
    }
    lat.sort_unstable();
    (
        lat.len() as f64 / secs,
        percentile(&lat, 0.5).as_secs_f64() * 1e6,
        percentile(&lat, 0.99).as_secs_f64() * 1e6,
        errors,
    )
}

fn main() {
    let secs = env_f64("RAFTKIT_BENCH_SECS", 2.0);
    let runs = env_f64("RAFTKIT_BENCH_RUNS", 3.0).max(1.0) as usize;
    let clients = env_list("RAFTKIT_BENCH_CLIENTS", &[64, 256]);
    let sizes = env_list("RAFTKIT_BENCH_NODES", &[3, 5]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // (nodes, clients, mode) -> per-run figures.
    let mut cells: Vec<(CellKey, Vec<Figures>)> = Vec::new();
    for run in 0..runs {
        for &nodes in &sizes {
            let cluster = rt.block_on(start(nodes));
            for &tasks in &clients {
                for (m, mode) in MODES.iter().enumerate() {
                    eprintln!(
                        "run {}/{runs}: {nodes} nodes, {tasks} clients, {}",
                        run + 1,
                        mode.name
                    );
                    let r = rt.block_on(drive(&cluster, *mode, tasks, secs));
                    match cells.iter_mut().find(|(k, _)| *k == (nodes, tasks, m)) {
                        Some((_, v)) => v.push(r),
                        None => cells.push(((nodes, tasks, m), vec![r])),
                    }
                }
            }
            rt.block_on(async {
                for p in &cluster.peers {
                    let _ = p.shutdown().await;
                }
            });
        }
    }
    println!(
        "reads: medians over {runs} run(s) of {secs} s per cell; in-memory peers over QUIC on loopback, one shared machine"
    );
    println!(
        "{:>5} {:>7}  {:<26} {:>10} {:>9} {:>9} {:>7}",
        "nodes", "clients", "mode", "reads/s", "p50 µs", "p99 µs", "errors"
    );
    for ((nodes, tasks, m), v) in &cells {
        println!(
            "{:>5} {:>7}  {:<26} {:>10.0} {:>9.0} {:>9.0} {:>7}",
            nodes,
            tasks,
            MODES[*m].name,
            median(v.iter().map(|r| r.0).collect()),
            median(v.iter().map(|r| r.1).collect()),
            median(v.iter().map(|r| r.2).collect()),
            v.iter().map(|r| r.3).sum::<u64>(),
        );
    }
}
