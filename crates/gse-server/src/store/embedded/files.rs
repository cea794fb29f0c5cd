//! File transfers in the embedded store's SQLite file: one row per transfer,
//! its entries as one JSON document (the file role saves a transfer whole,
//! at most every few hundred milliseconds while it changes).
//!
//! `finished` is kept beside the document so that closing what a restart
//! left unfinished, and pruning, read only the rows they change.

use gse_core::seams::state_store::{EntryFailure, FileTransferRecord};
use rusqlite::{Connection, OptionalExtension, params};

use async_trait::async_trait;
use gse_core::seams::{StoreError, TransferStore};
use std::sync::Arc;

use super::EmbeddedStore;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS file_transfers (
    task_id    TEXT PRIMARY KEY,
    node_id    TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    finished   INTEGER NOT NULL,
    record     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS file_transfers_by_created ON file_transfers (created_ms);
";

fn to_json(record: &FileTransferRecord) -> String {
    serde_json::to_string(record).expect("file transfer records always serialise")
}

fn from_json(json: &str) -> rusqlite::Result<FileTransferRecord> {
    serde_json::from_str(json).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Saves every transfer of the batch in one transaction.
pub(super) fn write(conn: &Connection, transfers: &[FileTransferRecord]) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    {
        let mut upsert = tx.prepare_cached(
            "INSERT OR REPLACE INTO file_transfers (task_id, node_id, created_ms, finished, record) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for t in transfers {
            upsert.execute(params![
                t.task_id,
                t.node_id,
                t.created_ms as i64,
                t.is_finished(),
                to_json(t)
            ])?;
        }
    }
    tx.commit()
}

/// A transfer, or `None`.
pub(super) fn get(
    conn: &Connection,
    task_id: &str,
) -> rusqlite::Result<Option<FileTransferRecord>> {
    let json: Option<String> = conn
        .prepare_cached("SELECT record FROM file_transfers WHERE task_id = ?1")?
        .query_row([task_id], |row| row.get(0))
        .optional()?;
    json.map(|j| from_json(&j)).transpose()
}

/// Closes the unfinished entries of `node_id`'s transfers; returns how many.
pub(super) fn fail_unfinished(
    conn: &Connection,
    node_id: &str,
    failure: &EntryFailure,
) -> rusqlite::Result<u64> {
    let tx = conn.unchecked_transaction()?;
    let rows: Vec<(String, String)> = tx
        .prepare("SELECT task_id, record FROM file_transfers WHERE node_id = ?1 AND finished = 0")?
        .query_map([node_id], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut closed = 0u64;
    {
        let mut update =
            tx.prepare("UPDATE file_transfers SET finished = 1, record = ?2 WHERE task_id = ?1")?;
        for (task_id, json) in rows {
            let mut record = match from_json(&json) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(task_id, error = %e, "skipping an unreadable file transfer record in the embedded store");
                    continue;
                }
            };
            closed += record.close_unfinished(failure);
            update.execute(params![task_id, to_json(&record)])?;
        }
    }
    tx.commit()?;
    Ok(closed)
}

/// Deletes finished transfers created before `before_ms`; a transfer still
/// running is kept however old it is. Returns how many were deleted.
pub(super) fn prune(conn: &Connection, before_ms: u64) -> rusqlite::Result<u64> {
    let n = conn.execute(
        "DELETE FROM file_transfers WHERE created_ms < ?1 AND finished = 1",
        [before_ms as i64],
    )?;
    Ok(n as u64)
}

#[async_trait]
impl TransferStore for EmbeddedStore {
    async fn write_file_transfers(
        &self,
        transfers: Arc<Vec<FileTransferRecord>>,
    ) -> Result<(), StoreError> {
        if transfers.is_empty() {
            return Ok(());
        }
        self.with_db("saving file transfers", move |c| write(c, &transfers))
            .await
    }

    async fn get_file_transfer(
        &self,
        task_id: &str,
    ) -> Result<Option<FileTransferRecord>, StoreError> {
        let id = task_id.to_string();
        self.with_db("reading a file transfer", move |c| get(c, &id))
            .await
    }

    async fn fail_unfinished_file_transfers(
        &self,
        node_id: &str,
        failure: EntryFailure,
    ) -> Result<u64, StoreError> {
        let node = node_id.to_string();
        self.with_db("closing unfinished file transfers", move |c| {
            fail_unfinished(c, &node, &failure)
        })
        .await
    }

    async fn prune_file_transfers(&self, created_before_ms: u64) -> Result<u64, StoreError> {
        self.with_db("pruning old file transfers", move |c| {
            prune(c, created_before_ms)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use gse_core::seams::state_store::FileEntryRecord;
    use gse_core::task::{ERR_AGENT_DOWN, ERR_NONE, ERR_RUNNING};

    use super::*;

    fn entry(error_code: i32) -> FileEntryRecord {
        FileEntryRecord {
            mode: 1,
            dest_agent_id: "0:10.0.0.1".into(),
            status: if error_code == ERR_RUNNING { 1 } else { 2 },
            error_code,
            ..FileEntryRecord::default()
        }
    }

    fn record(task_id: &str, node_id: &str, created_ms: u64, codes: &[i32]) -> FileTransferRecord {
        FileTransferRecord {
            task_id: task_id.into(),
            node_id: node_id.into(),
            created_ms,
            entries: codes.iter().map(|&c| entry(c)).collect(),
        }
    }

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn
    }

    #[test]
    fn saved_whole_replaced_and_read_back() {
        let conn = db();
        let mut t = record("F:1", "n1", 10, &[ERR_RUNNING, ERR_RUNNING]);
        write(&conn, std::slice::from_ref(&t)).unwrap();
        t.entries[0] = entry(ERR_NONE);
        write(&conn, std::slice::from_ref(&t)).unwrap();
        assert_eq!(get(&conn, "F:1").unwrap().unwrap(), t);
        assert!(get(&conn, "F:2").unwrap().is_none());
    }

    #[test]
    fn a_restart_closes_only_this_nodes_unfinished_entries() {
        let conn = db();
        let mine = record("F:1", "n1", 10, &[ERR_NONE, ERR_RUNNING, ERR_RUNNING]);
        let theirs = record("F:2", "n2", 10, &[ERR_RUNNING]);
        write(&conn, &[mine, theirs]).unwrap();
        let failure = EntryFailure {
            status: 5,
            error_code: ERR_AGENT_DOWN,
            error_msg: "server restarted during the transfer".into(),
            end_ms: 99,
        };
        assert_eq!(fail_unfinished(&conn, "n1", &failure).unwrap(), 2);
        let got = get(&conn, "F:1").unwrap().unwrap();
        assert_eq!(got.entries[0].error_code, ERR_NONE);
        assert_eq!(got.entries[1].error_code, ERR_AGENT_DOWN);
        assert_eq!(got.entries[2].status_info, failure.error_msg);
        assert_eq!(got.entries[2].end_ms, 99);
        assert!(got.is_finished());
        assert!(!get(&conn, "F:2").unwrap().unwrap().is_finished());
        assert_eq!(fail_unfinished(&conn, "n1", &failure).unwrap(), 0);
    }

    #[test]
    fn prune_keeps_running_and_recent_transfers() {
        let conn = db();
        write(
            &conn,
            &[
                record("old-done", "n1", 10, &[ERR_NONE]),
                record("old-running", "n1", 10, &[ERR_RUNNING]),
                record("new-done", "n1", 1000, &[ERR_NONE]),
            ],
        )
        .unwrap();
        assert_eq!(prune(&conn, 500).unwrap(), 1);
        assert!(get(&conn, "old-done").unwrap().is_none());
        assert!(get(&conn, "old-running").unwrap().is_some());
        assert!(get(&conn, "new-done").unwrap().is_some());
    }
}
