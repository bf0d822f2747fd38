//! Tests of the inline apply (`apply::inline`) with the apply loop on an
//! operating-system thread of its own, as in production: the node task's
//! sender and the thread race for real, which a current-thread runtime
//! (where the loop runs only while the sender waits) never shows.
//!
//! - a batch is applied by the sender only after every message it queued
//!   before was handled (the `queued` counter is decremented under the
//!   lock, after the message), so the log order holds whatever the timing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::apply::{self, ApplyMsg, ApplyStatus, Inline, Reply};
use super::session::{Envelope, Op, Sessions};
use super::watch::Journal;
use crate::core::{Entry, Index, Payload};
use crate::error::Error;
use crate::prelude::*;
use crate::state_machine::{decode, encode};

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Sum {
    n: u64,
}

#[crate::state_machine]
impl Sum {
    #[write]
    fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }

    #[read]
    fn get(&self) -> u64 {
        self.n
    }
}

/// Entry `index` (term 1): add 1.
fn add_one(index: Index) -> Entry {
    let command = encode("command", &SumWrite::Add { by: 1 }).expect("encodes");
    let envelope = Envelope {
        stamp_ms: 1,
        op: Op::Write { command },
    };
    Entry {
        index,
        term: 1,
        payload: Payload::Command(encode("envelope", &envelope).expect("encodes").into()),
    }
}

/// The sum a write answered with.
fn sum(r: Result<bytes::Bytes, Error>) -> Result<u64, Error> {
    let bytes = r?;
    match decode::<SumWriteOutput>("output", &bytes).expect("decodes") {
        SumWriteOutput::Add(n) => Ok(n),
    }
}

/// The sender (the node task's end) races the apply thread: it queues a
/// batch for the thread, then tries to apply the next one itself at once,
/// over and over, until the thread has handled the first. The next batch
/// must never be applied before the one queued ahead of it. Moving the
/// thread's `done_one()` ahead of the handling of its message (the sender
/// then sees an empty queue while the message is still unhandled) passes
/// every test on a current-thread runtime; here it fails within a few
/// rounds (stop 50).
#[test]
fn the_sender_never_applies_a_batch_before_one_it_queued_for_the_thread() {
    let (tx, rx) = mpsc::unbounded_channel();
    let (snap_tx, _snapshots) = mpsc::unbounded_channel();
    let (status_tx, _status) =
        apply::status_channel(ApplyStatus::of(0, &None, &Sessions::default()));
    let shared = Arc::new(apply::Shared::new(
        Sum::default(),
        Sessions::default(),
        0,
        status_tx,
        Journal::new(0, 1 << 20),
    ));
    let sender = apply::ApplyTx::new(tx, shared.clone());
    let looped = Arc::clone(&shared);
    let thread = std::thread::spawn(move || {
        super::threads::block_on(apply::run_shared(looped, rx, snap_tx));
    });
    // 200 rounds (the mutation it pins fails at round 0), each with its own
    // deadline: on a loaded machine one round may wait for the apply thread
    // to be scheduled.
    for round in 0..200u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        let (queued_at, inline_at) = (2 * round + 1, 2 * round + 2);
        let (qtx, mut queued) = oneshot::channel();
        assert!(sender.send(ApplyMsg::Entries {
            register: vec![(queued_at, 1, Reply::new(qtx, None))],
            entries: vec![add_one(queued_at)],
        }));
        let (itx, mut inline) = oneshot::channel();
        let mut register = vec![(inline_at, 1, Reply::new(itx, None))];
        let mut entries = vec![add_one(inline_at)];
        let mut tries = 0u32;
        loop {
            // Measured quick, whatever the machine: only the queue decides.
            shared.took(tokio::time::Instant::now(), 1);
            if shared.try_apply(&mut register, &mut entries) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the sender never found the thread idle"
            );
            // Spin tight at first (the race), then give the core to the
            // apply thread (a loaded machine may not schedule it otherwise).
            tries += 1;
            if tries < 1_000 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // Applied by the sender: answered already, after the queued batch.
        let got = inline
            .try_recv()
            .map_err(|e| format!("{e:?}"))
            .and_then(|r| sum(r).map_err(|e| format!("{e:?}")));
        assert_eq!(
            got,
            Ok(inline_at),
            "round {round}: entry {inline_at}, applied by the sender, was not applied after entry {queued_at} queued for the thread before it"
        );
        let got = queued
            .try_recv()
            .map_err(|e| format!("{e:?}"))
            .and_then(|r| sum(r).map_err(|e| format!("{e:?}")));
        assert_eq!(
            got,
            Ok(queued_at),
            "round {round}: entry {queued_at}, queued for the thread, was not answered before the sender applied the next"
        );
    }
    drop(sender);
    thread
        .join()
        .expect("the apply thread ends when its sender is dropped");
}
