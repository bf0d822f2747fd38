//! The macros through full paths, without the prelude, with user items that
//! shadow common names the generated code must not depend on.
#![deny(warnings)]
#![allow(dead_code)]

struct Result;
struct Option;
struct Vec;
struct Ok;
mod serde {}
mod core {}

#[derive(raftkit::StateMachine, Default, ::serde::Serialize, ::serde::Deserialize)]
#[raftkit(on_error = "skip")]
pub struct Counter {
    n: u64,
}

#[raftkit::state_machine]
impl Counter {
    #[raftkit::write]
    fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }

    #[raftkit::read]
    fn get(&self) -> u64 {
        self.n
    }
}

fn main() {
    let _client = CounterClient::new(raftkit::client::Local::new(Counter::default()));
}
