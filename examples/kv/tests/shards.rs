//! `kv serve --shards 8` as three real processes: the sharded store formed
//! from the same `--members` list on each node, data through the CLI with
//! `--sharded` (put/get/scan/count across groups, scan merged in key order),
//! `kv status --sharded` one line per group and node, and the operator's
//! `transfer-leader --group` and `balance`.
//!
//! Every child process is killed when the test ends ([`Procs`]'s `Drop`);
//! waiting is polling under a deadline.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KV: &str = env!("CARGO_BIN_EXE_kv");
/// The Raft tick of the servers the test starts (elections after 250-500 ms).
const TICK_MS: &str = "25";
/// How long any one condition may take to become true.
const PATIENCE: Duration = Duration::from_secs(30);

/// The servers: killed (SIGKILL) and reaped on drop.
#[derive(Default)]
struct Procs {
    children: HashMap<String, Child>,
}

impl Procs {
    /// Starts `kv serve ARGS` known as `key`, its output in `log`.
    fn serve(&mut self, key: &str, args: &[&str], log: &Path) {
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
fn kv_command() -> Command {
    let mut c = Command::new(KV);
    c.env_remove("KV_CLUSTER")
        .env_remove("RAFTKIT_CERTS")
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE");
    c
}

/// What a finished command left.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `kv ARGS` with `env` and waits (at most 60 s) for it.
fn kv(args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = kv_command();
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("kv runs");
    let deadline = Instant::now() + Duration::from_secs(60);
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
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut stdout);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut stderr);
    }
    let out = Out {
        code: status.and_then(|s| s.code()),
        stdout,
        stderr,
    };
    assert!(status.is_some(), "kv {args:?} hung: {out:?}");
    out
}

/// Asserts a failure: exit code `code` (any non-zero if `None`), exactly
/// one line on stderr starting with `kv: ` and containing `needle`, no panic.
fn assert_fails(out: &Out, code: Option<i32>, needle: &str) {
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

fn free_udp_addrs(n: usize) -> Vec<String> {
    let sockets: Vec<_> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().expect("addr").to_string())
        .collect()
}

/// One line of `kv status --sharded`.
#[derive(Debug, Clone)]
struct GroupRow {
    group: u64,
    node: String,
    role: String,
    leader: String,
    replicas: usize,
}

fn parse_groups(text: &str) -> Vec<GroupRow> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Some(GroupRow {
                group: f.first()?.parse().ok()?,
                node: f.get(2)?.to_string(),
                role: f.get(3)?.to_string(),
                leader: f.get(4)?.to_string(),
                replicas: f.get(5)?.split(',').filter(|s| !s.is_empty()).count(),
            })
        })
        .collect()
}

fn wait_groups(
    env: &[(&str, &str)],
    what: &str,
    done: impl Fn(&[GroupRow]) -> bool,
) -> Vec<GroupRow> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = kv(&["status", "--sharded"], env);
        let rows = parse_groups(&out.stdout);
        if out.code == Some(0) && done(&rows) {
            return rows;
        }
        assert!(Instant::now() < deadline, "{what}: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The leader of `group` if exactly one node says it leads it.
fn group_leader(rows: &[GroupRow], group: u64) -> Option<String> {
    let leaders: Vec<&GroupRow> = rows
        .iter()
        .filter(|r| r.group == group && r.role == "leader")
        .collect();
    (leaders.len() == 1).then(|| leaders[0].node.clone())
}

const SHARDS: u64 = 8;

#[test]
fn three_processes_serve_eight_shards() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = |p: &str| -> PathBuf { tmp.path().join(p) };
    let certs = path("certs");
    let certs_s = certs.to_string_lossy().to_string();
    let out = kv(&["certs", "init", &certs_s], &[]);
    assert_eq!(out.code, Some(0), "{out:?}");

    let addrs = free_udp_addrs(3);
    let members = addrs.join(",");
    let shards = SHARDS.to_string();
    let mut procs = Procs::default();
    for (i, addr) in addrs.iter().enumerate() {
        let data = path(&format!("n{i}")).to_string_lossy().to_string();
        procs.serve(
            addr,
            &[
                "--listen",
                addr,
                "--data",
                &data,
                "--certs",
                &certs_s,
                "--shards",
                &shards,
                "--members",
                &members,
                "--tick-ms",
                TICK_MS,
            ],
            &path(&format!("n{i}.log")),
        );
    }
    let env = [
        ("KV_CLUSTER", members.as_str()),
        ("RAFTKIT_CERTS", certs_s.as_str()),
        ("KV_SHARDED", "1"),
    ];
    // Every node hosts the placement and every data group; each has one leader.
    let rows = wait_groups(&env, "9 groups x 3 nodes, each with a leader", |rows| {
        rows.len() == 3 * (SHARDS as usize + 1)
            && (0..=SHARDS).all(|g| group_leader(rows, g).is_some())
            && rows.iter().all(|r| addrs.contains(&r.leader))
    });
    assert!(rows.iter().all(|r| r.replicas == 3), "{rows:?}");
    for r in &rows {
        assert!(addrs.contains(&r.node), "{r:?}");
    }

    // Data through the CLI, keys spread over the groups by hash.
    let keys: Vec<String> = (0..24).map(|i| format!("k{i:02}")).collect();
    for key in &keys {
        let out = kv(&["put", key, &format!("v{key}")], &env);
        assert_eq!((out.code, out.stdout.trim()), (Some(0), "OK"), "{out:?}");
    }
    let out = kv(&["get", "k07"], &env);
    assert_eq!((out.code, out.stdout.trim()), (Some(0), "vk07"), "{out:?}");
    let out = kv(&["get", "absent"], &env);
    assert_eq!(out.code, Some(3), "{out:?}");
    // A scan asks every group and prints one merged list in key order.
    let out = kv(&["scan", ""], &env);
    assert_eq!(out.code, Some(0), "{out:?}");
    let scanned: Vec<String> = out.stdout.lines().map(String::from).collect();
    let expected: Vec<String> = keys.iter().map(|k| format!("{k}\tv{k}")).collect();
    assert_eq!(scanned, expected);
    let out = kv(&["scan", "k1"], &env);
    assert_eq!(out.stdout.lines().count(), 10, "{out:?}");
    let out = kv(&["count", "k"], &env);
    assert_eq!(out.stdout.trim(), "24", "{out:?}");
    // The writes went to more than one group: their commit indexes moved
    // past the formation entries on several groups.
    let out = kv(&["status", "--sharded"], &env);
    let busy: std::collections::BTreeSet<u64> = out
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let group: u64 = f.first()?.parse().ok()?;
            let commit: u64 = f.get(6)?.parse().ok()?;
            (group != 0 && commit > 3).then_some(group)
        })
        .collect();
    assert!(busy.len() >= 4, "writes spread over the groups: {out:?}");

    // The operator moves one group's leadership, then balances.
    let rows = wait_groups(&env, "leaders", |rows| group_leader(rows, 3).is_some());
    let old = group_leader(&rows, 3).expect("leader");
    let to = addrs.iter().find(|a| **a != old).expect("other").clone();
    let out = kv(&["transfer-leader", "--group", "3", &to], &env);
    assert_eq!(out.code, Some(0), "{out:?}");
    wait_groups(&env, "group 3 led by the target", |rows| {
        group_leader(rows, 3).as_deref() == Some(to.as_str())
    });
    let out = kv(&["balance"], &env);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout.contains("leadership transfers started"),
        "{out:?}"
    );
    // The data stayed where it was.
    let out = kv(&["scan", ""], &env);
    assert_eq!(out.stdout.lines().count(), keys.len(), "{out:?}");
    let out = kv(&["get", "k03"], &env);
    assert_eq!(out.stdout.trim(), "vk03", "{out:?}");

    // A spare node (outside --members) takes over group 5's replica on the
    // first member: `kv move-replica`, then the status lists it and every
    // key is still read back.
    let spare = free_udp_addrs(1).remove(0);
    let data = path("spare").to_string_lossy().to_string();
    procs.serve(
        &spare,
        &[
            "--listen",
            &spare,
            "--data",
            &data,
            "--certs",
            &certs_s,
            "--shards",
            &shards,
            "--members",
            &members,
            "--tick-ms",
            TICK_MS,
        ],
        &path("spare.log"),
    );
    let out = kv(&["move-replica", "--group", "5", &addrs[0], &spare], &env);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("moved"), "{out:?}");
    let all = format!("{members},{spare}");
    let env4 = [
        ("KV_CLUSTER", all.as_str()),
        ("RAFTKIT_CERTS", certs_s.as_str()),
        ("KV_SHARDED", "1"),
    ];
    wait_groups(
        &env4,
        "group 5 on the spare, not on the first member",
        |rows| {
            rows.iter().any(|r| r.group == 5 && r.node == spare)
                && !rows.iter().any(|r| r.group == 5 && r.node == addrs[0])
                && group_leader(rows, 5).is_some()
        },
    );
    let out = kv(&["scan", ""], &env);
    assert_eq!(out.stdout.lines().count(), keys.len(), "{out:?}");
}

#[test]
fn a_sharded_node_needs_its_members() {
    let out = kv(&["serve", "--listen", "127.0.0.1:1", "--shards", "8"], &[]);
    assert_fails(&out, Some(2), "--members");
    let out = kv(
        &[
            "serve",
            "--listen",
            "127.0.0.1:1",
            "--shards",
            "8",
            "--members",
            "127.0.0.1:2",
        ],
        &[],
    );
    // Outside --members: a spare, which still needs its certificate.
    assert_fails(&out, Some(2), "certificates");
}
