use gse_core::seams::{AgentStore, AppRecord, AppStore, HeartbeatUpdate};
use gse_core::{AgentKey, AgentRef};

use super::*;

fn record(ip: &str, id: &str) -> AgentRecord {
    super::pins::tests::record(ip, id, 10)
}

#[tokio::test]
async fn identities_and_apps_survive_reopen_as_offline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite");
    {
        let store = EmbeddedStore::open(&path).unwrap();
        store
            .upsert_agent(record("10.0.0.1", "id-1"))
            .await
            .unwrap();
        store
            .put_app(AppRecord::with_secret("job", "s"))
            .await
            .unwrap();
        let beat = HeartbeatUpdate {
            key: AgentKey::new(0, "10.0.0.1".parse().unwrap()),
            at_ms: 99,
            cpu_percent: 1.0,
            mem_bytes: 5,
            mem_percent: 0.1,
        };
        store.record_heartbeats(&[beat]).await.unwrap();
        let got = store
            .get_agents(&[AgentRef::Id("id-1".into())])
            .await
            .unwrap();
        assert_eq!(got[0].as_ref().unwrap().last_seen_ms, 99);
    }
    let store = EmbeddedStore::open(&path).unwrap();
    let got = store
        .get_agents(&[AgentRef::parse("0:10.0.0.1").unwrap()])
        .await
        .unwrap();
    let rec = got[0].clone().unwrap();
    assert!(!rec.alive);
    assert_eq!(rec.agent_id, "id-1");
    let app = store.get_app("job").await.unwrap().unwrap();
    assert!(app.secret_hash.verify("s") && !app.secret_hash.verify("t"));
    assert!(store.get_app("nope").await.unwrap().is_none());
}

#[tokio::test]
async fn offline_only_by_the_holding_node_and_apps_seen_across_handles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite");
    let store = EmbeddedStore::open(&path).unwrap();
    let rec = record("10.0.0.2", "id-2");
    let key = rec.key;
    store.upsert_agent(rec).await.unwrap();
    store.mark_offline(key, "other-node", 10).await.unwrap();
    assert!(
        store.get_agents(&[AgentRef::Key(key)]).await.unwrap()[0]
            .as_ref()
            .unwrap()
            .alive
    );
    store.mark_offline(key, "n1", 10).await.unwrap();
    assert!(
        !store.get_agents(&[AgentRef::Key(key)]).await.unwrap()[0]
            .as_ref()
            .unwrap()
            .alive
    );

    // A later connection's record is not taken offline by the older
    // connection's disconnect arriving after it registered.
    let alive = |got: Vec<Option<AgentRecord>>| got[0].as_ref().unwrap().alive;
    let mut newer = record("10.0.0.2", "id-2");
    newer.connected_at_ms = 10;
    store.upsert_agent(newer.clone()).await.unwrap();
    newer.connected_at_ms = 20;
    store.upsert_agent(newer).await.unwrap();
    store.mark_offline(key, "n1", 10).await.unwrap();
    assert!(
        alive(store.get_agents(&[AgentRef::Key(key)]).await.unwrap()),
        "the old connection's late disconnect must not win"
    );
    store.mark_offline(key, "n1", 20).await.unwrap();
    assert!(!alive(
        store.get_agents(&[AgentRef::Key(key)]).await.unwrap()
    ));

    // A second handle (like `gse-server apps add`) adds an app; the first sees it.
    let other = EmbeddedStore::open(&path).unwrap();
    other
        .put_app(AppRecord::with_secret("late", "x"))
        .await
        .unwrap();
    assert!(store.get_app("late").await.unwrap().is_some());
}

#[cfg(unix)]
#[tokio::test]
async fn the_store_file_is_private_from_creation() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite");
    let store = EmbeddedStore::open(&path).unwrap();
    store
        .put_app(AppRecord::with_secret("a", "b"))
        .await
        .unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", p.display());
    }
}

#[tokio::test]
async fn plain_secrets_of_an_older_store_are_hashed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sqlite");
    let plain = "old-plain-secret-0123456789";
    {
        // As an older version left it: WAL mode, 0644.
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch("CREATE TABLE apps (app_code TEXT PRIMARY KEY, app_secret TEXT NOT NULL);")
            .unwrap();
        c.execute("INSERT INTO apps VALUES ('job', ?1)", [plain])
            .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let store = EmbeddedStore::open(&path).unwrap();
    let app = store.get_app("job").await.unwrap().expect("migrated app");
    assert!(app.secret_hash.verify(plain));
    // Checked while the store is still open: neither the file nor its
    // WAL may hold the old secret.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        assert!(
            !bytes.windows(plain.len()).any(|w| w == plain.as_bytes()),
            "{} still holds the plain secret",
            p.display()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} is {mode:o}", p.display());
        }
    }
    drop(store);
    // Opening again finds nothing to migrate.
    let store = EmbeddedStore::open(&path).unwrap();
    assert!(store.get_app("job").await.unwrap().is_some());
}

/// The state store contract, on a fresh embedded store.
#[tokio::test]
async fn passes_the_state_store_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("s.sqlite")).unwrap();
    gse_core::seams::state_store::conformance::all(&store).await;
}

/// SQLite's errors become kinds a caller can act on.
#[test]
fn sqlite_errors_map_to_actionable_kinds() {
    let failure = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
    for (err, kind) in [
        (
            failure(rusqlite::ffi::SQLITE_BUSY),
            StoreErrorKind::Unavailable,
        ),
        (
            failure(rusqlite::ffi::SQLITE_FULL),
            StoreErrorKind::Unavailable,
        ),
        (
            failure(rusqlite::ffi::SQLITE_CONSTRAINT),
            StoreErrorKind::Conflict,
        ),
        (
            failure(rusqlite::ffi::SQLITE_CORRUPT),
            StoreErrorKind::Corrupt,
        ),
        (
            failure(rusqlite::ffi::SQLITE_NOTADB),
            StoreErrorKind::Corrupt,
        ),
        (
            failure(rusqlite::ffi::SQLITE_TOOBIG),
            StoreErrorKind::Invalid,
        ),
        (
            failure(rusqlite::ffi::SQLITE_MISUSE),
            StoreErrorKind::Internal,
        ),
        (
            rusqlite::Error::QueryReturnedNoRows,
            StoreErrorKind::NotFound,
        ),
    ] {
        let e = store_error("testing")(err);
        assert_eq!(e.kind(), kind, "{e}");
        assert_eq!(e.is_retryable(), kind == StoreErrorKind::Unavailable);
    }
}
