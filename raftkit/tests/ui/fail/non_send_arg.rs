use std::marker::PhantomData;

use raftkit::prelude::*;

// Serializable, but not `Send`: commands cross threads to the apply task.
#[derive(Serialize, Deserialize)]
struct Local(PhantomData<*const ()>);

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Store {
    count: u32,
}

#[raftkit::state_machine]
impl Store {
    #[write]
    fn add(&mut self, value: Local) {
        let _ = value;
        self.count += 1;
    }
}

fn main() {}
