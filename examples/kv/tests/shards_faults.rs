//! The sharded kv under faults, as real processes: three `kv serve --shards
//! 4` nodes and a spare, concurrent clients doing `put`/`get`/`cas` through
//! the CLI (`--sharded`) on a few keys spread over every group, and during
//! that load a `kill -9` of the node leading the most groups and its
//! restart from its data directory, a `kv move-replica` to the spare with a
//! `kill -9` of the move's source mid-move (the move is resumed by running
//! the command again), and a `kv transfer-leader`.
//!
//! Every client operation is recorded with its invocation and completion
//! time (a command that failed with exit code 1, or did not finish, has an
//! unknown outcome: it may or may not have been applied). At the end:
//! - the per-key histories, closed by one read of every key once the faults
//!   are over, are linearizable (`raftkit::sim::linearizability`), which
//!   also means every acknowledged write is visible: a read after its
//!   completion cannot return an older value;
//! - every key that had an acknowledged write is in `kv scan`, with the
//!   value the final read returned;
//! - `kv status --sharded` shows the moved group on the spare and not on
//!   its source, three voters and exactly one leader per group.
//!
//! The move's source leads the moved group, so it drives the move; it is
//! killed as soon as its log says the learner was added (the test watches
//! the log file: a status round trip is slower than the rest of a small
//! group's move), and the command run again on the new leader finishes the
//! catch-up and both configuration changes.
//!
//! Teeth: with linearizable reads served from the leader's local state
//! (no ReadIndex round), or with a session's retried write applied again,
//! this test fails (the latter in about half of the runs: it needs a write
//! retried across a fault).
//!
//! Waiting is polling under a deadline ([`PATIENCE`]); the clients' choices
//! come from a fixed seed ([`SEED`]), printed with any failure, and the
//! servers' logs stay in the test's temporary directory until it ends.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use raftkit::multi::placement::key_hash;
use raftkit::sim::linearizability::{DEFAULT_BUDGET, KvOp, KvOutcome, Operation, check};

mod support;
use support::sharded::{GroupRow, group_leader};
use support::{Out, PATIENCE, Procs, TICK_MS, free_udp_addrs, kv, kv_within};

/// Data groups (`--shards`).
const SHARDS: u64 = 4;
/// Keys per data group.
const KEYS_PER_GROUP: usize = 2;
/// Concurrent clients.
const CLIENTS: u64 = 4;
/// The seed of the clients' choices.
const SEED: u64 = 0x005e_ed18;
/// How long one client command may take before its outcome is unknown.
const OP_LIMIT: Duration = Duration::from_secs(15);

/// Every group `0..=SHARDS` has exactly one leader among the rows.
fn all_led(rows: &[GroupRow]) -> bool {
    (0..=SHARDS).all(|g| group_leader(rows, g).is_some())
}

/// The environment of a client command against `cluster`.
fn env_of(cluster: &str, certs: &str) -> Vec<(String, String)> {
    vec![
        ("KV_CLUSTER".into(), cluster.into()),
        ("RAFTKIT_CERTS".into(), certs.into()),
        ("KV_SHARDED".into(), "1".into()),
    ]
}

fn as_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// [`support::sharded::wait_groups`] with an owned environment.
fn wait_groups(
    env: &[(String, String)],
    what: &str,
    done: impl Fn(&[GroupRow]) -> bool,
) -> Vec<GroupRow> {
    support::sharded::wait_groups(&as_refs(env), what, done)
}

/// `kv serve` arguments of one node.
fn serve_args(addr: &str, data: &Path, certs: &str, members: &str) -> Vec<String> {
    [
        "--listen",
        addr,
        "--data",
        &data.to_string_lossy(),
        "--certs",
        certs,
        "--shards",
        &SHARDS.to_string(),
        "--members",
        members,
        "--tick-ms",
        TICK_MS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// SplitMix64: the clients' deterministic choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Microseconds since `start`: the history's clock.
fn micros(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A client command must never panic, whatever the cluster does.
fn no_panic(args: &[&str], out: &Out) {
    assert!(
        !out.stderr.contains("panicked"),
        "kv {args:?} panicked: {out:?}"
    );
}

/// Parses a value this test wrote (all are decimal numbers).
fn value(text: &str, out: &Out) -> u64 {
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("a value this test never wrote: {out:?}"))
}

/// Runs `op` on key `keys[op.key()]` through the CLI and records it.
fn run_op(
    client: u64,
    op: KvOp,
    keys: &[String],
    env: &[(&str, &str)],
    start: Instant,
) -> Operation {
    let key = &keys[op.key() as usize];
    let args: Vec<String> = match op {
        KvOp::Put { value, .. } => vec!["put".into(), key.clone(), value.to_string()],
        KvOp::Get { .. } => vec!["get".into(), key.clone()],
        KvOp::Cas { expected, new, .. } => vec![
            "cas".into(),
            key.clone(),
            expected.map_or("-".into(), |v| v.to_string()),
            new.to_string(),
        ],
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let invoke = micros(start);
    let out = kv_within(&args, env, OP_LIMIT);
    let complete = micros(start);
    no_panic(&args, &out);
    let outcome = match (op, out.code) {
        (KvOp::Put { .. }, Some(0)) => {
            assert_eq!(out.stdout.trim(), "OK", "{out:?}");
            Some(KvOutcome::Put)
        }
        (KvOp::Get { .. }, Some(0)) => Some(KvOutcome::Get(Some(value(&out.stdout, &out)))),
        (KvOp::Get { .. }, Some(3)) => Some(KvOutcome::Get(None)),
        (KvOp::Cas { .. }, Some(0)) => Some(KvOutcome::Cas(true)),
        (KvOp::Cas { .. }, Some(3)) => Some(KvOutcome::Cas(false)),
        // Exit code 1 (cluster unreachable, no leader in time) or no exit
        // at all: the command may or may not have been applied.
        (_, Some(1) | None) => None,
        (_, code) => panic!("kv {args:?}: unexpected exit code {code:?}: {out:?}"),
    };
    Operation {
        client,
        op,
        invoke,
        outcome: outcome.map(|o| (complete, o)),
    }
}

/// One client's loop until `stop`: puts, gets and compare-and-swaps on
/// random keys, each written value unique.
fn client_loop(
    client: u64,
    keys: Arc<Vec<String>>,
    env: Vec<(String, String)>,
    start: Instant,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> Vec<Operation> {
    let env = as_refs(&env);
    let mut rng = Rng(SEED ^ client.wrapping_mul(0x1000_0000_01b3));
    // The last value this client saw per key: what its cas expects.
    let mut seen: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    let mut history = Vec::new();
    let mut seq = 0;
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        let key = rng.next() % keys.len() as u64;
        let fresh = (client + 1) * 1_000_000 + seq;
        let op = match rng.next() % 100 {
            0..40 => KvOp::Put { key, value: fresh },
            40..75 => KvOp::Get { key },
            _ => KvOp::Cas {
                key,
                expected: seen.get(&key).copied().flatten(),
                new: fresh,
            },
        };
        let record = run_op(client, op, &keys, &env, start);
        match (record.op, record.outcome) {
            (KvOp::Get { .. }, Some((_, KvOutcome::Get(v)))) => {
                seen.insert(key, v);
            }
            (KvOp::Put { value, .. }, Some(_))
            | (KvOp::Cas { new: value, .. }, Some((_, KvOutcome::Cas(true)))) => {
                seen.insert(key, Some(value));
            }
            _ => {}
        }
        if record.outcome.is_some() {
            done.fetch_add(1, Ordering::SeqCst);
        }
        history.push(record);
    }
    history
}

/// Waits until the clients completed `n` more operations than `from`.
fn wait_progress(done: &AtomicUsize, n: usize, what: &str) {
    let from = done.load(Ordering::SeqCst);
    let deadline = Instant::now() + PATIENCE;
    while done.load(Ordering::SeqCst) < from + n {
        assert!(
            Instant::now() < deadline,
            "{what}: the clients completed {} operations of {n} in {PATIENCE:?}",
            done.load(Ordering::SeqCst) - from
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Picks `KEYS_PER_GROUP` keys in each data group's hash range, as the
/// status reports the ranges (the router places a key by
/// [`key_hash`] of its bytes).
fn keys_over_groups(rows: &[GroupRow]) -> Vec<String> {
    let ranges: BTreeMap<u64, (u64, u64)> = rows
        .iter()
        .filter(|r| r.group != 0)
        .filter_map(|r| Some((r.group, r.range?)))
        .collect();
    assert_eq!(ranges.len() as u64, SHARDS, "{rows:?}");
    let mut per_group: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for i in 0.. {
        let key = format!("f{i}");
        let h = key_hash(key.as_bytes());
        if let Some((g, _)) = ranges.iter().find(|(_, (a, b))| *a <= h && h <= *b) {
            let ks = per_group.entry(*g).or_default();
            if ks.len() < KEYS_PER_GROUP {
                ks.push(key);
            }
        }
        if per_group.len() as u64 == SHARDS && per_group.values().all(|k| k.len() == KEYS_PER_GROUP)
        {
            break;
        }
        assert!(i < 10_000, "no keys for every group: {ranges:?}");
    }
    per_group.into_values().flatten().collect()
}

#[test]
fn sharded_kv_survives_kill9_moves_and_transfers_linearizably() {
    let started = Instant::now();
    let phase = |what: &str| eprintln!("[{:>7.1?}] {what}", started.elapsed());
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = |p: &str| -> PathBuf { tmp.path().join(p) };
    let certs = path("certs").to_string_lossy().to_string();
    let out = kv(&["certs", "init", &certs], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");

    let mut all = free_udp_addrs(4);
    let spare = all.pop().expect("four addresses");
    let addrs = all;
    let members = addrs.join(",");
    let args_of = |addr: &str, name: &str| serve_args(addr, &path(name), &certs, &members);
    let data_name = |i: usize| format!("n{i}");
    let mut procs = Procs::default();
    let mut restarts = 0;
    let mut serve = |procs: &mut Procs, i: usize, addr: &str, name: &str| -> PathBuf {
        let args = args_of(addr, name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        restarts += 1;
        let log = path(&format!("{name}.{i}.{restarts}.log"));
        procs.serve(addr, &args, &log);
        log
    };
    let mut logs: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (i, addr) in addrs.iter().enumerate() {
        logs.insert(addr.clone(), serve(&mut procs, i, addr, &data_name(i)));
    }
    let env = env_of(&members, &certs);
    let rows = wait_groups(&env, "every group on three nodes, led", |rows| {
        rows.len() == 3 * (SHARDS as usize + 1) && all_led(rows)
    });
    let keys = Arc::new(keys_over_groups(&rows));

    // The load.
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let client_env = env_of(&format!("{members},{spare}"), &certs);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (keys, env, stop, done) =
                (keys.clone(), client_env.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || client_loop(c, keys, env, start, stop, done))
        })
        .collect();
    wait_progress(&done, 8, "warm-up");
    phase("load running");

    // 1. kill -9 the node leading the most groups; the others elect
    //    leaders for its groups while it is down; it restarts from its
    //    data directory.
    let rows = wait_groups(&env, "leaders", all_led);
    let (victim, _) = addrs
        .iter()
        .enumerate()
        .max_by_key(|(_, a)| {
            (0..=SHARDS)
                .filter(|g| group_leader(&rows, *g).as_deref() == Some(a.as_str()))
                .count()
        })
        .expect("nodes");
    let victim_addr = addrs[victim].clone();
    procs.kill9(&victim_addr);
    phase("kill -9 of the node leading the most groups");
    let survivors: Vec<String> = addrs
        .iter()
        .filter(|a| **a != victim_addr)
        .cloned()
        .collect();
    let survivors_env = env_of(&survivors.join(","), &certs);
    wait_groups(&survivors_env, "every group led by a survivor", all_led);
    wait_progress(&done, 4, "load with a node down");
    phase("its groups led by the survivors, load went on");
    logs.insert(
        victim_addr.clone(),
        serve(&mut procs, victim, &victim_addr, &data_name(victim)),
    );
    let victim_env = env_of(&victim_addr, &certs);
    wait_groups(
        &victim_env,
        "the restarted node hosts every group again",
        |rows| {
            rows.len() == SHARDS as usize + 1
                && rows
                    .iter()
                    .all(|r| r.role == "leader" || r.role == "follower")
        },
    );

    // 2. move a replica of a group to the spare, killing the move's source
    //    (which leads the group, so it drives the move) once the spare
    //    hosts the group; then resume the move by running it again.
    phase("restarted, hosting every group again");
    serve(&mut procs, 3, &spare, "spare");
    let rows = wait_groups(&env, "leaders", all_led);
    let moved: u64 = 1;
    let source = group_leader(&rows, moved).expect("led");
    let source_idx = addrs.iter().position(|a| *a == source).expect("a member");
    let mut mover = support::kv_command();
    mover
        .args([
            "move-replica",
            "--group",
            &moved.to_string(),
            &source,
            &spare,
        ])
        .envs(as_refs(&env))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut mover = mover.spawn().expect("kv move-replica runs");
    // The source logs each step it finishes; it is killed as soon as the
    // learner is added (watching its log: a status round trip is slower
    // than the rest of a small group's move).
    let source_log = logs.get(&source).expect("a member's log").clone();
    let steps_done = || -> Vec<String> {
        std::fs::read_to_string(&source_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("replica move step done"))
            .filter_map(|l| {
                l.split("step=")
                    .nth(1)?
                    .split_whitespace()
                    .next()
                    .map(String::from)
            })
            .collect()
    };
    let deadline = Instant::now() + PATIENCE;
    while steps_done().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the move never added its learner"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    procs.kill9(&source);
    phase(&format!(
        "kill -9 of the move's source (it leads the group) after the steps {:?}",
        steps_done()
    ));
    let _ = mover.kill();
    let _ = mover.wait();
    logs.insert(
        source.clone(),
        serve(&mut procs, source_idx, &source, &data_name(source_idx)),
    );
    let move_env = env_of(&format!("{members},{spare}"), &certs);
    let deadline = Instant::now() + PATIENCE;
    let resumed = loop {
        let out = kv_within(
            &[
                "move-replica",
                "--group",
                &moved.to_string(),
                &source,
                &spare,
            ],
            &as_refs(&move_env),
            PATIENCE,
        );
        no_panic(&["move-replica"], &out);
        if out.code == Some(0) {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "the move never finished: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    phase(&format!("move run again: {}", resumed.stdout.trim()));
    wait_progress(&done, 4, "load after the move");

    // 3. transfer the leadership of another group.
    let rows = wait_groups(&move_env, "leaders", all_led);
    let group: u64 = 2;
    let old = group_leader(&rows, group).expect("led");
    let to = addrs
        .iter()
        .find(|a| **a != old)
        .expect("another node")
        .clone();
    let out = kv(
        &["transfer-leader", "--group", &group.to_string(), &to],
        &as_refs(&move_env),
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    wait_progress(&done, 8, "load after the transfer");

    phase("leadership transferred");
    stop.store(true, Ordering::SeqCst);
    let mut history: Vec<Operation> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();

    // One read of every key once the faults are over.
    let env4 = as_refs(&move_env);
    for k in 0..keys.len() as u64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let op = run_op(CLIENTS, KvOp::Get { key: k }, &keys, &env4, start);
            let known = op.outcome.is_some();
            history.push(op);
            if known {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "key {} never read",
                keys[k as usize]
            );
        }
    }

    phase("clients stopped, final reads done");
    let summary = format!(
        "seed {SEED:#x}: {} operations ({} with an unknown outcome) over {} keys",
        history.len(),
        history.iter().filter(|o| o.outcome.is_none()).count(),
        keys.len()
    );
    let verdict = check(&history, DEFAULT_BUDGET);
    assert!(
        verdict.is_linearizable(),
        "{summary}; keys {keys:?}\n{verdict}"
    );

    // Every acknowledged write is readable: the key is in the scan with the
    // value the final read returned.
    let out = kv(&["scan", "f"], &env4);
    assert_eq!(out.code, Some(0), "{out:?}");
    let scanned: BTreeMap<String, u64> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_string(), value(v, &out)))
        .collect();
    let acked: BTreeSet<u64> = history
        .iter()
        .filter(|o| matches!(o.outcome, Some((_, KvOutcome::Put | KvOutcome::Cas(true)))))
        .map(Operation::key)
        .collect();
    for k in &acked {
        let last = history
            .iter()
            .rev()
            .find_map(|o| match (o.op, o.outcome) {
                (KvOp::Get { key }, Some((_, KvOutcome::Get(v)))) if key == *k => Some(v),
                _ => None,
            })
            .flatten();
        let name = &keys[*k as usize];
        assert!(
            last.is_some(),
            "{name}: acknowledged writes, read as absent"
        );
        assert_eq!(
            scanned.get(name).copied(),
            last,
            "{name} in the scan: {out:?}"
        );
    }
    let groups_written: BTreeSet<u64> = acked.iter().map(|k| *k / KEYS_PER_GROUP as u64).collect();
    assert_eq!(
        groups_written.len() as u64,
        SHARDS,
        "writes reached every group: {summary}"
    );

    // The layout: the moved replica on the spare and not on its source,
    // three voters and one leader per group.
    wait_groups(&move_env, "final layout", |rows| {
        all_led(rows)
            && rows.iter().any(|r| r.group == moved && r.node == spare)
            && !rows.iter().any(|r| r.group == moved && r.node == source)
            && (0..=SHARDS).all(|g| {
                rows.iter()
                    .filter(|r| r.group == g && r.role == "leader")
                    .all(|r| r.replicas.len() == 3)
            })
            && rows
                .iter()
                .filter(|r| r.group == moved && r.role == "leader")
                .all(|r| r.replicas.contains(&spare) && !r.replicas.contains(&source))
    });
    eprintln!("{summary}; took {:?}", started.elapsed());
}
