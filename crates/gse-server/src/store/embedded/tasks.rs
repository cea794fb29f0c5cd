//! Task records in the embedded store's SQLite file: the tables and the
//! statements behind the task methods of `StateStore`.
//!
//! Three tables: `tasks` (one row per task, its targets as JSON), one row per
//! (task, target, atomic task) in `task_entries`, and the logs as appended
//! chunks in `task_logs`, keyed by their byte offset. Appending a chunk never
//! rewrites earlier ones, so a long-running noisy task costs one insert per
//! flush, and a read at an offset touches only the chunks it needs.

use gse_core::seams::state_store::{
    EntryFailure, LogWindow, StoredTask, TaskEntryState, TaskRecord, TaskWrites,
};
use gse_core::task::{ERR_NONE, ERR_RUNNING, STATUS_DISPATCHED, STATUS_RUNNING};
use rusqlite::{Connection, OptionalExtension, params};

use async_trait::async_trait;
use gse_core::seams::{StoreError, TaskStore};
use std::sync::Arc;

use super::EmbeddedStore;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    task_id    TEXT PRIMARY KEY,
    node_id    TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    record     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_created ON tasks (created_ms);
CREATE TABLE IF NOT EXISTS task_entries (
    task_id    TEXT NOT NULL,
    target     INTEGER NOT NULL,
    atomic_id  INTEGER NOT NULL,
    status     INTEGER NOT NULL,
    error_code INTEGER NOT NULL,
    error_msg  TEXT NOT NULL,
    exit_code  INTEGER NOT NULL,
    start_ms   INTEGER NOT NULL,
    end_ms     INTEGER NOT NULL,
    PRIMARY KEY (task_id, target, atomic_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS task_logs (
    task_id   TEXT NOT NULL,
    target    INTEGER NOT NULL,
    atomic_id INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL,
    data      BLOB NOT NULL,
    PRIMARY KEY (task_id, target, atomic_id, byte_offset)
) WITHOUT ROWID;
";

/// Applies one batch in one transaction.
pub(super) fn write(conn: &Connection, writes: &TaskWrites) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    {
        let mut insert_task = tx.prepare_cached(
            "INSERT OR IGNORE INTO tasks (task_id, node_id, created_ms, record) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for task in &writes.tasks {
            let json = serde_json::to_string(task).expect("task records always serialise");
            insert_task.execute(params![
                task.task_id,
                task.node_id,
                task.created_ms as i64,
                json
            ])?;
        }
        let mut upsert_entry = tx.prepare_cached(
            "INSERT OR REPLACE INTO task_entries \
             (task_id, target, atomic_id, status, error_code, error_msg, exit_code, start_ms, end_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for e in &writes.entries {
            upsert_entry.execute(params![
                e.task_id,
                e.target,
                e.atomic_id,
                e.status,
                e.error_code,
                e.error_msg,
                e.exit_code,
                e.start_ms as i64,
                e.end_ms as i64
            ])?;
        }
        let mut insert_log = tx.prepare_cached(
            // REPLACE: a chunk sent again after a write that reported a
            // failure but committed starts at the same offset and holds at
            // least the same bytes; keeping the shorter one would leave a gap.
            "INSERT OR REPLACE INTO task_logs (task_id, target, atomic_id, byte_offset, data) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for chunk in &writes.logs {
            insert_log.execute(params![
                chunk.task_id,
                chunk.target,
                chunk.atomic_id,
                chunk.offset as i64,
                chunk.data.as_bytes()
            ])?;
        }
    }
    tx.commit()
}

/// A task's record and entries, or `None`.
pub(super) fn get(conn: &Connection, task_id: &str) -> rusqlite::Result<Option<StoredTask>> {
    let json: Option<String> = conn
        .prepare_cached("SELECT record FROM tasks WHERE task_id = ?1")?
        .query_row([task_id], |row| row.get(0))
        .optional()?;
    let Some(json) = json else { return Ok(None) };
    let record: TaskRecord = serde_json::from_str(&json).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let mut stmt = conn.prepare_cached(
        "SELECT target, atomic_id, status, error_code, error_msg, exit_code, start_ms, end_ms \
         FROM task_entries WHERE task_id = ?1 ORDER BY target, atomic_id",
    )?;
    let entries = stmt
        .query_map([task_id], |row| {
            Ok(TaskEntryState {
                task_id: task_id.to_string(),
                target: row.get(0)?,
                atomic_id: row.get(1)?,
                status: row.get(2)?,
                error_code: row.get(3)?,
                error_msg: row.get(4)?,
                exit_code: row.get(5)?,
                start_ms: row.get::<_, i64>(6)? as u64,
                end_ms: row.get::<_, i64>(7)? as u64,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(StoredTask { record, entries }))
}

/// The bytes of each window, assembled from the chunks that overlap it.
pub(super) fn read_logs(
    conn: &Connection,
    task_id: &str,
    windows: &[LogWindow],
) -> rusqlite::Result<Vec<Vec<u8>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT byte_offset, data FROM task_logs \
         WHERE task_id = ?1 AND target = ?2 AND atomic_id = ?3 \
           AND byte_offset < ?5 AND byte_offset + length(data) > ?4 \
         ORDER BY byte_offset",
    )?;
    let mut out = Vec::with_capacity(windows.len());
    for w in windows {
        let start = w.offset;
        let end = w.offset.saturating_add(w.max_bytes);
        let mut bytes = Vec::new();
        let mut rows = stmt.query(params![
            task_id,
            w.target,
            w.atomic_id,
            start as i64,
            end.min(i64::MAX as u64) as i64
        ])?;
        while let Some(row) = rows.next()? {
            let offset = row.get::<_, i64>(0)? as u64;
            let data: Vec<u8> = row.get(1)?;
            // Chunks are contiguous; stop at a gap rather than misplace bytes.
            if offset > start + bytes.len() as u64 {
                break;
            }
            let from = (start + bytes.len() as u64 - offset) as usize;
            let want = (end - start) as usize - bytes.len();
            let to = data.len().min(from + want);
            if from < to {
                bytes.extend_from_slice(&data[from..to]);
            }
        }
        out.push(bytes);
    }
    Ok(out)
}

/// Closes the unfinished entries of `node_id`'s tasks.
pub(super) fn fail_unfinished(
    conn: &Connection,
    node_id: &str,
    failure: &EntryFailure,
) -> rusqlite::Result<u64> {
    let n = conn.execute(
        "UPDATE task_entries SET status = ?1, error_code = ?2, error_msg = ?3, end_ms = ?4 \
         WHERE status IN (?6, ?7) AND error_code IN (?8, ?9) \
           AND task_id IN (SELECT task_id FROM tasks WHERE node_id = ?5)",
        params![
            failure.status,
            failure.error_code,
            failure.error_msg,
            failure.end_ms as i64,
            node_id,
            STATUS_DISPATCHED,
            STATUS_RUNNING,
            ERR_NONE,
            ERR_RUNNING
        ],
    )?;
    Ok(n as u64)
}

/// Deletes tasks created before `before_ms` whose entries are all final,
/// with their entries and logs; a task still running is kept however old
/// it is. Also deletes entries and logs whose task has no record.
/// Returns how many tasks were deleted.
pub(super) fn prune(conn: &Connection, before_ms: u64) -> rusqlite::Result<u64> {
    let tx = conn.unchecked_transaction()?;
    let ids: Vec<String> = tx
        .prepare(
            "SELECT task_id FROM tasks t WHERE created_ms < ?1 AND NOT EXISTS ( \
               SELECT 1 FROM task_entries e WHERE e.task_id = t.task_id \
                 AND e.status IN (?2, ?3) AND e.error_code IN (?4, ?5))",
        )?
        .query_map(
            params![
                before_ms as i64,
                STATUS_DISPATCHED,
                STATUS_RUNNING,
                ERR_NONE,
                ERR_RUNNING
            ],
            |row| row.get(0),
        )?
        .collect::<rusqlite::Result<_>>()?;
    {
        let mut logs = tx.prepare("DELETE FROM task_logs WHERE task_id = ?1")?;
        let mut entries = tx.prepare("DELETE FROM task_entries WHERE task_id = ?1")?;
        let mut tasks = tx.prepare("DELETE FROM tasks WHERE task_id = ?1")?;
        for id in &ids {
            logs.execute([id])?;
            entries.execute([id])?;
            tasks.execute([id])?;
        }
    }
    // Rows whose task record is gone (a batch dropped after the store
    // failed for long, or an interrupted older prune).
    for table in ["task_logs", "task_entries"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE task_id NOT IN (SELECT task_id FROM tasks)"),
            [],
        )?;
    }
    tx.commit()?;
    Ok(ids.len() as u64)
}

#[async_trait]
impl TaskStore for EmbeddedStore {
    async fn write_tasks(&self, writes: Arc<TaskWrites>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.with_db("saving task records", move |c| write(c, &writes))
            .await
    }

    async fn get_task(&self, task_id: &str) -> Result<Option<StoredTask>, StoreError> {
        let id = task_id.to_string();
        self.with_db("reading a task", move |c| get(c, &id)).await
    }

    async fn read_task_logs(
        &self,
        task_id: &str,
        windows: &[LogWindow],
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let id = task_id.to_string();
        let windows = windows.to_vec();
        self.with_db("reading task logs", move |c| read_logs(c, &id, &windows))
            .await
    }

    async fn fail_unfinished_tasks(
        &self,
        node_id: &str,
        failure: EntryFailure,
    ) -> Result<u64, StoreError> {
        let node = node_id.to_string();
        self.with_db("closing unfinished task entries", move |c| {
            fail_unfinished(c, &node, &failure)
        })
        .await
    }

    async fn prune_tasks(&self, created_before_ms: u64) -> Result<u64, StoreError> {
        self.with_db("pruning old tasks", move |c| prune(c, created_before_ms))
            .await
    }
}

#[cfg(test)]
mod tests {
    use gse_core::seams::state_store::{TaskLogChunk, TaskTarget};
    use gse_core::task::{ERR_AGENT_DOWN, STATUS_FAILED, STATUS_SUCCESS};

    use super::*;

    fn record(task_id: &str, node_id: &str, created_ms: u64) -> TaskRecord {
        TaskRecord {
            task_id: task_id.into(),
            node_id: node_id.into(),
            created_ms,
            tag: "t".into(),
            atomic_count: 1,
            targets: vec![TaskTarget {
                bk_agent_id: "0:10.0.0.1".into(),
                bk_container_id: String::new(),
                agent_key: "0:10.0.0.1".into(),
                agent_id: "a1".into(),
            }],
        }
    }

    fn entry(task_id: &str, status: i32, error_code: i32) -> TaskEntryState {
        TaskEntryState {
            task_id: task_id.into(),
            target: 0,
            atomic_id: 0,
            status,
            error_code,
            error_msg: String::new(),
            exit_code: 0,
            start_ms: 1,
            end_ms: 0,
        }
    }

    fn chunk(task_id: &str, offset: u64, data: &str) -> TaskLogChunk {
        TaskLogChunk {
            task_id: task_id.into(),
            target: 0,
            atomic_id: 0,
            offset,
            data: data.into(),
        }
    }

    fn open() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn
    }

    #[test]
    fn windows_span_chunks_and_batches_are_idempotent() {
        let conn = open();
        let writes = TaskWrites {
            tasks: vec![record("t1", "n1", 10)],
            entries: vec![entry("t1", 1, 115)],
            logs: vec![chunk("t1", 0, "hello "), chunk("t1", 6, "wide 世界\n")],
        };
        write(&conn, &writes).unwrap();
        write(&conn, &writes).unwrap();
        let window = |offset, max_bytes| LogWindow {
            target: 0,
            atomic_id: 0,
            offset,
            max_bytes,
        };
        let got = read_logs(&conn, "t1", &[window(0, 100), window(4, 5), window(50, 5)]).unwrap();
        assert_eq!(got[0], "hello wide 世界\n".as_bytes());
        assert_eq!(got[1], b"o wid");
        assert!(got[2].is_empty());
        let task = get(&conn, "t1").unwrap().unwrap();
        assert_eq!(task.record, record("t1", "n1", 10));
        assert_eq!(task.entries, [entry("t1", 1, 115)]);
        assert!(get(&conn, "nope").unwrap().is_none());
    }

    #[test]
    fn only_the_nodes_unfinished_entries_are_closed_and_pruning_takes_everything() {
        let conn = open();
        let writes = TaskWrites {
            tasks: vec![
                record("a", "n1", 10),
                record("b", "n1", 20),
                record("c", "n2", 30),
            ],
            entries: vec![
                entry("a", 1, 115),
                entry("b", STATUS_SUCCESS, 0),
                entry("c", 0, 115),
            ],
            logs: vec![chunk("a", 0, "x")],
        };
        write(&conn, &writes).unwrap();
        let failure = EntryFailure {
            status: STATUS_FAILED,
            error_code: ERR_AGENT_DOWN,
            error_msg: "server restarted during the task".into(),
            end_ms: 99,
        };
        assert_eq!(fail_unfinished(&conn, "n1", &failure).unwrap(), 1);
        let a = &get(&conn, "a").unwrap().unwrap().entries[0];
        assert_eq!(
            (a.status, a.error_code, a.end_ms),
            (STATUS_FAILED, ERR_AGENT_DOWN, 99)
        );
        assert_eq!(get(&conn, "c").unwrap().unwrap().entries[0].status, 0);

        assert_eq!(prune(&conn, 25).unwrap(), 2);
        assert!(get(&conn, "a").unwrap().is_none());
        let logs: i64 = conn
            .query_row("SELECT count(*) FROM task_logs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(logs, 0);
        assert!(get(&conn, "c").unwrap().is_some());
    }

    #[test]
    fn pruning_keeps_unfinished_tasks_and_drops_orphan_rows() {
        let conn = open();
        let writes = TaskWrites {
            tasks: vec![record("running", "n1", 10), record("queued", "n1", 10)],
            entries: vec![
                entry("running", 1, 115),
                entry("queued", 0, 115),
                entry("ghost", STATUS_SUCCESS, 0),
            ],
            logs: vec![chunk("running", 0, "x"), chunk("ghost", 0, "y")],
        };
        write(&conn, &writes).unwrap();
        let count = |table: &str| -> i64 {
            conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(prune(&conn, 1_000).unwrap(), 0);
        assert!(get(&conn, "running").unwrap().is_some());
        assert!(get(&conn, "queued").unwrap().is_some());
        assert_eq!((count("task_entries"), count("task_logs")), (2, 1));

        write(
            &conn,
            &TaskWrites {
                entries: vec![entry("running", STATUS_FAILED, ERR_AGENT_DOWN)],
                ..TaskWrites::default()
            },
        )
        .unwrap();
        assert_eq!(prune(&conn, 1_000).unwrap(), 1);
        assert!(get(&conn, "running").unwrap().is_none());
        assert_eq!((count("task_entries"), count("task_logs")), (1, 0));
    }
}
