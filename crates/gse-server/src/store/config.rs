//! `[store]`: which state store a node uses (the embedded one, or Redis
//! when `redis` is set) and its settings.

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
}

impl StoreConfig {
    /// The Redis store's settings, when `redis` is set.
    pub fn redis(&self) -> Option<crate::store::RedisStoreConfig> {
        self.redis
            .as_ref()
            .map(|url| crate::store::RedisStoreConfig {
                url: url.clone(),
                key_prefix: self.key_prefix.clone().unwrap_or_else(|| "gse:".into()),
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
        if self.key_prefix.as_deref() == Some("") {
            problems.push("store.key_prefix is empty: leave it unset for gse:".into());
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
}
