use raftkit::prelude::*;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Kv {
    value: Option<String>,
}

#[raftkit::state_machine]
impl Kv {
    #[write]
    fn set(&mut self, value: String) {
        self.value = Some(value);
    }
}

#[raftkit::state_machine]
impl Kv {
    #[read]
    fn get(&self) -> Option<String> {
        self.value.clone()
    }
}

fn main() {}
