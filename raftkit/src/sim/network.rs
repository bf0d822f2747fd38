//! The simulated network: per-link delays, loss, duplication, reordering,
//! late delivery and partitions (symmetric, one-way, and partial ones such
//! as a ring or a single bridge node).
//!
//! The network decides, for each message sent, whether and when it arrives;
//! the scheduler then delivers it. A cut link is checked both when a
//! message is sent and when it would arrive, so a partition also stops the
//! messages already in flight. A partition either drops what it cuts or
//! holds it as a backlog that the scheduler releases, reordered and partly
//! duplicated, when the partition heals. Late delivery holds a fraction of
//! messages back for up to many election timeouts: replies, votes,
//! `TimeoutNow` and snapshot chunks then arrive in later terms. Every
//! decision is drawn from the simulation's single seeded RNG.

use std::collections::BTreeSet;

use rand::Rng;
use rand::rngs::StdRng;

use crate::core::NodeId;

/// Fault settings of the network.
#[derive(Clone, Debug, Default)]
pub struct NetworkFaults {
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Extra random delay (ms) that reorders messages.
    pub jitter: u64,
    /// Probability that a message is held back and delivered late.
    pub hold: f64,
    /// Upper bound of the extra delay (ms) of a held message; it is drawn
    /// log-uniformly from `30..hold_ms`: from a fraction of an election
    /// timeout (100–200 ms) to many.
    pub hold_ms: u64,
    /// Slow nodes: the messages they send (or, with `slow_inbound`,
    /// receive) are held back with probability `slow_hold` instead of
    /// `hold` (a congested link, a saturated NIC).
    pub slow: BTreeSet<NodeId>,
    /// See `slow`.
    pub slow_inbound: bool,
    /// See `slow`.
    pub slow_hold: f64,
    /// Directed links that deliver nothing: `(from, to)`.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Cut links hold their messages (a backlog released at the heal)
    /// instead of dropping them.
    pub backlog: bool,
}
impl NetworkFaults {
    /// Whether `from` can reach `to`.
    pub fn reachable(&self, from: NodeId, to: NodeId) -> bool {
        !self.cut.contains(&(from, to))
    }

    /// Cuts both directions between every node of `a` and every node of `b`.
    pub fn split(&mut self, a: &[NodeId], b: &[NodeId]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
    }
}

/// The kinds of partition the nemesis chooses from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partition {
    /// Two sides, cut both ways.
    Split,
    /// One node cut off from everyone.
    Isolate,
    /// Some links cut in one direction only.
    OneWay,
    /// Each node hears only its ring neighbours.
    Ring,
    /// Two halves that only one bridge node connects.
    Bridge,
}

impl Partition {
    /// Every kind.
    pub const ALL: [Partition; 5] = [
        Partition::Split,
        Partition::Isolate,
        Partition::OneWay,
        Partition::Ring,
        Partition::Bridge,
    ];

    /// Builds the cut links of this partition over `nodes`, with `target`
    /// (often the current leader) given a special place where it matters.
    pub fn apply(
        self,
        nodes: &[NodeId],
        target: NodeId,
        rng: &mut StdRng,
        faults: &mut NetworkFaults,
    ) {
        let n = nodes.len();
        match self {
            Partition::Split => {
                let mut shuffled = nodes.to_vec();
                for i in (1..n).rev() {
                    shuffled.swap(i, rng.random_range(0..=i));
                }
                let k = rng.random_range(1..n);
                faults.split(&shuffled[..k], &shuffled[k..]);
            }
            Partition::Isolate => {
                let rest: Vec<_> = nodes.iter().copied().filter(|&x| x != target).collect();
                faults.split(&[target], &rest);
            }
            Partition::OneWay => {
                for &a in nodes {
                    for &b in nodes {
                        if a != b && rng.random_bool(0.3) {
                            faults.cut.insert((a, b));
                        }
                    }
                }
            }
            Partition::Ring => {
                for (i, &a) in nodes.iter().enumerate() {
                    for (j, &b) in nodes.iter().enumerate() {
                        let d = (i + n - j) % n;
                        if a != b && d != 1 && d != n - 1 {
                            faults.cut.insert((a, b));
                        }
                    }
                }
            }
            Partition::Bridge => {
                let others: Vec<_> = nodes.iter().copied().filter(|&x| x != target).collect();
                let half = others.len() / 2;
                faults.split(&others[..half], &others[half..]);
            }
        }
    }
}
