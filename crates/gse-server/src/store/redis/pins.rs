//! Identity pins in Redis (`P pin:K` hashes, `P pin_id:ID`, `P pins`; see
//! the module doc of [`super`]). Each step is one script, so two nodes
//! claiming at once see one winner.

use async_trait::async_trait;
use gse_core::AgentKey;
use gse_core::seams::state_store::{IdentityPin, PinClaim};
use gse_core::seams::{PinStore, StoreError};

use super::{BACKEND, RedisStore, store_error};

/// Reads a pin as {K, agent_id, pinned_ms, by_cert}, or false.
const READ: &str = r"
local function pin(p, k)
  local v = redis.call('HMGET', p .. 'pin:' .. k, 'agent_id', 'pinned_ms', 'by_cert')
  if not v[1] then return false end
  return {k, v[1], v[2], v[3]}
end
";

/// Claims K (ARGV[2]) for agent id ARGV[3] unless either is pinned:
/// returns {made, pin in force}. ARGV[1] = prefix.
const CLAIM: &str = r"
local p, k, id = ARGV[1], ARGV[2], ARGV[3]
local held = redis.call('GET', p .. 'pin_id:' .. id)
if held and held ~= k then return {0, pin(p, held)} end
local own = pin(p, k)
if own then return {0, own} end
redis.call('HSET', p .. 'pin:' .. k, 'agent_id', id, 'pinned_ms', ARGV[4], 'by_cert', ARGV[5])
redis.call('SET', p .. 'pin_id:' .. id, k)
redis.call('SADD', p .. 'pins', k)
return {1, pin(p, k)}
";

/// Removes the pin of K (ARGV[2]) and its agent id's mapping; returns it.
const REMOVE: &str = r"
local function remove(p, k)
  local old = pin(p, k)
  if old then
    if redis.call('GET', p .. 'pin_id:' .. old[2]) == k then redis.call('DEL', p .. 'pin_id:' .. old[2]) end
    redis.call('DEL', p .. 'pin:' .. k)
    redis.call('SREM', p .. 'pins', k)
  end
  return old
end
";

/// Sets the pin of K for agent id ARGV[3], replacing K's pin and the agent
/// id's pin on another identity.
const REPIN: &str = r"
local p, k, id = ARGV[1], ARGV[2], ARGV[3]
remove(p, k)
local held = redis.call('GET', p .. 'pin_id:' .. id)
if held then remove(p, held) end
redis.call('HSET', p .. 'pin:' .. k, 'agent_id', id, 'pinned_ms', ARGV[4], 'by_cert', ARGV[5])
redis.call('SET', p .. 'pin_id:' .. id, k)
redis.call('SADD', p .. 'pins', k)
return 1
";

/// A pin as the scripts return it: K, agent id, pinned ms, by_cert.
type Raw = (String, String, u64, String);

fn from_raw(
    doing: &'static str,
    (k, agent_id, pinned_ms, by_cert): Raw,
) -> Result<IdentityPin, StoreError> {
    let key = k
        .parse::<AgentKey>()
        .map_err(|e| StoreError::corrupt(BACKEND, doing, format!("pinned identity {k:?}: {e}")))?;
    Ok(IdentityPin {
        key,
        agent_id,
        pinned_ms,
        by_certificate: by_cert == "1",
    })
}

impl RedisStore {
    fn pin_script(&self, body: &str, pin: &IdentityPin) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(format!("{READ}{REMOVE}{body}"))
            .arg(0)
            .arg(&self.prefix)
            .arg(pin.key.to_string())
            .arg(&pin.agent_id)
            .arg(pin.pinned_ms)
            .arg(if pin.by_certificate { "1" } else { "0" });
        cmd
    }
}

#[async_trait]
impl PinStore for RedisStore {
    async fn claim_identity(&self, pin: IdentityPin) -> Result<PinClaim, StoreError> {
        const DOING: &str = "claiming an identity";
        let (made, held): (i64, Raw) = self
            .pin_script(CLAIM, &pin)
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(DOING))?;
        Ok(PinClaim {
            pin: from_raw(DOING, held)?,
            made: made == 1,
        })
    }

    async fn repin_identity(&self, pin: IdentityPin) -> Result<(), StoreError> {
        self.pin_script(REPIN, &pin)
            .query_async::<i64>(&mut self.conn())
            .await
            .map_err(store_error("re-pinning an identity"))?;
        Ok(())
    }

    async fn release_identity(&self, key: AgentKey) -> Result<Option<IdentityPin>, StoreError> {
        const DOING: &str = "releasing an identity pin";
        let old: Option<Raw> = redis::cmd("EVAL")
            .arg(format!("{READ}{REMOVE}return remove(ARGV[1], ARGV[2])"))
            .arg(0)
            .arg(&self.prefix)
            .arg(key.to_string())
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(DOING))?;
        old.map(|raw| from_raw(DOING, raw)).transpose()
    }

    async fn list_identity_pins(&self) -> Result<Vec<IdentityPin>, StoreError> {
        const DOING: &str = "listing identity pins";
        let raw: Vec<Option<Raw>> = redis::cmd("EVAL")
            .arg(format!(
                "{READ}local out = {{}} \
                 for i, k in ipairs(redis.call('SMEMBERS', ARGV[1] .. 'pins')) do out[i] = pin(ARGV[1], k) end \
                 return out"
            ))
            .arg(0)
            .arg(&self.prefix)
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(DOING))?;
        let mut pins = raw
            .into_iter()
            .flatten()
            .map(|r| from_raw(DOING, r))
            .collect::<Result<Vec<_>, _>>()?;
        pins.sort_by_key(|p| p.key);
        Ok(pins)
    }
}
