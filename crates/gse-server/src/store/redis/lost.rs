//! Raised `agent_lost` alarms in Redis (`P lost`: K → `{node_id,
//! raised_ms}`; see the module doc of [`super`]).

use std::collections::HashMap;

use async_trait::async_trait;
use gse_core::AgentKey;
use gse_core::seams::{LostAlarm, LostAlarmStore, StoreError};
use serde::{Deserialize, Serialize};

use super::{BACKEND, RedisStore, decode, encode, store_error};

#[derive(Serialize, Deserialize)]
struct Stored {
    node_id: String,
    raised_ms: u64,
}

/// Deletes K's alarm only if node ARGV[2] raised it: the JSON is compared
/// by its node_id field (cjson is part of Redis' Lua).
const CLEAR: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and cjson.decode(v).node_id == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
";

#[async_trait]
impl LostAlarmStore for RedisStore {
    async fn put_lost_alarm(&self, alarm: LostAlarm) -> Result<(), StoreError> {
        let value = Stored {
            node_id: alarm.node_id,
            raised_ms: alarm.raised_ms,
        };
        redis::cmd("HSET")
            .arg(self.key("lost"))
            .arg(alarm.key.to_string())
            .arg(encode(&value))
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(store_error("saving a raised agent_lost alarm"))
    }

    async fn clear_lost_alarm(&self, key: AgentKey, node_id: &str) -> Result<(), StoreError> {
        redis::cmd("EVAL")
            .arg(CLEAR)
            .arg(1)
            .arg(self.key("lost"))
            .arg(key.to_string())
            .arg(node_id)
            .query_async::<i64>(&mut self.conn())
            .await
            .map_err(store_error("clearing a raised agent_lost alarm"))?;
        Ok(())
    }

    async fn list_lost_alarms(&self) -> Result<Vec<LostAlarm>, StoreError> {
        const DOING: &str = "listing raised agent_lost alarms";
        let raw: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.key("lost"))
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(DOING))?;
        raw.into_iter()
            .map(|(k, json)| {
                let key = k.parse::<AgentKey>().map_err(|e| {
                    StoreError::corrupt(BACKEND, DOING, format!("alarm agent {k:?}: {e}"))
                })?;
                let v: Stored = decode(DOING, &json)?;
                Ok(LostAlarm {
                    key,
                    node_id: v.node_id,
                    raised_ms: v.raised_ms,
                })
            })
            .collect()
    }
}
