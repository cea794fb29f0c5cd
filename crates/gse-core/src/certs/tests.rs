//! Unit tests of certificate making and marks.

use super::*;
use crate::tls::{TlsFiles, client_config, server_config};

#[test]
fn init_makes_a_usable_set_and_refuses_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let cd = CertDir::new(dir.path());
    cd.init(&["gse.example".into()], 30).unwrap();
    for kind in [CertKind::Server, CertKind::Agent] {
        let p = cd.paths(kind, None);
        assert!(p.cert.exists() && p.key.exists(), "{kind:?}");
    }
    assert!(
        !cd.paths(CertKind::ApiClient, None).cert.exists(),
        "nothing uses it"
    );
    let server = cd.paths(CertKind::Server, None);
    let agent = cd.paths(CertKind::Agent, None);
    server_config(&TlsFiles::new(cd.ca_cert(), server.cert, server.key)).unwrap();
    client_config(&TlsFiles::new(cd.ca_cert(), agent.cert, agent.key)).unwrap();
    assert!(matches!(
        cd.issue(CertKind::Agent, None, &[], 30, false),
        Err(CertError::Exists { .. })
    ));
    cd.issue(
        CertKind::Proxy,
        Some("proxy-a"),
        &["10.1.1.1".into()],
        30,
        false,
    )
    .unwrap();
    assert!(dir.path().join("proxy-a.crt").exists());
}

fn mark_of(path: &std::path::Path) -> Option<CertMark> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(path).unwrap();
    read_mark(&der).unwrap()
}

#[test]
fn every_certificate_carries_its_role_and_a_per_agent_one_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let cd = CertDir::new(dir.path());
    cd.init(&[], 30).unwrap();
    cd.issue(CertKind::ApiClient, None, &[], 30, false).unwrap();
    for kind in [CertKind::Server, CertKind::Agent, CertKind::ApiClient] {
        assert_eq!(
            mark_of(&cd.paths(kind, None).cert),
            Some(CertMark::role(kind))
        );
    }
    let key: crate::AgentKey = "2:10.0.0.7".parse().unwrap();
    let plain = IdentityMark {
        key,
        agent_id: None,
    };
    let p = cd.issue_agent(plain.clone(), None, &[], 30, false).unwrap();
    assert_eq!(p.cert, dir.path().join("gse_agent_2_10.0.0.7.crt"));
    assert_eq!(mark_of(&p.cert), Some(CertMark::agent(key, None)));
    assert!(matches!(
        cd.issue_agent(plain, None, &[], 30, false),
        Err(CertError::Exists { .. })
    ));
    let bound = IdentityMark {
        key,
        agent_id: Some("abc123".into()),
    };
    let p = cd.issue_agent(bound, Some("h7"), &[], 30, false).unwrap();
    assert_eq!(
        mark_of(&p.cert).unwrap().uri(),
        "gse://agent/2/10.0.0.7/abc123"
    );
}
