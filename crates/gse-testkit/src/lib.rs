//! gse-testkit: real gse processes on loopback, for tests and benchmarks.
//!
//! [`Cluster`] makes a certificate set and starts a `gse-server` process
//! ([`ServerProc`]) from a config it writes; [`AgentProc`] starts `gse-agent`
//! processes against it. Every process gets its own directory with its config
//! and log, kept (and printed) when a test fails. Readiness is polled on real
//! endpoints with deadlines ([`eventually`]); processes stop with SIGTERM and
//! are killed after a grace period, or on drop. [`Cluster::builder`] starts
//! several nodes with ZooKeeper and agents that know every node
//! ([`cluster`]). The binaries are the ones
//! `cargo build --bins` put next to the test executable (or `GSE_BIN_DIR`).

mod api;
pub mod bad_tls;
pub mod cluster;
mod fake_agent;
pub mod hostile;
pub mod netlab;
pub mod openapi;
pub mod plugin_client;
mod ports;
mod procs;
pub mod proxy;
pub mod redis;
pub mod relay;
pub mod sentinel;
pub mod tansu;
mod webhook;
pub mod zookeeper;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use api::Api;
pub use cluster::{ClusterBuilder, StartedCluster};
pub use fake_agent::{FakeAgent, FakeAgentOptions, FakeProxy, RoguePeer};
pub use procs::{AgentOptions, AgentProc, Cluster, ServerOptions, ServerProc};
pub use proxy::{ProxyOptions, ProxyProc, area_agent};
pub use webhook::Webhook;

/// Finds a built gse binary.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("GSE_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            // target/<profile>/deps/<test-exe> -> target/<profile>/
            let exe = std::env::current_exe().expect("current exe");
            let dir = exe.parent().expect("exe dir");
            if dir.ends_with("deps") {
                dir.parent().unwrap().to_path_buf()
            } else {
                dir.to_path_buf()
            }
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --bins` first (or set GSE_BIN_DIR)",
        path.display()
    );
    path
}

/// Copies every key of the object `extra` into the object `body` (test
/// requests: defaults plus a case's own fields).
pub fn merge_json(body: &mut serde_json::Value, extra: &serde_json::Value) {
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
}

/// A loopback port reserved for this test process, outside the range the
/// kernel hands out for `:0` binds, so a server restarted on it never finds
/// it taken by another listener ([`ports`] says how).
pub fn free_port() -> u16 {
    ports::reserve_port()
}

/// How long `eventually` waits, scaled by `GSE_TEST_PATIENCE` (e.g. 2.0 on
/// a slow machine).
pub fn patience(base: Duration) -> Duration {
    let factor = std::env::var("GSE_TEST_PATIENCE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(1.0);
    base.mul_f64(factor.max(0.1))
}

/// Polls `check` until it returns `Some`, or panics after `within` saying
/// what was awaited and the last observation.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + patience(within);
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("timed out after {within:?} waiting for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The lines of a log file (empty if it does not exist yet).
pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// TLS files of `kind` from any certificate directory (e.g. a foreign CA).
pub fn procs_tls(
    certs: &gse_core::certs::CertDir,
    kind: gse_core::certs::CertKind,
) -> gse_core::tls::TlsFiles {
    procs::tls_of(certs, kind)
}
