//! [`RedisDirectory`]: the cluster's agent directory
//! (`gse_core::seams::AgentDirectory`) in the Redis of the state store.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P at:K` | string | the current claim: `EPOCH\nNODE\nVIA` (VIA a JSON list) |
//! | `P dir_epoch:K` | string | the last epoch given out for K, kept after a release |
//! | `P dir_node:N` | set | the agents node N holds |
//!
//! Every change is one Lua script, so a claim, a release and a node's
//! release are each atomic: a stale holder's release compares its epoch
//! with the current one on the server and cannot end a newer claim.
//! Epochs come from Redis' clock in milliseconds (then +1 on ties), so they
//! grow across every node whatever their clocks say.
//!
//! A claim is one string rather than a hash so that a task's whole target
//! list is located with one `MGET` (a single command and a flat reply)
//! instead of one `HMGET` per agent: for 10,000 targets that was most of
//! what starting a task cost Redis. Node ids cannot hold a newline
//! (`node.id` is checked at start) and VIA is JSON, escaped, so the two
//! separators are unambiguous.

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
local old = redis.call('GET', p .. 'at:' .. k)
if old then
  local was = string.match(old, '^%d+\n([^\n]*)\n')
  if was then redis.call('SREM', p .. 'dir_node:' .. was, k) end
end
redis.call('SET', p .. 'dir_epoch:' .. k, e)
redis.call('SET', p .. 'at:' .. k, e .. '\n' .. node .. '\n' .. ARGV[4])
redis.call('SADD', p .. 'dir_node:' .. node, k)
return e
";

/// ARGV: prefix, K, epoch. Ends the claim if it is the current one.
const RELEASE: &str = r"
local p, k = ARGV[1], ARGV[2]
local v = redis.call('GET', p .. 'at:' .. k)
if not v then return 0 end
local e, node = string.match(v, '^(%d+)\n([^\n]*)\n')
if e ~= ARGV[3] then return 0 end
redis.call('DEL', p .. 'at:' .. k)
redis.call('SREM', p .. 'dir_node:' .. node, k)
return 1
";

/// ARGV: prefix, node. Ends every claim the node holds; returns them.
const RELEASE_NODE: &str = r"
local p, node = ARGV[1], ARGV[2]
local gone = {}
for _, k in ipairs(redis.call('SMEMBERS', p .. 'dir_node:' .. node)) do
  local v = redis.call('GET', p .. 'at:' .. k)
  if v and string.match(v, '^%d+\n([^\n]*)\n') == node then
    redis.call('DEL', p .. 'at:' .. k)
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

/// `EPOCH\nNODE\nVIA` as CLAIM writes it.
fn parse_claim(agent: AgentKey, text: &str) -> Result<Location, DirectoryError> {
    let unreadable = |why: String| DirectoryError::Unavailable {
        backend: BACKEND,
        message: format!("locating {agent}: unreadable claim {text:?} in Redis: {why}"),
    };
    let mut parts = text.splitn(3, '\n');
    let (Some(epoch), Some(node_id), Some(via)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(unreadable(
            "expected epoch, node and proxies on three lines".into(),
        ));
    };
    // Almost every agent is reached directly: skip the parser.
    let via = match via {
        "[]" => Vec::new(),
        _ => serde_json::from_str(via).map_err(|e| unreadable(e.to_string()))?,
    };
    Ok(Location {
        node_id: node_id.to_string(),
        via,
        epoch: epoch_of("locating", epoch)?,
    })
}

impl RedisDirectory {
    fn at_key(&self, agent: AgentKey) -> String {
        format!("{}at:{agent}", self.prefix)
    }

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
        let current: Option<String> = redis::cmd("GET")
            .arg(self.at_key(agent))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(current.is_some_and(|v| v.split('\n').next() == Some(epoch.to_string().as_str())))
    }

    async fn renew_many(&self, claims: &[(AgentKey, Epoch)]) -> Result<Vec<bool>, DirectoryError> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        // One MGET of the claims: a node renews thousands at once.
        let keys: Vec<String> = claims.iter().map(|&(a, _)| self.at_key(a)).collect();
        let current: Vec<Option<String>> = redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(claims
            .iter()
            .zip(current)
            .map(|(&(_, epoch), v)| {
                v.is_some_and(|v| v.split('\n').next() == Some(epoch.to_string().as_str()))
            })
            .collect())
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
        // One MGET: a single command whatever the number of agents.
        let keys: Vec<String> = agents.iter().map(|&a| self.at_key(a)).collect();
        let claims: Vec<Option<String>> = redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        agents
            .iter()
            .zip(claims)
            .map(|(agent, claim)| claim.map(|c| parse_claim(*agent, &c)).transpose())
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
