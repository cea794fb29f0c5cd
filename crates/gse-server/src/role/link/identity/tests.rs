//! Identity claims (`gse_link::claim::admit`) against the pins of
//! the embedded store, and the link's alarm window.

use std::net::SocketAddr;

use gse_core::seams::state_store::prelude::*;
use gse_link::claim::Admitted;

use super::*;
use crate::store::EmbeddedStore;

const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);

async fn admit(store: &EmbeddedStore, claim: Claim<'_>) -> Result<Admitted, Refusal> {
    claim::admit(store, claim, PEER).await
}

fn key(ip: &str) -> AgentKey {
    AgentKey::new(0, ip.parse().unwrap())
}

fn claim<'a>(ip: &str, id: &'a str, cert: Option<(&str, Option<&str>)>) -> Claim<'a> {
    Claim {
        key: key(ip),
        agent_id: id,
        certificate: cert.map(|(ip, id)| IdentityMark {
            key: key(ip),
            agent_id: id.map(str::to_string),
        }),
    }
}

fn conflict(r: Result<Admitted, Refusal>) -> String {
    match r {
        Err(Refusal::Conflict(m)) => m,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn the_first_agent_id_pins_an_identity_and_a_second_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("s.sqlite")).unwrap();
    let ip = "10.0.0.1";
    assert_eq!(
        admit(&store, claim(ip, "a", None)).await,
        Ok(Admitted::Pinned)
    );
    assert_eq!(
        admit(&store, claim(ip, "a", None)).await,
        Ok(Admitted::Held)
    );
    let m = conflict(admit(&store, claim(ip, "b", None)).await);
    assert!(
        m.contains("is pinned to agent id a") && m.contains("agent id b"),
        "{m}"
    );
    assert!(m.contains("release-pin"), "{m}");

    // A per-agent certificate naming the identity outranks the pin...
    let cert = Some((ip, None));
    assert_eq!(
        admit(&store, claim(ip, "b", cert)).await,
        Ok(Admitted::Repinned { from: "a".into() })
    );
    // ...and after it, the shared certificate cannot claim it, even with
    // the right agent id.
    let m = conflict(admit(&store, claim(ip, "b", None)).await);
    assert!(m.contains("bound to a per-agent certificate"), "{m}");
    assert_eq!(
        admit(&store, claim(ip, "b", cert)).await,
        Ok(Admitted::Held)
    );
}

#[tokio::test]
async fn a_certificate_upgrades_the_pin_of_its_own_agent_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("s.sqlite")).unwrap();
    let ip = "10.0.0.3";
    admit(&store, claim(ip, "a", None)).await.unwrap();
    let cert = Some((ip, Some("a")));
    assert_eq!(
        admit(&store, claim(ip, "a", cert)).await,
        Ok(Admitted::Held)
    );
    let pins = store.list_identity_pins().await.unwrap();
    assert!(pins[0].by_certificate, "{pins:?}");
    // A mismatch is refused before the pin is looked at.
    let m = conflict(admit(&store, claim("10.0.0.4", "a", cert)).await);
    assert!(m.contains("issued for 0:10.0.0.3"), "{m}");
}

#[tokio::test]
async fn an_agent_id_is_pinned_to_its_identity_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("s.sqlite")).unwrap();
    admit(&store, claim("10.0.0.5", "a", None)).await.unwrap();

    // The shared certificate, a free identity, a pinned agent id.
    let m = conflict(admit(&store, claim("10.0.0.6", "a", None)).await);
    assert!(
        m.contains("agent id a is pinned to identity 0:10.0.0.5")
            && m.contains("claims it as 0:10.0.0.6")
            && m.contains("release-pin -c CONFIG --agent 0:10.0.0.5"),
        "{m}"
    );
    // A certificate naming only the identity does not move an agent id,
    // even onto an identity pinned to another one.
    admit(&store, claim("10.0.0.7", "b", None)).await.unwrap();
    for ip in ["10.0.0.6", "10.0.0.7"] {
        let m = conflict(admit(&store, claim(ip, "a", Some((ip, None)))).await);
        assert!(m.contains("only when it names it"), "{m}");
    }
    let pins = store.list_identity_pins().await.unwrap();
    let pairs: Vec<_> = pins.iter().map(|p| (p.key, p.agent_id.as_str())).collect();
    assert_eq!(pairs, vec![(key("10.0.0.5"), "a"), (key("10.0.0.7"), "b")]);

    // A certificate naming the identity and the agent id moves both pins.
    let cert = Some(("10.0.0.7", Some("a")));
    assert_eq!(
        admit(&store, claim("10.0.0.7", "a", cert)).await,
        Ok(Admitted::Moved {
            from: key("10.0.0.5")
        })
    );
    let pins = store.list_identity_pins().await.unwrap();
    assert_eq!(pins.len(), 1, "{pins:?}");
    assert_eq!(
        (pins[0].key, pins[0].by_certificate),
        (key("10.0.0.7"), true)
    );

    // Released, the agent id may pin another identity.
    store.release_identity(key("10.0.0.7")).await.unwrap();
    assert_eq!(
        admit(&store, claim("10.0.0.6", "a", None)).await,
        Ok(Admitted::Pinned)
    );
}

#[test]
fn one_alarm_per_conflict_per_window() {
    let alarms = ConflictAlarms::default();
    let k = key("10.0.0.1");
    assert!(alarms.due(k, "b", 1_000));
    assert!(!alarms.due(k, "b", 2_000));
    assert!(alarms.due(k, "c", 2_000));
    assert!(alarms.due(k, "b", 1_000 + REALARM_AFTER));
}
