//! File transfers in Redis (`P transfer:ID`, `P transfers:by_created`,
//! `P transfers:node:N`; see the module doc of [`super`]): each saved whole
//! as one JSON document, as the file role writes it.

use std::sync::Arc;

use async_trait::async_trait;
use gse_core::seams::state_store::{EntryFailure, FileTransferRecord};
use gse_core::seams::{StoreError, TransferStore};

use super::{RedisStore, decode, encode, store_error};

impl RedisStore {
    fn transfer_key(&self, task_id: &str) -> String {
        self.key(format!("transfer:{task_id}"))
    }

    /// Saves transfers in one MULTI/EXEC with their indexes.
    async fn save_transfers(
        &self,
        transfers: &[FileTransferRecord],
        doing: &'static str,
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for t in transfers {
            pipe.set(self.transfer_key(&t.task_id), encode(t)).ignore();
            pipe.zadd(self.key("transfers:by_created"), &t.task_id, t.created_ms)
                .ignore();
            pipe.sadd(
                self.key(format!("transfers:node:{}", t.node_id)),
                &t.task_id,
            )
            .ignore();
        }
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(store_error(doing))
    }

    /// The stored transfers of `ids` (missing ones left out), one MGET.
    async fn load_transfers(
        &self,
        ids: &[String],
        doing: &'static str,
    ) -> Result<Vec<(String, Option<FileTransferRecord>)>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.transfer_key(id)).collect();
        let docs: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(doing))?;
        ids.iter()
            .zip(docs)
            .map(|(id, doc)| {
                let t = doc.map(|d| decode(doing, &d)).transpose()?;
                Ok((id.clone(), t))
            })
            .collect()
    }
}

#[async_trait]
impl TransferStore for RedisStore {
    async fn write_file_transfers(
        &self,
        transfers: Arc<Vec<FileTransferRecord>>,
    ) -> Result<(), StoreError> {
        if transfers.is_empty() {
            return Ok(());
        }
        self.save_transfers(&transfers, "saving file transfers")
            .await
    }

    async fn get_file_transfer(
        &self,
        task_id: &str,
    ) -> Result<Option<FileTransferRecord>, StoreError> {
        const DOING: &str = "reading a file transfer";
        let doc: Option<String> = redis::cmd("GET")
            .arg(self.transfer_key(task_id))
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(DOING))?;
        doc.map(|d| decode(DOING, &d)).transpose()
    }

    async fn fail_unfinished_file_transfers(
        &self,
        node_id: &str,
        failure: EntryFailure,
    ) -> Result<u64, StoreError> {
        const DOING: &str = "closing unfinished file transfers";
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key(format!("transfers:node:{node_id}")))
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(DOING))?;
        let mut closed = 0u64;
        let mut changed = Vec::new();
        for (_, t) in self.load_transfers(&ids, DOING).await? {
            let Some(mut t) = t else { continue };
            if t.is_finished() {
                continue;
            }
            closed += t.close_unfinished(&failure);
            changed.push(t);
        }
        if !changed.is_empty() {
            self.save_transfers(&changed, DOING).await?;
        }
        Ok(closed)
    }

    async fn prune_file_transfers(&self, created_before_ms: u64) -> Result<u64, StoreError> {
        const DOING: &str = "pruning old file transfers";
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.key("transfers:by_created"))
            .arg("-inf")
            .arg(format!("({created_before_ms}"))
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(DOING))?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut pruned = 0;
        for (id, t) in self.load_transfers(&ids, DOING).await? {
            match t {
                // A transfer still running is kept however old it is.
                Some(t) if !t.is_finished() => continue,
                Some(t) => {
                    pipe.del(self.transfer_key(&id)).ignore();
                    pipe.srem(self.key(format!("transfers:node:{}", t.node_id)), &id)
                        .ignore();
                    pruned += 1;
                }
                None => {}
            }
            pipe.zrem(self.key("transfers:by_created"), &id).ignore();
        }
        if !pipe.is_empty() {
            pipe.query_async::<()>(&mut self.conn())
                .await
                .map_err(store_error(DOING))?;
        }
        Ok(pruned)
    }
}
