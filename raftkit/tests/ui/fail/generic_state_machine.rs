use raftkit::prelude::*;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Store<T> {
    items: Vec<T>,
}

#[raftkit::state_machine]
impl<T> Store<T> {
    #[read]
    fn len(&self) -> usize {
        self.items.len()
    }
}

fn main() {}
