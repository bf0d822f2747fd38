//! `kv demo`: a 3-node cluster in this process, put through a workload, a
//! leader failure and a restart, and checked.
//!
//! 1. Three peers on free loopback ports (QUIC with mutual TLS from an
//!    ephemeral CA), each with its write-ahead log in a temporary directory.
//! 2. Concurrent clients (each its own session) run puts, gets and
//!    compare-and-swaps on a few hot keys with unique values, and puts of
//!    unique keys; every call is recorded with its invocation and completion
//!    times. A progress line shows ops/s, errors and the leader.
//! 3. The leader is shut down; the time until another peer leads is the
//!    failover time. The killed peer is restarted from its data directory
//!    alone and must catch up.
//! 4. Checks: every replica applies the same index; leadership moves to the
//!    restarted peer, which must then serve every acknowledged unique write;
//!    the history of the hot keys (values mapped to `u64`) must be
//!    linearizable by raftkit's checker.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftkit::client::ClientOptions;
use raftkit::core::Role;
use raftkit::prelude::*;
use raftkit::sim::linearizability::{self, KvOp, KvOutcome, Operation};
use raftkit::tls::{Identity, dev_cluster};

use crate::cli::DemoArgs;
use crate::fail::Failure;
use crate::store::{Kv, KvClient, Mismatch};

/// The demo's Raft tick: elections after 250–500 ms.
const TICK: Duration = Duration::from_millis(25);
/// Hot keys the clients contend on.
const HOT_KEYS: u64 = 5;
/// How long the demo waits for anything (a leader, a catch-up).
const PATIENCE: Duration = Duration::from_secs(15);

type Peers = Arc<Mutex<Vec<Option<Peer<Kv>>>>>;

fn failed(what: &str) -> impl Fn(raftkit::Error) -> Failure + '_ {
    move |e| Failure::Failed(format!("demo: {what}: {e}"))
}

/// Output shared by the progress line and the event lines.
struct Screen {
    tty: bool,
    lock: Mutex<()>,
}

impl Screen {
    fn event(&self, text: &str) {
        let _guard = self.lock.lock();
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = write!(out, "\r\x1b[K");
        }
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    fn progress(&self, text: &str, newline: bool) {
        let _guard = self.lock.lock();
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = write!(out, "\r\x1b[K{text}");
        } else if newline {
            let _ = writeln!(out, "{text}");
        }
        let _ = out.flush();
    }
}

/// One client's record of the run.
#[derive(Default)]
struct ClientLog {
    ops: Vec<Operation>,
    /// Unique keys whose put was acknowledged, with their values.
    acked: Vec<(String, String)>,
    errors: u64,
}

/// Counters the progress line reads.
#[derive(Default)]
struct Counters {
    ops: AtomicU64,
    errors: AtomicU64,
}

/// `n` UDP sockets bound to free loopback ports, with their addresses: the
/// nodes serve on them (`PeerBuilder::listen_socket`), so no port is
/// released for another process to take before its node listens.
fn loopback_sockets(n: usize) -> Result<(Vec<std::net::UdpSocket>, Vec<String>), Failure> {
    let sockets = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::Failed(format!("demo: no free loopback port: {e}")))?;
    let addrs = sockets
        .iter()
        .map(|s| s.local_addr().map(|a| a.to_string()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::Failed(format!("demo: {e}")))?;
    Ok((sockets, addrs))
}

fn micros(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn leader_of(peers: &Peers) -> Option<(usize, Peer<Kv>)> {
    let peers = peers.lock().ok()?;
    peers.iter().enumerate().find_map(|(i, p)| {
        p.as_ref()
            .filter(|p| p.status().role == Role::Leader)
            .map(|p| (i, p.clone()))
    })
}

async fn wait_leader(peers: &Peers, not: Option<usize>) -> Result<(usize, Peer<Kv>), Failure> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some((i, p)) = leader_of(peers)
            && Some(i) != not
        {
            return Ok((i, p));
        }
        if Instant::now() > deadline {
            return Err(Failure::Failed("demo: no leader was elected".into()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A small deterministic generator for the clients' choices.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One client: operations until `stop`, recorded.
async fn client_loop(
    index: u64,
    kv: KvClient,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) -> ClientLog {
    let mut log = ClientLog::default();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ (index + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
    let mut known: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    let mut seq: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        // Unique across clients and runs of this loop; fits the checker's u64.
        let value = ((index + 1) << 32) | seq;
        let key = rng.next() % HOT_KEYS;
        let hot = format!("h{key}");
        let choice = rng.next() % 10;
        let invoke = micros(epoch);
        let (op, outcome, ok) = match choice {
            0..=3 => {
                let r = kv.put(hot, value.to_string()).await;
                let ok = r.is_ok();
                if ok {
                    known.insert(key, Some(value));
                }
                (
                    Some(KvOp::Put { key, value }),
                    ok.then_some(KvOutcome::Put),
                    ok,
                )
            }
            4 | 5 => match kv.get(hot).await {
                Ok(v) => {
                    let v = v.and_then(|s| s.parse::<u64>().ok());
                    known.insert(key, v);
                    (Some(KvOp::Get { key }), Some(KvOutcome::Get(v)), true)
                }
                Err(_) => (None, None, false),
            },
            6 | 7 => {
                let expected = known.get(&key).copied().flatten();
                let r = kv
                    .cas(hot, expected.map(|v| v.to_string()), value.to_string())
                    .await;
                let op = KvOp::Cas {
                    key,
                    expected,
                    new: value,
                };
                match r {
                    Ok(Ok(())) => {
                        known.insert(key, Some(value));
                        (Some(op), Some(KvOutcome::Cas(true)), true)
                    }
                    Ok(Err(Mismatch(current))) => {
                        known.insert(key, current.and_then(|s| s.parse().ok()));
                        (Some(op), Some(KvOutcome::Cas(false)), true)
                    }
                    Err(_) => (Some(op), None, false),
                }
            }
            _ => {
                let unique = format!("w/{index:02}/{seq:07}");
                match kv.put(unique.clone(), value.to_string()).await {
                    Ok(_) => {
                        log.acked.push((unique, value.to_string()));
                        (None, None, true)
                    }
                    Err(_) => (None, None, false),
                }
            }
        };
        let complete = micros(epoch);
        if let Some(op) = op {
            log.ops.push(Operation {
                client: index,
                op,
                invoke,
                outcome: outcome.map(|o| (complete, o)),
            });
        }
        counters.ops.fetch_add(1, Ordering::Relaxed);
        if !ok {
            log.errors += 1;
            counters.errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    log
}

/// Runs the demo; `Ok` only if every check passed.
pub async fn run(args: DemoArgs) -> Result<(), Failure> {
    let clients = args.clients.clamp(1, 64);
    let phase = Duration::from_secs_f64(args.secs.clamp(0.5, 30.0));
    let screen = Arc::new(Screen {
        tty: std::io::stdout().is_terminal(),
        lock: Mutex::new(()),
    });
    let started = Instant::now();
    let dir = tempfile::tempdir()
        .map_err(|e| Failure::Failed(format!("demo: no temporary directory: {e}")))?;
    let (sockets, addrs) = loopback_sockets(3)?;
    // A second handle on each node's socket, kept for the whole demo: the
    // killed node restarts on it (its data directory stores the same
    // address), so its port is never released for another socket (a
    // client endpoint of this demo binding port 0, say) to take while it
    // is down. A node restarted in another process could not do this: it
    // binds its stored address again (the peer retries AddrInUse for 10 s,
    // then fails naming the address).
    let mut spares = sockets
        .iter()
        .map(|s| s.try_clone().map(Some))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::Failed(format!("demo: cannot keep a node's socket: {e}")))?;
    let names: Vec<String> = addrs.iter().map(|a| format!("kv@{a}")).collect();
    let (ca, identities) =
        dev_cluster(&names).map_err(|e| Failure::Failed(format!("demo: certificates: {e}")))?;
    let client_identity: Identity = ca
        .issue_client("client")
        .map_err(|e| Failure::Failed(format!("demo: client certificate: {e}")))?;
    let data_dirs: Vec<PathBuf> = (1..=3)
        .map(|i| dir.path().join(format!("node{i}")))
        .collect();

    screen.event(&format!(
        "kv demo: 3 nodes in this process, QUIC + mutual TLS on loopback (ephemeral CA), logs in {}",
        dir.path().display()
    ));
    let peers: Peers = Arc::new(Mutex::new(Vec::new()));
    for ((socket, identity), data) in sockets.into_iter().zip(identities).zip(&data_dirs) {
        let peer = Kv::peer()
            .listen_socket(socket)
            .data_dir(data)
            .bootstrap_members(addrs.clone())
            .identity(identity)
            .tick(TICK)
            .start()
            .await
            .map_err(failed("starting a node"))?;
        if let Ok(mut p) = peers.lock() {
            p.push(Some(peer));
        }
    }
    let (_, leader) = wait_leader(&peers, None).await?;
    screen.event(&format!(
        "  cluster up: {} ; leader {} elected after {:.2} s",
        addrs.join(", "),
        leader.name(),
        started.elapsed().as_secs_f64()
    ));

    // The workload.
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let opts = ClientOptions::default().with_timeout(Duration::from_secs(5));
    let mut tasks = Vec::new();
    for c in 0..clients as u64 {
        let kv = KvClient::connect_with(&addrs, client_identity.clone(), opts.clone())
            .await
            .map_err(failed("connecting a client"))?;
        tasks.push(tokio::spawn(client_loop(
            c,
            kv,
            epoch,
            stop.clone(),
            counters.clone(),
        )));
    }
    screen.event(&format!(
        "  workload: {clients} clients, put/get/cas on {HOT_KEYS} hot keys + puts of unique keys"
    ));
    let progress_done = Arc::new(AtomicBool::new(false));
    let progress = {
        let (screen, counters, peers, done) = (
            screen.clone(),
            counters.clone(),
            peers.clone(),
            progress_done.clone(),
        );
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            let mut printed = Instant::now();
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let ops = counters.ops.load(Ordering::Relaxed);
                let now = Instant::now();
                let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
                let rate = (ops - last.1) as f64 / dt;
                last = (now, ops);
                let leader = leader_of(&peers)
                    .map(|(_, p)| p.name().to_string())
                    .unwrap_or_else(|| "none (election)".into());
                let line = format!(
                    "  {:5.1} s  ops {:>7}  {:>6} ops/s  errors {}  leader {}",
                    epoch.elapsed().as_secs_f64(),
                    thousands(ops),
                    thousands(rate as u64),
                    counters.errors.load(Ordering::Relaxed),
                    leader
                );
                let newline = printed.elapsed() >= Duration::from_secs(1);
                if newline {
                    printed = Instant::now();
                }
                screen.progress(&line, newline);
            }
        })
    };

    tokio::time::sleep(phase).await;

    // Kill the leader.
    let (victim, leader) = wait_leader(&peers, None).await?;
    let victim_name = leader.name().to_string();
    if let Ok(mut p) = peers.lock() {
        p[victim] = None;
    }
    let killed_at = Instant::now();
    let killed_us = micros(epoch);
    leader
        .shutdown()
        .await
        .map_err(failed("stopping the leader"))?;
    drop(leader);
    screen.event(&format!(
        "  {:5.1} s  killed the leader {victim_name}",
        epoch.elapsed().as_secs_f64()
    ));
    let (_, new_leader) = wait_leader(&peers, Some(victim)).await?;
    let failover = killed_at.elapsed();
    screen.event(&format!(
        "  {:5.1} s  new leader {} after {:.0} ms",
        epoch.elapsed().as_secs_f64(),
        new_leader.name(),
        failover.as_secs_f64() * 1000.0
    ));
    drop(new_leader);

    tokio::time::sleep(phase / 2).await;

    // Restart the killed node from its directory alone.
    let spare = spares
        .get_mut(victim)
        .and_then(Option::take)
        .ok_or_else(|| Failure::Failed(format!("demo: no socket kept for node {victim}")))?;
    let restarted = Kv::peer()
        .data_dir(&data_dirs[victim])
        .listen_socket(spare)
        .tick(TICK)
        .start()
        .await
        .map_err(failed("restarting the killed node"))?;
    let restarted_at = Instant::now();
    let target = wait_leader(&peers, Some(victim)).await?.1.status().commit;
    if let Ok(mut p) = peers.lock() {
        p[victim] = Some(restarted.clone());
    }
    screen.event(&format!(
        "  {:5.1} s  restarted {victim_name} from its data directory; catching up to index {target}",
        epoch.elapsed().as_secs_f64()
    ));
    let deadline = Instant::now() + PATIENCE;
    while restarted.status().applied < target {
        if Instant::now() > deadline {
            return Err(Failure::Failed(format!(
                "demo: {victim_name} did not catch up to index {target}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    screen.event(&format!(
        "  {:5.1} s  {victim_name} caught up (applied {}) in {:.0} ms",
        epoch.elapsed().as_secs_f64(),
        restarted.status().applied,
        restarted_at.elapsed().as_secs_f64() * 1000.0
    ));

    tokio::time::sleep(phase / 3).await;
    stop.store(true, Ordering::Relaxed);
    progress_done.store(true, Ordering::Relaxed);
    let _ = progress.await;
    let mut logs = Vec::new();
    for t in tasks {
        logs.push(
            t.await
                .map_err(|e| Failure::Failed(format!("demo: a client failed: {e}")))?,
        );
    }
    let workload = epoch.elapsed();
    let total_ops = counters.ops.load(Ordering::Relaxed);
    let errors: u64 = logs.iter().map(|l| l.errors).sum();
    screen.event(&format!(
        "  {:5.1} s  workload stopped: {} ops, {errors} errors",
        workload.as_secs_f64(),
        thousands(total_ops)
    ));

    // Checks.
    let mut problems: Vec<String> = Vec::new();
    let all: Vec<Peer<Kv>> = peers
        .lock()
        .map(|p| p.iter().flatten().cloned().collect())
        .unwrap_or_default();
    let (_, leader) = wait_leader(&peers, None).await?;
    let deadline = Instant::now() + PATIENCE;
    let converged = loop {
        let commit = leader.status().commit;
        if all.iter().all(|p| p.status().applied >= commit) {
            break Some(commit);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    match converged {
        Some(i) => screen.event(&format!("  check: all 3 replicas applied index {i}")),
        None => problems.push("the replicas did not converge to the leader's commit index".into()),
    }

    // Read everything back from the restarted node, as the leader.
    let restarted_addr = &addrs[victim];
    if leader.id() != restarted.id() {
        match leader.transfer_leader(restarted_addr).await {
            Ok(()) => screen.event(&format!(
                "  check: leadership moved to the restarted {victim_name}"
            )),
            Err(e) => problems.push(format!("leadership transfer to {victim_name} failed: {e}")),
        }
    }
    let reader = KvClient::connect_with(&addrs, client_identity.clone(), opts.clone())
        .await
        .map_err(failed("connecting the checker"))?;
    let acked: Vec<(String, String)> = logs.iter().flat_map(|l| l.acked.clone()).collect();
    match reader.scan("w/".into()).await {
        Ok(stored) => {
            let stored: BTreeMap<String, String> = stored.into_iter().collect();
            let missing = acked
                .iter()
                .filter(|(k, v)| stored.get(k) != Some(v))
                .count();
            if missing == 0 {
                screen.event(&format!(
                    "  check: all {} acknowledged unique writes present on {}",
                    thousands(acked.len() as u64),
                    leader_of(&peers)
                        .map(|(_, p)| p.name().to_string())
                        .unwrap_or_default()
                ));
            } else {
                problems.push(format!(
                    "{missing} of {} acknowledged writes missing",
                    acked.len()
                ));
            }
        }
        Err(e) => problems.push(format!("reading the writes back failed: {e}")),
    }

    // Final reads of the hot keys join the history, then the checker.
    let mut history: Vec<Operation> = logs.iter().flat_map(|l| l.ops.clone()).collect();
    for key in 0..HOT_KEYS {
        let invoke = micros(epoch);
        match reader.get(format!("h{key}")).await {
            Ok(v) => history.push(Operation {
                client: clients as u64,
                op: KvOp::Get { key },
                invoke,
                outcome: Some((
                    micros(epoch),
                    KvOutcome::Get(v.and_then(|s| s.parse().ok())),
                )),
            }),
            Err(e) => problems.push(format!("final read of h{key} failed: {e}")),
        }
    }
    let writes_after_kill = history
        .iter()
        .filter_map(|o| match (o.op, o.outcome) {
            (KvOp::Get { .. }, _) => None,
            (_, Some((t, _))) if o.invoke >= killed_us => Some(t),
            _ => None,
        })
        .min();
    let checked_ops = history.len();
    let check_started = Instant::now();
    let verdict = tokio::task::spawn_blocking(move || {
        linearizability::check(&history, linearizability::DEFAULT_BUDGET)
    })
    .await
    .map_err(|e| Failure::Failed(format!("demo: the checker failed: {e}")))?;
    let linearizable = verdict.is_linearizable();
    screen.event(&format!(
        "  check: linearizability of {} operations on the hot keys: {} ({:.0} ms)",
        thousands(checked_ops as u64),
        if linearizable {
            "linearizable".to_string()
        } else {
            verdict.to_string()
        },
        check_started.elapsed().as_secs_f64() * 1000.0
    ));
    if !linearizable {
        problems.push(format!("history not linearizable: {verdict}"));
    }

    // Clean up.
    for p in &all {
        let _ = p.shutdown().await;
    }
    drop(all);
    drop(restarted);
    if let Ok(mut p) = peers.lock() {
        p.clear();
    }
    let _ = dir.close();

    let throughput = total_ops as f64 / workload.as_secs_f64().max(1e-3);
    println!();
    println!("summary");
    println!(
        "  operations     {} in {:.1} s ({} ops/s), {errors} errors",
        thousands(total_ops),
        workload.as_secs_f64(),
        thousands(throughput as u64)
    );
    println!(
        "  failover       {:.0} ms to a new leader{}",
        failover.as_secs_f64() * 1000.0,
        writes_after_kill
            .map(|t| format!(
                "; first acknowledged write {:.0} ms after the kill",
                t.saturating_sub(killed_us) as f64 / 1000.0
            ))
            .unwrap_or_default()
    );
    println!(
        "  durability     {} acknowledged unique writes checked",
        thousands(acked.len() as u64)
    );
    println!(
        "  verdict        {}",
        if linearizable {
            "linearizable".to_string()
        } else {
            format!("NOT linearizable: {verdict}")
        }
    );
    println!("  total time     {:.1} s", started.elapsed().as_secs_f64());
    if problems.is_empty() {
        println!("all checks passed");
        Ok(())
    } else {
        Err(Failure::Failed(format!(
            "demo checks failed: {}",
            problems.join("; ")
        )))
    }
}
