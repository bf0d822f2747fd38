//! Process scaffolding shared by the `kv` command-line tests (`cli.rs`,
//! `shards.rs`, `shards_faults.rs`, `watch.rs`, `process.rs`): the `kv`
//! binary, its servers as child processes killed and reaped however a test
//! ends ([`Procs`]), one command run under a deadline ([`kv`],
//! [`run_within`]: its output read while it runs) and free loopback
//! addresses.
//!
//! Each test file is its own crate and uses part of this module.
#![allow(dead_code)]

#[path = "../../../../raftkit/tests/support/ports.rs"]
mod ports;
pub mod sharded;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `kv` binary under test.
pub const KV: &str = env!("CARGO_BIN_EXE_kv");
/// The Raft tick of the servers the test starts (elections after 250-500 ms).
pub const TICK_MS: &str = "25";
/// How long any one condition may take to become true.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The servers: killed (SIGKILL) and reaped on drop.
#[derive(Default)]
pub struct Procs {
    children: HashMap<String, Child>,
}

impl Procs {
    /// Starts `kv serve ARGS` known as `key`, its output in `log`.
    pub fn serve(&mut self, key: &str, args: &[&str], log: &Path) {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = kv_command()
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("kv serve starts");
        self.children.insert(key.to_string(), child);
    }

    /// `kill -9` of the server known as `key`.
    pub fn kill9(&mut self, key: &str) {
        if let Some(mut child) = self.children.remove(key) {
            let _ = child.kill(); // SIGKILL on Unix
            let _ = child.wait();
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, mut child) in self.children.drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `kv` with none of the environment variables it reads.
pub fn kv_command() -> Command {
    let mut c = Command::new(KV);
    c.env_remove("KV_CLUSTER")
        .env_remove("RAFTKIT_CERTS")
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE");
    c
}

/// What a finished command left.
#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `kv ARGS` with `env` and waits (at most 60 s) for it.
pub fn kv(args: &[&str], env: &[(&str, &str)]) -> Out {
    let out = kv_within(args, env, Duration::from_secs(60));
    assert!(out.code.is_some(), "kv {args:?} hung: {out:?}");
    out
}

/// Runs `kv ARGS` with `env` for at most `limit`; a command still running
/// then is killed and reported with `code: None` (no exit code).
pub fn kv_within(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Out {
    let mut cmd = kv_command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_within(cmd, limit)
}

/// Runs `cmd` (stdin closed, stdout and stderr piped) for at most `limit`;
/// a command still running then is killed and reported with `code: None`.
///
/// Both pipes are read while the command runs, each by a thread of its
/// own: a command that writes more than a pipe holds (64 KiB on Linux)
/// would otherwise block on its write until it is killed at `limit`.
pub fn run_within(mut cmd: Command, limit: Duration) -> Out {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("the command runs");
    let stdout = child.stdout.take().map(read_all);
    let stderr = child.stderr.take().map(read_all);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The command is gone (exited, or killed and reaped): its pipes are
    // closed and the readers end.
    let joined = |reader: Option<std::thread::JoinHandle<String>>| {
        reader
            .map(|r| r.join().expect("a pipe reader does not panic"))
            .unwrap_or_default()
    };
    Out {
        code: status.and_then(|s| s.code()),
        stdout: joined(stdout),
        stderr: joined(stderr),
    }
}

/// Reads `pipe` to its end on a thread of its own; the text, any invalid
/// UTF-8 replaced.
fn read_all(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Asserts a failure: exit code `code` (any non-zero if `None`), exactly
/// one line on stderr starting with `kv: ` and containing `needle`, no panic.
pub fn assert_fails(out: &Out, code: Option<i32>, needle: &str) {
    assert!(
        !out.stderr.contains("panicked") && !out.stderr.contains("RUST_BACKTRACE"),
        "panic: {out:?}"
    );
    match code {
        Some(c) => assert_eq!(out.code, Some(c), "{out:?}"),
        None => assert!(matches!(out.code, Some(c) if c != 0), "{out:?}"),
    }
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {out:?}");
    assert!(lines[0].starts_with("kv: "), "{out:?}");
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "stderr should mention {needle:?}: {out:?}"
    );
}
/// `n` loopback addresses whose UDP ports were free a moment ago, below
/// the kernel's ephemeral range and handed out once per test process (a
/// port 0 bound and dropped could be taken by another test's client
/// socket before the server binds it: `raftkit/tests/support/ports.rs`).
pub fn free_udp_addrs(n: usize) -> Vec<String> {
    ports::free_addrs(n)
}

/// A loopback address whose TCP port was free a moment ago (a metrics
/// page's), handed out as [`free_udp_addrs`] hands out theirs.
pub fn free_tcp_addr() -> String {
    ports::free_addr()
}
