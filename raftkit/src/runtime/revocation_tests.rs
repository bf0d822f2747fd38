//! Certificate revocation lists over real QUIC on loopback (see
//! [`crate::tls`], Revocation): a node started with a list refuses, at the
//! TLS handshake, a listed node certificate (no peer link, no adding
//! itself back with `AddServer`, which every node certificate may do for
//! its own name) and a listed client certificate; certificates the list
//! does not name still work, and a client with a list refuses a listed
//! server. A bad list fails the start, it never panics.

use crate::test_ports::free_addr;
use std::time::Duration;

use crate::client::{Client, ClientOptions};
use crate::core::Role;
use crate::prelude::*;
use crate::tls::{ClusterCa, Identity, PEER_ALPN};

use super::test_gate::until;

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "crl")]
struct Tally {
    n: u64,
}

#[crate::state_machine]
impl Tally {
    #[write]
    fn bump(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

/// Bounds every call of these tests.
const DEADLINE: Duration = Duration::from_secs(10);

/// A timeout under [`DEADLINE`]: a refusal is a TLS error at once, not
/// retried. (It was 3 s: the connect's handshake must reach the refusal
/// within it, or the error is the timeout's, and a loaded CI machine could
/// take that long.)
fn short() -> ClientOptions {
    ClientOptions::default().with_timeout(Duration::from_secs(8))
}

/// A one-node cluster at a fresh address, leading, started with the
/// revocation list `crl`; its address and node identity.
async fn leader(
    ca: &ClusterCa,
    crl: Option<&str>,
) -> (crate::runtime::Peer<Tally>, String, Identity) {
    let addr = free_addr();
    let node = ca.issue_node(&format!("crl@{addr}"), &[]).expect("node");
    let mut builder = Tally::peer()
        .in_memory()
        .listen(addr.clone())
        .bootstrap()
        .identity(node.clone())
        .tick(Duration::from_millis(20));
    if let Some(crl) = crl {
        builder = builder.revocation_list_pem(crl.as_bytes());
    }
    let peer = builder.start().await.expect("peer starts");
    until("the peer leads", || {
        (peer.status().role == Role::Leader).then_some(())
    })
    .await;
    (peer, addr, node)
}

/// Dials `addr` with `identity` on the peer protocol's ALPN, as a peer
/// link does, and returns how it ended: closed (Err, with the reason) or
/// up (Ok, the acceptor answered a stream without closing the connection).
async fn dial_peer_alpn(identity: &Identity, addr: &str) -> Result<(), String> {
    let config = crate::transport::quic::quic_client_config(identity, PEER_ALPN)
        .map_err(|e| format!("config: {e}"))?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("bind address"))
        .map_err(|e| format!("endpoint: {e}"))?;
    endpoint.set_default_client_config(config);
    let target = addr.parse().map_err(|e| format!("address: {e}"))?;
    let attempt = async {
        let conn = endpoint
            .connect(target, crate::tls::CLUSTER_SAN)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        // With TLS 1.3 the client's handshake may end before the server
        // judged its certificate: a stream round trip waits for that.
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&[0]).await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        let read = recv.read(&mut byte).await;
        match (read, conn.close_reason()) {
            (_, Some(reason)) => Err(reason.to_string()),
            (Err(e), None) => Err(e.to_string()),
            (Ok(_), None) => Ok(()),
        }
    };
    let out = tokio::time::timeout(DEADLINE, attempt)
        .await
        .unwrap_or_else(|_| Err("no outcome in time".into()));
    endpoint.close(0u32.into(), b"done");
    out
}

/// A removed (or leaked) node certificate the leader's list revokes cannot
/// open a peer link nor add itself back; an unrevoked node certificate of
/// the same CA still joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_certificate_can_neither_link_nor_add_itself() {
    let ca = ClusterCa::generate("crl").expect("ca");
    let retired_addr = free_addr();
    let retired = ca
        .issue_node(&format!("crl@{retired_addr}"), &[])
        .expect("retired node");
    let crl = ca
        .revocation_list_pem(&retired.cert_chain()[..1], 1)
        .expect("crl");
    let (a, a_addr, _) = leader(&ca, Some(&crl)).await;

    // The peer protocol: refused at the handshake.
    let link = dial_peer_alpn(&retired, &a_addr).await;
    match &link {
        Err(e) => assert!(
            e.to_lowercase().contains("revoked"),
            "the revoked node's link was refused, but not for its revocation: {e}"
        ),
        Ok(()) => panic!("a revoked node certificate opened a peer link"),
    }

    // Adding itself, as `join` does: refused at the handshake too.
    let joined = async {
        let client =
            Client::connect_with_for::<Tally, _, _>([&a_addr], retired.clone(), short()).await?;
        client.add_server(&retired_addr).await
    };
    match tokio::time::timeout(DEADLINE, joined).await {
        // The member's TLS alert reaches the client: a certificate error
        // (not applied, not retried) saying the certificate is revoked.
        Ok(Err(Error::Tls(m))) if m.contains("revoked") => {}
        Ok(Err(e)) => panic!("refused with an unclear error: {e:?}"),
        Ok(Ok(steps)) => panic!("a revoked node certificate added itself: {steps:?}"),
        Err(_) => panic!("adding a revoked node had no outcome in time"),
    }
    assert_eq!(a.status().members.len(), 1, "the membership changed");

    // An unrevoked node certificate of the same CA joins as before.
    let c_addr = free_addr();
    let c_identity = ca
        .issue_node(&format!("crl@{c_addr}"), &[])
        .expect("node c");
    let c = Tally::peer()
        .in_memory()
        .listen(c_addr.clone())
        .join([a_addr.clone()])
        .identity(c_identity)
        .tick(Duration::from_millis(20))
        .revocation_list_pem(crl.as_bytes())
        .start()
        .await
        .expect("c starts");
    until("c joins as a voter", || {
        a.status()
            .members
            .iter()
            .any(|m| m.addr.as_deref() == Some(c_addr.as_str()) && m.voter)
            .then_some(())
    })
    .await;
    c.shutdown().await.expect("c stops");
    a.shutdown().await.expect("a stops");
}

/// A revoked client certificate's calls fail saying so; another client
/// certificate of the CA still writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_is_refused_and_others_still_work() {
    let ca = ClusterCa::generate("crl").expect("ca");
    let leaked = ca.issue_client("leaked").expect("leaked client");
    let kept = ca.issue_client("kept").expect("kept client");
    let crl = ca
        .revocation_list_pem(&leaked.cert_chain()[..1], 7)
        .expect("crl");
    let (a, a_addr, _) = leader(&ca, Some(&crl)).await;

    let refused = async {
        let client = TallyClient::connect_with([&a_addr], leaked, short()).await?;
        client.bump().await
    };
    match tokio::time::timeout(DEADLINE, refused).await {
        // The member's TLS alert reaches the client: a certificate error
        // (not applied, not retried) saying the certificate is revoked.
        Ok(Err(Error::Tls(m))) if m.contains("revoked") => {}
        Ok(Err(e)) => panic!("refused with an unclear error: {e:?}"),
        Ok(Ok(n)) => panic!("a revoked client certificate wrote (count {n})"),
        Err(_) => panic!("the revoked client's write had no outcome in time"),
    }

    let client = TallyClient::connect_with([&a_addr], kept, short())
        .await
        .expect("the unrevoked client connects");
    let n = tokio::time::timeout(DEADLINE, client.bump())
        .await
        .expect("a write in time")
        .expect("the unrevoked client writes");
    assert_eq!(n, 1, "the revoked client's write was applied");
    a.shutdown().await.expect("a stops");
}

/// A client carrying a list refuses a server whose node certificate it
/// revokes (the dialer's side, as a node dialing a peer or joining).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_list_refuses_a_revoked_server() {
    let ca = ClusterCa::generate("crl").expect("ca");
    let (a, a_addr, a_identity) = leader(&ca, None).await;
    let crl = ca
        .revocation_list_pem(&a_identity.cert_chain()[..1], 1)
        .expect("crl");
    let careful = ca
        .issue_client("careful")
        .expect("client")
        .with_revocation_list_pem(crl.as_bytes())
        .expect("the CA's list is accepted");
    let refused = async {
        let client = TallyClient::connect_with([&a_addr], careful, short()).await?;
        client.bump().await
    };
    match tokio::time::timeout(DEADLINE, refused).await {
        Ok(Err(e)) => assert!(
            e.to_string().to_lowercase().contains("revoked"),
            "refused, but without saying the server's certificate is revoked: {e}"
        ),
        Ok(Ok(n)) => panic!("a client wrote to a server it revoked (count {n})"),
        Err(_) => panic!("the write had no outcome in time"),
    }
    a.shutdown().await.expect("a stops");
}

/// A list that is not PEM, not a CRL, or not signed by the node's CA fails
/// the start with a TLS error naming the list, before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_revocation_list_fails_the_start_clearly() {
    let ca = ClusterCa::generate("crl").expect("ca");
    let other = ClusterCa::generate("other").expect("another ca");
    let foreign = other
        .revocation_list_pem(&[], 1)
        .expect("another CA's list");
    let not_a_crl = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n".to_string();
    for (what, pem) in [
        ("garbage", "not a pem".to_string()),
        ("not a CRL", not_a_crl),
        ("another CA's list", foreign),
    ] {
        let addr = free_addr();
        let started = Tally::peer()
            .in_memory()
            .listen(addr.clone())
            .bootstrap()
            .identity(ca.issue_node(&format!("crl@{addr}"), &[]).expect("node"))
            .revocation_list_pem(pem.into_bytes())
            .start()
            .await;
        match started {
            Err(Error::Tls(e)) => assert!(
                e.contains("certificate revocation list"),
                "{what}: refused without naming the list: {e}"
            ),
            Err(e) => panic!("{what}: refused with the wrong error: {e:?}"),
            Ok(peer) => {
                peer.shutdown().await.expect("stops");
                panic!("{what}: a node started with it");
            }
        }
    }
}
