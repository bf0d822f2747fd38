//! Two state machines in one module, each with its own generated items.
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
pub struct Counter {
    n: u64,
}

#[raftkit::state_machine]
impl Counter {
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

// The default state version, written out: accepted.
#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(version = 1)]
pub struct Register {
    value: Option<String>,
}

#[raftkit::state_machine]
impl Register {
    #[write]
    fn set(&mut self, value: String) -> Option<String> {
        self.value.replace(value)
    }

    #[read]
    fn get(&self) -> Option<String> {
        self.value.clone()
    }
}

fn main() {
    let counter = CounterClient::new(Local::new(Counter::default()));
    let register = RegisterClient::new(Local::new(Register::default()));
    assert_eq!(block_on(counter.add(2)), Ok(2));
    assert_eq!(block_on(counter.get()), Ok(2));
    assert_eq!(block_on(register.set("x".into())), Ok(None));
    assert_eq!(block_on(register.get()), Ok(Some("x".into())));
    assert_ne!(
        <Counter as StateMachine>::SCHEMA_FINGERPRINT,
        <Register as StateMachine>::SCHEMA_FINGERPRINT
    );
    let _ = CounterRead::Get;
    let _ = RegisterRead::Get;
}
