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
//! any storage thread's sync, `a.*` an apply thread.
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
}
