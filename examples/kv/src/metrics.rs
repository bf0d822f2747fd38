//! `--metrics ADDR`: the node's status in the Prometheus text format and as
//! a page for people, served by a tiny HTTP/1.0 responder (`GET /metrics`,
//! `GET /` for the page of [`crate::page`]; anything else is 404).
//!
//! Everything comes from [`PeerStatus`], including the append-to-durable and
//! ReadIndex latency histograms the node task records.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use raftkit::core::Role;
use raftkit::prelude::*;
use raftkit::runtime::{LatencyHistogram, PeerStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use crate::page::{self, PageState};
use crate::store::Kv;

/// Serves metrics on `listener` until the process exits.
pub async fn serve(listener: TcpListener, peer: Peer<Kv>, page: Arc<PageState>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let peer = peer.clone();
                let page = Arc::clone(&page);
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &peer, &page).await {
                        debug!(error = %e, "metrics request failed");
                    }
                });
            }
            Err(e) => {
                debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, peer: &Peer<Kv>, page: &PageState) -> std::io::Result<()> {
    // Read the request head (at most 8 KiB, 5 s).
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
            if head.len() > 8192 {
                break;
            }
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head"))??;
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.split_whitespace();
    let (status, content_type, body) = match (parts.next(), parts.next()) {
        (Some("GET"), Some("/metrics")) => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(&peer.status()),
        ),
        (Some("GET"), Some("/" | "/index.html")) => (
            "200 OK",
            "text/html; charset=utf-8",
            page::render(&peer.status(), page),
        ),
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "try GET / or GET /metrics\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// A Prometheus histogram (seconds) from a runtime latency histogram.
fn histogram(out: &mut String, name: &str, help: &str, node: &str, h: &LatencyHistogram) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (le, count) in h.cumulative() {
        let le = le.map_or_else(|| "+Inf".to_string(), |us| format!("{}", us as f64 / 1e6));
        let _ = writeln!(out, "{name}_bucket{{node=\"{node}\",le=\"{le}\"}} {count}");
    }
    let _ = writeln!(
        out,
        "{name}_sum{{node=\"{node}\"}} {}",
        h.sum_us as f64 / 1e6
    );
    let _ = writeln!(out, "{name}_count{{node=\"{node}\"}} {}", h.count);
}

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics of a status, in the Prometheus text format.
pub fn render(s: &PeerStatus) -> String {
    let mut out = String::new();
    let node = format!("{{node=\"{}\"}}", label(&s.name));
    let with = |v: u64| vec![(node.clone(), v)];
    metric(
        &mut out,
        "raftkit_term",
        "gauge",
        "Current Raft term.",
        &with(s.term),
    );
    let roles = [
        (Role::Follower, "follower"),
        (Role::PreCandidate, "precandidate"),
        (Role::Candidate, "candidate"),
        (Role::Leader, "leader"),
    ];
    let role_samples: Vec<(String, u64)> = roles
        .iter()
        .map(|(r, n)| {
            (
                format!("{{node=\"{}\",role=\"{n}\"}}", label(&s.name)),
                u64::from(s.role == *r),
            )
        })
        .collect();
    metric(
        &mut out,
        "raftkit_role",
        "gauge",
        "1 for the node's current role, 0 for the others.",
        &role_samples,
    );
    metric(
        &mut out,
        "raftkit_leader_changes_total",
        "counter",
        "Leader changes this node observed.",
        &with(s.leader_changes),
    );
    metric(
        &mut out,
        "raftkit_commit_index",
        "gauge",
        "Commit index.",
        &with(s.commit),
    );
    metric(
        &mut out,
        "raftkit_applied_index",
        "gauge",
        "Last index applied to the state machine.",
        &with(s.applied),
    );
    metric(
        &mut out,
        "raftkit_last_log_index",
        "gauge",
        "Last log index.",
        &with(s.last_index),
    );
    metric(
        &mut out,
        "raftkit_proposals_total",
        "counter",
        "Proposals accepted while leader.",
        &with(s.proposals),
    );
    metric(
        &mut out,
        "raftkit_client_sessions",
        "gauge",
        "Client sessions in the replicated session table.",
        &with(s.sessions as u64),
    );
    metric(
        &mut out,
        "raftkit_client_session_replies",
        "gauge",
        "Unacknowledged replies stored in the session table.",
        &with(s.session_replies as u64),
    );
    metric(
        &mut out,
        "raftkit_client_session_evictions_total",
        "counter",
        "Client sessions evicted from the full session table (longest idle first).",
        &with(s.session_evictions),
    );
    metric(
        &mut out,
        "raftkit_client_session_expiries_total",
        "counter",
        "Client sessions dropped after their time-to-live.",
        &with(s.session_expiries),
    );
    metric(
        &mut out,
        "raftkit_members",
        "gauge",
        "Members of the configuration in force.",
        &with(s.members.len() as u64),
    );
    metric(
        &mut out,
        "raftkit_halted",
        "gauge",
        "1 if the node halted (a handler panicked under `halt`, or an entry does not decode) or its storage failed.",
        &with(u64::from(s.halted.is_some() || s.fatal.is_some())),
    );
    let dropped: Vec<(String, u64)> = s
        .dropped
        .iter()
        .map(|(reason, n)| {
            (
                format!("{{node=\"{}\",reason=\"{reason}\"}}", label(&s.name)),
                n,
            )
        })
        .collect();
    metric(
        &mut out,
        "raftkit_dropped_messages_total",
        "counter",
        "Inbound Raft messages dropped as invalid or not allowed from their sender, by reason.",
        &dropped,
    );
    metric(
        &mut out,
        "raftkit_storage_failed",
        "gauge",
        "1 if the node's storage failed: it stopped; restart it on a healthy disk.",
        &with(u64::from(s.fatal.is_some())),
    );
    metric(
        &mut out,
        "raftkit_snapshot_index",
        "gauge",
        "Index of the latest snapshot durable on this node.",
        &with(s.snapshot_index),
    );
    metric(
        &mut out,
        "raftkit_snapshot_failures_total",
        "counter",
        "Snapshots that failed (serialization or save); each is retried with a backoff.",
        &with(s.snapshot_failures),
    );
    metric(
        &mut out,
        "raftkit_snapshot_failing",
        "gauge",
        "1 while the latest snapshot attempt failed (the log is not compacted).",
        &with(u64::from(s.snapshot_error.is_some())),
    );
    metric(
        &mut out,
        "raftkit_overloaded_total",
        "counter",
        "Calls refused with Overloaded (too many commands in flight).",
        &with(s.overloaded),
    );
    metric(
        &mut out,
        "raftkit_apply_backlog_bytes",
        "gauge",
        "Bytes of committed entries handed to the state machine and not yet applied (bounded at about 32 MiB).",
        &with(s.apply_backlog_bytes),
    );
    let _ = writeln!(
        out,
        "# HELP raftkit_longest_apply_pause_seconds Longest time the state machine stopped applying for a snapshot.\n# TYPE raftkit_longest_apply_pause_seconds gauge\nraftkit_longest_apply_pause_seconds{node} {}",
        s.longest_apply_pause.as_secs_f64()
    );
    if let Some(contact) = s.leader_contact {
        metric(
            &mut out,
            "raftkit_leader_last_contact_milliseconds",
            "gauge",
            "Milliseconds since this follower last heard from its leader.",
            &with(u64::try_from(contact.elapsed().as_millis()).unwrap_or(u64::MAX)),
        );
    }
    histogram(
        &mut out,
        "raftkit_append_to_durable_seconds",
        "Time from handing entries to storage until they are durable (fsync).",
        &label(&s.name),
        &s.durable_latency,
    );
    histogram(
        &mut out,
        "raftkit_read_index_seconds",
        "Time from a read's arrival until a heartbeat round confirmed its read index.",
        &label(&s.name),
        &s.read_index_latency,
    );
    if s.role == Role::Leader {
        let lag: Vec<(String, u64)> = s
            .members
            .iter()
            .filter(|m| m.id != s.id)
            .filter_map(|m| {
                let matched = m.matched?;
                let peer = m.addr.clone().unwrap_or_else(|| format!("#{:x}", m.id));
                Some((
                    format!("{{node=\"{}\",peer=\"{}\"}}", label(&s.name), label(&peer)),
                    s.last_index.saturating_sub(matched),
                ))
            })
            .collect();
        metric(
            &mut out,
            "raftkit_replication_lag_entries",
            "gauge",
            "On the leader: entries of its log a member has not yet matched.",
            &lag,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkit::runtime::MemberStatus;

    #[test]
    fn renders_the_leader_view() {
        let s = {
            let mut s = PeerStatus::default();
            s.id = 1;
            s.name = "kv@127.0.0.1:7001".into();
            s.role = Role::Leader;
            s.term = 3;
            s.commit = 10;
            s.applied = 9;
            s.last_index = 12;
            s.members = vec![
                MemberStatus {
                    id: 1,
                    addr: Some("127.0.0.1:7001".into()),
                    voter: true,
                    matched: Some(12),
                    next: Some(13),
                },
                MemberStatus {
                    id: 2,
                    addr: Some("127.0.0.1:7002".into()),
                    voter: true,
                    matched: Some(7),
                    next: Some(8),
                },
            ];
            s.session_evictions = 4;
            s
        };
        let mut s = s;
        s.durable_latency
            .record(std::time::Duration::from_micros(300));
        s.durable_latency.record(std::time::Duration::from_secs(5));
        let text = render(&s);
        assert!(text.contains("raftkit_append_to_durable_seconds_bucket{node=\"kv@127.0.0.1:7001\",le=\"0.00025\"} 0\n"));
        assert!(text.contains(
            "raftkit_append_to_durable_seconds_bucket{node=\"kv@127.0.0.1:7001\",le=\"0.0005\"} 1\n"
        ));
        assert!(text.contains(
            "raftkit_append_to_durable_seconds_bucket{node=\"kv@127.0.0.1:7001\",le=\"+Inf\"} 2\n"
        ));
        assert!(
            text.contains(
                "raftkit_append_to_durable_seconds_count{node=\"kv@127.0.0.1:7001\"} 2\n"
            )
        );
        assert!(text.contains("# TYPE raftkit_read_index_seconds histogram\n"));
        assert!(text.contains("raftkit_term{node=\"kv@127.0.0.1:7001\"} 3\n"));
        assert!(text.contains("raftkit_role{node=\"kv@127.0.0.1:7001\",role=\"leader\"} 1\n"));
        assert!(text.contains(
            "raftkit_replication_lag_entries{node=\"kv@127.0.0.1:7001\",peer=\"127.0.0.1:7002\"} 5\n"
        ));
        assert!(!text.contains("peer=\"127.0.0.1:7001\""));
        assert!(text.contains("# TYPE raftkit_proposals_total counter\n"));
        assert!(text.contains("# TYPE raftkit_dropped_messages_total counter\n"));
        assert!(text.contains(
            "raftkit_dropped_messages_total{node=\"kv@127.0.0.1:7001\",reason=\"committed_rewrite\"} 0\n"
        ));
        assert!(text.contains("raftkit_storage_failed{node=\"kv@127.0.0.1:7001\"} 0\n"));
        assert!(text.contains("# TYPE raftkit_client_session_evictions_total counter\n"));
        assert!(
            text.contains("raftkit_client_session_evictions_total{node=\"kv@127.0.0.1:7001\"} 4\n")
        );
    }

    #[test]
    fn a_failed_node_says_so() {
        let s = {
            let mut s = PeerStatus::default();
            s.name = "n".into();
            s.fatal = Some("storage failed: fsync: EIO".into());
            s.snapshot_failures = 2;
            s.snapshot_error = Some("no space".into());
            s
        };
        let text = render(&s);
        assert!(
            text.contains("raftkit_storage_failed{node=\"n\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("raftkit_snapshot_failures_total{node=\"n\"} 2\n"));
        assert!(text.contains("raftkit_snapshot_failing{node=\"n\"} 1\n"));
    }
}
