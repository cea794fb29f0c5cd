//! Unit tests of identity pins: claims, releases, the upgrade seeding and
//! the agent-id index on an older pins table.

use gse_core::AgentRef;
use gse_core::seams::AgentRecord;
use gse_core::seams::state_store::prelude::*;

use super::*;
use crate::store::EmbeddedStore;

/// An agent record for store tests (also used by the embedded store's).
pub(crate) fn record(ip: &str, id: &str, connected_at_ms: u64) -> AgentRecord {
    AgentRecord {
        key: AgentKey::new(0, ip.parse().unwrap()),
        agent_id: id.into(),
        version: "1.0".into(),
        hostname: "h".into(),
        os_type: "linux".into(),
        run_mode: 1,
        zone: String::new(),
        start_time_s: 1,
        node_id: "n1".into(),
        parent_ip: "127.0.0.1".into(),
        parent_port: 28668,
        peer_addr: "127.0.0.1:5000".into(),
        alive: true,
        connected_at_ms,
        last_seen_ms: connected_at_ms,
        cpu_percent: 0.0,
        mem_bytes: 0,
        mem_percent: 0.0,
        p2p_addr: String::new(),
    }
}

fn pairs(pins: &[IdentityPin]) -> Vec<(String, &str, bool)> {
    pins.iter()
        .map(|p| (p.key.to_string(), p.agent_id.as_str(), p.by_certificate))
        .collect()
}

async fn resolves_to(store: &EmbeddedStore, agent_id: &str) -> String {
    let got = store
        .get_agents(&[AgentRef::Id(agent_id.into())])
        .await
        .unwrap();
    got[0].as_ref().unwrap().key.to_string()
}

#[tokio::test]
async fn an_upgraded_store_pins_the_agents_it_knew_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite");
    {
        let store = EmbeddedStore::open(&path).unwrap();
        // Agent id "a" was seen under two identities, .3 last (an
        // impostor or a changed IP: the latest registration wins).
        for rec in [
            record("10.0.0.3", "a", 20),
            record("10.0.0.1", "a", 10),
            record("10.0.0.2", "b", 10),
        ] {
            store.upsert_agent(rec).await.unwrap();
        }
        assert_eq!(resolves_to(&store, "a").await, "0:10.0.0.1");
    }
    // A store of a version without pins.
    Connection::open(&path)
        .unwrap()
        .execute_batch("DROP TABLE identity_pins;")
        .unwrap();
    let store = EmbeddedStore::open(&path).unwrap();
    let pins = store.list_identity_pins().await.unwrap();
    assert_eq!(
        pairs(&pins),
        vec![
            ("0:10.0.0.2".into(), "b", false),
            ("0:10.0.0.3".into(), "a", false)
        ]
    );
    assert_eq!(resolves_to(&store, "a").await, "0:10.0.0.3");
    let other = store.claim_identity(pin("10.0.0.2", "z", false)).await;
    assert_eq!(other.unwrap().pin.agent_id, "b");

    // Seeded once: a released pin stays released when the store reopens.
    store.release_identity(pins[0].key).await.unwrap();
    drop(store);
    let store = EmbeddedStore::open(&path).unwrap();
    let pins = store.list_identity_pins().await.unwrap();
    assert_eq!(pairs(&pins), vec![("0:10.0.0.3".into(), "a", false)]);
}

#[tokio::test]
async fn a_pin_table_from_before_the_agent_id_index_keeps_one_pin_per_agent_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(TABLE).unwrap();
        for (ip, id, ms, cert) in [
            ("10.0.0.1", "a", 5, false),
            ("10.0.0.2", "a", 3, false),
            ("10.0.0.3", "a", 9, true),
            ("10.0.0.4", "b", 7, false),
            ("10.0.0.5", "b", 4, false),
        ] {
            c.execute(
                "INSERT INTO identity_pins VALUES (?1, ?2, ?3, ?4)",
                params![format!("0:{ip}"), id, ms, cert],
            )
            .unwrap();
        }
    }
    let store = EmbeddedStore::open(&path).unwrap();
    let pins = store.list_identity_pins().await.unwrap();
    assert_eq!(
        pairs(&pins),
        vec![
            ("0:10.0.0.3".into(), "a", true),
            ("0:10.0.0.5".into(), "b", false)
        ]
    );
    // The index holds: a second identity for "b" is not pinned.
    let claimed = store.claim_identity(pin("10.0.0.6", "b", false)).await;
    let claimed = claimed.unwrap();
    assert!(!claimed.made);
    assert_eq!(claimed.pin.key.to_string(), "0:10.0.0.5");
}

fn pin(ip: &str, id: &str, by_certificate: bool) -> IdentityPin {
    IdentityPin {
        key: AgentKey::new(0, ip.parse().unwrap()),
        agent_id: id.into(),
        pinned_ms: 7,
        by_certificate,
    }
}

#[tokio::test]
async fn the_first_claim_wins_survives_reopen_and_is_released_by_another_handle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite");
    {
        let store = EmbeddedStore::open(&path).unwrap();
        let first = pin("10.0.0.1", "a", false);
        let made = store.claim_identity(first.clone()).await.unwrap();
        assert_eq!((made.pin, made.made), (first.clone(), true));
        let second = pin("10.0.0.1", "b", false);
        let held = store.claim_identity(second).await.unwrap();
        assert_eq!((held.pin, held.made), (first, false));
    }
    let store = EmbeddedStore::open(&path).unwrap();
    let b = pin("10.0.0.1", "b", false);
    assert_eq!(
        store.claim_identity(b.clone()).await.unwrap().pin.agent_id,
        "a"
    );

    // `gse-server agents release-pin` is another process on the same file.
    let cli = EmbeddedStore::open(&path).unwrap();
    let key = b.key;
    let released = cli.release_identity(key).await.unwrap().unwrap();
    assert_eq!(released.agent_id, "a");
    assert_eq!(cli.release_identity(key).await.unwrap(), None);
    assert_eq!(store.claim_identity(b.clone()).await.unwrap().pin, b);

    let by_cert = pin("10.0.0.1", "c", true);
    store.repin_identity(by_cert.clone()).await.unwrap();
    store
        .claim_identity(pin("10.0.0.2", "d", false))
        .await
        .unwrap();
    let all = cli.list_identity_pins().await.unwrap();
    assert_eq!(all, vec![by_cert, pin("10.0.0.2", "d", false)]);
}

#[tokio::test]
async fn after_a_restart_an_agent_id_resolves_to_its_pinned_identity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite");
    {
        let store = EmbeddedStore::open(&path).unwrap();
        // .1 registered later (a clock set back, or a stale record), but
        // the agent id is pinned to .2.
        store
            .upsert_agent(record("10.0.0.2", "a", 10))
            .await
            .unwrap();
        store
            .upsert_agent(record("10.0.0.1", "a", 30))
            .await
            .unwrap();
        store
            .claim_identity(pin("10.0.0.2", "a", false))
            .await
            .unwrap();
    }
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(resolves_to(&store, "a").await, "0:10.0.0.2");
}
