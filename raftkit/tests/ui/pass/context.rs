//! Handlers with the handler context: `&Ctx` and `&mut Ctx` on writes,
//! `&Ctx` on reads, under any name and path; the client never sees it.
#![deny(warnings)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use raftkit::client::Local;
use raftkit::prelude::*;

fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

#[derive(StateMachine, Default, Serialize, Deserialize)]
pub struct Ids {
    issued: Vec<(u64, u64)>,
}

#[raftkit::state_machine]
impl Ids {
    /// A unique id and a replicated random number.
    #[write]
    fn issue(&mut self, ctx: &mut Ctx) -> (u64, u64) {
        let drawn = ctx.rng().next_u64();
        self.issued.push((ctx.index(), drawn));
        (ctx.index(), drawn)
    }

    /// The context by its full path, and an argument after it.
    #[write]
    fn stamp(&mut self, when: &raftkit::Ctx, extra: u64) -> u64 {
        when.time_ms() + extra
    }

    /// A write that ignores the context.
    #[write]
    fn forget(&mut self, _ctx: &Ctx) {
        self.issued.clear();
    }

    #[read]
    fn count(&self, ctx: &Ctx) -> (usize, u64) {
        (self.issued.len(), ctx.index())
    }
}

fn main() {
    let ids = IdsClient::new(Local::with_clock(Ids::default(), || 1_000));
    let (a, _) = block_on(ids.issue()).unwrap();
    let (b, _) = block_on(ids.issue()).unwrap();
    assert_ne!(a, b);
    assert_eq!(block_on(ids.stamp(5)).unwrap(), 1_005);
    assert_eq!(block_on(ids.count()).unwrap(), (2, 3));
    block_on(ids.forget()).unwrap();
    assert_eq!(block_on(ids.count()).unwrap().0, 0);
}
