//! The connection every Redis store call goes through: one
//! [`ConnectionManager`] to a fixed Redis (`[store] redis`), or, with
//! Sentinel (`redis_sentinels` + `redis_master_name`), to the master the
//! sentinels name, followed across failovers.
//!
//! Why a wrapper and not the connection manager alone: a
//! [`ConnectionManager`] is built on a [`redis::Client`] with one fixed
//! address and reconnects only there, and the redis crate's Sentinel
//! client ([`SentinelClient`]) hands out plain connections that do not
//! reconnect. So [`StoreConn`] keeps a connection manager to the current
//! master (reconnects to the same master stay the manager's job) and, when
//! a call fails in a way that means "this is not, or no longer, the master"
//! (refused, dropped, timed out, READONLY from a demoted master), wakes a
//! task that asks the sentinels again and, when they name another master,
//! swaps in a manager to it. A sentinel's `+switch-master` announcement
//! (pub/sub) wakes it too, because a demoted master that is still up keeps
//! accepting writes until the sentinels turn it into a replica, and those
//! writes would be lost in its resync: following the announcement at once
//! keeps that window to milliseconds (`min-replicas-to-write` on the
//! master closes it, as with any Sentinel client). The task also asks
//! every [`RECHECK`] in case an announcement was missed. The failed call
//! itself is not retried: it may have been a write that was applied, and
//! the store's callers already treat "unavailable" as retryable.

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::RwLock;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, ConnectionAddr, Pipeline, RedisError, RedisFuture, Value};
use tokio::sync::Notify;

use super::{CONNECT_TIMEOUT, ConnectError, RESPONSE_TIMEOUT, RedisStoreConfig, SentinelConfig};

/// How often the sentinels are asked for the master when nothing failed.
pub const RECHECK: Duration = Duration::from_secs(5);
/// Least time between two questions to the sentinels (calls failing in a
/// burst while the master is down ask once).
const MIN_RESOLVE_GAP: Duration = Duration::from_millis(250);
/// How long one resolution (sentinels, then the master's ROLE) may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle for store calls; clones share the connection and follow the
/// master together.
#[derive(Clone)]
pub struct StoreConn {
    shared: Arc<Shared>,
}

struct Shared {
    current: RwLock<Current>,
    sentinel: Option<Sentinel>,
}

#[derive(Clone)]
struct Current {
    conn: ConnectionManager,
    addr: String,
}

struct Sentinel {
    client: tokio::sync::Mutex<SentinelClient>,
    /// Woken by a call that failed to reach the master.
    nudge: Arc<Notify>,
    /// For messages: `name` through `a, b`.
    describe: String,
}

fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        // Reconnects are retried by the next call; a call never waits
        // through a long backoff.
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

/// A connection manager to `client`'s Redis that has answered PING.
async fn open_manager(client: redis::Client) -> Result<ConnectionManager, RedisError> {
    let mut conn = client
        .get_connection_manager_with_config(manager_config())
        .await?;
    redis::cmd("PING").query_async::<String>(&mut conn).await?;
    Ok(conn)
}

/// `host:port` → a TCP address for the sentinel client.
pub(crate) fn sentinel_addr(text: &str) -> Option<ConnectionAddr> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some(ConnectionAddr::Tcp(host.to_string(), port.parse().ok()?))
}

impl StoreConn {
    /// Connects to the Redis `config` names (resolving the master through
    /// the sentinels first, with Sentinel) and checks it answers.
    pub async fn connect(config: &RedisStoreConfig) -> Result<StoreConn, ConnectError> {
        let url = redis::Client::open(config.url.as_str()).map_err(ConnectError::Url)?;
        let Some(config_sentinel) = &config.sentinel else {
            // The address without the credentials, for messages.
            let addr = url.get_connection_info().addr().to_string();
            let conn = open_manager(url)
                .await
                .map_err(|source| ConnectError::Unreachable {
                    addr: addr.clone(),
                    source,
                })?;
            return Ok(StoreConn {
                shared: Arc::new(Shared {
                    current: RwLock::new(Current { conn, addr }),
                    sentinel: None,
                }),
            });
        };
        let describe = format!(
            "`{}` through the sentinels {}",
            config_sentinel.master_name,
            config_sentinel.addrs.join(", ")
        );
        let failed = |reason: String| ConnectError::Sentinel {
            describe: describe.clone(),
            reason,
        };
        let client = sentinel_client(config_sentinel, url.get_connection_info().redis_settings())
            .map_err(|e| failed(e.to_string()))?;
        let sentinel = Sentinel {
            client: tokio::sync::Mutex::new(client),
            nudge: Arc::new(Notify::new()),
            describe: describe.clone(),
        };
        let (conn, addr) = sentinel
            .resolve(None)
            .await
            .map_err(failed)?
            .expect("without a current master, one is connected");
        let shared = Arc::new(Shared {
            current: RwLock::new(Current { conn, addr }),
            sentinel: Some(sentinel),
        });
        tokio::spawn(follow_master(Arc::downgrade(&shared)));
        tokio::spawn(watch_switches(
            Arc::downgrade(&shared),
            sentinel_infos(config_sentinel),
        ));
        Ok(StoreConn { shared })
    }

    /// `host:port` of the Redis in use (the current master, with Sentinel).
    pub fn addr(&self) -> String {
        self.shared.current.read().addr.clone()
    }

    fn current(&self) -> ConnectionManager {
        self.shared.current.read().conn.clone()
    }

    /// A call failed: when it could not reach a master, ask the sentinels
    /// (without Sentinel the manager reconnects by itself).
    fn failed(&self, e: &RedisError) {
        if let Some(sentinel) = &self.shared.sentinel
            && super::error_kind(e) == gse_core::seams::StoreErrorKind::Unavailable
        {
            sentinel.nudge.notify_one();
        }
    }
}

fn sentinel_client(
    config: &SentinelConfig,
    redis: &redis::RedisConnectionInfo,
) -> Result<SentinelClient, RedisError> {
    let addrs = config
        .addrs
        .iter()
        .map(|a| {
            sentinel_addr(a).ok_or_else(|| {
                RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "a sentinel address is not host:port",
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut builder =
        SentinelClientBuilder::new(addrs, &config.master_name, SentinelServerType::Master)?
            .set_client_to_redis_db(redis.db());
    if let Some(user) = redis.username() {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = redis.password() {
        builder = builder.set_client_to_redis_password(password);
    }
    if let Some(password) = &config.password {
        builder = builder.set_client_to_sentinel_password(password);
    }
    builder.build()
}

impl Sentinel {
    /// Asks the sentinels for the master (which must answer ROLE as a
    /// master) and connects to it, unless it is still at `current` (`None`:
    /// the connection in use stays).
    ///
    /// Boxed: the redis crate's Sentinel futures are deep enough that
    /// inlining them into a node's start overflows rustc's query depth.
    fn resolve<'a>(
        &'a self,
        current: Option<&'a str>,
    ) -> futures::future::BoxFuture<'a, Result<Option<(ConnectionManager, String)>, String>> {
        Box::pin(self.resolve_inline(current))
    }

    async fn resolve_inline(
        &self,
        current: Option<&str>,
    ) -> Result<Option<(ConnectionManager, String)>, String> {
        let found = tokio::time::timeout(RESOLVE_TIMEOUT, async {
            let client = self.client.lock().await.async_get_client().await?;
            let addr = client.get_connection_info().addr().to_string();
            Ok::<_, RedisError>((client, addr))
        })
        .await
        .map_err(|_| format!("no answer within {RESOLVE_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
        let (client, addr) = found;
        if current == Some(addr.as_str()) {
            return Ok(None);
        }
        let conn = tokio::time::timeout(RESOLVE_TIMEOUT, open_manager(client))
            .await
            .map_err(|_| format!("the master at {addr} did not answer within {RESOLVE_TIMEOUT:?}"))?
            .map_err(|e| format!("the master at {addr}: {e}"))?;
        Ok(Some((conn, addr)))
    }
}

/// With Sentinel: asks for the master when a call failed and every
/// [`RECHECK`], and swaps the connection when the master moved. Ends when
/// the store is dropped.
async fn follow_master(shared: Weak<Shared>) {
    let Some(nudge) = shared
        .upgrade()
        .and_then(|s| s.sentinel.as_ref().map(|s| s.nudge.clone()))
    else {
        return;
    };
    loop {
        tokio::select! {
            _ = nudge.notified() => {}
            _ = tokio::time::sleep(RECHECK) => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let sentinel = shared.sentinel.as_ref().expect("only run with Sentinel");
        let was = shared.current.read().addr.clone();
        match sentinel.resolve(Some(&was)).await {
            Ok(Some((conn, addr))) => {
                tracing::warn!(
                    from = %was, to = %addr, master = %sentinel.describe,
                    "state store: the Redis master moved; following it"
                );
                *shared.current.write() = Current { conn, addr };
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(
                master = %sentinel.describe,
                "state store: cannot find the Redis master: {e}; asking again"
            ),
        }
        drop(shared);
        tokio::time::sleep(MIN_RESOLVE_GAP).await;
    }
}

/// How to reach each sentinel (with its password) for pub/sub.
fn sentinel_infos(config: &SentinelConfig) -> Vec<redis::ConnectionInfo> {
    config
        .addrs
        .iter()
        .filter_map(|a| sentinel_addr(a))
        .map(|addr| {
            let info = redis::IntoConnectionInfo::into_connection_info(addr)
                .expect("a TCP address is connection info");
            let mut settings = redis::RedisConnectionInfo::default();
            if let Some(p) = &config.password {
                settings = settings.set_password(p);
            }
            info.set_redis_settings(settings)
        })
        .collect()
}

/// With Sentinel: listens to `+switch-master` on the first sentinel that
/// answers (the next one when it goes away) and wakes [`follow_master`]
/// on each announcement. Ends when the store is dropped.
async fn watch_switches(shared: Weak<Shared>, sentinels: Vec<redis::ConnectionInfo>) {
    use futures::StreamExt;
    loop {
        for info in &sentinels {
            let Some(nudge) = shared
                .upgrade()
                .and_then(|s| s.sentinel.as_ref().map(|s| s.nudge.clone()))
            else {
                return;
            };
            let subscribed = tokio::time::timeout(RESOLVE_TIMEOUT, async {
                let mut pubsub = redis::Client::open(info.clone())?
                    .get_async_pubsub()
                    .await?;
                pubsub.subscribe("+switch-master").await?;
                Ok::<_, RedisError>(pubsub)
            })
            .await;
            let Ok(Ok(pubsub)) = subscribed else {
                continue;
            };
            // A switch may have happened while no sentinel was listened to.
            nudge.notify_one();
            let mut messages = pubsub.into_on_message();
            loop {
                tokio::select! {
                    message = messages.next() => match message {
                        Some(_) => nudge.notify_one(),
                        None => break,
                    },
                    _ = tokio::time::sleep(RECHECK) => {
                        if shared.strong_count() == 0 {
                            return;
                        }
                    }
                }
            }
        }
        if shared.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl ConnectionLike for StoreConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let answer = self.current().req_packed_command(cmd).await;
            if let Err(e) = &answer {
                self.failed(e);
            }
            answer
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let answer = self
                .current()
                .req_packed_commands(pipeline, offset, count)
                .await;
            if let Err(e) = &answer {
                self.failed(e);
            }
            answer
        })
    }

    fn get_db(&self) -> i64 {
        self.shared.current.read().conn.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_addresses_are_host_and_port() {
        let tcp = |text| match sentinel_addr(text) {
            Some(ConnectionAddr::Tcp(host, port)) => Some((host, port)),
            _ => None,
        };
        assert_eq!(tcp("10.0.0.5:26379"), Some(("10.0.0.5".into(), 26379)));
        assert_eq!(tcp("[::1]:26379"), Some(("::1".into(), 26379)));
        assert_eq!(tcp("10.0.0.5"), None);
        assert_eq!(tcp(":26379"), None);
        assert_eq!(tcp("h:port"), None);
    }
}
