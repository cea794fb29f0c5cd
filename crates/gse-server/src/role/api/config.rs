//! `[api]` section of the server config.
//!
//! Besides what the API serves, it bounds what one client can hold: the
//! connection caps (global, per address, and a share of the open-files
//! limit), the header, idle and request timeouts, the body read before the
//! app is known, and the size of an answer.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use gse_core::app_secret::SecretHash;
use gse_core::seams::AppRecord;
use serde::{Deserialize, Serialize};

/// Port the API listens on unless configured (gse's own choice: no client
/// fixes the port, they are all pointed at a gateway URL).
pub const DEFAULT_API_PORT: u16 = 59313;

/// Settings of the HTTP API role.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to accept HTTP on; loopback by default, put a gateway in front.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes; bigger ones get code 1000413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most hosts or agent ids one call may name; bk-job batches 5000 and
    /// bk-nodeman 2000 (COMPAT.md §2.1), so the default fits both.
    #[serde(default = "default_max_hosts_per_call")]
    pub max_hosts_per_call: usize,
    /// A request still unanswered after this long gets HTTP 408.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A request's headers must have arrived in full this long after the
    /// server started waiting for them (connection opened, or the previous
    /// answer sent); else the connection is closed.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection on which nothing moves either way for this long, while
    /// no request is being handled, is closed (idle keep-alive connections,
    /// clients that stop reading an answer).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most API connections open at once; further ones are answered 503
    /// and closed. Never more than the open-files limit minus `fd_reserve`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most API connections open at once from one client address (an IPv6
    /// client: from one /64); further ones are answered 503 and closed.
    /// Behind a gateway every call comes from the gateway's address: set it
    /// to `max_connections` there.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Open files the API leaves to the agent and data links, the store and
    /// the logs: it holds at most (open-files limit - fd_reserve)
    /// connections, and at least a quarter of the limit.
    #[serde(default = "default_fd_reserve")]
    pub fd_reserve: usize,
    /// Most body bytes read before the app is known, when the credentials
    /// come in the body (no credential headers); a longer body is refused.
    #[serde(default = "default_preauth_body_limit")]
    pub preauth_body_limit: usize,
    /// Largest answer, bytes; a bigger one is refused with code 1000413.
    /// Script results are cut to fit well below it.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Apps allowed to call the API; seeded into the state store at start.
    #[serde(default)]
    pub apps: Vec<AppConfig>,
}

/// `[[api.apps]]`: an app allowed to call the API, with either its secret
/// in plain text (hashed when the node starts; the file must then be 0600,
/// `check-config` warns otherwise) or, better, the hash that
/// `gse-server apps hash` prints.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The bk_app_code.
    pub app_code: String,
    /// The bk_app_secret, in plain text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret: Option<String>,
    /// The bk_app_secret as an Argon2id PHC string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_secret_hash: Option<SecretHash>,
}

// === impl AppConfig ===

impl AppConfig {
    /// An app given by its plain secret (tests, benches).
    pub fn with_secret(app_code: impl Into<String>, secret: impl Into<String>) -> Self {
        AppConfig {
            app_code: app_code.into(),
            app_secret: Some(secret.into()),
            app_secret_hash: None,
        }
    }

    /// The record to store: the given hash, or a new hash of the secret
    /// (slow on purpose: call it off the async threads). `None` when the
    /// entry names neither (validation reports that).
    pub fn to_record(&self) -> Option<AppRecord> {
        let secret_hash = match (&self.app_secret_hash, &self.app_secret) {
            (Some(hash), _) => hash.clone(),
            (None, Some(secret)) => SecretHash::hash(secret),
            (None, None) => return None,
        };
        Some(AppRecord {
            app_code: self.app_code.clone(),
            secret_hash,
        })
    }

    /// What is wrong with this entry, if anything.
    pub fn problem(&self) -> Option<String> {
        let code = &self.app_code;
        match (&self.app_secret, &self.app_secret_hash) {
            _ if code.is_empty() => Some("api.apps: an app has an empty app_code".into()),
            (None, None) => Some(format!(
                "api.apps: app {code:?} needs app_secret_hash (from `gse-server apps hash`) or app_secret"
            )),
            (Some(_), Some(_)) => Some(format!(
                "api.apps: app {code:?} gives both app_secret and app_secret_hash: keep only app_secret_hash"
            )),
            (Some(s), None) if s.is_empty() => {
                Some(format!("api.apps: app {code:?} has an empty app_secret"))
            }
            _ => None,
        }
    }
}

impl std::fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The plain secret never reaches a log line.
        f.debug_struct("AppConfig")
            .field("app_code", &self.app_code)
            .field("app_secret", &self.app_secret.as_ref().map(|_| "<hidden>"))
            .field("app_secret_hash", &self.app_secret_hash)
            .finish()
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_API_PORT))
}

fn default_max_body_bytes() -> usize {
    8 * 1024 * 1024
}

fn default_max_hosts_per_call() -> usize {
    5000
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_max_connections() -> usize {
    4096
}

fn default_max_connections_per_ip() -> usize {
    1024
}

fn default_fd_reserve() -> usize {
    1024
}

fn default_preauth_body_limit() -> usize {
    64 * 1024
}

fn default_max_response_bytes() -> usize {
    64 * 1024 * 1024
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
            max_body_bytes: default_max_body_bytes(),
            max_hosts_per_call: default_max_hosts_per_call(),
            request_timeout: default_request_timeout(),
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            fd_reserve: default_fd_reserve(),
            preauth_body_limit: default_preauth_body_limit(),
            max_response_bytes: default_max_response_bytes(),
            apps: Vec::new(),
        }
    }
}

// === impl ApiConfig ===

impl ApiConfig {
    /// Pure checks of the keys above; every problem names its key and value.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut at_least = |key: &str, value: usize, min: usize| {
            if value < min {
                problems.push(format!("api.{key} = {value}: it must be at least {min}"));
            }
        };
        at_least("max_connections", self.max_connections, 1);
        at_least("max_connections_per_ip", self.max_connections_per_ip, 1);
        at_least("preauth_body_limit", self.preauth_body_limit, 1024);
        at_least("max_response_bytes", self.max_response_bytes, 4096);
        for (key, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if value < Duration::from_millis(100) {
                problems.push(format!("api.{key} = {value:?}: it must be at least 100ms"));
            }
        }
        problems
    }
}
