//! `kv serve`: one node of the cluster, until Ctrl-C or SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use raftkit::client::{Client, ClientOptions};
use raftkit::prelude::*;
use raftkit::runtime::persist::PeerMeta;
use raftkit::tls::Identity;
use tracing::{info, warn};

use crate::certs::node_identity;
use crate::cli::ServeArgs;
use crate::fail::{Failure, check_addr};
use crate::metrics;
use crate::page::{self, PageState};
use crate::store::Kv;

/// Runs a node until it is told to stop.
pub async fn run(args: ServeArgs) -> Result<(), Failure> {
    if let Some(shards) = args.shards {
        return crate::shards::serve(args, shards).await;
    }
    // Bind the metrics port first: a used port fails before any disk work.
    let metrics_listener = match &args.metrics {
        Some(addr) => {
            check_addr(addr, "--metrics")?;
            Some(
                tokio::net::TcpListener::bind(addr.as_str())
                    .await
                    .map_err(|e| Failure::Failed(format!("cannot serve metrics on {addr}: {e}")))?,
            )
        }
        None => None,
    };

    // The data directory: given, or the default one of the advertised name
    // (so that `kv serve --listen ADDR` alone also restarts).
    let data = args.data.clone().or_else(|| {
        let advertise = args.advertise.as_ref().or(args.listen.as_ref())?;
        Some(PathBuf::from("data").join(raftkit::identity::default_name(Kv::NAME, advertise)))
    });
    let existing = match &data {
        Some(dir) => PeerMeta::load(dir).map_err(|e| {
            Failure::Failed(format!(
                "cannot read the data directory {}: {e}",
                dir.display()
            ))
        })?,
        None => None,
    };
    let mut builder = Kv::peer()
        .tick(Duration::from_millis(args.tick_ms.max(1)))
        .snapshot_every(args.snapshot_every)
        .snapshot_log_ratio(args.snapshot_log_ratio)
        .batch_scheduling(!args.normal_scheduling)
        // kv's writes are a map update (plus the removal of the keys that
        // expired since the last write: many keys expiring at once make
        // that one write slow, on the node task if applied there); its
        // scans are reads, which stay on the apply thread. A lone write is
        // applied on the node task instead of two thread hand-offs (issue
        // 16).
        .apply_small_batches_inline(true);
    if let Some(path) = &args.crl {
        let pem = std::fs::read(path).map_err(|e| {
            Failure::Failed(format!(
                "cannot read the revocation list {}: {e}",
                path.display()
            ))
        })?;
        builder = builder.revocation_list_pem(pem);
    }
    let (data_dir, created) = match (existing, &data) {
        (Some(meta), Some(dir)) => {
            if args.bootstrap || !args.join.is_empty() {
                warn!(name = %meta.name, "the data directory already holds this node; --bootstrap/--join ignored");
            }
            if args.listen.as_ref().is_some_and(|l| *l != meta.listen) {
                warn!(name = %meta.name, listen = %meta.listen, "the data directory already holds this node; --listen ignored");
            }
            info!(name = %meta.name, dir = %dir.display(), "restarting from the data directory");
            builder = builder.data_dir(dir);
            (dir.clone(), false)
        }
        (_, data) => {
            let listen = args.listen.clone().ok_or_else(|| {
                Failure::Usage(match data {
                    Some(dir) => format!(
                        "{} holds no node yet: a new node needs --listen ADDR",
                        dir.display()
                    ),
                    None => {
                        "a new node needs --listen ADDR (a restart needs only --data DIR)".into()
                    }
                })
            })?;
            check_addr(&listen, "--listen")?;
            let advertise = args.advertise.clone().unwrap_or_else(|| listen.clone());
            check_addr(&advertise, "--advertise")?;
            for seed in &args.join {
                check_addr(seed, "--join")?;
            }
            let name = raftkit::identity::default_name(Kv::NAME, &advertise);
            let certs = args.certs.clone().ok_or_else(|| {
                Failure::Usage(format!(
                    "a new node needs certificates: pass --certs DIR (made by `kv certs init DIR`) or set RAFTKIT_CERTS; {name} is looked up there"
                ))
            })?;
            let identity = node_identity(&certs, &name)?;
            let dir = data
                .clone()
                .unwrap_or_else(|| PathBuf::from("data").join(&name));
            let created = !dir.exists();
            builder = builder
                .listen(listen)
                .advertise(advertise)
                .data_dir(&dir)
                .identity(identity);
            if args.bootstrap {
                builder = builder.bootstrap();
            } else if !args.join.is_empty() {
                builder = builder.join(args.join.clone());
            } else {
                info!(%name, "neither --bootstrap nor --join: waiting to be added with `kv add-server`");
            }
            (dir, created)
        }
    };

    let peer = match builder.start().await {
        Ok(peer) => peer,
        Err(e) => {
            if created {
                // Leave no half-made node behind: a retry starts afresh.
                let _ = std::fs::remove_dir_all(&data_dir);
            }
            return Err(start_failure(&e, &data_dir));
        }
    };
    let addr = peer.local_addr().map(|a| a.to_string()).unwrap_or_default();
    info!(name = %peer.name(), listen = %addr, data = %data_dir.display(), "serving");
    if let Some(listener) = metrics_listener {
        if let Ok(a) = listener.local_addr() {
            info!("metrics on http://{a}/metrics, status page on http://{a}/");
        }
        let state = Arc::new(PageState::default());
        let client = page_client(&peer, &data_dir).await;
        tokio::spawn(page::watch(peer.clone(), client, Arc::clone(&state)));
        tokio::spawn(metrics::serve(listener, peer.clone(), state));
    }

    let stop = wait_for_stop(&peer, &data_dir).await;
    info!(name = %peer.name(), "stopping");
    let shutdown = peer.shutdown().await;
    stop?;
    shutdown.map_err(|e| match e {
        raftkit::Error::Storage(reason) => storage_failure(&reason, &data_dir),
        e => Failure::Failed(format!("unclean shutdown: {e}")),
    })
}

/// A client of the cluster with this node's own identity, for the status
/// page to ask the other members for their status. `None` (the page then
/// shows this node's own view only) when it cannot be made.
async fn page_client(peer: &Peer<Kv>, data_dir: &Path) -> Option<Client> {
    let own = peer.local_addr()?.to_string();
    let identity = Identity::load(data_dir.join("tls"), "peer")
        .inspect_err(|e| warn!(error = %e, "status page: no identity to ask other members with"))
        .ok()?;
    let opts = ClientOptions::default().with_timeout(Duration::from_secs(2));
    // With the schema: the members may run a compatible older or newer `Kv`.
    Client::connect_with_for::<Kv, _, _>([own], identity, opts)
        .await
        .inspect_err(|e| warn!(error = %e, "status page: cannot ask other members"))
        .ok()
}

fn start_failure(e: &raftkit::Error, dir: &Path) -> Failure {
    let text = e.to_string();
    if text.contains("cannot listen") || text.contains("in use") {
        return Failure::Failed(format!("{text} (is another node running on that port?)"));
    }
    match e {
        raftkit::Error::Storage(_) => {
            Failure::Failed(format!("data directory {}: {text}", dir.display()))
        }
        _ => Failure::Failed(format!("cannot start the node: {text}")),
    }
}

/// What an operator reads when the node's storage failed: what happened,
/// that nothing acknowledged was lost, and what to do.
fn storage_failure(reason: &str, dir: &Path) -> Failure {
    let dir = dir.display();
    Failure::Failed(if reason.contains("storage full") {
        format!(
            "the disk holding {dir} is full: the node stopped without losing any acknowledged write; free some space and restart it with `kv serve --data {dir}` ({reason})"
        )
    } else {
        format!(
            "the node's storage failed and it stopped without acknowledging anything more; check the disk holding {dir}, then restart it with `kv serve --data {dir}` (dropping the log's cached pages at open is best effort: if anything else may be reading {dir}, on tmpfs, FUSE or NFS, or off Linux, reboot the machine or drop the page cache first: a failed fsync can leave data that never reached the disk readable in it) ({reason})"
        )
    })
}

/// Waits for Ctrl-C, SIGTERM or a fatal node error.
async fn wait_for_stop(peer: &Peer<Kv>, dir: &Path) -> Result<(), Failure> {
    // Not `peer.watch()`: its receivers wake at every batch the node
    // handles, and this one would wake the main thread each time.
    let fatal = async {
        peer.fault()
            .await
            .unwrap_or_else(|| "the node stopped".to_string())
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = terminate() => Ok(()),
        f = fatal => Err(storage_failure(&f, dir)),
    }
}

#[cfg(unix)]
pub(crate) async fn terminate() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
pub(crate) async fn terminate() {
    std::future::pending().await
}
