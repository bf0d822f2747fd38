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
        .ops_per_client(16)
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

#[test]
fn bank_seeds_pass() {
    let summary = bank().seeds(0..200).run();
    let crashes: u64 = summary.seeds.iter().map(|s| s.crashes).sum();
    let faults: u64 = summary.seeds.iter().map(|s| s.disk_faults).sum();
    let unknown: usize = summary.seeds.iter().map(|s| s.calls.1).sum();
    eprintln!("crashes {crashes}, disk faults {faults}, unknown calls {unknown}");
}

/// The first failing seed of `sim` within `seeds`, with its property.
fn first_failure<S: raftkit::StateMachine + Default>(
    sim: Simulation<S>,
    seeds: std::ops::Range<u64>,
) -> raftkit::sim::runtime::SimFailure {
    match sim.seeds(seeds.clone()).check() {
        Ok(_) => panic!("no seed of {seeds:?} caught it"),
        Err(f) => {
            eprintln!("caught: {f}");
            f
        }
    }
}

#[test]
fn tooth_ack_after_storage_failure_is_caught() {
    let f = first_failure(bank().tooth(Tooth::AckAfterStorageFailure), 0..200);
    eprintln!("{}", f.property);
}

#[test]
fn tooth_compact_after_failed_save_is_caught() {
    let f = first_failure(bank().tooth(Tooth::CompactAfterFailedSave), 0..200);
    eprintln!("{}", f.property);
}

#[test]
fn tooth_reapply_retried_write_is_caught() {
    let f = first_failure(bank().tooth(Tooth::ReapplyRetriedWrite), 0..200);
    assert_eq!(f.property, "exactly-once", "{f}");
}

#[test]
fn tooth_read_before_applied_is_caught() {
    let f = first_failure(bank().tooth(Tooth::ReadBeforeApplied), 0..200);
    assert_eq!(f.property, "linearizability", "{f}");
}
