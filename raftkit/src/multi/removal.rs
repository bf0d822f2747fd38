//! Learning that this node's replica was removed from its group, without
//! depending on one message.
//!
//! # The gap this closes
//!
//! A replica retires once it sees a **committed** configuration without
//! its node ([`hosting`](super::hosting)). The core tells a removed member
//! of its removal with one last AppendEntries when the removal commits
//! (`core::membership`), and stops replicating to it right after. That
//! message is lost when the node is down or cut off at that moment, and it
//! is refused when the node's log does not match it (a node still being
//! caught up by a snapshot: `multi_moves`'s leader-crash test found both).
//! Such a replica keeps the configuration it last heard of, hears from no
//! leader again, and campaigns forever, ignored by the members (thesis
//! §4.2.3): its state is never deleted.
//!
//! # The protocol
//!
//! **Ask.** On every round of the node's retirer (an election timeout), a
//! replica **asks** every other member of its latest configuration
//! [`MemberQuery`](crate::transport::frame::PeerFrame::MemberQuery)`{ group }`
//! over the authenticated peer link when
//! - its latest configuration does not list its node (a removal known but
//!   not known committed; such a replica never campaigns, so it keeps the
//!   leader it last followed), or
//! - it has known no leader for two election timeouts (a
//!   removed member that missed the news campaigns in vain),
//!
//! at most once per two election timeouts per group. A replica with a leader
//! never asks, so a quiesced group (its followers keep their leader) costs
//! nothing.
//!
//! **Answer.** A node hosting the group answers with its latest
//! configuration and its commit index
//! ([`MemberAnswer`]). It answers whoever asks (a member's answer about
//! its own configuration reveals nothing a node certificate does not
//! already let its holder learn by joining the group's traffic); the
//! answer needs a link back to an asker its groups no longer list, so the
//! answerer keeps one to each recent asker for ten seconds, to at most 64
//! askers at once.
//!
//! **Judge.** The asker retires its replica on an answer only
//! when every one of these holds:
//! 1. the answerer is a member of the asker's own latest configuration (a
//!    node it may have asked); any other node — a stranger with a node
//!    certificate of the cluster included — is ignored;
//! 2. the answer's configuration is **committed** (the answerer's commit
//!    index covers it) and not joint;
//! 3. it does not list the asker;
//! 4. its index is at least the asker's own configuration's (an answer
//!    older than what the asker knows says nothing about it), **or** the
//!    answerer's commit index covers the asker's configuration's index:
//!    the answerer's committed log then holds, at that index, an entry that
//!    is not a configuration (its latest configuration is older), so the
//!    asker's configuration entry there was never committed and never will
//!    be (a committed index keeps its entry, Raft §5.3/§5.4). Without this
//!    second case a deposed leader holding an uncommitted configuration
//!    entry past the index of the configuration that removed it would get
//!    only "stale" answers until the group changed its configuration again,
//!    which may be never;
//! 5. if the asker's replica never held a configuration listing its node
//!    (it was hosted on demand and is catching up from a snapshot or log
//!    that predates its addition — such a learner asks too, as it is not
//!    listed), the answerer leads the group: a lagging follower's committed
//!    configuration may predate the addition, while the leader's lists the
//!    learner from the moment it appended it.
//!
//! The same "was it ever listed" rule guards [`hosting`](super::hosting)'s
//! own check.
//!
//! # Why it is safe
//!
//! A committed entry is in every later leader's log (Raft §5.4, Leader
//! Completeness), so a committed configuration without this node at index
//! `i` means the group went on without it from `i`: the replica's log is
//! no longer needed for any quorum of that configuration or of later ones
//! (configurations change one at a time from a committed one, thesis
//! §4.1). This is the same fact [`hosting`](super::hosting)'s own check
//! uses, learned from a member instead of from the leader. Rule 4 keeps a
//! stale answer from retiring a node that a later *committed*
//! configuration it already holds lists again; a later configuration the
//! answerer's committed log proves uncommitted does not count. A member that lies in its answer is a Byzantine
//! member, outside Raft's fault model: it could equally append entries
//! that corrupt the group.
//!
//! Retiring is crash-safe as in [`hosting`](super::hosting): the journal's
//! durable removal record (the tombstone) first, then the files.
//!
//! # Limits
//!
//! - A replica whose every other listed member left the group (or is down
//!   for good) gets no answer and keeps its state; it never disturbs the
//!   group (§4.2.3).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use super::GroupId;
use crate::core::NodeId;
use crate::runtime::PeerStatus;
pub use crate::transport::frame::MemberAnswer;

/// The most askers an answering node keeps links to at once (hostile input
/// never grows the links without a bound).
pub(crate) const MAX_ASKERS: usize = 64;

/// How long an answering node keeps a link to an asker its groups do not
/// list.
pub(crate) const ASKER_LINGER: Duration = Duration::from_secs(10);

/// What this node says of its replica, answering a member query.
pub(crate) fn answer_of(st: &PeerStatus) -> MemberAnswer {
    MemberAnswer {
        config_index: st.config_index,
        commit: st.commit,
        joint: st.joint,
        leader: st.role == crate::core::Role::Leader,
        term: st.term,
        members: st.members.iter().map(|m| m.id).collect(),
    }
}

/// Whether the replica of node `me` whose status is `st` should retire on
/// `answer`, received from node `from` (the rules of the
/// [module documentation](self)).
///
/// `listed` says whether the replica ever held a configuration listing its
/// node; one that never did (a learner catching up from a snapshot taken
/// before its addition) believes only the group's leader, and only one
/// whose term is at least its own.
pub(crate) fn judge(
    me: NodeId,
    st: &PeerStatus,
    listed: bool,
    fence: crate::core::Index,
    from: NodeId,
    answer: &MemberAnswer,
) -> bool {
    let asked = from != me && st.members.iter().any(|m| m.id == from);
    let committed = answer.config_index > 0 && answer.commit >= answer.config_index;
    // A leader of an older term than the one this replica knows was
    // deposed (it may not know yet): its configuration may predate this
    // replica's addition.
    let current_leader = answer.leader && answer.term >= st.term;
    // A configuration up to the replica's fence removed an earlier replica
    // of this node, not this one (see `hosting`).
    asked
        && (listed || current_leader)
        && answer.config_index > fence
        && committed
        && !answer.joint
        && !answer.members.contains(&me)
        && (answer.config_index >= st.config_index || answer.commit >= st.config_index)
}

/// When a replica asks whether it is still a member (see the
/// [module documentation](self)).
#[derive(Debug)]
pub(crate) struct Asker {
    /// How long a replica may know no leader before it asks.
    pub(crate) after: Duration,
    /// How often one group asks at most.
    pub(crate) every: Duration,
    /// Since when each group's replica has known no leader.
    leaderless: HashMap<GroupId, Instant>,
    /// When each group last asked.
    asked: HashMap<GroupId, Instant>,
}

impl Asker {
    /// An asker that asks after `after` without a leader, at most once per
    /// `every` per group.
    pub(crate) fn new(after: Duration, every: Duration) -> Asker {
        Asker {
            after,
            every,
            leaderless: HashMap::new(),
            asked: HashMap::new(),
        }
    }

    /// Forgets the groups not in `hosted` (retired or stopped).
    pub(crate) fn retain(&mut self, hosted: &[GroupId]) {
        self.leaderless.retain(|g, _| hosted.contains(g));
        self.asked.retain(|g, _| hosted.contains(g));
    }

    /// Who `group`'s replica of node `me`, whose status is `st`, asks now:
    /// the other members of its latest configuration, or nobody.
    pub(crate) fn ask(
        &mut self,
        me: NodeId,
        group: GroupId,
        st: &PeerStatus,
        now: Instant,
    ) -> Vec<NodeId> {
        if st.leader.is_some() {
            self.leaderless.remove(&group);
        } else {
            self.leaderless.entry(group).or_insert(now);
        }
        if st.config_index == 0 || st.fatal.is_some() {
            return Vec::new();
        }
        let unlisted = !st.members.iter().any(|m| m.id == me);
        let stranded = self
            .leaderless
            .get(&group)
            .is_some_and(|since| now.saturating_duration_since(*since) >= self.after);
        let due = self
            .asked
            .get(&group)
            .is_none_or(|at| now.saturating_duration_since(*at) >= self.every);
        if !(unlisted || stranded) || !due {
            return Vec::new();
        }
        self.asked.insert(group, now);
        st.members
            .iter()
            .map(|m| m.id)
            .filter(|id| *id != me)
            .collect()
    }
}

/// The askers an answering node keeps a link to: `(node, address)` with
/// when it last asked, at most [`MAX_ASKERS`].
#[derive(Debug, Default)]
pub(crate) struct Askers {
    recent: BTreeMap<NodeId, (String, Instant)>,
}

impl Askers {
    /// Records that `node`, reached at `addr`, asked now. Whether it is
    /// kept (a new asker past [`MAX_ASKERS`] is not; the oldest expire
    /// first).
    pub(crate) fn note(&mut self, node: NodeId, addr: String, now: Instant) -> bool {
        self.expire(now);
        if !self.recent.contains_key(&node) && self.recent.len() >= MAX_ASKERS {
            return false;
        }
        self.recent.insert(node, (addr, now));
        true
    }

    /// Forgets askers older than [`ASKER_LINGER`]. Whether any was.
    pub(crate) fn expire(&mut self, now: Instant) -> bool {
        let before = self.recent.len();
        self.recent
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < ASKER_LINGER);
        self.recent.len() != before
    }

    /// The askers kept, with their addresses.
    pub(crate) fn links(&self) -> impl Iterator<Item = (&NodeId, &String)> {
        self.recent.iter().map(|(id, (addr, _))| (id, addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::MemberStatus;

    fn status(members: &[NodeId], config_index: u64, leader: Option<NodeId>) -> PeerStatus {
        PeerStatus {
            id: 7,
            leader,
            config_index,
            commit: config_index,
            members: members
                .iter()
                .map(|id| MemberStatus {
                    id: *id,
                    addr: None,
                    voter: true,
                    matched: None,
                    next: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn answer(members: &[NodeId], config_index: u64, commit: u64) -> MemberAnswer {
        MemberAnswer {
            config_index,
            commit,
            joint: false,
            leader: false,
            term: 0,
            members: members.to_vec(),
        }
    }

    #[test]
    fn only_a_members_committed_newer_configuration_without_me_retires() {
        let me = 7;
        let st = status(&[1, 2, 7], 10, None);
        // A member's committed configuration without me, newer than mine.
        assert!(judge(me, &st, true, 0, 1, &answer(&[1, 2, 9], 12, 15)));
        // The same index as mine (the same entry, committed): retires.
        assert!(judge(me, &st, true, 0, 2, &answer(&[1, 2, 9], 10, 10)));
        // From a node my configuration does not list (a stranger with a
        // node certificate, or the new member): ignored.
        assert!(!judge(me, &st, true, 0, 9, &answer(&[1, 2, 9], 12, 15)));
        assert!(!judge(me, &st, true, 0, 5, &answer(&[1, 2], 12, 15)));
        // From myself: ignored.
        assert!(!judge(me, &st, true, 0, 7, &answer(&[1, 2], 12, 15)));
        // Not committed at the answerer.
        assert!(!judge(me, &st, true, 0, 1, &answer(&[1, 2, 9], 12, 11)));
        // Still lists me.
        assert!(!judge(me, &st, true, 0, 1, &answer(&[1, 2, 7, 9], 12, 15)));
        // Joint: not final.
        let mut joint = answer(&[1, 2, 9], 12, 15);
        joint.joint = true;
        assert!(!judge(me, &st, true, 0, 1, &joint));
        // Older than the configuration I hold, from an answerer that has
        // not committed up to it (with its commit past 10, the answer would
        // prove my configuration uncommitted: see the next test).
        assert!(!judge(me, &st, true, 0, 1, &answer(&[1, 2, 9], 9, 9)));
        // An answerer with no configuration at all.
        assert!(!judge(me, &st, true, 0, 1, &answer(&[], 0, 0)));
        // A replica that was never listed (a learner catching up from an
        // old snapshot) believes only the leader: a lagging follower's
        // committed configuration predates its addition.
        let learner = status(&[1, 2, 3], 10, None);
        assert!(!judge(
            me,
            &learner,
            false,
            0,
            1,
            &answer(&[1, 2, 3], 10, 40)
        ));
        let mut from_leader = answer(&[1, 2, 3], 10, 40);
        from_leader.leader = true;
        assert!(judge(me, &learner, false, 0, 1, &from_leader));
        // ...but not a leader of an older term than the learner knows (a
        // deposed leader that has not noticed yet; the new one added the
        // learner).
        let mut newer = learner.clone();
        newer.term = 5;
        from_leader.term = 4;
        assert!(!judge(me, &newer, false, 0, 1, &from_leader));
        from_leader.term = 5;
        assert!(judge(me, &newer, false, 0, 1, &from_leader));
        // ...and the leader's configuration that lists it keeps it.
        from_leader.members.push(me);
        assert!(!judge(me, &learner, false, 0, 1, &from_leader));
        // A replica moved back: the removal of its predecessor (at or below
        // its fence) says nothing of it; a later one does.
        assert!(!judge(me, &st, true, 12, 1, &answer(&[1, 2, 9], 12, 15)));
        assert!(judge(me, &st, true, 11, 1, &answer(&[1, 2, 9], 12, 15)));
    }

    #[test]
    fn an_uncommitted_newer_configuration_does_not_keep_a_removed_replica_forever() {
        // Node 7 led the group and appended a configuration change at index
        // 20 that never committed; it was deposed, and the new leader removed
        // it with a configuration committed at index 14. No configuration
        // change follows, so every member answers with index 14 < 20: the
        // old rule 4 refused every answer and the replica lived forever.
        let me = 7;
        let st = status(&[1, 2, 7, 8], 20, None);
        // The answerer's commit covers index 20 and its latest
        // configuration is older: the entry at 20 is not a configuration,
        // so node 7's is dead. Retires.
        assert!(judge(me, &st, true, 0, 1, &answer(&[1, 2, 9], 14, 25)));
        assert!(judge(me, &st, true, 0, 2, &answer(&[1, 2, 9], 14, 20)));
        // The answerer has not committed up to 20: node 7's entry there may
        // still commit (the answer is stale). Kept.
        assert!(!judge(me, &st, true, 0, 1, &answer(&[1, 2, 9], 14, 19)));
        // Still only a member's committed, non-joint configuration without
        // node 7 counts.
        assert!(!judge(me, &st, true, 0, 1, &answer(&[1, 2, 7], 14, 25)));
        assert!(!judge(me, &st, true, 0, 9, &answer(&[1, 2, 9], 14, 25)));
        let mut joint = answer(&[1, 2, 9], 14, 25);
        joint.joint = true;
        assert!(!judge(me, &st, true, 0, 1, &joint));
    }

    #[test]
    fn a_replica_asks_when_unlisted_or_leaderless_for_a_while_and_not_too_often() {
        let me = 7;
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut a = Asker::new(ms(400), ms(400));
        // Listed, with a leader: never asks.
        let led = status(&[1, 2, 7], 10, Some(1));
        assert!(a.ask(me, 5, &led, t0).is_empty());
        assert!(a.ask(me, 5, &led, t0 + ms(10_000)).is_empty());
        // Listed, leaderless: asks once the leaderless time passed.
        let lost = status(&[1, 2, 7], 10, None);
        let t1 = t0 + ms(20_000);
        assert!(a.ask(me, 5, &lost, t1).is_empty());
        assert!(a.ask(me, 5, &lost, t1 + ms(399)).is_empty());
        assert_eq!(a.ask(me, 5, &lost, t1 + ms(400)), vec![1, 2]);
        // Not again before `every`.
        assert!(a.ask(me, 5, &lost, t1 + ms(500)).is_empty());
        assert_eq!(a.ask(me, 5, &lost, t1 + ms(800)), vec![1, 2]);
        // A leader again: stops asking, and the leaderless clock restarts.
        assert!(a.ask(me, 5, &led, t1 + ms(2_000)).is_empty());
        assert!(a.ask(me, 5, &lost, t1 + ms(2_100)).is_empty());
        // Unlisted: asks at once, even with a leader (a removed non-voter
        // keeps its leader: it never campaigns).
        let unlisted = status(&[1, 2, 9], 12, Some(1));
        assert_eq!(a.ask(me, 6, &unlisted, t1), vec![1, 2, 9]);
        // No configuration: nobody to ask.
        assert!(
            a.ask(me, 8, &status(&[], 0, None), t1 + ms(5_000))
                .is_empty()
        );
        a.retain(&[5]);
        assert!(!a.asked.contains_key(&6));
    }

    #[test]
    fn askers_are_bounded_and_expire() {
        let t0 = Instant::now();
        let mut s = Askers::default();
        for n in 0..MAX_ASKERS as u64 {
            assert!(s.note(n, format!("a{n}"), t0));
        }
        assert!(!s.note(1_000, "x".into(), t0), "full");
        assert!(s.note(3, "a3".into(), t0), "a known asker is refreshed");
        assert!(
            s.note(1_000, "x".into(), t0 + ASKER_LINGER),
            "the others expired"
        );
        assert_eq!(s.links().count(), 1);
    }
}
