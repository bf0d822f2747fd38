//! `kv certs`: the cluster CA and the certificates of nodes, clients and
//! administrators.
//!
//! A certificate directory made by `kv certs init DIR` holds `ca.pem`,
//! `ca.key` (whoever holds it can mint any certificate: protect it),
//! `client.pem` / `client.key` (a `client` certificate: data commands and
//! status) and `admin.pem` / `admin.key` (an `admin` certificate: also
//! membership and leadership). Node identities are `<name>.pem` /
//! `<name>.key` beside them, `node` certificates named `kv@<advertised
//! address>`. The roles are the trust model of `raftkit::tls`.

use std::path::Path;

use raftkit::tls::{CertRole, ClusterCa, Identity};
use tracing::info;

use crate::fail::Failure;

/// The name of the client identity in a certificate directory.
pub const CLIENT: &str = "client";

/// The name of the admin identity in a certificate directory.
pub const ADMIN: &str = "admin";

/// `kv certs init DIR`.
pub fn init(dir: &Path) -> Result<(), Failure> {
    if dir.join("ca.key").exists() {
        return Err(Failure::Failed(format!(
            "{} already holds a cluster CA (ca.key); refusing to overwrite it",
            dir.display()
        )));
    }
    let ca =
        ClusterCa::generate("kv").map_err(|e| Failure::Failed(format!("cannot make a CA: {e}")))?;
    ca.write_to(dir)
        .map_err(|e| Failure::Failed(format!("cannot write the CA: {e}")))?;
    for (name, role) in [(CLIENT, CertRole::Client), (ADMIN, CertRole::Admin)] {
        let identity = ca
            .issue_role(role, name, &[])
            .map_err(|e| Failure::Failed(format!("cannot issue the {role} certificate: {e}")))?;
        identity
            .write_to(dir, name)
            .map_err(|e| Failure::Failed(format!("cannot write the {role} certificate: {e}")))?;
    }
    let d = dir.display();
    println!("cluster CA:  {d}/ca.pem, {d}/ca.key (keep ca.key private)");
    println!("client:      {d}/client.pem, {d}/client.key (data commands, status)");
    println!(
        "admin:       {d}/admin.pem, {d}/admin.key (also add-server, remove-server, transfer-leader; keep private)"
    );
    println!(
        "nodes started with `kv serve --certs {d}` get their certificates issued from this CA"
    );
    Ok(())
}

/// `kv certs issue DIR NAME --role ROLE`.
pub fn issue(dir: &Path, name: &str, role: CertRole) -> Result<(), Failure> {
    check_name(name)?;
    if dir.join(format!("{name}.pem")).exists() {
        return Err(Failure::Failed(format!(
            "{}/{name}.pem already exists; refusing to overwrite it",
            dir.display()
        )));
    }
    issue_into(dir, name, role)?;
    let d = dir.display();
    println!("{d}/{name}.pem, {d}/{name}.key ({role} certificate, with {d}/ca.pem)");
    Ok(())
}

fn check_name(name: &str) -> Result<(), Failure> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(Failure::Usage(format!(
            "invalid certificate name {name:?}: a node is named kv@HOST:PORT, a client `client`"
        )));
    }
    Ok(())
}

/// Issues `name` with `role` from the CA in `dir` and writes it there.
fn issue_into(dir: &Path, name: &str, role: CertRole) -> Result<Identity, Failure> {
    let ca = ClusterCa::load(dir).map_err(|e| {
        Failure::Failed(format!(
            "no usable cluster CA in {} ({e}); make one with `kv certs init {}`",
            dir.display(),
            dir.display()
        ))
    })?;
    // Extra subject names for tools that check host names the usual way.
    let sans: Vec<String> = name
        .rsplit_once('@')
        .and_then(|(_, addr)| addr.rsplit_once(':'))
        .map(|(host, _)| host.trim_matches(['[', ']']).to_string())
        .filter(|h| !h.is_empty())
        .into_iter()
        .collect();
    let identity = ca
        .issue_role(role, name, &sans)
        .map_err(|e| Failure::Failed(format!("cannot issue a certificate for {name}: {e}")))?;
    write_beside_ca(&identity, dir, name)
        .map_err(|e| Failure::Failed(format!("cannot write the certificate for {name}: {e}")))?;
    Ok(identity)
}

/// Writes `<name>.key` then `<name>.pem` into `dir` by renaming them from a
/// private temporary directory: `ca.pem` is left alone (other nodes may be
/// reading it right now) and a reader never sees a half-written file.
fn write_beside_ca(identity: &Identity, dir: &Path, name: &str) -> Result<(), String> {
    let tmp = dir.join(format!(".issue-{}-{name}", std::process::id()));
    let result = (|| {
        identity.write_to(&tmp, name).map_err(|e| e.to_string())?;
        for ext in ["key", "pem"] {
            let file = format!("{name}.{ext}");
            std::fs::rename(tmp.join(&file), dir.join(&file)).map_err(|e| e.to_string())?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// The identity of the node `name` for `kv serve --certs DIR`: `DIR/<name>.pem`
/// if it exists, else issued from the CA in `DIR` when its key is there.
pub fn node_identity(dir: &Path, name: &str) -> Result<Identity, Failure> {
    if !dir.is_dir() {
        return Err(Failure::Failed(format!(
            "certificate directory {} does not exist (make one with `kv certs init {}`)",
            dir.display(),
            dir.display()
        )));
    }
    if dir.join(format!("{name}.pem")).exists() {
        return Identity::load(dir, name)
            .map_err(|e| Failure::Failed(format!("cannot load the certificate of {name}: {e}")));
    }
    if dir.join("ca.key").exists() {
        let identity = issue_into(dir, name, CertRole::Node)?;
        info!(%name, dir = %dir.display(), "issued this node's certificate from the cluster CA");
        return Ok(identity);
    }
    Err(Failure::Failed(format!(
        "no certificate for {name} in {} and no CA key to issue one: run `kv certs issue CA_DIR {name} --role node` and copy {name}.pem, {name}.key and ca.pem into {}",
        dir.display(),
        dir.display()
    )))
}

/// The client identity in `dir` (`ca.pem`, `client.pem`, `client.key`).
pub fn client_identity(dir: Option<&Path>) -> Result<Identity, Failure> {
    let dir = dir.ok_or_else(|| {
        Failure::Usage(
            "no client certificate: pass --certs DIR or set RAFTKIT_CERTS (a directory made by `kv certs init DIR`)"
                .into(),
        )
    })?;
    Identity::load(dir, CLIENT).map_err(|e| {
        Failure::Failed(format!(
            "cannot load the client certificate from {} ({e}); expected ca.pem, client.pem and client.key as made by `kv certs init`",
            dir.display()
        ))
    })
}

/// The admin identity in `dir` (`ca.pem`, `admin.pem`, `admin.key`), which
/// membership and leadership commands use. Its absence is said clearly: the
/// client certificate is never used instead (the cluster would refuse it).
pub fn admin_identity(dir: Option<&Path>, command: &str) -> Result<Identity, Failure> {
    let dir = dir.ok_or_else(|| {
        Failure::Usage(format!(
            "no admin certificate: `kv {command}` needs --certs DIR or RAFTKIT_CERTS naming a directory with admin.pem and admin.key (made by `kv certs init DIR`)"
        ))
    })?;
    if !dir.join(format!("{ADMIN}.pem")).exists() {
        return Err(Failure::Failed(format!(
            "no admin certificate in {d}: `kv {command}` changes the cluster and needs {d}/admin.pem and admin.key (an admin certificate; `kv certs init` writes one, or `kv certs issue CA_DIR admin --role admin` where the CA key is); the client certificate cannot do it",
            d = dir.display()
        )));
    }
    Identity::load(dir, ADMIN).map_err(|e| {
        Failure::Failed(format!(
            "cannot load the admin certificate from {} ({e}); expected ca.pem, admin.pem and admin.key",
            dir.display()
        ))
    })
}
