//! Tests of writing identities and CAs to files (`tls.rs` is large: new
//! tests of it go here).

use super::*;

/// Found by review (stop 57, transport #4): a private key file was created
/// 0600, but one that existed already (made by other tooling under umask
/// 022, or copied) kept its mode when rewritten, and then held the new
/// private key readable by others. Every write of a key now sets 0600.
#[cfg(unix)]
#[test]
fn a_rewritten_key_file_is_made_private() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().expect("tempdir");
    let mode = |name: &str| {
        fs::metadata(dir.path().join(name))
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    };
    for name in ["ca.key", "a.key", "a.pem"] {
        fs::write(dir.path().join(name), "old").expect("pre-create");
        fs::set_permissions(dir.path().join(name), fs::Permissions::from_mode(0o644))
            .expect("chmod 0644");
    }
    let ca = ClusterCa::generate("test").expect("ca");
    ca.write_to(dir.path()).expect("write ca");
    let a = ca.issue_node("a", &["127.0.0.1".into()]).expect("issue a");
    a.write_to(dir.path(), "a").expect("write a");
    assert_eq!(mode("ca.key"), 0o600, "the rewritten CA key's mode");
    assert_eq!(mode("a.key"), 0o600, "the rewritten node key's mode");
    // Certificates are public: their mode is left as it was.
    assert_eq!(mode("a.pem"), 0o644, "a certificate's mode");
    // Both still load (the files were rewritten whole).
    assert_eq!(
        ClusterCa::load(dir.path()).expect("load ca").cert_der(),
        ca.cert_der()
    );
    assert_eq!(
        Identity::load(dir.path(), "a")
            .expect("load a")
            .cert_chain(),
        a.cert_chain()
    );
}
