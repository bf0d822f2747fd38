//! Who gets one of a node's inbound handshake slots while strangers stall
//! theirs (`transport::handshakes`), over real QUIC on loopback: the many
//! source addresses of 127.0.0.0/8 stand for many hosts.
//!
//! A stranger "stalled in TLS" is a quinn dialer behind a relay that
//! forwards its packets until the acceptor first answers (so it answers a
//! Retry, and its address is validated) and none after: the acceptor has
//! sent its TLS flight and hears nothing more, as from a dialer without a
//! certificate that keeps the handshake open. Nothing here sleeps to
//! synchronise: every wait is on a condition under a deadline.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use raftkit::core::{Body, Message};
use raftkit::identity::node_id;
use raftkit::tls::{Identity, PEER_ALPN, dev_cluster};
use raftkit::transport::quic::quic_client_config;
use raftkit::transport::{QuicConfig, QuicTransport, Transport};
use tokio::sync::mpsc;
use tokio::time::Instant;

const SCHEMA: u64 = 0x5eed_0000_0000_0002;
const DEADLINE: Duration = Duration::from_secs(20);

/// A node's transport with `max` handshake slots and `timeout`, and an idle
/// timeout longer than the test: a stalled handshake is ended by the
/// handshake bounds only, as one a dialer keeps alive would be.
async fn guarded(
    name: &str,
    identity: Identity,
    listen: SocketAddr,
    max: usize,
    timeout: Duration,
) -> (QuicTransport, SocketAddr, mpsc::Receiver<Message>) {
    let (tx, rx) = mpsc::channel(1024);
    let mut cfg = QuicConfig::new(listen, name, identity, SCHEMA);
    cfg.max_handshakes = max;
    cfg.handshake_timeout = timeout;
    cfg.idle_timeout = Duration::from_secs(60);
    let (t, addr) = QuicTransport::start(cfg, tx, None)
        .await
        .expect("start transport");
    (t, addr, rx)
}

/// Review of stop 50: the members' reserve matched a member by IP only, so
/// anything else at a member's IP that answered the Retry (another process
/// on its host, a NAT it shares) counted as that member and took the
/// members' quarter of the slots (and the member IP's share of them), and
/// the member itself was refused while strangers elsewhere stalled. A node
/// dials from its listening socket, so a member is now known by its full
/// address (IP and port).
#[tokio::test]
async fn a_stranger_at_a_members_ip_does_not_take_the_members_reserve() {
    let (ca, ids) = dev_cluster(["t@a", "t@b"]).expect("certs");
    let timeout = Duration::from_secs(10);
    let (a, a_addr, mut a_rx) = guarded(
        "t@a",
        ids[0].clone(),
        "127.0.0.1:0".parse().expect("addr"),
        8,
        timeout,
    )
    .await;
    // b's address, known to a before b runs: a port of 127.0.0.6 free a
    // moment ago.
    let b_listen = std::net::UdpSocket::bind("127.0.0.6:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let b_id = node_id("t@b");
    a.set_peers(BTreeMap::from([(b_id, b_listen.to_string())]));
    let started = Instant::now();
    // Strangers with a node certificate of the CA complete TLS and say
    // nothing, as often as let in: 2 slots (a quarter of 8) at each of
    // 127.0.0.2-4, the 6 not kept for members; then at b's IP, 127.0.0.6,
    // from other ports (the slots are crowded: each answers a Retry).
    let stranger = ca.issue_node("t@x", &[]).expect("cert");
    let mut held = Vec::new();
    let mut at_members_ip = 0;
    for i in [2u8, 3, 4, 6] {
        for _ in 0..3 {
            if let Ok(conn) = raw_connect_from(&stranger, Ipv4Addr::new(127, 0, 0, i), a_addr).await
            {
                at_members_ip += usize::from(i == 6);
                held.push(conn);
            }
        }
    }
    // b, the member, starts at its address and links to a: its message
    // arrives at once.
    let (tx, _b_rx) = mpsc::channel(1024);
    let (b, _) = QuicTransport::start(
        QuicConfig::new(b_listen, "t@b", ids[1].clone(), SCHEMA),
        tx,
        None,
    )
    .await
    .expect("start b");
    b.set_peers(BTreeMap::from([(node_id("t@a"), a_addr.to_string())]));
    let hello = Message {
        from: b_id,
        to: node_id("t@a"),
        term: 1,
        body: Body::TimeoutNow,
    };
    b.send(hello.clone());
    let bound = Duration::from_secs(2);
    match tokio::time::timeout(bound, a_rx.recv()).await {
        Ok(Some(got)) => assert_eq!(got, hello),
        Ok(None) => panic!("a's inbox closed"),
        Err(_) => panic!(
            "the member's message did not arrive within {bound:?}: strangers held {} slots, {at_members_ip} of them from the member's IP 127.0.0.6 ({} attempts refused)",
            held.len(),
            a.refused_handshakes()
        ),
    }
    assert_eq!(
        (held.len(), at_members_ip),
        (6, 0),
        "the strangers held other slots than the 6 not kept for members (and none from the member's IP)"
    );
    assert!(
        started.elapsed() < timeout,
        "too slow: the strangers' handshakes may have timed out"
    );
    drop(held);
    b.shutdown().await;
    a.shutdown().await;
}

/// Dials `to` on the peer ALPN from `from` presenting `identity` (the TLS
/// handshake only: no stream). The endpoint must outlive the connection.
async fn raw_connect_from(
    identity: &Identity,
    from: Ipv4Addr,
    to: SocketAddr,
) -> Result<(quinn::Connection, quinn::Endpoint), String> {
    let endpoint = quinn::Endpoint::client(SocketAddr::from((from, 0))).expect("endpoint");
    let cfg = quic_client_config(identity, PEER_ALPN).expect("client config");
    let conn = tokio::time::timeout(
        DEADLINE,
        endpoint.connect_with(cfg, to, "raftkit").expect("connect"),
    )
    .await
    .map_err(|_| "no answer".to_string())?
    .map_err(|e| format!("handshake: {e}"))?;
    Ok((conn, endpoint))
}
