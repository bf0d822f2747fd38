//! Telling a member's refusal of this client's connection apart from a
//! network failure, and which side refused what.
//!
//! A connection that fails its TLS handshake (RFC 9001 §4.8: a TLS alert
//! closes the QUIC connection with the crypto error `0x100 + alert`) was
//! refused for its certificates, and will be refused again, on any retry
//! with the same identity: it is [`Error::Tls`] (nothing was sent, so
//! nothing was applied; not retryable), never [`Error::Transport`] ("may
//! have been applied", retryable), which made a retry loop on
//! [`Error::is_retryable`] spin and a call end in [`Error::Timeout`]. So
//! is a connection raftkit's acceptor closes with its refusal code
//! (`CLOSE_REFUSED`: the certificate states no raftkit role) before the
//! client's hello.
//!
//! Two directions, said in the message:
//! - the member refused this client's certificate (the alert arrives in
//!   the member's close: `ConnectionClosed`): an unknown CA (`unknown_ca`,
//!   48), revoked (`certificate_revoked`, 44), expired or not yet valid
//!   (`certificate_expired`, 45), not for client authentication
//!   (`unsupported_certificate`, 43), none presented
//!   (`certificate_required`, 116), ...;
//! - this client refused the member's certificate (its own TLS stack
//!   raised the alert: `TransportError`): issued by a CA the client does
//!   not trust, or not valid for the cluster's name (`bad_certificate`,
//!   42), ...
//!
//! One member's refusal does not end a call: the member may be stale (left
//! with another CA) while the others serve; the client asks the others,
//! and a call ends with [`Error::Tls`] only when every member refused it
//! (`Client::request`, `Client::connect_with`).

use std::net::SocketAddr;

use quinn::{Connection, ConnectionError};

use crate::error::Error;
use crate::transport::quic::{CLOSE_REFUSED, CLOSE_TOO_MANY_CONNECTIONS};

/// The QUIC crypto error codes: `0x100 + TLS alert` (RFC 9001 §4.8).
const CRYPTO_ERRORS: std::ops::RangeInclusive<u64> = 0x100..=0x1ff;

/// The TLS alerts that refuse a certificate (RFC 8446 §6.2): only these
/// make a failed handshake a certificate error. Other crypto errors
/// (handshake_failure, decode_error, internal_error, ...) stay transport
/// errors, retried: QUIC's Initial packets are not authenticated, and one
/// forged close must not end a client's calls for good (found by review,
/// stop 49).
const CERTIFICATE_ALERTS: [u8; 9] = [42, 43, 44, 45, 46, 48, 49, 51, 116];

/// What a TLS alert says about a certificate, in words.
fn alert_words(alert: u8) -> String {
    let words = match alert {
        42 => "a bad certificate (bad_certificate: not valid for the cluster's name, or malformed)",
        43 => {
            "a certificate not valid for this use (unsupported_certificate: wrong extended key usage)"
        }
        44 => "a revoked certificate (certificate_revoked: on a revocation list)",
        45 => "an expired certificate (certificate_expired: expired or not yet valid)",
        46 => "an unacceptable certificate (certificate_unknown)",
        48 => "a certificate of a CA it does not trust (unknown_ca)",
        49 => "the certificate (access_denied)",
        51 => "a certificate whose signature does not verify (decrypt_error)",
        116 => "no certificate presented (certificate_required)",
        other => {
            return format!(
                "the TLS handshake with alert {:?} ({other})",
                rustls::AlertDescription::from(other)
            );
        }
    };
    format!("{words}, TLS alert {alert}")
}

/// The certificate error a failed connection to `addr` stands for, if it
/// was refused by either side's TLS (module doc); `None` for a network
/// failure.
pub(super) fn tls_refusal(addr: SocketAddr, e: &ConnectionError) -> Option<Error> {
    let (by_member, code, reason) = match e {
        ConnectionError::ConnectionClosed(close) => {
            (true, u64::from(close.error_code), close.reason.to_vec())
        }
        ConnectionError::TransportError(e) => {
            (false, u64::from(e.code), e.reason.clone().into_bytes())
        }
        ConnectionError::ApplicationClosed(close)
            if close.error_code == quinn::VarInt::from_u32(CLOSE_REFUSED) =>
        {
            return Some(Error::Tls(format!(
                "{addr} refused this client's certificate: {} (nothing was sent; fix the client's certificate)",
                String::from_utf8_lossy(&close.reason)
            )));
        }
        _ => return None,
    };
    if !CRYPTO_ERRORS.contains(&code) {
        return None;
    }
    let alert = u8::try_from(code - 0x100).ok()?;
    if !CERTIFICATE_ALERTS.contains(&alert) {
        return None;
    }
    let reason = String::from_utf8_lossy(&reason);
    let reason = if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    };
    Some(Error::Tls(if by_member {
        format!(
            "{addr} refused this client's certificate: {}{reason}; nothing was sent (fix the client's certificate, or the member's CA)",
            alert_words(alert)
        )
    } else {
        format!(
            "this client refused the certificate of {addr}: {}{reason}; nothing was sent (is {addr} a member of this cluster, with its CA?)",
            alert_words(alert).replace(" it does not trust", " this client does not trust")
        )
    }))
}

/// The error of a connection to `addr` that failed in its handshake: a
/// certificate refusal ([`tls_refusal`]) or a network failure.
pub(super) fn connect_failed(addr: SocketAddr, e: ConnectionError) -> Error {
    tls_refusal(addr, &e).unwrap_or_else(|| Error::Transport(format!("{addr}: {e}")))
}

/// The error of a hello that failed on `conn` to `addr` with `e`: a
/// member refusing this client's certificate (its TLS, after the client's
/// side of the handshake was done, or raftkit's acceptor) is
/// [`Error::Tls`]; a member past its limit of client connections
/// ([`CLOSE_TOO_MANY_CONNECTIONS`]; nothing was read from it) is
/// [`Error::Unavailable`]; anything else [`Error::Transport`].
pub(super) fn hello_failed(
    addr: SocketAddr,
    conn: &Connection,
    e: impl std::fmt::Display,
) -> Error {
    match conn.close_reason() {
        Some(ConnectionError::ApplicationClosed(close))
            if close.error_code == quinn::VarInt::from_u32(CLOSE_TOO_MANY_CONNECTIONS) =>
        {
            Error::Unavailable(format!(
                "{addr} refused the connection: {}",
                String::from_utf8_lossy(&close.reason)
            ))
        }
        Some(closed) => {
            tls_refusal(addr, &closed).unwrap_or_else(|| Error::Transport(format!("{addr}: {e}")))
        }
        None => Error::Transport(format!("{addr}: {e}")),
    }
}

/// The error a call or a connect ends with when every member refused this
/// client's TLS handshake: one member's, or all of theirs (sorted: the
/// same message whatever order the members answered in).
pub(super) fn every_member_refused(mut refusals: Vec<String>) -> Error {
    refusals.sort();
    match refusals.len() {
        1 => Error::Tls(refusals.remove(0)),
        n => Error::Tls(format!(
            "all {n} members refused the TLS handshake: {}",
            refusals.join("; ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7))
    }

    #[test]
    fn alerts_name_the_side_and_the_reason() {
        let closed = ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::crypto(48),
            frame_type: None,
            reason: bytes::Bytes::from_static(b"invalid peer certificate: UnknownIssuer"),
        });
        let Some(Error::Tls(m)) = tls_refusal(addr(), &closed) else {
            panic!("a member's unknown_ca is a certificate error");
        };
        assert!(
            m.starts_with("127.0.0.1:7 refused this client's certificate"),
            "{m}"
        );
        assert!(
            m.contains("unknown_ca") && m.contains("UnknownIssuer"),
            "{m}"
        );
        let revoked = ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::crypto(44),
            frame_type: None,
            reason: bytes::Bytes::new(),
        });
        assert!(
            matches!(tls_refusal(addr(), &revoked), Some(Error::Tls(m)) if m.contains("revoked")),
        );
        let timed_out = connect_failed(addr(), ConnectionError::TimedOut);
        assert!(matches!(timed_out, Error::Transport(_)), "{timed_out:?}");
        let other = ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::PROTOCOL_VIOLATION,
            frame_type: None,
            reason: bytes::Bytes::new(),
        });
        assert!(tls_refusal(addr(), &other).is_none(), "not a TLS alert");
        // Crypto errors that do not refuse a certificate stay transport
        // errors (retried): handshake_failure 40, decode_error 50,
        // internal_error 80, from either side.
        for alert in [40, 50, 80] {
            let by_member = ConnectionError::ConnectionClosed(quinn::ConnectionClose {
                error_code: quinn::TransportErrorCode::crypto(alert),
                frame_type: None,
                reason: bytes::Bytes::new(),
            });
            let refused = tls_refusal(addr(), &by_member);
            assert!(refused.is_none(), "alert {alert}: {refused:?}");
            let failed = connect_failed(addr(), by_member);
            assert!(
                matches!(failed, Error::Transport(_)),
                "alert {alert}: {failed:?}"
            );
        }
        let role = ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: quinn::VarInt::from_u32(CLOSE_REFUSED),
            reason: bytes::Bytes::from_static(b"certificate states no raftkit role"),
        });
        assert!(
            matches!(tls_refusal(addr(), &role), Some(Error::Tls(m)) if m.contains("no raftkit role")),
        );
    }
}
