//! What a command that did not succeed reports: one line and an exit code.

use std::fmt;

/// Why a command did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// Exit code 1: something went wrong (network, certificates, disk).
    Failed(String),
    /// Exit code 2: the command line is wrong.
    Usage(String),
    /// Exit code 3: the answer is "no" (absent key, cas that did not swap).
    No(String),
}

impl Failure {
    /// The process exit code.
    pub fn code(&self) -> u8 {
        match self {
            Failure::Failed(_) => 1,
            Failure::Usage(_) => 2,
            Failure::No(_) => 3,
        }
    }

    /// The message on one line.
    pub fn one_line(&self) -> String {
        let text = match self {
            Failure::Failed(s) | Failure::Usage(s) | Failure::No(s) => s,
        };
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// A failure of a call to the cluster at `cluster`, explained.
    pub fn cluster(e: &raftkit::Error, cluster: &[String]) -> Failure {
        let at = cluster.join(",");
        let text = e.to_string();
        let lower = text.to_lowercase();
        // A refused certificate: `Tls` (every member refused it), or the
        // TLS words inside a `Transport` (a call's dial) or `Unavailable`
        // (a connect that reached no member names each member's failure,
        // some of which may be refusals: raftkit's connect ends
        // `Unavailable` since stop 51, "not applied").
        let tls_words = || {
            [
                "certificate",
                "handshake",
                "tls",
                "crypto",
                "unknownca",
                "bad_cert",
            ]
            .iter()
            .any(|w| lower.contains(w))
        };
        Failure::Failed(match e {
            raftkit::Error::Tls(_) => format!(
                "the cluster at {at} refused our certificate or we refused its ({text}); are --certs / RAFTKIT_CERTS the certificates of this cluster's CA?"
            ),
            raftkit::Error::Transport(_) | raftkit::Error::Unavailable(_) if tls_words() => {
                format!(
                    "the cluster at {at} refused our certificate or we refused its ({text}); are --certs / RAFTKIT_CERTS the certificates of this cluster's CA?"
                )
            }
            raftkit::Error::Transport(_) | raftkit::Error::Unavailable(_) => {
                format!("cannot reach the cluster at {at}: {text}")
            }
            raftkit::Error::Timeout => format!(
                "the cluster at {at} did not answer in time (no leader? a majority down?); a write may or may not have been applied"
            ),
            raftkit::Error::NotLeader { hint } => format!(
                "no leader could be reached through {at} (last hint: {})",
                hint.as_deref().unwrap_or("none")
            ),
            raftkit::Error::Rejected(_) => format!("the cluster refused the request: {text}"),
            raftkit::Error::Unauthorized(why) => format!(
                "the cluster at {at} refused the request for our certificate: {why}; nothing was changed"
            ),
            _ => format!("{text} (cluster {at})"),
        })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

/// Checks that `addr` is a `HOST:PORT` that resolves; `what` names it in
/// the message.
pub fn check_addr(addr: &str, what: &str) -> Result<(), Failure> {
    use std::net::ToSocketAddrs;
    let bad = |why: String| {
        Failure::Usage(format!(
            "invalid {what} address {addr:?}: {why} (expected HOST:PORT, e.g. 127.0.0.1:7001)"
        ))
    };
    match addr.to_socket_addrs() {
        Ok(mut it) => match it.next() {
            Some(_) => Ok(()),
            None => Err(bad("it resolves to no address".into())),
        },
        Err(e) => Err(bad(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(e: raftkit::Error) -> String {
        Failure::cluster(&e, &["127.0.0.1:7001".into(), "127.0.0.1:7002".into()]).one_line()
    }

    /// A connect that reached no member is `Unavailable` (not applied)
    /// since stop 51, also when a member refused our certificate: the
    /// message still points at the certificates, not at the network.
    #[test]
    fn a_connect_refused_for_its_certificate_says_so_whatever_its_error() {
        let hint = "are --certs / RAFTKIT_CERTS the certificates of this cluster's CA?";
        for e in [
            raftkit::Error::Unavailable(
                "could not connect, nothing was sent: no member answered within the connect's \
                 timeout (10s): TLS: 127.0.0.1:7001 refused this client's certificate: a \
                 certificate of a CA it does not trust (unknown_ca), TLS alert 48; \
                 127.0.0.1:7002: connection timed out"
                    .into(),
            ),
            raftkit::Error::Tls(
                "127.0.0.1:7001 refused this client's certificate: no certificate presented \
                 (certificate_required), TLS alert 116"
                    .into(),
            ),
            raftkit::Error::Transport("127.0.0.1:7001: the cryptographic handshake failed".into()),
        ] {
            let line = failed(e.clone());
            assert!(line.contains(hint), "{e:?} explained as: {line}");
        }
        let line = failed(raftkit::Error::Unavailable(
            "could not connect, nothing was sent: no member answered within the connect's \
             timeout (10s): 127.0.0.1:7001: connection timed out"
                .into(),
        ));
        assert!(line.starts_with("cannot reach the cluster at"), "{line}");
    }
}
