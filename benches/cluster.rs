//! End-to-end cluster benchmark: a 3-node raftkit cluster driven through the
//! generated typed client, against the floors of the same machine measured
//! in the same run.
//!
//! `cargo bench --bench cluster` prints tables; `cargo bench --bench cluster
//! -- --csv` prints CSV for plotting. Environment:
//! - `RAFTKIT_BENCH_SECS`: measured seconds per cell (default 3), after a
//!   warm-up of a fifth of that (at least 0.5 s);
//! - `RAFTKIT_BENCH_RUNS`: runs (default 3); every figure is the median over
//!   the runs, each run starting fresh clusters;
//! - `RAFTKIT_BENCH_DIR`: where the durable clusters keep their data and the
//!   raw fsync floor writes its file (default: the system temporary
//!   directory). Benchmark the disk you will run on;
//! - `RAFTKIT_BENCH_ONLY`: a comma-separated subset of `floors`, `durable`,
//!   `memory`, `inproc` (default: all);
//! - `RAFTKIT_BENCH_CLIENTS`: a comma-separated list of concurrencies
//!   (default `1,64,256`);
//! - `RAFTKIT_BENCH_OPS`: `put` or `get` to run only those cells of the
//!   QUIC sections (default both; gets read the keys the puts wrote);
//! - `RAFTKIT_PROBE=1` (with `--features latency-probe`): print the per-hop
//!   breakdown of the 1-client durable put cell (`raftkit::probe`);
//! - `RAFTKIT_BENCH_APPLY_INLINE=1`: the QUIC peers apply small batches on
//!   the node task (`PeerBuilder::apply_small_batches_inline`), as `kv
//!   serve` does (default: off, the builder's default);
//! - `RAFTKIT_BENCH_NORMAL_SCHED=1`: the QUIC peers' own threads keep the
//!   normal scheduling policy (`PeerBuilder::batch_scheduling(false)`).
//!
//! # What is measured
//!
//! 1. `durable`: three peers over QUIC on loopback (mutual TLS), each with
//!    its write-ahead log in its own directory (fdatasync on every group
//!    commit), the default 50 ms tick. N client tasks each run sequential
//!    `put(key, 16-byte value)` calls, then sequential linearizable `get`s,
//!    through `KvClient` over the network [`Client`]. Tasks share a few
//!    network clients, as an application server would: one `Client` (one
//!    QUIC connection to the leader, one session) per 16 tasks, at most 8.
//! 2. `memory`: the same with `PeerBuilder::in_memory()` peers.
//! 3. `inproc`: three in-memory peers in this process over the in-process
//!    transport ([`MemoryNetwork`]), N proposer tasks calling the leader's
//!    [`Peer`] directly through `KvClient<Peer<Kv>>` (no network, no
//!    sessions).
//! 4. Floors: 16-byte write + fdatasync on the same disk, measured just
//!    before the durable cells of each run (and, for information, right
//!    after them: other users' IO on the shared disk can make fsync ten
//!    times slower for a while); a QUIC request/response
//!    (`Status`) to the leader through the network client; a UDP ping-pong
//!    between two threads.
//!
//! The peers run on one tokio runtime of 2 worker threads (`cluster`), the
//! QUIC load generator on another (`loadgen`); `inproc` proposers run on
//! the cluster runtime. CPU is read per thread from `/proc/self/task/*/stat`
//! over each measured window and grouped by thread name: "CPU/node" is
//! (cluster workers + the three storage threads) / 3, in % of one core; the
//! load generator's share is reported separately. For `inproc` the
//! proposers run on the cluster workers and are included. "others' CPU" is
//! the rest of the machine (from `/proc/stat`) over the same window: other
//! users' load, which the figures of that cell suffered from.
//!
//! The machine this was written for has 2 cores shared with other work:
//! figures are noisy, and the load generator competes with the cluster.

use std::collections::{BTreeMap, HashMap};
use std::net::UdpSocket;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftkit::client::{Client, ClientOptions};
use raftkit::core::Role;
use raftkit::prelude::*;
use raftkit::tls::{Identity, dev_cluster};
use raftkit::transport::{MemoryNetwork, Transport};

mod support;
use support::{bench_dir, free_sockets, percentile, raw_fsync};

#[path = "support/benchkv.rs"]
mod benchkv;
use benchkv::*;

const VALUE: &str = "0123456789abcdef"; // 16 bytes
const TASKS_PER_CONN: usize = 16;
const MAX_CONNS: usize = 8;

// ------------------------------------------------------------------ options

struct Opts {
    secs: f64,
    warm: f64,
    runs: usize,
    csv: bool,
    only: Vec<String>,
    clients: Vec<usize>,
    ops: Vec<Op>,
    probe: bool,
}

impl Opts {
    fn from_env() -> Opts {
        let secs: f64 = std::env::var("RAFTKIT_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0);
        let runs = std::env::var("RAFTKIT_BENCH_RUNS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3usize)
            .max(1);
        let only = std::env::var("RAFTKIT_BENCH_ONLY")
            .map(|s| s.split(',').map(|x| x.trim().to_string()).collect())
            .unwrap_or_default();
        let clients = std::env::var("RAFTKIT_BENCH_CLIENTS")
            .ok()
            .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![1, 64, 256]);
        let ops = match std::env::var("RAFTKIT_BENCH_OPS").as_deref() {
            Ok("put") => vec![Op::Put],
            Ok("get") => vec![Op::Get],
            _ => vec![Op::Put, Op::Get],
        };
        if std::env::var_os("RAFTKIT_PROBE").is_some() && !raftkit::probe::compiled_in() {
            eprintln!("RAFTKIT_PROBE: build with `--features latency-probe` for the breakdown");
        }
        Opts {
            ops,
            secs,
            warm: (secs / 5.0).max(0.5),
            runs,
            csv: std::env::args().any(|a| a == "--csv"),
            only,
            clients,
            probe: std::env::var_os("RAFTKIT_PROBE").is_some_and(|v| v != "0"),
        }
    }

    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

// ------------------------------------------------------------- statistics

fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    xs[xs.len() / 2]
}

/// One measured cell of one run.
#[derive(Clone, Debug, Default)]
struct Cell {
    ops: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    /// % of one core per node (cluster threads / 3).
    cpu_node: f64,
    /// % of one core used by the load generator threads.
    cpu_loadgen: f64,
    /// % of one core used by the whole process.
    cpu_process: f64,
    /// % of one core used by everything else on the machine (other users).
    cpu_others: f64,
}

// ---------------------------------------------------------------- CPU use

/// utime + stime in clock ticks per thread, with the thread's name.
fn thread_times() -> HashMap<u64, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(tid) = entry.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the name: state is field 3; utime 14 and stime 15.
        let t = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        out.insert(tid, (name, t(11) + t(12)));
    }
    out
}

/// Clock ticks per second of /proc times (USER_HZ: 100 on Linux).
const CLK_TCK: f64 = 100.0;

/// Busy clock ticks of the whole machine (all CPUs), from /proc/stat.
fn machine_busy() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(line) = stat.lines().next() else {
        return 0;
    };
    // cpu user nice system idle iowait irq softirq steal ...
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    get(0) + get(1) + get(2) + get(5) + get(6) + get(7)
}

struct CpuSample {
    at: Instant,
    threads: HashMap<u64, (String, u64)>,
    machine: u64,
}

fn cpu_sample() -> CpuSample {
    CpuSample {
        at: Instant::now(),
        threads: thread_times(),
        machine: machine_busy(),
    }
}

/// (per node, load generator, process, others) in % of one core.
fn cpu_between(a: &CpuSample, b: &CpuSample) -> (f64, f64, f64, f64) {
    let secs = (b.at - a.at).as_secs_f64().max(1e-9);
    let mut groups: HashMap<&'static str, u64> = HashMap::new();
    for (tid, (name, t)) in &b.threads {
        let before = a.threads.get(tid).map(|x| x.1).unwrap_or(0);
        let group = if name.starts_with("cluster") || name.starts_with("raftkit-storage") {
            "cluster"
        } else if name.starts_with("loadgen") {
            "loadgen"
        } else {
            "other"
        };
        *groups.entry(group).or_default() += t.saturating_sub(before);
    }
    let pct = |ticks: u64| ticks as f64 / CLK_TCK / secs * 100.0;
    let total: u64 = groups.values().sum();
    let machine = b.machine.saturating_sub(a.machine);
    (
        pct(groups.get("cluster").copied().unwrap_or(0)) / 3.0,
        pct(groups.get("loadgen").copied().unwrap_or(0)),
        pct(total),
        (pct(machine) - pct(total)).max(0.0),
    )
}

// ---------------------------------------------------------------- driving

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Put,
    Get,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
        }
    }
}

#[derive(Clone)]
enum Target {
    Remote(Vec<KvClient<Client>>),
    Local(KvClient<Peer<Kv>>),
}

impl Target {
    fn for_task(&self, task: usize) -> TaskTarget {
        match self {
            Target::Remote(cs) => TaskTarget::Remote(cs[task % cs.len()].clone()),
            Target::Local(p) => TaskTarget::Local(p.clone()),
        }
    }
}

enum TaskTarget {
    Remote(KvClient<Client>),
    Local(KvClient<Peer<Kv>>),
}

impl TaskTarget {
    async fn run(&self, op: Op, key: &str) -> Result<(), Error> {
        match (self, op) {
            (TaskTarget::Remote(c), Op::Put) => c.put(key.to_string(), VALUE.to_string()).await,
            (TaskTarget::Remote(c), Op::Get) => c.get(key.to_string()).await.map(|_| ()),
            (TaskTarget::Local(c), Op::Put) => c.put(key.to_string(), VALUE.to_string()).await,
            (TaskTarget::Local(c), Op::Get) => c.get(key.to_string()).await.map(|_| ()),
        }
    }
}

/// Runs `tasks` concurrent tasks doing `op` back to back on the current
/// runtime: a warm-up, then `secs` measured.
async fn drive(target: &Target, op: Op, tasks: usize, warm: f64, secs: f64) -> Cell {
    let start = Instant::now();
    let t0 = start + Duration::from_secs_f64(warm);
    let t1 = t0 + Duration::from_secs_f64(secs);
    let mut handles = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let t = target.for_task(task);
        handles.push(tokio::spawn(async move {
            let key = format!("k{task:04}");
            let mut lat = Vec::with_capacity(1 << 14);
            let mut errors = 0u64;
            loop {
                let began = Instant::now();
                if began >= t1 {
                    break;
                }
                let r = t.run(op, &key).await;
                let ended = Instant::now();
                if ended > t0 && ended <= t1 {
                    match r {
                        Ok(()) => lat.push(ended - began),
                        Err(_) => errors += 1,
                    }
                } else if r.is_err() {
                    // Warm-up errors (e.g. a leader not yet settled): back off.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep_until(t0.into()).await;
    let a = cpu_sample();
    tokio::time::sleep_until(t1.into()).await;
    let b = cpu_sample();
    let mut lat = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.await.expect("bench task");
        lat.extend(l);
        errors += e;
    }
    lat.sort_unstable();
    let (cpu_node, cpu_loadgen, cpu_process, cpu_others) = cpu_between(&a, &b);
    Cell {
        ops: lat.len() as f64 / secs,
        p50_us: percentile(&lat, 0.5).as_secs_f64() * 1e6,
        p99_us: percentile(&lat, 0.99).as_secs_f64() * 1e6,
        errors,
        cpu_node,
        cpu_loadgen,
        cpu_process,
        cpu_others,
    }
}

// ---------------------------------------------------------------- clusters

#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    Durable,
    Memory,
}

struct QuicCluster {
    _dir: tempfile::TempDir,
    addrs: Vec<String>,
    peers: Vec<Peer<Kv>>,
    client_identity: Identity,
}

async fn wait_leader(peers: &[Peer<Kv>]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leaders: Vec<usize> = (0..peers.len())
            .filter(|&i| peers[i].status().role == Role::Leader)
            .collect();
        if let [one] = leaders.as_slice() {
            // Wait for the leader's first entry of its term to apply, so
            // that reads are served at once.
            let s = peers[*one].status();
            if s.applied >= s.commit && s.commit > 0 {
                return *one;
            }
        }
        assert!(Instant::now() < deadline, "no leader within 20 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn start_quic(store: Store) -> QuicCluster {
    let (sockets, addrs) = free_sockets(3);
    let names: Vec<String> = addrs.iter().map(|a| format!("benchkv@{a}")).collect();
    let (ca, ids) = dev_cluster(&names).expect("dev CA");
    let client_identity = ca.issue_client("client").expect("client identity");
    let dir = bench_dir();
    let apply_inline = std::env::var_os("RAFTKIT_BENCH_APPLY_INLINE").is_some_and(|v| v != "0");
    let normal_sched = std::env::var_os("RAFTKIT_BENCH_NORMAL_SCHED").is_some_and(|v| v != "0");
    let mut peers = Vec::new();
    for ((addr, id), socket) in addrs.iter().zip(ids).zip(sockets) {
        let b = Kv::peer()
            .listen_socket(socket)
            .bootstrap_members(addrs.clone())
            .identity(id)
            .apply_small_batches_inline(apply_inline)
            .batch_scheduling(!normal_sched);
        let b = match store {
            Store::Durable => b.data_dir(dir.path().join(addr)),
            Store::Memory => b.in_memory(),
        };
        peers.push(b.start().await.expect("peer starts"));
    }
    wait_leader(&peers).await;
    QuicCluster {
        _dir: dir,
        addrs,
        peers,
        client_identity,
    }
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
    wait_leader(&peers).await;
    peers
}

async fn shutdown(peers: &[Peer<Kv>]) {
    for p in peers {
        let _ = p.shutdown().await;
    }
}

// ------------------------------------------------------------------ floors

/// 16-byte append + fdatasync, repeatedly, on the benchmark disk.
fn fsync_floor(secs: f64) -> (f64, f64) {
    let (p50, p99, _) = raw_fsync(secs);
    (p50.as_secs_f64() * 1e6, p99.as_secs_f64() * 1e6)
}

/// UDP ping-pong of 16 bytes between two threads on loopback.
fn udp_floor(secs: f64) -> (f64, f64) {
    let server = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = server.local_addr().expect("addr");
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = server.recv_from(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = server.send_to(&buf[..n], from);
        }
    });
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    client.connect(addr).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut lat = Vec::new();
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < deadline {
        let t = Instant::now();
        client.send(&[7u8; 16]).expect("send");
        if client.recv(&mut buf).is_ok() {
            lat.push(t.elapsed());
        }
    }
    let _ = client.send(&[]);
    let _ = echo.join();
    lat.sort_unstable();
    (
        percentile(&lat, 0.5).as_secs_f64() * 1e6,
        percentile(&lat, 0.99).as_secs_f64() * 1e6,
    )
}

/// A `Status` request/response to `addr` over the client's QUIC
/// connection, repeatedly.
async fn quic_floor(client: &Client, addr: &str, secs: f64) -> (f64, f64) {
    for _ in 0..50 {
        let _ = client.status_of(addr).await;
    }
    let mut lat = Vec::new();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < deadline {
        let t = Instant::now();
        if client.status_of(addr).await.is_ok() {
            lat.push(t.elapsed());
        }
    }
    lat.sort_unstable();
    (
        percentile(&lat, 0.5).as_secs_f64() * 1e6,
        percentile(&lat, 0.99).as_secs_f64() * 1e6,
    )
}

// ------------------------------------------------------------------ report

/// Results of every run: key (section, op, clients) -> one cell per run.
#[derive(Default)]
struct Results {
    cells: BTreeMap<(String, &'static str, usize), Vec<Cell>>,
    floors: BTreeMap<&'static str, Vec<(f64, f64)>>,
}

impl Results {
    fn cell(&self, section: &str, op: &'static str, clients: usize) -> Option<Cell> {
        let runs = self.cells.get(&(section.to_string(), op, clients))?;
        let m = |f: fn(&Cell) -> f64| median(runs.iter().map(f).collect());
        Some(Cell {
            ops: m(|c| c.ops),
            p50_us: m(|c| c.p50_us),
            p99_us: m(|c| c.p99_us),
            errors: runs.iter().map(|c| c.errors).sum(),
            cpu_node: m(|c| c.cpu_node),
            cpu_loadgen: m(|c| c.cpu_loadgen),
            cpu_process: m(|c| c.cpu_process),
            cpu_others: m(|c| c.cpu_others),
        })
    }

    fn floor(&self, name: &str) -> Option<(f64, f64)> {
        let runs = self.floors.get(name)?;
        Some((
            median(runs.iter().map(|r| r.0).collect()),
            median(runs.iter().map(|r| r.1).collect()),
        ))
    }
}

fn conns_for(clients: usize) -> usize {
    clients.div_ceil(TASKS_PER_CONN).clamp(1, MAX_CONNS)
}

fn print_tables(opts: &Opts, r: &Results) {
    let runs = opts.runs;
    println!();
    println!(
        "raftkit cluster benchmark: 3 peers, 16-byte values; {} s per cell after {} s warm-up; median of {runs} run(s)",
        opts.secs, opts.warm
    );
    println!(
        "(2-core machine shared with other work: figures are noisy; the load generator runs on the same cores)"
    );
    for (section, title) in [
        (
            "durable",
            "1. QUIC loopback, durable WAL (fdatasync per group commit)",
        ),
        ("memory", "2. QUIC loopback, in-memory store"),
    ] {
        if !r.cells.keys().any(|k| k.0 == section) {
            continue;
        }
        println!();
        println!("{title}");
        println!();
        println!(
            "| op  | clients | conns |     ops/s | p50 ms | p99 ms | errors | CPU/node % | loadgen CPU % | others' CPU % |"
        );
        println!(
            "|-----|--------:|------:|----------:|-------:|-------:|-------:|-----------:|--------------:|--------------:|"
        );
        for op in ["put", "get"] {
            for &c in &opts.clients {
                if let Some(cell) = r.cell(section, op, c) {
                    println!(
                        "| {op} | {c:>7} | {:>5} | {:>9.0} | {:>6.2} | {:>6.2} | {:>6} | {:>10.0} | {:>13.0} | {:>13.0} |",
                        conns_for(c),
                        cell.ops,
                        cell.p50_us / 1e3,
                        cell.p99_us / 1e3,
                        cell.errors,
                        cell.cpu_node,
                        cell.cpu_loadgen,
                        cell.cpu_others
                    );
                }
            }
        }
    }
    if r.cells.keys().any(|k| k.0 == "inproc") {
        println!();
        println!(
            "3. One process, in-memory store, in-process transport, proposers call the leader Peer directly"
        );
        println!();
        println!(
            "| proposers |     ops/s | p50 ms | p99 ms | errors | process CPU / 3 % | others' CPU % |"
        );
        println!(
            "|----------:|----------:|-------:|-------:|-------:|------------------:|--------------:|"
        );
        for &c in &opts.clients {
            if let Some(cell) = r.cell("inproc", "put", c) {
                println!(
                    "| {c:>9} | {:>9.0} | {:>6.3} | {:>6.3} | {:>6} | {:>17.0} | {:>13.0} |",
                    cell.ops,
                    cell.p50_us / 1e3,
                    cell.p99_us / 1e3,
                    cell.errors,
                    cell.cpu_process / 3.0,
                    cell.cpu_others
                );
            }
        }
    }
    if !r.floors.is_empty() {
        println!();
        println!("4. Floors (same run)");
        println!();
        println!("| floor | p50 µs | p99 µs |");
        println!("|---|---:|---:|");
        for (name, label) in [
            (
                "fsync",
                "16-byte write + fdatasync, same disk (before the durable cells)",
            ),
            (
                "fsync_after",
                "  the same right after the durable cells (not a floor: shows whether other IO disturbed them)",
            ),
            ("quic", "QUIC request/response (Status) to the leader"),
            ("udp", "UDP ping-pong, loopback"),
        ] {
            if let Some((p50, p99)) = r.floor(name) {
                println!("| {label} | {p50:>7.0} | {p99:>7.0} |");
            }
        }
    }
    print_targets(r);
}

fn targets(r: &Results) -> Vec<(String, String, String, bool)> {
    let mut out = Vec::new();
    if let (Some(one), Some((fsync, _)), Some((rtt, _))) = (
        r.cell("durable", "put", 1),
        r.floor("fsync"),
        r.floor("quic"),
    ) {
        let limit = 1.3 * (fsync + rtt);
        out.push((
            "1 client, durable put p50 <= 1.3 x (fsync p50 + QUIC RTT p50)".into(),
            format!("<= {:.2} ms", limit / 1e3),
            format!("{:.2} ms", one.p50_us / 1e3),
            one.p50_us <= limit,
        ));
    }
    if let Some(c) = r.cell("durable", "put", 64) {
        out.push((
            "64 clients, durable puts".into(),
            ">= 25,000 ops/s, p99 <= 30 ms".into(),
            format!("{:.0} ops/s, p99 {:.1} ms", c.ops, c.p99_us / 1e3),
            c.ops >= 25_000.0 && c.p99_us <= 30_000.0,
        ));
    }
    if let Some(c) = r.cell("durable", "get", 64) {
        out.push((
            "64 clients, linearizable gets".into(),
            ">= 25,000 ops/s".into(),
            format!("{:.0} ops/s", c.ops),
            c.ops >= 25_000.0,
        ));
    }
    if let Some(c) = r.cell("inproc", "put", 64) {
        out.push((
            "in-process, in-memory, 64 proposers".into(),
            ">= 360,000 ops/s".into(),
            format!("{:.0} ops/s", c.ops),
            c.ops >= 360_000.0,
        ));
    }
    out
}

fn print_targets(r: &Results) {
    let t = targets(r);
    if t.is_empty() {
        return;
    }
    println!();
    println!("Targets");
    println!();
    println!("| target | limit | measured | met |");
    println!("|---|---|---|---|");
    for (what, limit, got, met) in t {
        println!(
            "| {what} | {limit} | {got} | {} |",
            if met { "yes" } else { "NO" }
        );
    }
}

fn print_csv(opts: &Opts, r: &Results) {
    println!(
        "section,op,clients,conns,ops_per_sec,p50_us,p99_us,errors,cpu_node_pct,cpu_loadgen_pct,cpu_process_pct,cpu_others_pct,runs"
    );
    for (section, op, c) in r.cells.keys() {
        if let Some(cell) = r.cell(section, op, *c) {
            let conns = if section == "inproc" {
                0
            } else {
                conns_for(*c)
            };
            println!(
                "{section},{op},{c},{conns},{:.0},{:.1},{:.1},{},{:.1},{:.1},{:.1},{:.1},{}",
                cell.ops,
                cell.p50_us,
                cell.p99_us,
                cell.errors,
                cell.cpu_node,
                cell.cpu_loadgen,
                cell.cpu_process,
                cell.cpu_others,
                opts.runs
            );
        }
    }
    for name in ["fsync", "fsync_after", "quic", "udp"] {
        if let Some((p50, p99)) = r.floor(name) {
            println!("floor,{name},1,1,,{p50:.1},{p99:.1},0,,,,,{}", opts.runs);
        }
    }
}

// -------------------------------------------------------------------- main

fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

fn progress(opts: &Opts, msg: impl std::fmt::Display) {
    if !opts.csv {
        eprintln!("{msg}");
    }
}

fn main() {
    let opts = Opts::from_env();
    let cluster_rt = runtime("cluster");
    let load_rt = runtime("loadgen");
    let mut results = Results::default();
    let floor_secs = (opts.secs / 2.0).max(1.0);
    for run in 1..=opts.runs {
        progress(&opts, format_args!("run {run}/{}", opts.runs));
        if opts.wants("floors") {
            results
                .floors
                .entry("udp")
                .or_default()
                .push(udp_floor(floor_secs));
        }
        for (section, store) in [("durable", Store::Durable), ("memory", Store::Memory)] {
            let floors_here = store == Store::Durable && opts.wants("floors");
            if !opts.wants(section) && !floors_here {
                continue;
            }
            let cluster = cluster_rt.block_on(start_quic(store));
            let leader = cluster_rt.block_on(wait_leader(&cluster.peers));
            let leader_addr = cluster.addrs[leader].clone();
            let pool: Vec<Client> = load_rt.block_on(async {
                let mut pool = Vec::new();
                let most = opts
                    .clients
                    .iter()
                    .map(|&c| conns_for(c))
                    .max()
                    .unwrap_or(1);
                for _ in 0..most.max(1) {
                    pool.push(
                        Client::connect_with(
                            &cluster.addrs,
                            cluster.client_identity.clone(),
                            Kv::SCHEMA_FINGERPRINT,
                            ClientOptions::default(),
                        )
                        .await
                        .expect("client connects"),
                    );
                }
                pool
            });
            if floors_here {
                let f = load_rt.block_on(quic_floor(&pool[0], &leader_addr, floor_secs));
                results.floors.entry("quic").or_default().push(f);
                // The disk is shared with other work: take the fsync floor
                // right before the durable cells.
                let f = fsync_floor(floor_secs);
                progress(&opts, format_args!("  fsync floor: p50 {:.0} µs", f.0));
                results.floors.entry("fsync").or_default().push(f);
            }
            if opts.wants(section) {
                for &c in &opts.clients {
                    let target = Target::Remote(
                        pool[..conns_for(c)]
                            .iter()
                            .map(|cl| KvClient::new(cl.clone()))
                            .collect(),
                    );
                    for op in [Op::Put, Op::Get] {
                        if !opts.ops.contains(&op) {
                            continue;
                        }
                        // The per-hop breakdown of one client's durable put
                        // (`raftkit::probe`, `--features latency-probe`).
                        let probing = opts.probe && section == "durable" && c == 1 && op == Op::Put;
                        raftkit::probe::enable(probing);
                        let cell = load_rt.block_on(drive(&target, op, c, opts.warm, opts.secs));
                        raftkit::probe::enable(false);
                        if probing {
                            eprint!("{}", raftkit::probe::report());
                        }
                        progress(
                            &opts,
                            format_args!(
                                "  {section} {} x{c}: {:.0} ops/s p50 {:.2} ms p99 {:.2} ms errors {} cpu/node {:.0}% others {:.0}%",
                                op.name(),
                                cell.ops,
                                cell.p50_us / 1e3,
                                cell.p99_us / 1e3,
                                cell.errors,
                                cell.cpu_node,
                                cell.cpu_others
                            ),
                        );
                        results
                            .cells
                            .entry((section.to_string(), op.name(), c))
                            .or_default()
                            .push(cell);
                    }
                }
            }
            if floors_here {
                // Only reported: the disk is shared with other users, whose
                // IO can make fsync ten times slower for a while; this
                // sample shows whether the durable cells ran in such a spell.
                let f = fsync_floor(floor_secs);
                progress(
                    &opts,
                    format_args!("  fsync right after the durable cells: p50 {:.0} µs", f.0),
                );
                results.floors.entry("fsync_after").or_default().push(f);
            }
            load_rt.block_on(async move { drop(pool) });
            cluster_rt.block_on(shutdown(&cluster.peers));
            drop(cluster);
        }
        if opts.wants("inproc") {
            let peers = cluster_rt.block_on(start_inproc());
            let leader = cluster_rt.block_on(wait_leader(&peers));
            let target = Target::Local(KvClient::new(peers[leader].clone()));
            for &c in &opts.clients {
                let cell = cluster_rt.block_on(drive(&target, Op::Put, c, opts.warm, opts.secs));
                progress(
                    &opts,
                    format_args!(
                        "  inproc put x{c}: {:.0} ops/s p50 {:.3} ms p99 {:.3} ms errors {}",
                        cell.ops,
                        cell.p50_us / 1e3,
                        cell.p99_us / 1e3,
                        cell.errors
                    ),
                );
                results
                    .cells
                    .entry(("inproc".to_string(), "put", c))
                    .or_default()
                    .push(cell);
            }
            cluster_rt.block_on(shutdown(&peers));
        }
    }
    if opts.csv {
        print_csv(&opts, &results);
    } else {
        print_tables(&opts, &results);
    }
}
