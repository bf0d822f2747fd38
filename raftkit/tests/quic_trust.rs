//! A client whose certificate the members refuse, or that refuses theirs,
//! over real QUIC on loopback: the connect or call fails at once with
//! `Error::Tls` (nothing was sent: not applied, not retryable), saying
//! which side refused what; and a member that refuses it (a stale member
//! left with another CA) does not stop the client from being served by
//! the others.

mod support;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use support::{forge_trust, free_addrs};

use raftkit::client::ClientOptions;
use raftkit::core::Role;
use raftkit::error::Applied;
use raftkit::prelude::*;
use raftkit::tls::{ClusterCa, Identity};
use tokio::time::Instant;

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "kv")]
pub struct Kv {
    map: BTreeMap<String, String>,
}

#[raftkit::state_machine]
impl Kv {
    #[write]
    fn put(&mut self, key: String, value: String) -> Option<String> {
        self.map.insert(key, value)
    }

    #[read]
    fn get(&self, key: String) -> Option<String> {
        self.map.get(&key).cloned()
    }
}

const TICK: Duration = Duration::from_millis(20);
/// Every call's (and connect's) timeout in these tests.
const TIMEOUT: Duration = Duration::from_secs(8);
/// A refused handshake is known in a few round trips: well within this.
/// (4 s: three handshakes at once, the server side of each with TLS built
/// without optimisation, on a loaded machine; half of [`TIMEOUT`], which a
/// call retried until its deadline, the defect, takes whole.)
const AT_ONCE: Duration = Duration::from_secs(4);

fn options() -> ClientOptions {
    ClientOptions::default().with_timeout(TIMEOUT)
}

/// A peer at `addr` of the cluster of `members` (a fresh one of its own
/// when `members` is empty), revoking the certificates of `crl`.
async fn node(
    addr: &str,
    dir: &Path,
    members: &[String],
    identity: Identity,
    crl: Option<&str>,
) -> Peer<Kv> {
    let builder = Kv::peer()
        .listen(addr)
        .data_dir(dir.join(addr))
        .identity(identity)
        .tick(TICK);
    let builder = if members.is_empty() {
        builder.bootstrap()
    } else {
        builder.bootstrap_members(members.to_vec())
    };
    let builder = match crl {
        Some(crl) => builder.revocation_list_pem(crl.as_bytes().to_vec()),
        None => builder,
    };
    builder.start().await.expect("peer starts")
}

async fn cluster(dir: &Path, ca: &ClusterCa, n: usize, crl: Option<&str>) -> Vec<Peer<Kv>> {
    let addrs = free_addrs(n);
    let mut peers = Vec::new();
    for addr in &addrs {
        let id = ca
            .issue_node(&format!("kv@{addr}"), &[])
            .expect("node cert");
        peers.push(node(addr, dir, &addrs, id, crl).await);
    }
    peers
}

fn addrs(peers: &[Peer<Kv>]) -> Vec<String> {
    peers
        .iter()
        .map(|p| p.local_addr().expect("addr").to_string())
        .collect()
}

async fn leader(peers: &[Option<Peer<Kv>>]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let leaders: Vec<usize> = (0..peers.len())
            .filter(|&i| {
                peers[i]
                    .as_ref()
                    .is_some_and(|p| p.status().role == Role::Leader)
            })
            .collect();
        if let [one] = leaders.as_slice() {
            return *one;
        }
        assert!(Instant::now() < deadline, "no single leader in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client certificate signed by `ca` (valid for client authentication)
/// that states no raftkit role: TLS accepts it, raftkit's acceptor closes
/// the connection (`CLOSE_REFUSED`).
fn client_without_a_role(ca: &ClusterCa) -> Identity {
    let dir = tempfile::tempdir().expect("tempdir");
    ca.write_to(dir.path()).expect("write ca");
    let key_pem = std::fs::read_to_string(dir.path().join("ca.key")).expect("ca key");
    let ca_key = rcgen::KeyPair::from_pem(&key_pem).expect("ca key parses");
    let issuer = rcgen::Issuer::from_ca_cert_der(ca.cert_der(), ca_key).expect("issuer");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        format!("{}nobody", raftkit::tls::NAME_URI_PREFIX)
            .try_into()
            .expect("ia5"),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    std::fs::write(dir.path().join("norole.pem"), cert.pem()).expect("write cert");
    std::fs::write(dir.path().join("norole.key"), key.serialize_pem()).expect("write key");
    Identity::load(dir.path(), "norole").expect("load")
}

/// `err` is a certificate error containing every one of `needles`, not
/// applied and not retryable, and came within [`AT_ONCE`] of `started`.
fn assert_tls(what: &str, err: &raftkit::Error, needles: &[&str], started: Instant) {
    assert!(
        matches!(err, raftkit::Error::Tls(m) if needles.iter().all(|n| m.contains(n))),
        "{what}: expected a certificate error saying {needles:?}, got {err:?}"
    );
    assert_eq!(err.applied(), Applied::No, "{what}: {err:?}");
    assert!(!err.is_retryable(), "{what}: {err:?}");
    assert!(
        started.elapsed() < AT_ONCE,
        "{what}: took {:?} (the call's timeout is {TIMEOUT:?})",
        started.elapsed()
    );
}

/// Found at stop 49: a client whose certificate the members refused (of
/// another CA, revoked, stating no role), or that refused theirs, failed
/// to connect with `Error::Transport` ("may have been applied",
/// retryable): a retry loop on `is_retryable()` spun for ever. Now every
/// case is `Error::Tls` naming who refused what, within a few round trips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_certificate_every_member_refuses_fails_at_once_with_a_certificate_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ClusterCa::generate("trust").expect("ca");
    let revoked = ca.issue_client("revoked").expect("client");
    let crl = ca
        .revocation_list_pem(&revoked.cert_chain()[..1], 1)
        .expect("crl");
    let peers = cluster(dir.path(), &ca, 3, Some(&crl)).await;
    let addrs = addrs(&peers);
    let other = ClusterCa::generate("other").expect("other ca");
    let cases = [
        (
            "a certificate of another CA",
            forge_trust(&other.issue_client("client").expect("client"), &ca),
            vec!["refused this client's certificate", "unknown_ca"],
        ),
        (
            "a client trusting another CA",
            other.issue_client("client").expect("client"),
            vec!["this client refused the certificate of", "unknown_ca"],
        ),
        (
            "a revoked certificate",
            revoked,
            vec!["refused this client's certificate", "revoked"],
        ),
        (
            "a certificate without a role",
            client_without_a_role(&ca),
            vec!["refused this client's certificate", "no raftkit role"],
        ),
    ];
    for (what, identity, mut needles) in cases {
        needles.push("all 3 members");
        let started = Instant::now();
        let err = KvClient::connect_with(&addrs, identity, options())
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: connected"));
        assert_tls(what, &err, &needles, started);
    }
    // The cluster serves a good client all along.
    let kv = KvClient::connect_with(&addrs, ca.issue_client("good").expect("client"), options())
        .await
        .expect("a good client connects");
    kv.put("k".into(), "v".into()).await.expect("served");
    for p in peers {
        p.shutdown().await.expect("clean shutdown");
    }
}

/// Found at stop 49: a connected client whose members came to refuse the
/// TLS handshake (here: its one member replaced by a node of another CA at
/// the same address) retried the call as a network failure until its
/// deadline and ended with `Error::Timeout` ("may have been applied"),
/// although nothing was sent. Now the call ends at once with `Error::Tls`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_every_member_refuses_ends_at_once_with_a_certificate_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ClusterCa::generate("trust").expect("ca");
    let peers = cluster(dir.path(), &ca, 1, None).await;
    let addrs = addrs(&peers);
    let kv = KvClient::connect_with(
        &addrs,
        ca.issue_client("client").expect("client"),
        options(),
    )
    .await
    .expect("client connects");
    kv.put("k".into(), "v".into()).await.expect("served");
    for p in peers {
        p.shutdown().await.expect("clean shutdown");
    }
    let other = ClusterCa::generate("other").expect("other ca");
    let name = format!("kv@{}", addrs[0]);
    let stranger = node(
        &addrs[0],
        &dir.path().join("other"),
        &[],
        other.issue_node(&name, &[]).expect("node cert"),
        None,
    )
    .await;
    let started = Instant::now();
    let err = kv
        .put("k".into(), "w".into())
        .await
        .expect_err("a node of another CA served the client");
    assert_tls(
        "a call",
        &err,
        &["this client refused the certificate of", "unknown_ca"],
        started,
    );
    stranger.shutdown().await.expect("clean shutdown");
}

/// One member that refuses the client (a stale member left with another
/// CA, at the address the client takes for the leader's) does not end its
/// calls, nor its connect: the others serve it. (With the client's
/// failover over refusals removed, the first write after the leader was
/// replaced ended with its `Error::Tls`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_of_another_ca_does_not_stop_the_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ClusterCa::generate("trust").expect("ca");
    let mut peers: Vec<Option<Peer<Kv>>> = cluster(dir.path(), &ca, 3, None)
        .await
        .into_iter()
        .map(Some)
        .collect();
    let addrs: Vec<String> = peers
        .iter()
        .flatten()
        .map(|p| p.local_addr().expect("addr").to_string())
        .collect();
    let first = leader(&peers).await;
    let kv = KvClient::connect_with(
        &addrs,
        ca.issue_client("client").expect("client"),
        options(),
    )
    .await
    .expect("client connects");
    kv.put("k".into(), "v".into()).await.expect("served");
    // The leader (where the client sends its writes) is replaced by a node
    // of another CA at its address.
    if let Some(p) = peers[first].take() {
        p.shutdown().await.expect("clean shutdown");
    }
    let other = ClusterCa::generate("other").expect("other ca");
    let name = format!("kv@{}", addrs[first]);
    let stale = node(
        &addrs[first],
        &dir.path().join("other"),
        &[],
        other.issue_node(&name, &[]).expect("node cert"),
        None,
    )
    .await;
    kv.put("k".into(), "w".into())
        .await
        .expect("the other members serve the write");
    assert_eq!(
        kv.get("k".into()).await.expect("and the read"),
        Some("w".into())
    );
    // A client connecting now, with the stale member first among the
    // addresses, is served too.
    let mut reordered = addrs.clone();
    reordered.swap(0, first);
    let late = KvClient::connect_with(
        &reordered,
        ca.issue_client("late").expect("client"),
        options(),
    )
    .await
    .expect("a client connects past the stale member");
    late.put("l".into(), "x".into()).await.expect("served");
    stale.shutdown().await.expect("clean shutdown");
    for p in peers.into_iter().flatten() {
        p.shutdown().await.expect("clean shutdown");
    }
}

/// Found at stop 49 (review of the failover over refusals): a leader that
/// refuses this client's certificate (here: it alone holds a revocation
/// list naming it) while the followers accept it. The followers answer
/// `NotLeader` pointing at the leader; once the leader's suspicion ran out
/// (`SUSPECT_FOR`) the client followed that hint at once, was sent past the
/// refusing leader to a follower again, and resent at round-trip speed
/// until its deadline, to end with `NotLeader` instead of saying that the
/// leader refused it. Now a hint at a member that refused this call is
/// stale (backed off, not followed), and the call ends with the leader's
/// `Error::Tls`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_refusing_the_client_ends_the_call_with_its_certificate_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ClusterCa::generate("trust").expect("ca");
    let client = ca.issue_client("client").expect("client");
    let crl = ca
        .revocation_list_pem(&client.cert_chain()[..1], 1)
        .expect("crl");
    let addrs = free_addrs(3);
    let mut peers = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let id = ca
            .issue_node(&format!("kv@{addr}"), &[])
            .expect("node cert");
        let crl = (i == 0).then_some(crl.as_str());
        peers.push(Some(node(addr, dir.path(), &addrs, id, crl).await));
    }
    // Node 0 (the one that refuses the client) leads.
    let to = peers[0].as_ref().expect("node 0").id();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = leader(&peers).await;
        if now == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "node 0 never led");
        if let Some(p) = peers[now].as_ref() {
            let _ = p.transfer_leadership(to).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A call longer than the leader's suspicion (`SUSPECT_FOR`: 2 s).
    let timeout = Duration::from_secs(4);
    let kv = KvClient::connect_with(
        &addrs,
        client,
        ClientOptions::default().with_timeout(timeout),
    )
    .await
    .expect("the followers accept the client");
    let err = kv
        .put("k".into(), "v".into())
        .await
        .expect_err("a leader that refuses the client served it");
    assert!(
        matches!(&err, raftkit::Error::Tls(m) if m.contains(&addrs[0]) && m.contains("revoked")),
        "expected the leader's certificate error, got {err:?}"
    );
    assert_eq!(err.applied(), Applied::No, "{err:?}");
    for p in peers.into_iter().flatten() {
        p.shutdown().await.expect("clean shutdown");
    }
}

/// Found at stop 49 (review of the failover over refusals): a watch
/// opening while one member refuses this client (a stale member of another
/// CA) and the other is only unreachable (an outage) ended at its deadline
/// with that one member's `Error::Tls`, not retryable: a caller that
/// re-subscribes on `is_retryable()` gave up for good. Now the watch ends
/// with a certificate error only when every member refused it; otherwise
/// retryable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_ends_retryable_when_one_member_refuses_and_the_other_is_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ClusterCa::generate("trust").expect("ca");
    let peers = cluster(dir.path(), &ca, 1, None).await;
    let mut members = addrs(&peers);
    // A second member nothing listens at: unreachable all along.
    members.extend(free_addrs(1));
    let client = raftkit::client::Client::connect_with_for::<Kv, _, _>(
        &members,
        ca.issue_client("client").expect("client"),
        ClientOptions::default().with_timeout(Duration::from_secs(4)),
    )
    .await
    .expect("client connects");
    KvClient::new(client.clone())
        .put("k".into(), "v".into())
        .await
        .expect("served");
    for p in peers {
        p.shutdown().await.expect("clean shutdown");
    }
    let other = ClusterCa::generate("other").expect("other ca");
    let name = format!("kv@{}", members[0]);
    let stale = node(
        &members[0],
        &dir.path().join("other"),
        &[],
        other.issue_node(&name, &[]).expect("node cert"),
        None,
    )
    .await;
    let err = client
        .watch::<Kv>(None)
        .await
        .err()
        .expect("no member could serve the watch");
    assert!(
        err.is_retryable() && !matches!(err, raftkit::Error::Tls(_)),
        "one member's refusal during an outage of the other: expected a retryable error, got {err:?}"
    );
    stale.shutdown().await.expect("clean shutdown");
}
