//! Architecture rules that must hold for every commit.
//!
//! The Raft core (`raftkit/src/core/`) is a pure, deterministic state
//! machine: no async runtime, no clock, no file system, no network, no
//! threads, no unseeded randomness. This test scans every file under it
//! (tests included) and fails on any mention of the forbidden names.

use std::path::{Path, PathBuf};

/// Names the core must not mention. A match must stand alone: the
/// characters around it may not continue an identifier (`Instant` matches
/// `Instant::now`, not `Instantiate`; `std::time` matches `std::time::`,
/// not `std::timeout`).
const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio", "an async runtime"),
    ("std::time", "a clock"),
    ("std::fs", "the file system"),
    ("std::net", "the network"),
    ("std::thread", "threads"),
    ("Instant", "a clock"),
    ("SystemTime", "a clock"),
    ("thread_rng", "unseeded randomness"),
];

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The byte offsets where `name` occurs in `line` as a whole name.
fn mentions(line: &str, name: &str) -> Vec<usize> {
    line.match_indices(name)
        .filter(|&(at, _)| {
            let before = line[..at].chars().next_back();
            let after = line[at + name.len()..].chars().next();
            !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
        })
        .map(|(at, _)| at)
        .collect()
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn core_does_no_io_reads_no_clock_and_spawns_no_thread() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let core = root.join("raftkit/src/core");
    let mut files = Vec::new();
    files_under(&core, &mut files);
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("raft.rs")),
        "no core sources found under {}",
        core.display()
    );

    let mut violations = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let shown = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        for (n, line) in text.lines().enumerate() {
            for &(name, what) in FORBIDDEN {
                for at in mentions(line, name) {
                    violations.push(format!(
                        "{shown}:{}:{}: mentions `{name}` ({what}); the core must stay pure and deterministic: {}",
                        n + 1,
                        at + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "{} layering violation(s) in raftkit/src/core/:\n{}",
        violations.len(),
        violations.join("\n")
    );
}

#[test]
fn the_scanner_finds_whole_names_only() {
    assert_eq!(mentions("use std::time::Instant;", "std::time"), [4]);
    assert_eq!(mentions("use std::time::Instant;", "Instant"), [15]);
    assert_eq!(mentions("let t = Instant::now();", "Instant"), [8]);
    assert!(mentions("fn instantiate() {} // Instantiated", "Instant").is_empty());
    assert!(mentions("let std::timeout = 1;", "std::time").is_empty());
    assert_eq!(mentions("tokio::spawn(x)", "tokio"), [0]);
    assert_eq!(mentions("rand::thread_rng()", "thread_rng"), [6]);
    assert!(mentions("my_tokio_like", "tokio").is_empty());
}
