use raftkit::prelude::*;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Kv {
    value: Option<String>,
}

#[raftkit::state_machine]
impl Kv {
    #[write]
    fn value(&mut self, value: String) {
        self.value = Some(value);
    }

    #[read]
    fn value(&self) -> Option<String> {
        self.value.clone()
    }
}

fn main() {}
