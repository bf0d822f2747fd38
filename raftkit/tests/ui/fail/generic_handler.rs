use raftkit::prelude::*;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Store {
    items: Vec<String>,
}

#[raftkit::state_machine]
impl Store {
    #[write]
    fn push<T: ToString>(&mut self, item: T) {
        self.items.push(item.to_string());
    }

    #[write]
    fn push_any(&mut self, item: impl ToString) {
        self.items.push(item.to_string());
    }

    #[read]
    fn first(&self) -> impl std::fmt::Debug {
        self.items.first().cloned()
    }
}

fn main() {}
