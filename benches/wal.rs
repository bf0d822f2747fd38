//! Write-ahead log benchmark: append throughput and append-to-durable
//! latency through `GroupCommit`, against the raw fsync latency of the same
//! disk measured in the same run.
//!
//! `cargo bench --bench wal`. Environment:
//! - `RAFTKIT_BENCH_SECS`: seconds per configuration (default 2; the whole
//!   run takes about 13 times that, plus the build).
//! - `RAFTKIT_BENCH_DIR`: where to put the log (default: the system temporary
//!   directory). Benchmark the disk you will run on.
//!
//! Each appender proposes one entry at a time and waits for it to be durable,
//! as a client awaiting its write does. Two kinds of appender are measured:
//! callbacks (each completion issues the next append, as an async task woken
//! by a oneshot would; this is how the runtime drives storage) and blocking
//! OS threads (one per appender; on a small machine the thread wake-ups, not
//! the disk, become the bottleneck). A shared sequencer (a mutex held while
//! sending, as the node task that assigns log indexes would be) keeps the log
//! contiguous.

use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex, Weak};
use std::time::{Duration, Instant};

use raftkit::core::types::{Entry, Payload};
use raftkit::storage::{GroupCommit, Wal, WalOptions};

mod support;
use support::{bench_dir, percentile, raw_fsync};

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Row {
    appenders: usize,
    size: usize,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    per_fsync: f64,
}

fn run(appenders: usize, size: usize, secs: f64) -> Row {
    let dir = bench_dir();
    let wal = Wal::open(dir.path().join("wal"), WalOptions::default()).expect("open wal");
    let gc = Arc::new(GroupCommit::spawn(wal).expect("spawn"));
    let next_index = Arc::new(Mutex::new(1u64));
    let barrier = Arc::new(Barrier::new(appenders + 1));
    let deadline = Arc::new(Mutex::new(None::<Instant>));
    let mut handles = Vec::new();
    for _ in 0..appenders {
        let (gc, next_index, barrier, deadline) = (
            gc.clone(),
            next_index.clone(),
            barrier.clone(),
            deadline.clone(),
        );
        handles.push(std::thread::spawn(move || {
            let (tx, rx) = mpsc::channel::<Duration>();
            let mut lat = Vec::new();
            barrier.wait();
            let end = deadline.lock().unwrap().expect("deadline set");
            while Instant::now() < end {
                let start = Instant::now();
                {
                    let mut next = next_index.lock().unwrap();
                    let entry = Entry {
                        term: 1,
                        index: *next,
                        payload: Payload::Command(vec![0xAB; size].into()),
                    };
                    *next += 1;
                    let tx = tx.clone();
                    gc.append(
                        vec![entry],
                        Box::new(move |r| {
                            r.expect("append failed");
                            let _ = tx.send(start.elapsed());
                        }),
                    );
                }
                lat.push(rx.recv().expect("completion"));
            }
            lat
        }));
    }
    let before = gc.stats();
    *deadline.lock().unwrap() = Some(Instant::now() + Duration::from_secs_f64(secs));
    let t0 = Instant::now();
    barrier.wait();
    let mut lat: Vec<Duration> = Vec::new();
    for h in handles {
        lat.extend(h.join().expect("appender"));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let after = gc.stats();
    lat.sort_unstable();
    let syncs = (after.syncs - before.syncs).max(1);
    Row {
        appenders,
        size,
        per_sec: lat.len() as f64 / elapsed,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        per_fsync: (after.entries - before.entries) as f64 / syncs as f64,
    }
}

/// Callback-driven appenders: each completion issues that appender's next
/// append from the storage thread, the way an async client's task would be
/// woken, with no thread per appender.
fn run_closures(appenders: usize, size: usize, secs: f64) -> Row {
    struct Ctx {
        gc: Weak<GroupCommit<Wal>>,
        next: Mutex<u64>,
        end: Instant,
        size: usize,
        lat: Mutex<Vec<Duration>>,
        finished: Mutex<mpsc::Sender<()>>,
    }
    fn issue(ctx: Arc<Ctx>) {
        let Some(gc) = ctx.gc.upgrade() else { return };
        let start = Instant::now();
        let mut next = ctx.next.lock().unwrap();
        let entry = Entry {
            term: 1,
            index: *next,
            payload: Payload::Command(vec![0xAB; ctx.size].into()),
        };
        *next += 1;
        let c = ctx.clone();
        gc.append(
            vec![entry],
            Box::new(move |r| {
                r.expect("append failed");
                c.lat.lock().unwrap().push(start.elapsed());
                if Instant::now() < c.end {
                    issue(c);
                } else {
                    let _ = c.finished.lock().unwrap().send(());
                }
            }),
        );
    }

    let dir = bench_dir();
    let wal = Wal::open(dir.path().join("wal"), WalOptions::default()).expect("open wal");
    let gc = Arc::new(GroupCommit::spawn(wal).expect("spawn"));
    let (tx, rx) = mpsc::channel();
    let ctx = Arc::new(Ctx {
        gc: Arc::downgrade(&gc),
        next: Mutex::new(1),
        end: Instant::now() + Duration::from_secs_f64(secs),
        size,
        lat: Mutex::new(Vec::new()),
        finished: Mutex::new(tx),
    });
    let before = gc.stats();
    let t0 = Instant::now();
    for _ in 0..appenders {
        issue(ctx.clone());
    }
    for _ in 0..appenders {
        rx.recv().expect("appender finished");
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let after = gc.stats();
    let mut lat = std::mem::take(&mut *ctx.lat.lock().unwrap());
    lat.sort_unstable();
    let syncs = (after.syncs - before.syncs).max(1);
    Row {
        appenders,
        size,
        per_sec: lat.len() as f64 / elapsed,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        per_fsync: (after.entries - before.entries) as f64 / syncs as f64,
    }
}

fn print_table(title: &str, rows: &[Row]) {
    println!();
    println!("{title}");
    println!();
    println!("| appenders | entry  | appends/s | p50 µs | p99 µs | entries/fsync | × 1 appender |");
    println!("|----------:|-------:|----------:|-------:|-------:|--------------:|-------------:|");
    for r in rows {
        let base = rows
            .iter()
            .find(|b| b.size == r.size && b.appenders == 1)
            .map_or(1.0, |b| b.per_sec);
        let size = if r.size >= 1024 {
            format!("{} KiB", r.size / 1024)
        } else {
            format!("{} B", r.size)
        };
        println!(
            "| {:>9} | {:>6} | {:>9.0} | {:>6.0} | {:>6.0} | {:>13.1} | {:>11.1}× |",
            r.appenders,
            size,
            r.per_sec,
            micros(r.p50),
            micros(r.p99),
            r.per_fsync,
            r.per_sec / base
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let secs: f64 = std::env::var("RAFTKIT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let (raw_p50, raw_p99, raw_n) = raw_fsync(secs);
    let mut threads = Vec::new();
    let mut closures = Vec::new();
    for size in [16usize, 4096] {
        for appenders in [1usize, 16, 256] {
            threads.push(run(appenders, size, secs));
            closures.push(run_closures(appenders, size, secs));
        }
    }

    println!();
    println!("raftkit WAL benchmark ({secs} s per configuration)");
    println!(
        "raw fsync floor (16-byte append + fdatasync, same disk): p50 {:.0} µs, p99 {:.0} µs, {raw_n} samples",
        micros(raw_p50),
        micros(raw_p99)
    );
    print_table(
        "appenders as callbacks (async-style: each completion issues the next append)",
        &closures,
    );
    print_table(
        "appenders as blocking threads (one OS thread per appender)",
        &threads,
    );
    for (name, rows) in [("callbacks", &closures), ("threads", &threads)] {
        let one = rows.iter().find(|r| r.size == 16 && r.appenders == 1);
        let many = rows.iter().find(|r| r.size == 16 && r.appenders == 256);
        if let (Some(one), Some(many)) = (one, many) {
            println!(
                "targets ({name}): 256 appenders of 16 B = {:.1}× one appender (target ≥ 50×); \
                 one appender's p50 = {:.2}× raw fsync p50 (target ≤ 1.5×)",
                many.per_sec / one.per_sec,
                micros(one.p50) / micros(raw_p50).max(f64::MIN_POSITIVE)
            );
        }
    }
}
