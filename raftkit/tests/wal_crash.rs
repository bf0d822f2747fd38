//! Crash tests of the write-ahead log with real files and real processes.
//!
//! - `sigkill_at_random_moments_loses_nothing_durable`: this test binary
//!   re-executes itself (`current_exe()` with `--exact crash_child`) as a
//!   child that runs a seeded workload on a `Wal` and prints `DURABLE <n>`
//!   after the n-th sync returned. The parent SIGKILLs it after a seeded
//!   number of reports, reopens the log, and checks that it equals exactly
//!   the state after sync `n` or `n + 1` (the child may have finished one
//!   more sync without reporting it), by replaying the same seeded workload
//!   on a `MemLogStore`. Several rounds run on the same directory, each
//!   recovering from the previous crash.
//! - `flipped_bits_are_detected` / `truncated_files_are_detected`: seeded
//!   damage to a log built the same way; every outcome is checked against the
//!   frame the damage hit (or, in the last segment's preallocated zeros,
//!   against the end of its content: damage within the 12 bytes of the next
//!   frame's header is a header torn there, a torn tail; further on it is
//!   corruption).
//! - `appends_stay_inside_the_preallocated_zeros` and
//!   `a_torn_frame_in_the_preallocated_zeros_is_zeroed`: the active segment
//!   is zeroed ahead of its content, so syncs do not change its size; sealed
//!   segments carry no zeros; a torn frame inside the zeros is dropped, and
//!   a later shorter frame does not leave its bytes behind.
//!
//! Seeds: `RAFTKIT_WAL_CRASH_SEED_BASE` (default fixed) and
//! `RAFTKIT_WAL_CRASH_ROUNDS` / `RAFTKIT_WAL_DAMAGE_TRIALS` for longer runs.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use raftkit::core::types::{Entry, Payload};
use raftkit::storage::{LogStore, MemLogStore, StorageError, Wal, WalOptions};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const CHILD_DIR: &str = "RAFTKIT_WAL_CRASH_DIR";
const CHILD_SEED: &str = "RAFTKIT_WAL_CRASH_CHILD_SEED";
const SEGMENT_SIZE: u64 = 16 * 1024;
const SEGMENT_HEADER: usize = 16;
const FRAME_HEADER: usize = 12;

fn opts() -> WalOptions {
    WalOptions {
        segment_size: SEGMENT_SIZE,
    }
}

/// Smaller segments for the damage tests, so that a short log spans many.
fn small_opts() -> WalOptions {
    WalOptions {
        segment_size: 3 * 1024,
    }
}

/// Held around opening a log, and from spawning a child until the child has
/// printed its first line. A child forked while a log is open shares that
/// log's `flock` until its `exec` has closed the inherited descriptors, which
/// the kernel finishes only after `spawn` has returned; the child's first
/// output proves it is done. Without this, a test reopening a log while
/// another test spawns could find it still locked.
static SPAWN_OR_OPEN: Mutex<()> = Mutex::new(());

fn open_wal(dir: &Path, opts: WalOptions) -> Result<Wal, StorageError> {
    let _guard = SPAWN_OR_OPEN.lock().unwrap_or_else(|e| e.into_inner());
    Wal::open(dir, opts)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One step of the workload: a few mutations (sometimes a new term that
/// overwrites a suffix, a compaction, a truncation, a commit), an append,
/// then exactly one sync. Deterministic given the store's state and `rng`.
fn step<S: LogStore>(s: &mut S, rng: &mut StdRng) -> Result<(), StorageError> {
    let mut hs = s.hard_state();
    if hs.term == 0 {
        hs.term = 1;
        hs.vote = 1;
        s.save_hard_state(hs)?;
    }
    let first = s.first_index();
    let last = s.last_index();
    let mut next = last + 1;
    let dice = rng.random_range(0..100);
    if dice < 8 {
        hs.term += 1;
        hs.vote = rng.random_range(1..4);
        s.save_hard_state(hs)?;
        next = last.saturating_sub(rng.random_range(0..4)).max(first);
    } else if dice < 14 && last >= first + 30 {
        let upto = last - rng.random_range(5..30);
        let term = s.term(upto)?.unwrap_or(hs.term);
        s.compact_prefix(upto, term)?;
    } else if dice < 18 && last > first {
        let from = last - rng.random_range(0..(last - first).min(3));
        s.truncate_suffix(from)?;
        next = s.last_index() + 1;
    } else if dice < 25 {
        hs.commit = last;
        s.save_hard_state(hs)?;
    }
    let n = rng.random_range(1..8);
    let mut entries = Vec::with_capacity(n as usize);
    for k in 0..n {
        let len = if rng.random_range(0..10) == 0 {
            rng.random_range(0..4000)
        } else {
            rng.random_range(0..200)
        };
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        entries.push(Entry {
            term: hs.term,
            index: next + k,
            payload: Payload::Command(data.into()),
        });
    }
    s.append(&entries)?;
    s.sync()
}

/// Compares a store with the model; `Err` describes the first difference.
fn compare(got: &impl LogStore, want: &impl LogStore) -> Result<(), String> {
    let (gf, gl) = (got.first_index(), got.last_index());
    let (wf, wl) = (want.first_index(), want.last_index());
    if (gf, gl) != (wf, wl) {
        return Err(format!("log spans {gf}..={gl}, expected {wf}..={wl}"));
    }
    let boundary = |r: Result<Option<u64>, StorageError>| r.map_err(|e| e.to_string());
    if boundary(got.term(gf - 1))? != boundary(want.term(wf - 1))? {
        return Err("boundary term differs".into());
    }
    if got.hard_state() != want.hard_state() {
        return Err(format!(
            "hard state {:?}, expected {:?}",
            got.hard_state(),
            want.hard_state()
        ));
    }
    let g = got.entries(gf, gl + 1).map_err(|e| e.to_string())?;
    let w = want.entries(wf, wl + 1).map_err(|e| e.to_string())?;
    if let Some(i) = (0..g.len()).find(|&i| g[i] != w[i]) {
        return Err(format!("entry {} differs", g[i].index));
    }
    Ok(())
}

/// Copies the logical state of a store into a model.
fn model_of(s: &impl LogStore) -> MemLogStore {
    let mut m = MemLogStore::new();
    let first = s.first_index();
    let boundary = s.term(first - 1).ok().flatten().unwrap_or(0);
    m.compact_prefix(first - 1, boundary).unwrap();
    m.append(&s.entries(first, s.last_index() + 1).unwrap())
        .unwrap();
    m.save_hard_state(s.hard_state()).unwrap();
    m
}

/// The `[start, end)` byte ranges of the frames of a segment file, parsed
/// from the documented format; stops at the first frame that does not fit
/// and at a zero length (the preallocated zeros after the content).
fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = SEGMENT_HEADER;
    while let Some(h) = bytes.get(pos..pos + 4) {
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        if len == 0 {
            break;
        }
        let end = pos + FRAME_HEADER + len;
        if end > bytes.len() {
            break;
        }
        out.push((pos, end));
        pos = end;
    }
    out
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

/// The child role: runs the workload until killed, reporting each durable
/// sync on stdout. Does nothing in an ordinary test run.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let seed = env_u64(CHILD_SEED, 0);
    let mut wal = open_wal(Path::new(&dir), opts()).expect("child: open");
    let mut rng = StdRng::seed_from_u64(seed);
    let stdout = std::io::stdout();
    for n in 1..=10_000_000u64 {
        step(&mut wal, &mut rng).expect("child: step");
        let mut out = stdout.lock();
        writeln!(out, "\nDURABLE {n}").expect("child: stdout");
        out.flush().expect("child: stdout");
    }
}

fn parse_report(line: &str) -> Option<u64> {
    let at = line.find("DURABLE ")?;
    line[at + 8..].trim().parse().ok()
}

#[test]
fn sigkill_at_random_moments_loses_nothing_durable() {
    if std::env::var(CHILD_DIR).is_ok() {
        return;
    }
    let rounds = env_u64("RAFTKIT_WAL_CRASH_ROUNDS", 24);
    let mut rng = StdRng::seed_from_u64(env_u64("RAFTKIT_WAL_CRASH_SEED_BASE", 0x5eed_0001));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let exe = std::env::current_exe().unwrap();
    let mut model = MemLogStore::new();
    let mut unreported_syncs = 0;
    let mut torn_tails = 0;
    for round in 0..rounds {
        let child_seed: u64 = rng.random();
        let kill_after = rng.random_range(1..120u64);
        let guard = SPAWN_OR_OPEN.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, &dir)
            .env(CHILD_SEED, child_seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // 0 for any other line: the child is alive and has exec'd.
                if tx.send(parse_report(&line).unwrap_or(0)).is_err() {
                    break;
                }
            }
        });
        let mut reported = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(n) => n,
            Err(e) => panic!("round {round}: child printed nothing: {e:?}"),
        };
        drop(guard);
        while reported < kill_after {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(n) => reported = n,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    panic!("round {round}: child reported nothing for 120 s");
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("round {round}: child exited early: {:?}", child.wait());
                }
            }
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        // Reports printed before death count too.
        for n in rx.iter() {
            reported = reported.max(n);
        }
        reader.join().unwrap();

        let before = std::fs::read(segments(&dir).pop().unwrap()).unwrap();
        let wal = open_wal(&dir, opts())
            .unwrap_or_else(|e| panic!("round {round}: reopen after SIGKILL failed: {e}"));
        // The torn tail (if any) is gone: the last segment is whole frames,
        // then nothing but the preallocated zeros.
        let last_seg = segments(&dir).pop().unwrap();
        let bytes = std::fs::read(&last_seg).unwrap();
        let content_end = frames(&bytes).last().map_or(SEGMENT_HEADER, |f| f.1);
        assert!(
            bytes[content_end..].iter().all(|&b| b == 0),
            "round {round}: trailing bytes after the last frame"
        );
        if bytes != before {
            torn_tails += 1;
        }
        let mut crng = StdRng::seed_from_u64(child_seed);
        let mut m = model.clone();
        for _ in 0..reported {
            step(&mut m, &mut crng).unwrap();
        }
        match compare(&wal, &m) {
            Ok(()) => {}
            Err(at_reported) => {
                step(&mut m, &mut crng).unwrap();
                if let Err(at_next) = compare(&wal, &m) {
                    panic!(
                        "round {round}: recovered log is neither the state after sync \
                         {reported} ({at_reported}) nor after sync {} ({at_next})",
                        reported + 1
                    );
                }
                unreported_syncs += 1;
            }
        }
        eprintln!(
            "round {round}: killed after {reported} reported syncs; recovered {}..={}",
            wal.first_index(),
            wal.last_index()
        );
        model = model_of(&wal);
    }
    eprintln!(
        "{rounds} rounds; {torn_tails} torn tails cut; {unreported_syncs} kills landed \
         between a sync and its report"
    );
}

/// Builds a log of `steps` syncs in `dir`; returns the model state after
/// each step (index 0: before any).
fn build(dir: &Path, steps: usize, seed: u64) -> Vec<MemLogStore> {
    let mut wal = open_wal(dir, small_opts()).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut states = vec![model_of(&wal)];
    for _ in 0..steps {
        step(&mut wal, &mut rng).unwrap();
        states.push(model_of(&wal));
    }
    states
}

fn copy_log(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for seg in segments(from) {
        std::fs::copy(&seg, to.join(seg.file_name().unwrap())).unwrap();
    }
}

/// Which frame of the last segment each step wrote: the last segment holds
/// the checkpoint frame, then the frames of the last `k` steps.
fn first_step_in_last_segment(steps: usize, last_seg_frames: usize) -> usize {
    steps - (last_seg_frames - 1)
}

fn expect_corrupt(result: Result<Wal, StorageError>, file: &Path, offsets: &[usize], what: &str) {
    match result {
        Err(StorageError::Corrupt {
            file: f,
            offset,
            reason,
        }) => {
            assert_eq!(f, file, "{what}: wrong file ({reason})");
            assert!(
                offsets.contains(&(offset as usize)),
                "{what}: offset {offset} not in {offsets:?} ({reason})"
            );
        }
        Err(e) => panic!("{what}: expected Corrupt, got {e}"),
        Ok(w) => panic!(
            "{what}: expected Corrupt, but the log opened ({}..={})",
            w.first_index(),
            w.last_index()
        ),
    }
}

#[test]
fn flipped_bits_are_detected() {
    let trials = env_u64("RAFTKIT_WAL_DAMAGE_TRIALS", 150);
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let steps = 150;
    let states = build(&base, steps, 0xf11b);
    let segs = segments(&base);
    assert!(segs.len() >= 4, "want several segments, got {}", segs.len());
    eprintln!("damage tests on {} segments", segs.len());
    let mut rng = StdRng::seed_from_u64(env_u64("RAFTKIT_WAL_CRASH_SEED_BASE", 0x5eed_0002));
    let (mut tolerated, mut detected) = (0, 0);
    for trial in 0..trials {
        let k = rng.random_range(0..segs.len());
        let is_last = k + 1 == segs.len();
        let mut bytes = std::fs::read(&segs[k]).unwrap();
        let fr = frames(&bytes);
        let at = rng.random_range(0..bytes.len());
        bytes[at] ^= 1 << rng.random_range(0..8);
        let copy = tmp.path().join(format!("flip{trial}"));
        copy_log(&base, &copy);
        let file = copy.join(segs[k].file_name().unwrap());
        std::fs::write(&file, &bytes).unwrap();
        let what = format!("trial {trial}: bit flip in {} at {at}", file.display());
        let result = open_wal(&copy, small_opts());
        if at < SEGMENT_HEADER {
            expect_corrupt(result, &file, &[0, 8], &what);
            detected += 1;
            continue;
        }
        let content_end = fr.last().map_or(SEGMENT_HEADER, |f| f.1);
        if at >= content_end {
            // Only the active segment has zeros after its content.
            assert!(
                is_last,
                "{what}: a sealed segment has no preallocated zeros"
            );
            if at < content_end + FRAME_HEADER {
                // A bit set in the next frame's header position alone: the
                // state a write torn inside that header leaves (no frame
                // there was synced), dropped as a torn tail.
                let w = result.unwrap_or_else(|e| panic!("{what}: a torn header must open: {e}"));
                compare(&w, &states[steps]).unwrap_or_else(|e| panic!("{what}: {e}"));
                tolerated += 1;
                std::fs::remove_dir_all(&copy).unwrap();
                continue;
            }
            // Further on, a bit set in the zeros with no frame header
            // after the end: the state a write whose header sector was
            // lost leaves (no frame there was synced, or its header would
            // be), dropped as a torn tail too.
            let w = result.unwrap_or_else(|e| panic!("{what}: a torn write must open: {e}"));
            compare(&w, &states[steps]).unwrap_or_else(|e| panic!("{what}: {e}"));
            tolerated += 1;
            std::fs::remove_dir_all(&copy).unwrap();
            continue;
        }
        let (fi, &(start, _)) = fr
            .iter()
            .enumerate()
            .find(|(_, f)| f.0 <= at && at < f.1)
            .unwrap();
        if is_last && fi + 1 == fr.len() {
            // The last frame of the log: cut off as a torn tail, or (if the
            // flip hit its length) refused. Never anything else.
            match result {
                Ok(w) => {
                    compare(&w, &states[steps - 1]).unwrap_or_else(|e| panic!("{what}: {e}"));
                    tolerated += 1;
                }
                r => {
                    expect_corrupt(r, &file, &[start], &what);
                    detected += 1;
                }
            }
        } else {
            expect_corrupt(result, &file, &[start], &what);
            detected += 1;
        }
        std::fs::remove_dir_all(&copy).unwrap();
    }
    eprintln!("{trials} flips: {detected} refused as corrupt, {tolerated} cut as a torn tail");
}

#[test]
fn truncated_files_are_detected() {
    let trials = env_u64("RAFTKIT_WAL_DAMAGE_TRIALS", 150);
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let steps = 150;
    let states = build(&base, steps, 0x7a11);
    let segs = segments(&base);
    assert!(segs.len() >= 4, "want several segments, got {}", segs.len());
    eprintln!("damage tests on {} segments", segs.len());
    let mut rng = StdRng::seed_from_u64(env_u64("RAFTKIT_WAL_CRASH_SEED_BASE", 0x5eed_0003));
    for trial in 0..trials {
        // Half the trials cut the last segment (a torn tail), half another.
        let k = if trial % 2 == 0 {
            segs.len() - 1
        } else {
            rng.random_range(0..segs.len() - 1)
        };
        let is_last = k + 1 == segs.len();
        let bytes = std::fs::read(&segs[k]).unwrap();
        let fr = frames(&bytes);
        let cut = rng.random_range(0..bytes.len());
        let copy = tmp.path().join(format!("cut{trial}"));
        copy_log(&base, &copy);
        let file = copy.join(segs[k].file_name().unwrap());
        std::fs::write(&file, &bytes[..cut]).unwrap();
        let what = format!("trial {trial}: {} cut at {cut}", file.display());
        let result = open_wal(&copy, small_opts());
        if cut < SEGMENT_HEADER {
            expect_corrupt(result, &file, &[0], &what);
        } else if is_last {
            let whole = fr.iter().filter(|f| f.1 <= cut).count();
            let s0 = first_step_in_last_segment(steps, fr.len());
            let expected = if whole == 0 { s0 } else { s0 + whole - 1 };
            let w = result.unwrap_or_else(|e| panic!("{what}: a torn tail must open: {e}"));
            compare(&w, &states[expected]).unwrap_or_else(|e| panic!("{what}: {e}"));
            drop(w);
            // The repaired log reopens identically.
            let w = open_wal(&copy, small_opts()).unwrap();
            compare(&w, &states[expected]).unwrap_or_else(|e| panic!("{what}, reopened: {e}"));
        } else {
            // A sealed segment lost bytes: inside a frame, at that frame's
            // start; exactly at a frame boundary, at the cut.
            let start = fr
                .iter()
                .find(|f| f.0 <= cut && cut < f.1)
                .map_or(cut, |f| f.0);
            expect_corrupt(result, &file, &[start, cut], &what);
        }
        std::fs::remove_dir_all(&copy).unwrap();
    }
}

/// The file size of each segment and the end of its content.
fn sizes_and_content(dir: &Path) -> Vec<(usize, usize)> {
    segments(dir)
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).unwrap();
            let end = frames(&bytes).last().map_or(SEGMENT_HEADER, |f| f.1);
            (bytes.len(), end)
        })
        .collect()
}

#[test]
fn appends_stay_inside_the_preallocated_zeros() {
    // Default segments: one 256 KiB step holds every sync below.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut wal = open_wal(&dir, WalOptions::default()).unwrap();
    let mut size = None;
    for i in 1..=100u64 {
        wal.append(&[Entry {
            term: 1,
            index: i,
            payload: Payload::Command(vec![i as u8; 100].into()),
        }])
        .unwrap();
        wal.sync().unwrap();
        let got = sizes_and_content(&dir);
        assert_eq!(got.len(), 1);
        let (len, end) = got[0];
        assert!(
            len > end,
            "sync {i}: no zeros after the content ({len} bytes)"
        );
        assert_eq!(
            *size.get_or_insert(len),
            len,
            "sync {i}: the file size changed"
        );
    }
    drop(wal);
    let wal = open_wal(&dir, WalOptions::default()).unwrap();
    assert_eq!(wal.last_index(), 100);
    assert_eq!(
        sizes_and_content(&dir)[0].0,
        size.unwrap(),
        "open keeps the zeros"
    );
    drop(wal);

    // Small segments: every sealed one is exactly its content; the active
    // one is zeroed ahead (its step is the segment size).
    let dir = tmp.path().join("small");
    build(&dir, 60, 0x5ea1);
    let got = sizes_and_content(&dir);
    assert!(got.len() >= 3, "want several segments, got {got:?}");
    let (active, sealed) = got.split_last().unwrap();
    for (i, (len, end)) in sealed.iter().enumerate() {
        assert_eq!(len, end, "sealed segment {i} has bytes after its content");
    }
    assert!(
        active.0 > active.1,
        "the active segment is preallocated: {active:?}"
    );
    assert_eq!(active.0 as u64 % small_opts().segment_size, 0);
}

#[test]
fn a_torn_frame_in_the_preallocated_zeros_is_zeroed() {
    let tmp = tempfile::tempdir().unwrap();
    let entry = |index: u64, len: usize| Entry {
        term: 1,
        index,
        payload: Payload::Command(vec![index as u8 | 1; len].into()),
    };
    // A long frame to tear: 20 entries of 200 bytes, from a log of its own.
    let donor = tmp.path().join("donor");
    let mut wal = open_wal(&donor, WalOptions::default()).unwrap();
    wal.append(&(1..=20).map(|i| entry(i, 200)).collect::<Vec<_>>())
        .unwrap();
    wal.sync().unwrap();
    drop(wal);
    let bytes = std::fs::read(&segments(&donor)[0]).unwrap();
    let &(start, end) = frames(&bytes).last().unwrap();
    let long = &bytes[start..end];

    let dir = tmp.path().join("wal");
    let mut wal = open_wal(&dir, WalOptions::default()).unwrap();
    for i in 1..=5 {
        wal.append(&[entry(i, 50)]).unwrap();
        wal.sync().unwrap();
    }
    drop(wal);
    let seg = segments(&dir)[0].clone();
    let (size, content) = sizes_and_content(&dir)[0];
    assert!(size > content + long.len(), "the zeros hold the torn frame");
    // The crash: the header and the first 80 % of the frame reached the
    // disk, the rest of it did not (still zeros).
    let torn = &long[..long.len() * 4 / 5];
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, torn, content as u64).unwrap();
    drop(f);

    let mut wal = open_wal(&dir, WalOptions::default()).unwrap();
    assert_eq!(wal.last_index(), 5, "the torn frame is dropped");
    let after = std::fs::read(&seg).unwrap();
    assert_eq!(
        after.len(),
        size,
        "repaired in place: the file keeps its size"
    );
    assert!(
        after[content..].iter().all(|&b| b == 0),
        "the torn bytes are zeroed"
    );
    // A shorter frame where the torn one was: nothing of it may remain
    // behind the new frame, or the next open would find it.
    wal.append(&[entry(6, 10)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let wal = open_wal(&dir, WalOptions::default())
        .unwrap_or_else(|e| panic!("the torn frame's bytes survived the repair: {e}"));
    assert_eq!(wal.last_index(), 6);
    assert_eq!(wal.entries(6, 7).unwrap(), vec![entry(6, 10)]);
}
