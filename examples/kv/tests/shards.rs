//! `kv serve --shards 8` as three real processes: the sharded store formed
//! from the same `--members` list on each node, data through the CLI with
//! `--sharded` (put/get/scan/count across groups, scan merged in key order),
//! `kv status --sharded` one line per group and node, and the operator's
//! `transfer-leader --group` and `balance`.
//!
//! Every child process is killed when the test ends ([`Procs`]'s `Drop`);
//! waiting is polling under a deadline.

use std::path::PathBuf;

mod support;
use support::sharded::{group_leader, wait_groups};
use support::{Procs, TICK_MS, assert_fails, free_udp_addrs, kv};

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
    assert!(rows.iter().all(|r| r.replicas.len() == 3), "{rows:?}");
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

    // A client whose first address is the spare (which hosts no placement
    // group) finds the placement on the other nodes.
    let spare_first = format!("{spare},{members}");
    let env_spare_first = [
        ("KV_CLUSTER", spare_first.as_str()),
        ("RAFTKIT_CERTS", certs_s.as_str()),
        ("KV_SHARDED", "1"),
    ];
    let out = kv(&["get", "k03"], &env_spare_first);
    assert_eq!((out.code, out.stdout.trim()), (Some(0), "vk03"), "{out:?}");
    let out = kv(&["put", "k03", "again"], &env_spare_first);
    assert_eq!((out.code, out.stdout.trim()), (Some(0), "OK"), "{out:?}");
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
