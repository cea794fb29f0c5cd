//! gse-proxy: the relay of one isolated cloud area (issue 12, C2).
//!
//! Hosts of a cloud area (`bk_cloud_id` != 0: another VPC, data centre or
//! customer network) cannot reach the servers. Their agents connect to
//! this proxy exactly as to a node (same link, mutual TLS; they take this
//! proxy's certificate, bound to their area, as their server's), and the
//! proxy carries every agent as one channel of its single link upstream
//! (`gse_link::proxy`): to any node of the cluster, or to the next proxy of
//! a chain. On the node each channel is served as a direct agent's link;
//! the agent's location names the proxies it is reached through, which is
//! how tasks, files and alarms reach it.
//!
//! Start at [`run`]: [`upstream::run`] keeps the link up (failing over
//! between the configured addresses), [`downstream`] accepts the area's
//! connections (agents, and lower proxies) and opens their channels on it.
//! Frames are relayed by their header; an agent's body is never decoded,
//! so what a newer agent adds survives an older proxy.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod config;
mod downstream;
mod pieces;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use gse_link::{AcceptNames, Acceptor, AcceptorParts, CapNames, ConnLimits};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use config::ProxyConfig;

/// Why the proxy cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot load the proxy's TLS material: {0}")]
    Tls(#[from] gse_core::tls::TlsError),
    #[error(
        "cannot listen on {addr} ({what}): {source}; is another process using it, or is the address not this host's?"
    )]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "cannot prepare the file cache {dir} (file.cache_dir): {source}; point it at a directory this process may create and empty"
    )]
    Cache {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
}

const ACCEPT_NAMES: AcceptNames = AcceptNames {
    one: "agent connection",
    many: "agent connections",
    over_caps: "too many connections still in their TLS handshake",
    tls_prefix: "",
    refused_metric: "gse_proxy_connections_refused_total",
    tls_failures_metric: Some("gse_proxy_tls_failures_total"),
};

const DATA_ACCEPT_NAMES: AcceptNames = AcceptNames {
    one: "data link",
    many: "data links",
    over_caps: "too many connections still in their TLS handshake",
    tls_prefix: "data link: ",
    refused_metric: "gse_proxy_connections_refused_total",
    tls_failures_metric: Some("gse_proxy_tls_failures_total"),
};

const PENDING_CAPS: CapNames = CapNames {
    total: "over proxy.max_pending",
    per_ip: "over proxy.max_pending_per_ip",
    gauge: "gse_proxy_pending_connections",
};

/// A started proxy: where it listens.
pub struct Started {
    /// The agents' listener.
    pub listen: SocketAddr,
    /// What agents are told their parent is.
    pub agent_addr: SocketAddr,
    /// Where agents are told to send their data.
    pub data_addr: SocketAddr,
    /// The Prometheus endpoint, when configured.
    pub metrics: Option<SocketAddr>,
}

/// Binds the listeners and starts the proxy's tasks, which run until
/// `shutdown`.
pub async fn start(cfg: ProxyConfig, shutdown: CancellationToken) -> Result<Started, ProxyError> {
    let cfg = Arc::new(cfg);
    let tls = gse_core::tls::link_server_config(&cfg.tls)?;
    // Upstream's TLS is loaded now too, so that a bad file fails the start.
    gse_core::tls::upstream_client_config(&cfg.tls, cfg.proxy.bk_cloud_id)?;
    let listen = cfg.proxy.listen;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ProxyError::Listen {
            what: "proxy.listen, for the area's agents",
            addr: listen,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| ProxyError::Listen {
        what: "proxy.listen, for the area's agents",
        addr: listen,
        source,
    })?;
    let data_listen = cfg.proxy.data_listen;
    let data_listener =
        TcpListener::bind(data_listen)
            .await
            .map_err(|source| ProxyError::Listen {
                what: "proxy.data_listen, for the area's data",
                addr: data_listen,
                source,
            })?;
    let data_bound = data_listener
        .local_addr()
        .map_err(|source| ProxyError::Listen {
            what: "proxy.data_listen, for the area's data",
            addr: data_listen,
            source,
        })?;
    let metrics = match cfg.metrics.listen {
        Some(addr) => Some(serve_metrics(addr, shutdown.clone()).await?),
        None => None,
    };
    let agent_addr = cfg.agent_addr(bound);
    let data_addr = cfg.agent_addr(data_bound);
    let f = &cfg.file;
    let store = pieces::PieceStore::open(f.cache_dir.clone(), f.cache_max_mb << 20, f.cache_idle)
        .map_err(|source| ProxyError::Cache {
        dir: f.cache_dir.clone(),
        source,
    })?;

    let (control_tx, control) = watch::channel(None);
    let (data_tx, data) = watch::channel(None);
    let links = upstream::Links {
        control: control_tx,
        data: data_tx,
    };
    let up_cfg = cfg.clone();
    let up_shutdown = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = upstream::run(up_cfg, (agent_addr, store), links, up_shutdown).await {
            tracing::error!("the link upstream cannot run: {e}");
        }
    });

    // One set of caps for both listeners' pending handshakes.
    let pending = Arc::new(ConnLimits::new(
        cfg.proxy.max_pending,
        cfg.proxy.max_pending_per_ip,
        PENDING_CAPS,
    ));
    let listeners = [
        (listener, control, Some(data_addr), ACCEPT_NAMES),
        (data_listener, data, None, DATA_ACCEPT_NAMES),
    ];
    for (listener, current, data_addr, names) in listeners {
        let acceptor = Acceptor::new(AcceptorParts {
            names,
            tls: tls.clone(),
            tls_files: cfg.tls.clone(),
            handshake_timeout: cfg.proxy.handshake_timeout,
            pending: pending.clone(),
        });
        let downstream = Arc::new(downstream::Downstream {
            area: cfg.proxy.bk_cloud_id,
            proxy_id: cfg.proxy.id.clone(),
            agent_addr,
            data_addr,
            current,
            shutdown: shutdown.clone(),
        });
        tokio::spawn(acceptor.run(listener, shutdown.clone(), move |accepted| {
            downstream.clone().serve(accepted)
        }));
    }
    tracing::info!(
        proxy = %cfg.proxy.id, bk_cloud_id = cfg.proxy.bk_cloud_id, listen = %bound,
        agents_reach = %agent_addr, upstream = ?cfg.upstream.servers,
        "gse-proxy started"
    );
    Ok(Started {
        listen: bound,
        agent_addr,
        data_addr,
        metrics,
    })
}

/// `GET /metrics` on `addr`: the process's Prometheus metrics.
async fn serve_metrics(
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<SocketAddr, ProxyError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Listen {
            what: "metrics.listen",
            addr,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| ProxyError::Listen {
        what: "metrics.listen",
        addr,
        source,
    })?;
    let handle = gse_core::telemetry::metrics_handle();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!("the metrics endpoint stopped: {e}");
        }
    });
    Ok(bound)
}
