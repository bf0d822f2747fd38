//! Values nested deeper than the decoder's limit (a recursive argument
//! type, one byte per level on the wire) sent by a client over real QUIC:
//! refused, never applied, and every peer keeps serving. Before the limit,
//! decoding such a command or query overflowed the stack of the peer
//! decoding it, which aborts the whole process (no panic to catch). The
//! limit is for ingress only: a deep reply decodes in the client.

use raftkit::client::Submit;
use raftkit::error::Applied;
use raftkit::prelude::*;

/// A recursive argument: one enum level and one byte per `Neg`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Expr {
    Lit(u64),
    Neg(Box<Expr>),
}

impl Expr {
    /// `Neg` `levels - 1` times around `Lit(value)`.
    fn nested(levels: usize, value: u64) -> Expr {
        (1..levels).fold(Expr::Lit(value), |e, _| Expr::Neg(Box::new(e)))
    }

    fn eval(&self) -> i128 {
        let mut sign = 1;
        let mut e = self;
        while let Expr::Neg(inner) = e {
            sign = -sign;
            e = inner;
        }
        match e {
            Expr::Lit(v) => sign * i128::from(*v),
            Expr::Neg(_) => unreachable!("the loop unwraps every Neg"),
        }
    }
}

#[derive(StateMachine, Default, Serialize, Deserialize)]
pub struct Calc {
    last: i128,
    applied: u64,
}

#[raftkit::state_machine]
impl Calc {
    #[write]
    fn eval(&mut self, e: Expr) -> i128 {
        self.applied += 1;
        self.last = e.eval();
        self.last
    }

    #[read]
    fn probe(&self, e: Expr) -> i128 {
        e.eval()
    }

    /// An answer `levels` deep (the client decodes it).
    #[read]
    fn build(&self, levels: u32) -> Expr {
        Expr::nested(levels as usize, 1)
    }

    #[read]
    fn applied(&self) -> u64 {
        self.applied
    }
}

/// Handler tag 0 (`eval` or `probe`) with an `Expr` of `levels` levels.
fn deep_bytes(levels: usize) -> Vec<u8> {
    let mut bytes = vec![0u8];
    bytes.extend(std::iter::repeat_n(1u8, levels - 1));
    bytes.extend_from_slice(&[0, 0]);
    bytes
}

const DEEP: usize = 200_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_command_or_query_is_refused_and_every_peer_keeps_serving()
-> Result<(), raftkit::Error> {
    let cluster = raftkit::dev::Cluster::<Calc>::start(3).await?;
    let calc = cluster.client();
    assert_eq!(calc.eval(Expr::nested(3, 5)).await?, 5);

    // Through the network client: the leader's check refuses the write.
    let raw = cluster.raw_client();
    let e = Submit::write(raw, deep_bytes(DEEP))
        .await
        .expect_err("a too deep command is refused");
    assert!(matches!(e, raftkit::Error::Rejected(_)), "{e:?}");
    assert_eq!(e.applied(), Applied::No, "{e}");
    assert!(e.to_string().contains("nested deeper than"), "{e}");
    let e = Submit::read(raw, deep_bytes(DEEP))
        .await
        .expect_err("a too deep query is refused");
    assert_eq!(e.applied(), Applied::No, "{e:?}");
    assert!(e.to_string().contains("nested deeper than"), "{e}");

    // On every peer directly (a follower serves reads from its apply
    // thread). Every peer has applied the first write first, so each knows
    // the leader: a refusal below is the depth check's, not a `NotLeader`.
    let commit = cluster.leader().expect("a leader").status().commit;
    for peer in cluster.peers() {
        let mut w = peer.watch();
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            w.wait_for(|s| s.applied >= commit),
        )
        .await
        .expect("every peer applies the first write in time")
        .expect("peer alive");
    }
    let mut followers = 0;
    for peer in cluster.peers() {
        if peer.status().role != raftkit::core::Role::Leader {
            followers += 1;
        }
        for (kind, e) in [
            (
                "write",
                peer.write_encoded(deep_bytes(DEEP))
                    .await
                    .expect_err("refused"),
            ),
            (
                "read",
                peer.read_encoded(deep_bytes(DEEP))
                    .await
                    .expect_err("refused"),
            ),
            // A stale read is served by the member asked, from its own
            // apply thread: a follower decodes the query itself.
            (
                "stale read",
                peer.read_encoded_with(deep_bytes(DEEP), raftkit::client::Consistency::Stale)
                    .await
                    .expect_err("refused"),
            ),
        ] {
            let name = peer.name();
            assert!(
                matches!(&e, raftkit::Error::Rejected(m) if m.contains("nested deeper than")),
                "{name} {kind}: {e:?}"
            );
            assert_eq!(e.applied(), Applied::No, "{name} {kind}: {e:?}");
        }
    }

    assert!(followers >= 2, "the follower reads were not tried");

    // Every peer still serves: a normal write commits on all three, and
    // nothing of the refused ones was applied.
    assert_eq!(calc.eval(Expr::nested(100, 9)).await?, -9);
    assert_eq!(calc.probe(Expr::nested(101, 4)).await?, 4);
    assert_eq!(calc.applied().await?, 2);
    for peer in cluster.peers() {
        assert!(peer.status().halted.is_none(), "{} halted", peer.name());
    }

    // A reply is decoded without the limit (it comes from the server, after
    // the command ran: refusing it would report a served call as failed).
    assert_eq!(calc.build(1_000).await?, Expr::nested(1_000, 1));
    assert_eq!(calc.applied().await?, 2);

    cluster.shutdown().await
}
