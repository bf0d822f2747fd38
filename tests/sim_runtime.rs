//! The whole-runtime simulation (`raftkit::sim::Simulation`) on a state
//! machine that is not a key-value store: a bank whose transfers move money
//! between accounts (not idempotent: a transfer applied twice shows).

use std::collections::BTreeMap;

use raftkit::prelude::*;
use raftkit::sim::rand::Rng;
use raftkit::sim::{Simulation, Tooth};

#[derive(StateMachine, Default, Serialize, Deserialize)]
#[raftkit(name = "bank")]
pub struct Bank {
    balances: BTreeMap<u8, i64>,
}

#[raftkit::state_machine]
impl Bank {
    /// Moves `amount` from `from` to `to`; the new balance of `to`.
    #[write]
    fn transfer(&mut self, from: u8, to: u8, amount: i64) -> i64 {
        *self.balances.entry(from).or_default() -= amount;
        let to = self.balances.entry(to).or_default();
        *to += amount;
        *to
    }

    #[read]
    fn balance(&self, account: u8) -> i64 {
        self.balances.get(&account).copied().unwrap_or(0)
    }
}

fn bank() -> Simulation<Bank> {
    Simulation::<Bank>::new()
        .nodes(3)
        .clients(4)
        .ops_per_client(6)
        .workload(|mut rng, client| async move {
            let bank = BankClient::new(client);
            let (from, to) = (rng.random_range(0..4u8), rng.random_range(0..4u8));
            if rng.random_bool(0.6) {
                let _ = bank.transfer(from, to, rng.random_range(1..100)).await;
            } else {
                let _ = bank.balance(from).await;
            }
        })
}

#[test]
fn one_seed_one_trace() {
    let sim = bank();
    let a = sim.run_seed(3).expect("seed 3 passes");
    let b = sim.run_seed(3).expect("seed 3 passes");
    assert_eq!(a.trace_hash, b.trace_hash, "{a:?} vs {b:?}");
    assert!(a.events > 100 && a.calls.0 > 0, "{a:?}");
    let c = sim.run_seed(4).expect("seed 4 passes");
    assert_ne!(a.trace_hash, c.trace_hash);
    eprintln!("{a:?}\n{c:?}");
}
