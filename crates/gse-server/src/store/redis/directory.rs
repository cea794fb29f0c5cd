//! [`RedisDirectory`]: the cluster's agent directory
//! (`gse_core::seams::AgentDirectory`) in the Redis of the state store.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P dir:K` | hash | the current claim: `node`, `via` (JSON list), `epoch` |
//! | `P dir_epoch:K` | string | the last epoch given out for K, kept after a release |
//! | `P dir_node:N` | set | the agents node N holds |
//!
//! Every change is one Lua script, so a claim, a release and a node's
//! release are each atomic: a stale holder's release compares its epoch
//! with the current one on the server and cannot end a newer claim.
//! Epochs come from Redis' clock in milliseconds (then +1 on ties), so they
//! grow across every node whatever their clocks say.

use async_trait::async_trait;
use gse_core::AgentKey;
use gse_core::seams::{AgentDirectory, DirectoryError, Epoch, Location};

use super::RedisStore;

const BACKEND: &str = "redis";

/// ARGV: prefix, K, node, via. Returns the new epoch.
const CLAIM: &str = r"
local p, k, node = ARGV[1], ARGV[2], ARGV[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('GET', p .. 'dir_epoch:' .. k) or '0')
local epoch = math.max(now, last + 1)
local e = string.format('%d', epoch)
local old = redis.call('HGET', p .. 'dir:' .. k, 'node')
if old then redis.call('SREM', p .. 'dir_node:' .. old, k) end
redis.call('SET', p .. 'dir_epoch:' .. k, e)
redis.call('DEL', p .. 'dir:' .. k)
redis.call('HSET', p .. 'dir:' .. k, 'node', node, 'via', ARGV[4], 'epoch', e)
redis.call('SADD', p .. 'dir_node:' .. node, k)
return e
";

/// ARGV: prefix, K, epoch. Ends the claim if it is the current one.
const RELEASE: &str = r"
local p, k = ARGV[1], ARGV[2]
local v = redis.call('HMGET', p .. 'dir:' .. k, 'epoch', 'node')
if v[1] ~= ARGV[3] then return 0 end
redis.call('DEL', p .. 'dir:' .. k)
redis.call('SREM', p .. 'dir_node:' .. v[2], k)
return 1
";

/// ARGV: prefix, node. Ends every claim the node holds; returns them.
const RELEASE_NODE: &str = r"
local p, node = ARGV[1], ARGV[2]
local gone = {}
for _, k in ipairs(redis.call('SMEMBERS', p .. 'dir_node:' .. node)) do
  if redis.call('HGET', p .. 'dir:' .. k, 'node') == node then
    redis.call('DEL', p .. 'dir:' .. k)
    table.insert(gone, k)
  end
end
redis.call('DEL', p .. 'dir_node:' .. node)
return gone
";

/// The agent directory in Redis; see the module doc.
#[derive(Clone)]
pub struct RedisDirectory {
    conn: super::StoreConn,
    prefix: String,
}

impl RedisStore {
    /// The agent directory in the same Redis, under the same prefix.
    pub fn directory(&self) -> RedisDirectory {
        RedisDirectory {
            conn: self.conn(),
            prefix: self.prefix.clone(),
        }
    }
}

fn unavailable(e: redis::RedisError) -> DirectoryError {
    DirectoryError::Unavailable {
        backend: BACKEND,
        message: e.to_string(),
    }
}

fn epoch_of(doing: &str, text: &str) -> Result<Epoch, DirectoryError> {
    text.parse().map_err(|e| DirectoryError::Unavailable {
        backend: BACKEND,
        message: format!("{doing}: unreadable epoch {text:?} in Redis: {e}"),
    })
}

impl RedisDirectory {
    fn script(&self, body: &str, agent: Option<AgentKey>) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(body).arg(0).arg(&self.prefix);
        if let Some(a) = agent {
            cmd.arg(a.to_string());
        }
        cmd
    }
}

#[async_trait]
impl AgentDirectory for RedisDirectory {
    fn kind(&self) -> &'static str {
        BACKEND
    }

    async fn claim(
        &self,
        agent: AgentKey,
        node_id: &str,
        via: &[String],
    ) -> Result<Epoch, DirectoryError> {
        let via = serde_json::to_string(via).expect("a list of strings serialises");
        let epoch: String = self
            .script(CLAIM, Some(agent))
            .arg(node_id)
            .arg(via)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        epoch_of("claiming", &epoch)
    }

    async fn renew(&self, agent: AgentKey, epoch: Epoch) -> Result<bool, DirectoryError> {
        let current: Option<String> = redis::cmd("HGET")
            .arg(format!("{}dir:{agent}", self.prefix))
            .arg("epoch")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(current.is_some_and(|e| e == epoch.to_string()))
    }

    async fn release(&self, agent: AgentKey, epoch: Epoch) -> Result<bool, DirectoryError> {
        let ended: i64 = self
            .script(RELEASE, Some(agent))
            .arg(epoch.to_string())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(ended == 1)
    }

    async fn locate(&self, agent: AgentKey) -> Result<Option<Location>, DirectoryError> {
        Ok(self.locate_many(&[agent]).await?.pop().flatten())
    }

    async fn locate_many(
        &self,
        agents: &[AgentKey],
    ) -> Result<Vec<Option<Location>>, DirectoryError> {
        if agents.is_empty() {
            return Ok(Vec::new());
        }
        // One pipeline of HMGETs: a single round trip for every agent.
        let mut pipe = redis::pipe();
        for agent in agents {
            pipe.cmd("HMGET")
                .arg(format!("{}dir:{agent}", self.prefix))
                .arg("node")
                .arg("via")
                .arg("epoch");
        }
        type Fields = (Option<String>, Option<String>, Option<String>);
        let rows: Vec<Fields> = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        agents
            .iter()
            .zip(rows)
            .map(|(agent, (node, via, epoch))| {
                let (Some(node_id), Some(via), Some(epoch)) = (node, via, epoch) else {
                    return Ok(None);
                };
                // Almost every agent is reached directly: skip the parser.
                let via = match via.as_str() {
                    "[]" => Vec::new(),
                    _ => serde_json::from_str(&via).map_err(|e| DirectoryError::Unavailable {
                        backend: BACKEND,
                        message: format!("locating {agent}: unreadable proxy list in Redis: {e}"),
                    })?,
                };
                Ok(Some(Location {
                    node_id,
                    via,
                    epoch: epoch_of("locating", &epoch)?,
                }))
            })
            .collect()
    }

    async fn release_node(&self, node_id: &str) -> Result<Vec<AgentKey>, DirectoryError> {
        let gone: Vec<String> = self
            .script(RELEASE_NODE, None)
            .arg(node_id)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        let mut keys: Vec<AgentKey> = gone.iter().filter_map(|k| k.parse().ok()).collect();
        keys.sort();
        Ok(keys)
    }
}
