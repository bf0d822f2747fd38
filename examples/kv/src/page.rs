//! `GET /` on the metrics port: one HTML page showing the cluster as this
//! node sees it, refreshing itself every two seconds.
//!
//! The page is rendered on the server (no JavaScript, no external assets: a
//! `<meta http-equiv="refresh">` reloads it): this node's role, term, leader,
//! commit and applied index; every member of the configuration with its
//! kind, role, term, commit, applied, lag and last contact; the recent
//! leader changes this node observed; and its append-to-durable (write)
//! latency histogram as an inline SVG bar chart.
//!
//! What this node knows of itself comes from [`PeerStatus`]. What it knows
//! of the other members comes from asking each of them for its status over
//! the client protocol, once a second, in the background ([`watch`]): a
//! member that does not answer shows as unreachable. On the leader, the
//! replication progress (matched index, lag) comes from the leader's own
//! view.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use raftkit::client::Client;
use raftkit::client::wire::StatusReport;
use raftkit::core::Role;
use raftkit::prelude::*;
use raftkit::runtime::{LatencyHistogram, PeerStatus};

use crate::store::Kv;

/// How many leader changes the page lists.
const CHANGES_KEPT: usize = 10;
/// How long one member's status may take.
const MEMBER_TIMEOUT: Duration = Duration::from_millis(800);

/// A leader change this node observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderChange {
    /// Wall-clock time of the observation, ms since the epoch.
    pub at_ms: u64,
    /// The term of the new leader.
    pub term: u64,
    /// The new leader's address (or id).
    pub leader: String,
}

/// What the background task gathers for the page.
#[derive(Default)]
pub struct PageState {
    changes: Mutex<VecDeque<LeaderChange>>,
    members: Mutex<BTreeMap<String, Result<StatusReport, String>>>,
}

impl PageState {
    fn changes(&self) -> Vec<LeaderChange> {
        self.changes
            .lock()
            .map(|c| c.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn members(&self) -> BTreeMap<String, Result<StatusReport, String>> {
        self.members.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Records leader changes and asks the other members for their status,
/// until the peer stops. `client` is a client of the cluster (this node's
/// own identity will do); without one, only this node's own view is shown.
pub async fn watch(peer: Peer<Kv>, client: Option<Client>, state: Arc<PageState>) {
    let mut status = peer.watch();
    let mut last_leader = None;
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let s = status.borrow_and_update().clone();
        if s.leader.is_some() && s.leader != last_leader {
            last_leader = s.leader;
            let leader = s
                .leader_addr
                .clone()
                .or_else(|| s.leader.map(|id| format!("#{id:x}")))
                .unwrap_or_default();
            if let Ok(mut c) = state.changes.lock() {
                c.push_front(LeaderChange {
                    at_ms: now_ms(),
                    term: s.term,
                    leader,
                });
                c.truncate(CHANGES_KEPT);
            }
        }
        tokio::select! {
            changed = status.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = poll.tick() => {
                if let Some(client) = &client {
                    let own = peer.local_addr().map(|a| a.to_string());
                    let mut reports = BTreeMap::new();
                    for m in &s.members {
                        let Some(addr) = &m.addr else { continue };
                        if Some(addr) == own.as_ref() {
                            continue;
                        }
                        let r = tokio::time::timeout(MEMBER_TIMEOUT, client.status_of(addr))
                            .await
                            .unwrap_or(Err(raftkit::Error::Timeout))
                            .map_err(|e| e.to_string());
                        reports.insert(addr.clone(), r);
                    }
                    if let Ok(mut m) = state.members.lock() {
                        *m = reports;
                    }
                }
            }
        }
    }
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre-candidate",
    }
}

fn clock(ms: u64) -> String {
    let secs = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03} UTC",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60,
        ms % 1000
    )
}

/// The page for `status`, with what `state` gathered.
pub fn render(s: &PeerStatus, state: &PageState) -> String {
    let mut h = String::new();
    let me = peer_addr(s);
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"2\">\
         <title>{name} · raftkit</title><style>{CSS}</style></head><body>\n",
        name = esc(&s.name)
    );
    let health = match (&s.fatal, &s.halted) {
        (Some(f), _) => format!("<p class=\"bad\" id=\"fatal\">stopped: {}</p>", esc(f)),
        (None, Some(h)) => format!("<p class=\"bad\" id=\"halted\">halted: {}</p>", esc(h)),
        (None, None) => String::new(),
    };
    let leader = s
        .leader_addr
        .clone()
        .or_else(|| s.leader.map(|id| format!("#{id:x}")))
        .unwrap_or_else(|| "none known".into());
    let _ = writeln!(
        h,
        "<h1 id=\"node\">{name}</h1>{health}\
         <p class=\"summary\"><span id=\"role\" class=\"role {role}\">{role}</span> \
         term <b id=\"term\">{term}</b> · leader <b id=\"leader\">{leader}</b> · \
         commit <b id=\"commit\">{commit}</b> · applied <b id=\"applied\">{applied}</b> · \
         last index <b>{last}</b>{joint}</p>",
        name = esc(&s.name),
        role = role_name(s.role),
        term = s.term,
        leader = esc(&leader),
        commit = s.commit,
        applied = s.applied,
        last = s.last_index,
        joint = if s.joint {
            " · <b>joint configuration (a change is under way)</b>"
        } else {
            ""
        },
    );

    // Members.
    let remote = state.members();
    let leader_commit = if s.role == Role::Leader {
        Some(s.commit)
    } else {
        remote
            .values()
            .filter_map(|r| r.as_ref().ok())
            .filter(|r| r.role == "Leader")
            .max_by_key(|r| r.term)
            .map(|r| r.commit)
    };
    h.push_str(
        "<h2>Members</h2>\n<table id=\"members\"><tr><th>address</th><th>kind</th><th>role</th>\
         <th>term</th><th>commit</th><th>applied</th><th>lag</th><th>matched</th>\
         <th>last contact</th></tr>\n",
    );
    for m in &s.members {
        let addr = m.addr.clone().unwrap_or_else(|| format!("#{:x}", m.id));
        let kind = if m.voter { "voter" } else { "learner" };
        let matched = m.matched.map_or_else(|| "–".into(), |x| x.to_string());
        let row = if m.id == s.id {
            let contact = match (s.role, s.leader_contact) {
                (Role::Leader, _) => "–".to_string(),
                (_, Some(t)) => format!("{} ms ago", t.elapsed().as_millis()),
                (_, None) => "never".into(),
            };
            Row {
                role: role_name(s.role).into(),
                term: s.term.to_string(),
                commit: s.commit.to_string(),
                applied: s.applied.to_string(),
                lag: lag(leader_commit, s.applied),
                contact,
                class: "self",
            }
        } else {
            match remote.get(&addr) {
                Some(Ok(r)) => Row {
                    role: r.role.to_lowercase(),
                    term: r.term.to_string(),
                    commit: r.commit.to_string(),
                    applied: r.applied.to_string(),
                    lag: lag(leader_commit, r.applied),
                    contact: match (r.role.as_str(), r.last_contact_ms) {
                        ("Leader", _) => "–".into(),
                        (_, Some(ms)) => format!("{ms} ms ago"),
                        (_, None) => "never".into(),
                    },
                    class: "",
                },
                Some(Err(e)) => Row::unknown(format!("unreachable: {e}")),
                None => Row::unknown("not asked yet".into()),
            }
        };
        let _ = writeln!(
            h,
            "<tr class=\"{class}{leading}\"><td>{addr}{you}</td><td>{kind}</td><td>{role}</td>\
             <td>{term}</td><td>{commit}</td><td>{applied}</td><td>{lag}</td><td>{matched}</td>\
             <td>{contact}</td></tr>",
            class = row.class,
            leading = if s.leader == Some(m.id) {
                " leading"
            } else {
                ""
            },
            addr = esc(&addr),
            you = if Some(&addr) == me.as_ref() {
                " (this node)"
            } else {
                ""
            },
            role = esc(&row.role),
            term = row.term,
            commit = row.commit,
            applied = row.applied,
            lag = row.lag,
            contact = esc(&row.contact),
        );
    }
    h.push_str("</table>\n");

    // Leader changes.
    h.push_str("<h2>Recent leader changes</h2>\n<ol id=\"changes\">");
    let changes = state.changes();
    if changes.is_empty() {
        h.push_str("<li>none observed yet</li>");
    }
    for c in &changes {
        let _ = write!(
            h,
            "<li>{at}: term {term}, leader {leader}</li>",
            at = clock(c.at_ms),
            term = c.term,
            leader = esc(&c.leader)
        );
    }
    h.push_str("</ol>\n<h2>Write latency (append to durable, this node)</h2>\n");
    h.push_str(&histogram_svg(&s.durable_latency));
    let _ = write!(
        h,
        "<p class=\"foot\">{proposals} proposals accepted as leader · {changes} leader \
         changes observed · {sessions} client sessions · refreshed every 2 s · \
         Prometheus metrics at <a href=\"/metrics\">/metrics</a></p>\n</body></html>\n",
        proposals = s.proposals,
        changes = s.leader_changes,
        sessions = s.sessions,
    );
    h
}

/// This node's own address in the configuration.
fn peer_addr(s: &PeerStatus) -> Option<String> {
    s.members
        .iter()
        .find(|m| m.id == s.id)
        .and_then(|m| m.addr.clone())
}

fn lag(leader_commit: Option<u64>, applied: u64) -> String {
    leader_commit.map_or_else(|| "–".into(), |c| c.saturating_sub(applied).to_string())
}

/// One row of the members table.
struct Row {
    role: String,
    term: String,
    commit: String,
    applied: String,
    lag: String,
    contact: String,
    class: &'static str,
}

impl Row {
    fn unknown(why: String) -> Row {
        let dash = || "–".to_string();
        Row {
            role: dash(),
            term: dash(),
            commit: dash(),
            applied: dash(),
            lag: dash(),
            contact: why,
            class: "unknown",
        }
    }
}

/// The histogram as an SVG bar chart: one bar per bucket, labelled with its
/// upper bound, the count on top.
fn histogram_svg(hist: &LatencyHistogram) -> String {
    let n = hist.counts.len().max(1);
    let (bar, gap, height, top, bottom) = (44usize, 8usize, 160usize, 18usize, 34usize);
    let width = n * (bar + gap) + gap;
    let max = hist.counts.iter().copied().max().unwrap_or(0).max(1);
    let mut svg = format!(
        "<svg id=\"latency\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" \
         role=\"img\" aria-label=\"write latency histogram, {} observations\">",
        height + top + bottom,
        hist.count
    );
    for (i, &count) in hist.counts.iter().enumerate() {
        let x = gap + i * (bar + gap);
        let h = (count as f64 / max as f64 * height as f64).round() as usize;
        let y = top + height - h;
        let label = match hist.bounds_us.get(i) {
            Some(&us) if us >= 1000 => format!("≤{} ms", us / 1000),
            Some(&us) => format!("≤{us} µs"),
            None => "more".to_string(),
        };
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"{y}\" width=\"{bar}\" height=\"{h}\" fill=\"#3b6fb6\"/>\
             <text x=\"{cx}\" y=\"{ty}\" font-size=\"11\" text-anchor=\"middle\">{count}</text>\
             <text x=\"{cx}\" y=\"{ly}\" font-size=\"10\" text-anchor=\"middle\">{label}</text>",
            cx = x + bar / 2,
            ty = y.saturating_sub(4).max(11),
            ly = top + height + 16,
        );
    }
    let mean = hist
        .sum_us
        .checked_div(hist.count)
        .map_or_else(|| "no writes yet".into(), |m| format!("mean {m} µs"));
    let _ = write!(
        svg,
        "<text x=\"{gap}\" y=\"{}\" font-size=\"11\">{} writes · {mean}</text></svg>",
        top + height + bottom - 2,
        hist.count
    );
    svg
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:24px;color:#222}\
h1{font-size:22px;margin:0 0 6px}h2{font-size:16px;margin:22px 0 8px}\
table{border-collapse:collapse}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}\
td:first-child,th:first-child,td:nth-child(2),td:nth-child(3),th:nth-child(2),th:nth-child(3){text-align:left}\
tr.leading td{font-weight:600}tr.self td:first-child{color:#3b6fb6}tr.unknown td{color:#999}\
.role{padding:2px 8px;border-radius:10px;background:#eee}.role.leader{background:#cfe8cf}\
.role.candidate,.role.pre-candidate{background:#f6e3b4}.bad{color:#b00;font-weight:600}\
.foot{color:#777;font-size:12px;margin-top:18px}";

#[cfg(test)]
mod tests {
    use super::*;
    use raftkit::runtime::MemberStatus;

    fn leader_status() -> PeerStatus {
        let mut s = {
            let mut s = PeerStatus::default();
            s.id = 1;
            s.name = "kv@127.0.0.1:7001".into();
            s.role = Role::Leader;
            s.term = 3;
            s.leader = Some(1);
            s.leader_addr = Some("127.0.0.1:7001".into());
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
                MemberStatus {
                    id: 3,
                    addr: Some("127.0.0.1:7003".into()),
                    voter: false,
                    matched: None,
                    next: None,
                },
            ];
            s
        };
        s.durable_latency.record(Duration::from_micros(300));
        s.durable_latency.record(Duration::from_micros(400));
        s.durable_latency.record(Duration::from_secs(5));
        s
    }

    #[test]
    fn page_shows_members_changes_and_histogram() {
        let state = PageState::default();
        if let Ok(mut m) = state.members.lock() {
            m.insert(
                "127.0.0.1:7002".into(),
                Ok({
                    let mut s = StatusReport::default();
                    s.name = "kv@127.0.0.1:7002".into();
                    s.role = "Follower".into();
                    s.term = 3;
                    s.commit = 10;
                    s.applied = 6;
                    s.last_contact_ms = Some(40);
                    s
                }),
            );
            m.insert("127.0.0.1:7003".into(), Err("timed out".into()));
        }
        if let Ok(mut c) = state.changes.lock() {
            c.push_front(LeaderChange {
                at_ms: 3_723_004,
                term: 3,
                leader: "127.0.0.1:7001".into(),
            });
        }
        let html = render(&leader_status(), &state);
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"2\">"));
        assert!(html.contains("<span id=\"role\" class=\"role leader\">leader</span>"));
        // The follower's own report: role, applied, lag behind the leader's
        // commit (10 - 6), last contact, and the leader's matched index.
        assert!(html.contains(
            "<td>127.0.0.1:7002</td><td>voter</td><td>follower</td><td>3</td><td>10</td><td>6</td><td>4</td><td>7</td><td>40 ms ago</td>"
        ), "{html}");
        assert!(html.contains("<td>127.0.0.1:7003</td><td>learner</td><td>–</td>"));
        assert!(html.contains("unreachable: timed out"));
        assert!(html.contains("127.0.0.1:7001 (this node)"));
        assert!(html.contains("01:02:03.004 UTC: term 3, leader 127.0.0.1:7001"));
        // Two writes in the 500 µs bucket, one in the last.
        assert!(html.contains(">2</text><text") && html.contains("3 writes"));
        assert!(!html.contains("<script"));
    }

    #[test]
    fn names_are_escaped() {
        let mut s = leader_status();
        s.name = "<script>alert(1)</script>".into();
        s.halted = Some("a & b".into());
        let html = render(&s, &PageState::default());
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("halted: a &amp; b"));
    }
}
