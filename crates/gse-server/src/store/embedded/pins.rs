//! Identity pins (issue 9) in the embedded store's SQLite file: one row per
//! pinned `cloud_id:ip`, and at most one per agent id (a unique index), so
//! a pin binds both ways: the identity to its agent id and the agent id to
//! its identity. Deleting the row frees both.
//!
//! Never cached in memory: `gse-server agents release-pin` changes the file
//! while the node runs, and a registration reads the row anyway (a few
//! microseconds; registrations are rare next to heartbeats). Every call
//! runs under the store's one connection mutex, so a claim's read and
//! insert are one step for this process; the release command only deletes.
//!
//! [`create`] makes the table. Made in a store that already knows agents
//! (an upgrade from a version without pins), it is seeded from them in the
//! same transaction, so nobody registering first after the upgrade takes
//! an existing identity or agent id ([`seeds`]). A table from before the
//! agent-id index keeps one pin per agent id ([`second_claims`]).

use std::collections::HashMap;

use gse_core::AgentKey;
use gse_core::seams::state_store::{IdentityPin, PinClaim};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};

use async_trait::async_trait;
use gse_core::seams::{PinStore, StoreError};

use super::EmbeddedStore;

const TABLE: &str = "
CREATE TABLE IF NOT EXISTS identity_pins (
    agent_key      TEXT PRIMARY KEY,
    agent_id       TEXT NOT NULL,
    pinned_ms      INTEGER NOT NULL,
    by_certificate INTEGER NOT NULL
);
";

const AGENT_ID_INDEX: &str =
    "CREATE UNIQUE INDEX IF NOT EXISTS identity_pins_agent_id ON identity_pins (agent_id);";

const COLUMNS: &str = "agent_key, agent_id, pinned_ms, by_certificate";

/// Creates the pins table and its agent-id index; a new table in a store
/// with agents is seeded from them. One immediate transaction, so two
/// processes opening the store at once do not both migrate it.
pub(super) fn create(conn: &Connection) -> rusqlite::Result<()> {
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let table_existed = exists(&tx, "table", "identity_pins")?;
    let index_existed = exists(&tx, "index", "identity_pins_agent_id")?;
    tx.execute_batch(TABLE)?;
    if !table_existed {
        seed_from_agents(&tx)?;
    } else if !index_existed {
        drop_second_claims(&tx)?;
    }
    tx.execute_batch(AGENT_ID_INDEX)?;
    tx.commit()
}

fn exists(conn: &Connection, kind: &str, name: &str) -> rusqlite::Result<bool> {
    conn.prepare("SELECT 1 FROM sqlite_master WHERE type = ?1 AND name = ?2")?
        .exists([kind, name])
}

/// An agent the store knew before it had pins.
#[derive(Debug)]
struct Known {
    key: AgentKey,
    agent_id: String,
    /// Its latest registration, unix ms; 0 if its record is unreadable.
    connected_at_ms: u64,
}

/// Pins every agent the store knows to its identity, as if each had
/// claimed it; see [`seeds`].
fn seed_from_agents(tx: &Connection) -> rusqlite::Result<()> {
    let (pinned, left) = seeds(known_agents(tx)?);
    let now = gse_core::now_ms();
    for k in &pinned {
        tx.execute(
            &format!("INSERT INTO identity_pins ({COLUMNS}) VALUES (?1, ?2, ?3, 0)"),
            params![k.key.to_string(), k.agent_id, now as i64],
        )?;
    }
    for (k, kept) in &left {
        tracing::warn!(agent = %k.key, agent_id = k.agent_id, pinned = %kept, "an older store knew this agent id under several identities; it is pinned to the one it registered last, this one is left unpinned (check with `gse-server agents pins`)");
    }
    if !pinned.is_empty() {
        tracing::info!(
            pins = pinned.len(),
            "pinned the identities and agent ids of an older state store's agents"
        );
    }
    Ok(())
}

/// Every agent row; a row whose identity cannot be read is skipped.
fn known_agents(tx: &Connection) -> rusqlite::Result<Vec<Known>> {
    let mut stmt = tx.prepare("SELECT agent_key, agent_id, record FROM agents")?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get(1)?,
            row.get::<_, String>(2)?,
        ))
    })?;
    let mut known = Vec::new();
    for row in rows {
        let (key, agent_id, record) = row?;
        let Ok(key) = key.parse::<AgentKey>() else {
            tracing::warn!(
                agent = key,
                "not pinning an agent row whose identity cannot be read"
            );
            continue;
        };
        let connected_at_ms = serde_json::from_str::<serde_json::Value>(&record)
            .ok()
            .and_then(|v| v["connected_at_ms"].as_u64())
            .unwrap_or(0);
        known.push(Known {
            key,
            agent_id,
            connected_at_ms,
        });
    }
    Ok(known)
}

/// The pins to seed from `known`, and the agents left out with the
/// identity their agent id went to: an agent id known under several
/// identities is pinned to the one it registered last (where it most
/// likely is now).
fn seeds(mut known: Vec<Known>) -> (Vec<Known>, Vec<(Known, AgentKey)>) {
    known.sort_by(|a, b| (b.connected_at_ms, a.key).cmp(&(a.connected_at_ms, b.key)));
    let mut taken: HashMap<String, AgentKey> = HashMap::new();
    let (mut pinned, mut left) = (Vec::new(), Vec::new());
    for k in known {
        match taken.get(&k.agent_id) {
            Some(kept) => left.push((k, *kept)),
            None => {
                taken.insert(k.agent_id.clone(), k.key);
                pinned.push(k);
            }
        }
    }
    (pinned, left)
}

/// A table from before the agent-id index may pin one agent id to several
/// identities; all but one are dropped (see [`second_claims`]).
fn drop_second_claims(tx: &Connection) -> rusqlite::Result<()> {
    for (pin, kept) in second_claims(list(tx)?) {
        tx.execute(
            "DELETE FROM identity_pins WHERE agent_key = ?1",
            [pin.key.to_string()],
        )?;
        tracing::warn!(agent = %pin.key, agent_id = pin.agent_id, pinned = %kept, "dropped a second pin of one agent id: an agent id is pinned to one identity now, the one a per-agent certificate pinned or else the oldest");
    }
    Ok(())
}

/// The pins to drop so that each agent id keeps one, with the identity it
/// keeps: a certificate's pin first, then the oldest.
fn second_claims(mut pins: Vec<IdentityPin>) -> Vec<(IdentityPin, AgentKey)> {
    pins.sort_by_key(|p| (!p.by_certificate, p.pinned_ms, p.key));
    let mut kept: HashMap<String, AgentKey> = HashMap::new();
    let mut dropped = Vec::new();
    for p in pins {
        match kept.get(&p.agent_id) {
            Some(key) => dropped.push((p, *key)),
            None => {
                kept.insert(p.agent_id.clone(), p.key);
            }
        }
    }
    dropped
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<IdentityPin> {
    let key: String = row.get(0)?;
    let key: AgentKey = key.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(IdentityPin {
        key,
        agent_id: row.get(1)?,
        pinned_ms: row.get::<_, i64>(2)? as u64,
        by_certificate: row.get(3)?,
    })
}

fn get(conn: &Connection, key: AgentKey) -> rusqlite::Result<Option<IdentityPin>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM identity_pins WHERE agent_key = ?1"),
        [key.to_string()],
        from_row,
    )
    .optional()
}

fn get_by_agent_id(conn: &Connection, agent_id: &str) -> rusqlite::Result<Option<IdentityPin>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM identity_pins WHERE agent_id = ?1"),
        [agent_id],
        from_row,
    )
    .optional()
}

/// The pin standing in the way of (or holding) `pin`: the agent id's pin
/// on another identity first, else the identity's own pin.
fn standing(conn: &Connection, pin: &IdentityPin) -> rusqlite::Result<Option<IdentityPin>> {
    match get_by_agent_id(conn, &pin.agent_id)? {
        Some(elsewhere) if elsewhere.key != pin.key => Ok(Some(elsewhere)),
        _ => get(conn, pin.key),
    }
}

/// The pin in force after claiming `pin` (see `StateStore::claim_identity`).
pub(super) fn claim(conn: &Connection, pin: &IdentityPin) -> rusqlite::Result<PinClaim> {
    if let Some(held) = standing(conn, pin)? {
        return Ok(PinClaim {
            pin: held,
            made: false,
        });
    }
    let made = conn.execute(
        &format!("INSERT OR IGNORE INTO identity_pins ({COLUMNS}) VALUES (?1, ?2, ?3, ?4)"),
        params![
            pin.key.to_string(),
            pin.agent_id,
            pin.pinned_ms as i64,
            pin.by_certificate
        ],
    )? == 1;
    let held = standing(conn, pin)?.unwrap_or_else(|| pin.clone());
    Ok(PinClaim { pin: held, made })
}

/// Sets `pin`, replacing the identity's pin and the agent id's pin on
/// another identity (`OR REPLACE` deletes every row either unique key
/// conflicts with).
pub(super) fn repin(conn: &Connection, pin: &IdentityPin) -> rusqlite::Result<()> {
    conn.execute(
        &format!("INSERT OR REPLACE INTO identity_pins ({COLUMNS}) VALUES (?1, ?2, ?3, ?4)"),
        params![
            pin.key.to_string(),
            pin.agent_id,
            pin.pinned_ms as i64,
            pin.by_certificate
        ],
    )
    .map(|_| ())
}

/// Deletes the pin of `key`, which frees the identity and its agent id.
pub(super) fn release(conn: &Connection, key: AgentKey) -> rusqlite::Result<Option<IdentityPin>> {
    let held = get(conn, key)?;
    if held.is_some() {
        conn.execute(
            "DELETE FROM identity_pins WHERE agent_key = ?1",
            [key.to_string()],
        )?;
    }
    Ok(held)
}

pub(super) fn list(conn: &Connection) -> rusqlite::Result<Vec<IdentityPin>> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM identity_pins"))?;
    let mut pins = stmt
        .query_map([], from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    pins.sort_by_key(|p| p.key);
    Ok(pins)
}

#[async_trait]
impl PinStore for EmbeddedStore {
    async fn claim_identity(&self, pin: IdentityPin) -> Result<PinClaim, StoreError> {
        self.with_db("claiming an identity", move |c| claim(c, &pin))
            .await
    }

    async fn repin_identity(&self, pin: IdentityPin) -> Result<(), StoreError> {
        self.with_db("re-pinning an identity", move |c| repin(c, &pin))
            .await
    }

    async fn release_identity(&self, key: AgentKey) -> Result<Option<IdentityPin>, StoreError> {
        self.with_db("releasing an identity pin", move |c| release(c, key))
            .await
    }

    async fn list_identity_pins(&self) -> Result<Vec<IdentityPin>, StoreError> {
        self.with_db("listing identity pins", list).await
    }
}

#[cfg(test)]
pub(crate) mod tests;
