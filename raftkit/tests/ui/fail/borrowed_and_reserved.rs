use raftkit::prelude::*;

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "kv store")]
struct Kv {
    map: std::collections::BTreeMap<String, String>,
}

#[raftkit::state_machine]
impl Kv {
    #[write]
    fn put(&mut self, key: &str, value: String) {
        self.map.insert(key.to_string(), value);
    }

    #[write]
    fn new(&mut self) {
        self.map.clear();
    }

    #[read]
    fn dump(&self) -> &Self {
        self
    }
}

fn main() {}
