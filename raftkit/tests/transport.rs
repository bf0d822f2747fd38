//! The peer transports end to end: real QUIC with mutual TLS on loopback
//! (port 0), and the in-memory network.
//!
//! Nothing here sleeps to synchronise: every wait is on a condition (a
//! message arriving, a link state changing, a connection closing) under a
//! `tokio::time::timeout` deadline.

mod support;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkit::core::{Body, MAX_ENTRIES_PER_APPEND, Message, NodeId};
use raftkit::identity::node_id;
use raftkit::tls::{CertRole, ClusterCa, Identity, PEER_ALPN, dev_cluster};
use raftkit::transport::frame::{PROTOCOL_VERSION, PeerFrame, encode_frame, read_frame};
use raftkit::transport::quic::{connect_client, quic_client_config};
use raftkit::transport::{
    LinkState, MemoryNetwork, QuicConfig, QuicTransport, Transport, TransportError,
};
use support::forge_trust;
use tokio::sync::mpsc;

/// Collects the tracing events of the current thread (each `#[tokio::test]`
/// runs its tasks on its own thread), rendered as `LEVEL message k=v ...`.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<String>>>);

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        // tracing caches each callsite's interest process-wide. While just
        // one thread-local subscriber is registered, a callsite first hit
        // on a thread without one (another test of this binary) takes the
        // global default's interest: with none, "never", and this test's
        // events there were lost (seen: "a warning says \"does not
        // decode\"" failing when a test without capture hit the transport's
        // warning first). A global subscriber that is interested
        // "sometimes" keeps every callsite asking the thread's subscriber.
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let _ = tracing::subscriber::set_global_default(AskEachTime);
        });
        let logs = Logs::default();
        let guard = tracing::subscriber::set_default(logs.clone());
        (logs, guard)
    }

    fn contains(&self, level: tracing::Level, needle: &str) -> bool {
        let prefix = format!("{level} ");
        self.0
            .lock()
            .expect("logs")
            .iter()
            .any(|e| e.starts_with(&prefix) && e.contains(needle))
    }
}

impl Logs {
    /// Waits (under the deadline) until an event matches.
    async fn wait_for(&self, level: tracing::Level, needle: &str) {
        within(&format!("a {level} log saying {needle:?}"), async {
            while !self.contains(level, needle) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }
}

/// The global subscriber of this test binary: records nothing, but never
/// lets a callsite be cached as uninteresting (see [`Logs::capture`]).
struct AskEachTime;

impl tracing::Subscriber for AskEachTime {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        false
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

struct Render(String);

impl tracing::field::Visit for Render {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.push_str(&format!(" {value:?}"));
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
}

impl tracing::Subscriber for Logs {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut r = Render(event.metadata().level().to_string());
        event.record(&mut r);
        self.0.lock().expect("logs").push(r.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

const DEADLINE: Duration = Duration::from_secs(20);
const SCHEMA: u64 = 0x5eed_0000_0000_0001;

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(DEADLINE, f).await {
        Ok(out) => out,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

struct Node {
    name: String,
    id: NodeId,
    addr: SocketAddr,
    t: QuicTransport,
    rx: mpsc::Receiver<Message>,
}

impl Node {
    async fn start(name: &str, identity: Identity, schema: u64) -> Node {
        Self::start_at(name, identity, schema, "127.0.0.1:0".parse().expect("addr")).await
    }

    async fn start_at(name: &str, identity: Identity, schema: u64, listen: SocketAddr) -> Node {
        let (tx, rx) = mpsc::channel(1024);
        let (t, addr) =
            QuicTransport::start(QuicConfig::new(listen, name, identity, schema), tx, None)
                .await
                .expect("start transport");
        Node {
            name: name.to_string(),
            id: node_id(name),
            addr,
            t,
            rx,
        }
    }

    fn peer_entry(&self) -> (NodeId, String) {
        (self.id, self.addr.to_string())
    }

    /// Makes `peer` the only peer, at `addr`, and sends it a message (a
    /// TimeoutNow of term 1), which opens the link.
    fn dial(&self, peer: NodeId, addr: String) {
        self.t.set_peers(BTreeMap::from([(peer, addr)]));
        self.t.send(Message {
            from: self.id,
            to: peer,
            term: 1,
            body: Body::TimeoutNow,
        });
    }

    /// Waits until the link to `peer` is refused; returns why.
    async fn wait_refused(&self, peer: NodeId) -> String {
        match self
            .wait_link(peer, |s| matches!(s, LinkState::Refused(_)))
            .await
        {
            LinkState::Refused(reason) => reason,
            other => unreachable!("{other:?}"),
        }
    }

    async fn wait_link(&self, peer: NodeId, pred: impl FnMut(&LinkState) -> bool) -> LinkState {
        let mut watch = self.t.watch_link(peer).expect("peer is set");
        within("link state", watch.wait_for(pred))
            .await
            .expect("link task alive")
            .clone()
    }

    /// Receives the next message, failing after the deadline.
    async fn recv(&mut self) -> Message {
        within(&format!("a message at {}", self.name), self.rx.recv())
            .await
            .expect("inbox open")
    }
}

fn msg(from: &Node, to: &Node, term: u64) -> Message {
    Message {
        from: from.id,
        to: to.id,
        term,
        body: Body::AppendEntries {
            prev_index: term,
            prev_term: term,
            entries: Vec::new(),
            commit: term,
        },
    }
}

fn connect_all(nodes: &[&Node]) {
    let peers: BTreeMap<_, _> = nodes.iter().map(|n| n.peer_entry()).collect();
    for n in nodes {
        n.t.set_peers(peers.clone());
    }
}

#[tokio::test]
async fn two_endpoints_exchange_messages_both_ways() {
    let (_ca, ids) = dev_cluster(["t@a", "t@b"]).expect("certs");
    let mut ids = ids.into_iter();
    let mut a = Node::start("t@a", ids.next().expect("id"), SCHEMA).await;
    let mut b = Node::start("t@b", ids.next().expect("id"), SCHEMA).await;
    connect_all(&[&a, &b]);

    for term in 1..=50 {
        a.t.send(msg(&a, &b, term));
    }
    for term in 1..=50 {
        assert_eq!(b.recv().await, msg(&a, &b, term), "in order over one link");
    }
    b.t.send(msg(&b, &a, 7));
    assert_eq!(a.recv().await, msg(&b, &a, 7));
    assert_eq!(
        a.wait_link(b.id, |s| *s == LinkState::Connected).await,
        LinkState::Connected
    );
    a.t.shutdown().await;
    b.t.shutdown().await;
}

#[tokio::test]
async fn three_endpoints_all_pairs() {
    let names = ["t@1", "t@2", "t@3"];
    let (_ca, ids) = dev_cluster(names).expect("certs");
    let mut nodes = Vec::new();
    for (name, id) in names.iter().zip(ids) {
        nodes.push(Node::start(name, id, SCHEMA).await);
    }
    connect_all(&nodes.iter().collect::<Vec<_>>());
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                nodes[i]
                    .t
                    .send(msg(&nodes[i], &nodes[j], (i * 10 + j) as u64));
            }
        }
    }
    for j in 0..3 {
        let mut got: Vec<_> = Vec::new();
        for _ in 0..2 {
            got.push(nodes[j].recv().await);
        }
        got.sort_by_key(|m| m.term);
        let mut want: Vec<_> = (0..3)
            .filter(|&i| i != j)
            .map(|i| msg(&nodes[i], &nodes[j], (i * 10 + j) as u64))
            .collect();
        want.sort_by_key(|m| m.term);
        assert_eq!(got, want);
    }
}

#[tokio::test]
async fn reconnects_after_the_remote_restarts_on_the_same_port() {
    let (_ca, ids) = dev_cluster(["t@a", "t@b"]).expect("certs");
    let (ida, idb) = (ids[0].clone(), ids[1].clone());
    let a = Node::start("t@a", ida, SCHEMA).await;
    let mut b = Node::start("t@b", idb.clone(), SCHEMA).await;
    connect_all(&[&a, &b]);
    a.t.send(msg(&a, &b, 1));
    assert_eq!(b.recv().await, msg(&a, &b, 1));

    // Stop b and start it again on the same port.
    let port = b.addr;
    b.t.shutdown().await;
    drop(b);
    assert_ne!(
        a.wait_link(node_id("t@b"), |s| *s != LinkState::Connected)
            .await,
        LinkState::Connected
    );
    let mut b = within("rebinding the port", async {
        loop {
            let (tx, rx) = mpsc::channel(1024);
            let cfg = QuicConfig::new(port, "t@b", idb.clone(), SCHEMA);
            match QuicTransport::start(cfg, tx, None).await {
                Ok((t, addr)) => {
                    return Node {
                        name: "t@b".into(),
                        id: node_id("t@b"),
                        addr,
                        t,
                        rx,
                    };
                }
                // The old socket is released once its driver task ends.
                Err(TransportError::Bind { .. }) => tokio::task::yield_now().await,
                Err(e) => panic!("restart failed: {e}"),
            }
        }
    })
    .await;

    a.wait_link(b.id, |s| *s == LinkState::Connected).await;
    a.t.send(msg(&a, &b, 2));
    // A message sent just as the old link was noticed dead may be lost;
    // the next ones arrive.
    let got = b.recv().await;
    assert_eq!(got, msg(&a, &b, 2));
}

#[tokio::test]
async fn a_peer_of_another_ca_is_refused_and_the_node_keeps_serving() {
    let (logs, _guard) = Logs::capture();
    let (ca, ids) = dev_cluster(["t@a", "t@b"]).expect("certs");
    let mut a = Node::start("t@a", ids[0].clone(), SCHEMA).await;
    let b = Node::start("t@b", ids[1].clone(), SCHEMA).await;
    let rogue_ca = ClusterCa::generate("rogue").expect("rogue ca");
    let mallory = Node::start(
        "t@m",
        rogue_ca.issue_node("t@m", &[]).expect("cert"),
        SCHEMA,
    )
    .await;

    // Mallory dials a with a certificate of another CA (and does not trust
    // a's certificate either): no link comes up.
    mallory.t.set_peers(BTreeMap::from([a.peer_entry()]));
    for term in 1..=5 {
        mallory.t.send(msg(&mallory, &a, term));
    }

    // A client that trusts a's CA but presents a certificate of another CA:
    // a's verifier refuses it; nothing it writes is delivered.
    let forged = forge_trust(&rogue_ca.issue_node("t@m", &[]).expect("cert"), &ca);
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let cfg = quic_client_config(&forged, PEER_ALPN).expect("client config");
    let outcome = within("the forged handshake to fail", async {
        let conn = endpoint.connect_with(cfg, a.addr, "raftkit")?.await?;
        if let Ok((mut send, _recv)) = conn.open_bi().await {
            let _ = send.write_all(&hello_and_msg(&mallory, &a)).await;
        }
        Err::<(), TransportError>(TransportError::Connection(conn.closed().await))
    })
    .await;
    let err = outcome.expect_err("handshake must fail");
    assert!(
        !matches!(
            err,
            TransportError::Connection(quinn::ConnectionError::LocallyClosed)
        ),
        "{err}"
    );

    // a still serves a good peer.
    b.t.set_peers(BTreeMap::from([a.peer_entry()]));
    b.t.send(msg(&b, &a, 42));
    assert_eq!(a.recv().await, msg(&b, &a, 42));
    assert!(a.rx.try_recv().is_err(), "nothing from mallory");
    assert_ne!(mallory.t.link_state(a.id), Some(LinkState::Connected));
    logs.wait_for(tracing::Level::WARN, "inbound handshake failed")
        .await;
}

fn hello_and_msg(from: &Node, to: &Node) -> Vec<u8> {
    let mut buf = Vec::new();
    let hello = PeerFrame::Hello {
        from: from.id,
        name: from.name.clone(),
        addr: "127.0.0.1:9".into(),
        schema: SCHEMA,
        version: PROTOCOL_VERSION,
        schema_desc: None,
    };
    encode_frame(&hello, 1 << 20, &mut buf).expect("encode");
    encode_frame(&PeerFrame::Msg(msg(from, to, 99)), 1 << 20, &mut buf).expect("encode");
    buf
}

#[tokio::test]
async fn a_schema_mismatch_is_refused_with_a_clear_error() {
    let (logs, _guard) = Logs::capture();
    let (_ca, ids) = dev_cluster(["t@a", "t@b"]).expect("certs");
    let mut a = Node::start("t@a", ids[0].clone(), 0xaaaa).await;
    let b = Node::start("t@b", ids[1].clone(), 0xbbbb).await;
    b.t.set_peers(BTreeMap::from([a.peer_entry()]));
    b.t.send(msg(&b, &a, 1));
    let reason = b.wait_refused(a.id).await;
    assert_eq!(
        reason,
        "schema mismatch: local 0x000000000000aaaa remote 0x000000000000bbbb from t@b"
    );
    assert!(a.rx.try_recv().is_err(), "nothing delivered across schemas");
    // Both sides say why.
    let clear = "schema mismatch: local 0x000000000000aaaa remote 0x000000000000bbbb from t@b";
    assert!(logs.contains(tracing::Level::ERROR, "refused peer link"));
    assert!(logs.contains(tracing::Level::ERROR, "peer refused the link"));
    assert!(logs.contains(tracing::Level::ERROR, clear));
}

#[tokio::test]
async fn garbage_and_oversized_frames_close_the_link_and_the_node_keeps_serving() {
    let (logs, _guard) = Logs::capture();
    let (ca, ids) = dev_cluster(["t@a", "t@b"]).expect("certs");
    let mut a = Node::start("t@a", ids[0].clone(), SCHEMA).await;
    let b = Node::start("t@b", ids[1].clone(), SCHEMA).await;
    let raw = ca.issue_node("t@raw", &[]).expect("cert");
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");

    let raw_node = Node::start("t@raw", raw.clone(), SCHEMA).await;
    let mut hello_then_garbage = Vec::new();
    encode_frame(
        &PeerFrame::Hello {
            from: raw_node.id,
            name: "t@raw".into(),
            addr: "127.0.0.1:9".into(),
            schema: SCHEMA,
            version: PROTOCOL_VERSION,
            schema_desc: None,
        },
        1 << 20,
        &mut hello_then_garbage,
    )
    .expect("encode");
    let hello = hello_then_garbage.clone();
    hello_then_garbage.extend_from_slice(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);

    // An AppendEntries claiming one entry more than the cap (and holding
    // none): refused from its header, before any entry is decoded.
    let mut too_many = Vec::new();
    encode_frame(
        &PeerFrame::Msg(Message {
            from: raw_node.id,
            to: a.id,
            term: 1,
            body: Body::AppendEntries {
                prev_index: 0,
                prev_term: 0,
                entries: Vec::new(),
                commit: 0,
            },
        }),
        1 << 20,
        &mut too_many,
    )
    .expect("encode");
    too_many.truncate(too_many.len() - 2); // the count (0) and the commit (0)
    let mut count = (MAX_ENTRIES_PER_APPEND + 1) as u64;
    while count >= 0x80 {
        too_many.push((count as u8) | 0x80);
        count >>= 7;
    }
    too_many.push(count as u8);
    let len = u32::try_from(too_many.len() - 4).expect("small");
    too_many[..4].copy_from_slice(&len.to_be_bytes());
    let hello_then_too_many = [hello, too_many].concat();

    let mut oversized = u32::MAX.to_be_bytes().to_vec();
    oversized.extend_from_slice(b"padding");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", vec![0, 0, 0, 5, 0xde, 0xad, 0xbe, 0xef, 0x99]),
        ("oversized length prefix", oversized),
        ("garbage after hello", hello_then_garbage),
        ("too many entries after hello", hello_then_too_many),
    ];
    for (what, bytes) in cases {
        let cfg = quic_client_config(&raw, PEER_ALPN).expect("client config");
        let conn = within("raw connect", async {
            endpoint
                .connect_with(cfg, a.addr, "raftkit")
                .expect("connect")
                .await
        })
        .await
        .expect("valid certificates connect");
        let (mut send, _recv) = conn.open_bi().await.expect("open stream");
        send.write_all(&bytes).await.expect("write");
        let closed = within(what, conn.closed()).await;
        match closed {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(
                    close.error_code,
                    quinn::VarInt::from_u32(1),
                    "{what}: {close}"
                );
            }
            other => panic!("{what}: unexpected close {other}"),
        }
    }

    // Good messages from another peer still arrive.
    b.t.set_peers(BTreeMap::from([a.peer_entry()]));
    b.t.send(msg(&b, &a, 5));
    assert_eq!(a.recv().await, msg(&b, &a, 5));
    assert!(a.rx.try_recv().is_err());
    for reason in [
        "does not decode",
        "exceeds the cap",
        "AppendEntries of 65537 entries exceeds the cap of 65536 entries per message",
    ] {
        assert!(
            logs.contains(tracing::Level::WARN, reason),
            "a warning says {reason:?}"
        );
    }
}

#[tokio::test]
async fn client_connections_are_dispatched_by_alpn() {
    let (ca, ids) = dev_cluster(["t@a"]).expect("certs");
    let (tx, _rx) = mpsc::channel(16);
    let (clients_tx, mut clients_rx) = mpsc::channel(4);
    let (a, addr) = QuicTransport::start(
        QuicConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            "t@a",
            ids[0].clone(),
            SCHEMA,
        ),
        tx,
        Some(clients_tx),
    )
    .await
    .expect("start");
    let client = ca.issue_client("client").expect("cert");
    let conn = within("client connect", connect_client(addr, &client))
        .await
        .expect("client connects");
    let served = within("client handed over", clients_rx.recv())
        .await
        .expect("a connection");
    // Handed over with who the certificate says is there.
    assert_eq!(served.principal.role, CertRole::Client);
    assert_eq!(served.principal.name, "client");
    let served = served.conn;
    // The handed-over connection is live.
    // (A bidirectional stream: peers accept no unidirectional ones.)
    let (mut out, _back) = within("open", conn.open_bi()).await.expect("open");
    out.write_all(b"hi").await.expect("write");
    out.finish().expect("finish");
    let (_reply, mut inp) = within("client stream", served.accept_bi())
        .await
        .expect("accept");
    let got = within("client bytes", inp.read_to_end(16))
        .await
        .expect("read");
    assert_eq!(got, b"hi");

    // Without a client service, client connections are closed.
    let (tx, _rx) = mpsc::channel(16);
    let (b, addr) = QuicTransport::start(
        QuicConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            "t@b",
            ca.issue_node("t@b", &[]).expect("cert"),
            SCHEMA,
        ),
        tx,
        None,
    )
    .await
    .expect("start");
    let conn = within("client connect", connect_client(addr, &client))
        .await
        .expect("handshake succeeds");
    let closed = within("refusal", conn.closed()).await;
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == quinn::VarInt::from_u32(3)),
        "{closed}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn memory_network_partition_and_heal() {
    let net = MemoryNetwork::new(42);
    let mut rxs = Vec::new();
    let mut ts = Vec::new();
    for id in 1..=3u64 {
        let (tx, rx) = mpsc::channel(64);
        ts.push(net.endpoint(id, tx));
        rxs.push(rx);
    }
    let m = |from: u64, to: u64| Message {
        from,
        to,
        term: 1,
        body: Body::HeartbeatResponse {
            round: from * 10 + to,
        },
    };
    net.partition(&[1], &[2, 3]);
    ts[0].send(m(1, 2));
    ts[1].send(m(2, 3));
    assert_eq!(within("2 -> 3", rxs[2].recv()).await, Some(m(2, 3)));
    assert!(rxs[1].try_recv().is_err(), "1 -> 2 is partitioned");

    net.heal();
    net.set_delay(1..5);
    ts[0].send(m(1, 2));
    assert_eq!(
        within("1 -> 2 after heal", rxs[1].recv()).await,
        Some(m(1, 2))
    );
}

#[tokio::test]
async fn a_dead_peer_never_blocks_send_and_its_queue_stays_bounded() {
    let (_ca, ids) = dev_cluster(["t@a", "t@b"]).expect("certs");
    // A socket that never answers stands in for a dead peer.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dead = node_id("t@dead");
    let (tx, _rx) = mpsc::channel(16);
    let mut cfg = QuicConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        "t@a",
        ids[0].clone(),
        SCHEMA,
    );
    cfg.queue_capacity = 8;
    let (a, _) = QuicTransport::start(cfg, tx, None).await.expect("start");
    let mut b = Node::start("t@b", ids[1].clone(), SCHEMA).await;
    a.set_peers(BTreeMap::from([
        (dead, silent.local_addr().expect("addr").to_string()),
        b.peer_entry(),
    ]));
    let to_dead = |term, body| Message {
        from: node_id("t@a"),
        to: dead,
        term,
        body,
    };
    for round in 0..100 {
        a.send(to_dead(1, Body::Heartbeat { commit: 0, round }));
    }
    a.send(to_dead(1, Body::TimeoutNow));
    assert_eq!(a.queued(dead), Some(2), "heartbeats coalesced");
    for term in 0..20 {
        a.send(to_dead(term, Body::TimeoutNow));
    }
    assert_eq!(a.queued(dead), Some(8), "capped");
    assert_eq!(a.link_state(dead), Some(LinkState::Connecting));

    // The live peer is unaffected.
    let to_b = Message {
        from: node_id("t@a"),
        to: b.id,
        term: 3,
        body: Body::TimeoutNow,
    };
    a.send(to_b.clone());
    assert_eq!(b.recv().await, to_b);
}

/// Dials `to` on the peer ALPN presenting `identity`, says `hello`, sends
/// `msgs`, and returns the acceptor's answer to the hello (the connection is
/// left to close).
async fn raw_hello(
    identity: &Identity,
    to: SocketAddr,
    hello: PeerFrame,
    msgs: &[Message],
) -> Result<PeerFrame, String> {
    let frames: Vec<PeerFrame> = msgs.iter().cloned().map(PeerFrame::Msg).collect();
    Ok(raw_link(identity, to, hello, &frames).await?.answer)
}

/// A raw peer link: the acceptor's answer to its hello, the connection
/// (open while this lives) and the link's stream, to send more frames on.
struct RawLink {
    answer: PeerFrame,
    conn: quinn::Connection,
    send: quinn::SendStream,
    _endpoint: quinn::Endpoint,
}

impl RawLink {
    /// Sends `msg` on the link's stream.
    async fn send(&mut self, msg: Message) {
        let mut buf = Vec::new();
        encode_frame(&PeerFrame::Msg(msg), 1 << 20, &mut buf).expect("encode");
        self.send.write_all(&buf).await.expect("the link is open");
    }
}

/// Dials `to` on the peer ALPN presenting `identity` (the TLS handshake
/// only: no stream is opened). The endpoint must outlive the connection.
async fn raw_connect(
    identity: &Identity,
    to: SocketAddr,
) -> Result<(quinn::Connection, quinn::Endpoint), String> {
    raw_connect_from(identity, std::net::Ipv4Addr::LOCALHOST, to).await
}

/// [`raw_connect`] from the source address `from` (any of 127.0.0.0/8).
async fn raw_connect_from(
    identity: &Identity,
    from: std::net::Ipv4Addr,
    to: SocketAddr,
) -> Result<(quinn::Connection, quinn::Endpoint), String> {
    let endpoint = quinn::Endpoint::client(SocketAddr::from((from, 0))).expect("endpoint");
    let cfg = quic_client_config(identity, PEER_ALPN).expect("client config");
    let conn = within("raw connect", async {
        endpoint
            .connect_with(cfg, to, "raftkit")
            .expect("connect")
            .await
    })
    .await
    .map_err(|e| format!("handshake: {e}"))?;
    Ok((conn, endpoint))
}

/// Waits at most `limit` for the acceptor to close `conn`; returns the
/// application close (code and reason) it sent.
async fn closed_by_acceptor(conn: &quinn::Connection, limit: Duration) -> quinn::ApplicationClose {
    match tokio::time::timeout(limit, conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => close,
        Ok(other) => panic!("closed, but not by the acceptor's application: {other}"),
        Err(_) => panic!("the acceptor did not close the connection within {limit:?}"),
    }
}

/// Dials `to` on the peer ALPN presenting `identity`, sends `hello` then
/// `frames` on one stream, and reads the answer to the hello.
async fn raw_link(
    identity: &Identity,
    to: SocketAddr,
    hello: PeerFrame,
    frames: &[PeerFrame],
) -> Result<RawLink, String> {
    let (conn, endpoint) = raw_connect(identity, to).await?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    encode_frame(&hello, 1 << 20, &mut buf).expect("encode");
    for frame in frames {
        encode_frame(frame, 1 << 20, &mut buf).expect("encode");
    }
    send.write_all(&buf).await.map_err(|e| e.to_string())?;
    let answer = within(
        "the answer to the hello",
        read_frame::<PeerFrame, _>(&mut recv, 1 << 20),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(RawLink {
        answer,
        conn,
        send,
        _endpoint: endpoint,
    })
}

fn hello_as(name: &str, from: NodeId) -> PeerFrame {
    PeerFrame::Hello {
        from,
        name: name.into(),
        addr: "127.0.0.1:9".into(),
        schema: SCHEMA,
        version: PROTOCOL_VERSION,
        schema_desc: None,
    }
}

fn refusal(answer: Result<PeerFrame, String>) -> String {
    match answer {
        Ok(PeerFrame::Refused { reason }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A client or admin certificate on the peer ALPN is closed at once, with
/// the reason, whatever it does: it cannot hold a connection (and the
/// window quinn buffers for it) open on the peer service.
#[tokio::test]
async fn a_client_certificate_on_the_peer_alpn_is_closed_at_once() {
    let (logs, _guard) = Logs::capture();
    let (ca, ids) = dev_cluster(["t@a", "t@b"]).expect("certs");
    let mut a = Node::start("t@a", ids[0].clone(), SCHEMA).await;
    let b = Node::start("t@b", ids[1].clone(), SCHEMA).await;
    let refused = |close: quinn::ApplicationClose| {
        assert_eq!(close.error_code, quinn::VarInt::from_u32(2), "{close}");
        let reason = String::from_utf8_lossy(&close.reason).into_owned();
        assert!(
            reason.contains("peer links need a node certificate"),
            "{reason}"
        );
    };
    for identity in [
        ca.issue_client("t@b").expect("client"),
        ca.issue_admin("t@b").expect("admin"),
    ] {
        // A connection that opens no stream is not kept waiting for one.
        let (idle, _endpoint) = raw_connect(&identity, a.addr).await.expect("handshake");
        refused(closed_by_acceptor(&idle, Duration::from_secs(1)).await);
        // Named like a member, speaking the peer protocol as that member:
        // closed all the same, nothing delivered.
        let (conn, _endpoint) = raw_connect(&identity, a.addr).await.expect("handshake");
        let depose = Message {
            from: b.id,
            to: a.id,
            term: 1 << 40,
            body: Body::Heartbeat {
                commit: 0,
                round: 0,
            },
        };
        let mut buf = Vec::new();
        encode_frame(&hello_as("t@b", b.id), 1 << 20, &mut buf).expect("encode");
        encode_frame(&PeerFrame::Msg(depose), 1 << 20, &mut buf).expect("encode");
        if let Ok((mut send, _recv)) = conn.open_bi().await {
            // It may already be closed: what matters is that nothing passes.
            let _ = send.write_all(&buf).await;
        }
        refused(closed_by_acceptor(&conn, Duration::from_secs(1)).await);
    }
    logs.wait_for(tracing::Level::ERROR, "peer links need a node certificate")
        .await;
    // The real b still gets through; nothing came from the impostors.
    b.t.set_peers(BTreeMap::from([a.peer_entry()]));
    b.t.send(msg(&b, &a, 5));
    assert_eq!(a.recv().await, msg(&b, &a, 5));
    assert!(
        a.rx.try_recv().is_err(),
        "nothing from the client certificates"
    );
}

/// A node whose peer connections are capped at `per_node` per node and
/// `total` in all.
async fn capped_node(name: &str, identity: Identity, per_node: usize, total: usize) -> Node {
    let (tx, rx) = mpsc::channel(1024);
    let mut cfg = QuicConfig::new("127.0.0.1:0".parse().expect("addr"), name, identity, SCHEMA);
    cfg.max_peer_connections_per_node = per_node;
    cfg.max_peer_connections = total;
    let (t, addr) = QuicTransport::start(cfg, tx, None)
        .await
        .expect("start transport");
    Node {
        name: name.to_string(),
        id: node_id(name),
        addr,
        t,
        rx,
    }
}

/// Asserts that `close` is the refusal of a connection past a limit of
/// peer connections, and that its reason names `limit`.
fn too_many(close: quinn::ApplicationClose, limit: &str) {
    assert_eq!(close.error_code, quinn::VarInt::from_u32(4), "{close}");
    let reason = String::from_utf8_lossy(&close.reason).into_owned();
    assert!(
        reason.contains("too many peer connections") && reason.contains(limit),
        "{reason}"
    );
}

/// One node's certificate may hold at most the per-node number of peer
/// connections: the ones past it are closed at once, before anything they
/// send is read, while the first ones keep working; a place is given back
/// when its connection goes, so the node restarted is served again.
#[tokio::test]
async fn peer_connections_past_the_per_node_cap_are_closed_at_once() {
    let (logs, _guard) = Logs::capture();
    let (_ca, ids) = dev_cluster(["t@a", "t@b"]).expect("certs");
    let mut a = capped_node("t@a", ids[0].clone(), 2, 100).await;
    // b's own link: its first connection.
    let b = Node::start("t@b", ids[1].clone(), SCHEMA).await;
    b.t.set_peers(BTreeMap::from([a.peer_entry()]));
    b.t.send(msg(&b, &a, 1));
    assert_eq!(a.recv().await, msg(&b, &a, 1));
    // A second connection of b's certificate: within the cap.
    let mut second = raw_link(&ids[1], a.addr, hello_as("t@b", b.id), &[])
        .await
        .expect("a second connection");
    assert_eq!(second.answer, PeerFrame::HelloOk);
    second.send(msg(&b, &a, 2)).await;
    assert_eq!(a.recv().await, msg(&b, &a, 2));
    // More: each closed at once, whether it says hello or not; nothing it
    // sent is delivered.
    for round in 0..3 {
        let (conn, _endpoint) = raw_connect(&ids[1], a.addr).await.expect("handshake");
        if round > 0 {
            let mut buf = Vec::new();
            encode_frame(&hello_as("t@b", b.id), 1 << 20, &mut buf).expect("encode");
            encode_frame(&PeerFrame::Msg(msg(&b, &a, 99)), 1 << 20, &mut buf).expect("encode");
            if let Ok((mut send, _recv)) = conn.open_bi().await {
                let _ = send.write_all(&buf).await;
            }
        }
        too_many(
            closed_by_acceptor(&conn, Duration::from_secs(1)).await,
            &format!("of node {}", b.id),
        );
    }
    assert_eq!(a.t.refused_peer_connections(), 3);
    logs.wait_for(tracing::Level::WARN, "past the node's limit")
        .await;
    // The first two keep working.
    b.t.send(msg(&b, &a, 3));
    assert_eq!(a.recv().await, msg(&b, &a, 3));
    second.send(msg(&b, &a, 4)).await;
    assert_eq!(a.recv().await, msg(&b, &a, 4));
    // b restarts: its old connection goes, the new one takes its place.
    b.t.shutdown().await;
    drop(b);
    let b = Node::start("t@b", ids[1].clone(), SCHEMA).await;
    b.t.set_peers(BTreeMap::from([a.peer_entry()]));
    b.t.send(msg(&b, &a, 5));
    assert_eq!(a.recv().await, msg(&b, &a, 5));
    second.send(msg(&b, &a, 6)).await;
    assert_eq!(a.recv().await, msg(&b, &a, 6));
}

/// At most the total number of peer connections are served, of all nodes
/// together: one more is closed at once, and served once a place is free.
#[tokio::test]
async fn peer_connections_past_the_total_cap_are_closed_at_once() {
    let (ca, ids) = dev_cluster(["t@a"]).expect("certs");
    let mut a = capped_node("t@a", ids[0].clone(), 8, 2).await;
    let mut links = Vec::new();
    for name in ["t@c", "t@d"] {
        let cert = ca.issue_node(name, &[]).expect("cert");
        let link = raw_link(&cert, a.addr, hello_as(name, node_id(name)), &[])
            .await
            .expect("within the cap");
        assert_eq!(link.answer, PeerFrame::HelloOk);
        links.push(link);
    }
    let e_cert = ca.issue_node("t@e", &[]).expect("cert");
    let (conn, _endpoint) = raw_connect(&e_cert, a.addr).await.expect("handshake");
    too_many(
        closed_by_acceptor(&conn, Duration::from_secs(1)).await,
        "2 open",
    );
    assert_eq!(a.t.refused_peer_connections(), 1);
    // c goes: e's link (which redials) is served.
    let c = links.remove(0);
    c.conn.close(quinn::VarInt::from_u32(0), b"done");
    let e = Node::start("t@e", e_cert, SCHEMA).await;
    e.t.set_peers(BTreeMap::from([a.peer_entry()]));
    e.t.send(msg(&e, &a, 7));
    assert_eq!(a.recv().await, msg(&e, &a, 7));
    // d was served all along.
    let mut d = links.remove(0);
    let d_id = node_id("t@d");
    let to_a = Message {
        from: d_id,
        to: a.id,
        term: 8,
        body: Body::TimeoutNow,
    };
    d.send(to_a.clone()).await;
    assert_eq!(a.recv().await, to_a);
}

#[tokio::test]
async fn a_node_certificate_claiming_another_nodes_name_is_refused() {
    let (ca, ids) = dev_cluster(["t@a", "t@b"]).expect("certs");
    let mut a = Node::start("t@a", ids[0].clone(), SCHEMA).await;
    let b = Node::start("t@b", ids[1].clone(), SCHEMA).await;
    let mallory = ca.issue_node("t@m", &[]).expect("node cert");
    let as_b = Message {
        from: b.id,
        to: a.id,
        term: 1 << 40,
        body: Body::TimeoutNow,
    };
    // Mallory's node certificate says hello as b.
    let answer = raw_hello(
        &mallory,
        a.addr,
        hello_as("t@b", b.id),
        std::slice::from_ref(&as_b),
    )
    .await;
    let reason = refusal(answer);
    assert!(
        reason.contains("claims the name \"t@b\"") && reason.contains("issued to \"t@m\""),
        "{reason}"
    );
    // Under its own name but with b's id.
    let reason = refusal(raw_hello(&mallory, a.addr, hello_as("t@m", b.id), &[]).await);
    assert!(reason.contains("is not the id of the name t@m"), "{reason}");
    // Under its own name and id: accepted, but its messages "from b" are
    // dropped (the id is the certificate's).
    let answer = raw_hello(&mallory, a.addr, hello_as("t@m", node_id("t@m")), &[as_b]).await;
    assert_eq!(answer, Ok(PeerFrame::HelloOk));
    // A node cannot even start under another node's name.
    let (tx, _rx) = mpsc::channel(16);
    let err = QuicTransport::start(
        QuicConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            "t@b",
            mallory.clone(),
            SCHEMA,
        ),
        tx,
        None,
    )
    .await
    .expect_err("a certificate of another name");
    assert!(err.to_string().contains("issued to its name"), "{err}");

    // The real b gets through; nothing from mallory did.
    b.t.set_peers(BTreeMap::from([a.peer_entry()]));
    b.t.send(msg(&b, &a, 6));
    assert_eq!(a.recv().await, msg(&b, &a, 6));
    assert!(a.rx.try_recv().is_err(), "nothing from mallory");
}

#[tokio::test]
async fn a_dialer_refuses_a_certificate_that_is_not_the_peer_it_meant() {
    let (ca, ids) = dev_cluster(["t@a"]).expect("certs");
    let a = Node::start("t@a", ids[0].clone(), SCHEMA).await;
    // Mallory listens where a believes b is.
    let mallory = Node::start("t@m", ca.issue_node("t@m", &[]).expect("cert"), SCHEMA).await;
    let b_id = node_id("t@b");
    a.dial(b_id, mallory.addr.to_string());
    let reason = a.wait_refused(b_id).await;
    assert!(
        reason.contains("node certificate `t@m`")
            && reason.contains(&format!("not the certificate of node {b_id}")),
        "{reason}"
    );
}

#[tokio::test]
async fn links_learned_from_unknown_dialers_are_bounded_and_expire() {
    let (ca, ids) = dev_cluster(["t@a"]).expect("certs");
    let (tx, mut rx) = mpsc::channel(64);
    let mut cfg = QuicConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        "t@a",
        ids[0].clone(),
        SCHEMA,
    );
    cfg.max_learned_links = 2;
    cfg.learned_link_ttl = Duration::from_millis(300);
    let (a, a_addr) = QuicTransport::start(cfg, tx, None).await.expect("start");
    let a_id = node_id("t@a");
    // Four unconfigured nodes dial a (their hellos announce where they
    // listen); a opens links back to two of them only.
    let mut dialers = Vec::new();
    for i in 0..4 {
        let name = format!("t@d{i}");
        let d = Node::start(&name, ca.issue_node(&name, &[]).expect("cert"), SCHEMA).await;
        d.dial(a_id, a_addr.to_string());
        let got = within("a message from a dialer", rx.recv()).await;
        assert_eq!(got.map(|m| m.from), Some(d.id));
        dialers.push(d);
    }
    let learned = |a: &QuicTransport| -> Vec<NodeId> {
        dialers
            .iter()
            .map(|d| d.id)
            .filter(|id| a.link_state(*id).is_some())
            .collect()
    };
    within("two learned links", async {
        while learned(&a).len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(learned(&a).len(), 2, "bounded");
    // The dialers go away: once no inbound link from them has been open for
    // the TTL, the learned links close.
    for d in dialers.drain(..) {
        d.t.shutdown().await;
    }
    let ids: Vec<NodeId> = (0..4).map(|i| node_id(&format!("t@d{i}"))).collect();
    within("the learned links to expire", async {
        while ids.iter().any(|id| a.link_state(*id).is_some()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    a.shutdown().await;
}

/// Only node certificates are valid for TLS server authentication: a
/// client or admin certificate cannot pose as a node to dialers or clients.
#[tokio::test]
async fn client_and_admin_certificates_cannot_serve() {
    let (ca, _) = dev_cluster(["t@a"]).expect("certs");
    let dialer = ca.issue_node("t@d", &[]).expect("node");
    for impostor in [
        ca.issue_client("t@a").expect("client"),
        ca.issue_admin("t@a").expect("admin"),
    ] {
        let server =
            raftkit::transport::quic::quic_server_config(&impostor).expect("server config");
        let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().expect("addr"))
            .expect("endpoint");
        let addr = endpoint.local_addr().expect("addr");
        let client_endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        let cfg = quic_client_config(&dialer, PEER_ALPN).expect("client config");
        let accept = tokio::spawn(async move {
            if let Some(incoming) = endpoint.accept().await {
                let _ = incoming.await;
            }
        });
        let outcome = within("the handshake to fail", async {
            client_endpoint
                .connect_with(cfg, addr, "raftkit")
                .expect("connect")
                .await
        })
        .await;
        let err = outcome.expect_err("the dialer refuses a non-node server certificate");
        assert!(
            err.to_string().to_lowercase().contains("certificate"),
            "{err}"
        );
        accept.abort();
    }
}

/// A node certificate speaks only for its own node, in every frame that
/// carries a message: a multi-group link's `Group` frames are held to the
/// same rule as `Msg` frames. Frames on one stream are handled in order, so
/// once the genuine message sent after a forged one has arrived, the forged
/// one was dropped, not merely late.
#[tokio::test]
async fn a_group_message_claiming_another_node_is_dropped() {
    let (ca, ids) = dev_cluster(["t@a"]).expect("certs");
    let (tx, mut rx) = mpsc::channel(16);
    let (group_tx, mut group_rx) = mpsc::channel(16);
    let mut cfg = QuicConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        "t@a",
        ids[0].clone(),
        SCHEMA,
    );
    cfg.group_inbox = Some(group_tx);
    let (a, a_addr) = QuicTransport::start(cfg, tx, None).await.expect("start");
    let a_id = node_id("t@a");
    let mallory = ca.issue_node("t@m", &[]).expect("node cert");
    let m_id = node_id("t@m");
    let b_id = node_id("t@b");
    let heartbeat = |from: NodeId, round: u64| Message {
        from,
        to: a_id,
        term: 1 << 40,
        body: Body::Heartbeat { commit: 0, round },
    };
    let frames = [
        PeerFrame::Group {
            group: 7,
            msg: heartbeat(b_id, 1),
        },
        PeerFrame::Msg(heartbeat(b_id, 2)),
        PeerFrame::Group {
            group: 7,
            msg: heartbeat(m_id, 3),
        },
        PeerFrame::Msg(heartbeat(m_id, 4)),
    ];
    let link = raw_link(&mallory, a_addr, hello_as("t@m", m_id), &frames)
        .await
        .expect("a node certificate of the CA connects");
    assert_eq!(link.answer, PeerFrame::HelloOk);
    match within("a group message", group_rx.recv()).await {
        Some(raftkit::transport::GroupInbound::Msg { group: 7, msg }) => {
            assert_eq!(
                msg,
                heartbeat(m_id, 3),
                "the forged group message was dropped"
            )
        }
        other => panic!("expected mallory's own group message, got {other:?}"),
    }
    assert_eq!(
        within("a message", rx.recv()).await,
        Some(heartbeat(m_id, 4)),
        "the forged message was dropped"
    );
    assert!(group_rx.try_recv().is_err() && rx.try_recv().is_err());
    link.conn.close(quinn::VarInt::from_u32(0), b"done");
    a.shutdown().await;
}

/// A client that presents no certificate is refused by the TLS handshake
/// itself (the server requires one signed by the cluster CA), not later
/// by the application: nothing of the node's protocol is reachable without
/// a certificate.
#[tokio::test]
async fn a_connection_without_a_client_certificate_fails_its_handshake() {
    let (ca, ids) = dev_cluster(["t@a"]).expect("certs");
    let a = Node::start("t@a", ids[0].clone(), SCHEMA).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).expect("root");
    let mut tls = rustls::ClientConfig::builder_with_provider(raftkit::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![PEER_ALPN.to_vec()];
    let cfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).expect("quic tls"),
    ));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let err = within("the handshake to be refused", async {
        // TLS 1.3: the client may finish its side before the server has
        // checked the (missing) certificate; the refusal then closes the
        // connection.
        match endpoint
            .connect_with(cfg, a.addr, "raftkit")
            .expect("connect")
            .await
        {
            Err(e) => e,
            Ok(conn) => conn.closed().await,
        }
    })
    .await;
    let quinn::ConnectionError::ConnectionClosed(close) = &err else {
        panic!("expected a TLS alert closing the connection, got {err:?}");
    };
    // `certificate_required` (RFC 8446 §4.4.2.4) as a QUIC crypto error.
    assert_eq!(
        close.error_code,
        quinn::TransportErrorCode::crypto(116),
        "{err}"
    );
}

/// Signs a certificate for `name` with the cluster CA's key, valid for
/// serving (`ServerAuth`, the cluster's DNS name) but stating `role` (or no
/// role at all): what the CA never issues, to test each of the dialer's
/// checks on its own.
fn rogue_server_identity(ca: &ClusterCa, role: Option<CertRole>, name: &str) -> Identity {
    let dir = tempfile::tempdir().expect("tempdir");
    ca.write_to(dir.path()).expect("write ca");
    let key_pem = std::fs::read_to_string(dir.path().join("ca.key")).expect("ca key");
    let ca_key = rcgen::KeyPair::from_pem(&key_pem).expect("ca key parses");
    let issuer = rcgen::Issuer::from_ca_cert_der(ca.cert_der(), ca_key).expect("issuer");
    let mut params = rcgen::CertificateParams::default();
    let uri = |s: String| rcgen::SanType::URI(s.try_into().expect("ia5"));
    params.subject_alt_names = vec![
        rcgen::SanType::DnsName(raftkit::tls::CLUSTER_SAN.try_into().expect("ia5")),
        uri(format!("{}{name}", raftkit::tls::NAME_URI_PREFIX)),
    ];
    if let Some(role) = role {
        params.subject_alt_names.push(uri(role.uri()));
    }
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    std::fs::write(dir.path().join("rogue.pem"), cert.pem()).expect("write cert");
    std::fs::write(dir.path().join("rogue.key"), key.serialize_pem()).expect("write key");
    Identity::load(dir.path(), "rogue").expect("load")
}

/// A dialer accepts only a *node* certificate of the node it meant: a
/// certificate of the cluster CA that names that node but states another
/// role, or no role, is refused before the hello (each check alone: these
/// certificates pass TLS path validation as servers).
#[tokio::test]
async fn a_dialer_refuses_a_server_certificate_without_the_node_role() {
    let (ca, ids) = dev_cluster(["ta"]).expect("certs");
    let a = Node::start("ta", ids[0].clone(), SCHEMA).await;
    let b_id = node_id("tb");
    for role in [Some(CertRole::Client), Some(CertRole::Admin), None] {
        let rogue = rogue_server_identity(&ca, role, "tb");
        let server = raftkit::transport::quic::quic_server_config(&rogue).expect("server config");
        let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().expect("addr"))
            .expect("endpoint");
        let addr = endpoint.local_addr().expect("addr");
        // Completes handshakes and holds the connections (a hello is never
        // answered: only the dialer's own check can refuse the link).
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(incoming) = endpoint.accept().await {
                if let Ok(conn) = incoming.await {
                    held.push(conn);
                }
            }
        });
        a.dial(b_id, addr.to_string());
        let reason = a.wait_refused(b_id).await;
        assert!(reason.contains(&addr.to_string()), "{role:?}: {reason}");
        a.t.set_peers(BTreeMap::new());
        accept.abort();
    }
}

/// A peer whose address changes in the configuration is dialed at its new
/// address (the link to the old one is replaced, not kept).
#[tokio::test]
async fn a_peer_whose_address_changes_is_dialed_at_the_new_one() {
    let (_ca, ids) = dev_cluster(["t@a", "t@b"]).expect("certs");
    let a = Node::start("t@a", ids[0].clone(), SCHEMA).await;
    let mut b = Node::start("t@b", ids[1].clone(), SCHEMA).await;
    // First configured at an address where nothing answers.
    let nobody = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let stale = nobody.local_addr().expect("addr").to_string();
    a.t.set_peers(BTreeMap::from([(b.id, stale)]));
    a.t.send(msg(&a, &b, 1));
    a.t.set_peers(BTreeMap::from([b.peer_entry()]));
    a.wait_link(b.id, |s| *s == LinkState::Connected).await;
    a.t.send(msg(&a, &b, 2));
    within("a message at the new address", async {
        loop {
            if b.recv().await == msg(&a, &b, 2) {
                break;
            }
        }
    })
    .await;
    drop(nobody);
}

/// Reconnect delays double from `backoff_min` up to `backoff_max`, and stay
/// there: a peer that refused connections for a while is retried at least
/// every `backoff_max`, not at ever longer intervals.
#[tokio::test]
async fn reconnect_delays_are_capped() {
    let (ca, ids) = dev_cluster(["t@a"]).expect("certs");
    let (tx, _rx) = mpsc::channel(16);
    let mut cfg = QuicConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        "t@a",
        ids[0].clone(),
        SCHEMA,
    );
    cfg.backoff_min = Duration::from_millis(10);
    cfg.backoff_max = Duration::from_millis(100);
    let (a, _) = QuicTransport::start(cfg, tx, None).await.expect("start");
    // A QUIC server that refuses every connection at once (a fast failure:
    // the dialer's delays alone space its attempts).
    let server =
        raftkit::transport::quic::quic_server_config(&ca.issue_node("t@b", &[]).expect("cert"))
            .expect("server config");
    let endpoint =
        quinn::Endpoint::server(server, "127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let addr = endpoint.local_addr().expect("addr");
    a.set_peers(BTreeMap::from([(node_id("t@b"), addr.to_string())]));
    // Delays 10, 20, 40, 80, then 100 ms each: 12 attempts take about
    // 0.9 s. Uncapped (doubling on) they would take over 40 s.
    let started = tokio::time::Instant::now();
    within("twelve dial attempts", async {
        for _ in 0..12 {
            let incoming = endpoint.accept().await.expect("endpoint open");
            incoming.refuse();
        }
    })
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(8), "12 attempts took {took:?}");
}

/// Waits at most 5 s for the acceptor to close `conn` after `what`;
/// `Err` says how it was not closed with application code `code`. (It
/// was 2 s, within reach of a loaded CI machine; the acceptor closes at
/// once, or, under the defects pinned, with another code or not at all.)
async fn closed_after(what: &str, conn: &quinn::Connection, code: u32) -> Result<(), String> {
    let limit = Duration::from_secs(5);
    match tokio::time::timeout(limit, conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close))
            if close.error_code == quinn::VarInt::from_u32(code) =>
        {
            Ok(())
        }
        Ok(other) => Err(format!("{what}: closed with {other}, not code {code}")),
        Err(_) => Err(format!(
            "{what}: the acceptor did not close the connection within {limit:?}"
        )),
    }
}

/// Found by review, stop 48: a link stream that ended before its hello,
/// or whose dialer stopped reading before the acceptor could answer the
/// hello, ended the link's task but left its connection open, kept alive
/// by keep-alives and holding its place among the dialer's peer
/// connections (`peer_limits`); so did a link that ended after its hello
/// was accepted. Every way a link ends now closes its connection, which
/// gives the place back: with one place per node, each node still links
/// afterwards.
#[tokio::test]
async fn every_way_a_link_ends_closes_its_connection_and_gives_its_place_back() {
    let (ca, ids) = dev_cluster(["t@a"]).expect("certs");
    let mut a = capped_node("t@a", ids[0].clone(), 1, 100).await;
    let names = ["t@c", "t@d", "t@e"];
    let certs: Vec<Identity> = names
        .iter()
        .map(|name| ca.issue_node(name, &[]).expect("cert"))
        .collect();
    let mut failures = Vec::new();

    // The stream ends before any hello.
    let (conn, _endpoint) = raw_connect(&certs[0], a.addr).await.expect("handshake");
    let (mut send, _recv) = conn.open_bi().await.expect("a stream");
    send.finish().expect("finish");
    failures.extend(
        closed_after("a stream that ended before its hello", &conn, 1)
            .await
            .err(),
    );
    conn.close(quinn::VarInt::from_u32(0), b"done");

    // The dialer stops reading before the acceptor answers its hello.
    let (conn, _endpoint) = raw_connect(&certs[1], a.addr).await.expect("handshake");
    let (mut send, mut recv) = conn.open_bi().await.expect("a stream");
    recv.stop(quinn::VarInt::from_u32(0)).expect("stop");
    let mut buf = Vec::new();
    encode_frame(&hello_as(names[1], node_id(names[1])), 1 << 20, &mut buf).expect("encode");
    // It may be closed already: what matters is that it is closed.
    let _ = send.write_all(&buf).await;
    failures.extend(
        closed_after(
            "a dialer that stopped reading before the answer to its hello",
            &conn,
            1,
        )
        .await
        .err(),
    );
    conn.close(quinn::VarInt::from_u32(0), b"done");

    // The link was up, and its stream ends.
    let mut link = raw_link(
        &certs[2],
        a.addr,
        hello_as(names[2], node_id(names[2])),
        &[],
    )
    .await
    .expect("a link");
    assert_eq!(link.answer, PeerFrame::HelloOk);
    link.send.finish().expect("finish");
    failures.extend(
        closed_after("an accepted link whose stream ended", &link.conn, 0)
            .await
            .err(),
    );
    link.conn.close(quinn::VarInt::from_u32(0), b"done");
    assert!(failures.is_empty(), "{failures:#?}");

    // Each place was given back: each node (one place each) links (it
    // redials if it comes before its last connection's task ended).
    for (name, cert) in names.iter().zip(certs) {
        let n = Node::start(name, cert, SCHEMA).await;
        n.t.set_peers(BTreeMap::from([a.peer_entry()]));
        n.t.send(msg(&n, &a, 1));
        assert_eq!(a.recv().await, msg(&n, &a, 1));
        n.t.shutdown().await;
    }
}

/// A node that runs at most `max` inbound handshakes at once, each within
/// `timeout`.
async fn guarded_node(name: &str, identity: Identity, max: usize, timeout: Duration) -> Node {
    let (tx, rx) = mpsc::channel(1024);
    let mut cfg = QuicConfig::new("127.0.0.1:0".parse().expect("addr"), name, identity, SCHEMA);
    cfg.max_handshakes = max;
    cfg.handshake_timeout = timeout;
    let (t, addr) = QuicTransport::start(cfg, tx, None)
        .await
        .expect("start transport");
    Node {
        name: name.to_string(),
        id: node_id(name),
        addr,
        t,
        rx,
    }
}

/// Found by review, stop 48: the accept loop served every connection
/// attempt in a task of its own, bounded only by quinn's count of attempts
/// not yet accepted (the loop accepts at once), and a dialer that completed
/// TLS and then opened no stream was never closed (keep-alives kept it):
/// dialers could hold any number of handshakes. Now at most
/// `max_handshakes` run at once (one more is refused at once) and each is
/// closed at `handshake_timeout` if its hello is not answered by then; a
/// real peer links afterwards.
#[tokio::test]
async fn handshakes_past_the_bound_are_refused_and_silent_dialers_closed_in_time() {
    let (ca, ids) = dev_cluster(["t@a", "t@b"]).expect("certs");
    let timeout = Duration::from_secs(3);
    let mut a = guarded_node("t@a", ids[0].clone(), 2, timeout).await;
    let c = ca.issue_node("t@c", &[]).expect("cert");
    let d = ca.issue_node("t@d", &[]).expect("cert");
    let e = ca.issue_node("t@e", &[]).expect("cert");
    let started = tokio::time::Instant::now();
    // Two dialers complete TLS and say nothing: one opens no stream, the
    // other sends two bytes of a hello's length.
    let (silent, _endpoint_c) = raw_connect(&c, a.addr).await.expect("handshake");
    let (mute, _endpoint_d) = raw_connect(&d, a.addr).await.expect("handshake");
    let (mut send, _recv) = mute.open_bi().await.expect("a stream");
    send.write_all(&[0, 0]).await.expect("two bytes");
    // A third, while they hold both slots: refused at once.
    let third = raw_connect(&e, a.addr).await;
    assert!(
        started.elapsed() < timeout,
        "the test was too slow to see the slots taken"
    );
    match &third {
        Err(reason) => assert!(reason.contains("refused"), "{reason}"),
        Ok((conn, _)) => panic!(
            "a third handshake was served while two were in progress (max 2): {:?}",
            conn.remote_address()
        ),
    }
    // At least one: the third dialer may resend its Initial (PTO) before
    // the refusal reaches it on a busy machine, and each copy is refused.
    assert!(
        a.t.refused_handshakes() >= 1,
        "the third handshake was not counted refused"
    );
    // Once one of the two slots was taken, each later attempt was first
    // sent a Retry (address validation) and came back validated: a
    // spoofed source would not have, and could take only half the slots.
    // (At least: a dialer may resend its first packet on a busy machine.)
    assert!(
        a.t.retried_handshakes() >= 2,
        "the second and third dialers, arriving with half the slots taken, were not sent a Retry: {}",
        a.t.retried_handshakes()
    );
    // The silent ones are closed once their time is up, not before.
    for (what, conn) in [("no stream", &silent), ("half a hello", &mute)] {
        match tokio::time::timeout(timeout * 3, conn.closed()).await {
            Ok(quinn::ConnectionError::ApplicationClosed(close)) => {
                assert_eq!(
                    close.error_code,
                    quinn::VarInt::from_u32(1),
                    "{what}: {close}"
                )
            }
            Ok(other) => panic!("{what}: closed with {other}"),
            Err(_) => panic!("{what}: not closed within {:?}", timeout * 3),
        }
    }
    assert!(started.elapsed() >= timeout, "closed before their time");
    // Counted only now: a resent copy of the third dialer's Initial may
    // still be queued at `a` when that dialer returned (it returns on the
    // refusal of the first copy) and be refused later; by now (the silent
    // dialers' closes, `timeout` later) any such copy was handled.
    let refused = a.t.refused_handshakes();
    // Their slots are free: a real peer links.
    let b = Node::start("t@b", ids[1].clone(), SCHEMA).await;
    b.t.set_peers(BTreeMap::from([a.peer_entry()]));
    b.t.send(msg(&b, &a, 1));
    assert_eq!(a.recv().await, msg(&b, &a, 1));
    assert_eq!(
        a.t.refused_handshakes(),
        refused,
        "the real peer's handshake was refused"
    );
}

/// Found by review, stop 49: a peer connection could open as many streams
/// as quinn's default allowed (100 at once) and each was served as a link
/// of its own: a task, a frame buffer (up to a frame) and a stream window
/// each, so one node certificate made a node hold about a hundred times
/// what its link needs, per connection. A node opens one stream per
/// connection; a dialer that opens another is closed at once
/// (CLOSE_PROTOCOL), whatever the streams send (here valid hellos, then a
/// frame header announcing a large frame and no more).
#[tokio::test]
async fn a_peer_connection_opening_more_streams_than_its_link_is_closed() {
    let (ca, ids) = dev_cluster(["t@a"]).expect("certs");
    let mut a = Node::start("t@a", ids[0].clone(), SCHEMA).await;
    let name = "t@h";
    let cert = ca.issue_node(name, &[]).expect("cert");
    let link = raw_link(&cert, a.addr, hello_as(name, node_id(name)), &[])
        .await
        .expect("a link");
    assert_eq!(link.answer, PeerFrame::HelloOk);
    let mut opened = Vec::new();
    for _ in 0..20 {
        let Ok((mut send, recv)) = link.conn.open_bi().await else {
            break;
        };
        let mut buf = Vec::new();
        encode_frame(&hello_as(name, node_id(name)), 1 << 20, &mut buf).expect("encode");
        // A frame header announcing 1 MiB, and nothing more.
        buf.extend_from_slice(&(1u32 << 20).to_be_bytes());
        if send.write_all(&buf).await.is_err() {
            break;
        }
        opened.push((send, recv));
    }
    let closed = closed_after("a second stream on a peer connection", &link.conn, 1).await;
    assert!(
        closed.is_ok(),
        "{closed:?} ({} streams opened)",
        opened.len()
    );
    // The node keeps serving: the certificate's node links again.
    let n = Node::start(name, cert, SCHEMA).await;
    n.t.set_peers(BTreeMap::from([a.peer_entry()]));
    n.t.send(msg(&n, &a, 1));
    assert_eq!(a.recv().await, msg(&n, &a, 1));
    n.t.shutdown().await;
}

/// Found at stop 49: strangers at four real addresses (each answering the
/// Retry, each within its quarter of the slots) that complete TLS and then
/// say nothing held every handshake slot for the whole timeout (and could
/// refresh them), so that a member could not connect at all. Now a quarter
/// of the slots is kept for the configured peers' addresses: with the
/// strangers holding all they may take, a member still links at once.
#[tokio::test]
async fn strangers_stalling_their_handshakes_do_not_lock_a_member_out() {
    let (ca, ids) = dev_cluster(["t@a", "t@b"]).expect("certs");
    let timeout = Duration::from_secs(10);
    let mut a = guarded_node("t@a", ids[0].clone(), 8, timeout).await;
    let b = Node::start_at(
        "t@b",
        ids[1].clone(),
        SCHEMA,
        "127.0.0.6:0".parse().expect("addr"),
    )
    .await;
    let stalled = tokio::time::Instant::now();
    // Strangers (a node certificate of the CA, not a member's) at four
    // addresses complete TLS and say nothing, as often as each is let in
    // (a quarter of the slots per address: 2 of 8).
    let stranger = ca.issue_node("t@x", &[]).expect("cert");
    let mut held = Vec::new();
    for i in 2..=5u8 {
        for _ in 0..3 {
            let from = std::net::Ipv4Addr::new(127, 0, 0, i);
            if let Ok(conn) = raw_connect_from(&stranger, from, a.addr).await {
                held.push(conn);
            }
        }
    }
    // 8 slots, 2 kept for members, 2 per address: 2 + 2 + 2 + 0 held (8,
    // 2 at each address, without the reserve).
    assert_eq!(
        held.len(),
        6,
        "the strangers did not hold exactly the slots not kept for members ({} refused)",
        a.t.refused_handshakes()
    );
    // b, at 127.0.0.6, is a member: a's configured peer. It links to a
    // (a dials it; it links back) and its message arrives at once, not
    // once the strangers' handshakes time out.
    a.t.set_peers(BTreeMap::from([b.peer_entry()]));
    b.t.set_peers(BTreeMap::from([a.peer_entry()]));
    b.t.send(msg(&b, &a, 1));
    // 5 s: it arrives in milliseconds, and a member locked out gets in
    // only once a stranger's handshake or TLS bound ends (10 s). It was 2 s,
    // one stall of a CI machine running every test binary at once.
    let bound = Duration::from_secs(5);
    match tokio::time::timeout(bound, a.rx.recv()).await {
        Ok(Some(got)) => assert_eq!(got, msg(&b, &a, 1)),
        Ok(None) => panic!("a's inbox closed"),
        Err(_) => panic!(
            "the member's message did not arrive within {bound:?} while {} strangers stalled their handshakes ({} attempts refused)",
            held.len(),
            a.t.refused_handshakes()
        ),
    }
    assert!(
        stalled.elapsed() < timeout,
        "too slow: the strangers' handshakes may have timed out"
    );
    drop(held);
}
