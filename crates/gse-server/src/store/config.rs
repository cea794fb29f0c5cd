//! `[store]`: which state store a node uses (the embedded one, or Redis
//! when `redis` or the Sentinel keys are set) and its settings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[store]`: where cluster state is kept.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Which store when `redis` is unset: `embedded` (memory + SQLite).
    #[serde(default)]
    pub kind: StoreKind,
    /// SQLite file of the embedded store; default `<data_dir>/state.sqlite`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `redis://[user:password@]host:port[/db]`: keep the state in this
    /// Redis, shared by the nodes of a cluster, instead of the embedded
    /// store.
    #[serde(default)]
    pub redis: Option<String>,
    /// Prefix of every Redis key; clusters sharing one Redis use different
    /// ones. Default `gse:`.
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// Redis Sentinel: `host:port` of each sentinel. With
    /// `redis_master_name`, the store uses the master these name (and
    /// follows failovers); `redis` then only gives user, password and db.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redis_sentinels: Vec<String>,
    /// The name the sentinels monitor the master under (`sentinel monitor
    /// NAME ...`); set with `redis_sentinels`.
    #[serde(default)]
    pub redis_master_name: Option<String>,
    /// The sentinels' own password, when they have one.
    #[serde(default)]
    pub redis_sentinel_password: Option<String>,
}

/// With Sentinel and no `redis`: no password, database 0. The host is a
/// placeholder the store never dials (the sentinels name the master).
const SENTINEL_DEFAULT_URL: &str = "redis://sentinel-master/";

impl StoreConfig {
    /// Whether the state is kept in Redis (`redis`, or Sentinel).
    pub fn uses_redis(&self) -> bool {
        self.redis.is_some() || self.sentinel_set()
    }

    fn sentinel_set(&self) -> bool {
        !self.redis_sentinels.is_empty() || self.redis_master_name.is_some()
    }

    /// The Redis store's settings, when `redis` or Sentinel is set.
    pub fn redis(&self) -> Option<crate::store::RedisStoreConfig> {
        if !self.uses_redis() {
            return None;
        }
        let sentinel = self
            .redis_master_name
            .as_ref()
            .map(|name| crate::store::SentinelConfig {
                addrs: self.redis_sentinels.clone(),
                master_name: name.clone(),
                password: self.redis_sentinel_password.clone(),
            });
        Some(crate::store::RedisStoreConfig {
            url: self
                .redis
                .clone()
                .unwrap_or_else(|| SENTINEL_DEFAULT_URL.into()),
            key_prefix: self.key_prefix.clone().unwrap_or_else(|| "gse:".into()),
            sentinel,
        })
    }

    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(url) = &self.redis
            && let Err(e) = redis::Client::open(url.as_str())
        {
            // The URL may hold a password: name the key, not the value.
            problems.push(format!(
                "store.redis is not a Redis URL ({e}); write it as redis://[user:password@]host:port[/db]"
            ));
        }
        problems.extend(self.sentinel_problems());
        if self.key_prefix.as_deref() == Some("") {
            problems.push("store.key_prefix is empty: leave it unset for gse:".into());
        }
        problems
    }
}

impl StoreConfig {
    fn sentinel_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match (self.redis_sentinels.is_empty(), &self.redis_master_name) {
            (true, Some(_)) => problems.push(
                "store.redis_master_name is set but store.redis_sentinels is not: list the sentinels \
                 (redis_sentinels = [\"host:26379\", ...]) or remove redis_master_name"
                    .into(),
            ),
            (false, None) => problems.push(
                "store.redis_sentinels is set but store.redis_master_name is not: name the master the \
                 sentinels monitor (sentinel monitor NAME ...) or remove redis_sentinels"
                    .into(),
            ),
            (false, Some(name)) if name.trim().is_empty() => {
                problems.push("store.redis_master_name is empty".into())
            }
            _ => {}
        }
        for addr in &self.redis_sentinels {
            if crate::store::redis_sentinel_addr(addr).is_none() {
                problems.push(format!(
                    "store.redis_sentinels entry {addr:?} is not host:port (e.g. \"10.0.0.5:26379\")"
                ));
            }
        }
        if self.redis_sentinel_password.is_some() && self.redis_sentinels.is_empty() {
            problems.push(
                "store.redis_sentinel_password is set without store.redis_sentinels: it is the sentinels' \
                 password (the master's goes in store.redis)"
                    .into(),
            );
        }
        problems
    }
}

/// The state store implementations.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Embedded,
}

#[cfg(test)]
mod tests {
    use crate::config::ServerConfig;
    use crate::config::tests::MINIMAL;

    #[test]
    fn store_redis_selects_the_redis_store_and_a_bad_url_is_named_without_its_value() {
        let text = format!(
            "{}\n[store]\nredis = \"redis://:pw@10.0.0.5:6379/2\"\n",
            MINIMAL
        );
        let mut cfg = ServerConfig::from_toml(&text).unwrap();
        cfg.resolve();
        cfg.validate().unwrap();
        let redis = cfg.store.redis().expect("redis selected");
        assert_eq!(redis.url, "redis://:pw@10.0.0.5:6379/2");
        assert_eq!(redis.key_prefix, "gse:");
        assert!(
            ServerConfig::from_toml(MINIMAL)
                .unwrap()
                .store
                .redis()
                .is_none()
        );

        let text = format!(
            "{}\n[store]\nredis = \"http://:pw@x\"\nkey_prefix = \"\"\n",
            MINIMAL
        );
        let mut cfg = ServerConfig::from_toml(&text).unwrap();
        cfg.resolve();
        let problems = cfg.validate().unwrap_err().join("\n");
        assert!(
            problems.contains("store.redis is not a Redis URL"),
            "{problems}"
        );
        assert!(problems.contains("store.key_prefix is empty"), "{problems}");
        assert!(!problems.contains("pw"), "{problems}");
    }

    #[test]
    fn sentinel_keys_select_the_master_they_name_and_must_come_together() {
        let text = format!(
            "{}\n[store]\nredis_sentinels = [\"10.0.0.5:26379\", \"10.0.0.6:26379\"]\nredis_master_name = \"gse\"\n",
            MINIMAL
        );
        let mut cfg = ServerConfig::from_toml(&text).unwrap();
        cfg.resolve();
        cfg.validate().unwrap();
        let redis = cfg.store.redis().expect("Sentinel selects the Redis store");
        let sentinel = redis.sentinel.expect("sentinel settings");
        assert_eq!(sentinel.addrs, ["10.0.0.5:26379", "10.0.0.6:26379"]);
        assert_eq!(sentinel.master_name, "gse");
        assert_eq!(sentinel.password, None);
        assert!(
            ::redis::Client::open(redis.url.as_str()).is_ok(),
            "no redis: a URL without credentials"
        );

        // `redis` gives the master's credentials and db.
        let text = format!(
            "{}\n[store]\nredis = \"redis://:pw@ignored:1/3\"\nredis_sentinels = [\"s:26379\"]\nredis_master_name = \"gse\"\nredis_sentinel_password = \"spw\"\n",
            MINIMAL
        );
        let mut cfg = ServerConfig::from_toml(&text).unwrap();
        cfg.resolve();
        cfg.validate().unwrap();
        let redis = cfg.store.redis().unwrap();
        assert_eq!(redis.url, "redis://:pw@ignored:1/3");
        assert_eq!(redis.sentinel.unwrap().password.as_deref(), Some("spw"));

        for (keys, expected) in [
            (
                "redis_sentinels = [\"s:26379\"]",
                "store.redis_sentinels is set but store.redis_master_name is not",
            ),
            (
                "redis_master_name = \"gse\"",
                "store.redis_master_name is set but store.redis_sentinels is not",
            ),
            (
                "redis_sentinels = [\"s\"]\nredis_master_name = \"gse\"",
                "store.redis_sentinels entry \"s\" is not host:port",
            ),
            (
                "redis_sentinels = [\"s:1\"]\nredis_master_name = \" \"",
                "store.redis_master_name is empty",
            ),
            (
                "redis = \"redis://h:1/\"\nredis_sentinel_password = \"x\"",
                "store.redis_sentinel_password is set without store.redis_sentinels",
            ),
        ] {
            let text = format!("{}\n[store]\n{keys}\n", MINIMAL);
            let mut cfg = ServerConfig::from_toml(&text).unwrap();
            cfg.resolve();
            let problems = cfg.validate().unwrap_err().join("\n");
            assert!(problems.contains(expected), "{keys}: {problems}");
        }
    }
}
