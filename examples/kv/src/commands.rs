//! The client commands: data (`put`, `get`, `del`, `cas`, `scan`, `count`) through
//! the generated `KvClient`, administration (`members`, `add-server`,
//! `remove-server`, `transfer-leader`, `status`) through the untyped
//! [`Client`]. Membership and leadership commands present the admin
//! certificate (`admin.pem`), everything else the client certificate.

use std::time::Duration;

use raftkit::client::wire::StatusReport;
use raftkit::client::{Client, ClientOptions};

use crate::certs::{admin_identity, client_identity};
use crate::cli::ClusterArgs;
use crate::fail::{Failure, check_addr};
use crate::store::{Kv, KvClient, Mismatch};

/// How long `status` and `members` wait for one member's report.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// The validated cluster addresses.
pub(crate) fn cluster_addrs(args: &ClusterArgs) -> Result<Vec<String>, Failure> {
    let addrs: Vec<String> = args
        .cluster
        .iter()
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    if addrs.is_empty() {
        return Err(Failure::Usage(
            "no cluster given: pass --cluster ADDR,... or set KV_CLUSTER".into(),
        ));
    }
    for a in &addrs {
        check_addr(a, "cluster")?;
    }
    Ok(addrs)
}

pub(crate) fn options(args: &ClusterArgs, default_secs: u64) -> ClientOptions {
    ClientOptions::default().with_timeout(Duration::from_secs(
        args.timeout.unwrap_or(default_secs).max(1),
    ))
}

async fn typed(args: &ClusterArgs) -> Result<(KvClient, Vec<String>), Failure> {
    let addrs = cluster_addrs(args)?;
    let identity = client_identity(args.certs.as_deref())?;
    let kv = KvClient::connect_with(&addrs, identity, options(args, 10))
        .await
        .map_err(|e| Failure::cluster(&e, &addrs))?;
    Ok((kv, addrs))
}

/// An untyped client presenting the client certificate (status, members).
async fn untyped(args: &ClusterArgs, default_secs: u64) -> Result<(Client, Vec<String>), Failure> {
    let addrs = cluster_addrs(args)?;
    let identity = client_identity(args.certs.as_deref())?;
    untyped_as(args, addrs, default_secs, identity).await
}

/// An untyped client presenting the admin certificate, for `command`.
async fn admin(
    args: &ClusterArgs,
    default_secs: u64,
    command: &str,
) -> Result<(Client, Vec<String>), Failure> {
    let addrs = cluster_addrs(args)?;
    let identity = admin_identity(args.certs.as_deref(), command)?;
    untyped_as(args, addrs, default_secs, identity).await
}

async fn untyped_as(
    args: &ClusterArgs,
    addrs: Vec<String>,
    default_secs: u64,
    identity: raftkit::tls::Identity,
) -> Result<(Client, Vec<String>), Failure> {
    // With the schema, as the typed client: accepted by a cluster running
    // a compatible older or newer `Kv` (during a rolling upgrade).
    let client =
        Client::connect_with_for::<Kv, _, _>(&addrs, identity, options(args, default_secs))
            .await
            .map_err(|e| Failure::cluster(&e, &addrs))?;
    Ok((client, addrs))
}

/// Closes the client's session (if a write opened one) before the process
/// exits, so that the cluster does not keep one session per CLI call until
/// it expires. Best effort: the command's outcome stands either way.
async fn close(kv: &KvClient) {
    if let Err(e) = kv.close().await {
        tracing::debug!(error = %e, "closing the session failed; the cluster will expire it");
    }
}

/// `kv put K V [--ttl-ms MS]`: prints `OK`.
pub async fn put(
    args: &ClusterArgs,
    key: String,
    value: String,
    ttl_ms: Option<u64>,
) -> Result<(), Failure> {
    if args.sharded {
        let (kv, addrs) = crate::shards::typed(args).await?;
        match ttl_ms {
            Some(ttl) => kv.put_ttl(key, value, ttl).await,
            None => kv.put(key, value).await,
        }
        .map_err(|e| Failure::cluster(&e, &addrs))?;
        println!("OK");
        return Ok(());
    }
    let (kv, addrs) = typed(args).await?;
    let r = match ttl_ms {
        Some(ttl) => kv.put_ttl(key, value, ttl).await,
        None => kv.put(key, value).await,
    };
    close(&kv).await;
    r.map_err(|e| Failure::cluster(&e, &addrs))?;
    println!("OK");
    Ok(())
}

/// `kv get K`: prints the value, or fails with code 3 if absent.
pub async fn get(args: &ClusterArgs, key: String) -> Result<(), Failure> {
    let value = if args.sharded {
        let (kv, addrs) = crate::shards::typed(args).await?;
        kv.get(key.clone())
            .await
            .map_err(|e| Failure::cluster(&e, &addrs))?
    } else {
        let (kv, addrs) = typed(args).await?;
        kv.get(key.clone())
            .await
            .map_err(|e| Failure::cluster(&e, &addrs))?
    };
    match value {
        Some(value) => {
            println!("{value}");
            Ok(())
        }
        None => Err(Failure::No(format!("{key:?} is absent"))),
    }
}

/// `kv del K`: prints the value it held, or fails with code 3 if absent.
pub async fn del(args: &ClusterArgs, key: String) -> Result<(), Failure> {
    let r = if args.sharded {
        let (kv, addrs) = crate::shards::typed(args).await?;
        kv.delete(key.clone())
            .await
            .map_err(|e| Failure::cluster(&e, &addrs))
    } else {
        let (kv, addrs) = typed(args).await?;
        let r = kv.delete(key.clone()).await;
        close(&kv).await;
        r.map_err(|e| Failure::cluster(&e, &addrs))
    };
    match r? {
        Some(old) => {
            println!("{old}");
            Ok(())
        }
        None => Err(Failure::No(format!("{key:?} is absent; nothing deleted"))),
    }
}

/// `kv cas K OLD NEW` (`OLD` = `-`: absent): prints `OK`, or fails with code
/// 3 and what the key holds.
pub async fn cas(args: &ClusterArgs, key: String, old: String, new: String) -> Result<(), Failure> {
    let old = (old != "-").then_some(old);
    let r = if args.sharded {
        let (kv, addrs) = crate::shards::typed(args).await?;
        kv.cas(key.clone(), old, new)
            .await
            .map_err(|e| Failure::cluster(&e, &addrs))
    } else {
        let (kv, addrs) = typed(args).await?;
        let r = kv.cas(key.clone(), old, new).await;
        close(&kv).await;
        r.map_err(|e| Failure::cluster(&e, &addrs))
    };
    match r? {
        Ok(()) => {
            println!("OK");
            Ok(())
        }
        Err(Mismatch(Some(current))) => Err(Failure::No(format!(
            "not swapped: {key:?} holds {current:?}"
        ))),
        Err(Mismatch(None)) => Err(Failure::No(format!("not swapped: {key:?} is absent"))),
    }
}

/// `kv scan PREFIX`: prints `key<TAB>value` lines.
pub async fn scan(args: &ClusterArgs, prefix: String) -> Result<(), Failure> {
    let pairs = if args.sharded {
        let (kv, addrs) = crate::shards::typed(args).await?;
        crate::shards::scan(&kv, &prefix)
            .await
            .map_err(|e| Failure::cluster(&e, &addrs))?
    } else {
        let (kv, addrs) = typed(args).await?;
        kv.scan(prefix)
            .await
            .map_err(|e| Failure::cluster(&e, &addrs))?
    };
    let mut out = String::new();
    for (k, v) in pairs {
        out.push_str(&k);
        out.push('\t');
        out.push_str(&v);
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

/// `kv count PREFIX`: prints how many keys start with PREFIX.
pub async fn count(args: &ClusterArgs, prefix: String) -> Result<(), Failure> {
    let n = if args.sharded {
        let (kv, addrs) = crate::shards::typed(args).await?;
        crate::shards::count(&kv, &prefix)
            .await
            .map_err(|e| Failure::cluster(&e, &addrs))?
    } else {
        let (kv, addrs) = typed(args).await?;
        kv.count(prefix)
            .await
            .map_err(|e| Failure::cluster(&e, &addrs))?
    };
    println!("{n}");
    Ok(())
}

/// One member's status, within [`STATUS_TIMEOUT`] and the command's
/// `--timeout` (`by_deadline`: a status that does not come ends
/// `Unavailable`, it changes nothing).
async fn status_of(client: &Client, addr: &str) -> Result<StatusReport, raftkit::Error> {
    let deadline = tokio::time::Instant::now() + STATUS_TIMEOUT;
    raftkit::client::by_deadline(deadline, client.status_of(addr)).await
}

/// The first report of a member of `addrs`, then the leader's if it names
/// one (members' progress is known on the leader only).
async fn best_view(client: &Client, addrs: &[String]) -> Result<StatusReport, Failure> {
    let mut first = None;
    let mut last_err = None;
    for a in addrs {
        match status_of(client, a).await {
            Ok(r) => {
                first = Some(r);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let Some(first) = first else {
        let e = last_err.unwrap_or(raftkit::Error::Unavailable("no member answered".into()));
        return Err(Failure::cluster(&e, addrs));
    };
    if first.role == "Leader" {
        return Ok(first);
    }
    if let Some(leader) = &first.leader
        && let Ok(r) = status_of(client, leader).await
    {
        return Ok(r);
    }
    Ok(first)
}

/// `kv members`: the configuration as the leader (or the first member that
/// answers) sees it.
pub async fn members(args: &ClusterArgs) -> Result<(), Failure> {
    let (client, addrs) = untyped(args, 10).await?;
    let view = best_view(&client, &addrs).await?;
    let rows: Vec<Vec<String>> = view
        .members
        .iter()
        .map(|(addr, voter, _)| {
            vec![
                format!("kv@{addr}"),
                addr.clone(),
                if *voter { "voter" } else { "learner" }.to_string(),
                if view.leader.as_deref() == Some(addr.as_str()) {
                    "leader".to_string()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    print!("{}", table(&["NAME", "ADDRESS", "KIND", ""], &rows));
    Ok(())
}

/// `kv add-server ADDR`.
pub async fn add_server(args: &ClusterArgs, addr: String) -> Result<(), Failure> {
    check_addr(&addr, "server")?;
    let (client, addrs) = admin(args, 60, "add-server").await?;
    let steps = client
        .add_server(&addr)
        .await
        .map_err(|e| Failure::cluster(&e, &addrs))?;
    for step in steps {
        println!("  {step}");
    }
    println!("OK: kv@{addr} is a voter");
    Ok(())
}

/// `kv remove-server ADDR`.
pub async fn remove_server(args: &ClusterArgs, addr: String) -> Result<(), Failure> {
    check_addr(&addr, "server")?;
    let (client, addrs) = admin(args, 10, "remove-server").await?;
    client
        .remove_server(&addr)
        .await
        .map_err(|e| Failure::cluster(&e, &addrs))?;
    println!("OK: kv@{addr} removed");
    Ok(())
}

/// `kv transfer-leader ADDR`.
pub async fn transfer_leader(args: &ClusterArgs, addr: String) -> Result<(), Failure> {
    check_addr(&addr, "server")?;
    let (client, addrs) = admin(args, 10, "transfer-leader").await?;
    client
        .transfer_leader(&addr)
        .await
        .map_err(|e| Failure::cluster(&e, &addrs))?;
    println!("OK: kv@{addr} leads");
    Ok(())
}

/// `kv status`: one row per member, each member asked for its own status.
pub async fn status(args: &ClusterArgs) -> Result<(), Failure> {
    let (client, addrs) = untyped(args, 10).await?;
    let view = best_view(&client, &addrs).await?;
    // Every member of the configuration, plus any given address outside it.
    let mut members: Vec<(String, bool)> = view
        .members
        .iter()
        .map(|(a, v, _)| (a.clone(), *v))
        .collect();
    for a in &addrs {
        if !members.iter().any(|(m, _)| m == a) {
            members.push((a.clone(), false));
        }
    }
    let tasks: Vec<_> = members
        .iter()
        .map(|(addr, _)| {
            let client = client.clone();
            let addr = addr.clone();
            // A spawned task does not inherit the command's deadline
            // (`--timeout`): it is passed on.
            let deadline = raftkit::client::current_deadline();
            tokio::spawn(async move {
                match deadline {
                    Some(d) => raftkit::client::by_deadline(d, status_of(&client, &addr)).await,
                    None => status_of(&client, &addr).await,
                }
            })
        })
        .collect();
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await.unwrap_or(Err(raftkit::Error::Unavailable(
            "status task failed".into(),
        ))));
    }
    let leader_commit = reports
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|r| r.role == "Leader")
        .max_by_key(|r| r.term)
        .map(|r| r.commit);
    let rows: Vec<Vec<String>> = members
        .iter()
        .zip(&reports)
        .map(|((addr, voter), report)| match report {
            Ok(r) => {
                let mut role = r.role.to_lowercase();
                if r.fatal.is_some() {
                    role = "failed (storage)".into();
                } else if r.halted.is_some() {
                    role.push_str(" (halted)");
                }
                if !view.members.iter().any(|(a, _, _)| a == addr) {
                    role.push_str(" (not a member)");
                } else if !voter {
                    role.push_str(" (learner)");
                }
                vec![
                    r.name.clone(),
                    addr.clone(),
                    role,
                    r.term.to_string(),
                    r.commit.to_string(),
                    r.applied.to_string(),
                    leader_commit
                        .map(|c| c.saturating_sub(r.applied).to_string())
                        .unwrap_or_else(|| "-".into()),
                    match (r.role.as_str(), r.last_contact_ms) {
                        ("Leader", _) => "-".into(),
                        (_, Some(ms)) => format!("{ms}ms"),
                        (_, None) => "never".into(),
                    },
                ]
            }
            Err(e) => vec![
                format!("kv@{addr}"),
                addr.clone(),
                "unreachable".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                one_word_error(e),
            ],
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "NAME",
                "ADDRESS",
                "ROLE",
                "TERM",
                "COMMIT",
                "APPLIED",
                "LAG",
                "LAST CONTACT"
            ],
            &rows
        )
    );
    Ok(())
}

fn one_word_error(e: &raftkit::Error) -> String {
    match e {
        raftkit::Error::Timeout => "(timed out)".into(),
        _ => "(no answer)".into(),
    }
}

/// Left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            l.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}
