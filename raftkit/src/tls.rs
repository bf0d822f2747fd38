//! Cluster certificates, the roles they state, and the TLS configurations
//! of peer and client links.
//!
//! # The trust model
//!
//! Every cluster has its own certificate authority, a [`ClusterCa`]. Every
//! party (node, client, administrator) holds an [`Identity`]: a certificate
//! signed by that CA, its private key, and the CA certificate as the one and
//! only trust root. Both ends of every connection present a certificate
//! (mutual TLS) and both check that the other's chains to the cluster CA.
//! Holding *a* certificate of the CA is not enough to do anything, though:
//! every certificate states **one role** and **one name**, and what a
//! connection may do depends on them.
//!
//! | role | issued by | may | may not |
//! |---|---|---|---|
//! | `node` | [`ClusterCa::issue_node`] | open peer links ([`PEER_ALPN`]) under the name its certificate states, and only that name; accept peer and client connections (it is the only role valid as a TLS server); on the client protocol: `Status`, and `AddServer` / `AddLearner` of **itself** (a joining node asking to be added) | claim another node's name; send data commands or open or close sessions (except writes to the placement group 0 of a multi-group node, by a node it knows as a member, below); add anyone else, remove servers, transfer leadership |
//! | `client` | [`ClusterCa::issue_client`] | on the client protocol ([`CLIENT_ALPN`]): data commands (`Write`, `Read`), `OpenSession` and `CloseSession` (sessions owned by this certificate: only its own sessions can be written under or closed), and `Status` | open peer links; change membership; transfer leadership; act as a server; use another certificate's session |
//! | `admin` | [`ClusterCa::issue_admin`] | everything a `client` may, plus `AddServer`, `AddLearner`, `RemoveServer`, `TransferLeader` | open peer links; act as a server |
//! | none (no role, several roles, no name, or a certificate from before roles) | — | nothing: refused on every connection, peer or client | — |
//!
//! A refused client request is answered with
//! [`Error::Unauthorized`](crate::Error::Unauthorized): nothing was applied.
//! A peer link whose hello is refused is answered with a `Refused` frame
//! saying why and closed; a peer connection whose certificate is not a
//! `node`'s is closed at once, the reason in the connection close.
//!
//! ## Encoding
//!
//! The role and the name are subject alternative names of type URI:
//!
//! - `urn:raftkit:role:node`, `urn:raftkit:role:client` or
//!   `urn:raftkit:role:admin` ([`ROLE_URI_PREFIX`]), exactly one;
//! - `urn:raftkit:name:<name>` ([`NAME_URI_PREFIX`]), exactly one, the name
//!   percent-encoded (every byte outside `A-Z a-z 0-9 - . _ ~ @ : + ,` and
//!   `=` becomes `%XX`).
//!
//! They are visible with `openssl x509 -noout -ext subjectAltName -in
//! cert.pem`. The extended key usage backs the role up: node certificates
//! are valid for TLS server and client authentication, client and admin
//! certificates for client authentication only, so rustls itself refuses a
//! client or admin certificate presented by a server. The subject's common
//! name repeats the name for humans; it is never trusted.
//!
//! ## What is checked where
//!
//! - **Peer links.** The acceptor reads the dialer's certificate: its role
//!   must be `node` and its name must equal the name in the hello (whose
//!   node id must be the id of that name, see [`crate::identity`]). The
//!   peer protocol never trusts a name it is told: the hello's name only has
//!   to agree with the certificate. The dialer, once the handshake is done,
//!   checks that the certificate it reached is a `node` certificate whose
//!   name has the node id of the peer it meant to reach, and closes the
//!   link otherwise ([`LinkState::Refused`](crate::transport::LinkState)).
//!   Every node certificate carries the DNS name [`CLUSTER_SAN`] (`raftkit`)
//!   that dialers ask for; addresses are not bound into certificates
//!   (ports change, names are `<state machine>@<address>`), the node name
//!   is.
//! - **Client connections.** The transport extracts the connection's
//!   [`Principal`] (role, name, SHA-256 fingerprint of the certificate) and
//!   hands it to the client service with the connection; every request is
//!   authorized against it before it reaches the node
//!   (`runtime::authorization`). The fingerprint also owns the client
//!   sessions the connection opens (`runtime::session`): a session id
//!   learned by another certificate, of any role, is refused.
//! - **Starting a node.** A node's own identity must be a `node`
//!   certificate for the node's name, or the transport refuses to start.
//!
//! ## What each certificate can still do
//!
//! Raft trusts its members; the roles keep everyone else out of the
//! protocol, but not out of what their role allows:
//!
//! - **client**: read and write all data, see the membership and progress
//!   (`Status`), open sessions (each takes a slot of the bounded session
//!   table, evicting when full the longest idle of the identity holding the
//!   most, so not another's within its fair share), and use server resources
//!   within the frame and request caps. Nothing in the peer protocol or
//!   membership, and no other certificate's session. The session table is
//!   replicated state (on every replica, in every snapshot, rebuilt on
//!   restart), so what one certificate stores there is bounded: at most
//!   `max_sessions_per_owner` sessions (default 1,000; opening more evicts
//!   its own) and `max_reply_bytes_per_owner` bytes of stored replies
//!   (default 64 MiB; `max_reply_bytes_per_session`, 4 MiB, per session),
//!   past which the stored outputs of its other sessions, idle the longest
//!   first, are dropped (a retry of one is answered `AnswerTooLarge`), then
//!   its writes are refused, not applied (`runtime::session` rule 9). These
//!   bounds apply to the session entries a leader proposes once it knows
//!   that every voter applies them (runtime log version 2): it heard each
//!   voter on such a raftkit since it started, or its data directory
//!   recorded that every voter was heard on one (the raised oldest schema,
//!   `schema::SchemaBook`). Until then (a voter still on an older raftkit,
//!   or a leader whose directory never recorded the raise and that has not
//!   heard from every voter since its start) a client certificate that
//!   never acknowledges its answers can hold every session of the table
//!   with 4096 replies each, of any size, and exhaust every replica's
//!   memory, again after each restart; the replies stored before the gate
//!   opened stay until acknowledged or their sessions end. With many
//!   client certificates, the table may hold up to about (certificates
//!   holding sessions) × `max_reply_bytes_per_owner`: size `max_sessions`
//!   and the byte bounds for the memory of the smallest replica.
//! - **admin**: everything a client can, plus reshape the membership (add
//!   nodes it also holds node certificates for, remove members down to one)
//!   and move leadership: it controls the cluster.
//! - **node of a member** (a stolen member certificate): everything that
//!   member can do, including voting and, once elected, appending any entry:
//!   Raft does not tolerate lying members.
//! - **node of a non-member** (a removed node, a spare certificate): peer
//!   links under its own name only. Its votes are ignored and, while a
//!   leader is known to be alive, so are its leader messages
//!   ([`crate::core::inbound`]). A node *outside* such a lease (no leader
//!   heard for an election timeout, just restarted, or not yet configured)
//!   still accepts a leader it does not know of at a higher term, because a
//!   legitimate new leader may be one: against such a node, a non-member can
//!   raise its term (forcing an election) and make it adopt, and commit,
//!   entries of its choosing that no other member holds. Committed entries
//!   it already holds cannot be rewritten, and nothing it sends can crash
//!   the node or grow its memory past the configured bounds.
//! - **a node certificate on a multi-group node**: write the placement
//!   group 0 ([`crate::multi::service`]), which routes every sharded client,
//!   only if group 0's **leader** finds its node in group 0's committed
//!   configuration, in the committed placement's replica lists, in the
//!   committed configuration of a group the placement lists (as the
//!   leader's own replica of it holds it), or among the nodes a group the
//!   placement still lists the leader for moved to from the leader (kept a
//!   day, across restarts) (`multi::placement_auth`). Any other node
//!   certificate (a spare's, a retired node's no longer listed, one known
//!   only through a group the placement does not list, such as a group it
//!   founded and made members learners of: review s58) is refused
//!   `Unauthorized`, not applied. Still possible: a member's (or a listed
//!   node's) certificate can route any group's clients to an address of
//!   its choosing (`set_replicas`), and clients check only that the
//!   server's certificate is a node certificate of the CA, not which node
//!   it is; a retired node stays listed while a move's record is missing;
//!   and a non-member that makes a listed group's replica on group 0's
//!   leader adopt a configuration naming it (above) then counts as its
//!   member. Revoke the certificates of retired nodes.
//!
//! Issue node certificates to nodes only, and revoke a certificate that
//! leaks or whose node was removed (below); re-key the cluster (a new CA)
//! when the CA key leaks. Whoever holds `ca.key` can mint any certificate of any
//! role: protect it.
//! Extra subject alternative names (DNS names or IP addresses) may be added
//! to a node certificate for tools that verify hostnames the usual way.
//!
//! ## Revocation
//!
//! As etcd's `--client-crl-file`: an identity may carry certificate
//! revocation lists ([`Identity::with_revocation_list_pem`], or the
//! builders' `revocation_list_pem` option), each signed by the cluster CA
//! ([`ClusterCa::revocation_list_pem`] makes one, or `openssl ca -gencrl`).
//! Both ends check them: a node refuses, at the TLS handshake, a peer or
//! client whose certificate is listed, and a node or client dialing refuses
//! a server whose certificate is listed. So a removed node whose
//! certificate is revoked cannot link as a peer nor add itself back
//! (`AddServer`/`AddLearner` of itself stays allowed to every *unrevoked*
//! node certificate by a single-group peer: that is how `join` works; a
//! multi-group node refuses it, [`crate::multi::service`]), and a revoked
//! client's calls fail with a transport error. The policy:
//!
//! - every certificate of the presented chain but the CA itself is checked
//!   (with the CA issuing end-entity certificates only, the leaf);
//! - a certificate listed in a CRL of its issuer is refused;
//! - a certificate whose status no CRL decides (no CRL of its issuer was
//!   given) is *allowed*: without CRLs nothing is revoked, as before;
//! - a CRL past its `nextUpdate` still applies (a stale list keeps
//!   revoking rather than failing every handshake, or revoking nothing);
//! - a CRL that does not parse, or is not signed by the cluster CA, is an
//!   error when it is given ([`TlsError::BadCrl`]), never at a handshake.
//!
//! The lists are read when a node or client starts: they are not stored in
//! the data directory (pass them at every start, as etcd's flag), and a new
//! list takes a restart.
//!
//! # Invariants
//!
//! 1. Every rustls configuration is built with
//!    `builder_with_provider(ring)`: the process-wide default provider is
//!    never consulted, so linking another provider elsewhere cannot make a
//!    handshake panic.
//! 2. The server configuration *requires* a client certificate signed by the
//!    cluster CA for every ALPN protocol ([`PEER_ALPN`], [`CLIENT_ALPN`]);
//!    the client configuration trusts the cluster CA only. There is no
//!    "accept any certificate" mode.
//! 3. Only TLS 1.3 is offered (QUIC requires it).
//! 4. Private keys are written with mode `0600` on Unix, also over a key
//!    file that existed (a new file renamed over it), and never logged
//!    (the `Debug` impls omit them).
//! 5. A certificate that does not state exactly one role and one name has
//!    no [`Principal`] and is refused everywhere.
//! 6. Every revocation list an [`Identity`] carries parsed and is signed by
//!    its cluster CA; the server and client configurations both check them.
//!
//! # Files
//!
//! A CA directory holds `ca.pem` (certificate) and `ca.key` (PKCS#8 private
//! key). An identity directory holds `<name>.pem` (the certificate chain),
//! `<name>.key` and `ca.pem` (the trust root). [`dev_cluster`] makes an
//! ephemeral CA and node identities in memory for local clusters and tests.
//!
//! Size: past 1,000 lines because it is the trust model in one place: the
//! doc above is its specification, and issuing (`ClusterCa`) and checking
//! (`Principal`, `Identity`'s TLS configurations and revocation lists)
//! share the private name encoding, so they cannot drift apart. The unit
//! tests at the end would move out first.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// The DNS subject alternative name every node certificate carries and every
/// dialer asks for (see the module docs).
pub const CLUSTER_SAN: &str = "raftkit";

/// The prefix of the URI subject alternative name stating a certificate's
/// role: `urn:raftkit:role:node`, `...:client` or `...:admin`.
pub const ROLE_URI_PREFIX: &str = "urn:raftkit:role:";

/// The prefix of the URI subject alternative name stating a certificate's
/// name (percent-encoded): `urn:raftkit:name:kv@127.0.0.1:7001`.
pub const NAME_URI_PREFIX: &str = "urn:raftkit:name:";

/// The ALPN protocol of peer links (Raft messages between nodes).
pub const PEER_ALPN: &[u8] = b"raftkit-peer/1";

/// The ALPN protocol of client connections.
pub const CLIENT_ALPN: &[u8] = b"raftkit-client/1";

/// How long a CA certificate is valid, in years.
const CA_YEARS: i32 = 20;
/// How long a node certificate is valid, in years.
const NODE_YEARS: i32 = 10;

/// An error creating, loading or using certificates.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Reading or writing a file failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `"read"` or `"write"`.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file did not hold the PEM data expected.
    #[error("bad PEM in {}: {reason}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Generating or signing a certificate failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused a certificate, key or configuration.
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    /// A certificate verifier (of clients or of servers) could not be built.
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The TLS configuration cannot be used for QUIC.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(String),
    /// A certificate cannot be issued for this name (or subject name).
    #[error("invalid certificate name: {0}")]
    InvalidName(String),
    /// The certificate does not state the role (or name) its use needs.
    #[error("{0}")]
    WrongRole(String),
    /// A certificate revocation list is unusable: not PEM, not a CRL, or not
    /// signed by the cluster CA. Nothing was started with it.
    #[error("certificate revocation list: {0}")]
    BadCrl(String),
}

/// What a certificate of the cluster CA allows its holder to do (see the
/// table in the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CertRole {
    /// A member of the cluster: peer links under its own name.
    Node,
    /// A user of the data: reads, writes, status.
    Client,
    /// An operator: what a client may, plus membership and leadership.
    Admin,
}

impl CertRole {
    /// Every role.
    pub const ALL: [CertRole; 3] = [CertRole::Node, CertRole::Client, CertRole::Admin];

    /// `node`, `client` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            CertRole::Node => "node",
            CertRole::Client => "client",
            CertRole::Admin => "admin",
        }
    }

    /// The URI subject alternative name stating this role.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }
}

impl std::fmt::Display for CertRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CertRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CertRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (expected node, client or admin)"))
    }
}

/// Who is at the other end of a connection, as its certificate states: the
/// role, the name, and the SHA-256 fingerprint of the certificate (to bind
/// state, such as client sessions, to the certificate that created it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The certificate's role.
    pub role: CertRole,
    /// The certificate's name (for a node: its node name, whose hash is its
    /// node id).
    pub name: String,
    /// SHA-256 of the leaf certificate's DER encoding.
    pub cert_fingerprint: [u8; 32],
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} certificate `{}`", self.role, self.name)
    }
}

/// Why a certificate has no [`Principal`]: it is refused everywhere.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrincipalError {
    /// No certificate was presented.
    #[error("no certificate presented")]
    NoCertificate,
    /// The certificate does not parse as X.509.
    #[error("the certificate does not parse: {0}")]
    Unparseable(String),
    /// The certificate states no role (for example it was issued before
    /// roles existed): re-issue it with a role.
    #[error(
        "the certificate states no raftkit role (no {ROLE_URI_PREFIX}... subject alternative name); re-issue it as a node, client or admin certificate"
    )]
    NoRole,
    /// The certificate states more than one role.
    #[error("the certificate states more than one raftkit role")]
    SeveralRoles,
    /// The role URI names no known role.
    #[error("the certificate states an unknown raftkit role {0:?}")]
    UnknownRole(String),
    /// The certificate states no name, several names or a malformed one.
    #[error("the certificate states no single valid raftkit name ({NAME_URI_PREFIX}...)")]
    BadName,
}

impl Principal {
    /// The principal of a certificate chain (leaf first), as presented by
    /// the peer of a connection (already verified against the cluster CA
    /// by rustls).
    pub fn from_chain(chain: &[CertificateDer<'_>]) -> Result<Principal, PrincipalError> {
        let leaf = chain.first().ok_or(PrincipalError::NoCertificate)?;
        Self::from_cert(leaf.as_ref())
    }

    /// The principal stated by one DER-encoded certificate. Never panics,
    /// whatever the bytes.
    pub fn from_cert(der: &[u8]) -> Result<Principal, PrincipalError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| PrincipalError::Unparseable(e.to_string()))?;
        let sans = cert
            .subject_alternative_name()
            .map_err(|e| PrincipalError::Unparseable(e.to_string()))?;
        let mut roles = Vec::new();
        let mut names = Vec::new();
        for general in sans.iter().flat_map(|ext| ext.value.general_names.iter()) {
            if let x509_parser::extensions::GeneralName::URI(uri) = general {
                if let Some(role) = uri.strip_prefix(ROLE_URI_PREFIX) {
                    roles.push(role);
                } else if let Some(name) = uri.strip_prefix(NAME_URI_PREFIX) {
                    names.push(name);
                }
            }
        }
        let role = match roles.as_slice() {
            [] => return Err(PrincipalError::NoRole),
            [one] => one
                .parse::<CertRole>()
                .map_err(|_| PrincipalError::UnknownRole(one.to_string()))?,
            _ => return Err(PrincipalError::SeveralRoles),
        };
        let name = match names.as_slice() {
            [one] => percent_decode(one).ok_or(PrincipalError::BadName)?,
            _ => return Err(PrincipalError::BadName),
        };
        if name.is_empty() {
            return Err(PrincipalError::BadName);
        }
        Ok(Principal {
            role,
            name,
            cert_fingerprint: fingerprint(der),
        })
    }

    /// The fingerprint in lowercase hex.
    pub fn fingerprint_hex(&self) -> String {
        self.cert_fingerprint
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// SHA-256 of `der`.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Whether `b` stands for itself in an encoded name.
fn name_byte_is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~@:+,=".contains(&b)
}

/// Percent-encodes `name` for a URI subject alternative name.
fn percent_encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if name_byte_is_plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes [`percent_encode`]'s output; `None` if malformed or not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if name_byte_is_plain(b) {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// The `ring` crypto provider every configuration is built with.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate authority of one cluster: it signs the certificate of
/// every node, client and administrator allowed to talk to the cluster, each
/// with its role (one issuing function per role).
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Creates a new CA (ECDSA P-256) for the cluster `cluster_name`, valid
    /// from a year ago for twenty years, allowed to sign end-entity
    /// certificates only (no intermediate CAs).
    pub fn generate(cluster_name: &str) -> Result<ClusterCa, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("raftkit CA {cluster_name}"));
        dn.push(DnType::OrganizationName, "raftkit");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_YEARS);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().clone();
        Ok(ClusterCa {
            issuer: Issuer::new(params, key),
            cert_pem,
            cert_der,
        })
    }

    /// Loads a CA written by [`ClusterCa::write_to`] from `dir` (`ca.pem`,
    /// `ca.key`).
    pub fn load(dir: impl AsRef<Path>) -> Result<ClusterCa, TlsError> {
        let dir = dir.as_ref();
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        let cert_pem = read_string(&cert_path)?;
        let key_pem = read_string(&key_path)?;
        let cert_der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| TlsError::BadPem {
                path: cert_path.clone(),
                reason: e.to_string(),
            })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::BadPem {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| TlsError::BadPem {
            path: cert_path.clone(),
            reason: e.to_string(),
        })?;
        Ok(ClusterCa {
            issuer,
            cert_pem,
            cert_der,
        })
    }

    /// Writes `ca.pem` and `ca.key` (mode `0600`) into `dir`, creating it.
    pub fn write_to(&self, dir: impl AsRef<Path>) -> Result<(), TlsError> {
        let dir = dir.as_ref();
        create_dir(dir)?;
        write_file(&dir.join("ca.pem"), self.cert_pem.as_bytes(), false)?;
        write_file(
            &dir.join("ca.key"),
            self.issuer.key().serialize_pem().as_bytes(),
            true,
        )?;
        Ok(())
    }

    /// The CA certificate, PEM-encoded.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER-encoded.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Issues a `node` certificate for the node called `name` (its node id
    /// is [`node_id`](crate::identity::node_id)`(name)`), valid as TLS server
    /// and client, for the DNS name [`CLUSTER_SAN`] plus `sans` (DNS names,
    /// or IP addresses when they parse as one).
    pub fn issue_node(&self, name: &str, sans: &[String]) -> Result<Identity, TlsError> {
        self.issue_role(CertRole::Node, name, sans)
    }

    /// Issues a `client` certificate called `name`: data commands and
    /// status only.
    pub fn issue_client(&self, name: &str) -> Result<Identity, TlsError> {
        self.issue_role(CertRole::Client, name, &[])
    }

    /// Issues an `admin` certificate called `name`: data commands, status,
    /// membership changes and leadership transfer.
    pub fn issue_admin(&self, name: &str) -> Result<Identity, TlsError> {
        self.issue_role(CertRole::Admin, name, &[])
    }

    /// A certificate revocation list, PEM-encoded and signed by this CA,
    /// revoking the certificates `revoked` (leaf certificates this CA
    /// issued, e.g. `identity.cert_chain()[0]`), numbered `number` (give a
    /// new list a higher number than the one it replaces). Valid from now
    /// for a year (a list past that date still applies, see the module
    /// docs). Nodes and clients read it with
    /// [`Identity::with_revocation_list_pem`] or the builders'
    /// `revocation_list_pem` option.
    pub fn revocation_list_pem(
        &self,
        revoked: &[CertificateDer<'_>],
        number: u64,
    ) -> Result<String, TlsError> {
        let now = x509_parser::time::ASN1Time::now().to_datetime();
        let revoked_certs = revoked
            .iter()
            .map(|der| {
                let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
                    TlsError::BadCrl(format!("a certificate to revoke does not parse: {e}"))
                })?;
                Ok(rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(cert.raw_serial()),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, TlsError>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + std::time::Duration::from_secs(365 * 24 * 3600),
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// Issues a certificate of `role` called `name` (see the module docs for
    /// the encoding); `sans` are only used for node certificates.
    pub fn issue_role(
        &self,
        role: CertRole,
        name: &str,
        sans: &[String],
    ) -> Result<Identity, TlsError> {
        if name.is_empty() {
            return Err(TlsError::InvalidName("a certificate needs a name".into()));
        }
        let key = KeyPair::generate()?;
        let ia5 = |s: String| -> Result<rcgen::string::Ia5String, TlsError> {
            rcgen::string::Ia5String::try_from(s).map_err(|e| TlsError::InvalidName(e.to_string()))
        };
        let mut params = CertificateParams::default();
        let mut san = vec![
            SanType::URI(ia5(role.uri())?),
            SanType::URI(ia5(format!("{NAME_URI_PREFIX}{}", percent_encode(name)))?),
        ];
        if role == CertRole::Node {
            san.push(SanType::DnsName(ia5(CLUSTER_SAN.to_string())?));
            for extra in sans.iter().filter(|s| s.as_str() != CLUSTER_SAN) {
                san.push(match extra.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(ia5(extra.clone())?),
                });
            }
        }
        params.subject_alt_names = san;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "raftkit");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match role {
            CertRole::Node => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            CertRole::Client | CertRole::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, NODE_YEARS);
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_pem = key.serialize_pem();
        let key_der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        Ok(Identity {
            ca_pem: self.cert_pem.clone(),
            ca_der: self.cert_der.clone(),
            chain_pem: cert.pem(),
            chain: vec![cert.der().clone()],
            key_pem,
            key: key_der,
            crls: Vec::new(),
        })
    }
}

/// Checks that `crl` parses as a certificate revocation list issued by the
/// CA certificate `ca` and that `ca`'s key signed it.
fn check_crl_signed_by(
    ca: &CertificateDer<'_>,
    crl: &CertificateRevocationListDer<'_>,
) -> Result<(), String> {
    let (_, ca) = x509_parser::parse_x509_certificate(ca.as_ref())
        .map_err(|e| format!("the CA certificate does not parse: {e}"))?;
    let (rest, list) = x509_parser::parse_x509_crl(crl.as_ref())
        .map_err(|e| format!("not a certificate revocation list: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the list", rest.len()));
    }
    if list.issuer().as_raw() != ca.subject().as_raw() {
        return Err(format!(
            "issued by {:?}, not by the cluster CA {:?}",
            list.issuer().to_string(),
            ca.subject().to_string()
        ));
    }
    list.verify_signature(ca.public_key())
        .map_err(|e| format!("not signed by the cluster CA's key ({e})"))
}

/// What a node, client or administrator presents and trusts: its
/// certificate chain and private key, and the cluster CA certificate as its
/// only trust root.
pub struct Identity {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    chain_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key_pem: String,
    key: PrivateKeyDer<'static>,
    /// Revocation lists of the cluster CA, each checked against it when
    /// added (invariant 6).
    crls: Vec<CertificateRevocationListDer<'static>>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            ca_pem: self.ca_pem.clone(),
            ca_der: self.ca_der.clone(),
            chain_pem: self.chain_pem.clone(),
            chain: self.chain.clone(),
            key_pem: self.key_pem.clone(),
            key: self.key.clone_key(),
            crls: self.crls.clone(),
        }
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("chain_len", &self.chain.len())
            .field("revocation_lists", &self.crls.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads the identity `name` from `dir`: `<name>.pem` (certificate
    /// chain, leaf first), `<name>.key` and `ca.pem`.
    pub fn load(dir: impl AsRef<Path>, name: &str) -> Result<Identity, TlsError> {
        let dir = dir.as_ref();
        let ca_path = dir.join("ca.pem");
        let chain_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}.key"));
        let ca_pem = read_string(&ca_path)?;
        let chain_pem = read_string(&chain_path)?;
        let key_pem = read_string(&key_path)?;
        let ca_der =
            CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| TlsError::BadPem {
                path: ca_path.clone(),
                reason: e.to_string(),
            })?;
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadPem {
                path: chain_path.clone(),
                reason: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::BadPem {
                path: chain_path,
                reason: "no certificate".into(),
            });
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::BadPem {
                path: key_path.clone(),
                reason: e.to_string(),
            })?;
        Ok(Identity {
            ca_pem,
            ca_der,
            chain_pem,
            chain,
            key_pem,
            key,
            crls: Vec::new(),
        })
    }

    /// Writes `<name>.pem`, `<name>.key` (mode `0600`) and `ca.pem` into
    /// `dir`, creating it.
    pub fn write_to(&self, dir: impl AsRef<Path>, name: &str) -> Result<(), TlsError> {
        let dir = dir.as_ref();
        create_dir(dir)?;
        write_file(&dir.join("ca.pem"), self.ca_pem.as_bytes(), false)?;
        write_file(
            &dir.join(format!("{name}.pem")),
            self.chain_pem.as_bytes(),
            false,
        )?;
        write_file(
            &dir.join(format!("{name}.key")),
            self.key_pem.as_bytes(),
            true,
        )?;
        Ok(())
    }

    /// The cluster CA certificate (the only trust root).
    pub fn ca_cert(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// This identity's certificate chain, leaf first.
    pub fn cert_chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The role and name this identity's certificate states.
    pub fn principal(&self) -> Result<Principal, PrincipalError> {
        Principal::from_chain(&self.chain)
    }

    /// Checks that this identity can be the one of the node called `name`:
    /// a `node` certificate issued to that name.
    pub fn check_node(&self, name: &str) -> Result<(), TlsError> {
        let own = self
            .principal()
            .map_err(|e| TlsError::WrongRole(format!("the node's certificate: {e}")))?;
        if own.role != CertRole::Node || own.name != name {
            return Err(TlsError::WrongRole(format!(
                "a node needs a node certificate issued to its name {name:?}; this identity is a {own}"
            )));
        }
        Ok(())
    }

    /// This identity with the certificate revocation lists in `pem` (one or
    /// more `X509 CRL` PEM blocks) added to those it checks peers against:
    /// a certificate listed is refused at the TLS handshake, by this
    /// identity's server and client configurations alike (see the module
    /// docs for the policy).
    ///
    /// Fails with [`TlsError::BadCrl`] when `pem` holds no CRL, a block
    /// does not parse, or a list is not signed by this identity's CA.
    ///
    /// ```
    /// # fn main() -> Result<(), raftkit::tls::TlsError> {
    /// use raftkit::tls::ClusterCa;
    /// let ca = ClusterCa::generate("docs")?;
    /// let retired = ca.issue_node("kv@127.0.0.1:7003", &[])?;
    /// let crl_pem = ca.revocation_list_pem(&retired.cert_chain()[..1], 1)?;
    /// // What `std::fs::read("crl.pem")?` would return.
    /// let node = ca
    ///     .issue_node("kv@127.0.0.1:7001", &[])?
    ///     .with_revocation_list_pem(crl_pem.as_bytes())?;
    /// assert_eq!(node.revocation_lists().len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_revocation_list_pem(mut self, pem: &[u8]) -> Result<Identity, TlsError> {
        let crls = CertificateRevocationListDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadCrl(format!("not PEM: {e}")))?;
        if crls.is_empty() {
            return Err(TlsError::BadCrl(
                "no `-----BEGIN X509 CRL-----` block in the input".into(),
            ));
        }
        for (i, crl) in crls.iter().enumerate() {
            check_crl_signed_by(&self.ca_der, crl)
                .map_err(|e| TlsError::BadCrl(format!("list {} of {}: {e}", i + 1, crls.len())))?;
        }
        self.crls.extend(crls);
        // rustls parses the lists again when a configuration is built: a
        // list it refuses is refused here, not at the first handshake.
        WebPkiClientVerifier::builder_with_provider(self.roots()?, crypto_provider())
            .with_crls(self.crls.iter().cloned())
            .build()
            .map_err(|e| TlsError::BadCrl(e.to_string()))?;
        Ok(self)
    }

    /// The certificate revocation lists this identity checks peers against
    /// (empty unless [`Identity::with_revocation_list_pem`] added some).
    pub fn revocation_lists(&self) -> &[CertificateRevocationListDer<'static>] {
        &self.crls
    }

    /// A copy of this identity's private key.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// The trust roots: the cluster CA only.
    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        Ok(Arc::new(roots))
    }

    /// A rustls server configuration that presents this identity, requires a
    /// client certificate signed by the cluster CA and not revoked by this
    /// identity's revocation lists, and offers both [`PEER_ALPN`] and
    /// [`CLIENT_ALPN`].
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let provider = crypto_provider();
        // Unknown status allowed: a certificate no list covers is accepted
        // (module docs, revocation policy). The whole chain but the anchor
        // is checked, and a stale list still applies (the defaults).
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .with_crls(self.crls.iter().cloned())
            .allow_unknown_revocation_status()
            .build()?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![PEER_ALPN.to_vec(), CLIENT_ALPN.to_vec()];
        Ok(config)
    }

    /// A rustls client configuration that trusts the cluster CA only,
    /// refuses a server certificate this identity's revocation lists
    /// revoke, presents this identity and offers the ALPN protocol `alpn`.
    pub fn client_config(&self, alpn: &[u8]) -> Result<ClientConfig, TlsError> {
        let provider = crypto_provider();
        // The same revocation policy as `server_config`.
        let verifier = WebPkiServerVerifier::builder_with_provider(self.roots()?, provider.clone())
            .with_crls(self.crls.iter().cloned())
            .allow_unknown_revocation_status()
            .build()?;
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }
}

/// Makes an ephemeral CA and one `node` identity per name, for local
/// clusters and tests (nothing is written to disk). Issue client and admin
/// identities from the returned CA ([`ClusterCa::issue_client`],
/// [`ClusterCa::issue_admin`]).
pub fn dev_cluster<I, S>(names: I) -> Result<(ClusterCa, Vec<Identity>), TlsError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let ca = ClusterCa::generate("dev")?;
    let identities = names
        .into_iter()
        .map(|name| ca.issue_node(name.as_ref(), &[]))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((ca, identities))
}

/// Valid from January 1st of last year for `years` years: a little slack
/// for clocks that lag.
fn set_validity(params: &mut CertificateParams, years: i32) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // A mean Gregorian year; the result is only ever used with a year of slack.
    let year = 1970 + i32::try_from(secs / 31_556_952).unwrap_or(0);
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

fn read_string(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        op: "create directory",
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `data` to `path`. A `private` file (a key) is written `0600` on
/// Unix whether or not it existed: into a new file of that mode next to
/// it, then renamed over it. Opening the existing file would keep its mode
/// (`OpenOptions::mode` applies only to a file it creates), so a key file
/// made under another umask, or copied, held the new key readable by
/// others (found by review, stop 57); and whoever had it open already
/// could read the new key through that descriptor. Renamed, the old file
/// keeps only the old key, and a crash leaves the old key or the new one,
/// never half of one.
fn write_file(path: &Path, data: &[u8], private: bool) -> Result<(), TlsError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io {
            op: "write",
            path,
            source,
        }
    };
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        // Left by a write that crashed: its mode is not to be trusted.
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&tmp)(e)),
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        file.write_all(data).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|source| TlsError::Io {
            op: "rename",
            path: path.to_path_buf(),
            source,
        })?;
        return Ok(());
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(data).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_and_identity_round_trip_through_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ClusterCa::generate("test").expect("ca");
        ca.write_to(dir.path().join("ca")).expect("write ca");
        let loaded = ClusterCa::load(dir.path().join("ca")).expect("load ca");
        assert_eq!(loaded.cert_der(), ca.cert_der());

        // A certificate issued by the loaded CA is trusted by identities of
        // the original one.
        let a = ca.issue_node("a", &["127.0.0.1".into()]).expect("issue a");
        let b = loaded.issue_client("b").expect("issue b");
        a.write_to(dir.path().join("nodes"), "a").expect("write a");
        let a2 = Identity::load(dir.path().join("nodes"), "a").expect("load a");
        assert_eq!(a2.cert_chain(), a.cert_chain());
        assert_eq!(a2.ca_cert(), ca.cert_der());
        assert_eq!(a2.principal().expect("principal").role, CertRole::Node);
        assert!(a2.server_config().is_ok());
        assert!(b.client_config(PEER_ALPN).is_ok());

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("nodes/a.key"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "private key readable by others");
        }
    }

    #[test]
    fn loading_garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("ca.pem"), "not a pem").expect("write");
        fs::write(dir.path().join("ca.key"), "not a key").expect("write");
        assert!(matches!(
            ClusterCa::load(dir.path()),
            Err(TlsError::BadPem { .. })
        ));
        assert!(matches!(
            Identity::load(dir.path(), "missing"),
            Err(TlsError::Io { .. })
        ));
    }

    #[test]
    fn dev_cluster_issues_one_node_identity_per_name() {
        let (_ca, ids) = dev_cluster(["a", "b", "c"]).expect("dev cluster");
        assert_eq!(ids.len(), 3);
        for (id, name) in ids.iter().zip(["a", "b", "c"]) {
            let p = id.principal().expect("principal");
            assert_eq!((p.role, p.name.as_str()), (CertRole::Node, name));
        }
    }

    #[test]
    fn every_issued_certificate_states_its_role_and_name() {
        let ca = ClusterCa::generate("roles").expect("ca");
        let odd = "kv@[::1]:7001/ä %x";
        let cases = [
            (
                ca.issue_node("kv@127.0.0.1:7001", &[]).expect("node"),
                CertRole::Node,
                "kv@127.0.0.1:7001",
            ),
            (
                ca.issue_node(odd, &["localhost".into()]).expect("node"),
                CertRole::Node,
                odd,
            ),
            (
                ca.issue_client("alice").expect("client"),
                CertRole::Client,
                "alice",
            ),
            (
                ca.issue_admin("ops").expect("admin"),
                CertRole::Admin,
                "ops",
            ),
        ];
        for (id, role, name) in cases {
            let p = id.principal().expect("principal");
            assert_eq!(p.role, role);
            assert_eq!(p.name, name);
            assert_eq!(p.cert_fingerprint, fingerprint(id.cert_chain()[0].as_ref()));
        }
        // Distinct certificates, distinct fingerprints, even for one name.
        let a = ca.issue_client("same").expect("a").principal().expect("p");
        let b = ca.issue_client("same").expect("b").principal().expect("p");
        assert_ne!(a.cert_fingerprint, b.cert_fingerprint);
        assert!(ca.issue_client("").is_err(), "a name is required");
    }

    /// A certificate of the right CA without the role URIs (as issued
    /// before roles existed) has no principal.
    #[test]
    fn a_certificate_without_a_role_has_no_principal() {
        let ca = ClusterCa::generate("old").expect("ca");
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec![CLUSTER_SAN.to_string()]).expect("params");
        let cert = params.signed_by(&key, &ca.issuer).expect("sign");
        assert_eq!(
            Principal::from_cert(cert.der()),
            Err(PrincipalError::NoRole)
        );
        // Two roles, or a role without a name, are refused too.
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![
            SanType::URI(CertRole::Node.uri().try_into().expect("ia5")),
            SanType::URI(CertRole::Admin.uri().try_into().expect("ia5")),
            SanType::URI(format!("{NAME_URI_PREFIX}x").try_into().expect("ia5")),
        ];
        let cert = params.signed_by(&key, &ca.issuer).expect("sign");
        assert_eq!(
            Principal::from_cert(cert.der()),
            Err(PrincipalError::SeveralRoles)
        );
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            CertRole::Client.uri().try_into().expect("ia5"),
        )];
        let cert = params.signed_by(&key, &ca.issuer).expect("sign");
        assert_eq!(
            Principal::from_cert(cert.der()),
            Err(PrincipalError::BadName)
        );
        // An empty name, or two names, are refused as well: the name is who
        // the certificate speaks for (a node's id, a client's sessions), so
        // there is exactly one and it is not empty (teeth round 3, mutant
        // 225: an empty name was accepted).
        for names in [&[""][..], &["a", "b"][..]] {
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![SanType::URI(
                CertRole::Client.uri().try_into().expect("ia5"),
            )];
            for name in names {
                params.subject_alt_names.push(SanType::URI(
                    format!("{NAME_URI_PREFIX}{name}").try_into().expect("ia5"),
                ));
            }
            let cert = params.signed_by(&key, &ca.issuer).expect("sign");
            assert_eq!(
                Principal::from_cert(cert.der()),
                Err(PrincipalError::BadName),
                "names {names:?}"
            );
        }
        assert!(matches!(
            Principal::from_cert(b"garbage"),
            Err(PrincipalError::Unparseable(_))
        ));
        assert_eq!(
            Principal::from_chain(&[]),
            Err(PrincipalError::NoCertificate)
        );
    }

    /// A role is one of the three exactly: `nodeX`, `Node`, `admin/` or an
    /// empty role are unknown, not a node or an admin by their prefix or
    /// case.
    #[test]
    fn a_role_is_matched_exactly() {
        let ca = ClusterCa::generate("roles").expect("ca");
        let key = KeyPair::generate().expect("key");
        for role in ["nodeX", "Node", "admin/", "administrator", "client ", ""] {
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![
                SanType::URI(format!("{ROLE_URI_PREFIX}{role}").try_into().expect("ia5")),
                SanType::URI(format!("{NAME_URI_PREFIX}x").try_into().expect("ia5")),
            ];
            let cert = params.signed_by(&key, &ca.issuer).expect("sign");
            assert_eq!(
                Principal::from_cert(cert.der()),
                Err(PrincipalError::UnknownRole(role.to_string())),
                "role {role:?}"
            );
        }
        for role in CertRole::ALL {
            assert_eq!(role.as_str().parse::<CertRole>(), Ok(role));
        }
    }

    /// Only a node certificate may authenticate a TLS server: client and
    /// admin certificates carry the client-authentication usage alone, so
    /// even one that somehow named the cluster would not pass a dialer's
    /// path validation as a server.
    #[test]
    fn only_node_certificates_are_issued_for_server_authentication() {
        let ca = ClusterCa::generate("usages").expect("ca");
        let usages = |id: &Identity| {
            let (_, cert) =
                x509_parser::parse_x509_certificate(id.cert_chain()[0].as_ref()).expect("parse");
            let eku = cert
                .extended_key_usage()
                .expect("extension parses")
                .expect("extended key usage present")
                .value;
            (eku.server_auth, eku.client_auth)
        };
        assert_eq!(
            usages(&ca.issue_node("n", &[]).expect("node")),
            (true, true)
        );
        assert_eq!(
            usages(&ca.issue_client("c").expect("client")),
            (false, true)
        );
        assert_eq!(usages(&ca.issue_admin("a").expect("admin")), (false, true));
    }

    #[test]
    fn names_percent_encode_and_decode() {
        for name in ["kv@127.0.0.1:7001", "a b/c%d", "ünï", "x+y,z=w~"] {
            assert_eq!(percent_decode(&percent_encode(name)).as_deref(), Some(name));
        }
        assert_eq!(percent_encode("a b"), "a%20b");
        for bad in ["%", "%4", "%zz", "a b", "%ff%fe"] {
            assert_eq!(percent_decode(bad), None, "{bad:?}");
        }
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod file_tests;
