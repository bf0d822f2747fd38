//! A fixed amount of work for profilers: the in-process, in-memory cluster
//! cell of `cluster` (three in-memory peers over the in-process transport,
//! proposers calling the leader's [`Peer`] directly), but running a fixed
//! number of writes instead of a fixed time, so that instruction counts
//! (`valgrind --tool=callgrind`) are comparable between builds.
//!
//! Environment:
//! - `RAFTKIT_PERWRITE_WRITES`: committed writes in total (default 200,000);
//! - `RAFTKIT_PERWRITE_PROPOSERS`: concurrent proposer tasks (default 64).
//!
//! Prints the writes, the wall time, ops/s, and the process CPU time per
//! write (all three peers and the proposers; divide by three for "per
//! node"). Instructions per write: run it under callgrind at two write
//! counts and divide the difference of the totals by the difference of the
//! writes (which cancels start-up and shutdown):
//!
//! ```text
//! RAFTKIT_PERWRITE_WRITES=20000  valgrind --tool=callgrind target/release/deps/perwrite-*
//! RAFTKIT_PERWRITE_WRITES=200000 valgrind --tool=callgrind target/release/deps/perwrite-*
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raftkit::core::Role;
use raftkit::prelude::*;
use raftkit::transport::{MemoryNetwork, Transport};

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "benchkv")]
pub struct Kv {
    map: BTreeMap<String, String>,
}

#[raftkit::state_machine]
impl Kv {
    #[write]
    fn put(&mut self, key: String, value: String) {
        self.map.insert(key, value);
    }

    #[read]
    fn get(&self, key: String) -> Option<String> {
        self.map.get(&key).cloned()
    }
}

const VALUE: &str = "0123456789abcdef"; // 16 bytes

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// utime + stime of this process in seconds (from `/proc/self/stat`).
fn process_cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    let Some(close) = stat.rfind(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let t = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (t(11) + t(12)) as f64 / 100.0
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
    if std::env::args().skip(1).any(|a| !a.starts_with('-') && a != "perwrite") {
        return;
    }
    let writes = env_usize("RAFTKIT_PERWRITE_WRITES", 200_000) as u64;
    let proposers = env_usize("RAFTKIT_PERWRITE_PROPOSERS", 64).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cluster")
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let peers = start_inproc().await;
        let leader = wait_leader(&peers).await;
        let client = KvClient::new(peers[leader].clone());
        let issued = Arc::new(AtomicU64::new(0));
        let cpu0 = process_cpu_secs();
        let t0 = Instant::now();
        let mut tasks = Vec::with_capacity(proposers);
        for p in 0..proposers {
            let client = client.clone();
            let issued = issued.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("k{p:04}");
                let mut done = 0u64;
                let mut errors = 0u64;
                while issued.fetch_add(1, Ordering::Relaxed) < writes {
                    match client.put(key.clone(), VALUE.to_string()).await {
                        Ok(()) => done += 1,
                        Err(_) => errors += 1,
                    }
                }
                (done, errors)
            }));
        }
        let mut done = 0;
        let mut errors = 0;
        for t in tasks {
            let (d, e) = t.await.expect("proposer task");
            done += d;
            errors += e;
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = process_cpu_secs() - cpu0;
        println!(
            "perwrite: {done} writes ({errors} errors) by {proposers} proposers in {secs:.3} s: \
             {:.0} ops/s; process CPU {cpu:.2} s = {:.2} µs/write ({:.2} µs/write/node)",
            done as f64 / secs,
            cpu * 1e6 / done.max(1) as f64,
            cpu * 1e6 / done.max(1) as f64 / 3.0,
        );
        for p in &peers {
            let _ = p.shutdown().await;
        }
    });
}
