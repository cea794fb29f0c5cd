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
//! command. Which Redis: with `stream_to.redis.master_name`, the master the
//! sentinels of `storage_address` name, followed across failovers (the
//! store's own connection, [`StoreConn`]); without it, the addresses of
//! `storage_address` in order: the first that answers is used until it
//! fails, then the list is tried again from the top. `passwd`, if set, is
//! Redis's password (not the sentinels'). The connection is made at the
//! first batch and re-made after failures (a failed batch is retried by the
//! agent, never lost).

use async_trait::async_trait;
use gse_core::seams::{Batch, Sink, SinkError};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::role::data::routes::model::{ReportMode, Route, StreamTo};
use crate::role::data::routes::validate;
use crate::store::redis::{RedisStoreConfig, SentinelConfig, StoreConn};

/// Trim length of stream mode when the route gives none.
pub const DEFAULT_STREAM_MAXLEN: u64 = 1_000_000;
/// Which Redis a sink writes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// These addresses (`host:port`), the first that answers.
    Fixed(Vec<String>),
    /// The master these sentinels name.
    Sentinel {
        sentinels: Vec<String>,
        master_name: String,
    },
}

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
    target: RedisTarget,
    password: Option<String>,
    channel: String,
    mode: RedisMode,
    /// The connection in use, made at the first batch; dropped after a
    /// failure, so the next batch connects again.
    conn: Mutex<Option<StoreConn>>,
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
            .field("target", &self.target)
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
        let addrs: Vec<String> = validate::section_addresses(section, "redis")
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(host, port)| match host.contains(':') {
                true => format!("[{host}]:{port}"),
                false => format!("{host}:{port}"),
            })
            .collect();
        let channel = channel_of(route).ok_or_else(|| {
            format!(
                "route {:?} of channel {channel_id} has no redis.channel_name",
                route.name
            )
        })?;
        let mode = mode_of(route)?;
        let target = match str_of(stream_to.section(), "master_name") {
            Some(master) => RedisTarget::Sentinel {
                sentinels: addrs,
                master_name: master.to_string(),
            },
            None => RedisTarget::Fixed(addrs),
        };
        Ok(RedisSink {
            name: stream_to.name.clone(),
            target,
            password: str_of(stream_to.section(), "passwd").map(str::to_string),
            channel,
            mode,
            conn: Mutex::new(None),
        })
    }

    /// Where the sink writes.
    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    /// `redis://[:password@]host:port` (the password percent-encoded).
    fn url(&self, addr: &str) -> String {
        match &self.password {
            Some(p) => format!(
                "redis://:{}@{addr}",
                percent_encoding::utf8_percent_encode(p, percent_encoding::NON_ALPHANUMERIC)
            ),
            None => format!("redis://{addr}"),
        }
    }

    /// A connection to the target: the sentinels' master, or the first
    /// address that answers.
    async fn connect(&self) -> Result<StoreConn, String> {
        match &self.target {
            RedisTarget::Sentinel {
                sentinels,
                master_name,
            } => {
                let config = RedisStoreConfig {
                    // Only its password is used: the sentinels name the address.
                    url: self.url("sentinel-named-master:6379"),
                    key_prefix: String::new(),
                    sentinel: Some(SentinelConfig {
                        addrs: sentinels.clone(),
                        master_name: master_name.clone(),
                        password: None,
                    }),
                };
                StoreConn::connect(&config).await.map_err(|e| e.to_string())
            }
            RedisTarget::Fixed(addrs) => {
                let mut why = Vec::new();
                for addr in addrs {
                    match StoreConn::connect(&RedisStoreConfig::at(self.url(addr), "")).await {
                        Ok(conn) => return Ok(conn),
                        Err(e) => why.push(e.to_string()),
                    }
                }
                Err(why.join("; "))
            }
        }
    }

    /// The channel (or stream key) records go to.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn mode(&self) -> RedisMode {
        self.mode
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
        let fail = |e: String| SinkError::Store {
            sink: self.name.clone(),
            records: batch.records.len(),
            message: format!(
                "redis {} (channel {:?}): {e}; check that it is up and the password is right",
                self.describe(),
                self.channel
            ),
        };
        let mut guard = self.conn.lock().await;
        let mut conn = match guard.as_ref() {
            Some(conn) => conn.clone(),
            None => {
                let conn = self.connect().await.map_err(fail)?;
                *guard = Some(conn.clone());
                conn
            }
        };
        drop(guard);
        let written = self.pipeline(batch).exec_async(&mut conn).await;
        if let Err(e) = written {
            // The next batch starts over: the first address that answers,
            // or the master the sentinels name now.
            if matches!(self.target, RedisTarget::Fixed(ref a) if a.len() > 1) {
                *self.conn.lock().await = None;
            }
            return Err(fail(e.to_string()));
        }
        Ok(())
    }
}

impl RedisSink {
    /// The target, for messages.
    fn describe(&self) -> String {
        match &self.target {
            RedisTarget::Fixed(addrs) => addrs.join(", "),
            RedisTarget::Sentinel {
                sentinels,
                master_name,
            } => format!(
                "master `{master_name}` of the sentinels {}",
                sentinels.join(", ")
            ),
        }
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
            "storage_address": [{"ip": "127.0.0.1", "port": 26379}, {"ip": "::1", "port": 26380}],
            "master_name": "mymaster"
        }));
        let sink = RedisSink::new(&sentinel, 1, &route(json!({"channel_name": "c"}))).unwrap();
        assert_eq!(
            sink.target(),
            &RedisTarget::Sentinel {
                sentinels: vec!["127.0.0.1:26379".into(), "[::1]:26380".into()],
                master_name: "mymaster".into()
            }
        );
    }
}
