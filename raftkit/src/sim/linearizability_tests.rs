//! Unit tests of the linearizability checker (sim/linearizability.rs): a
//! child module, so they call its private search directly.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

fn put(client: u64, key: Key, value: Value, invoke: u64, complete: u64) -> Operation {
    Operation {
        client,
        op: KvOp::Put { key, value },
        invoke,
        outcome: Some((complete, KvOutcome::Put)),
    }
}

fn pending_put(client: u64, key: Key, value: Value, invoke: u64) -> Operation {
    Operation {
        client,
        op: KvOp::Put { key, value },
        invoke,
        outcome: None,
    }
}

fn get(client: u64, key: Key, read: Option<Value>, invoke: u64, complete: u64) -> Operation {
    Operation {
        client,
        op: KvOp::Get { key },
        invoke,
        outcome: Some((complete, KvOutcome::Get(read))),
    }
}

fn cas(
    client: u64,
    key: Key,
    expected: Option<Value>,
    new: Value,
    swapped: bool,
    (invoke, complete): (u64, u64),
) -> Operation {
    Operation {
        client,
        op: KvOp::Cas { key, expected, new },
        invoke,
        outcome: Some((complete, KvOutcome::Cas(swapped))),
    }
}

fn assert_linearizable(history: &[Operation]) {
    let result = check(history, DEFAULT_BUDGET);
    assert_eq!(result, CheckResult::Linearizable, "{result}");
}

fn assert_violation(history: &[Operation], expected_key: Key) -> String {
    match check(history, DEFAULT_BUDGET) {
        CheckResult::NotLinearizable { key, explanation } => {
            assert_eq!(key, expected_key, "{explanation}");
            explanation
        }
        other => panic!("expected a violation on k{expected_key}, got {other:?}"),
    }
}

#[test]
fn empty_history_is_linearizable() {
    assert_linearizable(&[]);
}

#[test]
fn accepts_sequential_history() {
    assert_linearizable(&[
        get(1, 1, None, 0, 5),
        put(1, 1, 10, 10, 20),
        get(2, 1, Some(10), 30, 40),
        cas(1, 1, Some(10), 11, true, (50, 60)),
        get(2, 1, Some(11), 70, 80),
        cas(3, 1, Some(10), 12, false, (90, 100)),
        cas(3, 1, None, 13, false, (110, 120)),
        get(1, 1, Some(11), 130, 140),
    ]);
}

#[test]
fn accepts_concurrent_histories() {
    // put(20) is concurrent with put(10): either order is possible, and
    // the concurrent get may see either value.
    let base = [put(1, 1, 10, 0, 10), put(2, 1, 20, 5, 15)];
    for read in [Some(10), Some(20), None] {
        let mut history = base.to_vec();
        history.push(get(3, 1, read, 0, 12));
        assert_linearizable(&history);
    }
    // After both puts complete, the value is whichever was linearized last.
    for read in [10, 20] {
        let mut history = base.to_vec();
        history.push(get(3, 1, Some(read), 20, 30));
        history.push(get(4, 1, Some(read), 40, 50));
        assert_linearizable(&history);
    }
    // A read of None is only possible concurrently with the first put.
    let mut history = base.to_vec();
    history.push(get(3, 1, None, 20, 30));
    assert_violation(&history, 1);
}

#[test]
fn accepts_history_needing_backtracking() {
    // Linearizing the calls in invocation order (put 10, put 20) makes
    // the read of 10 fail; the search must undo put 20 and retry.
    assert_linearizable(&[
        put(1, 1, 10, 0, 100),
        put(2, 1, 20, 1, 100),
        get(3, 1, Some(10), 50, 60),
        get(3, 1, Some(20), 110, 120),
    ]);
}

#[test]
fn memoization_bounds_the_search() {
    // Twelve concurrent puts and a concurrent read of a value never
    // written: 12! orders of the puts, but only 2^12 x 13 distinct
    // (linearized set, value) pairs to explore before giving up.
    let mut history: Vec<Operation> = (0..12).map(|i| put(i, 1, i + 1, 0, 100)).collect();
    history.push(get(99, 1, Some(1_000), 0, 100));
    let ops: Vec<&Operation> = history.iter().collect();
    let (result, steps) = search(1, &ops, DEFAULT_BUDGET);
    assert!(
        matches!(result, CheckResult::NotLinearizable { key: 1, .. }),
        "{result}"
    );
    assert!(steps < 2_000_000, "{steps} steps");
}

#[test]
fn equal_times_are_concurrent() {
    // The get is invoked exactly when the put completes: it may precede it.
    assert_linearizable(&[put(1, 1, 10, 0, 10), get(2, 1, None, 10, 20)]);
    // One instant later it may not.
    assert_violation(&[put(1, 1, 10, 0, 10), get(2, 1, None, 11, 20)], 1);
}

#[test]
fn accepts_indeterminate_put_never_observed() {
    assert_linearizable(&[
        put(1, 1, 10, 0, 10),
        pending_put(2, 1, 20, 20),
        get(3, 1, Some(10), 30, 40),
        get(1, 1, Some(10), 50, 60),
        get(3, 1, Some(10), 1_000, 1_010),
    ]);
}

#[test]
fn accepts_indeterminate_put_observed_later() {
    assert_linearizable(&[
        put(1, 1, 10, 0, 10),
        pending_put(2, 1, 20, 20),
        get(3, 1, Some(10), 30, 40),
        get(1, 1, Some(20), 50, 60),
        get(3, 1, Some(20), 1_000, 1_010),
    ]);
}

#[test]
fn rejects_indeterminate_put_observed_then_undone() {
    // Once a pending put is observed it has taken effect: the old value
    // cannot come back without another write.
    assert_violation(
        &[
            put(1, 1, 10, 0, 10),
            pending_put(2, 1, 20, 20),
            get(3, 1, Some(20), 30, 40),
            get(1, 1, Some(10), 50, 60),
        ],
        1,
    );
}

#[test]
fn rejects_indeterminate_put_observed_before_invocation() {
    assert_violation(
        &[
            put(1, 1, 10, 0, 10),
            get(3, 1, Some(20), 30, 40),
            pending_put(2, 1, 20, 50),
        ],
        1,
    );
}

#[test]
fn pending_gets_are_ignored() {
    let pending_get = Operation {
        client: 9,
        op: KvOp::Get { key: 1 },
        invoke: 0,
        outcome: None,
    };
    assert_linearizable(&[pending_get, put(1, 1, 10, 5, 10)]);
}

#[test]
fn indeterminate_cas_may_or_may_not_apply() {
    let pending_cas = Operation {
        client: 2,
        op: KvOp::Cas {
            key: 1,
            expected: Some(10),
            new: 20,
        },
        invoke: 20,
        outcome: None,
    };
    let base = [put(1, 1, 10, 0, 10), pending_cas];
    for read in [10, 20] {
        let mut history = base.to_vec();
        history.push(get(3, 1, Some(read), 30, 40));
        assert_linearizable(&history);
    }
}

#[test]
fn rejects_stale_read() {
    let explanation = assert_violation(
        &[
            put(1, 1, 10, 0, 10),
            put(1, 1, 20, 20, 30),
            get(2, 1, Some(10), 40, 50),
        ],
        1,
    );
    assert!(explanation.contains("client 2: get(k1) -> 10 [invoke 40, complete 50]"));
}

#[test]
fn rejects_lost_write() {
    // The put of 20 completed, yet every later read returns the previous value.
    assert_violation(
        &[
            put(1, 1, 10, 0, 10),
            get(2, 1, Some(10), 15, 25),
            put(1, 1, 20, 20, 30),
            get(2, 1, Some(10), 26, 35),
            get(3, 1, Some(10), 40, 50),
            get(2, 1, Some(10), 60, 70),
        ],
        1,
    );
}

#[test]
fn rejects_read_of_value_never_written() {
    assert_violation(&[put(1, 1, 10, 0, 10), get(2, 1, Some(99), 5, 50)], 1);
    assert_violation(&[get(2, 1, Some(99), 5, 50)], 1);
}

#[test]
fn rejects_cas_success_on_wrong_expected_value() {
    assert_violation(
        &[put(1, 1, 10, 0, 10), cas(2, 1, Some(7), 30, true, (20, 30))],
        1,
    );
    // And a cas that failed although the expected value was there.
    assert_violation(
        &[
            put(1, 1, 10, 0, 10),
            cas(2, 1, Some(10), 30, false, (20, 30)),
        ],
        1,
    );
    // A successful cas writes its new value.
    assert_violation(
        &[
            put(1, 1, 10, 0, 10),
            cas(2, 1, Some(10), 30, true, (20, 30)),
            get(3, 1, Some(10), 40, 50),
        ],
        1,
    );
}

#[test]
fn rejects_reads_out_of_real_time_order() {
    // A long put(20) is concurrent with both reads, but once client 2 has
    // seen 20, client 3's later read cannot see 10 again.
    assert_violation(
        &[
            put(1, 1, 10, 0, 10),
            put(1, 1, 20, 20, 100),
            get(2, 1, Some(20), 30, 40),
            get(3, 1, Some(10), 50, 60),
        ],
        1,
    );
    // The same reads, overlapping each other, are fine.
    assert_linearizable(&[
        put(1, 1, 10, 0, 10),
        put(1, 1, 20, 20, 100),
        get(2, 1, Some(20), 30, 55),
        get(3, 1, Some(10), 50, 60),
    ]);
}

#[test]
fn keys_are_independent_and_the_failing_key_is_reported() {
    let history = [
        put(1, 1, 10, 0, 10),
        get(2, 2, None, 20, 30),
        put(1, 3, 30, 0, 10),
        put(1, 3, 31, 20, 30),
        get(2, 3, Some(30), 40, 50),
        get(2, 1, Some(10), 40, 50),
    ];
    let explanation = assert_violation(&history, 3);
    assert!(explanation.contains("k3"), "{explanation}");
    assert!(!explanation.contains("k1"), "{explanation}");
    assert!(check_key(&history, 1, DEFAULT_BUDGET).is_linearizable());
    assert!(check_key(&history, 2, DEFAULT_BUDGET).is_linearizable());
    assert!(!check_key(&history, 3, DEFAULT_BUDGET).is_linearizable());
}

#[test]
fn explanation_is_readable() {
    let history = [
        put(3, 1, 17, 100, 250),
        get(4, 1, Some(5), 300, 310),
        cas(5, 1, None, 9, false, (260, 270)),
    ];
    let explanation = assert_violation(&history, 1);
    for line in [
        "client 3: put(k1, 17) [invoke 100, complete 250]",
        "client 4: get(k1) -> 5 [invoke 300, complete 310]",
        "client 5: cas(k1, none -> 9) -> failed [invoke 260, complete 270]",
        "longest linearizable prefix found (2 of 3 operations)",
        "=> k1 = 17",
    ] {
        assert!(
            explanation.contains(line),
            "missing {line:?} in:\n{explanation}"
        );
    }
    let pending = pending_put(7, 2, 1, 5);
    assert_eq!(
        pending.to_string(),
        "client 7: put(k2, 1) [invoke 5, never completed]"
    );
}

#[test]
fn history_recorder() {
    let mut history = History::new();
    let a = history.invoke(1, KvOp::Put { key: 1, value: 10 }, 0);
    let b = history.invoke(2, KvOp::Get { key: 1 }, 5);
    let _lost = history.invoke(3, KvOp::Put { key: 1, value: 30 }, 6);
    history.complete(b, 20, KvOutcome::Get(Some(10)));
    history.complete(a, 10, KvOutcome::Put);
    assert_eq!(history.len(), 3);
    assert!(history.check(DEFAULT_BUDGET).is_linearizable());
    let c = history.invoke(2, KvOp::Get { key: 1 }, 30);
    history.complete(c, 40, KvOutcome::Get(Some(20)));
    assert!(!history.check(DEFAULT_BUDGET).is_linearizable());
}

#[test]
fn running_out_of_budget_is_unknown() {
    let history = [put(1, 1, 10, 0, 10), get(2, 1, Some(10), 20, 30)];
    assert_eq!(check(&history, 1), CheckResult::Unknown { key: 1 });
    assert!(!check(&history, 1).is_linearizable());
    assert!(check(&history, 100).is_linearizable());
    // A violation elsewhere takes precedence over an unknown.
    let mut history = history.to_vec();
    history.push(get(2, 2, Some(1), 0, 1));
    assert!(matches!(
        check(&history, 3),
        CheckResult::NotLinearizable { key: 2, .. }
    ));
}

#[test]
#[should_panic(expected = "completes before it is invoked")]
fn malformed_times_panic() {
    check(&[put(1, 1, 10, 10, 5)], DEFAULT_BUDGET);
}

/// A valid history: operations run against a sequential model at
/// increasing linearization points, each wrapped in a random window that
/// does not overlap the client's previous operation. About 5% of the
/// writes are indeterminate, and half of those never take effect.
fn random_valid_history(
    rng: &mut StdRng,
    keys: u64,
    ops_per_key: usize,
    clients: usize,
    max_window: u64,
) -> Vec<Operation> {
    let mut state: BTreeMap<Key, Option<Value>> = (0..keys).map(|k| (k, None)).collect();
    let mut remaining: Vec<usize> = vec![ops_per_key; keys as usize];
    let mut busy_until = vec![0u64; clients];
    let mut next_value = 1;
    let mut written: Vec<Value> = Vec::new();
    let mut history = Vec::new();
    let mut now = 1_000u64;
    while remaining.iter().any(|&r| r > 0) {
        now += 10;
        let free: Vec<usize> = (0..clients).filter(|&c| busy_until[c] < now).collect();
        if free.is_empty() {
            continue;
        }
        let client = free[rng.random_range(0..free.len())];
        let key = loop {
            let k = rng.random_range(0..keys);
            if remaining[k as usize] > 0 {
                break k;
            }
        };
        remaining[key as usize] -= 1;
        let invoke = now - rng.random_range(0..=max_window.min(now - busy_until[client] - 1));
        let complete = now + rng.random_range(0..=max_window);
        busy_until[client] = complete;
        let current = state[&key];
        let (op, outcome, new_state) = match rng.random_range(0..10) {
            0..4 => {
                let value = next_value;
                next_value += 1;
                written.push(value);
                (KvOp::Put { key, value }, KvOutcome::Put, Some(value))
            }
            4..8 => (KvOp::Get { key }, KvOutcome::Get(current), current),
            _ => {
                let expected = match rng.random_range(0..4) {
                    0 => None,
                    1 if !written.is_empty() => Some(written[rng.random_range(0..written.len())]),
                    _ => current,
                };
                let new = next_value;
                next_value += 1;
                written.push(new);
                let swapped = current == expected;
                let new_state = if swapped { Some(new) } else { current };
                (
                    KvOp::Cas { key, expected, new },
                    KvOutcome::Cas(swapped),
                    new_state,
                )
            }
        };
        let outcome = if rng.random_bool(0.05) {
            // Indeterminate: took effect at `now`, or never.
            if !matches!(op, KvOp::Get { .. }) && rng.random_bool(0.5) {
                state.insert(key, new_state);
            }
            None
        } else {
            state.insert(key, new_state);
            Some((complete, outcome))
        };
        history.push(Operation {
            client: client as u64,
            op,
            invoke,
            outcome,
        });
    }
    history
}

#[test]
fn random_valid_histories_are_linearizable() {
    for seed in 0..20 {
        let mut rng = StdRng::seed_from_u64(seed);
        let history = random_valid_history(&mut rng, 2, 100, 8, 40);
        let result = check(&history, DEFAULT_BUDGET);
        assert_eq!(result, CheckResult::Linearizable, "seed {seed}: {result}");
    }
}

#[test]
fn large_random_history_is_checked_quickly() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let history = random_valid_history(&mut rng, 3, 300, 16, 120);
    let started = Instant::now();
    let result = check(&history, DEFAULT_BUDGET);
    let elapsed = started.elapsed();
    assert_eq!(result, CheckResult::Linearizable, "{result}");
    // A loose wall-clock bound (it was 1 s: a CPU-bound check on a loaded
    // CI machine, every test binary at once, can be descheduled that long);
    // the teeth are the step counts below, whatever the machine.
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    // Deterministically: the just-in-time search stays far below the budget.
    for key in 0..3 {
        let ops: Vec<&Operation> = history.iter().filter(|op| op.key() == key).collect();
        assert_eq!(ops.len(), 300);
        let (result, steps) = search(key, &ops, DEFAULT_BUDGET);
        assert!(result.is_linearizable());
        assert!(steps < 100_000, "key {key}: {steps} steps");
    }
}

#[test]
fn mutated_read_of_unwritten_value_is_rejected() {
    for seed in 0..20 {
        let mut rng = StdRng::seed_from_u64(1_000 + seed);
        let mut history = random_valid_history(&mut rng, 2, 150, 12, 60);
        let reads: Vec<usize> = (0..history.len())
            .filter(|&i| matches!(history[i].outcome, Some((_, KvOutcome::Get(_)))))
            .collect();
        let victim = reads[rng.random_range(0..reads.len())];
        let Some((complete, _)) = history[victim].outcome else {
            unreachable!()
        };
        history[victim].outcome = Some((complete, KvOutcome::Get(Some(u64::MAX))));
        let key = history[victim].key();
        match check(&history, DEFAULT_BUDGET) {
            CheckResult::NotLinearizable {
                key: k,
                explanation,
            } => {
                assert_eq!(k, key, "seed {seed}");
                assert!(explanation.contains("-> 18446744073709551615"));
            }
            other => panic!("seed {seed}: mutated read of k{key} not rejected: {other:?}"),
        }
    }
}
