//! Membership operations on a running peer (Raft thesis §4): the API behind
//! `add-server`, `remove-server` and `transfer-leader`.
//!
//! Members are named by address: the member at `addr` is the peer named
//! `<state machine>@<addr>` (see [`crate::identity`]). Every change goes
//! through the leader's core, which runs it by joint consensus, refuses a
//! second change while one is in flight, and only changes the configuration
//! after committing an entry of its own term.
//!
//! Invariant: a change is sent to the node task as an edit ([`ConfEdit`]:
//! add a learner, promote a learner, remove a member, replace a voter by
//! a learner in one joint change: a replica move's step), which the node task
//! applies to its core's latest configuration when it proposes it, never
//! a whole configuration built from the status the caller read. So two
//! admins' changes (in this process, or remote ones through the client
//! protocol's `AddServer`, `AddLearner` and `RemoveServer`, served by
//! these same methods) never undo each other: the later one is applied
//! on top of the earlier one, or refused with [`Error::Rejected`] ("a
//! configuration change is already in flight", nothing proposed) while
//! the earlier one has not committed. An edit the latest configuration
//! already has proposes nothing; the call still waits for a committed
//! configuration that has it. The status is read only to wait and to
//! check ([`Peer::add_server`] decides from it whether the learner step
//! is needed). [`Peer::change_config`] still proposes a whole target, for
//! callers that own the group's membership.
//!
//! `add_server` first adds the new member as a learner and waits until it has
//! caught up by the thesis §4.2.1 rounds rule: replication proceeds in
//! rounds, each round replicating up to the leader's last index at the
//! round's start; once a round finishes within an election timeout, the
//! learner is close enough to be promoted without hurting availability.
//! After at most [`MAX_CATCH_UP_ROUNDS`] rounds the call fails with a clear
//! error and the learner stays a learner.
//!
//! Caught up is not enough: a learner that runs an older binary acknowledges
//! entries it cannot apply (it halts at the first one whose write tag it
//! does not know, or at a snapshot of a newer state version) and, as a
//! voter, would count in every quorum while halted and disable a write the
//! voters had enabled (the leader enables a write only once every voter
//! knows it). So before promoting, the leader checks the learner's schema
//! ([`crate::schema::SchemaBook::check_promotion`]), as its hello showed it
//! (over QUIC; it waits up to ten election timeouts for that hello, which
//! the learner sends once it has the configuration that lists the leader):
//! the learner must know every write tag the voters have enabled, and a
//! state version no lower than every voter's. Otherwise the call fails with
//! [`Error::Rejected`] (nothing was promoted; the learner stays a learner,
//! to be removed with `remove_server`).
//!
//! Invariant: `add_server` never shrinks the set of enabled writes.
//! Not checked: whether a learner with a compatible schema has halted for
//! another reason (a handler's panic under the halt policy, a storage
//! error). Its acknowledgements still count as caught up: the leader learns
//! only what the learner has stored (`matched`), not what it has applied,
//! and nothing in replication tells it more.

use std::time::Duration;

// The runtime's clock (virtual under the whole-runtime simulation).
use tokio::time::Instant;

use super::Peer;
use super::node::Command;
use crate::core::{Configuration, Index, NodeId, Role};
use crate::error::Error;
use crate::identity::{default_name, node_id};
use crate::state_machine::StateMachine;

/// Rounds `add_server` waits for a learner to catch up before giving up.
pub const MAX_CATCH_UP_ROUNDS: u32 = 10;

impl<S: StateMachine> Peer<S> {
    /// The node id of the member at `addr`.
    pub fn member_id(addr: &str) -> NodeId {
        node_id(&default_name(S::NAME, addr))
    }

    /// The configuration the status shows, on the leader. Read only: what
    /// a caller waits for or checks, never the base of a change (the
    /// status may predate a change that reaches the node first; see
    /// [`ConfEdit`]).
    fn current_config(&self) -> Result<Configuration, Error> {
        let st = self.status();
        if st.role != Role::Leader {
            return Err(Error::NotLeader {
                hint: st.leader_addr,
            });
        }
        let mut conf = Configuration::default();
        for m in &st.members {
            if m.voter {
                conf.voters.insert(m.id);
            } else {
                conf.learners.insert(m.id);
            }
            if let Some(a) = &m.addr {
                conf.addrs.insert(m.id, a.clone());
            }
        }
        Ok(conf)
    }

    /// Has the node task apply `edit` to its core's latest configuration
    /// and propose the result ([`ConfEdit`]): the index of the first
    /// configuration entry, or `None` if the latest configuration already
    /// has the edit (nothing proposed).
    async fn edit_config(&self, edit: ConfEdit) -> Result<Option<Index>, Error> {
        #[cfg(test)]
        pause::point(self.id()).await;
        self.call(|reply| Command::EditConfig { edit, reply }).await
    }

    /// Adds the member at `addr` as a learner: it receives the log but does
    /// not vote. Returns once a committed configuration has it (already a
    /// member: once that is committed).
    pub async fn add_learner(&self, addr: &str) -> Result<(), Error> {
        let id = Self::member_id(addr);
        self.edit_config(ConfEdit::AddLearner {
            id,
            addr: addr.to_string(),
        })
        .await?;
        self.wait_config(|c| c.contains(id)).await.map_err(proposed)
    }

    /// Adds the member at `addr`: as a learner, then, once caught up, as a
    /// voter. `progress` is told what happens. Fails with
    /// [`Error::Rejected`] if the learner is no longer one when it is to
    /// be promoted (another admin removed it meanwhile): nothing promoted.
    pub async fn add_server(
        &self,
        addr: &str,
        mut progress: impl FnMut(&str),
    ) -> Result<(), Error> {
        let id = Self::member_id(addr);
        // Which steps to take, not what to propose: each change is an edit
        // the node task applies to its latest configuration (a learner
        // removed since this read is not promoted).
        let conf = self.current_config()?;
        if conf.voters.contains(&id) {
            progress("already a voter");
            return Ok(());
        }
        if !conf.learners.contains(&id) {
            progress("adding as learner");
            self.add_learner(addr).await?;
        }
        self.wait_caught_up(id, &mut progress).await?;
        self.wait_no_change_in_flight().await?;
        self.check_promotion(id).await?;
        progress("promoting to voter");
        self.edit_config(ConfEdit::Promote {
            id,
            addr: addr.to_string(),
        })
        .await?;
        self.wait_config(|c| c.voters.contains(&id))
            .await
            .map_err(proposed)?;
        progress("voter");
        Ok(())
    }

    /// Replaces voter `from` by learner `to`, reached at `to_addr`, in one
    /// joint change (thesis §4.3: `to` promoted, `from` removed): the
    /// edit [`ConfEdit::Replace`], applied to the latest configuration
    /// when it is proposed, so a change another admin committed since the
    /// caller's read stays. Returns the index of the joint configuration
    /// entry, or `None` if the latest configuration already has `to`
    /// voting and not `from` (nothing proposed). Does not wait for the
    /// commit. Fails with [`Error::Rejected`] (nothing proposed) if `from`
    /// is no longer a voter or `to` is not a learner, or while another
    /// change is in flight, or if `to`'s schema would disable what the
    /// voters have enabled (the same check as `add_server`'s promotion,
    /// [`crate::schema::SchemaBook::check_promotion`]: a learner on an
    /// older binary would halt at the first entry it cannot decode). The
    /// replica move's joint step ([`crate::multi::moves`]).
    pub(crate) async fn replace_voter(
        &self,
        from: NodeId,
        to: NodeId,
        to_addr: &str,
    ) -> Result<Option<Index>, Error> {
        if !self.current_config()?.voters.contains(&to) {
            self.check_promotion(to).await?;
        }
        self.edit_config(ConfEdit::Replace {
            from,
            to,
            addr: to_addr.to_string(),
        })
        .await
    }

    /// Removes the learner at `addr`, and only a learner: judged against
    /// the latest configuration when the edit is made, so a node another
    /// change made a voter meanwhile stays (refused with
    /// [`Error::Rejected`], nothing changed). Returns once a committed
    /// configuration is without it (not a member: at once).
    pub(crate) async fn remove_learner(&self, addr: &str) -> Result<(), Error> {
        let id = Self::member_id(addr);
        self.edit_config(ConfEdit::RemoveLearner {
            id,
            addr: addr.to_string(),
        })
        .await?;
        self.wait_config(|c| !c.contains(id))
            .await
            .map_err(proposed)
    }

    /// Removes the member at `addr` (voter or learner). Removing the leader
    /// itself makes it step down once the new configuration commits.
    /// Returns once a committed configuration is without it.
    pub async fn remove_server(&self, addr: &str) -> Result<(), Error> {
        let id = Self::member_id(addr);
        self.edit_config(ConfEdit::Remove { id }).await?;
        if id == self.id() {
            // A removed leader steps down once the new configuration
            // commits: its own status shows that commit, whoever leads.
            return self.wait_removed_self().await.map_err(proposed);
        }
        self.wait_config(|c| !c.contains(id))
            .await
            .map_err(proposed)
    }

    /// Waits until this node's status shows a committed configuration
    /// without it (its own removal, as leader, committed).
    async fn wait_removed_self(&self) -> Result<(), Error> {
        let id = self.id();
        self.until(Error::Timeout, || {
            let st = self.status();
            if !st.joint && st.config_index <= st.commit && !st.members.iter().any(|m| m.id == id) {
                return Some(Ok(()));
            }
            // It stopped leading before its own view showed the removal
            // committed (a new leader may have committed it, or not): the
            // outcome is unknown here.
            (st.role != Role::Leader).then(|| {
                Err(Error::Ambiguous(
                    "this leader stopped leading before it saw its own removal commit; the other members' configuration says whether it did".into(),
                ))
            })
        })
        .await
    }

    /// Moves leadership to the member at `addr` and waits until it leads.
    pub async fn transfer_leader(&self, addr: &str) -> Result<(), Error> {
        let id = Self::member_id(addr);
        self.transfer_leadership(id).await?;
        let mut w = self.watch();
        let wait = tokio::time::timeout(
            self.election_timeout() * 2,
            w.wait_for(|s| s.leader == Some(id)),
        )
        .await;
        match wait {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::Timeout),
        }
    }

    /// The core's election timeout: its `election_ticks` ticks (as the
    /// watch server's liveness uses it), the unit of every wait here.
    fn election_timeout(&self) -> Duration {
        self.inner.election_timeout
    }

    /// Waits until learner `id` has caught up by the rounds rule
    /// ([`catch_up_in_rounds`]), timed in this node's election timeout.
    async fn wait_caught_up(
        &self,
        id: NodeId,
        progress: &mut impl FnMut(&str),
    ) -> Result<(), Error> {
        let timeout = self.election_timeout();
        catch_up_in_rounds(timeout, progress, move || self.catch_up_round(id, timeout)).await
    }

    /// One catch-up round of learner `id`: waits until it holds the
    /// leader's last index as it was when the round began; that index and
    /// how long it took. [`Error::Timeout`] after ten election timeouts
    /// (`timeout`).
    async fn catch_up_round(
        &self,
        id: NodeId,
        timeout: Duration,
    ) -> Result<(Index, Duration), Error> {
        let target = self.status().last_index;
        let started = Instant::now();
        let mut w = self.watch();
        let reached = tokio::time::timeout(
            timeout * 10,
            w.wait_for(|s| {
                s.members
                    .iter()
                    .any(|m| m.id == id && m.matched.is_some_and(|x| x >= target))
            }),
        )
        .await;
        if !matches!(reached, Ok(Ok(_))) {
            return Err(Error::Timeout);
        }
        Ok((target, started.elapsed()))
    }

    /// Refuses, with [`Error::Rejected`], to promote learner `id` if its
    /// schema shows that the promotion would disable a write the voters
    /// have enabled or that it cannot restore their snapshots, or if its
    /// hello (with its schema) has not reached this leader within ten
    /// election timeouts.
    async fn check_promotion(&self, id: NodeId) -> Result<(), Error> {
        use crate::schema::PromotionRefused;
        let unheard = Error::Rejected(format!(
            "learner {id} caught up but its schema is unknown: it has not linked to this leader; nothing was promoted, it stays a learner"
        ));
        let me = self.id();
        self.until(unheard, || {
            let voters: Vec<NodeId> = match self.current_config() {
                Ok(conf) => conf.voters.into_iter().filter(|v| *v != me).collect(),
                Err(e) => return Some(Err(e)),
            };
            match self.inner.schemas.check_promotion(id, &voters) {
                Ok(()) => Some(Ok(())),
                Err(PromotionRefused::Unheard) => None,
                Err(PromotionRefused::Shrinks(why)) => Some(Err(Error::Rejected(format!(
                    "{why}; promoting it would make a voter that halts at the first such entry or snapshot (and disable what it lacks); nothing was promoted, it stays a learner: upgrade it, or remove it with remove_server"
                )))),
            }
        })
        .await
    }

    /// Waits until the leader's committed configuration satisfies `done`
    /// (nothing in flight).
    async fn wait_config(&self, done: impl Fn(&Configuration) -> bool) -> Result<(), Error> {
        self.until(Error::Timeout, || match self.current_config() {
            Err(e) => Some(Err(e)),
            Ok(conf) => (done(&conf) && !self.change_in_flight()).then_some(Ok(())),
        })
        .await
    }

    async fn wait_no_change_in_flight(&self) -> Result<(), Error> {
        let late = Error::Rejected("a configuration change is still in flight".into());
        self.until(late, || (!self.change_in_flight()).then_some(Ok(())))
            .await
    }

    /// Runs `step` now and after every status change (at least every 50
    /// ms) until it answers; `late` once ten election timeouts passed.
    async fn until(
        &self,
        late: Error,
        mut step: impl FnMut() -> Option<Result<(), Error>>,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + self.election_timeout() * 10;
        loop {
            if let Some(answer) = step() {
                return answer;
            }
            if Instant::now() > deadline {
                return Err(late);
            }
            let mut w = self.watch();
            let _ = tokio::time::timeout(Duration::from_millis(50), w.changed()).await;
        }
    }

    fn change_in_flight(&self) -> bool {
        let st = self.status();
        st.config_index > st.commit || st.joint
    }
}

/// The thesis §4.2.1 rounds rule: runs catch-up rounds (`round` returns
/// the index a round replicated up to and how long the learner took to
/// reach it) until one completes within `timeout`, the election timeout,
/// telling `progress` of each; at most [`MAX_CATCH_UP_ROUNDS`] of them,
/// after which the learner is not close enough to be promoted without
/// hurting availability ([`Error::Rejected`]: nothing promoted). A round's
/// error ends the wait with it.
async fn catch_up_in_rounds<R, F>(
    timeout: Duration,
    progress: &mut impl FnMut(&str),
    mut round: R,
) -> Result<(), Error>
where
    R: FnMut() -> F,
    F: std::future::Future<Output = Result<(Index, Duration), Error>>,
{
    for n in 1..=MAX_CATCH_UP_ROUNDS {
        let (target, took) = round().await?;
        progress(&format!("catch-up round {n}: {target} entries in {took:?}"));
        if took <= timeout {
            return Ok(());
        }
    }
    Err(Error::Rejected(format!(
        "learner did not catch up within {MAX_CATCH_UP_ROUNDS} rounds; it stays a learner"
    )))
}

/// An error after a configuration change was proposed: the change may still
/// commit, so nothing may say it was not made (a `NotLeader` from the
/// status becomes `Ambiguous`).
fn proposed(e: Error) -> Error {
    match e {
        Error::NotLeader { .. } => Error::Ambiguous(
            "this node stopped leading before the configuration change it proposed committed; it may still commit".into(),
        ),
        e => e,
    }
}

/// One membership edit, as the admin asked it: the node task applies it to
/// its core's latest configuration (the last one in its log, committed or
/// not) when it proposes it, never to a configuration a caller read
/// earlier. A target built from the status the caller read would undo a
/// change that committed between the read and the proposal (two admins at
/// once: an addition dropping the other's member, or adding back one the
/// other removed), since Raft's one-change-at-a-time rule (thesis §4.1,
/// §4.3) only refuses a change while another is *in flight*.
///
/// A change in flight when the edit arrives refuses it as before
/// ([`Error::Rejected`], "a configuration change is already in flight":
/// nothing proposed; ask again once it committed), unless the latest
/// configuration already has the edit, which then needs no proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum ConfEdit {
    /// Add `id`, reached at `addr`, as a learner.
    AddLearner {
        /// The new member.
        id: NodeId,
        /// Its address.
        addr: String,
    },
    /// Make learner `id`, reached at `addr`, a voter.
    Promote {
        /// The learner.
        id: NodeId,
        /// Its address.
        addr: String,
    },
    /// Remove `id`, voter or learner.
    Remove {
        /// The member.
        id: NodeId,
    },
    /// Remove `id` if it is a learner; refused if it votes (a replica
    /// move undoing the learner it added must not remove a voter another
    /// change made of it meanwhile).
    RemoveLearner {
        /// The learner.
        id: NodeId,
        /// Its address (for the refusal).
        addr: String,
    },
    /// Replace voter `from` by learner `to`, reached at `addr`, in one
    /// joint change (thesis §4.3: `to` promoted and `from` removed; the
    /// core proposes `C_old,new` and then `C_new`): a replica move's
    /// joint step.
    Replace {
        /// The voter that leaves.
        from: NodeId,
        /// The learner that becomes a voter in its place.
        to: NodeId,
        /// `to`'s address.
        addr: String,
    },
}

impl ConfEdit {
    /// The configuration `latest` becomes with this edit (the incoming
    /// half of a joint `latest`, which the core refuses to change anyway),
    /// or `None` if that already has the edit. [`Error::Rejected`] for a
    /// promotion of a node that is neither a learner nor a voter of it,
    /// and for a replacement whose `from` is not a voter or whose `to` is
    /// not a learner of it (unless it already has `to` voting and not
    /// `from`).
    pub(super) fn target(&self, latest: &Configuration) -> Result<Option<Configuration>, Error> {
        let mut next = Configuration {
            voters: latest.voters.clone(),
            outgoing: Default::default(),
            learners: latest.learners.clone(),
            addrs: latest.addrs.clone(),
        };
        let member = |id: &NodeId| next.voters.contains(id) || next.learners.contains(id);
        match self {
            ConfEdit::AddLearner { id, addr } => {
                if member(id) {
                    return Ok(None);
                }
                next.learners.insert(*id);
                next.addrs.insert(*id, addr.clone());
            }
            ConfEdit::Promote { id, addr } => {
                if next.voters.contains(id) {
                    return Ok(None);
                }
                if !next.learners.remove(id) {
                    return Err(Error::Rejected(format!(
                        "{addr} (node {id}) is not a learner of the latest configuration (removed meanwhile?); nothing was promoted"
                    )));
                }
                next.voters.insert(*id);
                next.addrs.insert(*id, addr.clone());
            }
            ConfEdit::Remove { id } => {
                if !member(id) {
                    return Ok(None);
                }
                next.voters.remove(id);
                next.learners.remove(id);
                next.addrs.remove(id);
            }
            ConfEdit::RemoveLearner { id, addr } => {
                if next.voters.contains(id) {
                    return Err(Error::Rejected(format!(
                        "{addr} (node {id}) is a voter of the latest configuration (another change made it one meanwhile); nothing was removed"
                    )));
                }
                if !next.learners.remove(id) {
                    return Ok(None);
                }
                next.addrs.remove(id);
            }
            ConfEdit::Replace { from, to, addr } => {
                if next.voters.contains(to) && !member(from) {
                    return Ok(None);
                }
                if !next.voters.contains(from) {
                    return Err(Error::Rejected(format!(
                        "node {from} is not a voter of the latest configuration (removed meanwhile?); nothing was changed"
                    )));
                }
                if !next.learners.contains(to) {
                    return Err(Error::Rejected(format!(
                        "{addr} (node {to}) is not a learner of the latest configuration (removed or promoted meanwhile?); nothing was changed"
                    )));
                }
                next.voters.remove(from);
                next.addrs.remove(from);
                next.learners.remove(to);
                next.voters.insert(*to);
                next.addrs.insert(*to, addr.clone());
            }
        }
        Ok(Some(next))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{ConfEdit, MAX_CATCH_UP_ROUNDS, catch_up_in_rounds};
    use crate::core::Configuration;
    use crate::error::Error;

    /// Runs the rounds rule with an election timeout of 100 ms over rounds
    /// that took `took[0]`, `took[1]`, ... (a round past the list takes a
    /// second); its answer and how many rounds it ran.
    async fn rounds(took: &[u64]) -> (Result<(), Error>, usize) {
        let timeout = Duration::from_millis(100);
        let mut ran = 0;
        let mut said = Vec::new();
        let answer = catch_up_in_rounds(timeout, &mut |s: &str| said.push(s.to_string()), || {
            let ms = took.get(ran).copied().unwrap_or(1_000);
            ran += 1;
            std::future::ready(Ok((7, Duration::from_millis(ms))))
        })
        .await;
        assert_eq!(said.len(), ran, "one progress line per round: {said:?}");
        (answer, ran)
    }

    /// Thesis §4.2.1 at its edges: the learner is caught up by the first
    /// round that completes within an election timeout (exactly one
    /// included), and it gets exactly [`MAX_CATCH_UP_ROUNDS`] (10) rounds:
    /// one caught up in the tenth is promoted, one that is not is refused
    /// after the tenth (teeth, stop 55: mutant RM2, nine rounds, survived).
    #[tokio::test(flavor = "current_thread")]
    async fn a_learner_gets_exactly_ten_catch_up_rounds() {
        assert_eq!(MAX_CATCH_UP_ROUNDS, 10);
        let (answer, ran) = rounds(&[50]).await;
        assert!(answer.is_ok() && ran == 1, "{answer:?} after {ran} rounds");
        let (answer, ran) = rounds(&[300, 100]).await;
        assert!(
            answer.is_ok() && ran == 2,
            "a round of exactly the election timeout: {answer:?} after {ran} rounds"
        );
        let mut slow = vec![300; 9];
        slow.push(90);
        let (answer, ran) = rounds(&slow).await;
        assert!(
            answer.is_ok() && ran == 10,
            "a learner caught up in the tenth round: {answer:?} after {ran} rounds"
        );
        let (answer, ran) = rounds(&[]).await;
        assert!(
            matches!(answer, Err(Error::Rejected(_))) && ran == 10,
            "a learner never caught up: {answer:?} after {ran} rounds"
        );
    }

    /// Voters 1 and 2, learner 3, each with an address.
    fn latest() -> Configuration {
        let mut c = Configuration::new([1, 2]);
        c.learners.insert(3);
        c.addrs
            .extend([(1, "a".into()), (2, "b".into()), (3, "c".into())]);
        c
    }

    fn add(id: u64, addr: &str) -> ConfEdit {
        ConfEdit::AddLearner {
            id,
            addr: addr.into(),
        }
    }

    fn promote(id: u64, addr: &str) -> ConfEdit {
        ConfEdit::Promote {
            id,
            addr: addr.into(),
        }
    }

    /// Each edit changes only its own member of the latest configuration
    /// and keeps every other member and address.
    #[test]
    fn an_edit_keeps_the_other_members_of_the_latest_configuration() {
        let mut want = latest();
        want.learners.insert(4);
        want.addrs.insert(4, "d".into());
        assert_eq!(add(4, "d").target(&latest()).ok(), Some(Some(want)));

        let mut want = latest();
        want.learners.remove(&3);
        want.voters.insert(3);
        assert_eq!(promote(3, "c").target(&latest()).ok(), Some(Some(want)));

        for gone in [2, 3] {
            let mut want = latest();
            want.voters.remove(&gone);
            want.learners.remove(&gone);
            want.addrs.remove(&gone);
            let got = ConfEdit::Remove { id: gone }.target(&latest());
            assert_eq!(got.ok(), Some(Some(want)), "removing {gone}");
        }
    }

    /// An edit the latest configuration already has proposes nothing.
    #[test]
    fn an_edit_the_latest_configuration_has_is_none() {
        for edit in [
            add(3, "c"),
            add(2, "b"),
            promote(2, "b"),
            ConfEdit::Remove { id: 9 },
        ] {
            assert_eq!(edit.target(&latest()).ok(), Some(None), "{edit:?}");
        }
    }

    /// Removing a learner removes only a learner: a voter is refused,
    /// nothing changed; a node not a member needs nothing.
    #[test]
    fn removing_a_learner_refuses_a_voter() {
        let remove_learner = |id: u64| ConfEdit::RemoveLearner {
            id,
            addr: "x".into(),
        };
        let mut want = latest();
        want.learners.remove(&3);
        want.addrs.remove(&3);
        assert_eq!(remove_learner(3).target(&latest()).ok(), Some(Some(want)));
        let got = remove_learner(2).target(&latest());
        assert!(
            matches!(got, Err(Error::Rejected(_))),
            "a voter removed as a learner: {got:?}"
        );
        assert_eq!(remove_learner(9).target(&latest()).ok(), Some(None));
    }

    /// A promotion of a node the latest configuration does not have (an
    /// admin removed the learner meanwhile) is refused: nothing promoted.
    #[test]
    fn promoting_a_node_that_is_not_a_learner_is_refused() {
        let got = promote(4, "d").target(&latest());
        assert!(matches!(got, Err(Error::Rejected(_))), "{got:?}");
    }

    fn replace(from: u64, to: u64, addr: &str) -> ConfEdit {
        ConfEdit::Replace {
            from,
            to,
            addr: addr.into(),
        }
    }

    /// A replacement promotes the learner and removes the voter (one
    /// joint change, thesis §4.3), keeping every other member: a learner
    /// another admin added after the caller's read (4) stays.
    #[test]
    fn a_replacement_swaps_only_its_two_members() {
        let mut base = latest();
        base.learners.insert(4);
        base.addrs.insert(4, "d".into());
        let mut want = base.clone();
        want.voters.remove(&2);
        want.addrs.remove(&2);
        want.learners.remove(&3);
        want.voters.insert(3);
        assert_eq!(replace(2, 3, "c").target(&base).ok(), Some(Some(want)));
    }

    /// A replacement the latest configuration has proposes nothing; one
    /// whose voter is gone or whose target is not a learner is refused.
    #[test]
    fn a_replacement_is_refused_unless_from_votes_and_to_is_a_learner() {
        let mut done = latest();
        done.voters.remove(&2);
        done.learners.remove(&3);
        done.voters.insert(3);
        assert_eq!(replace(2, 3, "c").target(&done).ok(), Some(None));
        for (edit, why) in [
            (replace(3, 3, "c"), "from is a learner"),
            (replace(9, 3, "c"), "from is not a member"),
            (replace(2, 9, "x"), "to is not a member"),
            (replace(1, 2, "b"), "to is a voter while from still votes"),
        ] {
            let got = edit.target(&latest());
            assert!(matches!(got, Err(Error::Rejected(_))), "{why}: {got:?}");
        }
    }

    /// A replacement counts as made (nothing to propose) only when `from`
    /// is no member at all, not merely no voter: with `to` voting and
    /// `from` still a learner (it was demoted, or removed and added back
    /// as one, meanwhile), the replacement is refused, nothing changed,
    /// rather than answered as done while `from` is still in the group
    /// (teeth, stop 55: mutant RM7, `!member(from)` -> `!next.voters.
    /// contains(from)`, survived).
    #[test]
    fn a_replacement_whose_from_is_still_a_learner_is_refused_not_done() {
        // Voters 1 and 2, learner 3: from = 3 (a learner), to = 2 (a voter).
        let got = replace(3, 2, "b").target(&latest());
        assert!(
            matches!(got, Err(Error::Rejected(_))),
            "a replacement whose `from` is still a learner: {got:?}"
        );
    }

    /// While joint, the edit applies to the incoming half: a member only
    /// the outgoing half has counts as removed, and the result is simple.
    #[test]
    fn a_joint_configuration_is_edited_on_its_incoming_half() {
        let mut joint = Configuration::joint([1, 2], [1, 5]);
        joint.addrs.extend([(1, "a".into()), (5, "e".into())]);
        assert_eq!(ConfEdit::Remove { id: 5 }.target(&joint).ok(), Some(None));
        let got = add(5, "e").target(&joint).ok().flatten();
        assert!(
            got.as_ref()
                .is_some_and(|c| !c.is_joint() && c.learners.contains(&5)),
            "{got:?}"
        );
    }
}

/// Test only: holds the next membership change asked of one peer just
/// before it reaches the node task, until the test lets it go, so that a
/// test can make another change in between (`membership_tests`, and a
/// replica move's joint step in `multi::moves_tests`).
#[cfg(test)]
pub(crate) mod pause {
    use std::sync::Mutex;

    use tokio::sync::oneshot;

    use crate::core::NodeId;

    /// Armed pauses: the peer, where to say the change reached the
    /// point, and what lets it go on.
    type Armed = (NodeId, oneshot::Sender<()>, oneshot::Receiver<()>);
    static ARMED: Mutex<Vec<Armed>> = Mutex::new(Vec::new());

    /// Holds the next change asked of peer `id` at the point: the first
    /// receiver resolves once it is there, and it goes on once the second
    /// sender is used or dropped.
    pub(crate) fn arm(id: NodeId) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (go_tx, go_rx) = oneshot::channel();
        ARMED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, reached_tx, go_rx));
        (reached_rx, go_tx)
    }

    /// The point: a change of peer `id` waits here if a pause is armed
    /// for it (once).
    pub(crate) async fn point(id: NodeId) {
        let armed = {
            let mut all = ARMED.lock().unwrap_or_else(|p| p.into_inner());
            all.iter()
                .position(|(of, _, _)| *of == id)
                .map(|at| all.swap_remove(at))
        };
        if let Some((_, reached, go)) = armed {
            let _ = reached.send(());
            let _ = go.await;
        }
    }
}
