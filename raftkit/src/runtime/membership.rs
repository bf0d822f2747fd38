//! Membership operations on a running peer (Raft thesis §4): the API behind
//! `add-server`, `remove-server` and `transfer-leader`.
//!
//! Members are named by address: the member at `addr` is the peer named
//! `<state machine>@<addr>` (see [`crate::identity`]). Every change goes
//! through the leader's core, which runs it by joint consensus, refuses a
//! second change while one is in flight, and only changes the configuration
//! after committing an entry of its own term.
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
use crate::core::{Configuration, NodeId, Role};
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

    /// Adds the member at `addr` as a learner: it receives the log but does
    /// not vote. Returns once the new configuration is committed.
    pub async fn add_learner(&self, addr: &str) -> Result<(), Error> {
        let id = Self::member_id(addr);
        let mut conf = self.current_config()?;
        if conf.contains(id) {
            return Ok(());
        }
        conf.learners.insert(id);
        conf.addrs.insert(id, addr.to_string());
        self.change_config(conf).await?;
        self.wait_config(|c| c.contains(id)).await.map_err(proposed)
    }

    /// Adds the member at `addr`: as a learner, then, once caught up, as a
    /// voter. `progress` is told what happens.
    pub async fn add_server(
        &self,
        addr: &str,
        mut progress: impl FnMut(&str),
    ) -> Result<(), Error> {
        let id = Self::member_id(addr);
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
        let mut conf = self.current_config()?;
        conf.learners.remove(&id);
        conf.voters.insert(id);
        conf.addrs.insert(id, addr.to_string());
        self.change_config(conf).await?;
        self.wait_config(|c| c.voters.contains(&id)).await?;
        progress("voter");
        Ok(())
    }

    /// Removes the member at `addr` (voter or learner). Removing the leader
    /// itself makes it step down once the new configuration commits.
    pub async fn remove_server(&self, addr: &str) -> Result<(), Error> {
        let id = Self::member_id(addr);
        let mut conf = self.current_config()?;
        if !conf.contains(id) {
            return Ok(());
        }
        conf.voters.remove(&id);
        conf.learners.remove(&id);
        conf.addrs.remove(&id);
        self.change_config(conf).await?;
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

    fn election_timeout(&self) -> Duration {
        self.inner.tick * 10
    }

    async fn wait_caught_up(
        &self,
        id: NodeId,
        progress: &mut impl FnMut(&str),
    ) -> Result<(), Error> {
        let timeout = self.election_timeout();
        for round in 1..=MAX_CATCH_UP_ROUNDS {
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
            let took = started.elapsed();
            progress(&format!(
                "catch-up round {round}: {} entries in {took:?}",
                target
            ));
            if took <= timeout {
                return Ok(());
            }
        }
        Err(Error::Rejected(format!(
            "learner did not catch up within {MAX_CATCH_UP_ROUNDS} rounds; it stays a learner"
        )))
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
