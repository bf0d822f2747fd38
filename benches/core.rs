//! Benchmarks of the pure Raft core.
//!
//! 1. Proposals per second through a 3-node cluster of cores in one thread,
//!    no faults, messages delivered at once and writes treated as durable at
//!    once: the cost of the protocol alone.
//! 2. The cost of one `step` of a follower receiving an AppendEntries of 64
//!    entries (and taking its Ready).
//!
//! Each figure is the median of several runs. `cargo bench --bench core`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use raftkit::core::{Body, Config, Configuration, Entry, Message, Payload, Raft, Restored, Role};

const RUNS: usize = 7;

fn cluster(n: u64) -> Vec<Raft> {
    let conf = Configuration::new(1..=n);
    (1..=n)
        .map(|id| {
            let mut cfg = Config::new(id);
            cfg.snapshot_entries = 0;
            Raft::new(cfg, Restored::bootstrap(conf.clone())).expect("valid config")
        })
        .collect()
}

/// Drains every node's Ready until quiet; returns entries applied.
fn pump(nodes: &mut [Raft], inbox: &mut VecDeque<Message>) -> usize {
    let mut applied = 0;
    loop {
        let mut progressed = false;
        for (i, node) in nodes.iter_mut().enumerate() {
            while node.has_ready() {
                progressed = true;
                let rd = node.ready();
                inbox.extend(rd.messages);
                // Durable at once.
                node.on_persisted(rd.persist_marker);
                inbox.extend(rd.persisted_messages);
                if i == 0 {
                    applied += rd.committed_entries.len();
                }
            }
        }
        while let Some(m) = inbox.pop_front() {
            progressed = true;
            let to = (m.to - 1) as usize;
            nodes[to].step(m);
        }
        if !progressed {
            return applied;
        }
    }
}

fn elect(nodes: &mut [Raft], inbox: &mut VecDeque<Message>) {
    while nodes[0].role() != Role::Leader {
        nodes[0].tick();
        pump(nodes, inbox);
    }
    pump(nodes, inbox);
}

fn proposals_per_second(batch: usize, total: usize) -> f64 {
    let mut nodes = cluster(3);
    let mut inbox = VecDeque::new();
    elect(&mut nodes, &mut inbox);
    let payload = vec![7u8; 16];
    let start = Instant::now();
    let mut applied = 0;
    while applied < total {
        for _ in 0..batch {
            nodes[0].propose(payload.clone()).expect("leader");
        }
        applied += pump(&mut nodes, &mut inbox);
    }
    applied as f64 / start.elapsed().as_secs_f64()
}

fn step_append_64() -> Duration {
    let mut follower = cluster(3).remove(1);
    let entries: Vec<Entry> = (2..66)
        .map(|index| Entry {
            term: 2,
            index,
            payload: Payload::Command(vec![1u8; 16].into()),
        })
        .collect();
    let msg = |prev_index: u64, entries: Vec<Entry>| Message {
        from: 1,
        to: 2,
        term: 2,
        body: Body::AppendEntries {
            prev_index,
            prev_term: if prev_index == 1 { 1 } else { 2 },
            entries,
            commit: 0,
        },
    };
    // Warm up and measure steps that each append 64 fresh entries.
    let rounds = 2_000u64;
    let mut batches = Vec::with_capacity(rounds as usize);
    for r in 0..rounds {
        let shifted: Vec<Entry> = entries
            .iter()
            .map(|e| Entry {
                index: e.index + r * 64,
                ..e.clone()
            })
            .collect();
        batches.push(msg(1 + r * 64, shifted));
    }
    let start = Instant::now();
    for m in batches {
        follower.step(m);
        let rd = follower.ready();
        follower.on_persisted(rd.persist_marker);
        black_box(rd.persisted_messages);
    }
    start.elapsed() / rounds as u32
}

/// How long the apply task pauses to serialize a state of about `bytes`
/// bytes (the node task itself never pauses for a snapshot).
fn snapshot_pause(bytes: usize) -> (usize, Duration) {
    use raftkit::StateMachine;
    use raftkit::sim::kv::SimKv;
    let mut kv = SimKv::default();
    // postcard varints: ~10 bytes per (key, value) pair of large u64s.
    for k in 0..(bytes / 10) as u64 {
        kv.put(k, u64::MAX - k);
    }
    let start = Instant::now();
    let data = kv.snapshot().expect("snapshot");
    (data.len(), start.elapsed())
}

fn median<T: PartialOrd + Copy>(mut xs: Vec<T>) -> T {
    xs.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    xs[xs.len() / 2]
}

fn main() {
    println!("raftkit core benchmarks (median of {RUNS} runs)\n");
    println!("| workload | figure |");
    println!("|---|---|");
    for batch in [1usize, 64, 256] {
        let ops = median(
            (0..RUNS)
                .map(|_| proposals_per_second(batch, 200_000))
                .collect(),
        );
        println!(
            "| 3-node in-memory cluster, {batch} proposals per round | {ops:>12.0} proposals/s |"
        );
    }
    for mb in [1usize, 16] {
        let runs: Vec<(usize, Duration)> = (0..3).map(|_| snapshot_pause(mb << 20)).collect();
        let size = runs[0].0;
        let pause = median(runs.into_iter().map(|r| r.1).collect());
        println!(
            "| apply task pause to serialize a {:.1} MB state (postcard) | {:>9.2} ms |",
            size as f64 / (1 << 20) as f64,
            pause.as_secs_f64() * 1e3
        );
    }
    let step = median((0..RUNS).map(|_| step_append_64()).collect());
    println!(
        "| follower step: AppendEntries of 64 entries (+ ready) | {:>9.2} µs |",
        step.as_secs_f64() * 1e6
    );
}
