//! A fixed amount of work for profilers: the in-process, in-memory cluster
//! cell of `cluster` (three in-memory peers over the in-process transport,
//! proposers calling the leader's [`Peer`] directly), but running a fixed
//! number of writes instead of a fixed time, so that instruction counts
//! (`valgrind --tool=callgrind`) are comparable between builds.
//!
//! With `RAFTKIT_PERWRITE_MODE=quic`, the `durable` cell instead: three
//! peers over QUIC on loopback, each with its write-ahead log (fdatasync on
//! every group commit), and the proposers are network clients (one
//! [`Client`] per 16 tasks, at most 8, on a runtime of their own).
//!
//! Environment:
//! - `RAFTKIT_PERWRITE_WRITES`: committed writes in total (default 200,000);
//! - `RAFTKIT_PERWRITE_PROPOSERS`: concurrent proposer tasks (default 64);
//! - `RAFTKIT_PERWRITE_MODE`: `inproc` (default) or `quic`;
//! - `RAFTKIT_BENCH_DIR`: where the `quic` peers keep their logs.
//!
//! Prints the writes, the wall time, ops/s, and the CPU time per write: of
//! the process (all three peers and the proposers) and of the cluster's
//! threads only (the `quic` load generator excluded), divided by three for
//! "per node"; then the context switches per write of each kind of thread
//! (voluntary: it waited, so something had to wake it; involuntary: it was
//! preempted). Instructions per write: run it under callgrind at two write
//! counts and divide the difference of the totals by the difference of the
//! writes (which cancels start-up and shutdown):
//!
//! ```text
//! RAFTKIT_PERWRITE_WRITES=20000  valgrind --tool=callgrind target/release/deps/perwrite-*
//! RAFTKIT_PERWRITE_WRITES=200000 valgrind --tool=callgrind target/release/deps/perwrite-*
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raftkit::client::{Client, ClientOptions};
use raftkit::core::Role;
use raftkit::prelude::*;
use raftkit::tls::dev_cluster;
use raftkit::transport::{MemoryNetwork, Transport};

mod support;
use support::{bench_dir, free_sockets};

#[path = "support/benchkv.rs"]
mod benchkv;
use benchkv::*;

const VALUE: &str = "0123456789abcdef"; // 16 bytes

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// utime + stime in seconds from a `stat` file of `/proc`, with the
/// thread's (or process's) name.
fn stat_cpu(path: &std::path::Path) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let t = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some((
        stat[open + 1..close].to_string(),
        (t(11) + t(12)) as f64 / 100.0,
    ))
}

/// (process CPU seconds, CPU seconds of the cluster's threads: runtime
/// workers named `cluster*` and the peers' own threads `raftkit-*`).
/// Threads that exited are not counted in the second figure.
fn cpu_secs() -> (f64, f64) {
    let process = stat_cpu(std::path::Path::new("/proc/self/stat")).map_or(f64::NAN, |x| x.1);
    let mut cluster = 0.0;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            if let Some((name, secs)) = stat_cpu(&e.path().join("stat"))
                && (name.starts_with("cluster") || name.starts_with("raftkit"))
            {
                cluster += secs;
            }
        }
    }
    (process, cluster)
}

/// Context switches so far of the threads alive now, by kind (the thread's
/// name up to its first digit or the end: `cluster`, `loadgen`,
/// `raftkit-storage`, `raftkit-apply`, ...): (voluntary, involuntary).
/// A voluntary switch is a wait: a parked worker, a tokio worker with
/// nothing to do, a storage thread in `fdatasync`; so a thread's wake-ups.
fn switches() -> std::collections::BTreeMap<String, (u64, u64)> {
    let mut kinds = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return kinds;
    };
    for e in dir.flatten() {
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let name = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .map(|n| {
                n.trim()
                    .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
            })
            .unwrap_or("?")
            .to_string();
        let kind = kinds.entry(name).or_insert((0, 0));
        kind.0 += field("voluntary_ctxt_switches:");
        kind.1 += field("nonvoluntary_ctxt_switches:");
    }
    kinds
}

/// Three durable peers over QUIC on loopback, and `conns` network clients.
async fn start_quic(
    conns: usize,
    load: &tokio::runtime::Handle,
) -> (tempfile::TempDir, Vec<Peer<Kv>>, Vec<KvClient<Client>>) {
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
    wait_leader(&peers).await;
    let mut clients = Vec::new();
    for _ in 0..conns {
        let (addrs, identity) = (addrs.clone(), client_identity.clone());
        let client = load
            .spawn(async move {
                Client::connect_with(
                    &addrs,
                    identity,
                    Kv::SCHEMA_FINGERPRINT,
                    ClientOptions::default(),
                )
                .await
            })
            .await
            .expect("connect task")
            .expect("client connects");
        clients.push(KvClient::new(client));
    }
    (dir, peers, clients)
}

async fn start_inproc() -> Vec<Peer<Kv>> {
    const ADDRS: [&str; 3] = ["n1:1", "n2:1", "n3:1"];
    let net = MemoryNetwork::new(0);
    let mut peers = Vec::new();
    for addr in ADDRS {
        let net = net.clone();
        let peer = Kv::peer()
            .listen(addr)
            .in_memory()
            .bootstrap_members(ADDRS)
            .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)) as Arc<dyn Transport>)
            .start()
            .await
            .expect("peer starts");
        peers.push(peer);
    }
    peers
}

async fn wait_leader(peers: &[Peer<Kv>]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leaders: Vec<usize> = (0..peers.len())
            .filter(|&i| peers[i].status().role == Role::Leader)
            .collect();
        if let [one] = leaders.as_slice() {
            let s = peers[*one].status();
            if s.applied >= s.commit && s.commit > 0 {
                return *one;
            }
        }
        assert!(Instant::now() < deadline, "no leader within 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that is not ours means
    // another bench target was asked for.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && a != "perwrite")
    {
        return;
    }
    let writes = env_usize("RAFTKIT_PERWRITE_WRITES", 200_000) as u64;
    let proposers = env_usize("RAFTKIT_PERWRITE_PROPOSERS", 64).max(1);
    let quic = std::env::var("RAFTKIT_PERWRITE_MODE").as_deref() == Ok("quic");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cluster")
        .enable_all()
        .build()
        .expect("runtime");
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("loadgen")
        .enable_all()
        .build()
        .expect("runtime");
    let (_dir, peers, targets) = if quic {
        let conns = proposers.div_ceil(16).min(8);
        let (dir, peers, clients) = rt.block_on(start_quic(conns, load.handle()));
        let targets: Vec<Target> = clients.into_iter().map(Target::Remote).collect();
        (Some(dir), peers, targets)
    } else {
        let peers = rt.block_on(start_inproc());
        let leader = rt.block_on(wait_leader(&peers));
        (
            None,
            peers.clone(),
            vec![Target::Local(KvClient::new(peers[leader].clone()))],
        )
    };
    let driver = if quic {
        load.handle().clone()
    } else {
        rt.handle().clone()
    };
    let issued = Arc::new(AtomicU64::new(0));
    let switches0 = switches();
    let (cpu0, cluster0) = cpu_secs();
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(proposers);
    for p in 0..proposers {
        let target = targets[p % targets.len()].clone();
        let issued = issued.clone();
        tasks.push(driver.spawn(async move {
            let key = format!("k{p:04}");
            let mut done = 0u64;
            let mut errors = 0u64;
            while issued.fetch_add(1, Ordering::Relaxed) < writes {
                let r = match &target {
                    Target::Local(c) => c.put(key.clone(), VALUE.to_string()).await,
                    Target::Remote(c) => c.put(key.clone(), VALUE.to_string()).await,
                };
                match r {
                    Ok(()) => done += 1,
                    Err(_) => errors += 1,
                }
            }
            (done, errors)
        }));
    }
    let (done, errors) = driver.block_on(async move {
        let mut done = 0;
        let mut errors = 0;
        for t in tasks {
            let (d, e) = t.await.expect("proposer task");
            done += d;
            errors += e;
        }
        (done, errors)
    });
    let secs = t0.elapsed().as_secs_f64();
    let (cpu1, cluster1) = cpu_secs();
    let switches1 = switches();
    let per = |cpu: f64| cpu * 1e6 / done.max(1) as f64;
    println!(
        "perwrite {}: {done} writes ({errors} errors) by {proposers} proposers in {secs:.3} s: \
         {:.0} ops/s; process CPU {:.2} s = {:.2} µs/write; cluster threads {:.2} s = \
         {:.2} µs/write = {:.2} µs/write/node",
        if quic {
            "quic durable"
        } else {
            "inproc memory"
        },
        done as f64 / secs,
        cpu1 - cpu0,
        per(cpu1 - cpu0),
        cluster1 - cluster0,
        per(cluster1 - cluster0),
        per(cluster1 - cluster0) / 3.0,
    );
    // Per kind, the threads of all three peers together.
    let per_kind: Vec<String> = switches1
        .iter()
        .map(|(kind, &(v1, n1))| {
            let (v0, n0) = switches0.get(kind).copied().unwrap_or((0, 0));
            let per = |x: u64| x as f64 / done.max(1) as f64;
            format!(
                "{kind} {:.3}+{:.3}",
                per(v1.saturating_sub(v0)),
                per(n1.saturating_sub(n0))
            )
        })
        .collect();
    println!(
        "perwrite context switches per write (voluntary+involuntary, all peers): {}",
        per_kind.join(", ")
    );
    drop(targets);
    rt.block_on(async move {
        for p in &peers {
            let _ = p.shutdown().await;
        }
    });
}

#[derive(Clone)]
enum Target {
    Local(KvClient<Peer<Kv>>),
    Remote(KvClient<Client>),
}
