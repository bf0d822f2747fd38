use std::borrow::Cow;

use raftkit::prelude::*;

#[derive(StateMachine, Default, Serialize, Deserialize)]
struct Kv {
    map: std::collections::BTreeMap<String, String>,
}

#[raftkit::state_machine]
impl Kv {
    #[write]
    fn put(&mut self, key: Option<&str>, value: Vec<(u32, &[u8])>) {
        let _ = (key, value);
    }

    #[write]
    fn note(&mut self, text: Cow<'_, str>) {
        let _ = text;
    }

    #[read]
    fn first(&self) -> Option<&String> {
        self.map.values().next()
    }
}

fn main() {}
