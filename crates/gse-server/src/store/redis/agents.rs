//! Agents and apps in Redis (`P agent:K`, `P agents`, `P agent_id:ID`,
//! `P agent_of:K`, `P app:CODE`; see the module doc of [`super`]).

use std::collections::HashMap;

use async_trait::async_trait;
use gse_core::app_secret::SecretHash;
use gse_core::seams::{
    AgentRecord, AgentStore, AppRecord, AppStore, HeartbeatUpdate, KnownAgent, StoreError,
};
use gse_core::{AgentKey, AgentRef};

use super::{BACKEND, HEARTBEATS_PER_CALL, RedisStore, decode, encode, store_error};

/// Registers an agent: replaces its hash, moves its agent id's mapping
/// here, and drops the mapping of the id it had before (if it still points
/// here); moves it to its node's set; keeps its id beside it as a string.
/// KEYS: agent hash, agents set, new id key, old-id key prefix, node-set
/// prefix, the key's id string.
/// ARGV: K, id, rec, node, conn_at, alive, seen, cpu, mem, memp.
const UPSERT: &str = r"
local old = redis.call('HMGET', KEYS[1], 'id', 'node')
if old[1] and old[1] ~= ARGV[2] then
  local oldkey = KEYS[4] .. old[1]
  if redis.call('GET', oldkey) == ARGV[1] then redis.call('DEL', oldkey) end
end
if old[2] and old[2] ~= ARGV[4] then redis.call('SREM', KEYS[5] .. old[2], ARGV[1]) end
redis.call('SADD', KEYS[5] .. ARGV[4], ARGV[1])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'rec', ARGV[3], 'node', ARGV[4], 'conn_at', ARGV[5],
  'alive', ARGV[6], 'seen', ARGV[7], 'cpu', ARGV[8], 'mem', ARGV[9], 'memp', ARGV[10])
redis.call('SET', KEYS[3], ARGV[1])
redis.call('SET', KEYS[6], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
";

/// Applies heartbeats to known agents only. KEYS: agent hashes; ARGV:
/// four values per key (seen, cpu, mem, memp).
const HEARTBEATS: &str = r"
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    local a = (i - 1) * 4
    redis.call('HSET', key, 'seen', ARGV[a + 1], 'cpu', ARGV[a + 2], 'mem', ARGV[a + 3], 'memp', ARGV[a + 4])
  end
end
return 1
";

/// Marks offline every agent node ARGV[2] holds; returns their keys.
/// ARGV[1] = prefix. Keys that moved to another node leave the set.
const NODE_OFFLINE: &str = r"
local p, node = ARGV[1], ARGV[2]
local set = p .. 'node_agents:' .. node
local gone = {}
for _, k in ipairs(redis.call('SMEMBERS', set)) do
  local v = redis.call('HMGET', p .. 'agent:' .. k, 'node', 'alive')
  if v[1] == node then
    if v[2] == '1' then
      redis.call('HSET', p .. 'agent:' .. k, 'alive', '0')
      table.insert(gone, k)
    end
  else
    redis.call('SREM', set, k)
  end
end
return gone
";

/// Marks an agent offline if the stored record is the connection that
/// ended. KEYS: agent hash; ARGV: node, conn_at.
const OFFLINE: &str = r"
local v = redis.call('HMGET', KEYS[1], 'alive', 'node', 'conn_at')
if v[1] == '1' and v[2] == ARGV[1] and v[3] == ARGV[2] then
  redis.call('HSET', KEYS[1], 'alive', '0')
  return 1
end
return 0
";

impl RedisStore {
    fn agent_key(&self, key: AgentKey) -> String {
        self.key(format!("agent:{key}"))
    }

    fn id_key(&self, agent_id: &str) -> String {
        self.key(format!("agent_id:{agent_id}"))
    }

    /// The string holding the agent id of key `key` (what `agent:K`'s
    /// `id` field holds), so that keys and ids resolve in one `MGET`.
    fn key_id_key(&self, key: AgentKey) -> String {
        self.key(format!("agent_of:{key}"))
    }

    /// The records of `keys` (`None` for unknown ones), one pipeline.
    async fn load_agents(
        &self,
        keys: &[AgentKey],
        doing: &'static str,
    ) -> Result<Vec<Option<AgentRecord>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.hgetall(self.agent_key(*k));
        }
        let hashes: Vec<HashMap<String, String>> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(doing))?;
        hashes.into_iter().map(|h| from_hash(doing, h)).collect()
    }
}

/// A record from its hash: the registered record with the live fields
/// over it; `None` for an empty (missing) hash.
fn from_hash(
    doing: &'static str,
    h: HashMap<String, String>,
) -> Result<Option<AgentRecord>, StoreError> {
    let Some(rec) = h.get("rec") else {
        return Ok(None);
    };
    let mut rec: AgentRecord = decode(doing, rec)?;
    let num = |field: &str| h.get(field).and_then(|v| v.parse::<f64>().ok());
    rec.alive = h.get("alive").is_some_and(|v| v == "1");
    if let Some(v) = num("seen") {
        rec.last_seen_ms = v as u64;
    }
    if let Some(v) = num("cpu") {
        rec.cpu_percent = v as f32;
    }
    if let Some(v) = num("mem") {
        rec.mem_bytes = v as u64;
    }
    if let Some(v) = num("memp") {
        rec.mem_percent = v as f32;
    }
    Ok(Some(rec))
}

#[async_trait]
impl AgentStore for RedisStore {
    async fn upsert_agent(&self, record: AgentRecord) -> Result<(), StoreError> {
        let k = record.key.to_string();
        redis::cmd("EVAL")
            .arg(UPSERT)
            .arg(6)
            .arg(self.agent_key(record.key))
            .arg(self.key("agents"))
            .arg(self.id_key(&record.agent_id))
            .arg(self.key("agent_id:"))
            .arg(self.key("node_agents:"))
            .arg(self.key_id_key(record.key))
            .arg(&k)
            .arg(&record.agent_id)
            .arg(encode(&record))
            .arg(&record.node_id)
            .arg(record.connected_at_ms)
            .arg(if record.alive { "1" } else { "0" })
            .arg(record.last_seen_ms)
            .arg(record.cpu_percent)
            .arg(record.mem_bytes)
            .arg(record.mem_percent)
            .query_async::<i64>(&mut self.conn())
            .await
            .map_err(store_error("saving an agent"))?;
        Ok(())
    }

    async fn record_heartbeats(&self, beats: &[HeartbeatUpdate]) -> Result<(), StoreError> {
        if beats.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for chunk in beats.chunks(HEARTBEATS_PER_CALL) {
            let cmd = pipe.cmd("EVAL").arg(HEARTBEATS).arg(chunk.len());
            for b in chunk {
                cmd.arg(self.agent_key(b.key));
            }
            for b in chunk {
                cmd.arg(b.at_ms)
                    .arg(b.cpu_percent)
                    .arg(b.mem_bytes)
                    .arg(b.mem_percent);
            }
            cmd.ignore();
        }
        pipe.query_async::<()>(&mut self.conn())
            .await
            .map_err(store_error("recording heartbeats"))
    }

    async fn mark_offline(
        &self,
        key: AgentKey,
        node_id: &str,
        connected_at_ms: u64,
    ) -> Result<(), StoreError> {
        redis::cmd("EVAL")
            .arg(OFFLINE)
            .arg(1)
            .arg(self.agent_key(key))
            .arg(node_id)
            .arg(connected_at_ms)
            .query_async::<i64>(&mut self.conn())
            .await
            .map_err(store_error("marking an agent offline"))?;
        Ok(())
    }

    async fn mark_node_offline(&self, node_id: &str) -> Result<Vec<AgentKey>, StoreError> {
        let gone: Vec<String> = redis::cmd("EVAL")
            .arg(NODE_OFFLINE)
            .arg(0)
            .arg(&self.prefix)
            .arg(node_id)
            .query_async(&mut self.conn())
            .await
            .map_err(store_error("marking a node's agents offline"))?;
        let mut keys: Vec<AgentKey> = gone.iter().filter_map(|k| k.parse().ok()).collect();
        keys.sort();
        Ok(keys)
    }

    async fn get_agents(&self, refs: &[AgentRef]) -> Result<Vec<Option<AgentRecord>>, StoreError> {
        const DOING: &str = "looking agents up";
        // Agent ids first resolve to keys (one MGET), then every record
        // loads in one pipeline.
        let ids: Vec<String> = refs
            .iter()
            .filter_map(|r| match r {
                AgentRef::Id(id) => Some(self.id_key(id)),
                AgentRef::Key(_) => None,
            })
            .collect();
        let mut resolved = if ids.is_empty() {
            Vec::new()
        } else {
            redis::cmd("MGET")
                .arg(&ids)
                .query_async::<Vec<Option<String>>>(&mut self.conn())
                .await
                .map_err(store_error(DOING))?
        }
        .into_iter();
        let keys: Vec<Option<AgentKey>> = refs
            .iter()
            .map(|r| match r {
                AgentRef::Key(k) => Some(*k),
                AgentRef::Id(_) => resolved.next().flatten().and_then(|k| k.parse().ok()),
            })
            .collect();
        let known: Vec<AgentKey> = keys.iter().flatten().copied().collect();
        let mut records = self.load_agents(&known, DOING).await?.into_iter();
        Ok(keys
            .iter()
            .map(|k| k.and_then(|_| records.next().flatten()))
            .collect())
    }

    async fn identify_agents(
        &self,
        refs: &[AgentRef],
    ) -> Result<Vec<Option<KnownAgent>>, StoreError> {
        const DOING: &str = "identifying agents";
        if refs.is_empty() {
            return Ok(Vec::new());
        }
        // An agent id's key (its mapping exists only while its record
        // does, see UPSERT), or a key's agent id: both are strings, so every
        // target of a task resolves in one MGET, a single reply to parse.
        let names: Vec<String> = refs
            .iter()
            .map(|r| match r {
                AgentRef::Id(id) => self.id_key(id),
                AgentRef::Key(k) => self.key_id_key(*k),
            })
            .collect();
        let mut found: Vec<Option<String>> = redis::cmd("MGET")
            .arg(names)
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(DOING))?;
        // Records registered by a build older than `agent_of:K` have only
        // the hash: look those keys up there (none once they re-register).
        let older: Vec<usize> = refs
            .iter()
            .zip(&found)
            .enumerate()
            .filter(|(_, (r, v))| matches!(r, AgentRef::Key(_)) && v.is_none())
            .map(|(i, _)| i)
            .collect();
        if !older.is_empty() {
            let mut pipe = redis::pipe();
            for &i in &older {
                if let AgentRef::Key(k) = &refs[i] {
                    pipe.hget(self.agent_key(*k), "id");
                }
            }
            let ids: Vec<Option<String>> = pipe
                .query_async(&mut self.conn())
                .await
                .map_err(store_error(DOING))?;
            for (i, id) in older.into_iter().zip(ids) {
                found[i] = id;
            }
        }
        Ok(refs
            .iter()
            .zip(found)
            .map(|(r, v)| match r {
                AgentRef::Id(id) => v.and_then(|k| k.parse().ok()).map(|key| KnownAgent {
                    key,
                    agent_id: id.clone(),
                }),
                AgentRef::Key(key) => v.map(|agent_id| KnownAgent {
                    key: *key,
                    agent_id,
                }),
            })
            .collect())
    }

    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        const DOING: &str = "listing agents";
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.key("agents"))
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(DOING))?;
        let keys: Vec<AgentKey> = members.iter().filter_map(|k| k.parse().ok()).collect();
        Ok(self
            .load_agents(&keys, DOING)
            .await?
            .into_iter()
            .flatten()
            .collect())
    }
}

#[async_trait]
impl AppStore for RedisStore {
    async fn get_app(&self, app_code: &str) -> Result<Option<AppRecord>, StoreError> {
        const DOING: &str = "looking up an app";
        let hash: Option<String> = redis::cmd("GET")
            .arg(self.key(format!("app:{app_code}")))
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(DOING))?;
        let Some(hash) = hash else { return Ok(None) };
        let secret_hash = SecretHash::parse(&hash)
            .map_err(|e| StoreError::corrupt(BACKEND, DOING, format!("app {app_code}: {e}")))?;
        Ok(Some(AppRecord {
            app_code: app_code.to_string(),
            secret_hash,
        }))
    }

    async fn put_app(&self, app: AppRecord) -> Result<(), StoreError> {
        redis::cmd("SET")
            .arg(self.key(format!("app:{}", app.app_code)))
            .arg(app.secret_hash.as_str())
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(store_error("saving an app"))
    }
}
