//! Raised `agent_lost` alarms (K4) in the embedded store's SQLite file: one
//! row per agent whose loss a node alarmed and has not cleared. The alarm
//! role writes a row when it raises `agent_lost` and deletes it when the
//! agent is back (`agent_recovered`), so these writes are as rare as real
//! outages. A restarted node reads them to tell a loss it already alarmed
//! (not raised again; cleared when the agent returns) from one it must
//! still alarm (`role::alarm::restart`).

use gse_core::AgentKey;
use gse_core::seams::LostAlarm;
use rusqlite::{Connection, Row, params};

use async_trait::async_trait;
use gse_core::seams::{LostAlarmStore, StoreError};

use super::EmbeddedStore;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS lost_alarms (
    agent_key TEXT PRIMARY KEY,
    node_id   TEXT NOT NULL,
    raised_ms INTEGER NOT NULL
);
";

pub(super) fn put(conn: &Connection, alarm: &LostAlarm) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO lost_alarms (agent_key, node_id, raised_ms) VALUES (?1, ?2, ?3)",
        params![alarm.key.to_string(), alarm.node_id, alarm.raised_ms as i64],
    )
    .map(|_| ())
}

pub(super) fn clear(conn: &Connection, key: AgentKey, node_id: &str) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM lost_alarms WHERE agent_key = ?1 AND node_id = ?2",
        params![key.to_string(), node_id],
    )
    .map(|_| ())
}

/// Every row; one whose agent key cannot be read is skipped with a warning.
pub(super) fn list(conn: &Connection) -> rusqlite::Result<Vec<LostAlarm>> {
    let mut stmt = conn.prepare("SELECT agent_key, node_id, raised_ms FROM lost_alarms")?;
    let rows = stmt.query_map([], from_row)?;
    let mut alarms = Vec::new();
    for row in rows {
        let (key, node_id, raised_ms) = row?;
        match key.parse::<AgentKey>() {
            Ok(key) => alarms.push(LostAlarm {
                key,
                node_id,
                raised_ms,
            }),
            Err(e) => {
                tracing::warn!(agent = key, error = %e, "skipping a raised agent_lost alarm whose agent key cannot be read")
            }
        }
    }
    Ok(alarms)
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<(String, String, u64)> {
    Ok((row.get(0)?, row.get(1)?, row.get::<_, i64>(2)? as u64))
}

#[async_trait]
impl LostAlarmStore for EmbeddedStore {
    async fn put_lost_alarm(&self, alarm: LostAlarm) -> Result<(), StoreError> {
        self.with_db("saving a raised agent_lost alarm", move |c| put(c, &alarm))
            .await
    }

    async fn clear_lost_alarm(&self, key: AgentKey, node_id: &str) -> Result<(), StoreError> {
        let node_id = node_id.to_string();
        self.with_db("clearing a raised agent_lost alarm", move |c| {
            clear(c, key, &node_id)
        })
        .await
    }

    async fn list_lost_alarms(&self) -> Result<Vec<LostAlarm>, StoreError> {
        self.with_db("listing raised agent_lost alarms", list).await
    }
}

#[cfg(test)]
mod tests {
    use gse_core::seams::state_store::prelude::*;

    use crate::store::EmbeddedStore;

    use super::*;

    fn alarm(ip: &str, node_id: &str, raised_ms: u64) -> LostAlarm {
        LostAlarm {
            key: AgentKey::new(0, ip.parse().unwrap()),
            node_id: node_id.into(),
            raised_ms,
        }
    }

    #[tokio::test]
    async fn raised_alarms_survive_reopen_and_each_node_clears_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store
                .put_lost_alarm(alarm("10.0.0.1", "n1", 5))
                .await
                .unwrap();
            store
                .put_lost_alarm(alarm("10.0.0.2", "n1", 6))
                .await
                .unwrap();
            // Raised again (a later loss): replaces the row.
            store
                .put_lost_alarm(alarm("10.0.0.2", "n2", 7))
                .await
                .unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        let mut got = store.list_lost_alarms().await.unwrap();
        got.sort_by_key(|a| a.key);
        assert_eq!(
            got,
            [alarm("10.0.0.1", "n1", 5), alarm("10.0.0.2", "n2", 7)]
        );

        // n1 did not raise 10.0.0.2's: its clear leaves it.
        let key2 = AgentKey::new(0, "10.0.0.2".parse().unwrap());
        store.clear_lost_alarm(key2, "n1").await.unwrap();
        store
            .clear_lost_alarm(AgentKey::new(0, "10.0.0.1".parse().unwrap()), "n1")
            .await
            .unwrap();
        assert_eq!(
            store.list_lost_alarms().await.unwrap(),
            [alarm("10.0.0.2", "n2", 7)]
        );
    }
}
