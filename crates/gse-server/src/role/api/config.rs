//! `[api]` section of the server config.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

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
    /// Apps allowed to call the API; seeded into the state store at start.
    #[serde(default)]
    pub apps: Vec<AppRecord>,
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

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
            max_body_bytes: default_max_body_bytes(),
            max_hosts_per_call: default_max_hosts_per_call(),
            request_timeout: default_request_timeout(),
            apps: Vec::new(),
        }
    }
}
