//! Agents and apps in the embedded store: agents live in memory (heartbeats
//! never touch SQLite) and are written to the `agents` table when they
//! register or go offline; apps are read from SQLite on every lookup.

use std::collections::HashMap;

use async_trait::async_trait;
use gse_core::app_secret::SecretHash;
use gse_core::seams::{
    AgentRecord, AgentStore, AppRecord, AppStore, HeartbeatUpdate, KnownAgent, StoreError,
};
use gse_core::{AgentKey, AgentRef};
use rusqlite::{Connection, OptionalExtension, params};

use super::EmbeddedStore;

/// Agents by identity, and which identity each agent id resolves to.
///
/// An agent id resolves to the identity it registered last. The link admits
/// a registration only when its agent id is pinned to its identity (or
/// free), so an agent id moves to another identity only after its pin
/// moved (`agents release-pin`, a per-agent certificate); [`Mem::insert`]
/// returns such a move so that it is logged, never done silently.
#[derive(Default)]
pub(super) struct Mem {
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

pub(super) fn load(conn: &Connection) -> rusqlite::Result<Mem> {
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

#[async_trait]
impl AgentStore for EmbeddedStore {
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

    async fn mark_node_offline(&self, node_id: &str) -> Result<Vec<AgentKey>, StoreError> {
        let changed: Vec<AgentRecord> = {
            let mut mem = self.mem.write();
            mem.agents
                .values_mut()
                .filter(|r| r.alive && r.node_id == node_id)
                .map(|r| {
                    r.alive = false;
                    r.clone()
                })
                .collect()
        };
        let mut keys: Vec<AgentKey> = changed.iter().map(|r| r.key).collect();
        keys.sort();
        if !changed.is_empty() {
            self.with_db("marking a node's agents offline", move |c| {
                let tx = c.unchecked_transaction()?;
                for rec in &changed {
                    let json = serde_json::to_string(rec).expect("agent records always serialise");
                    tx.execute(
                        "INSERT OR REPLACE INTO agents (agent_key, agent_id, record) VALUES (?1, ?2, ?3)",
                        params![rec.key.to_string(), rec.agent_id, json],
                    )?;
                }
                tx.commit()
            })
            .await?;
        }
        Ok(keys)
    }

    async fn get_agents(&self, refs: &[AgentRef]) -> Result<Vec<Option<AgentRecord>>, StoreError> {
        let mem = self.mem.read();
        Ok(refs.iter().map(|r| mem.resolve(r).cloned()).collect())
    }

    async fn identify_agents(
        &self,
        refs: &[AgentRef],
    ) -> Result<Vec<Option<KnownAgent>>, StoreError> {
        let mem = self.mem.read();
        Ok(refs
            .iter()
            .map(|r| mem.resolve(r).map(KnownAgent::from))
            .collect())
    }

    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        Ok(self.mem.read().agents.values().cloned().collect())
    }
}

#[async_trait]
impl AppStore for EmbeddedStore {
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
}
