//! Unit tests of what a hello may claim: its fields, its certificate, and
//! the decision against a pin in force. The claims against a real store's
//! pins are tested where the store is (gse-server `role/link/identity`).

use super::*;

fn key(ip: &str) -> AgentKey {
    AgentKey::new(0, ip.parse().unwrap())
}

fn pin(ip: &str, id: &str, by_certificate: bool) -> IdentityPin {
    IdentityPin {
        key: key(ip),
        agent_id: id.into(),
        pinned_ms: 0,
        by_certificate,
    }
}

#[test]
fn a_hello_claims_a_valid_agent_id_and_a_specified_ip() {
    assert_eq!(
        claimed_key("agent-1", 0, "10.0.0.1").unwrap().to_string(),
        "0:10.0.0.1"
    );
    let cases = [
        ("", 0, "10.0.0.1", "fix agent_id"),
        ("a b", 0, "10.0.0.1", "fix agent_id"),
        ("a", -1, "10.0.0.1", "cloud_id -1 is negative"),
        ("a", 0, "x", "identity_ip \"x\" is not an IP address"),
        ("a", 0, "0.0.0.0", "identity_ip 0.0.0.0 is unspecified"),
        ("a", 0, "::", "set identity_ip"),
    ];
    for (id, cloud, ip, says) in cases {
        let e = claimed_key(id, cloud, ip).unwrap_err().to_string();
        assert!(e.contains(says), "{id:?} {cloud} {ip:?}: {e}");
    }
}

#[test]
fn a_per_agent_certificate_claims_only_what_it_names() {
    let mark = IdentityMark {
        key: key("10.0.0.1"),
        agent_id: Some("a1".into()),
    };
    assert!(match_certificate(Some(&mark), key("10.0.0.1"), "a1").is_ok());
    let e = match_certificate(Some(&mark), key("10.0.0.2"), "a1").unwrap_err();
    assert!(
        e.contains(
            "issued for 0:10.0.0.1 with agent id a1, but it claims 0:10.0.0.2 with agent id a1"
        ),
        "{e}"
    );
    assert!(match_certificate(Some(&mark), key("10.0.0.1"), "b2").is_err());
    let any_id = IdentityMark {
        agent_id: None,
        ..mark
    };
    assert!(match_certificate(Some(&any_id), key("10.0.0.1"), "b2").is_ok());
    assert!(match_certificate(None, key("10.0.0.9"), "b2").is_ok());
}

#[test]
fn a_pin_is_held_by_its_agent_id_and_moved_only_by_a_certificate() {
    let held = pin("10.0.0.1", "a", false);
    assert_eq!(
        judge(&held, &pin("10.0.0.1", "a", false), false),
        Ok(Admitted::Held)
    );
    let Err(Refusal::Conflict(m)) = judge(&held, &pin("10.0.0.1", "b", false), false) else {
        panic!("another agent id is refused");
    };
    assert!(
        m.contains("is pinned to agent id a") && m.contains("release-pin"),
        "{m}"
    );
    assert_eq!(
        judge(&held, &pin("10.0.0.1", "b", true), false),
        Ok(Admitted::Repinned { from: "a".into() })
    );
    // Bound to a certificate, the identity takes no shared one.
    let bound = pin("10.0.0.1", "a", true);
    let Err(Refusal::Conflict(m)) = judge(&bound, &pin("10.0.0.1", "a", false), false) else {
        panic!("the shared certificate is refused");
    };
    assert!(m.contains("bound to a per-agent certificate"), "{m}");
}

#[test]
fn an_agent_id_pinned_elsewhere_moves_only_with_a_certificate_naming_it() {
    let held = pin("10.0.0.5", "a", false);
    let wanted = pin("10.0.0.6", "a", true);
    let Err(Refusal::Conflict(m)) = judge(&held, &wanted, false) else {
        panic!("a certificate naming only the identity does not move an agent id");
    };
    assert!(m.contains("only when it names it"), "{m}");
    assert_eq!(
        judge(&held, &wanted, true),
        Ok(Admitted::Moved {
            from: key("10.0.0.5")
        })
    );
    assert!(upgrade(
        &pin("10.0.0.1", "a", false),
        &pin("10.0.0.1", "a", true)
    ));
    assert!(!upgrade(
        &pin("10.0.0.1", "a", true),
        &pin("10.0.0.1", "a", true)
    ));
}
