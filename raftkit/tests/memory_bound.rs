//! Backpressure keeps memory bounded: 1,000,000 proposals against a state
//! machine that applies about 1,000 writes per second, on a 3-node cluster
//! (in-process transport, real WAL files), with the default in-flight
//! budget (16,384 commands, 64 MiB).
//!
//! Thousands of proposers with short deadlines (50 ms, the node's own
//! admission wait being 2 ms here) hammer the leader. Almost every proposal
//! is refused with `Overloaded` or gives up at its deadline: that is the
//! point. The process's resident set size (`VmRSS` in `/proc/self/status`,
//! sampled every 5 ms by a thread) must stay within [`BOUND_MIB`] above its
//! level before the load, and the cluster must still serve afterwards.
//!
//! This test has a binary of its own so that no other test shares the
//! process whose memory it measures.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raftkit::core::Role;
use raftkit::prelude::*;
use raftkit::transport::MemoryNetwork;

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "slow")]
pub struct Slow {
    last: BTreeMap<u64, u64>,
    count: u64,
}

#[raftkit::state_machine]
impl Slow {
    /// About a millisecond per write: ~1,000 writes per second.
    #[write]
    fn put(&mut self, proposer: u64, n: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(1));
        self.last.insert(proposer, n);
        self.count += 1;
        self.count
    }

    #[read]
    fn count(&self) -> u64 {
        self.count
    }
}

/// How far RSS may grow above its level before the load.
const BOUND_MIB: u64 = 128;
const PROPOSALS: u64 = 1_000_000;
const PROPOSERS: u64 = 2_000;

/// The resident set size of this process, in KiB.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_proposals_against_a_slow_state_machine_stay_within_a_memory_bound() {
    if rss_kib().is_none() {
        eprintln!("no /proc/self/status on this platform: nothing to measure");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = MemoryNetwork::new(11);
    let addrs = ["m1:1", "m2:1", "m3:1"];
    let mut peers = Vec::new();
    for addr in addrs {
        let net = net.clone();
        peers.push(
            Slow::peer()
                .listen(addr)
                .data_dir(dir.path().join(addr))
                .bootstrap_members(addrs)
                .tick(Duration::from_millis(20))
                .admission_wait(Duration::from_millis(2))
                .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)))
                .start()
                .await
                .unwrap(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let leader = loop {
        if let Some(p) = peers.iter().find(|p| p.status().role == Role::Leader) {
            break p.clone();
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let client = SlowClient::new(leader.clone());
    for n in 0..100 {
        client.put(0, n).await.unwrap();
    }

    let baseline = rss_kib().unwrap();
    let peak = Arc::new(AtomicU64::new(baseline));
    let over = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, over, done) = (peak.clone(), over.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if let Some(kib) = rss_kib() {
                    peak.fetch_max(kib, Ordering::SeqCst);
                    if kib > baseline + BOUND_MIB * 1024 {
                        over.store(true, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let overloaded = Arc::new(AtomicU64::new(0));
    let gave_up = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for proposer in 1..=PROPOSERS {
        let client = SlowClient::new(leader.clone());
        let (next, ok, overloaded, gave_up, over) = (
            next.clone(),
            ok.clone(),
            overloaded.clone(),
            gave_up.clone(),
            over.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= PROPOSALS || over.load(Ordering::Relaxed) {
                    return;
                }
                match tokio::time::timeout(Duration::from_millis(50), client.put(proposer, n)).await
                {
                    Ok(Ok(_)) => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(Err(Error::Overloaded)) => overloaded.fetch_add(1, Ordering::Relaxed),
                    Ok(Err(e)) => panic!("proposal {n}: {e}"),
                    Err(_) => gave_up.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::SeqCst);
    let st = leader.status();
    eprintln!(
        "memory bound: {PROPOSALS} proposals by {PROPOSERS} proposers in {took:.1?}: \
         {} applied and answered, {} overloaded, {} gave up at their 50 ms deadline \
         (node counted {} refusals); applied index {}; RSS before {} MiB, peak {} MiB \
         (+{} MiB, bound +{BOUND_MIB} MiB)",
        ok.load(Ordering::SeqCst),
        overloaded.load(Ordering::SeqCst),
        gave_up.load(Ordering::SeqCst),
        st.overloaded,
        st.applied,
        baseline / 1024,
        peak / 1024,
        peak.saturating_sub(baseline) / 1024,
    );
    assert!(
        !over.load(Ordering::SeqCst) && peak <= baseline + BOUND_MIB * 1024,
        "RSS grew from {} MiB to {} MiB, past the bound of +{BOUND_MIB} MiB",
        baseline / 1024,
        peak / 1024
    );
    assert!(
        next.load(Ordering::SeqCst) >= PROPOSALS,
        "not every proposal was made"
    );
    assert!(st.overloaded > 0, "backpressure never refused anything");
    // Nothing failed, and the cluster keeps applying what it admitted (at
    // ~1,000 writes per second it would take seconds to drain the budget:
    // the test does not wait for that).
    for p in &peers {
        assert!(p.status().fatal.is_none());
    }
    let mut w = leader.watch();
    let target = st.applied + 100;
    tokio::time::timeout(Duration::from_secs(30), w.wait_for(|s| s.applied >= target))
        .await
        .expect("the leader keeps applying")
        .unwrap();
    for p in &peers {
        p.shutdown().await.unwrap();
    }
}
