//! The agent's data path (D1, D4, D5): local collectors -> batcher ->
//! spool/uplink -> the assigned DataServer.
//!
//! Start at [`start`]. It binds the local data-report socket
//! ([`ipc_server::IpcServer`], COMPAT §1.1-1.2: 0x09, 0xC01, 0xC0C and the
//! 0x0A agent-info reply from [`agent_info`]) before the control link
//! connects, makes the configured `ipc_links` symlinks, binds the
//! plugin-message socket ([`message_ipc`], COMPAT §1.3, for
//! [`crate::plugin`]'s plugins) with its `message_ipc_links`, and spawns
//! the [`batcher`] (per data id, bounded memory) and the [`uplink`]
//! (mutual-TLS data link, in-flight window, acks, the crash-safe [`spool`],
//! moves between DataServers). Delivery is **at-least-once**: see
//! [`uplink`]. Both sockets are open to local users; what they may hold is
//! bounded in [`local_socket`].
//!
//! Other producers inside the agent (the system snapshot collector, ...)
//! send records through [`Intake`]: a cloneable, non-blocking handle whose
//! [`Intake::push`]`(data_id, payload)` queues one record next to the
//! socket's records and counts a drop when the queue is full.
//!
//! The control link ([`crate::link`]) feeds the DataServer assignment in
//! (`RegisterAck.data_endpoint`, then `DataAssign`) through
//! [`DataPlane::assigned`], and the identity IP through [`DataPlane::info`].
//! [`DataPlane::finished`] also waits for both sockets to remove their
//! files and links.
//!
//! On Windows the data path is not started yet ([`start`] is Unix-only:
//! the TCP loopback port Windows collectors use is still to come, see the
//! README's platform table); its parts are built there so the code that
//! talks to them compiles, hence no dead-code warnings for them.
#![cfg_attr(not(unix), allow(dead_code))]

pub mod agent_info;
pub mod batcher;
pub mod config;
pub mod intake;
pub mod ipc_codec;
#[cfg(unix)]
pub mod ipc_server;
#[cfg(unix)]
pub mod local_socket;
/// The plugin-message socket (COMPAT §1.3), owned by the plugin work.
pub mod message_ipc;
#[cfg(unix)]
pub mod send;
pub mod spool;
pub mod uplink;
pub mod wire;

#[cfg(test)]
mod test_frames;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(unix)]
use std::time::Duration;

#[cfg(unix)]
use gse_link::{Backoff, Dialer, DialerParts};
#[cfg(unix)]
use tokio::sync::mpsc;
use tokio::sync::watch;
#[cfg(unix)]
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use intake::Intake;

use self::agent_info::AgentInfo;
#[cfg(unix)]
use crate::config::AgentConfig;
#[cfg(unix)]
use crate::identity::AgentIdentity;

/// Chunks of records (all one socket read brought) queued between the
/// local socket and the batcher.
const RECORD_QUEUE: usize = 256;
/// Records of the agent's own producers ([`Intake`]) queued for the
/// batcher, taken before the socket's.
const OWN_QUEUE: usize = 64;
/// Batches queued between the batcher and the uplink.
const BATCH_QUEUE: usize = 16;

/// Counters of the data path, for logs and tests.
#[derive(Debug, Default)]
pub struct DataStats {
    pub records_in: AtomicU64,
    /// Records with data id 0, dropped.
    pub no_data_id: AtomicU64,
    pub batches_sent: AtomicU64,
    pub batches_acked: AtomicU64,
    pub records_acked: AtomicU64,
    /// Acks with a nonzero code (the batch is retried).
    pub refused_acks: AtomicU64,
    pub spooled_batches: AtomicU64,
    /// Batches the full spool dropped (oldest first).
    pub spool_dropped_batches: AtomicU64,
    /// Records lost otherwise (spool I/O failure, oversized batch).
    pub lost_records: AtomicU64,
    pub link_losses: AtomicU64,
    pub moves: AtomicU64,
}

/// A copy of [`DataStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataStatsSnapshot {
    pub records_in: u64,
    pub no_data_id: u64,
    pub batches_sent: u64,
    pub batches_acked: u64,
    pub records_acked: u64,
    pub refused_acks: u64,
    pub spooled_batches: u64,
    pub spool_dropped_batches: u64,
    pub lost_records: u64,
    pub link_losses: u64,
    pub moves: u64,
}

// === impl DataStats ===

impl DataStats {
    pub(crate) fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> DataStatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DataStatsSnapshot {
            records_in: g(&self.records_in),
            no_data_id: g(&self.no_data_id),
            batches_sent: g(&self.batches_sent),
            batches_acked: g(&self.batches_acked),
            records_acked: g(&self.records_acked),
            refused_acks: g(&self.refused_acks),
            spooled_batches: g(&self.spooled_batches),
            spool_dropped_batches: g(&self.spool_dropped_batches),
            lost_records: g(&self.lost_records),
            link_losses: g(&self.link_losses),
            moves: g(&self.moves),
        }
    }
}

/// Why the data path could not start.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[cfg(unix)]
    #[error("cannot open the local data socket (data.ipc): {0}")]
    Ipc(#[from] local_socket::SocketError),
    #[error("cannot open the data spool (data.spool_dir): {0}")]
    Spool(#[from] spool::SpoolError),
    #[error("cannot use the batch counter (data.spool_dir): {0}")]
    Seq(#[from] uplink::seqs::SeqError),
    #[error("cannot load the agent's TLS material for the data link: {0}")]
    Tls(#[from] gse_core::tls::TlsError),
}

/// The running data path's handles, for the control link and producers.
pub struct DataPlane {
    /// For in-agent producers.
    pub intake: Intake,
    /// The DataServer the node assigned (`None` = none yet, or none:
    /// use `data.servers`); sent on every registration and `DataAssign`.
    pub assigned: watch::Sender<Option<uplink::Assignment>>,
    /// What 0x0A answers; the control link fills in the identity IP.
    pub info: watch::Sender<AgentInfo>,
    pub stats: Arc<DataStats>,
    /// The socket collectors connect to.
    pub ipc_path: PathBuf,
    /// `host:port` of the control link's server, for wildcard endpoints.
    control: parking_lot::Mutex<String>,
    /// Plugin messages both ways (the plugin-message socket's plugins).
    pub messages: Arc<message_ipc::MessageHub>,
    tasks: TaskTracker,
}

impl DataPlane {
    /// The control link registered with `server`; `endpoint` is its
    /// `RegisterAck.data_endpoint` and `agent` this agent's `cloud:ip`.
    pub fn control_registered(&self, server: &str, endpoint: &str, agent: &str) {
        *self.control.lock() = server.to_string();
        if let Some((_, ip)) = agent.split_once(':') {
            self.info.send_if_modified(|info| {
                let changed = info.ip.is_empty() && !ip.is_empty();
                if changed {
                    info.ip = ip.to_string();
                }
                changed
            });
        }
        self.reassigned(endpoint, "registered");
    }

    /// The node assigned `endpoint` (`""` = none, use `data.servers`).
    /// The uplink hears of it even when it is the same endpoint again: a
    /// link that is down then dials at once.
    pub fn reassigned(&self, endpoint: &str, reason: &str) {
        let server = self.control.lock().clone();
        let target = match endpoint {
            "" => None,
            e => Some(uplink::Assignment {
                endpoint: resolve_endpoint(e, &server),
                server,
            }),
        };
        self.assigned.send_modify(|cur| {
            if *cur != target {
                let endpoint = target.as_ref().map(|a| a.endpoint.as_str());
                tracing::info!(endpoint = ?endpoint, reason, "DataServer assigned");
            }
            *cur = target;
        });
    }

    /// Waits for the data path's tasks after `shutdown` (the uplink spools
    /// what is still in memory).
    pub async fn finished(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Binds the socket, opens the spool and spawns the batcher and uplink.
#[cfg(unix)]
pub async fn start(
    cfg: &AgentConfig,
    identity: &AgentIdentity,
    shutdown: CancellationToken,
) -> Result<DataPlane, DataError> {
    let data = &cfg.data;
    let data_dir = &cfg.agent.data_dir;
    let info = AgentInfo {
        cloud_id: i32::try_from(identity.cloud_id).unwrap_or(i32::MAX),
        ip: cfg
            .agent
            .identity_ip
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        bk_agent_id: identity.agent_id.clone(),
        hostname: sysinfo::System::host_name().unwrap_or_default(),
        ..AgentInfo::default()
    };
    let (info_tx, info_rx) = watch::channel(info);
    let (records_tx, records_rx) = mpsc::channel(RECORD_QUEUE);
    let (own_tx, own_rx) = mpsc::channel(OWN_QUEUE);
    let ipc_path = data.ipc_path(data_dir);
    let server = ipc_server::IpcServer::bind_chunked(
        ipc_server::IpcServerConfig {
            path: ipc_path.clone(),
            socket_mode: data.socket_mode,
            socket_group: data.socket_group.clone(),
            max_connections: data.max_connections,
            max_connections_per_uid: data.max_connections_per_uid,
            root_reserve: Some(data.root_reserve()),
            idle_timeout: data.idle_timeout,
            ..Default::default()
        },
        info_rx,
        records_tx,
    )?
    .with_links(&data.ipc_links);

    let spool_dir = data.spool_path(data_dir);
    let opts = spool::SpoolOptions {
        sync: spool::SyncPolicy::EveryN(32),
        ..spool::SpoolOptions::new(data.spool_max_bytes().max(spool::MIN_MAX_BYTES))
    };
    let dir = spool_dir.clone();
    let opened = tokio::task::spawn_blocking(move || spool::Spool::open_with(dir, opts))
        .await
        .expect("opening the spool does not panic")?;
    let spool = uplink::stored::SpoolHandle::new(opened);
    let floor = spool.max_wire_seq().await? + 1;
    let seqs = uplink::seqs::SeqLease::open(&spool_dir, floor)?;
    if spool.waiting() > 0 {
        tracing::info!(batches = spool.waiting(), dir = %spool_dir.display(), "data spool holds batches from before; they go first");
    }

    let stats = Arc::new(DataStats::default());
    let (batches_tx, batches_rx) = mpsc::channel(BATCH_QUEUE);
    let (assigned_tx, assigned_rx) = watch::channel(None);
    let transport = Dialer::new(DialerParts {
        tls: gse_core::tls::upstream_client_config(&cfg.tls, cfg.agent.cloud_id)?,
        tls_files: cfg.tls.clone(),
        server_name: cfg.upstream.server_name.clone(),
        bind_ip: None,
        connect_timeout: cfg.upstream.connect_timeout,
        keepalive: false,
    });
    let dialer = uplink::Dialer {
        transport,
        hello: gse_proto::link::DataHello {
            agent_id: identity.agent_id.clone(),
            cloud_id: identity.cloud_id,
            identity_ip: cfg
                .agent
                .identity_ip
                .map(|ip| ip.to_string())
                .unwrap_or_default(),
            protocol_version: uplink::DATA_PROTOCOL_VERSION,
        },
        queue: data.max_in_flight,
    };
    let parts = uplink::UplinkParts {
        dialer: Arc::new(dialer),
        assigned: assigned_rx,
        fallback: data.servers.clone(),
        batches: batches_rx,
        spool,
        seqs,
        stats: stats.clone(),
        memory_max: data.memory_max_bytes(),
        batch_max: data.batch_max_bytes(),
        max_in_flight: data.max_in_flight,
        ack_timeout: data.ack_timeout,
        backoff: Backoff::new(cfg.upstream.backoff_initial, cfg.upstream.backoff_max),
    };
    let limits = batcher::BatchLimits {
        max_bytes: data.batch_max_bytes(),
        linger: Duration::from_millis(data.batch_linger_ms),
    };
    let tasks = TaskTracker::new();
    tasks.spawn(server.run(shutdown.clone()));
    let messages = Arc::new(message_ipc::MessageHub::new(
        message_ipc::Speakers::resolve(&cfg.plugin.message_users),
    ));
    if let Some(server) = message_ipc::MessageServer::start(cfg, identity, messages.clone()) {
        tasks.spawn(server.run(shutdown.clone()));
    }
    tasks.spawn(batcher::run(
        intake::Inbox::new(own_rx, records_rx),
        batches_tx,
        limits,
        stats.clone(),
        shutdown.clone(),
    ));
    tasks.spawn(uplink::run(parts, shutdown));
    Ok(DataPlane {
        intake: Intake::new(own_tx),
        assigned: assigned_tx,
        info: info_tx,
        stats,
        ipc_path,
        control: parking_lot::Mutex::new(String::new()),
        messages,
        tasks,
    })
}

/// The DataServer address to dial for an assigned `endpoint`: a missing or
/// wildcard host (`":28625"`, `"0.0.0.0:28625"`) means the host of the
/// control link's server (`control`, `host:port`).
pub fn resolve_endpoint(endpoint: &str, control: &str) -> String {
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return endpoint.to_string();
    };
    let wildcard = matches!(host, "" | "0.0.0.0" | "[::]" | "::");
    if !wildcard {
        return endpoint.to_string();
    }
    match control.rsplit_once(':') {
        Some((chost, _)) => format!("{chost}:{port}"),
        None => endpoint.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_endpoints_take_the_control_host() {
        assert_eq!(resolve_endpoint("10.0.0.2:28625", "h:1"), "10.0.0.2:28625");
        assert_eq!(
            resolve_endpoint("0.0.0.0:28625", "gse.example:28668"),
            "gse.example:28625"
        );
        assert_eq!(resolve_endpoint(":5", "127.0.0.1:28668"), "127.0.0.1:5");
        assert_eq!(resolve_endpoint("[::]:5", "[::1]:28668"), "[::1]:5");
    }
}
