//! Many groups per node: what an idle group costs, and what many groups
//! add to durable write throughput, three multi-group nodes
//! ([`raftkit::multi::MultiNode`]) in this process over QUIC on loopback,
//! each with its journal on disk.
//!
//! `cargo bench --bench multi`. Environment:
//! - `RAFTKIT_BENCH_GROUPS`: groups per node for the idle figure (default
//!   1000);
//! - `RAFTKIT_BENCH_SECS`: seconds per measured window (default 5);
//! - `RAFTKIT_BENCH_RUNS`: windows per figure (default 3); figures are
//!   medians;
//! - `RAFTKIT_BENCH_QUIESCE`: `0` to measure idle groups without
//!   quiescence (every group ticks and heartbeats; default `1`);
//! - `RAFTKIT_BENCH_ONLY`: `idle`, `throughput` or `move` (default all);
//! - `RAFTKIT_BENCH_MOVE_MB`: the size of the moved group (default 100);
//! - `RAFTKIT_BENCH_WORKERS`: the nodes' group worker threads
//!   ([`MultiNodeBuilder::worker_threads`](raftkit::multi::MultiNodeBuilder::worker_threads);
//!   default: the builder's; `0` runs them on the bench's runtime);
//! - `RAFTKIT_BENCH_CELL`: `one` or `many` to measure only the 1-group or
//!   only the 64-group throughput cell (for profiling one; default both);
//! - `RAFTKIT_BENCH_DIR`: where the nodes keep their data (default: the
//!   system temporary directory). Benchmark the disk you will run on;
//! - `RUST_LOG`: a `tracing` filter (e.g. `raftkit=info`) to log to stderr
//!   (default: nothing is logged).
//!
//! # What is measured
//!
//! 1. `idle`: three nodes each hosting N groups of three replicas (one per
//!    node) and, as a sharded deployment does, the placement group 0
//!    ([`MultiNode::form_shards`] over the same groups), every data group
//!    written once, then left alone until every replica (group 0's
//!    included) is quiesced. CPU of the whole process (user + system, from
//!    `/proc/self/stat`) over each window, divided by three: the CPU per
//!    node, in % of one core.
//! 2. `throughput`: 256 client tasks writing durable `put`s (16-byte
//!    values) for a window, first all to one group, then spread by key
//!    hash over 64 groups, alternating, in the same run on the same nodes.
//!    Leaders are spread evenly over the three nodes by leadership
//!    transfer first. Clients call each group's leader [`Peer`] in this
//!    process (no client network hop); replication between the nodes is
//!    over QUIC and every write is fsynced by each node's journal. Besides
//!    ops/s, each cell prints the process's CPU (in cores, and in
//!    microseconds per put: on a machine whose cores are all busy, the
//!    ratio of the cells is the inverse ratio of their CPU per put) and
//!    the journal fsyncs per put (all three nodes).
//! 3. `move`: four nodes, one group on the first three, filled with
//!    `RAFTKIT_BENCH_MOVE_MB` MB of 32 KiB values (snapshots every 1,000
//!    entries, so the new replica receives a snapshot and then the log);
//!    then one replica (a follower's) is moved to the fourth node with
//!    [`MultiNode::move_replica`] (add learner, catch up, joint change,
//!    leave joint). Prints the move's time, its steps, and the group's
//!    size divided by the time.
//!
//! The machine is shared with other work: figures vary between runs;
//! compare the ratios of one run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raftkit::core::Role;
use raftkit::multi::{GroupId, MultiNode};
use raftkit::prelude::*;
use raftkit::tls::ClusterCa;

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "bkv")]
pub struct Kv {
    map: BTreeMap<String, Vec<u8>>,
}

#[raftkit::state_machine]
impl Kv {
    #[write]
    fn put(&mut self, key: String, value: Vec<u8>) {
        self.map.insert(key, value);
    }

    #[read]
    fn get(&self, key: String) -> Option<Vec<u8>> {
        self.map.get(&key).cloned()
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// User + system CPU of this process so far, in seconds.
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; the first field
    // after the name is field 3.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    ticks as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// `n` UDP sockets bound to distinct free loopback ports, with their
/// addresses: each node serves on its socket
/// (`MultiNodeBuilder::listen_socket`), so no port is released for another
/// process to take before its node listens.
fn free_sockets(n: usize) -> (Vec<std::net::UdpSocket>, Vec<String>) {
    let sockets: Vec<_> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    let addrs = sockets
        .iter()
        .map(|s| s.local_addr().expect("address").to_string())
        .collect();
    (sockets, addrs)
}

async fn start_nodes(base: &std::path::Path, quiesce: bool) -> (Vec<MultiNode<Kv>>, Vec<String>) {
    let (sockets, addrs) = free_sockets(3);
    let ca = ClusterCa::generate("multi-bench").expect("a CA");
    let mut nodes = Vec::new();
    for (i, (addr, socket)) in addrs.iter().zip(sockets).enumerate() {
        let identity = ca
            .issue_node(&format!("bkv@{addr}"), &[])
            .expect("an identity");
        let mut builder = MultiNode::<Kv>::builder()
            .listen_socket(socket)
            .data_dir(base.join(format!("node{i}")))
            .identity(identity)
            .quiesce(quiesce);
        if let Ok(Ok(workers)) = std::env::var("RAFTKIT_BENCH_WORKERS").map(|w| w.parse()) {
            builder = builder.worker_threads(workers);
        }
        let node = builder.start().await.expect("node starts");
        nodes.push(node);
    }
    (nodes, addrs)
}

/// Creates `groups` on every node, a few at a time.
async fn create_groups(nodes: &[MultiNode<Kv>], addrs: &[String], groups: &[GroupId]) {
    for chunk in groups.chunks(64) {
        let mut tasks = Vec::new();
        for node in nodes {
            for g in chunk {
                let (node, g, addrs) = (node.clone(), *g, addrs.to_vec());
                tasks.push(tokio::spawn(async move {
                    node.create_group(g, &addrs).await.expect("group starts");
                }));
            }
        }
        for t in tasks {
            t.await.expect("task");
        }
    }
}

fn leader_of(nodes: &[MultiNode<Kv>], g: GroupId) -> Option<Peer<Kv>> {
    nodes
        .iter()
        .filter_map(|n| n.group(g))
        .find(|p| p.status().role == Role::Leader)
}

async fn wait_leaders(nodes: &[MultiNode<Kv>], groups: &[GroupId]) {
    let deadline = Instant::now() + Duration::from_secs(300);
    for g in groups {
        while leader_of(nodes, *g).is_none() {
            assert!(Instant::now() < deadline, "group {g} elects no leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn put(nodes: &[MultiNode<Kv>], g: GroupId, key: String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(l) = leader_of(nodes, g) {
            match l
                .write(KvWrite::Put {
                    key: key.clone(),
                    value: vec![7; 16],
                })
                .await
            {
                Ok(_) => return,
                Err(e) if e.is_retryable() => {}
                Err(e) => panic!("group {g}: {e}"),
            }
        }
        assert!(Instant::now() < deadline, "group {g}: no write in a minute");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn idle(base: &std::path::Path, groups: u64, secs: u64, runs: u64, quiesce: bool) {
    let (nodes, addrs) = start_nodes(base, quiesce).await;
    let ids: Vec<GroupId> = (1..=groups).collect();
    let started = Instant::now();
    create_groups(&nodes, &addrs, &ids).await;
    // Group 0, the placement of a sharded deployment over these groups
    // (the data groups exist already: only group 0 starts).
    for node in &nodes {
        node.form_shards(groups, &addrs)
            .await
            .expect("the placement group starts");
    }
    wait_leaders(&nodes, &ids).await;
    println!(
        "idle: {groups} groups (and group 0) x 3 nodes started and elected in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for chunk in ids.chunks(64) {
        let mut tasks = Vec::new();
        for g in chunk {
            let (ns, g) = (nodes.clone(), *g);
            tasks.push(tokio::spawn(async move { put(&ns, g, "k".into()).await }));
        }
        for t in tasks {
            t.await.expect("task");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let total = ((groups + 1) * 3) as usize;
    loop {
        let quiesced: usize = nodes.iter().map(|n| n.quiesced().len()).sum();
        if !quiesce || quiesced == total || Instant::now() > deadline {
            println!("idle: {quiesced} of {total} replicas quiesced");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut per_node = Vec::new();
    for _ in 0..runs {
        let (cpu0, t0) = (process_cpu(), Instant::now());
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let (cpu1, t1) = (process_cpu(), Instant::now());
        let pct = (cpu1 - cpu0) / (t1 - t0).as_secs_f64() * 100.0 / 3.0;
        per_node.push(pct);
    }
    println!(
        "idle: {groups} groups per node, quiescence {}, CPU per node (median of {runs} x {secs} s): {:.2} % of a core  (windows: {})",
        if quiesce { "on" } else { "off" },
        median(per_node.clone()),
        per_node
            .iter()
            .map(|p| format!("{p:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for n in &nodes {
        n.shutdown().await.expect("shutdown");
    }
}

/// Transfers each group's leadership to node `g % 3`.
async fn spread_leaders(nodes: &[MultiNode<Kv>], groups: &[GroupId]) {
    for (i, g) in groups.iter().enumerate() {
        let target = nodes[i % nodes.len()].id();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let Some(l) = leader_of(nodes, *g) else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            if l.id() == target || Instant::now() > deadline {
                break;
            }
            let _ = l.transfer_leadership(target).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What one measured window saw.
struct Window {
    /// Durable puts per second.
    ops: f64,
    /// The process's CPU over the window, in cores.
    cpu: f64,
    /// Journal fsyncs (all three nodes) per put.
    fsyncs_per_put: f64,
}

fn syncs(nodes: &[MultiNode<Kv>]) -> u64 {
    nodes.iter().map(|n| n.journal_stats().syncs).sum()
}

/// Durable puts by 256 clients over `groups` for `secs`.
async fn write_window(nodes: &[MultiNode<Kv>], groups: &[GroupId], secs: u64) -> Window {
    let leaders: Arc<Vec<Peer<Kv>>> = Arc::new(
        groups
            .iter()
            .map(|g| leader_of(nodes, *g).expect("a leader"))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..256u64 {
        let (leaders, stop, done) = (leaders.clone(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("c{c}-{i}");
                let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
                });
                let leader = &leaders[(h % leaders.len() as u64) as usize];
                if leader
                    .write(KvWrite::Put {
                        key,
                        value: vec![7; 16],
                    })
                    .await
                    .is_ok()
                {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (n0, t0, cpu0, s0) = (
        done.load(Ordering::Relaxed),
        Instant::now(),
        process_cpu(),
        syncs(nodes),
    );
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (n1, t1, cpu1, s1) = (
        done.load(Ordering::Relaxed),
        Instant::now(),
        process_cpu(),
        syncs(nodes),
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = (t1 - t0).as_secs_f64();
    Window {
        ops: (n1 - n0) as f64 / elapsed,
        cpu: (cpu1 - cpu0) / elapsed,
        fsyncs_per_put: (s1 - s0) as f64 / (n1 - n0).max(1) as f64,
    }
}

async fn throughput(base: &std::path::Path, secs: u64, runs: u64) {
    let (nodes, addrs) = start_nodes(base, true).await;
    let one: Vec<GroupId> = vec![1000];
    let many: Vec<GroupId> = (1..=64).collect();
    let all: Vec<GroupId> = one.iter().chain(&many).copied().collect();
    create_groups(&nodes, &addrs, &all).await;
    wait_leaders(&nodes, &all).await;
    spread_leaders(&nodes, &many).await;
    let per_node: Vec<usize> = nodes
        .iter()
        .map(|n| {
            many.iter()
                .filter(|g| {
                    n.group(**g)
                        .is_some_and(|p| p.status().role == Role::Leader)
                })
                .count()
        })
        .collect();
    println!("throughput: leaders of the 64 groups per node: {per_node:?}");
    let syncs0: u64 = nodes.iter().map(|n| n.journal_stats().syncs).sum();
    let writes0: u64 = nodes.iter().map(|n| n.journal_stats().writes).sum();
    let cell = std::env::var("RAFTKIT_BENCH_CELL").unwrap_or_default();
    let (mut one_w, mut many_w) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        if cell != "many" {
            one_w.push(write_window(&nodes, &one, secs).await);
        }
        if cell != "one" {
            many_w.push(write_window(&nodes, &many, secs).await);
        }
    }
    let field = |ws: &[Window], f: fn(&Window) -> f64| ws.iter().map(f).collect::<Vec<f64>>();
    let (ones, manys) = (field(&one_w, |w| w.ops), field(&many_w, |w| w.ops));
    let syncs: u64 = nodes.iter().map(|n| n.journal_stats().syncs).sum::<u64>() - syncs0;
    let writes: u64 = nodes.iter().map(|n| n.journal_stats().writes).sum::<u64>() - writes0;
    let spanning = nodes
        .iter()
        .map(|n| n.journal_stats().max_groups_per_sync)
        .max()
        .unwrap_or(0);
    let (o, m) = (median(ones.clone()), median(manys.clone()));
    println!(
        "throughput: 256 clients, durable puts, 1 group:   {o:>9.0} ops/s (median of {runs}: {ones:.0?})"
    );
    println!(
        "throughput: 256 clients, durable puts, 64 groups: {m:>9.0} ops/s (median of {runs}: {manys:.0?})"
    );
    println!("throughput: 64 groups / 1 group = {:.2}x", m / o);
    let (oc, mc) = (
        median(field(&one_w, |w| w.cpu)),
        median(field(&many_w, |w| w.cpu)),
    );
    println!(
        "throughput: process CPU (median, in cores; {} cores online): 1 group {oc:.2} ({:.0} us per put), 64 groups {mc:.2} ({:.0} us per put)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        oc * 1e6 / o,
        mc * 1e6 / m
    );
    println!(
        "throughput: journal fsyncs per put (3 nodes, median): 1 group {:.3}, 64 groups {:.3}",
        median(field(&one_w, |w| w.fsyncs_per_put)),
        median(field(&many_w, |w| w.fsyncs_per_put)),
    );
    println!(
        "throughput: journal: {writes} group writes in {syncs} fsyncs over 3 nodes ({:.1} writes per fsync), at most {spanning} groups in one fsync",
        writes as f64 / syncs.max(1) as f64
    );
    for n in &nodes {
        n.shutdown().await.expect("shutdown");
    }
}

/// The `move` cell: the time to move one replica of a group of `mb` MB.
async fn move_time(base: &std::path::Path, mb: u64) {
    const VALUE: usize = 32 << 10;
    let (sockets, addrs) = free_sockets(4);
    let ca = ClusterCa::generate("multi-bench-move").expect("a CA");
    let mut nodes = Vec::new();
    for (i, (addr, socket)) in addrs.iter().zip(sockets).enumerate() {
        let identity = ca
            .issue_node(&format!("bkv@{addr}"), &[])
            .expect("an identity");
        let node = MultiNode::<Kv>::builder()
            .listen_socket(socket)
            .data_dir(base.join(format!("node{i}")))
            .identity(identity)
            .snapshot_every(1000)
            .start()
            .await
            .expect("node starts");
        nodes.push(node);
    }
    let g: GroupId = 1;
    for n in &nodes[..3] {
        n.create_group(g, &addrs[..3]).await.expect("group starts");
    }
    wait_leaders(&nodes, &[g]).await;
    let writes = (mb << 20) / VALUE as u64;
    let filled = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (nodes, next) = (nodes.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= writes {
                        return;
                    }
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        let Some(l) = leader_of(&nodes, g) else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        let put = KvWrite::Put {
                            key: format!("k{i:08}"),
                            value: vec![(i % 251) as u8; VALUE],
                        };
                        match l.write(put).await {
                            Ok(_) => break,
                            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            Err(e) => panic!("fill: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    let fill = filled.elapsed().as_secs_f64();
    let bytes = writes * VALUE as u64;
    println!(
        "move: filled one group with {writes} values of {} KiB ({:.0} MB) in {fill:.1} s",
        VALUE >> 10,
        bytes as f64 / 1e6
    );
    let leader_node = nodes[..3]
        .iter()
        .find(|n| n.group(g).is_some_and(|p| p.status().role == Role::Leader))
        .expect("a leader")
        .clone();
    let from = nodes[..3]
        .iter()
        .find(|n| n.id() != leader_node.id())
        .expect("a follower")
        .id();
    let report = leader_node
        .move_replica(g, from, &addrs[3])
        .await
        .expect("the move");
    let secs = report.took.as_secs_f64();
    println!(
        "move: one replica of a {:.0} MB group moved in {secs:.2} s ({:.1} MB/s); steps: {:?}",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / secs,
        report
            .steps
            .iter()
            .map(|(s, d)| format!("{s:?} {:.2} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
    );
    println!(
        "move: one run on a shared machine (other work competes for its cores and disk): a rough figure, not a median"
    );
    for n in &nodes {
        n.shutdown().await.expect("shutdown");
    }
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let groups = env("RAFTKIT_BENCH_GROUPS", 1000);
    let secs = env("RAFTKIT_BENCH_SECS", 5);
    let runs = env("RAFTKIT_BENCH_RUNS", 3);
    let base = std::env::var("RAFTKIT_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = tempfile::Builder::new()
        .prefix("raftkit-multi-bench-")
        .tempdir_in(base)
        .expect("a temporary directory");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let only = std::env::var("RAFTKIT_BENCH_ONLY").unwrap_or_default();
    rt.block_on(async {
        if only.is_empty() || only.contains("throughput") {
            throughput(&dir.path().join("throughput"), secs, runs).await;
        }
        if only.is_empty() || only.contains("idle") {
            let quiesce = env("RAFTKIT_BENCH_QUIESCE", 1) != 0;
            idle(&dir.path().join("idle"), groups, secs, runs, quiesce).await;
        }
        if only.is_empty() || only.contains("move") {
            let mb = env("RAFTKIT_BENCH_MOVE_MB", 100);
            move_time(&dir.path().join("move"), mb).await;
        }
    });
}
