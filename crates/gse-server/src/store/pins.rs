//! Identity pins (issue 9) in the embedded store's SQLite file: one row per
//! pinned `cloud_id:ip`.
//!
//! Never cached in memory: `gse-server agents release-pin` changes the file
//! while the node runs, and a registration reads the row anyway (a few
//! microseconds; registrations are rare next to heartbeats). Every call
//! runs under the store's one connection mutex, so a claim's read and
//! insert are one step for this process; the release command only deletes.

use gse_core::AgentKey;
use gse_core::seams::state_store::{IdentityPin, PinClaim};
use rusqlite::{Connection, OptionalExtension, Row, params};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS identity_pins (
    agent_key      TEXT PRIMARY KEY,
    agent_id       TEXT NOT NULL,
    pinned_ms      INTEGER NOT NULL,
    by_certificate INTEGER NOT NULL
);
";

const COLUMNS: &str = "agent_key, agent_id, pinned_ms, by_certificate";

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

/// The pin in force after claiming `pin` (see `StateStore::claim_identity`).
pub(super) fn claim(conn: &Connection, pin: &IdentityPin) -> rusqlite::Result<PinClaim> {
    if let Some(held) = get(conn, pin.key)? {
        return Ok(PinClaim {
            pin: held,
            made: false,
        });
    }
    let made = conn.execute(
        &format!(
            "INSERT INTO identity_pins ({COLUMNS}) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT(agent_key) DO NOTHING"
        ),
        params![
            pin.key.to_string(),
            pin.agent_id,
            pin.pinned_ms as i64,
            pin.by_certificate
        ],
    )? == 1;
    let held = get(conn, pin.key)?.unwrap_or_else(|| pin.clone());
    Ok(PinClaim { pin: held, made })
}

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

#[cfg(test)]
mod tests {
    use gse_core::seams::StateStore;

    use super::*;
    use crate::store::EmbeddedStore;

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
}
