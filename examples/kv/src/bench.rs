//! `kv bench`: a closed-loop load generator against a running cluster.
//!
//! N tasks each issue one operation at a time (`put` of a fresh key with a
//! value of `--value-size` bytes, a linearizable `get` of a key the puts
//! wrote, or a `status` request, which goes through QUIC but not through
//! Raft: the network round-trip floor) for `--secs` seconds after a warm-up.
//! Tasks share network clients as an application server would: one client
//! (one QUIC connection, one session) per 16 tasks, at most `--conns`.
//!
//! A line `measuring` on stdout marks the start of the measured window; the
//! result is one JSON object on stdout, so that a script can put it in a
//! table beside another system measured the same way (see
//! `benches/sidebyside`):
//!
//! ```text
//! {"system":"raftkit","op":"put","clients":64,"ops":..,"errors":..,"secs":..,
//!  "ops_per_s":..,"p50_us":..,"p90_us":..,"p99_us":..,"max_us":..}
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use raftkit::client::wire::ClientRequest;

use crate::certs::client_identity;
use crate::cli::BenchArgs;
use crate::commands::{cluster_addrs, options};
use crate::fail::Failure;
use crate::store::KvClient;

/// What one task measured.
#[derive(Default)]
struct TaskResult {
    latencies_us: Vec<u32>,
    errors: u64,
}

/// `kv bench`.
pub async fn run(args: BenchArgs) -> Result<(), Failure> {
    let addrs = cluster_addrs(&args.cluster)?;
    let identity = client_identity(args.cluster.certs.as_deref())?;
    let op = args.op.as_str();
    if !matches!(op, "put" | "get" | "status") {
        return Err(Failure::Usage(format!(
            "unknown --op {op:?}: expected put, get or status"
        )));
    }
    let clients = args.clients.max(1);
    let conns = clients.div_ceil(16).clamp(1, args.conns.max(1));
    let mut kvs = Vec::with_capacity(conns);
    for _ in 0..conns {
        let kv = KvClient::connect_with(&addrs, identity.clone(), options(&args.cluster, 10))
            .await
            .map_err(|e| Failure::cluster(&e, &addrs))?;
        kvs.push(kv);
    }
    let value = "v".repeat(args.value_size);
    // A get reads a key that exists: write the keys the tasks will read.
    if op == "get" {
        let kv = &kvs[0];
        for t in 0..clients {
            kv.put(key(t, 0), value.clone())
                .await
                .map_err(|e| Failure::cluster(&e, &addrs))?;
        }
    }
    let warmup = Duration::from_secs_f64(args.warmup.max(0.0));
    let measure = Duration::from_secs_f64(args.secs.max(0.1));
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(clients);
    for t in 0..clients {
        let kv = kvs[t % conns].clone();
        let stop = Arc::clone(&stop);
        let value = value.clone();
        let op = op.to_string();
        tasks.push(tokio::spawn(async move {
            let mut r = TaskResult::default();
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let began = Instant::now();
                let ok = match op.as_str() {
                    "put" => kv.put(key(t, n), value.clone()).await.is_ok(),
                    "get" => kv.get(key(t, 0)).await.is_ok_and(|v| v.is_some()),
                    _ => kv.inner().request(ClientRequest::Status).await.is_ok(),
                };
                if began >= measure_from {
                    if ok {
                        let us = began.elapsed().as_micros();
                        r.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                    } else {
                        r.errors += 1;
                    }
                }
            }
            r
        }));
    }
    tokio::time::sleep(warmup).await;
    // The side-by-side bench reads the cluster's CPU from this line on.
    println!("measuring");
    tokio::time::sleep(measure).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().saturating_sub(warmup);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let r = task
            .await
            .map_err(|e| Failure::Failed(format!("a load task failed: {e}")))?;
        latencies.extend(r.latencies_us);
        errors += r.errors;
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> u32 {
        if latencies.is_empty() {
            return 0;
        }
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i.min(latencies.len() - 1)]
    };
    let secs = elapsed.as_secs_f64();
    println!(
        "{{\"system\":\"raftkit\",\"op\":\"{op}\",\"clients\":{clients},\"conns\":{conns},\"ops\":{},\"errors\":{errors},\"secs\":{secs:.3},\"ops_per_s\":{:.1},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"max_us\":{}}}",
        latencies.len(),
        latencies.len() as f64 / secs,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        latencies.last().copied().unwrap_or(0),
    );
    Ok(())
}

/// The key task `t` writes in its `n`-th put (`n = 0`: the key it reads).
fn key(t: usize, n: u64) -> String {
    format!("bench/{t:04}/{n:010}")
}
