//! Exactly-once writes: client sessions in the replicated state.
//!
//! Every write in the log is an [`Envelope`]: the encoded command, the
//! leader's wall-clock stamp, and, for remote clients, the client's session
//! id and the write's sequence number. The apply task keeps a [`Sessions`]
//! table, part of every snapshot, holding each session's latest sequence
//! number and reply. A write whose sequence number was already applied is
//! answered from the table and not applied again, so a client that retries
//! after a lost reply or a leader change (re-sending the same sequence
//! number) has its write applied exactly once (Raft thesis §6.3).
//!
//! Sessions expire deterministically: a session unused for
//! [`SESSION_TTL_MS`] of *leader-stamped* time (the largest stamp applied so
//! far, carried in the log) is dropped on every replica at the same entry. No
//! replica's own clock is ever consulted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::Index;

/// A session unused for this long (leader-stamped time) is forgotten.
pub const SESSION_TTL_MS: u64 = 60 * 60 * 1000;

/// A client write as it is stored in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The client session and sequence number, for remote clients.
    pub session: Option<SessionRef>,
    /// The leader's wall clock (ms since the epoch) when it proposed.
    pub stamp_ms: u64,
    /// The encoded `Write` command.
    pub command: Vec<u8>,
}

pub use crate::client::wire::SessionRef;

/// A reply as remembered for retries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredReply {
    /// The encoded output.
    Ok(Vec<u8>),
    /// The handler failed (panicked under `skip`).
    Handler(String),
    /// The command was refused at apply time.
    Rejected(String),
}

/// Replies remembered per session: a client may have at most this many
/// writes in flight for exactly-once to hold (the client library stays far
/// below it).
pub const SESSION_WINDOW: usize = 4096;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SessionState {
    /// The latest replies by sequence number (at most [`SESSION_WINDOW`]).
    replies: BTreeMap<u64, StoredReply>,
    last_used_ms: u64,
}

/// What the table says about a write.
#[derive(Debug, PartialEq, Eq)]
pub enum Dedup {
    /// Not applied yet: apply it.
    New,
    /// Applied before: answer with this.
    Duplicate(StoredReply),
    /// Older than every reply the session still remembers: it may have been
    /// applied long ago, so it is refused rather than applied twice.
    Stale,
}

/// The session table (replicated state, part of snapshots).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    table: BTreeMap<u64, SessionState>,
    /// The largest leader stamp applied: the replicated notion of "now".
    now_ms: u64,
    /// When sessions were last swept for expiry.
    swept_ms: u64,
}

impl Sessions {
    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Advances replicated time to `stamp_ms` and expires idle sessions
    /// (at most once per second of replicated time).
    pub fn advance(&mut self, stamp_ms: u64) {
        self.now_ms = self.now_ms.max(stamp_ms);
        if self.now_ms >= self.swept_ms + 1000 {
            self.swept_ms = self.now_ms;
            let now = self.now_ms;
            self.table
                .retain(|_, s| s.last_used_ms + SESSION_TTL_MS > now);
        }
    }

    /// Looks a write up.
    pub fn check(&self, s: SessionRef) -> Dedup {
        let Some(st) = self.table.get(&s.client) else {
            return Dedup::New;
        };
        if let Some(r) = st.replies.get(&s.seq) {
            return Dedup::Duplicate(r.clone());
        }
        match st.replies.keys().next() {
            Some(&oldest) if st.replies.len() >= SESSION_WINDOW && s.seq < oldest => Dedup::Stale,
            _ => Dedup::New,
        }
    }

    /// Records the reply of a newly applied write.
    pub fn record(&mut self, s: SessionRef, reply: StoredReply) {
        let st = self.table.entry(s.client).or_default();
        st.replies.insert(s.seq, reply);
        st.last_used_ms = self.now_ms;
        while st.replies.len() > SESSION_WINDOW {
            st.replies.pop_first();
        }
    }
}

/// What the apply task snapshots: the state machine and the sessions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSnapshot {
    /// The session table.
    pub sessions: Sessions,
    /// The state machine's own snapshot bytes.
    pub state: Vec<u8>,
    /// The index the snapshot was taken at.
    pub index: Index,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_answered_and_stale_writes_refused() {
        let mut s = Sessions::default();
        let w = |seq| SessionRef { client: 7, seq };
        assert_eq!(s.check(w(1)), Dedup::New);
        s.record(w(1), StoredReply::Ok(vec![1]));
        assert_eq!(s.check(w(1)), Dedup::Duplicate(StoredReply::Ok(vec![1])));
        assert_eq!(s.check(w(3)), Dedup::New);
        s.record(w(3), StoredReply::Ok(vec![3]));
        // Concurrent writes of one client may apply out of order.
        assert_eq!(s.check(w(2)), Dedup::New);
        for seq in 4..(SESSION_WINDOW as u64 + 10) {
            s.record(w(seq), StoredReply::Ok(vec![]));
        }
        assert_eq!(s.check(w(2)), Dedup::Stale);
    }

    #[test]
    fn sessions_expire_by_replicated_time_only() {
        let mut s = Sessions::default();
        s.advance(1_000);
        s.record(SessionRef { client: 1, seq: 1 }, StoredReply::Ok(vec![]));
        s.advance(1_000 + SESSION_TTL_MS - 1);
        assert_eq!(s.len(), 1);
        // Sweeps run once per second of replicated time.
        s.advance(1_000 + SESSION_TTL_MS + 1_000);
        assert!(s.is_empty());
        // Time never goes back, whatever a stamp says.
        s.advance(5);
        assert_eq!(s.now_ms, 1_000 + SESSION_TTL_MS + 1_000);
    }
}
