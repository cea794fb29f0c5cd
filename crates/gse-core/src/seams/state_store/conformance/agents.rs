//! Agents and apps.

use super::key;
use crate::identity::AgentRef;
use crate::seams::state_store::{
    AgentRecord, AgentStore, AppRecord, AppStore, HeartbeatUpdate, KnownAgent,
};

fn record(last: u8, agent_id: &str, node: &str, connected_at_ms: u64) -> AgentRecord {
    let k = key(201, last);
    AgentRecord {
        key: k,
        agent_id: agent_id.into(),
        version: "1.2.3".into(),
        hostname: format!("host-{last}"),
        os_type: "linux".into(),
        run_mode: 1,
        zone: "z1".into(),
        start_time_s: 1_700_000_000,
        node_id: node.into(),
        parent_ip: "127.0.0.1".into(),
        parent_port: 28668,
        peer_addr: format!("{}:40000", k.ip),
        alive: true,
        connected_at_ms,
        last_seen_ms: connected_at_ms,
        cpu_percent: 0.0,
        mem_bytes: 0,
        mem_percent: 0.0,
        p2p_addr: String::new(),
    }
}

async fn one(store: &dyn AgentStore, r: AgentRef) -> Option<AgentRecord> {
    store.get_agents(&[r]).await.unwrap().pop().unwrap()
}

/// `identify_agents` names exactly what `get_agents` finds.
async fn identified_as_found(store: &dyn AgentStore, refs: &[AgentRef]) {
    let found: Vec<Option<KnownAgent>> = store
        .get_agents(refs)
        .await
        .unwrap()
        .iter()
        .map(|r| r.as_ref().map(KnownAgent::from))
        .collect();
    assert_eq!(
        store.identify_agents(refs).await.unwrap(),
        found,
        "identify_agents({refs:?})"
    );
    assert_eq!(store.identify_agents(&[]).await.unwrap(), Vec::new());
}

/// Registration, lookup by either name, heartbeats, and offline marks
/// fenced by the holding connection.
pub async fn agents(store: &dyn AgentStore) {
    let a = record(1, "conf-agent-1", "n1", 10);
    store.upsert_agent(a.clone()).await.unwrap();

    // Both names, unknown ones as None, in the order asked.
    let got = store
        .get_agents(&[
            AgentRef::Id("conf-nobody".into()),
            AgentRef::Key(a.key),
            AgentRef::Id("conf-agent-1".into()),
            AgentRef::Key(key(201, 250)),
        ])
        .await
        .unwrap();
    assert_eq!(got, vec![None, Some(a.clone()), Some(a.clone()), None]);
    identified_as_found(
        store,
        &[
            AgentRef::Id("conf-nobody".into()),
            AgentRef::Key(a.key),
            AgentRef::Id("conf-agent-1".into()),
            AgentRef::Key(key(201, 250)),
        ],
    )
    .await;
    // Agent ids alone (as tasks name their targets) too.
    identified_as_found(
        store,
        &[
            AgentRef::Id("conf-agent-1".into()),
            AgentRef::Id("conf-nobody".into()),
            AgentRef::Id("conf-agent-1".into()),
        ],
    )
    .await;
    assert!(
        store.list_agents().await.unwrap().contains(&a),
        "a registered agent is listed"
    );

    // Heartbeats change only the load fields; unknown keys are ignored.
    let beat = HeartbeatUpdate {
        key: a.key,
        at_ms: 99,
        cpu_percent: 12.5,
        mem_bytes: 4096,
        mem_percent: 1.5,
    };
    let stray = HeartbeatUpdate {
        key: key(201, 251),
        ..beat.clone()
    };
    store.record_heartbeats(&[beat, stray]).await.unwrap();
    let beaten = one(store, AgentRef::Key(a.key)).await.unwrap();
    assert_eq!(
        (
            beaten.last_seen_ms,
            beaten.cpu_percent,
            beaten.mem_bytes,
            beaten.mem_percent
        ),
        (99, 12.5, 4096, 1.5),
        "the heartbeat is applied"
    );
    assert_eq!(beaten.hostname, a.hostname, "and nothing else changes");
    assert_eq!(
        one(store, AgentRef::Key(key(201, 251))).await,
        None,
        "a heartbeat never creates an agent"
    );
    store.record_heartbeats(&[]).await.unwrap();

    // Offline only by the connection that holds the record.
    store.mark_offline(a.key, "n2", 10).await.unwrap();
    assert!(
        one(store, AgentRef::Key(a.key)).await.unwrap().alive,
        "another node cannot"
    );
    store.mark_offline(a.key, "n1", 9).await.unwrap();
    assert!(
        one(store, AgentRef::Key(a.key)).await.unwrap().alive,
        "an older connection of the same node cannot"
    );
    // A reconnection on another node replaces the record; the old node's
    // late disconnect then changes nothing.
    let moved = record(1, "conf-agent-1", "n2", 20);
    store.upsert_agent(moved.clone()).await.unwrap();
    store.mark_offline(a.key, "n1", 10).await.unwrap();
    let now = one(store, AgentRef::Key(a.key)).await.unwrap();
    assert!(
        now.alive && now.node_id == "n2",
        "the late disconnect must not win: {now:?}"
    );
    store.mark_offline(a.key, "n2", 20).await.unwrap();
    let off = one(store, AgentRef::Key(a.key)).await.unwrap();
    assert!(!off.alive, "the holder takes it offline");
    assert_eq!(off.last_seen_ms, 20, "keeping its last-seen time");
    store.mark_offline(key(201, 252), "n1", 1).await.unwrap();

    // An agent id registering under another identity resolves there.
    let b = record(2, "conf-agent-1", "n1", 30);
    store.upsert_agent(b.clone()).await.unwrap();
    assert_eq!(
        one(store, AgentRef::Id("conf-agent-1".into()))
            .await
            .unwrap()
            .key,
        b.key,
        "the agent id follows its latest registration"
    );
    // And an identity re-registering with another agent id: the new id
    // resolves to it, the old one no longer does.
    let c = record(2, "conf-agent-2", "n1", 40);
    store.upsert_agent(c.clone()).await.unwrap();
    assert_eq!(
        one(store, AgentRef::Id("conf-agent-2".into())).await,
        Some(c.clone())
    );
    identified_as_found(
        store,
        &[
            AgentRef::Id("conf-agent-1".into()),
            AgentRef::Id("conf-agent-2".into()),
            AgentRef::Key(a.key),
            AgentRef::Key(c.key),
        ],
    )
    .await;
    let listed = store.list_agents().await.unwrap();
    assert_eq!(
        listed.iter().filter(|r| r.key.ip == b.key.ip).count(),
        1,
        "one record per identity"
    );

    // A dead node's agents go offline, and only its own: one that moved
    // to another node since stays with it.
    for (last, node) in [(11, "dead"), (12, "dead"), (13, "alive"), (14, "dead")] {
        let id = format!("conf-agent-{last}");
        store
            .upsert_agent(record(last, &id, node, 50))
            .await
            .unwrap();
    }
    store
        .upsert_agent(record(14, "conf-agent-14", "alive", 60))
        .await
        .unwrap();
    assert_eq!(
        store.mark_node_offline("dead").await.unwrap(),
        vec![key(201, 11), key(201, 12)]
    );
    for (last, alive) in [(11, false), (12, false), (13, true), (14, true)] {
        let rec = one(store, AgentRef::Key(key(201, last))).await.unwrap();
        assert_eq!(rec.alive, alive, "{rec:?}");
    }
    assert!(store.mark_node_offline("dead").await.unwrap().is_empty());
}

/// Apps: unknown is `None`; a put is seen at once and replaces the secret.
pub async fn apps(store: &dyn AppStore) {
    assert_eq!(store.get_app("conf-nobody").await.unwrap(), None);
    store
        .put_app(AppRecord::with_secret("conf-app", "first"))
        .await
        .unwrap();
    let app = store.get_app("conf-app").await.unwrap().expect("stored");
    assert!(app.secret_hash.verify("first") && !app.secret_hash.verify("second"));
    store
        .put_app(AppRecord::with_secret("conf-app", "second"))
        .await
        .unwrap();
    let app = store.get_app("conf-app").await.unwrap().expect("stored");
    assert!(
        app.secret_hash.verify("second") && !app.secret_hash.verify("first"),
        "a new secret replaces the old one at once"
    );
}
