//! The seeded cluster simulation: thousands of clusters through crashes,
//! partitions, loss, duplication and reordering, with Raft's safety
//! properties checked after every step and every client history checked for
//! linearizability.
//!
//! - `RAFTKIT_SIM_SEEDS=N` runs N seeds in all over the four sweep tests
//!   instead of the CI default (plus the membership seeds that top them up,
//!   see [`sweep`]).
//! - `RAFTKIT_SIM_SEED=S RAFTKIT_SIM_TRACE=1 cargo test --test sim replay --
//!   --nocapture` replays one seed with a full event trace; a failing seed
//!   prints exactly this command. `RAFTKIT_SIM_BUG=<switch>` replays it
//!   with one of the [`Bugs`] switches on (a tooth's catch).
//! - The teeth: each `teeth_*` test switches one rule of the core off and
//!   requires the sweep's seeds to catch it within the CI budget, printing
//!   the seed that does; `tooth_rate` (ignored, run by hand) says how many
//!   seeds of a range catch one switch.

use raftkit::core::config::Bugs;
use raftkit::sim::{self, SimOptions, SimReport};

/// Seeds per sweep test in CI; four sweep tests run, so CI covers 4x this.
const CI_SEEDS_PER_SWEEP: u64 = 500;

/// Membership changes summed over a sweep.
#[derive(Debug, Default)]
struct MembershipTotals {
    /// Runs with membership changes on.
    seeds: usize,
    config_changes: usize,
    added: usize,
    removed: usize,
    leaders_removed: usize,
    kept_running: usize,
}

impl MembershipTotals {
    fn of(reports: &[(bool, SimReport)]) -> Self {
        let mut t = MembershipTotals::default();
        for (membership, r) in reports {
            t.seeds += usize::from(*membership);
            t.config_changes += r.config_changes;
            t.added += r.nodes_added;
            t.removed += r.nodes_removed;
            t.leaders_removed += r.leaders_removed;
            t.kept_running += r.removed_kept_running;
        }
        t
    }

    /// Asserts that changes of every kind committed: joins, removals,
    /// removals of the leader itself, and removed nodes kept running (which
    /// must not disrupt the cluster).
    fn assert_every_kind(&self) {
        assert!(self.seeds > 0, "no seed with membership changes");
        assert!(self.config_changes > 0, "no change committed: {self:?}");
        assert!(self.added > 0, "no node joined: {self:?}");
        assert!(self.removed > 0, "no node was removed: {self:?}");
        assert!(
            self.leaders_removed > 0,
            "the leader was never removed: {self:?}"
        );
        assert!(
            self.kept_running > 0,
            "no removed node kept running: {self:?}"
        );
    }
}

fn seeds_per_sweep() -> u64 {
    match std::env::var("RAFTKIT_SIM_SEEDS") {
        Ok(v) => v
            .parse::<u64>()
            .map(|n| n.div_ceil(4))
            .unwrap_or_else(|_| panic!("RAFTKIT_SIM_SEEDS must be a number, got {v:?}")),
        Err(_) => CI_SEEDS_PER_SWEEP,
    }
}

/// The seeds of sweep part `part` and whether each has membership changes
/// forced on: its `per` seeds with [`SimOptions::for_seed`] (which turns
/// membership changes on for three seeds in four), topped up with seeds
/// beyond all parts' ranges that have them forced on, until `per` of the
/// part's runs have membership changes. Four parts thus cover 4 x `per`
/// seeds with membership changes (2000 in CI) besides those without, and
/// stay equal in size, so that two cores finish them in two rounds.
fn part_seeds(part: u64, per: u64) -> Vec<(u64, bool)> {
    let first = 1 + part * per;
    let mut seeds: Vec<(u64, bool)> = (first..first + per).map(|s| (s, false)).collect();
    let with = seeds
        .iter()
        .filter(|(s, _)| SimOptions::for_seed(*s).membership)
        .count() as u64;
    let extra_first = 1 + 4 * per + part * per;
    seeds.extend((extra_first..extra_first + (per - with)).map(|s| (s, true)));
    seeds
}

/// Runs `seeds` (forcing membership changes on where asked); returns
/// whether each run had them, with its report.
fn run_seeds(seeds: &[(u64, bool)]) -> Vec<(bool, SimReport)> {
    seeds
        .iter()
        .map(|&(seed, force)| {
            let mut opts = SimOptions::for_seed(seed);
            opts.membership |= force;
            let membership = opts.membership;
            match sim::run(seed, opts) {
                Ok(report) => (membership, report),
                Err(failure) => panic!("{failure}"),
            }
        })
        .collect()
}

/// The figures of a set of runs, summed.
#[derive(Debug, Default)]
struct Totals {
    runs: usize,
    /// Runs with PreVote off, CheckQuorum off.
    pre_vote_off: usize,
    check_quorum_off: usize,
    ops: usize,
    completed: usize,
    crashes: usize,
    targeted_crashes: usize,
    io_errors: usize,
    torn_writes: usize,
    mid_compaction: usize,
    mid_install: usize,
    mid_transfer: usize,
    snapshots_installed: usize,
    snapshot_chunks: usize,
    snapshot_restarts: usize,
    late_deliveries: usize,
    late_across_terms: usize,
    backlog_released: usize,
    pauses: usize,
    transfers: usize,
    transfers_refused: usize,
    transfers_completed: usize,
    lease_reads: usize,
}

impl Totals {
    fn of(runs: &[(SimOptions, SimReport)]) -> Self {
        let mut t = Totals::default();
        for (o, r) in runs {
            t.runs += 1;
            t.pre_vote_off += usize::from(!o.pre_vote);
            t.check_quorum_off += usize::from(!o.check_quorum);
            t.ops += r.ops;
            t.completed += r.completed;
            t.crashes += r.crashes;
            t.targeted_crashes += r.targeted_crashes;
            t.io_errors += r.io_errors;
            t.torn_writes += r.torn_writes;
            t.mid_compaction += r.crashes_mid_compaction;
            t.mid_install += r.crashes_mid_install;
            t.mid_transfer += r.crashes_mid_transfer;
            t.snapshots_installed += r.snapshots_installed;
            t.snapshot_chunks += r.snapshot_chunks;
            t.snapshot_restarts += r.snapshot_restarts;
            t.late_deliveries += r.late_deliveries;
            t.late_across_terms += r.late_across_terms;
            t.backlog_released += r.backlog_released;
            t.pauses += r.pauses;
            t.transfers += r.transfers;
            t.transfers_refused += r.transfers_refused;
            t.transfers_completed += r.transfers_completed;
            t.lease_reads += r.lease_reads;
        }
        t
    }

    /// Asserts that the runs went through every schedule the simulation
    /// has: each kind of crash, torn writes and IO errors, snapshots of
    /// several chunks restarted by newer ones, late deliveries across
    /// terms, backlogs, pauses, transfers that completed, and runs with
    /// PreVote and CheckQuorum off.
    fn assert_every_schedule(&self) {
        let checks = [
            ("crashes", self.crashes),
            ("crashes aimed before an fsync", self.targeted_crashes),
            ("IO errors", self.io_errors),
            ("torn writes", self.torn_writes),
            ("crashes mid-transfer", self.mid_transfer),
            ("snapshot installs", self.snapshots_installed),
            (
                "snapshots of several chunks",
                self.snapshot_chunks
                    .saturating_sub(self.snapshots_installed),
            ),
            ("snapshot transfers restarted", self.snapshot_restarts),
            ("late deliveries across terms", self.late_across_terms),
            ("backlogs released", self.backlog_released),
            ("pauses", self.pauses),
            ("transfers completed", self.transfers_completed),
            ("transfers refused", self.transfers_refused),
            ("lease reads", self.lease_reads),
            ("runs without PreVote", self.pre_vote_off),
            ("runs without CheckQuorum", self.check_quorum_off),
        ];
        for (what, n) in checks {
            assert!(n > 0, "no {what} in the sweep: {self:?}");
        }
    }
}

fn sweep(part: u64) {
    let per = seeds_per_sweep();
    let seeds = part_seeds(part, per);
    let started = std::time::Instant::now();
    let runs = run_seeds(&seeds);
    let elapsed = started.elapsed();
    let with_opts: Vec<(SimOptions, SimReport)> = seeds
        .iter()
        .zip(&runs)
        .map(|(&(seed, force), (_, r))| {
            let mut o = SimOptions::for_seed(seed);
            o.membership |= force;
            (o, r.clone())
        })
        .collect();
    let t = Totals::of(&with_opts);
    let m = MembershipTotals::of(&runs);
    let first = 1 + part * per;
    println!(
        "seeds {first}..{} and {} more with membership changes forced on: {} runs ok in {:.1}s \
         ({:.0} seeds/minute on this thread)\n  {t:?}\n  {m:?}",
        first + per,
        seeds.len() as u64 - per,
        runs.len(),
        elapsed.as_secs_f64(),
        runs.len() as f64 * 60.0 / elapsed.as_secs_f64().max(1e-9),
    );
    t.assert_every_schedule();
    assert_eq!(m.seeds as u64, per, "runs with membership changes");
    m.assert_every_kind();
}

#[test]
fn sweep_seeds_part_0() {
    sweep(0);
}

#[test]
fn sweep_seeds_part_1() {
    sweep(1);
}

#[test]
fn sweep_seeds_part_2() {
    sweep(2);
}

#[test]
fn sweep_seeds_part_3() {
    sweep(3);
}

/// The sweep's scenarios commit membership changes, of every kind, and in
/// most of the runs that have them on: checked on the first seeds of the
/// sweep exactly as it runs them (each sweep part checks its totals too).
#[test]
fn membership_changes_happen() {
    let seeds: Vec<(u64, bool)> = part_seeds(0, seeds_per_sweep())
        .into_iter()
        .take(40)
        .collect();
    let runs = run_seeds(&seeds);
    let m = MembershipTotals::of(&runs);
    println!("the first {} seeds of the sweep: {m:?}", seeds.len());
    m.assert_every_kind();
    let changed = runs
        .iter()
        .filter(|(membership, r)| *membership && r.config_changes > 0)
        .count();
    assert!(
        changed * 4 > m.seeds * 3,
        "only {changed} of {} runs with membership changes on committed one",
        m.seeds
    );
}

/// Replays `RAFTKIT_SIM_SEED` (seed 1 when unset) and prints the trace when
/// `RAFTKIT_SIM_TRACE` is set; `RAFTKIT_SIM_MEMBERSHIP=1` forces membership
/// changes on (as the membership sweep does); `RAFTKIT_SIM_BUG=<switch>`
/// turns one of the [`Bugs`] switches on.
#[test]
fn replay() {
    let seed = std::env::var("RAFTKIT_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut opts = SimOptions::for_seed(seed);
    opts.trace = std::env::var_os("RAFTKIT_SIM_TRACE").is_some();
    if std::env::var_os("RAFTKIT_SIM_MEMBERSHIP").is_some() {
        opts.membership = true;
    }
    if let Ok(name) = std::env::var("RAFTKIT_SIM_BUG") {
        opts.bugs = bugs_named(&name);
    }
    println!("replaying seed {seed} with {opts:?}");
    match sim::run(seed, opts) {
        Ok(report) => println!("{report:?}"),
        Err(failure) => panic!("{failure}"),
    }
}

/// One seed always yields the same run.
#[test]
fn a_seed_replays_identically() {
    for seed in [3, 17, 4242] {
        let a = sim::run(seed, SimOptions::for_seed(seed)).unwrap_or_else(|f| panic!("{f}"));
        let b = sim::run(seed, SimOptions::for_seed(seed)).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed} diverged");
        assert_eq!(a.events, b.events);
        assert!(a.completed > 0, "seed {seed} completed no operation");
    }
    // Membership changes add nodes and admin decisions: still one trace.
    for seed in [5, 6] {
        let opts = || {
            let mut o = SimOptions::for_seed(seed);
            o.membership = true;
            o
        };
        let a = sim::run(seed, opts()).unwrap_or_else(|f| panic!("{f}"));
        let b = sim::run(seed, opts()).unwrap_or_else(|f| panic!("{f}"));
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed} diverged");
        assert!(a.config_changes > 0, "seed {seed} changed no configuration");
    }
    let a = sim::run(3, SimOptions::for_seed(3)).unwrap_or_else(|f| panic!("{f}"));
    let b = sim::run(4, SimOptions::for_seed(3)).unwrap_or_else(|f| panic!("{f}"));
    assert_ne!(
        a.trace_hash, b.trace_hash,
        "different seeds gave the same trace"
    );
}

// ----- teeth: a deliberately broken rule is caught within the CI budget ----

/// Seeds a tooth may take to be caught: the CI sweep's budget.
const TEETH_BUDGET: u64 = 2000;

/// Runs seeds with `bugs` switched on until one fails; returns the failure.
fn find_violation(bugs: Bugs, budget: u64) -> sim::SimFailure {
    find_violation_with(bugs, budget, |_| {})
}

/// [`find_violation`] with the options of each seed adjusted by `adjust`.
fn find_violation_with(
    bugs: Bugs,
    budget: u64,
    adjust: impl Fn(&mut SimOptions),
) -> sim::SimFailure {
    for seed in 1..=budget {
        let mut opts = SimOptions::for_seed(seed);
        adjust(&mut opts);
        opts.bugs = bugs;
        if let Err(failure) = sim::run(seed, opts) {
            println!("{bugs:?}\ncaught after {seed} seeds: {failure}");
            return failure;
        }
    }
    panic!("{bugs:?} survived {budget} seeds: the simulation has no teeth for it");
}

/// Asserts the failure is a broken safety property or a non-linearizable
/// history, not a stall.
fn assert_safety(failure: &sim::SimFailure) {
    assert!(
        !matches!(failure.kind, sim::FailureKind::Liveness(_)),
        "expected a safety or linearizability failure, got {failure}"
    );
}

/// Followers acknowledging entries before they are durable: the oracle's
/// persistence ordering sees the acknowledgement leave ahead of the disk
/// (seed 1 at the time of writing); without it, durability catches the
/// commit.
#[test]
fn teeth_acknowledging_before_persisting_is_caught() {
    let bugs = Bugs {
        ack_before_persist: true,
        ..Default::default()
    };
    assert_safety(&find_violation(bugs, TEETH_BUDGET));
}

/// Reads served without a heartbeat round: a deposed leader answers from
/// its state, a stale read (seed 7 at the time of writing).
#[test]
fn teeth_reads_without_a_heartbeat_round_are_caught() {
    let bugs = Bugs {
        read_without_heartbeat: true,
        ..Default::default()
    };
    let failure = find_violation(bugs, TEETH_BUDGET);
    assert!(
        matches!(failure.kind, sim::FailureKind::Linearizability(_)),
        "expected a stale read, got {failure}"
    );
}

/// Committing an earlier term's entry by counting replicas: the scripted
/// Figure 8 of the churn periods overwrites it (leader completeness, seed
/// 10 at the time of writing).
#[test]
fn teeth_committing_earlier_term_entries_by_counting_is_caught() {
    let bugs = Bugs {
        commit_old_terms: true,
        ..Default::default()
    };
    assert_safety(&find_violation(bugs, TEETH_BUDGET));
}

/// Changing two voters at once without C_old,new: the admin's splits
/// across a change (the leaving node with half of the others, the joining
/// one with the rest, in place before the change's first message leaves)
/// let both sides decide (durability, seed 3 at the time of writing).
#[test]
fn teeth_membership_changes_without_joint_consensus_are_caught() {
    let bugs = Bugs {
        skip_joint_consensus: true,
        ..Default::default()
    };
    assert_safety(&find_violation_with(bugs, TEETH_BUDGET, |o| {
        o.membership = true
    }));
}

/// ReadIndex served before the leader committed an entry of its term: a
/// new leader's commit index lags the last one's, a stale read (seed 19 at
/// the time of writing).
#[test]
fn teeth_reads_before_the_leader_commits_in_its_term_are_caught() {
    let bugs = Bugs {
        read_before_term_commit: true,
        ..Default::default()
    };
    assert_safety(&find_violation(bugs, TEETH_BUDGET));
}

/// Responses of older terms taken as current: a grant of an earlier term
/// (late, or from a slow voter of a split election) elects a leader no
/// quorum voted for in its term (election, seed 62 at the time of
/// writing).
#[test]
fn teeth_responses_from_older_terms_taken_as_current_are_caught() {
    let bugs = Bugs {
        stale_responses_as_current: true,
        ..Default::default()
    };
    assert_safety(&find_violation(bugs, TEETH_BUDGET));
}

/// A vote reply leaving once the term is durable, before the vote is: the
/// oracle's persistence ordering sees it (seed 7 at the time of writing);
/// crashes aimed between the grant and its fsync let the voter vote
/// again.
#[test]
fn teeth_vote_replies_before_the_vote_is_durable_are_caught() {
    let bugs = Bugs {
        vote_before_durable: true,
        ..Default::default()
    };
    assert_safety(&find_violation(bugs, TEETH_BUDGET));
}

/// A conflicting suffix cut from the in-memory log only: the node counts
/// as durable entries its disk does not hold (storage agreement, seed 2 at
/// the time of writing).
#[test]
fn teeth_truncations_not_handed_to_storage_are_caught() {
    let bugs = Bugs {
        truncation_not_persisted: true,
        ..Default::default()
    };
    assert_safety(&find_violation(bugs, TEETH_BUDGET));
}

/// Heartbeats carrying the leader's commit index uncapped: a follower with
/// a diverging suffix commits it (agreement on the committed log, seed 3
/// at the time of writing).
#[test]
fn teeth_heartbeat_commit_not_capped_at_match_is_caught() {
    let bugs = Bugs {
        heartbeat_commit_uncapped: true,
        ..Default::default()
    };
    assert_safety(&find_violation(bugs, TEETH_BUDGET));
}

/// A joint configuration's entries committed on C_new alone: not on a
/// quorum of C_old (durability, seed 3 at the time of writing; seed 2
/// before the inbound checks of `core/inbound.rs`, which change the course
/// of most seeds).
#[test]
fn teeth_joint_commit_on_the_new_voters_alone_is_caught() {
    let bugs = Bugs {
        joint_commit_on_new_voters: true,
        ..Default::default()
    };
    assert_safety(&find_violation_with(bugs, TEETH_BUDGET, |o| {
        o.membership = true
    }));
}

/// Elections in a joint configuration won on C_new alone: a leader
/// without a quorum of C_old, so two leaders of one term across a split
/// (the oracle's election check, seed 17 at the time of writing; seed 11,
/// by election safety, before the inbound checks of `core/inbound.rs`,
/// which change the course of most seeds).
#[test]
fn teeth_joint_election_on_the_new_voters_alone_is_caught() {
    let bugs = Bugs {
        joint_election_on_new_voters: true,
        ..Default::default()
    };
    assert_safety(&find_violation_with(bugs, TEETH_BUDGET, |o| {
        o.membership = true
    }));
}

/// Transfer vote requests granted without the up-to-date check: a late
/// `TimeoutNow` (or one to a slow target) makes a lagging node campaign
/// (election restriction, seed 73 at the time of writing).
#[test]
fn teeth_transfer_votes_skipping_the_log_check_are_caught() {
    let bugs = Bugs {
        transfer_skips_log_check: true,
        ..Default::default()
    };
    assert_safety(&find_violation(bugs, TEETH_BUDGET));
}

/// Lease reads whose lease ignores the clock drift bound (it lasts two
/// election timeouts): a leader cut off from the others keeps serving reads
/// from its state after a new leader committed writes, a stale read.
#[test]
fn teeth_lease_reads_ignoring_the_drift_bound_are_caught() {
    let bugs = Bugs {
        lease_ignores_drift: true,
        ..Default::default()
    };
    let failure = find_violation(bugs, TEETH_BUDGET);
    assert!(
        matches!(failure.kind, sim::FailureKind::Linearizability(_)),
        "expected a stale read, got {failure}"
    );
}

/// The switches of [`Bugs`] named in `names` (comma-separated, as a
/// failure's replay command gives them) turned on.
fn bugs_named(names: &str) -> Bugs {
    let mut bugs = Bugs::default();
    for name in names.split(',') {
        let flag = match name {
            "commit_old_terms" => &mut bugs.commit_old_terms,
            "ack_before_persist" => &mut bugs.ack_before_persist,
            "read_without_heartbeat" => &mut bugs.read_without_heartbeat,
            "skip_joint_consensus" => &mut bugs.skip_joint_consensus,
            "read_before_term_commit" => &mut bugs.read_before_term_commit,
            "stale_responses_as_current" => &mut bugs.stale_responses_as_current,
            "vote_before_durable" => &mut bugs.vote_before_durable,
            "truncation_not_persisted" => &mut bugs.truncation_not_persisted,
            "heartbeat_commit_uncapped" => &mut bugs.heartbeat_commit_uncapped,
            "joint_commit_on_new_voters" => &mut bugs.joint_commit_on_new_voters,
            "joint_election_on_new_voters" => &mut bugs.joint_election_on_new_voters,
            "transfer_skips_log_check" => &mut bugs.transfer_skips_log_check,
            "lease_ignores_drift" => &mut bugs.lease_ignores_drift,
            "removed_leader_keeps_leading" => &mut bugs.removed_leader_keeps_leading,
            "non_voters_campaign" => &mut bugs.non_voters_campaign,
            other => panic!("RAFTKIT_SIM_BUG: no such switch {other:?}"),
        };
        *flag = true;
    }
    bugs
}

/// How often the sweep catches one switch: `RAFTKIT_SIM_BUG=<field of
/// Bugs>` with `RAFTKIT_SIM_SEEDS=N` (default 500) runs N seeds with it on
/// and prints how many failed, and how (`RAFTKIT_SIM_MEMBERSHIP=0` or `1`
/// turns membership changes off or on in every seed). Not part of CI: a tool to see how
/// sharp a tooth is (`cargo test --release --test sim tooth_rate --
/// --ignored --nocapture`).
#[test]
#[ignore]
fn tooth_rate() {
    let name = std::env::var("RAFTKIT_SIM_BUG").unwrap_or_default();
    let bugs = bugs_named(&name);
    let seeds: u64 = std::env::var("RAFTKIT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let mut caught = Vec::new();
    let membership = std::env::var("RAFTKIT_SIM_MEMBERSHIP").ok();
    for seed in 1..=seeds {
        let mut opts = SimOptions::for_seed(seed);
        opts.bugs = bugs;
        match membership.as_deref() {
            Some("0") => opts.membership = false,
            Some(_) => opts.membership = true,
            None => {}
        }
        if let Err(f) = sim::run(seed, opts) {
            let kind = match &f.kind {
                sim::FailureKind::Safety(v) => v.property.to_string(),
                sim::FailureKind::Linearizability(_) => "linearizability".into(),
                sim::FailureKind::Liveness(_) => "liveness".into(),
            };
            caught.push((seed, kind));
        }
    }
    println!(
        "{name}: caught by {} of {seeds} seeds; first: {:?}",
        caught.len(),
        &caught[..caught.len().min(12)]
    );
}
