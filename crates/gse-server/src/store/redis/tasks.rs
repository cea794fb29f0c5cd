//! Script task records in Redis (`P task:ID`, `P task:ID:entries`,
//! `P task:ID:log:T:A`, `P tasks:by_created`, `P tasks:node:N`; see the
//! module doc of [`super`]).
//!
//! A log is one string per entry and each chunk is written at its byte
//! offset (SETRANGE): sending a chunk again writes the same bytes at the
//! same place, so a batch retried after a failure changes nothing, and a
//! window is one GETRANGE.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use gse_core::seams::{
    EntryFailure, LogWindow, StoreError, StoredTask, TaskEntryState, TaskRecord, TaskStore,
    TaskWrites,
};
use gse_core::task::is_final;

use super::{RedisStore, decode, encode, store_error};

impl RedisStore {
    fn task_key(&self, task_id: &str) -> String {
        task_key(&self.prefix, task_id)
    }

    fn entries_key(&self, task_id: &str) -> String {
        entries_key(&self.prefix, task_id)
    }

    fn log_key(&self, task_id: &str, target: u32, atomic_id: u32) -> String {
        log_key(&self.prefix, task_id, target, atomic_id)
    }

    /// The entries of a task, by (target, atomic id).
    async fn task_entries(
        &self,
        task_id: &str,
        doing: &'static str,
    ) -> Result<Vec<TaskEntryState>, StoreError> {
        let raw: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.entries_key(task_id))
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(doing))?;
        let mut entries = raw
            .values()
            .map(|json| decode::<TaskEntryState>(doing, json))
            .collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|e| (e.target, e.atomic_id));
        Ok(entries)
    }
}

fn task_key(prefix: &str, task_id: &str) -> String {
    format!("{prefix}task:{task_id}")
}

fn entries_key(prefix: &str, task_id: &str) -> String {
    format!("{prefix}task:{task_id}:entries")
}

fn log_key(prefix: &str, task_id: &str, target: u32, atomic_id: u32) -> String {
    format!("{prefix}task:{task_id}:log:{target}:{atomic_id}")
}

fn entry_field(e: &TaskEntryState) -> String {
    format!("{}:{}", e.target, e.atomic_id)
}

/// One batch as one transaction.
fn task_pipeline(prefix: &str, writes: &TaskWrites) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic();
    for t in &writes.tasks {
        // NX: a record is written once; a batch sent again keeps it.
        pipe.cmd("SET")
            .arg(task_key(prefix, &t.task_id))
            .arg(encode(t))
            .arg("NX")
            .ignore();
        pipe.zadd(
            format!("{prefix}tasks:by_created"),
            &t.task_id,
            t.created_ms,
        )
        .ignore();
        pipe.sadd(format!("{prefix}tasks:node:{}", t.node_id), &t.task_id)
            .ignore();
    }
    for e in &writes.entries {
        pipe.hset(entries_key(prefix, &e.task_id), entry_field(e), encode(e))
            .ignore();
    }
    for c in &writes.logs {
        pipe.cmd("SETRANGE")
            .arg(log_key(prefix, &c.task_id, c.target, c.atomic_id))
            .arg(c.offset)
            .arg(c.data.as_bytes())
            .ignore();
    }
    pipe
}

#[async_trait]
impl TaskStore for RedisStore {
    async fn write_tasks(&self, writes: Arc<TaskWrites>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        // Encoding a batch (thousands of entries as JSON, then the
        // commands) is tens of milliseconds of CPU: off the async workers,
        // which meanwhile take agents' frames and answer polls.
        let prefix = self.prefix.clone();
        let pipe = tokio::task::spawn_blocking(move || task_pipeline(&prefix, &writes))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(store_error("saving task records"))
    }

    async fn get_task(&self, task_id: &str) -> Result<Option<StoredTask>, StoreError> {
        const DOING: &str = "reading a task";
        let json: Option<String> = redis::cmd("GET")
            .arg(self.task_key(task_id))
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(DOING))?;
        let Some(json) = json else { return Ok(None) };
        let record: TaskRecord = decode(DOING, &json)?;
        let entries = self.task_entries(task_id, DOING).await?;
        Ok(Some(StoredTask { record, entries }))
    }

    async fn read_task_logs(
        &self,
        task_id: &str,
        windows: &[LogWindow],
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut pipe = redis::pipe();
        let mut asked = Vec::with_capacity(windows.len());
        for w in windows {
            // GETRANGE's end is inclusive; an empty window asks nothing.
            if w.max_bytes == 0 {
                asked.push(false);
                continue;
            }
            asked.push(true);
            let end = w
                .offset
                .saturating_add(w.max_bytes - 1)
                .min(i64::MAX as u64);
            pipe.cmd("GETRANGE")
                .arg(self.log_key(task_id, w.target, w.atomic_id))
                .arg(w.offset.min(i64::MAX as u64))
                .arg(end);
        }
        let mut got: std::vec::IntoIter<Vec<u8>> = if pipe.is_empty() {
            Vec::new().into_iter()
        } else {
            pipe.query_async::<Vec<Vec<u8>>>(&mut self.conn())
                .await
                .map_err(store_error("reading task logs"))?
                .into_iter()
        };
        Ok(asked
            .into_iter()
            .map(|a| {
                if a {
                    got.next().unwrap_or_default()
                } else {
                    Vec::new()
                }
            })
            .collect())
    }

    async fn fail_unfinished_tasks(
        &self,
        node_id: &str,
        failure: EntryFailure,
    ) -> Result<u64, StoreError> {
        const DOING: &str = "closing unfinished task entries";
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key(format!("tasks:node:{node_id}")))
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(DOING))?;
        let mut closed = 0u64;
        for id in ids {
            let mut pipe = redis::pipe();
            for mut e in self.task_entries(&id, DOING).await? {
                if is_final(e.status, e.error_code) {
                    continue;
                }
                e.status = failure.status;
                e.error_code = failure.error_code;
                e.error_msg = failure.error_msg.clone();
                e.end_ms = failure.end_ms;
                pipe.hset(self.entries_key(&id), entry_field(&e), encode(&e))
                    .ignore();
                closed += 1;
            }
            if !pipe.is_empty() {
                pipe.query_async::<()>(&mut self.conn())
                    .await
                    .map_err(store_error(DOING))?;
            }
        }
        Ok(closed)
    }

    async fn prune_tasks(&self, created_before_ms: u64) -> Result<u64, StoreError> {
        const DOING: &str = "pruning old tasks";
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.key("tasks:by_created"))
            .arg("-inf")
            .arg(format!("({created_before_ms}"))
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(DOING))?;
        let mut pruned = 0;
        for id in ids {
            let Some(task) = self.get_task(&id).await? else {
                // Only the index is left (an interrupted prune).
                redis::cmd("ZREM")
                    .arg(self.key("tasks:by_created"))
                    .arg(&id)
                    .query_async::<()>(&mut self.conn())
                    .await
                    .map_err(store_error(DOING))?;
                continue;
            };
            if !task
                .entries
                .iter()
                .all(|e| is_final(e.status, e.error_code))
            {
                continue;
            }
            let rec = &task.record;
            let mut pipe = redis::pipe();
            pipe.atomic();
            pipe.del(self.task_key(&id)).ignore();
            pipe.del(self.entries_key(&id)).ignore();
            for target in 0..rec.targets.len() as u32 {
                for atomic_id in 0..rec.atomic_count {
                    pipe.del(self.log_key(&id, target, atomic_id)).ignore();
                }
            }
            pipe.zrem(self.key("tasks:by_created"), &id).ignore();
            pipe.srem(self.key(format!("tasks:node:{}", rec.node_id)), &id)
                .ignore();
            pipe.query_async::<()>(&mut self.conn())
                .await
                .map_err(store_error(DOING))?;
            pruned += 1;
        }
        Ok(pruned)
    }
}
