//! The embedded state store: memory for reads and heartbeats, SQLite for
//! what must survive a restart (agent identities and last state, apps, task
//! records and logs; the task tables are in [`super::tasks`], file
//! transfers in [`super::files`], identity pins in [`super::pins`], raised
//! `agent_lost` alarms in [`super::lost`]).
//!
//! Heartbeats never touch SQLite (thousands per second at scale); a record
//! is written when an agent registers or goes offline. SQLite calls run on
//! tokio's blocking pool behind one connection mutex; WAL with
//! `synchronous=NORMAL` keeps each write cheap. After a restart every agent
//! loads as offline until it reconnects.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use gse_core::app_secret::SecretHash;
use gse_core::seams::state_store::{
    EntryFailure, FileTransferRecord, IdentityPin, LogWindow, PinClaim, StoredTask, TaskWrites,
};
use gse_core::seams::{AgentRecord, AppRecord, HeartbeatUpdate, LostAlarm, StateStore, StoreError};
use gse_core::{AgentKey, AgentRef};
use parking_lot::RwLock;
use rusqlite::{Connection, OptionalExtension, params};

use super::routes::{self, Table};
use gse_core::seams::state_store::{ChannelRecord, NewId, StreamToRecord};

const BACKEND: &str = "embedded";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS agents (
    agent_key TEXT PRIMARY KEY,
    agent_id  TEXT NOT NULL,
    record    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS apps (
    app_code    TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL
);
";

/// Agents by identity, and which identity each agent id resolves to.
///
/// An agent id resolves to the identity it registered last. The link admits
/// a registration only when its agent id is pinned to its identity (or
/// free), so an agent id moves to another identity only after its pin
/// moved (`agents release-pin`, a per-agent certificate); [`Mem::insert`]
/// returns such a move so that it is logged, never done silently.
#[derive(Default)]
struct Mem {
    agents: HashMap<AgentKey, AgentRecord>,
    by_id: HashMap<String, AgentKey>,
}

impl Mem {
    /// Stores `rec` under its identity and resolves its agent id there;
    /// returns the identity the agent id resolved to before, when another.
    #[must_use]
    fn insert(&mut self, rec: AgentRecord) -> Option<AgentKey> {
        if let Some(old) = self.agents.get(&rec.key)
            && old.agent_id != rec.agent_id
            && self.by_id.get(&old.agent_id) == Some(&rec.key)
        {
            self.by_id.remove(&old.agent_id);
        }
        let moved_from = self
            .by_id
            .insert(rec.agent_id.clone(), rec.key)
            .filter(|was| *was != rec.key);
        self.agents.insert(rec.key, rec);
        moved_from
    }

    fn resolve(&self, r: &AgentRef) -> Option<&AgentRecord> {
        match r {
            AgentRef::Key(k) => self.agents.get(k),
            AgentRef::Id(id) => self.by_id.get(id).and_then(|k| self.agents.get(k)),
        }
    }
}

/// Memory + SQLite state store; see the module doc.
pub struct EmbeddedStore {
    mem: RwLock<Mem>,
    db: Arc<Mutex<Connection>>,
    path: PathBuf,
}

/// Why the embedded store could not open.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot open the embedded state store {path}: {source}; check that the directory is writable and no other gse-server uses it"
)]
pub struct OpenError {
    path: PathBuf,
    source: rusqlite::Error,
}

fn backend_err(doing: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::Backend {
        backend: BACKEND,
        doing,
        message: e.to_string(),
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store at `path` and loads it.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let open_err = |source| OpenError {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                open_err(rusqlite::Error::InvalidPath(PathBuf::from(format!(
                    "{}: {e}",
                    dir.display()
                ))))
            })?;
        }
        // 0600 before SQLite opens it: its -wal and -shm files take the
        // database file's mode, so none of them is ever readable by others.
        // A store made by an older version may be 0644: close it (and its
        // WAL files) to others as well.
        gse_core::private_files::ensure_private_file(path)
            .and_then(|()| close_store_files(path))
            .map_err(|e| {
                open_err(rusqlite::Error::InvalidPath(PathBuf::from(format!(
                    "{}: {e}",
                    path.display()
                ))))
            })?;
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        migrate_plain_secrets(&conn).map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        conn.execute_batch(super::tasks::SCHEMA).map_err(open_err)?;
        conn.execute_batch(super::files::SCHEMA).map_err(open_err)?;
        conn.execute_batch(super::routes::SCHEMA)
            .map_err(open_err)?;
        conn.execute_batch(super::lost::SCHEMA).map_err(open_err)?;
        super::pins::create(&conn).map_err(open_err)?;
        let mem = load(&conn).map_err(open_err)?;
        Ok(EmbeddedStore {
            mem: RwLock::new(mem),
            db: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the SQLite connection on the blocking pool.
    async fn with_db<T: Send + 'static>(
        &self,
        doing: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let conn = db.lock().unwrap_or_else(|e| e.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Backend {
            backend: BACKEND,
            doing,
            message: e.to_string(),
        })?
        .map_err(backend_err(doing))
    }

    async fn persist_agent(&self, rec: AgentRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(&rec).expect("agent records always serialise");
        self.with_db("saving an agent", move |c| {
            c.execute(
                "INSERT OR REPLACE INTO agents (agent_key, agent_id, record) VALUES (?1, ?2, ?3)",
                params![rec.key.to_string(), rec.agent_id, json],
            )
            .map(|_| ())
        })
        .await
    }
}

fn load(conn: &Connection) -> rusqlite::Result<Mem> {
    let mut records = Vec::new();
    let mut stmt = conn.prepare("SELECT record FROM agents")?;
    let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
    for json in rows {
        match serde_json::from_str::<AgentRecord>(&json?) {
            Ok(rec) => records.push(rec),
            Err(e) => {
                tracing::warn!(error = %e, "skipping an unreadable agent record in the embedded store")
            }
        }
    }
    // An agent id known under several identities resolves to the one it is
    // pinned to, else to the one it registered last: those go in last.
    let pinned: HashMap<String, AgentKey> = super::pins::list(conn)?
        .into_iter()
        .map(|p| (p.agent_id, p.key))
        .collect();
    records.sort_by_key(|r| {
        let here = pinned.get(&r.agent_id) == Some(&r.key);
        (here, r.connected_at_ms, r.key)
    });
    let mut mem = Mem::default();
    for mut rec in records {
        // Nobody is connected to a node that just started.
        rec.alive = false;
        let _ = mem.insert(rec);
    }
    Ok(mem)
}

/// Makes the store file and its `-wal`/`-shm` companions 0600 where they
/// exist and others could read them.
fn close_store_files(path: &Path) -> std::io::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        if gse_core::private_files::exposure(&file, "the state store").is_some() {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
                tracing::warn!(file = %file.display(), "the state store was readable by other users; made it 0600");
            }
        }
    }
    Ok(())
}

/// An app row as a record; `None` (with a warning) when its hash is unusable.
fn app_record(app_code: String, hash: &str) -> Option<AppRecord> {
    match SecretHash::parse(hash) {
        Ok(secret_hash) => Some(AppRecord {
            app_code,
            secret_hash,
        }),
        Err(e) => {
            tracing::warn!(app_code, error = %e, "ignoring an app whose stored secret hash is unusable; register it again with `gse-server apps add`");
            None
        }
    }
}

/// Stores of earlier versions kept app secrets in plain text
/// (`apps.app_secret`): hash each one and rename the column, in one
/// transaction, so no plain secret survives the upgrade.
fn migrate_plain_secrets(conn: &Connection) -> rusqlite::Result<()> {
    let has_plain_column = conn
        .prepare("SELECT 1 FROM pragma_table_info('apps') WHERE name = 'app_secret'")?
        .exists([])?;
    if !has_plain_column {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    let rows: Vec<(String, String)> = tx
        .prepare("SELECT app_code, app_secret FROM apps")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (code, secret) in &rows {
        let hash = match SecretHash::parse(secret) {
            Ok(already) => already,
            Err(_) => SecretHash::hash(secret),
        };
        tx.execute(
            "UPDATE apps SET app_secret = ?1 WHERE app_code = ?2",
            params![hash.as_str(), code],
        )?;
    }
    tx.execute_batch("ALTER TABLE apps RENAME COLUMN app_secret TO secret_hash")?;
    tx.commit()?;
    // The old values may linger in free pages: rewrite the file (in WAL
    // mode VACUUM writes into the WAL), then fold the WAL into it and empty it.
    conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")?;
    tracing::info!(
        apps = rows.len(),
        "replaced the plain-text app secrets of an older state store by salted hashes"
    );
    Ok(())
}

#[async_trait]
impl StateStore for EmbeddedStore {
    fn kind(&self) -> &'static str {
        BACKEND
    }

    async fn upsert_agent(&self, record: AgentRecord) -> Result<(), StoreError> {
        let moved_from = self.mem.write().insert(record.clone());
        if let Some(from) = moved_from {
            tracing::warn!(agent_id = record.agent_id, from = %from, to = %record.key, "agent id now resolves to another identity: its pin moved there (released, or a per-agent certificate); tasks for this agent id go to the new identity");
        }
        self.persist_agent(record).await
    }

    async fn record_heartbeats(&self, beats: &[HeartbeatUpdate]) -> Result<(), StoreError> {
        let mut mem = self.mem.write();
        for b in beats {
            if let Some(rec) = mem.agents.get_mut(&b.key) {
                rec.last_seen_ms = b.at_ms;
                rec.cpu_percent = b.cpu_percent;
                rec.mem_bytes = b.mem_bytes;
                rec.mem_percent = b.mem_percent;
            }
        }
        Ok(())
    }

    async fn mark_offline(
        &self,
        key: AgentKey,
        node_id: &str,
        connected_at_ms: u64,
    ) -> Result<(), StoreError> {
        let changed = {
            let mut mem = self.mem.write();
            match mem.agents.get_mut(&key) {
                Some(rec)
                    if rec.alive
                        && rec.node_id == node_id
                        && rec.connected_at_ms == connected_at_ms =>
                {
                    rec.alive = false;
                    Some(rec.clone())
                }
                _ => None,
            }
        };
        match changed {
            Some(rec) => self.persist_agent(rec).await,
            None => Ok(()),
        }
    }

    async fn get_agents(&self, refs: &[AgentRef]) -> Result<Vec<Option<AgentRecord>>, StoreError> {
        let mem = self.mem.read();
        Ok(refs.iter().map(|r| mem.resolve(r).cloned()).collect())
    }

    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        Ok(self.mem.read().agents.values().cloned().collect())
    }

    async fn get_app(&self, app_code: &str) -> Result<Option<AppRecord>, StoreError> {
        // Always from SQLite: `gse-server apps add` may add an app or give
        // it a new secret while this node runs, and the old secret must stop
        // working at once. A point query; the API's VerifiedSecrets keeps
        // the expensive hash check off the hot path.
        let code = app_code.to_string();
        let found = self
            .with_db("looking up an app", move |c| {
                c.query_row(
                    "SELECT secret_hash FROM apps WHERE app_code = ?1",
                    [&code],
                    |row| row.get::<_, String>(0),
                )
                .optional()
                .map(|hash| hash.and_then(|h| app_record(code, &h)))
            })
            .await?;
        Ok(found)
    }

    async fn put_app(&self, app: AppRecord) -> Result<(), StoreError> {
        self.with_db("saving an app", move |c| {
            c.execute(
                "INSERT OR REPLACE INTO apps (app_code, secret_hash) VALUES (?1, ?2)",
                params![app.app_code, app.secret_hash.as_str()],
            )
            .map(|_| ())
        })
        .await
    }

    async fn write_tasks(&self, writes: Arc<TaskWrites>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.with_db("saving task records", move |c| {
            super::tasks::write(c, &writes)
        })
        .await
    }

    async fn get_task(&self, task_id: &str) -> Result<Option<StoredTask>, StoreError> {
        let id = task_id.to_string();
        self.with_db("reading a task", move |c| super::tasks::get(c, &id))
            .await
    }

    async fn read_task_logs(
        &self,
        task_id: &str,
        windows: &[LogWindow],
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let id = task_id.to_string();
        let windows = windows.to_vec();
        self.with_db("reading task logs", move |c| {
            super::tasks::read_logs(c, &id, &windows)
        })
        .await
    }

    async fn fail_unfinished_tasks(
        &self,
        node_id: &str,
        failure: EntryFailure,
    ) -> Result<u64, StoreError> {
        let node = node_id.to_string();
        self.with_db("closing unfinished task entries", move |c| {
            super::tasks::fail_unfinished(c, &node, &failure)
        })
        .await
    }

    async fn prune_tasks(&self, created_before_ms: u64) -> Result<u64, StoreError> {
        self.with_db("pruning old tasks", move |c| {
            super::tasks::prune(c, created_before_ms)
        })
        .await
    }

    async fn write_file_transfers(
        &self,
        transfers: Arc<Vec<FileTransferRecord>>,
    ) -> Result<(), StoreError> {
        if transfers.is_empty() {
            return Ok(());
        }
        self.with_db("saving file transfers", move |c| {
            super::files::write(c, &transfers)
        })
        .await
    }

    async fn get_file_transfer(
        &self,
        task_id: &str,
    ) -> Result<Option<FileTransferRecord>, StoreError> {
        let id = task_id.to_string();
        self.with_db("reading a file transfer", move |c| {
            super::files::get(c, &id)
        })
        .await
    }

    async fn fail_unfinished_file_transfers(
        &self,
        node_id: &str,
        failure: EntryFailure,
    ) -> Result<u64, StoreError> {
        let node = node_id.to_string();
        self.with_db("closing unfinished file transfers", move |c| {
            super::files::fail_unfinished(c, &node, &failure)
        })
        .await
    }

    async fn prune_file_transfers(&self, created_before_ms: u64) -> Result<u64, StoreError> {
        self.with_db("pruning old file transfers", move |c| {
            super::files::prune(c, created_before_ms)
        })
        .await
    }

    async fn insert_stream_to(
        &self,
        record: StreamToRecord,
        id: NewId,
    ) -> Result<Option<u32>, StoreError> {
        self.with_db("adding a stream_to", move |c| {
            routes::insert(c, Table::StreamTos, &record.plat_name, &record.spec, id)
        })
        .await
    }

    async fn replace_stream_to(&self, record: StreamToRecord) -> Result<bool, StoreError> {
        self.with_db("updating a stream_to", move |c| {
            let StreamToRecord {
                stream_to_id,
                plat_name,
                spec,
            } = &record;
            routes::replace(c, Table::StreamTos, *stream_to_id, plat_name, spec)
        })
        .await
    }

    async fn delete_stream_to(&self, stream_to_id: u32) -> Result<bool, StoreError> {
        self.with_db("deleting a stream_to", move |c| {
            routes::delete(c, Table::StreamTos, stream_to_id)
        })
        .await
    }

    async fn list_stream_tos(&self) -> Result<Vec<StreamToRecord>, StoreError> {
        let rows = self
            .with_db("listing stream_tos", |c| routes::list(c, Table::StreamTos))
            .await?;
        Ok(rows.into_iter().map(routes::stream_to).collect())
    }

    async fn insert_channel(
        &self,
        record: ChannelRecord,
        id: NewId,
    ) -> Result<Option<u32>, StoreError> {
        self.with_db("adding a data channel", move |c| {
            routes::insert(c, Table::Channels, &record.plat_name, &record.spec, id)
        })
        .await
    }

    async fn replace_channel(&self, record: ChannelRecord) -> Result<bool, StoreError> {
        self.with_db("updating a data channel", move |c| {
            let ChannelRecord {
                channel_id,
                plat_name,
                spec,
            } = &record;
            routes::replace(c, Table::Channels, *channel_id, plat_name, spec)
        })
        .await
    }

    async fn delete_channel(&self, channel_id: u32) -> Result<bool, StoreError> {
        self.with_db("deleting a data channel", move |c| {
            routes::delete(c, Table::Channels, channel_id)
        })
        .await
    }

    async fn list_channels(&self) -> Result<Vec<ChannelRecord>, StoreError> {
        let rows = self
            .with_db("listing data channels", |c| {
                routes::list(c, Table::Channels)
            })
            .await?;
        Ok(rows.into_iter().map(routes::channel).collect())
    }

    async fn claim_identity(&self, pin: IdentityPin) -> Result<PinClaim, StoreError> {
        self.with_db("claiming an identity", move |c| super::pins::claim(c, &pin))
            .await
    }

    async fn repin_identity(&self, pin: IdentityPin) -> Result<(), StoreError> {
        self.with_db("re-pinning an identity", move |c| {
            super::pins::repin(c, &pin)
        })
        .await
    }

    async fn release_identity(&self, key: AgentKey) -> Result<Option<IdentityPin>, StoreError> {
        self.with_db("releasing an identity pin", move |c| {
            super::pins::release(c, key)
        })
        .await
    }

    async fn list_identity_pins(&self) -> Result<Vec<IdentityPin>, StoreError> {
        self.with_db("listing identity pins", super::pins::list)
            .await
    }

    async fn put_lost_alarm(&self, alarm: LostAlarm) -> Result<(), StoreError> {
        self.with_db("saving a raised agent_lost alarm", move |c| {
            super::lost::put(c, &alarm)
        })
        .await
    }

    async fn clear_lost_alarm(&self, key: AgentKey, node_id: &str) -> Result<(), StoreError> {
        let node_id = node_id.to_string();
        self.with_db("clearing a raised agent_lost alarm", move |c| {
            super::lost::clear(c, key, &node_id)
        })
        .await
    }

    async fn list_lost_alarms(&self) -> Result<Vec<LostAlarm>, StoreError> {
        self.with_db("listing raised agent_lost alarms", super::lost::list)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ip: &str, id: &str) -> AgentRecord {
        crate::store::pins::tests::record(ip, id, 10)
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
            c.execute_batch(
                "CREATE TABLE apps (app_code TEXT PRIMARY KEY, app_secret TEXT NOT NULL);",
            )
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
}
