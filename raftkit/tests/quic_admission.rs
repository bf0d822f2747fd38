//! Who gets one of a node's inbound handshake slots while strangers stall
//! theirs (`transport::handshakes`), over real QUIC on loopback: the many
//! source addresses of 127.0.0.0/8 stand for many hosts.
//!
//! A stranger "stalled in TLS" is a quinn dialer behind a relay that
//! forwards its packets until the acceptor first answers with an Initial
//! packet (so it answers a Retry if sent one, and its address is then
//! validated; below half the slots taken none is sent) and none after: the acceptor has
//! sent its TLS flight and hears nothing more, as from a dialer without a
//! certificate that keeps the handshake open. Nothing here sleeps to
//! synchronise: every wait is on a condition under a deadline.

mod support;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use support::free_addrs;

use raftkit::client::ClientOptions;
use raftkit::core::{Body, Message};
use raftkit::identity::node_id;
use raftkit::prelude::*;
use raftkit::tls::{Identity, PEER_ALPN, dev_cluster};
use raftkit::transport::quic::{quic_client_config, tls_timeout};
use raftkit::transport::{QuicConfig, QuicTransport, Transport};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "kv")]
pub struct Kv {
    map: BTreeMap<String, u64>,
}

#[raftkit::state_machine]
impl Kv {
    #[write]
    fn put(&mut self, key: String, value: u64) {
        self.map.insert(key, value);
    }

    #[read]
    fn get(&self, key: String) -> Option<u64> {
        self.map.get(&key).copied()
    }
}

const SCHEMA: u64 = 0x5eed_0000_0000_0002;
const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `done` until it holds, failing after `limit` with `what`.
async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} (waited {limit:?})");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

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

/// A quinn dialer at `from` (its relay's address) that answers a Retry if
/// sent one and then stalls its TLS handshake (module doc). Ends with what became
/// of it: the dialer's error (refused, or closed by the acceptor), or
/// "stalled" after `life`.
fn stall_in_tls(
    from: Ipv4Addr,
    to: SocketAddr,
    identity: &Identity,
    life: Duration,
) -> tokio::task::JoinHandle<String> {
    let cfg = quic_client_config(identity, PEER_ALPN).expect("client config");
    tokio::spawn(async move {
        let relay = tokio::net::UdpSocket::bind((from, 0))
            .await
            .expect("relay socket");
        let relay_addr = relay.local_addr().expect("relay addr");
        let endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        let connecting = endpoint
            .connect_with(cfg, relay_addr, "raftkit")
            .expect("connect");
        let pump = async {
            let mut buf = vec![0u8; 4096];
            let mut dialer: Option<SocketAddr> = None;
            let mut answered = false;
            loop {
                let (n, src) = relay.recv_from(&mut buf).await?;
                if src == to {
                    // A long-header Initial packet (not a Retry): the
                    // acceptor has begun its side of the handshake.
                    let first = buf.first().copied().unwrap_or(0);
                    if first & 0x80 != 0 && (first >> 4) & 0x3 == 0 {
                        answered = true;
                    }
                    if let Some(d) = dialer {
                        relay.send_to(&buf[..n], d).await?;
                    }
                } else {
                    dialer = Some(src);
                    if !answered {
                        relay.send_to(&buf[..n], to).await?;
                    }
                }
            }
        };
        tokio::pin!(pump);
        let end = Instant::now() + life;
        // quinn's dialer counts TLS done once it sent its Finished, which
        // the relay keeps from the acceptor: it stays until `life` ends.
        let conn = tokio::select! {
            done = connecting => match done {
                Ok(conn) => conn,
                Err(e) => return e.to_string(),
            },
            failed = &mut pump => {
                let failed: std::io::Result<()> = failed;
                return format!("relay failed: {failed:?}");
            }
            _ = tokio::time::sleep_until(end) => return "stalled".to_string(),
        };
        tokio::select! {
            closed = conn.closed() => format!("closed: {closed}"),
            failed = &mut pump => {
                let failed: std::io::Result<()> = failed;
                format!("relay failed: {failed:?}")
            }
            _ = tokio::time::sleep_until(end) => "stalled".to_string(),
        }
    })
}

/// Node a (`guarded`: 8 handshake slots, `timeout`) at 127.0.0.1 and node
/// b, its member-to-be, listening at `b_ip` (it dials nobody yet; no
/// learned links if `learns` is false, so it opens none back to a dialer
/// before it is configured), with the CA that issued their certificates.
struct Pair {
    ca: raftkit::tls::ClusterCa,
    a: QuicTransport,
    a_addr: SocketAddr,
    a_rx: mpsc::Receiver<Message>,
    b: QuicTransport,
    b_addr: SocketAddr,
    b_rx: mpsc::Receiver<Message>,
}

async fn pair(timeout: Duration, b_ip: Ipv4Addr, learns: bool) -> Pair {
    let (ca, ids) = dev_cluster(["t@a", "t@b"]).expect("certs");
    let (a, a_addr, a_rx) = guarded(
        "t@a",
        ids[0].clone(),
        "127.0.0.1:0".parse().expect("addr"),
        8,
        timeout,
    )
    .await;
    let (tx, b_rx) = mpsc::channel(1024);
    let mut b_cfg = QuicConfig::new(SocketAddr::from((b_ip, 0)), "t@b", ids[1].clone(), SCHEMA);
    if !learns {
        b_cfg.max_learned_links = 0;
    }
    let (b, b_addr) = QuicTransport::start(b_cfg, tx, None)
        .await
        .expect("start b");
    Pair {
        ca,
        a,
        a_addr,
        a_rx,
        b,
        b_addr,
        b_rx,
    }
}

/// Review of stop 50: the TLS phase of an inbound handshake had the whole
/// `handshake_timeout` (10 s): a dialer that stalled in TLS (after a Retry
/// or, as here with 1 of 8 slots taken, without one) held its slot 10 s,
/// where a real peer needs milliseconds. Now TLS must be done within a
/// quarter of it (2.5 s of 10 s), measured here from when its slot is
/// first seen taken (after the dialer's set-up).
#[tokio::test]
async fn a_dialer_stalled_in_tls_holds_its_slot_for_the_tls_bound_only() {
    let (ca, ids) = dev_cluster(["t@a"]).expect("certs");
    let timeout = Duration::from_secs(10);
    let (a, addr, _rx) = guarded(
        "t@a",
        ids[0].clone(),
        "127.0.0.1:0".parse().expect("addr"),
        8,
        timeout,
    )
    .await;
    let cert = ca.issue_client("stranger").expect("cert");
    let started = Instant::now();
    let stalled = stall_in_tls(Ipv4Addr::new(127, 0, 0, 2), addr, &cert, DEADLINE);
    // It holds a slot, then none once the TLS bound is past.
    wait_until("the stalled dialer took no slot", DEADLINE, || {
        a.handshakes_in_progress() == 1
    })
    .await;
    // The slot was taken at or before `seen`: it must be given back
    // within the 2.5 s bound of then, with slack for a loaded machine
    // (3.5 s: it was 1 s, one stall of a CI machine running every test
    // binary at once). The defect held it to the handshake timeout, 10 s.
    let seen = Instant::now();
    let bound = Duration::from_millis(2500) + Duration::from_millis(3500);
    while a.handshakes_in_progress() != 0 {
        assert!(
            seen.elapsed() < bound,
            "a dialer stalled in TLS still held its slot {:?} after it was seen taken (handshake_timeout {timeout:?})",
            seen.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let held = started.elapsed();
    assert!(
        held >= Duration::from_secs(2),
        "its slot was given back after {held:?}, before the 2.5 s TLS bound"
    );
    stalled.abort();
    a.shutdown().await;
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
    let timeout = Duration::from_secs(10);
    // b, the member, runs at 127.0.0.6, and a knows it there.
    let Pair {
        ca,
        a,
        a_addr,
        mut a_rx,
        b,
        b_addr: b_listen,
        ..
    } = pair(timeout, Ipv4Addr::new(127, 0, 0, 6), true).await;
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
    // b, the member, links to a: its message arrives at once.
    b.set_peers(BTreeMap::from([(node_id("t@a"), a_addr.to_string())]));
    let hello = Message {
        from: b_id,
        to: node_id("t@a"),
        term: 1,
        body: Body::TimeoutNow,
    };
    b.send(hello.clone());
    // 5 s: it arrives in milliseconds, and a member locked out gets in
    // only once a stranger's handshake or TLS bound ends (10 s). It was 2 s,
    // one stall of a CI machine running every test binary at once.
    let bound = Duration::from_secs(5);
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

/// Strangers at `ips` keep `per_ip` handshakes stalled in TLS each at
/// `to`, redialing as each ends, until dropped. `refused` counts the
/// attempts the acceptor refused.
struct Strangers {
    refused: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Strangers {
    fn start(ips: &[Ipv4Addr], per_ip: usize, to: SocketAddr, identity: &Identity) -> Strangers {
        let refused = Arc::new(AtomicU64::new(0));
        let tasks = ips
            .iter()
            .map(|&ip| {
                let (refused, identity) = (refused.clone(), identity.clone());
                tokio::spawn(async move {
                    let mut attempts = tokio::task::JoinSet::new();
                    let mut pace = tokio::time::interval(Duration::from_millis(50));
                    loop {
                        while attempts.len() < per_ip {
                            // Each gives up after a while and dials anew (the
                            // acceptor may have dropped it silently).
                            let stalled =
                                stall_in_tls(ip, to, &identity, Duration::from_millis(1500));
                            attempts.spawn(stalled);
                        }
                        if let Some(Ok(Ok(end))) = attempts.join_next().await
                            && end.contains("refused")
                        {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        pace.tick().await;
                    }
                })
            })
            .collect();
        Strangers { refused, tasks }
    }
}

impl Drop for Strangers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Review of stop 50: clients have no reserve, and strangers at a few real
/// addresses stalling in TLS kept every slot a client could take (each
/// for the timeout, refreshed as it ended): a new client could not connect.
/// Now a newcomer that finds the slots full takes the place of the oldest
/// handshake stalled in TLS for at least a fifth of the TLS bound (600 ms
/// of 3 s, the handshake timeout being 12 s) at an address holding two
/// slots more than its own: a client gets in within that age and its
/// redial delay (at most 100 ms here).
///
/// Teeth: without eviction a stranger's slot is given back only when the
/// node drops its stalled handshake, at the TLS bound (3 s) or the idle
/// timeout (3 s by default: the relay keeps the stranger's packets from
/// the node once it answered), whichever comes first, after the slot was
/// taken. Every slot is taken after the clock starts (just before the
/// strangers), so with the bound at that drop time no slot can free up
/// inside it: the defect fails every time. A longer handshake timeout does
/// not help (the idle timeout still drops them at 3 s) and a longer bound
/// lets the client, redialling every 100 ms, take a freed slot: with a
/// 5 s bound (after a 10 s or a 40 s timeout) it did so in most runs with
/// eviction stubbed out. The bound leaves the correct node about 2.4 s
/// past the eviction age for the strangers to fill the slots, the client
/// to dial and write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gets_in_while_strangers_stall_in_tls() {
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(12);
    let addr = free_addrs(1).remove(0);
    let (ca, ids) = dev_cluster([format!("kv@{addr}").as_str()]).expect("certs");
    // When the node drops a stalled handshake by itself (doc comment).
    let idle = QuicConfig::new(addr.parse().expect("addr"), "kv", ids[0].clone(), 0).idle_timeout;
    let bound = tls_timeout(HANDSHAKE_TIMEOUT).min(idle);
    let dir = tempfile::tempdir().expect("tempdir");
    let peer = Kv::peer()
        .listen(addr.clone())
        .data_dir(dir.path())
        .bootstrap()
        .identity(ids[0].clone())
        .tick(Duration::from_millis(20))
        // TLS bound 3 s, eviction age 600 ms (see the doc comment).
        .handshakes(8, HANDSHAKE_TIMEOUT)
        .start()
        .await
        .expect("peer starts");
    let client_cert = ca.issue_client("app").expect("client cert");
    let kv = KvClient::connect_with(
        [addr.as_str()],
        client_cert.clone(),
        ClientOptions::default(),
    )
    .await
    .expect("client");
    kv.put("k".into(), 1).await.expect("the first write");
    drop(kv);
    // Strangers at four addresses, three attempts each outstanding (at
    // most 2 slots per address, 6 not kept for members).
    let to: SocketAddr = addr.parse().expect("addr");
    let stranger = ca.issue_client("stranger").expect("cert");
    let ips: Vec<Ipv4Addr> = (2..=5).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    // Before any stranger's slot is taken: none is dropped before
    // `started + bound`.
    let started = Instant::now();
    let strangers = Strangers::start(&ips, 3, to, &stranger);
    wait_until("the strangers were never refused", DEADLINE, || {
        strangers.refused.load(Ordering::Relaxed) >= 4
    })
    .await;
    // A new client connects and writes within the bound. A connect redials
    // a member that refused it until its timeout (`Client::connect_with`,
    // since stop 51); an application that connects with a short timeout
    // tries again, here every 100 ms.
    let mut refusals = Vec::new();
    let write = async {
        let mut again = tokio::time::interval(Duration::from_millis(100));
        loop {
            again.tick().await;
            match KvClient::connect_with(
                [addr.as_str()],
                client_cert.clone(),
                ClientOptions::default().with_max_backoff(Duration::from_millis(100)),
            )
            .await
            {
                Ok(kv) => return kv.put("k".into(), 2).await,
                Err(e @ (Error::Transport(_) | Error::Unavailable(_))) => {
                    refusals.push(e.to_string())
                }
                Err(e) => return Err(e),
            }
        }
    };
    match tokio::time::timeout_at(started + bound, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("the client failed while strangers stalled in TLS: {e}"),
        Err(_) => panic!(
            "the client's write did not succeed within {bound:?} of the strangers' start while they stalled in TLS: {} connects failed (last: {:?}; {} stranger attempts refused)",
            refusals.len(),
            refusals.last(),
            strangers.refused.load(Ordering::Relaxed)
        ),
    }
    assert!(started.elapsed() < bound);
    drop(strangers);
    peer.shutdown().await.expect("clean shutdown");
}

/// Review of stop 50 (finding 1): below half the slots taken no Retry is
/// sent, so a member's first attempt (its address not yet validated) was
/// judged by its IP; strangers at that IP (another process on its host, or
/// Initial packets with a spoofed source) that filled the IP's share got
/// every attempt of the member refused, while most slots were free. An
/// unvalidated attempt that would be refused is now sent a Retry: the
/// member answers it from its own address and comes back validated, then
/// takes a member's slot.
#[tokio::test]
async fn strangers_at_a_members_ip_below_half_full_do_not_lock_it_out() {
    // A TLS bound (10 s) past the test: the strangers keep their slots.
    let timeout = Duration::from_secs(40);
    // b, the member, runs at 127.0.0.6.
    let Pair {
        ca,
        a,
        a_addr,
        mut a_rx,
        b,
        b_addr,
        ..
    } = pair(timeout, Ipv4Addr::new(127, 0, 0, 6), true).await;
    let b_id = node_id("t@b");
    a.set_peers(BTreeMap::from([(b_id, b_addr.to_string())]));
    // Two strangers at b's IP, other ports, stall in TLS: 2 of 8 slots
    // (not crowded: no Retry), and 127.0.0.6's share (a quarter) is full.
    let stranger = ca.issue_client("stranger").expect("cert");
    let stalled: Vec<_> = (0..2)
        .map(|_| stall_in_tls(Ipv4Addr::new(127, 0, 0, 6), a_addr, &stranger, DEADLINE))
        .collect();
    wait_until("the strangers at b's IP took no slots", DEADLINE, || {
        a.handshakes_in_progress() == 2
    })
    .await;
    let refused_before = a.refused_handshakes();
    // b links to a: its message arrives within the bound.
    b.set_peers(BTreeMap::from([(node_id("t@a"), a_addr.to_string())]));
    let hello = Message {
        from: b_id,
        to: node_id("t@a"),
        term: 1,
        body: Body::TimeoutNow,
    };
    b.send(hello.clone());
    // 5 s: it arrives in milliseconds, and a member locked out gets in
    // only once a stranger's handshake or TLS bound ends (10 s). It was 2 s,
    // one stall of a CI machine running every test binary at once.
    let bound = Duration::from_secs(5);
    match tokio::time::timeout(bound, a_rx.recv()).await {
        Ok(Some(got)) => assert_eq!(got, hello),
        Ok(None) => panic!("a's inbox closed"),
        Err(_) => panic!(
            "the member's message did not arrive within {bound:?} while 2 strangers at its IP stalled in TLS ({} slots taken of 8; {} attempts refused, {} retried)",
            a.handshakes_in_progress(),
            a.refused_handshakes() - refused_before,
            a.retried_handshakes()
        ),
    }
    assert_eq!(
        a.refused_handshakes(),
        refused_before,
        "the member's attempts were refused"
    );
    for s in &stalled {
        s.abort();
    }
    b.shutdown().await;
    a.shutdown().await;
}

/// A handshake a newcomer took the place of is dropped at once, not left
/// to run until its TLS bound: otherwise every eviction adds a handshake
/// beyond the cap (its task, TLS state and buffers), and strangers
/// churning evictions hold as many as they like. Four strangers with a
/// node certificate complete TLS and say nothing (never evicted: past
/// TLS); two more stall in TLS from 127.0.0.2, sent a Retry (half the
/// slots are taken) and so validated: the acceptor may send to them
/// (before validation QUIC's anti-amplification limit may keep its close
/// from the dialer). Once they are old enough (2 s, a fifth of the 10 s
/// TLS bound of a 40 s handshake timeout), a newcomer from 127.0.0.5
/// takes the oldest's place, and that dialer sees its connection closed
/// long before the TLS bound.
#[tokio::test]
async fn an_evicted_handshake_is_dropped() {
    let (ca, ids) = dev_cluster(["t@a"]).expect("certs");
    let timeout = Duration::from_secs(40);
    let tls_bound = Duration::from_secs(10);
    let (a, addr, _rx) = guarded(
        "t@a",
        ids[0].clone(),
        "127.0.0.1:0".parse().expect("addr"),
        8,
        timeout,
    )
    .await;
    let started = Instant::now();
    let past_tls = ca.issue_node("t@x", &[]).expect("cert");
    let mut held = Vec::new();
    for i in [6u8, 6, 7, 7] {
        held.push(
            raw_connect_from(&past_tls, Ipv4Addr::new(127, 0, 0, i), addr)
                .await
                .expect("a stranger's slot"),
        );
    }
    let stranger = ca.issue_client("stranger").expect("cert");
    let stalled: Vec<_> = (0..2)
        .map(|_| stall_in_tls(Ipv4Addr::new(127, 0, 0, 2), addr, &stranger, DEADLINE))
        .collect();
    wait_until("the stalled strangers took no 2 slots", DEADLINE, || {
        a.handshakes_in_progress() == 6
    })
    .await;
    assert!(
        a.retried_handshakes() >= 2,
        "the stalled ones were not validated"
    );
    // A time requirement, not synchronisation: the stalled handshakes
    // must be old enough to be evicted (a fifth of the TLS bound).
    tokio::time::sleep(tls_bound / 5 + Duration::from_millis(100)).await;
    assert_eq!(a.evicted_handshakes(), 0);
    let newcomer = stall_in_tls(Ipv4Addr::new(127, 0, 0, 5), addr, &stranger, DEADLINE);
    wait_until("the newcomer evicted no handshake", DEADLINE, || {
        a.evicted_handshakes() == 1
    })
    .await;
    // The evicted dialer's connection ends before the TLS bound could
    // have ended it (each slot was taken after `started`).
    wait_until(
        "no stalled dialer's connection ended before the TLS bound: the evicted handshake was not dropped",
        (started + tls_bound).saturating_duration_since(Instant::now()),
        || stalled.iter().any(|s| s.is_finished()),
    )
    .await;
    assert!(
        a.handshakes_in_progress() <= 6,
        "{} handshakes",
        a.handshakes_in_progress()
    );
    let mut ended = Vec::new();
    let mut running = 0;
    for s in stalled {
        if s.is_finished() {
            ended.push(s.await.expect("dialer task"));
        } else {
            running += 1;
            s.abort();
        }
    }
    assert_eq!((ended.len(), running), (1, 1), "ended: {ended:?}");
    assert_ne!(ended[0], "stalled", "the evicted dialer stalled to its end");
    assert!(started.elapsed() < tls_bound);
    newcomer.abort();
    drop(held);
    a.shutdown().await;
}

/// A handshake past TLS (a dialer with a certificate of the cluster CA,
/// during its hello) is never evicted: `serve_incoming` no longer watches
/// for an eviction once TLS is done, so a slot taken from it would let
/// the connection go on without one, beyond the cap. Six strangers with a
/// node certificate complete TLS and say nothing, holding the six slots
/// not kept for members longer than the eviction age; a seventh from
/// another address is refused, and nobody is evicted.
#[tokio::test]
async fn a_handshake_past_tls_is_never_evicted() {
    let (ca, ids) = dev_cluster(["t@a"]).expect("certs");
    let timeout = Duration::from_secs(10);
    let (a, a_addr, _rx) = guarded(
        "t@a",
        ids[0].clone(),
        "127.0.0.1:0".parse().expect("addr"),
        8,
        timeout,
    )
    .await;
    let stranger = ca.issue_node("t@x", &[]).expect("cert");
    let started = Instant::now();
    let mut held = Vec::new();
    for i in [2u8, 2, 3, 3, 4, 4] {
        held.push(
            raw_connect_from(&stranger, Ipv4Addr::new(127, 0, 0, i), a_addr)
                .await
                .expect("a stranger's slot"),
        );
    }
    assert_eq!(a.handshakes_in_progress(), 6);
    // A time requirement, not synchronisation: older than the eviction
    // age (a fifth of the 2.5 s TLS bound), were they still in TLS.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let seventh = raw_connect_from(&stranger, Ipv4Addr::new(127, 0, 0, 5), a_addr).await;
    match &seventh {
        Err(e) if e.contains("refused") => {}
        other => panic!(
            "the seventh stranger was not refused: {:?} ({} evicted)",
            other.as_ref().map(|_| "connected"),
            a.evicted_handshakes()
        ),
    }
    assert_eq!(
        a.evicted_handshakes(),
        0,
        "a handshake past TLS was evicted"
    );
    for (conn, _) in &held {
        assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
    }
    assert!(
        started.elapsed() < timeout,
        "too slow: the strangers' handshakes may have timed out"
    );
    drop(held);
    a.shutdown().await;
}

/// A member configured by name (as most deployments are) gets the
/// members' reserve: its address is known once its link resolved the name
/// (`QuicTransport::set_peers` keeps a name unresolved until then). Here
/// a knows b as `localhost:port`; strangers with a node certificate hold
/// the six slots not kept for members (past TLS: never evicted); b's
/// message still arrives, through a reserved slot.
#[tokio::test]
async fn a_member_configured_by_name_gets_the_reserve() {
    let timeout = Duration::from_secs(10);
    // b opens no link back to a before it is configured (a learned link
    // would be up before the strangers come, and carry b's message).
    let Pair {
        ca,
        a,
        a_addr,
        mut a_rx,
        b,
        b_addr: b_listen,
        mut b_rx,
    } = pair(timeout, Ipv4Addr::LOCALHOST, false).await;
    let (a_id, b_id) = (node_id("t@a"), node_id("t@b"));
    a.set_peers(BTreeMap::from([(
        b_id,
        format!("localhost:{}", b_listen.port()),
    )]));
    // a's link to b is up (it resolved the name on its way).
    let to_b = Message {
        from: a_id,
        to: b_id,
        term: 1,
        body: Body::TimeoutNow,
    };
    a.send(to_b.clone());
    match tokio::time::timeout(DEADLINE, b_rx.recv()).await {
        Ok(Some(got)) => assert_eq!(got, to_b),
        other => panic!("a's link to b at localhost did not come up: {other:?}"),
    }
    let started = Instant::now();
    let stranger = ca.issue_node("t@x", &[]).expect("cert");
    let mut held = Vec::new();
    for i in [2u8, 2, 3, 3, 4, 4] {
        held.push(
            raw_connect_from(&stranger, Ipv4Addr::new(127, 0, 0, i), a_addr)
                .await
                .expect("a stranger's slot"),
        );
    }
    assert_eq!(a.handshakes_in_progress(), 6);
    b.set_peers(BTreeMap::from([(a_id, a_addr.to_string())]));
    let hello = Message {
        from: b_id,
        to: a_id,
        term: 1,
        body: Body::TimeoutNow,
    };
    b.send(hello.clone());
    // 5 s: it arrives in milliseconds, and a member locked out gets in
    // only once a stranger's handshake or TLS bound ends (10 s). It was 2 s,
    // one stall of a CI machine running every test binary at once.
    let bound = Duration::from_secs(5);
    match tokio::time::timeout(bound, a_rx.recv()).await {
        Ok(Some(got)) => assert_eq!(got, hello),
        Ok(None) => panic!("a's inbox closed"),
        Err(_) => panic!(
            "the member configured by name did not get in within {bound:?} while strangers held the 6 open slots ({} attempts refused)",
            a.refused_handshakes()
        ),
    }
    assert!(
        started.elapsed() < timeout,
        "too slow: the strangers' handshakes may have timed out"
    );
    drop(held);
    b.shutdown().await;
    a.shutdown().await;
}
