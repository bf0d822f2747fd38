//! Group 0, the placement: which groups hold the data of a sharded
//! deployment, which keys each owns, and where its replicas are.
//!
//! [`Placement`] is a small replicated state machine of its own, hosted by
//! every [`MultiNode`](super::MultiNode) of a sharded deployment as group
//! [`PLACEMENT_GROUP`] (0) next to the data groups (1, 2, ...), and
//! replicated like any group: same journal, links, sessions and rules.
//! Sharded clients ([`crate::client::ShardedClient`]) read it to route
//! each call by its shard key.
//!
//! # Hash ranges, not key ranges
//!
//! A key's place is decided by [`key_hash`] (FNV-1a 64 with a SplitMix64
//! finalizer: fixed forever, since a change would move every key), and
//! each data group owns one contiguous range of the 64-bit hash space.
//! Ordered key ranges would make a `scan` touch only the groups its range
//! spans, but without splitting ranges as they fill (not built) typical
//! keys that share a prefix (`user:0001`, `user:0002`, ...) would all land
//! in one group; hash ranges spread writes over every group from the
//! first write, and a scan asks every group and merges their answers in
//! key order. Contiguous hash ranges still allow a range to be split in
//! two later.
//!
//! # Invariants
//!
//! - Once formed ([`Placement::form`], the first formation of a sharded
//!   deployment), the shards' ranges are disjoint, sorted and cover the
//!   whole hash space `0..=u64::MAX`: every key has exactly one group.
//!   `form` on a formed placement changes nothing (every node of the
//!   formation may propose it; the first applied wins, the others are
//!   no-ops), and a list that breaks the invariant is refused.
//! - A group's Raft configuration is the truth about its replicas; the
//!   placement's `replicas` are a routing hint recorded at formation and
//!   updated by [`Placement::set_replicas`] with the voters of each
//!   committed, non-joint configuration, by the node that moved a replica
//!   and by the group's leader ([`super::placement_sync`]), never from a
//!   move's intent. A client sent to a node that no longer hosts the group
//!   is told so ([`Error::NotHosted`]) and re-reads the placement until it
//!   names other replicas; a follower of the group redirects it to the
//!   leader.

use serde::{Deserialize, Serialize};

use super::GroupId;
use crate::prelude::*;

/// The group that holds the placement.
pub const PLACEMENT_GROUP: GroupId = 0;

/// One data group's share of the keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// The group (1 and up).
    pub group: GroupId,
    /// The first hash it owns.
    pub start: u64,
    /// The last hash it owns (inclusive).
    pub end: u64,
    /// The advertised addresses of the nodes with a replica (a routing
    /// hint; the group's configuration is the truth).
    pub replicas: Vec<String>,
}

/// Group 0's state: the shards, sorted by range.
#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "raftkit_placement")]
pub struct Placement {
    shards: Vec<Shard>,
}

#[crate::state_machine]
impl Placement {
    /// Forms the placement if it is empty and `shards` is valid (see the
    /// invariants): returns whether it was formed by this command.
    #[write]
    pub fn form(&mut self, shards: Vec<Shard>) -> bool {
        if !self.shards.is_empty() || check(&shards).is_err() {
            return false;
        }
        self.shards = shards;
        true
    }

    /// Records the replicas of `group` (after its configuration changed):
    /// returns whether the group exists.
    #[write]
    pub fn set_replicas(&mut self, group: GroupId, replicas: Vec<String>) -> bool {
        match self.shards.iter_mut().find(|s| s.group == group) {
            Some(shard) => {
                shard.replicas = replicas;
                true
            }
            None => false,
        }
    }

    /// Every shard, sorted by range (empty before formation).
    #[read]
    pub fn shards(&self) -> Vec<Shard> {
        self.shards.clone()
    }
}

/// Group 0 as a node of state machine `S` hosts it: [`Placement`] under
/// `S`'s name. A group's members are named `<state machine>@<address>`
/// (their node ids derive from it), and every group of a node has the
/// node's id, so the placement group takes the data groups' name; its
/// commands, schema and state are [`Placement`]'s.
pub struct PlacementGroup<S> {
    placement: Placement,
    _sm: std::marker::PhantomData<fn() -> S>,
}

impl<S> Default for PlacementGroup<S> {
    fn default() -> Self {
        PlacementGroup {
            placement: Placement::default(),
            _sm: std::marker::PhantomData,
        }
    }
}

impl<S: StateMachine> StateMachine for PlacementGroup<S> {
    type Write = <Placement as StateMachine>::Write;
    type WriteOutput = <Placement as StateMachine>::WriteOutput;
    type Read = <Placement as StateMachine>::Read;
    type ReadOutput = <Placement as StateMachine>::ReadOutput;
    const NAME: &'static str = S::NAME;
    const SCHEMA_FINGERPRINT: u64 = <Placement as StateMachine>::SCHEMA_FINGERPRINT;

    fn schema() -> crate::schema::Schema {
        Placement::schema()
    }

    fn apply(&mut self, ctx: &mut Ctx, command: Self::Write) -> Self::WriteOutput {
        self.placement.apply(ctx, command)
    }

    fn query(&self, ctx: &Ctx, query: Self::Read) -> Self::ReadOutput {
        self.placement.query(ctx, query)
    }

    fn error_policy(command: &Self::Write) -> ErrorPolicy {
        Placement::error_policy(command)
    }

    fn handler_name(command: &Self::Write) -> &'static str {
        Placement::handler_name(command)
    }

    fn query_name(query: &Self::Read) -> &'static str {
        Placement::query_name(query)
    }

    fn snapshot(&self) -> Result<Vec<u8>, crate::state_machine::CodecError> {
        self.placement.snapshot()
    }

    fn restore(data: &[u8]) -> Result<Self, crate::state_machine::CodecError> {
        Ok(PlacementGroup {
            placement: Placement::restore(data)?,
            _sm: std::marker::PhantomData,
        })
    }
}

/// Where each key goes: `shards` checked once, then looked up by hash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    shards: Vec<Shard>,
}

impl Routes {
    /// Checks `shards` (sorted, disjoint, covering every hash; see
    /// [`check`]).
    pub fn new(shards: Vec<Shard>) -> Result<Routes, String> {
        check(&shards)?;
        Ok(Routes { shards })
    }

    /// The shard that owns `key`.
    pub fn shard_of(&self, key: &[u8]) -> Option<&Shard> {
        let h = key_hash(key);
        // Ranges are sorted and contiguous: the last shard starting at or
        // before `h` owns it.
        let i = self.shards.partition_point(|s| s.start <= h);
        i.checked_sub(1).and_then(|i| self.shards.get(i))
    }

    /// Every shard, sorted by range.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The shard of `group`.
    pub fn group(&self, group: GroupId) -> Option<&Shard> {
        self.shards.iter().find(|s| s.group == group)
    }
}

/// Whether `shards` is a valid placement: at least one shard, ranges sorted,
/// contiguous and covering `0..=u64::MAX`, groups distinct and not
/// [`PLACEMENT_GROUP`].
pub fn check(shards: &[Shard]) -> Result<(), String> {
    let Some(first) = shards.first() else {
        return Err("a placement has at least one shard".into());
    };
    if first.start != 0 {
        return Err(format!("the first shard starts at {}, not 0", first.start));
    }
    let mut groups = std::collections::BTreeSet::new();
    for (i, s) in shards.iter().enumerate() {
        if s.group == PLACEMENT_GROUP || !groups.insert(s.group) {
            return Err(format!("group {} is reserved or listed twice", s.group));
        }
        if s.end < s.start {
            return Err(format!("group {}'s range ends before it starts", s.group));
        }
        match shards.get(i + 1) {
            Some(next) if s.end.checked_add(1) != Some(next.start) => {
                return Err(format!(
                    "groups {} and {} are not contiguous",
                    s.group, next.group
                ));
            }
            None if s.end != u64::MAX => {
                return Err(format!("the last shard ends at {}, not u64::MAX", s.end));
            }
            _ => {}
        }
    }
    Ok(())
}

/// `n` shards, groups `1..=n`, splitting the hash space evenly, every one
/// replicated on `replicas`.
pub fn even(n: u64, replicas: &[String]) -> Vec<Shard> {
    let n = n.max(1);
    let bound = |i: u64| -> u64 {
        // i * 2^64 / n, below 2^64 for i < n.
        u64::try_from((u128::from(i) << 64) / u128::from(n)).unwrap_or(u64::MAX)
    };
    (0..n)
        .map(|i| Shard {
            group: i + 1,
            start: bound(i),
            end: if i + 1 == n {
                u64::MAX
            } else {
                bound(i + 1) - 1
            },
            replicas: replicas.to_vec(),
        })
        .collect()
}

/// The hash a key is placed by: FNV-1a 64 followed by the SplitMix64
/// finalizer (so that keys differing in their last byte spread over the
/// whole range). Fixed forever: changing it would move every key.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A value a handler argument marked `#[write(shard = arg)]` can be: its
/// bytes are the shard key.
pub trait ShardKey {
    /// The bytes the key is placed by.
    fn shard_bytes(&self) -> Vec<u8>;
}

impl ShardKey for String {
    fn shard_bytes(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl ShardKey for str {
    fn shard_bytes(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl ShardKey for Vec<u8> {
    fn shard_bytes(&self) -> Vec<u8> {
        self.clone()
    }
}

macro_rules! int_key {
    ($($t:ty),*) => {$(
        impl ShardKey for $t {
            fn shard_bytes(&self) -> Vec<u8> {
                self.to_be_bytes().to_vec()
            }
        }
    )*};
}
int_key!(u8, u16, u32, u64, u128, i8, i16, i32, i64, i128);

impl<T: ShardKey + ?Sized> ShardKey for &T {
    fn shard_bytes(&self) -> Vec<u8> {
        (**self).shard_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_shards_cover_the_hash_space_once() {
        for n in [1, 2, 3, 7, 8, 64, 1000] {
            let shards = even(n, &["a:1".into()]);
            assert_eq!(shards.len() as u64, n);
            check(&shards).unwrap();
        }
        let routes = Routes::new(even(8, &[])).unwrap();
        let mut per_group = std::collections::BTreeMap::<u64, usize>::new();
        for i in 0..8000 {
            let key = format!("key{i:05}");
            let shard = routes.shard_of(key.as_bytes()).unwrap();
            let h = key_hash(key.as_bytes());
            assert!(shard.start <= h && h <= shard.end);
            *per_group.entry(shard.group).or_default() += 1;
        }
        // Keys with a common prefix spread over every group.
        assert_eq!(per_group.len(), 8);
        assert!(
            per_group.values().all(|&n| n > 700 && n < 1300),
            "{per_group:?}"
        );
    }

    #[test]
    fn broken_placements_are_refused() {
        let mut gap = even(4, &[]);
        gap[1].end -= 1;
        assert!(check(&gap).is_err());
        let mut short = even(4, &[]);
        short.pop();
        assert!(check(&short).is_err());
        let mut twice = even(4, &[]);
        twice[2].group = twice[1].group;
        assert!(check(&twice).is_err());
        let mut zero = even(4, &[]);
        zero[0].group = PLACEMENT_GROUP;
        assert!(check(&zero).is_err());
        assert!(check(&[]).is_err());
        let mut p = Placement::default();
        assert!(!p.form(gap));
        assert!(p.form(even(2, &[])));
        assert!(!p.form(even(3, &[])), "a formed placement stays");
        assert_eq!(p.shards().len(), 2);
        assert!(p.set_replicas(2, vec!["b:2".into()]));
        assert!(!p.set_replicas(5, vec![]));
    }

    /// Ranges are inclusive at both ends: a key hashing exactly to a
    /// shard's first or last hash belongs to that shard, not to its
    /// neighbour (the sweep above almost never lands on a boundary). A key
    /// routed to the neighbour would be written to a group that does not
    /// own it, and read back from one that never saw it.
    #[test]
    fn keys_on_a_range_boundary_go_to_the_shard_that_owns_it() {
        let key = b"user:0001";
        let h = key_hash(key);
        let shard = |group, start, end| Shard {
            group,
            start,
            end,
            replicas: vec![],
        };
        // The key's hash starts shard 2.
        let routes = Routes::new(vec![shard(1, 0, h - 1), shard(2, h, u64::MAX)]).expect("valid");
        assert_eq!(routes.shard_of(key).map(|s| s.group), Some(2));
        // The key's hash ends shard 1.
        let routes = Routes::new(vec![shard(1, 0, h), shard(2, h + 1, u64::MAX)]).expect("valid");
        assert_eq!(routes.shard_of(key).map(|s| s.group), Some(1));
    }

    #[test]
    fn the_hash_is_fixed() {
        // Changing the hash would move every stored key to another group.
        // (Values computed independently, from the definition.)
        assert_eq!(key_hash(b""), 0xf52a_15e9_a9b5_e89b);
        assert_eq!(key_hash(b"a"), 0x02c0_bdbf_4814_20f8);
        assert_eq!(key_hash(b"user:0001"), 0x4315_c90e_5eda_a47f);
    }
}
