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
/// Loopback addresses for the unit tests' servers (the file raftkit's
/// tests share: below the ephemeral range, each handed out once).
#[cfg(test)]
#[path = "../../../raftkit/tests/support/ports.rs"]
mod test_ports;
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

/// Runs a cluster command so that its connect and its calls take at most
/// `--timeout` (default `default_secs`) in all: the connect's time is taken
/// out of the command's budget (stop 52: `kv put --timeout N` could take
/// about `2N`, `N` to connect and `N` more for the write).
async fn within<T>(
    cluster: &cli::ClusterArgs,
    default_secs: u64,
    command: impl std::future::Future<Output = T>,
) -> T {
    let secs = cluster.timeout.unwrap_or(default_secs).max(1);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    raftkit::client::by_deadline(deadline, command).await
}

async fn run(cli: Cli) -> Result<(), fail::Failure> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Put {
            key,
            value,
            ttl_ms,
            cluster,
        } => within(&cluster, 10, commands::put(&cluster, key, value, ttl_ms)).await,
        Command::Get { key, cluster } => within(&cluster, 10, commands::get(&cluster, key)).await,
        Command::Del { key, cluster } => within(&cluster, 10, commands::del(&cluster, key)).await,
        Command::Cas {
            key,
            old,
            new,
            cluster,
        } => within(&cluster, 10, commands::cas(&cluster, key, old, new)).await,
        Command::Scan { prefix, cluster } => {
            within(&cluster, 10, commands::scan(&cluster, prefix)).await
        }
        Command::Count { prefix, cluster } => {
            within(&cluster, 10, commands::count(&cluster, prefix)).await
        }
        Command::Watch {
            prefix,
            from,
            cluster,
        } => watch::run(&cluster, prefix, from).await,
        Command::Members { cluster } => within(&cluster, 10, commands::members(&cluster)).await,
        Command::AddServer { addr, cluster } => {
            within(&cluster, 60, commands::add_server(&cluster, addr)).await
        }
        Command::RemoveServer { addr, cluster } => {
            within(&cluster, 10, commands::remove_server(&cluster, addr)).await
        }
        Command::TransferLeader {
            addr,
            group: Some(group),
            cluster,
        } => within(&cluster, 10, shards::transfer_leader(&cluster, group, addr)).await,
        Command::TransferLeader {
            addr,
            group: None,
            cluster,
        } => within(&cluster, 10, commands::transfer_leader(&cluster, addr)).await,
        Command::Status { cluster } if cluster.sharded => {
            within(&cluster, 10, shards::status(&cluster)).await
        }
        Command::Status { cluster } => within(&cluster, 10, commands::status(&cluster)).await,
        // A balancer round and a move are answered once done (a move
        // waits for the learner's catch-up): their own longer defaults.
        Command::Balance { cluster } => within(&cluster, 60, shards::balance(&cluster)).await,
        Command::MoveReplica {
            group,
            from,
            to,
            cluster,
        } => {
            within(
                &cluster,
                raftkit::client::NODE_ADMIN_TIMEOUT.as_secs(),
                shards::move_replica(&cluster, group, from, to),
            )
            .await
        }
        Command::Certs(cli::CertsCommand::Init { dir }) => certs::init(&dir),
        Command::Certs(cli::CertsCommand::Issue { dir, name, role }) => {
            certs::issue(&dir, &name, role)
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(args) => bench::run(args).await,
    }
}
