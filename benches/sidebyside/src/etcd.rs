//! The etcd side: a 3-member cluster of Debian's `etcd` (3.4) on loopback,
//! fsync on (etcd has no switch to turn it off), and its load generator on
//! the `etcd-client` crate, run as a separate process like `kv bench`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

use crate::cluster::{Proc, free_ports, run_load};
use crate::{Args, Cell, SNAPSHOT_EVERY, SystemRun};

/// Starts the cluster, runs every cell against its leader, stops it.
pub async fn run_all(args: &Args, dir: &Path) -> Result<SystemRun, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ports = free_ports(6)?;
    let peers: Vec<String> = (0..3)
        .map(|i| format!("http://127.0.0.1:{}", ports[2 * i + 1]))
        .collect();
    let clients: Vec<String> = (0..3)
        .map(|i| format!("http://127.0.0.1:{}", ports[2 * i]))
        .collect();
    let initial: Vec<String> = (0..3).map(|i| format!("m{i}={}", peers[i])).collect();
    let mut procs = Vec::new();
    for i in 0..3 {
        let mut cmd = Command::new(&args.etcd);
        cmd.arg("--name")
            .arg(format!("m{i}"))
            .arg("--data-dir")
            .arg(dir.join(format!("m{i}")))
            .arg("--listen-client-urls")
            .arg(&clients[i])
            .arg("--advertise-client-urls")
            .arg(&clients[i])
            .arg("--listen-peer-urls")
            .arg(&peers[i])
            .arg("--initial-advertise-peer-urls")
            .arg(&peers[i])
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .arg("--initial-cluster-token")
            .arg("sidebyside")
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--log-level")
            .arg("warn")
            // etcd 3.4's default, said out loud: raftkit's nodes get the
            // same interval (`kv serve --snapshot-every`).
            .arg("--snapshot-count")
            .arg(SNAPSHOT_EVERY.to_string());
        procs.push(Proc::spawn(
            &format!("etcd m{i}"),
            cmd,
            &dir.join(format!("m{i}.log")),
        )?);
    }
    let leader = find_leader(&clients, &mut procs).await?;
    eprintln!("  etcd: 3 members up, leader {leader}");
    let pids: Vec<u32> = procs.iter().map(Proc::pid).collect();
    let mut out = SystemRun::default();
    for (op, n) in args.main_cells() {
        out.cells.push(cell(args, &leader, &op, n, &pids).await?);
    }
    if !args.no_curve {
        for &n in &args.curve {
            out.curve.push(cell(args, &leader, "put", n, &pids).await?);
        }
    }
    drop(procs);
    Ok(out)
}

async fn cell(
    args: &Args,
    leader: &str,
    op: &str,
    clients: usize,
    pids: &[u32],
) -> Result<Cell, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("--etcd-load")
        .arg(op)
        .arg("--endpoints")
        .arg(leader)
        .arg("--clients")
        .arg(clients.to_string())
        .arg("--secs")
        .arg(args.secs.to_string())
        .arg("--warmup")
        .arg(args.warmup.to_string())
        .arg("--kv")
        .arg(&args.kv);
    let c = run_load(cmd, pids).await?;
    eprintln!(
        "  etcd    {op:>3} x{clients:<5} {:>9.0} ops/s  p50 {:>6} us  p99 {:>6} us  errors {}",
        c.ops_per_s, c.p50_us, c.p99_us, c.errors
    );
    Ok(c)
}

/// Waits until every member answers and one leads; returns its URL.
async fn find_leader(clients: &[String], procs: &mut [Proc]) -> Result<String, String> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        for p in procs.iter_mut() {
            if let Some(status) = p.exited() {
                return Err(format!("{} exited ({status}); see its log", p.name));
            }
        }
        let mut leader_id = None;
        let mut ids = Vec::new();
        for url in clients {
            let opts = ConnectOptions::new().with_timeout(Duration::from_millis(500));
            if let Ok(mut c) = Client::connect([url.as_str()], Some(opts)).await
                && let Ok(s) = c.status().await
            {
                let id = s.header().map(|h| h.member_id()).unwrap_or(0);
                if s.leader() != 0 && s.leader() == id {
                    leader_id = Some(url.clone());
                }
                ids.push(id);
            }
        }
        if ids.len() == clients.len()
            && let Some(l) = leader_id
        {
            return Ok(l);
        }
        if Instant::now() > until {
            return Err("etcd did not elect a leader within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The load generator process (`sidebyside --etcd-load OP`).
pub async fn load_main(args: &Args, op: &str) -> Result<(), String> {
    let endpoints: Vec<String> = args.endpoints.split(',').map(str::to_string).collect();
    let clients = args.clients.max(1);
    let conns = clients.div_ceil(16).clamp(1, 8);
    let mut pool = Vec::new();
    for _ in 0..conns {
        pool.push(
            Client::connect(endpoints.clone(), None)
                .await
                .map_err(|e| format!("cannot connect to etcd: {e}"))?,
        );
    }
    let value = vec![b'v'; 16];
    if op == "get" {
        let mut c = pool[0].clone();
        for t in 0..clients {
            c.put(key(t, 0), value.clone(), None)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let warmup = Duration::from_secs_f64(args.warmup.max(0.0));
    let measure = Duration::from_secs_f64(args.secs.max(0.1));
    let start = Instant::now();
    let from = start + warmup;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..clients {
        let mut c = pool[t % conns].clone();
        let stop = Arc::clone(&stop);
        let value = value.clone();
        let op = op.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let began = Instant::now();
                let ok = if op == "put" {
                    c.put(key(t, n), value.clone(), None).await.is_ok()
                } else {
                    // etcd's default Range is linearizable (not serializable).
                    c.get(key(t, 0), None)
                        .await
                        .is_ok_and(|r| !r.kvs().is_empty())
                };
                if began >= from {
                    if ok {
                        lat.push(began.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep(warmup).await;
    println!("measuring");
    tokio::time::sleep(measure).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().saturating_sub(warmup);
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.map_err(|e| e.to_string())?;
        lat.extend(l);
        errors += e;
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() - 1) as f64 * p).round() as usize]
        }
    };
    let secs = elapsed.as_secs_f64();
    let cell = Cell {
        system: "etcd".into(),
        op: op.into(),
        clients,
        ops: lat.len() as u64,
        errors,
        secs,
        ops_per_s: lat.len() as f64 / secs,
        p50_us: pct(0.5),
        p90_us: pct(0.9),
        p99_us: pct(0.99),
        max_us: lat.last().copied().unwrap_or(0),
        cpu_us_per_op_node: 0.0,
    };
    println!(
        "{}",
        serde_json::to_string(&cell).map_err(|e| e.to_string())?
    );
    Ok(())
}

fn key(t: usize, n: u64) -> String {
    format!("bench/{t:04}/{n:010}")
}
