//! The sharded store: `kv serve --shards N --members A,B,C` runs one node
//! of a sharded deployment (a [`MultiNode`] hosting the placement group 0
//! and data groups `1..=N`, every group replicated on every member), and
//! the client commands with `--sharded` (or `KV_SHARDED=1`) reach it
//! through a [`ShardedClient`]: `put`/`get`/`del`/`cas` go to the group
//! owning the key, `scan`/`count` ask every group and merge the answers in
//! key order, `status` prints one line per group and node, and
//! `transfer-leader --group G ADDR` / `balance` / `move-replica --group G
//! FROM TO` are the operator's commands (admin certificate). A node
//! started with `--shards` but outside `--members` is a spare: it forms
//! nothing and hosts the replicas moved to it.
//!
//! A restarted node finds its groups in its journal; `--shards` and
//! `--members` must be given again (formation is idempotent: the groups
//! exist already and the placement is written once).

use std::path::PathBuf;
use std::time::Duration;

use raftkit::client::ShardedClient;
use raftkit::multi::MultiNode;
use raftkit::multi::placement::PLACEMENT_GROUP;
use tracing::info;

use crate::certs::{admin_identity, client_identity, node_identity};
use crate::cli::{ClusterArgs, ServeArgs};
use crate::commands::{cluster_addrs, options};
use crate::fail::{Failure, check_addr};
use crate::store::{Kv, KvClient};

/// The typed client over the sharded deployment.
pub type ShardedKv = KvClient<ShardedClient<Kv>>;

/// `kv serve --shards N --members ADDR,...`: runs one node until Ctrl-C or
/// SIGTERM.
pub async fn serve(args: ServeArgs, shards: u64) -> Result<(), Failure> {
    if shards == 0 {
        return Err(Failure::Usage("--shards needs at least 1".into()));
    }
    let listen = args
        .listen
        .clone()
        .ok_or_else(|| Failure::Usage("a sharded node needs --listen ADDR".into()))?;
    check_addr(&listen, "--listen")?;
    let advertise = args.advertise.clone().unwrap_or_else(|| listen.clone());
    check_addr(&advertise, "--advertise")?;
    if args.members.is_empty() {
        return Err(Failure::Usage(
            "--shards needs --members ADDR,... (every node of the deployment, this one included, the same list on each)".into(),
        ));
    }
    for m in &args.members {
        check_addr(m, "--members")?;
    }
    // A node outside --members is a spare: it forms nothing and hosts the
    // replicas moved to it (`kv move-replica`).
    let spare = !args.members.contains(&advertise);
    let name = raftkit::identity::default_name(<Kv as raftkit::StateMachine>::NAME, &advertise);
    let dir = args
        .data
        .clone()
        .unwrap_or_else(|| PathBuf::from("data").join(&name));
    let mut builder = MultiNode::<Kv>::builder()
        .listen(listen)
        .advertise(advertise)
        .data_dir(&dir)
        .tick(Duration::from_millis(args.tick_ms.max(1)));
    // A restart finds its identity in the data directory.
    if !dir.join("tls").exists() {
        let certs = args.certs.clone().ok_or_else(|| {
            Failure::Usage(format!(
                "a new node needs certificates: pass --certs DIR (made by `kv certs init DIR`) or set RAFTKIT_CERTS; {name} is looked up there"
            ))
        })?;
        builder = builder.identity(node_identity(&certs, &name)?);
    }
    let node = builder
        .start()
        .await
        .map_err(|e| Failure::Failed(format!("cannot start the node: {e}")))?;
    if !spare {
        node.form_shards(shards, &args.members)
            .await
            .map_err(|e| Failure::Failed(format!("cannot form the shards: {e}")))?;
    }
    info!(name = %node.name(), listen = %node.local_addr(), data = %dir.display(), shards, "serving shards");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = crate::serve::terminate() => {}
    }
    info!(name = %node.name(), "stopping");
    node.shutdown()
        .await
        .map_err(|e| Failure::Failed(format!("unclean shutdown: {e}")))
}

/// The typed client of the sharded deployment (client certificate).
pub async fn typed(args: &ClusterArgs) -> Result<(ShardedKv, Vec<String>), Failure> {
    let addrs = cluster_addrs(args)?;
    let identity = client_identity(args.certs.as_deref())?;
    let client = ShardedClient::<Kv>::connect_with(&addrs, identity, options(args, 10))
        .await
        .map_err(|e| Failure::cluster(&e, &addrs))?;
    Ok((KvClient::new(client), addrs))
}

/// Every pair whose key starts with `prefix`, from every group, in key
/// order (each group answers its pairs in order; keys are in one group
/// only).
pub async fn scan(kv: &ShardedKv, prefix: &str) -> Result<Vec<(String, String)>, raftkit::Error> {
    let mut all = Vec::new();
    for (_, group) in kv.inner().group_clients().await? {
        all.extend(KvClient::new(group).scan(prefix.to_string()).await?);
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(all)
}

/// How many keys start with `prefix`, over every group.
pub async fn count(kv: &ShardedKv, prefix: &str) -> Result<u64, raftkit::Error> {
    let mut n = 0;
    for (_, group) in kv.inner().group_clients().await? {
        n += KvClient::new(group).count(prefix.to_string()).await?;
    }
    Ok(n)
}

/// `kv status --sharded`: one line per group and node: group, hash range,
/// node, role, leader, replicas, commit, applied.
pub async fn status(args: &ClusterArgs) -> Result<(), Failure> {
    let (kv, addrs) = typed(args).await?;
    let client = kv.inner();
    let routes = client.routes();
    let mut out = String::from("GROUP\tRANGE\tNODE\tROLE\tLEADER\tREPLICAS\tCOMMIT\tAPPLIED\n");
    for addr in &addrs {
        let groups = match client.node_groups(addr).await {
            Ok(g) => g,
            Err(e) => {
                out.push_str(&format!("-\t-\t{addr}\tunreachable ({e})\t-\t-\t-\t-\n"));
                continue;
            }
        };
        for (group, s) in groups {
            let range = if group == PLACEMENT_GROUP {
                "placement".to_string()
            } else {
                routes
                    .group(group)
                    .map(|sh| format!("{:016x}-{:016x}", sh.start, sh.end))
                    .unwrap_or_else(|| "?".into())
            };
            let replicas: Vec<&str> = s
                .members
                .iter()
                .filter(|(_, voter, _)| *voter)
                .map(|(a, _, _)| a.as_str())
                .collect();
            out.push_str(&format!(
                "{group}\t{range}\t{addr}\t{}\t{}\t{}\t{}\t{}\n",
                s.role.to_lowercase(),
                s.leader.as_deref().unwrap_or("-"),
                replicas.join(","),
                s.commit,
                s.applied
            ));
        }
    }
    print!("{out}");
    Ok(())
}

/// The sharded client presenting the admin certificate.
async fn admin(args: &ClusterArgs, command: &str) -> Result<(ShardedKv, Vec<String>), Failure> {
    let addrs = cluster_addrs(args)?;
    let identity = admin_identity(args.certs.as_deref(), command)?;
    let client = ShardedClient::<Kv>::connect_with(&addrs, identity, options(args, 10))
        .await
        .map_err(|e| Failure::cluster(&e, &addrs))?;
    Ok((KvClient::new(client), addrs))
}

/// `kv transfer-leader --group G ADDR`: moves group G's leadership.
pub async fn transfer_leader(args: &ClusterArgs, group: u64, addr: String) -> Result<(), Failure> {
    check_addr(&addr, "server")?;
    let (kv, addrs) = admin(args, "transfer-leader").await?;
    kv.inner()
        .transfer_leader(group, &addr)
        .await
        .map_err(|e| Failure::cluster(&e, &addrs))?;
    println!("OK: group {group} led by kv@{addr}");
    Ok(())
}

/// `kv move-replica --group G FROM TO`: moves group G's replica.
pub async fn move_replica(
    args: &ClusterArgs,
    group: u64,
    from: String,
    to: String,
) -> Result<(), Failure> {
    check_addr(&from, "from")?;
    check_addr(&to, "to")?;
    let (kv, addrs) = admin(args, "move-replica").await?;
    let summary = kv
        .inner()
        .move_replica(group, &from, &to)
        .await
        .map_err(|e| Failure::cluster(&e, &addrs))?;
    println!("OK: {summary}");
    Ok(())
}

/// `kv balance`: one round of the leader balancer on every node given;
/// prints each transfer started (`group<TAB>target node id`).
pub async fn balance(args: &ClusterArgs) -> Result<(), Failure> {
    let (kv, addrs) = admin(args, "balance").await?;
    let mut started = 0;
    for addr in &addrs {
        let transfers = kv
            .inner()
            .balance_leaders(addr)
            .await
            .map_err(|e| Failure::cluster(&e, std::slice::from_ref(addr)))?;
        for (group, target) in transfers {
            println!("{addr}\tgroup {group}\t-> node {target:016x}");
            started += 1;
        }
    }
    println!("{started} leadership transfers started");
    Ok(())
}
