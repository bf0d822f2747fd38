//! The raftkit side: three `kv serve` processes (QUIC with mutual TLS on
//! loopback, a write-ahead log each, fdatasync on every group commit) and
//! `kv bench` as the load generator.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::cluster::{Proc, free_ports, run_load, wait_for};
use crate::{Args, Cell, SystemRun};

/// Starts the cluster, runs every cell, stops it. Also returns the QUIC
/// request/response p50 (a `status` call, which skips Raft) measured
/// against it.
pub async fn run_all(args: &Args, dir: &Path) -> Result<(SystemRun, u64), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let certs = dir.join("certs");
    let st = Command::new(&args.kv)
        .arg("certs")
        .arg("init")
        .arg(&certs)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args.kv.display()))?;
    if !st.status.success() {
        return Err(format!(
            "kv certs init failed: {}",
            String::from_utf8_lossy(&st.stderr)
        ));
    }
    let addrs: Vec<String> = free_ports(3)?
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let mut procs = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let mut cmd = Command::new(&args.kv);
        cmd.arg("serve")
            .arg("--listen")
            .arg(addr)
            .arg("--data")
            .arg(dir.join(format!("n{i}")))
            .arg("--certs")
            .arg(&certs)
            // The same snapshot interval as etcd's (see `SNAPSHOT_EVERY`).
            .arg("--snapshot-every")
            .arg(crate::SNAPSHOT_EVERY.to_string())
            .env("RUST_LOG", "warn");
        if i == 0 {
            cmd.arg("--bootstrap");
        } else {
            cmd.arg("--join").arg(&addrs[0]);
        }
        procs.push(Proc::spawn(
            &format!("kv n{i}"),
            cmd,
            &dir.join(format!("n{i}.log")),
        )?);
        if i == 0 {
            wait_voters(args, &certs, &addrs[..1], 1, &mut procs).await?;
        }
    }
    wait_voters(args, &certs, &addrs, 3, &mut procs).await?;
    let pids: Vec<u32> = procs.iter().map(Proc::pid).collect();
    eprintln!(
        "  raftkit: 3 nodes up at {} (pids {})",
        addrs.join(","),
        pids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let rtt = cell(args, &certs, &addrs, "status", 1, &[]).await?.p50_us;
    let mut out = SystemRun::default();
    for (op, n) in args.main_cells() {
        out.cells
            .push(cell(args, &certs, &addrs, &op, n, &pids).await?);
    }
    if !args.no_curve {
        for &n in &args.curve {
            out.curve
                .push(cell(args, &certs, &addrs, "put", n, &pids).await?);
        }
    }
    drop(procs);
    Ok((out, rtt))
}

async fn cell(
    args: &Args,
    certs: &Path,
    addrs: &[String],
    op: &str,
    clients: usize,
    pids: &[u32],
) -> Result<Cell, String> {
    let mut cmd = tokio::process::Command::new(&args.kv);
    cmd.arg("bench")
        .arg("--op")
        .arg(op)
        .arg("--clients")
        .arg(clients.to_string())
        .arg("--secs")
        .arg(args.secs.to_string())
        .arg("--warmup")
        .arg(args.warmup.to_string())
        .arg("--cluster")
        .arg(addrs.join(","))
        .arg("--certs")
        .arg(certs)
        .env("RUST_LOG", "error");
    let c = run_load(cmd, pids).await?;
    eprintln!(
        "  raftkit {op:>3} x{clients:<5} {:>9.0} ops/s  p50 {:>6} us  p99 {:>6} us  errors {}",
        c.ops_per_s, c.p50_us, c.p99_us, c.errors
    );
    Ok(c)
}

/// Waits until `kv members` lists `voters` voters and a leader.
async fn wait_voters(
    args: &Args,
    certs: &Path,
    addrs: &[String],
    voters: usize,
    procs: &mut [Proc],
) -> Result<(), String> {
    let mut died = None;
    let r = wait_for(
        &format!("{voters} voters and a leader"),
        Duration::from_secs(60),
        || {
            for p in procs.iter_mut() {
                if let Some(status) = p.exited() {
                    died = Some(format!("{} exited ({status}); see its log", p.name));
                    return Some(());
                }
            }
            let out = Command::new(&args.kv)
                .arg("members")
                .arg("--cluster")
                .arg(addrs.join(","))
                .arg("--certs")
                .arg(certs)
                .arg("--timeout")
                .arg("2")
                .output()
                .ok()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let n = text.lines().filter(|l| l.contains(" voter")).count();
            let led = text.lines().any(|l| l.trim_end().ends_with("leader"));
            (out.status.success() && n == voters && led).then_some(())
        },
    )
    .await;
    match died {
        Some(e) => Err(e),
        None => r,
    }
}
