//! raftkit's `kv` against etcd, on this machine, in one run.
//!
//! Both systems run as three processes on loopback with fsync on: a 3-member
//! etcd (Debian's `etcd-server`) and a 3-node `kv serve` cluster (QUIC with
//! mutual TLS, write-ahead log). Both are driven by closed-loop load
//! generators that work the same way (N tasks, one operation in flight each,
//! sharing one connection per 16 tasks, at most 8; 16-byte values; a warm-up,
//! then a measured window): `kv bench` for raftkit, [`etcd::load`] (on the
//! `etcd-client` crate) for etcd, each in its own process.
//!
//! Cells: puts at 1, 64 and 256 clients; linearizable gets at 64; and the
//! durable-put scaling curve at 1, 4, 16, 64, 256 and 1,024 clients. Floors
//! measured in the same run: fsync (16-byte write + fdatasync in the data
//! directory) and a QUIC request/response that skips Raft (`kv bench --op
//! status`). CPU per committed write per node: the cluster processes' CPU
//! time (from `/proc/PID/stat`) over the measured window, divided by the
//! writes acknowledged in it and by three.
//!
//! Each run starts fresh clusters; with `--runs N` every figure is the
//! median over the runs, and the systems alternate which goes first. The
//! table goes to stdout; the raw results (`results.json`) and the scaling
//! plot (`scaling.png`) to `--out`.

mod cluster;
mod etcd;
mod raftkit;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// What a load generator reports for one cell.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Cell {
    /// "etcd" or "raftkit".
    pub system: String,
    /// "put", "get" or "status".
    pub op: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Operations acknowledged in the measured window.
    pub ops: u64,
    /// Operations that failed in the window.
    pub errors: u64,
    /// The window.
    pub secs: f64,
    /// `ops / secs`.
    pub ops_per_s: f64,
    /// Latency percentiles in microseconds.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
    /// Cluster CPU per acknowledged operation per node, in microseconds.
    #[serde(default)]
    pub cpu_us_per_op_node: f64,
}

/// The command line.
#[derive(Parser, Debug, Clone)]
#[command(about = "raftkit's kv against a 3-member etcd, side by side")]
pub struct Args {
    /// The `kv` binary (built with `cargo build --release -p kv`).
    #[arg(long, default_value = "target/release/kv")]
    pub kv: PathBuf,
    /// The `etcd` binary.
    #[arg(long, default_value = "etcd")]
    pub etcd: PathBuf,
    /// Runs; every figure is the median over them.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Measured seconds per cell.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Warm-up seconds per cell.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// The scaling curve's concurrencies (durable puts), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256,1024")]
    pub curve: Vec<usize>,
    /// Skip the scaling curve (only the main cells).
    #[arg(long)]
    pub no_curve: bool,
    /// Run one system only (`raftkit` or `etcd`), e.g. to measure or
    /// profile a cell without the other; the table leaves the other's
    /// columns and the ratios empty.
    #[arg(long, value_parser = ["raftkit", "etcd"])]
    pub only: Option<String>,
    /// The main cells to run, as `op:clients`, comma-separated (default:
    /// all four, `put:1,put:64,put:256,get:64`), e.g. `--cells put:64`.
    #[arg(long, value_delimiter = ',', value_parser = parse_cell)]
    pub cells: Vec<(String, usize)>,
    /// Where the clusters keep their data (default: the system temporary
    /// directory). Benchmark the disk you will run on.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Where results.json and scaling.png go.
    #[arg(long, default_value = "target/sidebyside")]
    pub out: PathBuf,
    /// Internal: run as the etcd load generator (one cell) and print JSON.
    #[arg(long, hide = true)]
    pub etcd_load: Option<String>,
    /// Internal (with --etcd-load): endpoints, comma-separated.
    #[arg(long, hide = true, default_value = "")]
    pub endpoints: String,
    /// Internal (with --etcd-load): clients.
    #[arg(long, hide = true, default_value_t = 1)]
    pub clients: usize,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // The etcd load generator runs on one thread, as `kv bench` does: both
    // load generators cost the shared machine the same way.
    let mut builder = if args.etcd_load.is_some() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sidebyside: cannot start a runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        if let Some(op) = args.etcd_load.clone() {
            return etcd::load_main(&args, &op).await;
        }
        run(args).await
    });
    rt.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sidebyside: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Every cell of one system in one run.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SystemRun {
    /// The main cells, in table order.
    pub cells: Vec<Cell>,
    /// The scaling curve (durable puts).
    pub curve: Vec<Cell>,
}

/// One run of both systems with the floors measured beside them.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Run {
    /// etcd's cells.
    pub etcd: SystemRun,
    /// raftkit's cells.
    pub raftkit: SystemRun,
    /// fsync p50 (16-byte write + fdatasync), microseconds.
    pub fsync_p50_us: u64,
    /// QUIC request/response p50 through the kv client, microseconds.
    pub quic_rtt_p50_us: u64,
}

/// Entries between two snapshots, on both sides: etcd 3.4's default
/// `--snapshot-count`. Every snapshot serializes the whole state, which the
/// puts of a run grow to hundreds of thousands of keys: raftkit's own
/// default (10,000) would snapshot ten times as often as etcd.
pub const SNAPSHOT_EVERY: u64 = 100_000;

/// The main cells: (op, clients).
pub const CELLS: [(&str, usize); 4] = [("put", 1), ("put", 64), ("put", 256), ("get", 64)];

/// Parses one `--cells` item, `op:clients` (op `put` or `get`).
fn parse_cell(s: &str) -> Result<(String, usize), String> {
    let (op, n) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}`: expected op:clients, e.g. put:64"))?;
    if op != "put" && op != "get" {
        return Err(format!("`{op}`: the op is put or get"));
    }
    let n: usize = n
        .parse()
        .map_err(|e| format!("`{n}`: clients must be a number ({e})"))?;
    if n == 0 {
        return Err("clients must be at least 1".into());
    }
    Ok((op.to_string(), n))
}

impl Args {
    /// The main cells this run measures: `--cells`, or all of [`CELLS`].
    pub fn main_cells(&self) -> Vec<(String, usize)> {
        if self.cells.is_empty() {
            CELLS.iter().map(|&(op, n)| (op.to_string(), n)).collect()
        } else {
            self.cells.clone()
        }
    }

    /// Whether this run includes `system` (see `--only`).
    pub fn runs_system(&self, system: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == system)
    }
}

async fn run(args: Args) -> Result<(), String> {
    if !args.kv.exists() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p kv` (or pass --kv)",
            args.kv.display()
        ));
    }
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let machine = report::machine();
    eprintln!("machine: {machine}");
    let mut runs = Vec::new();
    for r in 0..args.runs.max(1) {
        eprintln!("== run {} of {}", r + 1, args.runs.max(1));
        let base = match &args.data {
            Some(d) => tempfile::tempdir_in(d),
            None => tempfile::tempdir(),
        }
        .map_err(|e| format!("cannot make a data directory: {e}"))?;
        let mut run = Run {
            fsync_p50_us: cluster::fsync_p50_us(base.path())?,
            ..Run::default()
        };
        // Alternate which system goes first, so drift on a shared machine
        // does not always favour the same one.
        for system in if r % 2 == 0 {
            ["etcd", "raftkit"]
        } else {
            ["raftkit", "etcd"]
        } {
            if !args.runs_system(system) {
                continue;
            }
            if system == "etcd" {
                run.etcd = etcd::run_all(&args, &base.path().join("etcd")).await?;
            } else {
                let (sys, rtt) = raftkit::run_all(&args, &base.path().join("kv")).await?;
                run.raftkit = sys;
                run.quic_rtt_p50_us = rtt;
            }
        }
        runs.push(run);
    }
    let json = serde_json::to_string_pretty(&runs).map_err(|e| e.to_string())?;
    let results = args.out.join("results.json");
    std::fs::write(&results, json).map_err(|e| format!("{}: {e}", results.display()))?;
    let median = report::median_run(&runs);
    print!("{}", report::table(&median, &machine, runs.len()));
    if !args.no_curve {
        let png = args.out.join("scaling.png");
        match report::plot(&median, &png) {
            Ok(()) => println!("scaling plot: {}", png.display()),
            Err(e) => eprintln!("sidebyside: no plot: {e}"),
        }
    }
    println!("raw results: {}", results.display());
    Ok(())
}
