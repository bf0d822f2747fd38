//! The quinn transport settings every raftkit QUIC connection uses (peer
//! links, client connections, watch streams): keep-alives, the idle
//! timeout, the first round-trip estimate and how often the peer sends ACK
//! frames; and the receive windows of a node's inbound connections.
//!
//! # Receive windows
//!
//! quinn buffers what a peer sends on a stream until the application
//! reads it, up to the stream's receive window, and on all streams of a
//! connection together up to the connection's receive window, which is
//! unbounded by default (`VarInt::MAX`). A client connection's streams
//! wait unread while the node has no room for their requests (see
//! `runtime::intake`), so a node's inbound connections are set up
//! ([`server_transport_config`]) with a finite connection window, the
//! node's client receive window ([`DEFAULT_CLIENT_RECEIVE_WINDOW`],
//! `QuicConfig::client_receive_window`): at most that many bytes of a
//! client connection are ever buffered unread, whatever streams it opens
//! (at most [`MAX_INBOUND_STREAMS`] at once, each with quinn's usual
//! window, [`STREAM_RECEIVE_WINDOW`]).
//!
//! A server's transport parameters are sent before its application knows
//! the connection's ALPN, and flow-control credit once given cannot be
//! taken back (RFC 9000 §4.1), so every inbound connection starts with the
//! client window; a peer link ([`open_peer_window`], once its `node`
//! certificate is checked) then raises its connection window back to
//! quinn's unbounded default, leaving Raft traffic and snapshots with the
//! windows they had: a peer link is one stream, bounded by its stream
//! window. A peer connection may open one stream, its link's
//! ([`PEER_LINK_STREAMS`]): one that opens another is closed
//! (`transport::accept`), so a `node` certificate cannot make a node hold
//! a task, a frame buffer and a stream window per stream for up to
//! [`MAX_INBOUND_STREAMS`] streams per connection. The connection window only raises (a MAX_DATA frame), so the
//! peer's first bytes (its hello) arrive under the client window, far
//! larger than a hello.
//!
//! # Acknowledgement frequency
//!
//! Without the QUIC acknowledgement-frequency extension
//! (draft-ietf-quic-ack-frequency, which quinn implements) a receiver acks
//! every second ack-eliciting packet at once (RFC 9000 §13.2.2). raftkit's
//! traffic is request/answer with the answer late: a follower answers an
//! append only after its fsync, a node answers a client's write only after
//! the commit. So the immediate ACKs go out alone, each one a `sendmsg` on
//! one side and a wake-up plus a `recvmsg` on the other, for no data.
//! Measured with `kv serve` × 3 and 64 closed-loop durable clients
//! (issue 16, fifth stop): 0.96-1.0 UDP datagrams per write over the
//! whole cluster by default, 0.78-0.86 with these settings, and 3-8 % less
//! CPU per write per node.
//!
//! Every connection therefore asks its peer ([`ACK_ELICITING_THRESHOLD`],
//! [`MAX_ACK_DELAY`]) to ack after more than 4 ack-eliciting packets or
//! after 5 ms, whichever comes first. ACKs still ride on every packet that
//! carries data, so a request/answer exchange acks itself; out-of-order
//! packets are still acked at once (the extension's reordering threshold,
//! 2 by default, `packet_threshold - 1`), so loss detection is unchanged;
//! the threshold stays below quinn's initial congestion window (about 12
//! full packets), so slow start never waits for the delay. A peer that
//! does not support the extension ignores the request.
//!
//! # Invariants
//!
//! 1. Both ends of every raftkit connection run [`transport_config`]:
//!    the server side through `quic_server_config`'s users, the client side
//!    through `connect_client` and the remote client.
//! 2. The delayed-ACK request never exceeds 25 ms (quinn clamps it to the
//!    larger of the path RTT and 25 ms), so a probe timeout grows by at
//!    most [`MAX_ACK_DELAY`].

use std::sync::Arc;
use std::time::Duration;

use quinn::{AckFrequencyConfig, VarInt};

/// How many ack-eliciting packets a peer may receive before it must send an
/// ACK (it acks at the next one).
pub(crate) const ACK_ELICITING_THRESHOLD: u32 = 4;

/// How long a peer may hold an ACK back when fewer packets than
/// [`ACK_ELICITING_THRESHOLD`] arrived.
pub(crate) const MAX_ACK_DELAY: Duration = Duration::from_millis(5);

/// The receive window of one stream of an inbound connection: quinn's
/// default (100 ms at 100 Mbit/s), stated so that the bound of the module
/// doc does not depend on a quinn release.
pub(crate) const STREAM_RECEIVE_WINDOW: u32 = 1_250_000;

/// The most bidirectional streams a peer may have open at once on an
/// inbound connection (quinn's default, stated): a client's mux stream and
/// watches, and a version-1 client's stream per request.
pub(crate) const MAX_INBOUND_STREAMS: u32 = 100;

/// The default receive window of a client connection: the most bytes a
/// node buffers unread for one client connection, on all its streams
/// together (2 MiB: above one stream's window, so a single large request
/// streams at the full stream window).
pub const DEFAULT_CLIENT_RECEIVE_WINDOW: u64 = 2 << 20;

/// Builds a quinn transport configuration with keep-alives, an idle
/// timeout and the acknowledgement frequency of the module doc.
pub(crate) fn transport_config(
    keep_alive: Duration,
    idle: Duration,
) -> Arc<quinn::TransportConfig> {
    Arc::new(base_config(keep_alive, idle))
}

/// [`transport_config`] for a node's inbound connections: a connection
/// receive window of `client_window` bytes (at least one byte, at most
/// `VarInt::MAX`), [`STREAM_RECEIVE_WINDOW`] per stream and at most
/// [`MAX_INBOUND_STREAMS`] streams (module doc).
pub(crate) fn server_transport_config(
    keep_alive: Duration,
    idle: Duration,
    client_window: u64,
) -> Arc<quinn::TransportConfig> {
    let mut t = base_config(keep_alive, idle);
    let window = VarInt::from_u64(client_window.max(1)).unwrap_or(VarInt::MAX);
    t.receive_window(window);
    t.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_INBOUND_STREAMS));
    Arc::new(t)
}

/// The most bidirectional streams a dialer may have open at once on a
/// peer connection: a node opens one per connection, its link's
/// (`transport::quic`).
pub(crate) const PEER_LINK_STREAMS: u32 = 1;

/// Gives an inbound peer link (its `node` certificate checked) quinn's
/// unbounded connection window back, and lowers the streams it may open
/// to [`PEER_LINK_STREAMS`] (module doc). The credit for
/// [`MAX_INBOUND_STREAMS`] streams sent in the handshake cannot be taken
/// back (RFC 9000 §4.6): no more is given, and the accept side closes a
/// connection that opens a stream beyond its link's (`transport::accept`).
pub(crate) fn open_peer_window(conn: &quinn::Connection) {
    conn.set_receive_window(VarInt::MAX);
    conn.set_max_concurrent_bi_streams(VarInt::from_u32(PEER_LINK_STREAMS));
}

fn base_config(keep_alive: Duration, idle: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(keep_alive));
    let idle_ms = u32::try_from(idle.as_millis()).unwrap_or(u32::MAX);
    t.max_idle_timeout(Some(VarInt::from_u32(idle_ms).into()));
    // Peers sit in one datacenter or on one machine: start from a 20 ms
    // round-trip estimate instead of the RFC's 333 ms. Besides faster loss
    // recovery on a fresh link, this bounds how long a closed connection
    // that never measured its RTT drains (3 PTO), which holds the port.
    t.initial_rtt(Duration::from_millis(20));
    let mut acks = AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(VarInt::from_u32(ACK_ELICITING_THRESHOLD));
    acks.max_ack_delay(Some(MAX_ACK_DELAY));
    t.ack_frequency_config(Some(acks));
    // Nothing here opens a unidirectional stream: a peer may open none
    // (quinn's default of 100 would let any peer park a stream window of
    // data on each, never read).
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use quinn::Endpoint;

    use super::transport_config;
    use crate::tls::dev_cluster;
    use crate::transport::quic::{connect_client, quic_server_config};

    const DEADLINE: Duration = Duration::from_secs(20);

    /// One client streams 200 packets' worth of data one way to a server;
    /// returns the server side's connection statistics once all of it is
    /// read, and the client's.
    async fn one_way_transfer() -> (quinn::ConnectionStats, quinn::ConnectionStats) {
        let (ca, ids) = dev_cluster(["t@a"]).expect("certs");
        let client = ca.issue_client("t@c").expect("client cert");
        let mut server_config = quic_server_config(&ids[0]).expect("server config");
        server_config.transport_config(transport_config(
            Duration::from_secs(2),
            Duration::from_secs(10),
        ));
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let server = Endpoint::server(server_config, listen).expect("server endpoint");
        let addr = server.local_addr().expect("local addr");
        const CHUNK: usize = 1000;
        const CHUNKS: usize = 200;
        let served = tokio::spawn(async move {
            let conn = server
                .accept()
                .await
                .expect("incoming")
                .await
                .expect("handshake");
            let (_send, mut recv) = conn.accept_bi().await.expect("stream");
            let data = recv.read_to_end(CHUNK * CHUNKS).await.expect("read");
            (conn.stats(), data.len())
        });
        let conn = tokio::time::timeout(DEADLINE, connect_client(addr, &client))
            .await
            .expect("connects in time")
            .expect("connects");
        let (mut send, _recv) = conn.open_bi().await.expect("open");
        for _ in 0..CHUNKS {
            send.write_all(&[7u8; CHUNK]).await.expect("write");
        }
        send.finish().expect("finish");
        let (stats, len) = tokio::time::timeout(DEADLINE, served)
            .await
            .expect("served in time")
            .expect("server task");
        assert_eq!(len, CHUNK * CHUNKS);
        (stats, conn.stats())
    }

    /// Both ends send the ACK_FREQUENCY request and the other end receives
    /// it (without the request quinn acks every second packet at once). The
    /// number of ACKs itself is not asserted: on loopback the receiver reads
    /// datagrams in batches and acks once per batch either way, so a count
    /// would not tell the settings apart; the saving shows on the cluster's
    /// late answers (module doc).
    #[tokio::test]
    async fn each_side_asks_its_peer_to_ack_less_often() {
        let (server, client) = one_way_transfer().await;
        assert!(client.frame_tx.ack_frequency >= 1, "{client:?}");
        assert!(server.frame_rx.ack_frequency >= 1, "{server:?}");
        assert!(server.frame_tx.ack_frequency >= 1, "{server:?}");
    }

    /// Review of stop 50 (finding 5): a member is matched by its exact
    /// address only because `validated` means "answered a Retry" (a Retry
    /// token proves the whole socket address); a NEW_TOKEN token proves the
    /// IP only. The server sends none, whatever quinn's features (its
    /// `bloom` feature, on by default, sends 2 per connection).
    #[test]
    fn the_server_sends_no_address_validation_tokens() {
        let (_ca, ids) = dev_cluster(["t@a"]).expect("certs");
        let server = quic_server_config(&ids[0]).expect("server config");
        let tokens = format!("{:?}", server.validation_token);
        assert!(tokens.contains("sent: 0"), "{tokens}");
    }
}
