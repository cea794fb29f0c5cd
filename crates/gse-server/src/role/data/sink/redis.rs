//! The Redis sink (`report_mode: redis`).
//!
//! GSE's Redis exporter publishes: consumers (bk-cmdb's snapshot reader,
//! for one) SUBSCRIBE to the route's `redis.channel_name` (older clients
//! send `data_set` + `biz_id`, whose concatenation is the channel). So by
//! default each record's payload is sent with `PUBLISH channel payload`.
//! Pub/sub keeps nothing for absent subscribers, so a route may instead ask
//! for a stream with `redis.mode: "stream"` (our extension): each record is
//! `XADD channel MAXLEN ~ <redis.maxlen, default 1000000> * dataid .. agent
//! .. seq .. time_ms .. data <payload> [peer_uid .. peer_pid ..]`, which a
//! consumer reads with XREAD at its own pace; `peer_uid`/`peer_pid` (the
//! local user and process that wrote the record to the agent's socket) are
//! added only when known. PUBLISH sends the bare payload, so it carries no
//! sender.
//!
//! A batch is one pipeline; `write_batch` returns once Redis answered every
//! command. The first address of `stream_to.redis.storage_address` is used,
//! with `passwd` if set; Sentinel (`master_name`) is not supported and such a
//! stream_to is refused at sink creation. The connection is made at the
//! first batch and re-made after failures (a failed batch is retried by the
//! agent, never lost).

use std::time::Duration;

use async_trait::async_trait;
use gse_core::seams::{Batch, Sink, SinkError};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::role::data::routes::model::{ReportMode, Route, StreamTo};
use crate::role::data::routes::validate;

/// Trim length of stream mode when the route gives none.
pub const DEFAULT_STREAM_MAXLEN: u64 = 1_000_000;
/// How long connecting, and each answer, may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// How records reach Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisMode {
    /// `PUBLISH channel payload` (GSE's behaviour, the default).
    Publish,
    /// `XADD channel MAXLEN ~ maxlen * ...` (our extension).
    Stream { maxlen: u64 },
}

/// Sends a route's records to Redis; see the module doc.
pub struct RedisSink {
    name: String,
    /// `host:port`, for messages.
    addr: String,
    channel: String,
    mode: RedisMode,
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
}

fn str_of<'a>(v: Option<&'a Value>, key: &str) -> Option<&'a str> {
    v.and_then(|v| v.get(key))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The route's channel: `channel_name`, else `data_set` + `biz_id`.
fn channel_of(route: &Route) -> Option<String> {
    let section = route.section(ReportMode::Redis);
    if let Some(name) = str_of(section, "channel_name") {
        return Some(name.to_string());
    }
    let data_set = str_of(section, "data_set")?;
    let biz = match section.and_then(|s| s.get("biz_id")) {
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    Some(format!("{data_set}{biz}"))
}

fn mode_of(route: &Route) -> Result<RedisMode, String> {
    let section = route.section(ReportMode::Redis);
    match str_of(section, "mode") {
        None | Some("publish") => Ok(RedisMode::Publish),
        Some("stream") => {
            let maxlen = section
                .and_then(|s| s.get("maxlen"))
                .and_then(Value::as_u64)
                .filter(|n| *n > 0)
                .unwrap_or(DEFAULT_STREAM_MAXLEN);
            Ok(RedisMode::Stream { maxlen })
        }
        Some(other) => Err(format!(
            "route {:?}: redis.mode {other:?} is unknown; use publish or stream",
            route.name
        )),
    }
}

// === impl RedisSink ===

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("channel", &self.channel)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl RedisSink {
    pub fn new(stream_to: &StreamTo, channel_id: u32, route: &Route) -> Result<Self, String> {
        let section = stream_to
            .section()
            .and_then(Value::as_object)
            .ok_or("report_mode redis needs a redis object with storage_address")?;
        if str_of(stream_to.section(), "master_name").is_some() {
            return Err(
                "redis.master_name is set, but Redis Sentinel is not supported; give the master's \
                 address in storage_address and no master_name"
                    .into(),
            );
        }
        let addrs = validate::storage_addresses(section, "redis").map_err(|e| e.to_string())?;
        let (host, port) = addrs[0].clone();
        let channel = channel_of(route).ok_or_else(|| {
            format!(
                "route {:?} of channel {channel_id} has no redis.channel_name",
                route.name
            )
        })?;
        let mode = mode_of(route)?;
        let mut redis_settings = RedisConnectionInfo::default();
        if let Some(passwd) = str_of(stream_to.section(), "passwd") {
            redis_settings = redis_settings.set_password(passwd);
        }
        let info = ConnectionAddr::Tcp(host.clone(), port)
            .into_connection_info()
            .map_err(|e| e.to_string())?
            .set_redis_settings(redis_settings);
        let client = redis::Client::open(info).map_err(|e| e.to_string())?;
        Ok(RedisSink {
            name: stream_to.name.clone(),
            addr: format!("{host}:{port}"),
            channel,
            mode,
            client,
            conn: OnceCell::new(),
        })
    }

    /// The channel (or stream key) records go to.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn mode(&self) -> RedisMode {
        self.mode
    }

    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(TIMEOUT))
                    .set_response_timeout(Some(TIMEOUT))
                    .set_number_of_retries(2);
                ConnectionManager::new_with_config(self.client.clone(), config).await
            })
            .await?;
        Ok(conn.clone())
    }

    fn pipeline(&self, batch: &Batch) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for r in &batch.records {
            match self.mode {
                RedisMode::Publish => {
                    pipe.cmd("PUBLISH")
                        .arg(&self.channel)
                        .arg(&r.payload[..])
                        .ignore();
                }
                RedisMode::Stream { maxlen } => {
                    let cmd = pipe.cmd("XADD");
                    cmd.arg(&self.channel)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(maxlen)
                        .arg("*")
                        .arg("dataid")
                        .arg(r.data_id)
                        .arg("agent")
                        .arg(&*batch.source)
                        .arg("seq")
                        .arg(batch.seq)
                        .arg("time_ms")
                        .arg(r.received_ms)
                        .arg("data")
                        .arg(&r.payload[..]);
                    if let Some(uid) = r.peer_uid {
                        cmd.arg("peer_uid").arg(uid);
                    }
                    if let Some(pid) = r.peer_pid {
                        cmd.arg("peer_pid").arg(pid);
                    }
                    cmd.ignore();
                }
            }
        }
        pipe
    }
}

#[async_trait]
impl Sink for RedisSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write_batch(&self, batch: &Batch) -> Result<(), SinkError> {
        if batch.records.is_empty() {
            return Ok(());
        }
        let fail = |e: redis::RedisError| SinkError::Store {
            sink: self.name.clone(),
            records: batch.records.len(),
            message: format!(
                "redis {} (channel {:?}): {e}; check that it is up and the password is right",
                self.addr, self.channel
            ),
        };
        let mut conn = self.connection().await.map_err(fail)?;
        self.pipeline(batch)
            .exec_async(&mut conn)
            .await
            .map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn stream_to(redis: Value) -> StreamTo {
        StreamTo {
            stream_to_id: 500,
            plat_name: "bkmonitor".into(),
            label: None,
            name: "r".into(),
            report_mode: ReportMode::Redis,
            body: json!({"name": "r", "report_mode": "redis", "redis": redis}),
        }
    }

    fn route(redis: Value) -> Route {
        Route {
            name: "snap".into(),
            stream_to_id: 500,
            stream_to: json!({"stream_to_id": 500, "redis": redis}),
            filter_name_and: vec![],
            filter_name_or: vec![],
        }
    }

    #[tokio::test]
    async fn channel_mode_and_refusals() {
        let st = stream_to(json!({"storage_address": [{"ip": "127.0.0.1", "port": 6379}]}));
        let sink = RedisSink::new(&st, 1001, &route(json!({"channel_name": "c1"}))).unwrap();
        assert_eq!((sink.channel(), sink.mode()), ("c1", RedisMode::Publish));
        let legacy = route(json!({"data_set": "snapshot", "biz_id": 3}));
        assert_eq!(
            RedisSink::new(&st, 1, &legacy).unwrap().channel(),
            "snapshot3"
        );
        let stream = route(json!({"channel_name": "s", "mode": "stream", "maxlen": 10}));
        assert_eq!(
            RedisSink::new(&st, 1, &stream).unwrap().mode(),
            RedisMode::Stream { maxlen: 10 }
        );
        assert!(RedisSink::new(&st, 1, &route(json!({}))).is_err());
        let bad_mode = route(json!({"channel_name": "c", "mode": "list"}));
        assert!(
            RedisSink::new(&st, 1, &bad_mode)
                .unwrap_err()
                .contains("publish or stream")
        );
        let sentinel = stream_to(json!({
            "storage_address": [{"ip": "127.0.0.1", "port": 26379}], "master_name": "mymaster"
        }));
        let err = RedisSink::new(&sentinel, 1, &route(json!({"channel_name": "c"}))).unwrap_err();
        assert!(err.contains("Sentinel"), "{err}");
    }
}
