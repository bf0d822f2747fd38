//! `kv status --sharded` as the sharded tests (`shards.rs`,
//! `shards_faults.rs`) read it: one row per group and node.

use std::time::{Duration, Instant};

use super::{PATIENCE, kv_within};

/// One line of `kv status --sharded`.
#[derive(Debug, Clone)]
pub struct GroupRow {
    pub group: u64,
    /// The group's hash range, when it owns one (not group 0).
    pub range: Option<(u64, u64)>,
    pub node: String,
    pub role: String,
    pub leader: String,
    pub replicas: Vec<String>,
}

/// The rows of `kv status --sharded`'s output (header skipped; lines that
/// do not parse are left out).
pub fn parse_groups(text: &str) -> Vec<GroupRow> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let range = f.get(1).and_then(|r| {
                let (a, b) = r.split_once('-')?;
                Some((
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                ))
            });
            Some(GroupRow {
                group: f.first()?.parse().ok()?,
                range,
                node: f.get(2)?.to_string(),
                role: f.get(3)?.to_string(),
                leader: f.get(4)?.to_string(),
                replicas: f
                    .get(5)?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            })
        })
        .collect()
}

/// The node that says it leads `group`, if exactly one does.
pub fn group_leader(rows: &[GroupRow], group: u64) -> Option<String> {
    let leaders: Vec<&GroupRow> = rows
        .iter()
        .filter(|r| r.group == group && r.role == "leader")
        .collect();
    (leaders.len() == 1).then(|| leaders[0].node.clone())
}

/// Polls `kv status --sharded` (with `env`) until `done` holds for its
/// rows; fails the test after [`PATIENCE`].
pub fn wait_groups(
    env: &[(&str, &str)],
    what: &str,
    done: impl Fn(&[GroupRow]) -> bool,
) -> Vec<GroupRow> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = kv_within(&["status", "--sharded"], env, PATIENCE);
        let rows = parse_groups(&out.stdout);
        if out.code == Some(0) && done(&rows) {
            return rows;
        }
        assert!(Instant::now() < deadline, "{what}: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
