//! A write whose output's `Serialize` returns `Err` (not a panic), on a
//! three-node cluster: it follows the handler's error policy on every
//! replica alike. Under `halt` every replica halts at that entry and the
//! caller is answered `Halted`; under `skip` (the default) the caller gets
//! `Error::Handler` (applied `Yes`), the state change stays, and the
//! cluster goes on. Before (stop 56): `Error::Handler` under `halt` too,
//! and no node halted.
//!
//! Leader changes under CI load are expected: calls are retried on the
//! leader of the moment while retryable, writes under a session so that a
//! retry is never a second apply.

use std::sync::Arc;
use std::time::Duration;

use super::session::SessionRef;
use super::test_gate::until;
use crate::core::Role;
use crate::error::{Applied, Error};
use crate::prelude::*;
use crate::state_machine::output_tests::{Picky, PickyRead, PickyWrite, REFUSED, UNREADABLE};
use crate::transport::memory::MemoryNetwork;

const ADDRS: [&str; 3] = ["picky:1", "picky:2", "picky:3"];

/// Three peers on an in-memory network.
async fn cluster(net_seed: u64) -> Vec<Peer<Picky>> {
    let net = MemoryNetwork::new(net_seed);
    let mut peers = Vec::new();
    for addr in ADDRS {
        let net = net.clone();
        let peer = Picky::peer()
            .in_memory()
            .listen(addr)
            .bootstrap_members(ADDRS)
            .tick(Duration::from_millis(50))
            .transport(move |id, inbox| Arc::new(net.endpoint(id, inbox)))
            .start()
            .await
            .expect("peer starts");
        peers.push(peer);
    }
    peers
}

/// How long a test keeps retrying a call that may succeed on a retry: a
/// loaded 2-core CI machine can change leaders several times.
const PATIENCE: Duration = Duration::from_secs(60);

/// Whether the call is retried by these tests: the retryable errors
/// ([`Error::is_retryable`]) but `Halted`, which is what the halt test
/// expects. An attempt not answered within 20 s counts as `Timeout`.
fn worth_a_retry(e: &Error) -> bool {
    e.is_retryable() && !matches!(e, Error::Halted { .. })
}

/// `f` run on the current leader, retried (on the leader of the moment)
/// while it fails with an error [`worth_a_retry`], for up to
/// [`PATIENCE`]. Use it only for calls that may run twice: reads, opening
/// a session, a write under a session ([`write_once`]).
async fn on_the_leader<T, F>(
    peers: &[Peer<Picky>],
    f: impl Fn(Peer<Picky>) -> F,
) -> Result<T, Error>
where
    F: std::future::Future<Output = Result<T, Error>>,
{
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let leader = until("a leader", || {
            peers.iter().position(|p| p.status().role == Role::Leader)
        })
        .await;
        let r = tokio::time::timeout(Duration::from_secs(20), f(peers[leader].clone()))
            .await
            .unwrap_or(Err(Error::Timeout));
        match r {
            Err(e) if worth_a_retry(&e) && std::time::Instant::now() < deadline => continue,
            r => return r,
        }
    }
}

/// `command` written once under a fresh session: a retry after an
/// ambiguous answer (a leader change) has the same session and sequence
/// number, so it gets the stored reply instead of a second apply (thesis
/// §6.3).
async fn write_once(peers: &[Peer<Picky>], command: &PickyWrite) -> Result<Vec<u8>, Error> {
    let session = on_the_leader(peers, |p| async move { p.open_session().await })
        .await
        .expect("a session opens");
    let command = crate::state_machine::encode("command", command).expect("encodes");
    on_the_leader(peers, |p| {
        let command = command.clone();
        async move {
            p.write_in_session(
                command,
                Some(SessionRef {
                    id: session,
                    seq: 1,
                    acked_below: 1,
                }),
            )
            .await
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_encode_error_under_halt_halts_every_replica() {
    let peers = cluster(21).await;
    let r = write_once(&peers, &PickyWrite::PutStrict { v: REFUSED }).await;
    match &r {
        Err(e @ Error::Halted { message }) => {
            assert_eq!(e.applied(), Applied::Maybe, "{e:?}");
            assert!(message.contains("did not encode"), "{e}");
        }
        other => panic!("a write whose output does not encode under halt got {other:?}"),
    }
    // Deterministic: every replica halts at that entry.
    for (i, p) in peers.iter().enumerate() {
        let halted = until(&format!("peer {i} halts"), || p.status().halted).await;
        assert!(halted.contains("`put_strict`"), "peer {i}: {halted}");
    }
    for p in &peers {
        let _ = p.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_encode_error_under_skip_is_a_handler_error_and_the_cluster_goes_on() {
    let peers = cluster(22).await;
    let r = write_once(&peers, &PickyWrite::Put { v: REFUSED }).await;
    match &r {
        Err(e @ Error::Handler { message }) => {
            assert_eq!(e.applied(), Applied::Yes, "{e:?}");
            assert!(message.contains("did not encode"), "{e}");
        }
        other => panic!("a write whose output does not encode under skip got {other:?}"),
    }
    // The state change stays, and later writes apply.
    let n = on_the_leader(&peers, |p| async move { p.read(PickyRead::Get).await }).await;
    assert!(
        matches!(
            n,
            Ok(crate::state_machine::output_tests::PickyReadOutput::Get(
                REFUSED
            ))
        ),
        "{n:?}"
    );
    let r = write_once(&peers, &PickyWrite::Put { v: 8 }).await;
    assert!(r.is_ok(), "{r:?}");
    for p in &peers {
        assert_eq!(p.status().halted, None);
        let _ = p.shutdown().await;
    }
}

/// `Peer::write` of a write whose reply does not decode here: it was
/// applied, and the error says so (`Yes`). Before (stop 56):
/// `Error::Codec`, applied `Maybe`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_write_whose_reply_does_not_decode_says_applied() {
    let peers = cluster(23).await;
    // Not under a session: `Peer::write` is what this test is about. A
    // retry after a leader change may apply `keep` twice, which leaves the
    // same state and the same answer.
    let r = on_the_leader(&peers, |p| async move {
        p.write(PickyWrite::Keep { v: UNREADABLE }).await
    })
    .await;
    match &r {
        Err(e) => {
            assert_eq!(e.applied(), Applied::Yes, "{e:?}");
            assert!(!e.is_retryable(), "{e:?}");
        }
        other => panic!("a write whose reply does not decode got {other:?}"),
    }
    let n = on_the_leader(&peers, |p| async move { p.read(PickyRead::Get).await }).await;
    assert!(
        matches!(
            n,
            Ok(crate::state_machine::output_tests::PickyReadOutput::Get(
                UNREADABLE
            ))
        ),
        "{n:?}"
    );
    for p in &peers {
        let _ = p.shutdown().await;
    }
}
