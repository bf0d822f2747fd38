//! `kv`: a replicated key-value store on raftkit, its command line, and a
//! self-checking demo.
//!
//! - `kv serve` runs one node (a raftkit [`Peer`](raftkit::runtime::Peer)
//!   of the [`store::Kv`] state machine) over QUIC with mutual TLS;
//! - `kv put/get/del/cas/scan/count` talk to a cluster through the generated
//!   `KvClient`;
//! - `kv members/add-server/remove-server/transfer-leader/status` administer
//!   it;
//! - `kv certs init/issue` make the cluster CA and certificates;
//! - `kv demo` runs a 3-node cluster in this process through a workload, a
//!   leader failure and a restart, and checks the history.
//!
//! Errors are one line on stderr and a non-zero exit code (see
//! [`fail::Failure`] for the codes); nothing here panics on user input or
//! network data.

mod bench;
mod certs;
mod cli;
mod commands;
mod demo;
mod fail;
mod metrics;
mod page;
mod serve;
mod shards;
mod store;
mod watch;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(match cli.command {
        // One request's way: the client's `raftkit.call{request_id}` span,
        // and on the serving nodes the leader's `raftkit.request` span with
        // the same id and the `raftkit.apply` span of its entry.
        _ if cli.verbose => "info,raftkit=debug",
        Command::Serve(_) => "info",
        // The demo kills nodes on purpose: the warnings that follow would
        // drown its output.
        Command::Demo(_) => "error",
        _ => "warn",
    });
    // `kv bench` shares the machine with the cluster it loads: on one
    // thread its tasks hand each other work without waking a second worker
    // (measured at 64 clients: about 6.0 instead of 7.2 us of CPU per put;
    // the issue 16 closing note), and one thread carries far more puts than
    // a cluster on the same machine can commit.
    let mut builder = match &cli.command {
        Command::Bench(_) => tokio::runtime::Builder::new_current_thread(),
        Command::Serve(args) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(args.worker_threads());
            if !args.normal_scheduling {
                // The node's own threads do the same (`batch_scheduling`):
                // see `ServeArgs::normal_scheduling`. Not fatal: a refused
                // thread keeps the normal policy.
                builder.on_thread_start(|| {
                    let _ = raftkit::runtime::set_batch_scheduling();
                });
            }
            builder
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kv: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for background tasks (open connections, timers).
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("kv: {}", failure.one_line());
            ExitCode::from(failure.code())
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default: `default`).
fn init_tracing(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

async fn run(cli: Cli) -> Result<(), fail::Failure> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Put {
            key,
            value,
            ttl_ms,
            cluster,
        } => commands::put(&cluster, key, value, ttl_ms).await,
        Command::Get { key, cluster } => commands::get(&cluster, key).await,
        Command::Del { key, cluster } => commands::del(&cluster, key).await,
        Command::Cas {
            key,
            old,
            new,
            cluster,
        } => commands::cas(&cluster, key, old, new).await,
        Command::Scan { prefix, cluster } => commands::scan(&cluster, prefix).await,
        Command::Count { prefix, cluster } => commands::count(&cluster, prefix).await,
        Command::Watch {
            prefix,
            from,
            cluster,
        } => watch::run(&cluster, prefix, from).await,
        Command::Members { cluster } => commands::members(&cluster).await,
        Command::AddServer { addr, cluster } => commands::add_server(&cluster, addr).await,
        Command::RemoveServer { addr, cluster } => commands::remove_server(&cluster, addr).await,
        Command::TransferLeader {
            addr,
            group: Some(group),
            cluster,
        } => shards::transfer_leader(&cluster, group, addr).await,
        Command::TransferLeader {
            addr,
            group: None,
            cluster,
        } => commands::transfer_leader(&cluster, addr).await,
        Command::Status { cluster } if cluster.sharded => shards::status(&cluster).await,
        Command::Status { cluster } => commands::status(&cluster).await,
        Command::Balance { cluster } => shards::balance(&cluster).await,
        Command::MoveReplica {
            group,
            from,
            to,
            cluster,
        } => shards::move_replica(&cluster, group, from, to).await,
        Command::Certs(cli::CertsCommand::Init { dir }) => certs::init(&dir),
        Command::Certs(cli::CertsCommand::Issue { dir, name, role }) => {
            certs::issue(&dir, &name, role)
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(args) => bench::run(args).await,
    }
}
