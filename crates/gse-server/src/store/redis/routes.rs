//! Data routes in Redis (`P stream_tos`, `P channels`: hashes of id →
//! `{plat_name, spec}`; see the module doc of [`super`]). A new id is
//! picked and stored by one script, so concurrent adds on any nodes never
//! get the same id.

use async_trait::async_trait;
use gse_core::seams::state_store::{ChannelRecord, NewId, StreamToRecord};
use gse_core::seams::{RouteStore, StoreError};
use serde::{Deserialize, Serialize};

use super::{RedisStore, decode, encode, store_error};

/// Stores ARGV[3] under a new id. ARGV[1] = 'given' (ARGV[2] = the id) or
/// 'next' (ARGV[2], ARGV[4] = first, last): one past the largest id of the
/// range, or `first`; once `last` is taken, the lowest free id of the
/// range. Returns the id, or false when it is taken or the range is full.
const INSERT: &str = r"
local pick
if ARGV[1] == 'given' then
  pick = tonumber(ARGV[2])
  if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then return false end
else
  local first, last = tonumber(ARGV[2]), tonumber(ARGV[4])
  local taken = {}
  for _, k in ipairs(redis.call('HKEYS', KEYS[1])) do
    local n = tonumber(k)
    if n and n >= first and n <= last then table.insert(taken, n) end
  end
  table.sort(taken)
  if #taken == 0 then
    pick = first
  elseif taken[#taken] < last then
    pick = taken[#taken] + 1
  else
    pick = first
    for _, n in ipairs(taken) do
      if n == pick then pick = pick + 1 elseif n > pick then break end
    end
    if pick > last then return false end
  end
end
redis.call('HSET', KEYS[1], tostring(pick), ARGV[3])
return pick
";

/// What a route's hash value holds.
#[derive(Serialize, Deserialize)]
struct Stored {
    plat_name: String,
    spec: String,
}

/// Which hash.
#[derive(Clone, Copy)]
enum Table {
    StreamTos,
    Channels,
}

impl RedisStore {
    fn table(&self, t: Table) -> String {
        match t {
            Table::StreamTos => self.key("stream_tos"),
            Table::Channels => self.key("channels"),
        }
    }

    async fn insert_route(
        &self,
        t: Table,
        value: Stored,
        id: NewId,
        doing: &'static str,
    ) -> Result<Option<u32>, StoreError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(INSERT).arg(1).arg(self.table(t));
        match id {
            NewId::Given(id) => cmd.arg("given").arg(id).arg(encode(&value)).arg(0),
            NewId::Next { first, last } => cmd.arg("next").arg(first).arg(encode(&value)).arg(last),
        };
        let picked: Option<u32> = cmd
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(doing))?;
        Ok(picked)
    }

    /// Replaces the value of an existing id; false if there is none.
    async fn replace_route(
        &self,
        t: Table,
        id: u32,
        value: Stored,
        doing: &'static str,
    ) -> Result<bool, StoreError> {
        // HSETXX does not exist: check and set in one script.
        let replaced: i64 = redis::cmd("EVAL")
            .arg(
                "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then \
                 redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1 end return 0",
            )
            .arg(1)
            .arg(self.table(t))
            .arg(id)
            .arg(encode(&value))
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(doing))?;
        Ok(replaced == 1)
    }

    async fn delete_route(
        &self,
        t: Table,
        id: u32,
        doing: &'static str,
    ) -> Result<bool, StoreError> {
        let n: i64 = redis::cmd("HDEL")
            .arg(self.table(t))
            .arg(id)
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(doing))?;
        Ok(n == 1)
    }

    /// Every route of a table, by id.
    async fn list_routes(
        &self,
        t: Table,
        doing: &'static str,
    ) -> Result<Vec<(u32, Stored)>, StoreError> {
        let raw: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.table(t))
            .query_async(&mut self.conn())
            .await
            .map_err(store_error(doing))?;
        let mut rows = raw
            .into_iter()
            .map(|(id, json)| {
                let id = id.parse::<u32>().map_err(|e| {
                    StoreError::corrupt(super::BACKEND, doing, format!("route id {id:?}: {e}"))
                })?;
                Ok((id, decode::<Stored>(doing, &json)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        rows.sort_by_key(|(id, _)| *id);
        Ok(rows)
    }
}

#[async_trait]
impl RouteStore for RedisStore {
    async fn insert_stream_to(
        &self,
        record: StreamToRecord,
        id: NewId,
    ) -> Result<Option<u32>, StoreError> {
        let value = Stored {
            plat_name: record.plat_name,
            spec: record.spec,
        };
        self.insert_route(Table::StreamTos, value, id, "adding a stream_to")
            .await
    }

    async fn replace_stream_to(&self, record: StreamToRecord) -> Result<bool, StoreError> {
        let value = Stored {
            plat_name: record.plat_name,
            spec: record.spec,
        };
        self.replace_route(
            Table::StreamTos,
            record.stream_to_id,
            value,
            "updating a stream_to",
        )
        .await
    }

    async fn delete_stream_to(&self, stream_to_id: u32) -> Result<bool, StoreError> {
        self.delete_route(Table::StreamTos, stream_to_id, "deleting a stream_to")
            .await
    }

    async fn list_stream_tos(&self) -> Result<Vec<StreamToRecord>, StoreError> {
        let rows = self
            .list_routes(Table::StreamTos, "listing stream_tos")
            .await?;
        Ok(rows
            .into_iter()
            .map(|(stream_to_id, s)| StreamToRecord {
                stream_to_id,
                plat_name: s.plat_name,
                spec: s.spec,
            })
            .collect())
    }

    async fn insert_channel(
        &self,
        record: ChannelRecord,
        id: NewId,
    ) -> Result<Option<u32>, StoreError> {
        let value = Stored {
            plat_name: record.plat_name,
            spec: record.spec,
        };
        self.insert_route(Table::Channels, value, id, "adding a data channel")
            .await
    }

    async fn replace_channel(&self, record: ChannelRecord) -> Result<bool, StoreError> {
        let value = Stored {
            plat_name: record.plat_name,
            spec: record.spec,
        };
        self.replace_route(
            Table::Channels,
            record.channel_id,
            value,
            "updating a data channel",
        )
        .await
    }

    async fn delete_channel(&self, channel_id: u32) -> Result<bool, StoreError> {
        self.delete_route(Table::Channels, channel_id, "deleting a data channel")
            .await
    }

    async fn list_channels(&self) -> Result<Vec<ChannelRecord>, StoreError> {
        let rows = self
            .list_routes(Table::Channels, "listing data channels")
            .await?;
        Ok(rows
            .into_iter()
            .map(|(channel_id, s)| ChannelRecord {
                channel_id,
                plat_name: s.plat_name,
                spec: s.spec,
            })
            .collect())
    }
}
