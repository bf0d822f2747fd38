//! A latency probe for one write's path through a cluster (hidden; for the
//! benchmarks): named timestamps taken at each hop, from the client's
//! request frame to its answer, and a per-hop breakdown of the medians.
//!
//! Compiled in only with the `latency-probe` feature; without it
//! [`mark`](crate::probe::mark) is an empty inline function and nothing is recorded. With it,
//! marks are recorded only while [`enable`](crate::probe::enable)d (one global buffer behind a
//! mutex: a few hundred nanoseconds per mark, meant for one client's
//! writes, not for throughput runs).
//!
//! `RAFTKIT_PROBE=1 cargo bench --bench cluster --features latency-probe`
//! (with `RAFTKIT_BENCH_ONLY=durable RAFTKIT_BENCH_CLIENTS=1
//! RAFTKIT_BENCH_OPS=put`) prints the breakdown of the 1-client durable put
//! cell. The three peers run in one process, so one buffer sees every hop.
//!
//! Labels: `c.*` the client, `s.*` the leader's client service, `n.cmd` the
//! leader's node task taking the write, `L.*` / `F.*` the leader / a
//! follower (`ae_send` AppendEntries with entries handed to the transport,
//! `persist_q` a write handed to the storage thread, `st_begin` the storage
//! thread starting it, `durable` its sync returned, `on_persisted` the node
//! task taking the completion, `step_*` the node task stepping a message,
//! `apply_q` committed entries handed to the apply thread), `t.*` the peer
//! links (`*_write` written to the QUIC stream, `*_in` read from it), `st.*`
//! any storage thread's sync, `a.*` an apply thread. With
//! `RAFTKIT_PROBE_DUMP=FILE` the report also writes every write's marks to
//! `FILE`, one write a line (`label@µs` from its `c.send`).
//!
//! Invariant: a mark never changes what the runtime does; only the storage
//! thread's `st_begin` mark (a closure queued before the write, with the
//! feature on) adds work, one no-op request per write.

/// Records that the current write reached `label` (nothing unless the
/// `latency-probe` feature is on and the probe [`enable`]d).
#[inline(always)]
pub fn mark(label: &'static str) {
    #[cfg(feature = "latency-probe")]
    imp::mark(label);
    #[cfg(not(feature = "latency-probe"))]
    let _ = label;
}

/// Starts (`true`) or stops recording marks.
pub fn enable(on: bool) {
    #[cfg(feature = "latency-probe")]
    imp::ON.store(on, std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(feature = "latency-probe"))]
    let _ = on;
}

/// Whether the probe is compiled in (the `latency-probe` feature).
pub fn compiled_in() -> bool {
    cfg!(feature = "latency-probe")
}

/// Takes the marks recorded so far and returns the breakdown: writes are
/// delimited by `c.send` marks (one client: one write in flight), each
/// label's first mark in a write is taken as its offset from `c.send`, and
/// every label is printed with the median of its offsets (µs), sorted, with
/// the step from the previous line. Then four writes around the median
/// latency, mark by mark. Empty without the feature.
pub fn report() -> String {
    #[cfg(feature = "latency-probe")]
    return imp::report();
    #[cfg(not(feature = "latency-probe"))]
    String::new()
}

#[cfg(feature = "latency-probe")]
mod imp {
    use std::collections::{BTreeMap, HashSet};
    use std::fmt::Write as _;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    pub(super) static ON: AtomicBool = AtomicBool::new(false);
    static MARKS: Mutex<Vec<(&'static str, Instant)>> = Mutex::new(Vec::new());

    pub(super) fn mark(label: &'static str) {
        if ON.load(Ordering::Relaxed) {
            let now = Instant::now();
            if let Ok(mut marks) = MARKS.lock() {
                marks.push((label, now));
            }
        }
    }

    type Write = Vec<(&'static str, Instant)>;

    fn latency(w: &Write) -> f64 {
        match (w.first(), w.iter().find(|m| m.0 == "c.recv")) {
            (Some(first), Some(last)) => last.1.duration_since(first.1).as_secs_f64() * 1e6,
            _ => f64::MAX,
        }
    }

    pub(super) fn report() -> String {
        let marks = MARKS
            .lock()
            .map(|mut m| std::mem::take(&mut *m))
            .unwrap_or_default();
        let mut writes: Vec<Write> = Vec::new();
        for m in marks {
            if m.0 == "c.send" {
                writes.push(vec![m]);
            } else if let Some(w) = writes.last_mut() {
                w.push(m);
            }
        }
        writes.retain(|w| w.iter().any(|m| m.0 == "c.recv"));
        let mut offsets: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
        for w in &writes {
            let Some(&(_, t0)) = w.first() else { continue };
            let mut seen = HashSet::new();
            for &(label, at) in w {
                if seen.insert(label) {
                    let us = at.duration_since(t0).as_secs_f64() * 1e6;
                    offsets.entry(label).or_default().push(us);
                }
                if label == "c.recv" {
                    break;
                }
            }
        }
        let mut medians: Vec<(&'static str, f64, usize)> = offsets
            .into_iter()
            .map(|(label, mut v)| {
                v.sort_by(f64::total_cmp);
                (label, v.get(v.len() / 2).copied().unwrap_or(0.0), v.len())
            })
            .collect();
        medians.sort_by(|a, b| a.1.total_cmp(&b.1));
        let mut out = String::new();
        let _ = writeln!(out, "latency probe: {} writes", writes.len());
        let _ = writeln!(out, "| hop | median µs from c.send | step µs | writes |");
        let _ = writeln!(out, "|---|--:|--:|--:|");
        let mut prev = 0.0;
        for (label, median, n) in medians {
            let _ = writeln!(
                out,
                "| {label} | {median:.1} | {:.1} | {n} |",
                median - prev
            );
            prev = median;
        }
        critical_path(&writes, &mut out);
        // Every write, mark by mark, to a file for offline analysis.
        if let Some(path) = std::env::var_os("RAFTKIT_PROBE_DUMP") {
            let mut all = String::new();
            for w in &writes {
                let Some(&(_, t0)) = w.first() else { continue };
                for (label, at) in w {
                    let _ = write!(
                        all,
                        "{label}@{:.1} ",
                        at.duration_since(t0).as_secs_f64() * 1e6
                    );
                }
                all.push('\n');
            }
            if let Err(e) = std::fs::write(&path, all) {
                let _ = writeln!(out, "RAFTKIT_PROBE_DUMP: {e}");
            }
        }
        writes.sort_by(|a, b| latency(a).total_cmp(&latency(b)));
        let mid = writes.len() / 2;
        for w in writes.iter().skip(mid.saturating_sub(2)).take(4) {
            let Some(&(_, t0)) = w.first() else { continue };
            let line: Vec<String> = w
                .iter()
                .map(|(label, at)| {
                    format!("{label}@{:.0}", at.duration_since(t0).as_secs_f64() * 1e6)
                })
                .collect();
            let _ = writeln!(out, "write: {}", line.join(" "));
        }
        out
    }

    /// The offset (µs) of the first `label` at or after `after` in `w`.
    fn first(w: &Write, t0: Instant, label: &str, after: f64) -> Option<f64> {
        w.iter()
            .map(|&(l, at)| (l, at.duration_since(t0).as_secs_f64() * 1e6))
            .find(|&(l, us)| l == label && us >= after)
            .map(|(_, us)| us)
    }

    /// The offset (µs) of the last `label` at or before `before` in `w`.
    fn last_before(w: &Write, t0: Instant, label: &str, before: f64) -> Option<f64> {
        w.iter()
            .map(|&(l, at)| (l, at.duration_since(t0).as_secs_f64() * 1e6))
            .filter(|&(l, us)| l == label && us <= before)
            .map(|(_, us)| us)
            .next_back()
    }

    /// Per write, the segments of the path that decided its latency, each
    /// measured within that write (so that the medians of the steps do not
    /// mix hops of different writes, as the table of first marks does): the
    /// client's request to the leader, the leader's command hop, the
    /// appends leaving, the first follower's storage round (hand-off,
    /// sync, acknowledgement leaving), the acknowledgement's way back, the
    /// commit (counting whether an acknowledgement or the leader's own
    /// sync completed the quorum) and the answer's way to the client. The
    /// leader's own storage round is shown beside it.
    fn critical_path(writes: &[Write], out: &mut String) {
        const SEGMENTS: [(&str, &str, &str); 17] = [
            ("client -> leader's service", "c.send", "s.frame_in"),
            ("service -> node task", "s.frame_in", "n.cmd"),
            ("node task -> appends queued", "n.cmd", "L.ae_send"),
            ("appends -> link writer", "L.ae_send", "t.AE_write"),
            ("append on the wire (first)", "t.AE_write", "t.AE_in"),
            ("follower: link -> storage queue", "t.AE_in", "F.persist_q"),
            ("follower: storage thread wake", "F.persist_q", "F.st_begin"),
            ("follower: write + sync (first)", "F.st_begin", "F.durable"),
            ("follower: synced -> ack writer", "F.durable", "t.AER_write"),
            ("ack on the wire", "t.AER_write", "t.AER_in"),
            ("leader: ack read -> stepped", "t.AER_in", "L.step_aer"),
            ("leader: storage thread wake", "L.persist_q", "L.st_begin"),
            ("leader: write + sync", "L.st_begin", "L.durable"),
            ("leader: synced -> node task", "L.durable", "L.on_persisted"),
            ("answer: commit -> reply", "L.apply_q", "a.reply"),
            ("answer: reply -> service writer", "a.reply", "s.write"),
            ("answer: on the wire -> client", "s.write", "c.recv"),
        ];
        let mut segs: Vec<Vec<f64>> = vec![Vec::new(); SEGMENTS.len()];
        let mut trigger = Vec::new();
        let (mut by_ack, mut by_own) = (0usize, 0usize);
        for w in writes {
            let Some(&(_, t0)) = w.first() else { continue };
            // Each segment starts at the first mark of its start label and
            // ends at the first mark of its end label after it.
            for (i, (_, from, to)) in SEGMENTS.iter().enumerate() {
                if let Some(a) = first(w, t0, from, 0.0)
                    && let Some(b) = first(w, t0, to, a)
                {
                    segs[i].push(b - a);
                }
            }
            let Some(commit) = first(w, t0, "L.apply_q", 0.0) else {
                continue;
            };
            let ack = last_before(w, t0, "L.step_aer", commit);
            let own = last_before(w, t0, "L.on_persisted", commit);
            let last = match (ack, own) {
                (Some(a), Some(o)) if o > a => {
                    by_own += 1;
                    o
                }
                (Some(a), _) => {
                    by_ack += 1;
                    a
                }
                (None, Some(o)) => {
                    by_own += 1;
                    o
                }
                (None, None) => continue,
            };
            trigger.push(commit - last);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        let _ = writeln!(
            out,
            "critical path (per write, then medians): quorum completed by an acknowledgement {by_ack}, by the leader's own sync {by_own}"
        );
        let _ = writeln!(out, "| segment | from | to | median µs | writes |");
        let _ = writeln!(out, "|---|---|---|--:|--:|");
        for ((what, from, to), v) in SEGMENTS.iter().zip(segs.iter_mut()) {
            let n = v.len();
            let _ = writeln!(out, "| {what} | {from} | {to} | {:.1} | {n} |", median(v));
        }
        let n = trigger.len();
        let _ = writeln!(
            out,
            "| commit: quorum's last input -> apply queued | L.step_aer / L.on_persisted | L.apply_q | {:.1} | {n} |",
            median(&mut trigger)
        );
    }
}
