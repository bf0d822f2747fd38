//! An in-process transport with fault injection, for tests.
//!
//! A [`MemoryNetwork`] is a shared switchboard (cheap to clone; clones share
//! state). Each node gets a [`MemoryTransport`] from
//! [`MemoryNetwork::endpoint`], which delivers messages straight into the
//! destination's inbox channel. Faults are injected on the network:
//! partitions, one-way cuts, isolation, random drops (from a seeded RNG, so
//! a test is reproducible given the same sequence of sends) and random
//! delays (tokio timers).
//!
//! # Invariants
//!
//! 1. [`Transport::send`] never blocks: a full or closed inbox drops the
//!    message, as a congested network would.
//! 2. Whether a message is blocked or dropped is decided when it is sent;
//!    a delayed message already in flight when a partition starts is still
//!    delivered (as on a real network).
//! 3. A node's messages go only to peers listed by its last
//!    [`Transport::set_peers`] call (to every registered node before the
//!    first call).
//! 4. Registering a node again (a restart) replaces its inbox.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

use super::Transport;
use crate::core::{Message, NodeId};

/// A shared in-process network. Clones share state.
#[derive(Clone)]
pub struct MemoryNetwork {
    state: Arc<Mutex<NetState>>,
}

struct NetState {
    inboxes: HashMap<NodeId, mpsc::Sender<Message>>,
    /// Directed pairs `(from, to)` that cannot talk.
    blocked: BTreeSet<(NodeId, NodeId)>,
    isolated: BTreeSet<NodeId>,
    drop_rate: f64,
    delay_ms: Range<u64>,
    rng: StdRng,
    delivered: u64,
    dropped: u64,
    duplicate_rate: f64,
    observer: Option<Observer>,
}

/// Sees every message the network routes: the sender, the message, and
/// whether the network would deliver it (or schedule it for delayed
/// delivery), each copy of a duplicated message once. Returns whether to
/// deliver it after all (`false` drops it).
pub type Observer = Arc<dyn Fn(NodeId, &Message, bool) -> bool + Send + Sync>;

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("MemoryNetwork")
            .field("nodes", &s.inboxes.len())
            .field("blocked", &s.blocked)
            .field("isolated", &s.isolated)
            .field("drop_rate", &s.drop_rate)
            .field("delay_ms", &s.delay_ms)
            .finish()
    }
}

impl Default for MemoryNetwork {
    fn default() -> Self {
        MemoryNetwork::new(0)
    }
}

impl MemoryNetwork {
    /// A network without faults whose random drops and delays are drawn
    /// from an RNG seeded with `seed`.
    pub fn new(seed: u64) -> MemoryNetwork {
        MemoryNetwork {
            state: Arc::new(Mutex::new(NetState {
                inboxes: HashMap::new(),
                blocked: BTreeSet::new(),
                isolated: BTreeSet::new(),
                drop_rate: 0.0,
                delay_ms: 0..0,
                rng: StdRng::seed_from_u64(seed),
                delivered: 0,
                dropped: 0,
                duplicate_rate: 0.0,
                observer: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        // A panic while holding the lock leaves plain data behind; carry on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `node` (replacing an earlier registration) and returns its
    /// transport; messages to `node` arrive on `inbox`.
    pub fn endpoint(&self, node: NodeId, inbox: mpsc::Sender<Message>) -> MemoryTransport {
        self.lock().inboxes.insert(node, inbox);
        MemoryTransport {
            net: self.clone(),
            node,
            peers: Arc::new(Mutex::new(None)),
        }
    }

    /// Blocks every link between a node of `a` and a node of `b`, both ways.
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut s = self.lock();
        for &x in a {
            for &y in b {
                s.blocked.insert((x, y));
                s.blocked.insert((y, x));
            }
        }
        tracing::debug!(?a, ?b, "memory network: partition");
    }

    /// Blocks messages from `from` to `to` only.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.lock().blocked.insert((from, to));
        tracing::debug!(from, to, "memory network: one-way cut");
    }

    /// Blocks every message to and from `node`.
    pub fn isolate(&self, node: NodeId) {
        self.lock().isolated.insert(node);
        tracing::debug!(node, "memory network: isolate");
    }

    /// Drops each message with probability `p` (clamped to `0.0..=1.0`).
    pub fn set_drop_rate(&self, p: f64) {
        self.lock().drop_rate = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
    }

    /// Delays each message by a uniformly random number of milliseconds in
    /// `ms` (an empty range, such as `0..0`, means no delay).
    pub fn set_delay(&self, ms: Range<u64>) {
        self.lock().delay_ms = ms;
    }

    /// Delivers each delivered message a second time with probability `p`
    /// (clamped to `0.0..=1.0`), each copy with its own delay.
    pub fn set_duplicate_rate(&self, p: f64) {
        self.lock().duplicate_rate = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
    }

    /// Calls `observer` for every message routed from now on (a testing
    /// hook: the whole-runtime simulation records its trace with it).
    pub fn observe(&self, observer: Observer) {
        self.lock().observer = Some(observer);
    }

    /// Removes every partition, cut and isolation. The drop rate and delay
    /// stay as set.
    pub fn heal(&self) {
        let mut s = self.lock();
        s.blocked.clear();
        s.isolated.clear();
        tracing::debug!("memory network: healed");
    }

    /// How many messages were delivered to an inbox (or scheduled for
    /// delayed delivery) and how many were dropped, so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.lock();
        (s.delivered, s.dropped)
    }

    fn route(&self, from: NodeId, msg: Message) {
        let copy = {
            let mut s = self.lock();
            let p = s.duplicate_rate;
            (p > 0.0 && s.rng.random::<f64>() < p).then(|| msg.clone())
        };
        self.route_one(from, msg);
        if let Some(copy) = copy {
            self.route_one(from, copy);
        }
    }

    fn route_one(&self, from: NodeId, msg: Message) {
        let to = msg.to;
        let observer = self.lock().observer.clone();
        let (inbox, delay) = {
            let mut s = self.lock();
            let blocked = s.blocked.contains(&(from, to))
                || s.isolated.contains(&from)
                || s.isolated.contains(&to);
            let dropped = blocked || (s.drop_rate > 0.0 && s.rng.random::<f64>() < s.drop_rate);
            let inbox = if dropped {
                None
            } else {
                s.inboxes.get(&to).cloned()
            };
            let Some(inbox) = inbox else {
                s.dropped += 1;
                tracing::trace!(from, to, kind = msg.body.kind(), "memory network: dropped");
                drop(s);
                if let Some(observe) = &observer {
                    observe(from, &msg, false);
                }
                return;
            };
            s.delivered += 1;
            let delay = if s.delay_ms.is_empty() {
                0
            } else {
                let range = s.delay_ms.clone();
                s.rng.random_range(range)
            };
            (inbox, delay)
        };
        if let Some(observe) = &observer
            && !observe(from, &msg, true)
        {
            let mut s = self.lock();
            s.delivered -= 1;
            s.dropped += 1;
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if delay > 0 => {
                handle.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let _ = inbox.try_send(msg);
                });
            }
            _ => {
                let _ = inbox.try_send(msg);
            }
        }
    }
}

/// One node's handle on a [`MemoryNetwork`].
#[derive(Clone, Debug)]
pub struct MemoryTransport {
    net: MemoryNetwork,
    node: NodeId,
    /// `None` until the first `set_peers`: every registered node is reachable.
    peers: Arc<Mutex<Option<BTreeSet<NodeId>>>>,
}

impl MemoryTransport {
    /// The node this transport sends for.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The network this transport belongs to.
    pub fn network(&self) -> &MemoryNetwork {
        &self.net
    }
}

impl Transport for MemoryTransport {
    fn send(&self, msg: Message) {
        let listed = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|peers| peers.contains(&msg.to));
        if listed {
            self.net.route(self.node, msg);
        } else {
            self.net.lock().dropped += 1;
        }
    }

    fn set_peers(&self, peers: BTreeMap<NodeId, String>) {
        *self.peers.lock().unwrap_or_else(|p| p.into_inner()) = Some(peers.into_keys().collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Body;

    fn msg(from: NodeId, to: NodeId) -> Message {
        Message {
            from,
            to,
            term: 1,
            body: Body::TimeoutNow,
        }
    }

    struct Node {
        t: MemoryTransport,
        rx: mpsc::Receiver<Message>,
    }

    fn nodes(net: &MemoryNetwork, n: u64) -> Vec<Node> {
        (1..=n)
            .map(|id| {
                let (tx, rx) = mpsc::channel(64);
                Node {
                    t: net.endpoint(id, tx),
                    rx,
                }
            })
            .collect()
    }

    /// Sends `from -> to` and reports whether it arrived.
    fn reaches(ns: &mut [Node], from: NodeId, to: NodeId) -> bool {
        ns[from as usize - 1].t.send(msg(from, to));
        ns[to as usize - 1].rx.try_recv().is_ok()
    }

    #[test]
    fn partition_cut_isolate_and_heal() {
        let net = MemoryNetwork::new(1);
        let mut ns = nodes(&net, 3);
        assert!(reaches(&mut ns, 1, 2));

        net.partition(&[1], &[2, 3]);
        assert!(!reaches(&mut ns, 1, 2));
        assert!(!reaches(&mut ns, 3, 1));
        assert!(reaches(&mut ns, 2, 3));
        net.heal();
        assert!(reaches(&mut ns, 1, 2) && reaches(&mut ns, 3, 1));

        net.cut(1, 2);
        assert!(!reaches(&mut ns, 1, 2));
        assert!(reaches(&mut ns, 2, 1));
        net.heal();

        net.isolate(3);
        assert!(!reaches(&mut ns, 3, 1) && !reaches(&mut ns, 2, 3));
        assert!(reaches(&mut ns, 1, 2));
        net.heal();
        assert!(reaches(&mut ns, 3, 1));
    }

    #[test]
    fn drop_rate_is_seeded_and_peers_filter() {
        let run = |seed| {
            let net = MemoryNetwork::new(seed);
            let mut ns = nodes(&net, 2);
            net.set_drop_rate(0.5);
            (0..200).map(|_| reaches(&mut ns, 1, 2)).collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7), "same seed, same drops");
        let arrived = a.iter().filter(|x| **x).count();
        assert!((50..150).contains(&arrived), "{arrived} of 200 arrived");

        let net = MemoryNetwork::new(0);
        let mut ns = nodes(&net, 3);
        ns[0].t.set_peers(BTreeMap::from([(2, String::new())]));
        assert!(reaches(&mut ns, 1, 2));
        assert!(!reaches(&mut ns, 1, 3));
    }

    #[tokio::test]
    async fn delay_delivers_later() {
        let net = MemoryNetwork::new(3);
        let mut ns = nodes(&net, 2);
        net.set_delay(10..20);
        ns[0].t.send(msg(1, 2));
        assert!(ns[1].rx.try_recv().is_err());
        let got = tokio::time::timeout(Duration::from_secs(1), ns[1].rx.recv())
            .await
            .expect("delivered within the deadline");
        assert_eq!(got, Some(msg(1, 2)));
    }
}
