//! Cluster certificates and the TLS configurations of peer and client links.
//!
//! # The trust model
//!
//! Every cluster has its own certificate authority, a [`ClusterCa`]. Each
//! node holds an [`Identity`]: a certificate signed by that CA, its private
//! key, and the CA certificate as the one and only trust root. Both ends of
//! every connection present a certificate (mutual TLS) and both check that
//! the other's chains to the cluster CA:
//!
//! - **Identity is membership of the cluster CA.** Every node certificate
//!   carries the DNS name [`CLUSTER_SAN`] (`raftkit`) and dialers always ask
//!   for that name, so any certificate of the CA is valid for any peer
//!   address. Addresses change (port 0 in tests, containers, NAT) and names
//!   of peers are `<state machine>@<address>`, so binding certificates to
//!   addresses would buy little: what matters is that only holders of a key
//!   certified by the cluster CA can join or talk to the cluster. Which node
//!   a peer claims to be is stated in the peer protocol's hello and trusted
//!   because the peer is a member. Protect `ca.key` accordingly: whoever
//!   holds it can mint members.
//! - Extra subject alternative names (DNS names or IP addresses) may be added
//!   to a certificate for tools that verify hostnames the usual way.
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
//! 4. Private keys are written with mode `0600` on Unix and never logged
//!    (the `Debug` impls omit them).
//!
//! # Files
//!
//! A CA directory holds `ca.pem` (certificate) and `ca.key` (PKCS#8 private
//! key). A node directory holds `<name>.pem` (the node's certificate chain),
//! `<name>.key` and `ca.pem` (the trust root). [`dev_cluster`] makes an
//! ephemeral CA and identities in memory for local clusters and tests.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The DNS subject alternative name every node certificate carries and every
/// dialer asks for (see the module docs: identity is membership of the CA).
pub const CLUSTER_SAN: &str = "raftkit";

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
    /// The client-certificate verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The TLS configuration cannot be used for QUIC.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(String),
}

/// The `ring` crypto provider every configuration is built with.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate authority of one cluster: it signs the certificate of
/// every node (and client) allowed to talk to the cluster.
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
    /// from a year ago for twenty years, allowed to sign node certificates
    /// only (no intermediate CAs).
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

    /// Issues a certificate for the node (or client) called `name`, valid as
    /// both TLS server and client, for the DNS name [`CLUSTER_SAN`] plus
    /// `sans` (DNS names, or IP addresses when they parse as one). The
    /// subject's common name is `name`.
    pub fn issue(&self, name: &str, sans: &[String]) -> Result<Identity, TlsError> {
        let key = KeyPair::generate()?;
        let mut names = vec![CLUSTER_SAN.to_string()];
        names.extend(sans.iter().filter(|s| s.as_str() != CLUSTER_SAN).cloned());
        let mut params = CertificateParams::new(names)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "raftkit");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
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
        })
    }
}

/// What a node (or client) presents and trusts: its certificate chain and
/// private key, and the cluster CA certificate as its only trust root.
pub struct Identity {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    chain_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key_pem: String,
    key: PrivateKeyDer<'static>,
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
        }
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("chain_len", &self.chain.len())
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
    /// client certificate signed by the cluster CA, and offers both
    /// [`PEER_ALPN`] and [`CLIENT_ALPN`].
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let provider = crypto_provider();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone()).build()?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![PEER_ALPN.to_vec(), CLIENT_ALPN.to_vec()];
        Ok(config)
    }

    /// A rustls client configuration that trusts the cluster CA only,
    /// presents this identity and offers the ALPN protocol `alpn`.
    pub fn client_config(&self, alpn: &[u8]) -> Result<ClientConfig, TlsError> {
        let mut config = ClientConfig::builder_with_provider(crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }
}

/// Makes an ephemeral CA and one identity per name, for local clusters and
/// tests (nothing is written to disk). Each identity's common name is its
/// name.
pub fn dev_cluster<I, S>(names: I) -> Result<(ClusterCa, Vec<Identity>), TlsError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let ca = ClusterCa::generate("dev")?;
    let identities = names
        .into_iter()
        .map(|name| ca.issue(name.as_ref(), &[]))
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

fn write_file(path: &Path, data: &[u8], private: bool) -> Result<(), TlsError> {
    let io_err = |source| TlsError::Io {
        op: "write",
        path: path.to_path_buf(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(io_err)?;
    file.write_all(data).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
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
        let a = ca.issue("a", &["127.0.0.1".into()]).expect("issue a");
        let b = loaded.issue("b", &[]).expect("issue b");
        a.write_to(dir.path().join("nodes"), "a").expect("write a");
        let a2 = Identity::load(dir.path().join("nodes"), "a").expect("load a");
        assert_eq!(a2.cert_chain(), a.cert_chain());
        assert_eq!(a2.ca_cert(), ca.cert_der());
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
    fn dev_cluster_issues_one_identity_per_name() {
        let (_ca, ids) = dev_cluster(["a", "b", "c"]).expect("dev cluster");
        assert_eq!(ids.len(), 3);
    }
}
