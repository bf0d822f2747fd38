//! The test scaffolding's own process handling ([`support::run_within`],
//! which every `kv` command of the other tests runs through).

mod support;
use std::process::Command;
use std::time::{Duration, Instant};

use support::run_within;

/// More than a Linux pipe holds (64 KiB), on each of stdout and stderr.
const BIG: usize = 200_000;

/// Stop 53: `kv_within` read the child's stdout and stderr only after it
/// exited, so a command that wrote more than a pipe holds blocked on its
/// write, never exited, and was killed at the limit (`code: None`, its
/// output cut). Now both pipes are read while it runs: it ends at once,
/// with all of its output.
#[cfg(unix)]
#[test]
fn a_command_that_writes_more_than_a_pipe_holds_ends_with_all_its_output() {
    const LIMIT: Duration = Duration::from_secs(20);
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!("yes e | head -c {BIG} >&2; yes o | head -c {BIG}"),
    ]);
    let start = Instant::now();
    let out = run_within(cmd, LIMIT);
    let took = start.elapsed();
    assert_eq!(out.code, Some(0), "killed at the limit after {took:?}");
    // Not `assert_eq!` on the strings: 200 kB of them in a message.
    assert!(
        out.stdout == "o\n".repeat(BIG / 2),
        "stdout: {} bytes",
        out.stdout.len()
    );
    assert!(
        out.stderr == "e\n".repeat(BIG / 2),
        "stderr: {} bytes",
        out.stderr.len()
    );
}
