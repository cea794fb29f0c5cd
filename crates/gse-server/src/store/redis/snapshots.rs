//! System snapshots (D3) shared between the nodes of a cluster, so that the
//! API of any node serves the snapshots another node's DataServer received
//! (`P snap:<cloud:ip>`: a list, newest first, of `{at, s}` with the arrival
//! time in ms and the snapshot as the agent sent it; trimmed to the per-agent
//! cap and expiring one window after the last write).

use async_trait::async_trait;
use gse_core::AgentKey;
use gse_core::seams::StoreError;
use serde::{Deserialize, Serialize};

use super::{RedisStore, decode, encode, store_error};
use crate::role::data::snapshot::SharedSnapshots;

#[derive(Serialize, Deserialize)]
struct Stored {
    at: u64,
    s: String,
}

#[async_trait]
impl SharedSnapshots for RedisStore {
    async fn put_snapshots(
        &self,
        batch: &[(AgentKey, u64, String)],
        keep: usize,
        window_ms: u64,
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for (key, at, json) in batch {
            let k = self.key(format!("snap:{key}"));
            let value = Stored {
                at: *at,
                s: json.clone(),
            };
            pipe.cmd("LPUSH").arg(&k).arg(encode(&value)).ignore();
            pipe.cmd("LTRIM")
                .arg(&k)
                .arg(0)
                .arg(keep.saturating_sub(1))
                .ignore();
            pipe.cmd("PEXPIRE").arg(&k).arg(window_ms).ignore();
        }
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(store_error("saving system snapshots"))
    }

    async fn get_snapshots(&self, key: AgentKey, since_ms: u64) -> Result<Vec<String>, StoreError> {
        const DOING: &str = "reading system snapshots";
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(self.key(format!("snap:{key}")))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(DOING))?;
        let mut out = Vec::with_capacity(raw.len());
        // Stored newest first; answered oldest first.
        for json in raw.iter().rev() {
            let stored: Stored = decode(DOING, json)?;
            if stored.at >= since_ms {
                out.push(stored.s);
            }
        }
        Ok(out)
    }
}
