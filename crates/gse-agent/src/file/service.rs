//! The agent-wide part of file transfer: what outlives one link session.
//!
//! [`FileService::start`] binds the P2P listener (before the agent
//! registers, so the bound port can be advertised in `Register.p2p_addr`)
//! and holds the [`PieceStore`], the agent-wide upload slots and speed
//! caps, and the [`Dialer`] for dialling peers. Each link session makes a
//! [`FileRunner`] from it ([`FileService::runner`]).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gse_link::{Dialer, DialerParts};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::direct::LinkOut;
use super::peer::{PEER_SERVER_NAME, PeerServer};
use super::rate::RateLimit;
use super::runner::FileRunner;
use super::store::PieceStore;
use crate::config::{AgentConfig, FileConfig};

/// One MB of the `*_speed_mb` and `max_inflight_mb` keys.
const MB: u64 = 1024 * 1024;
/// Piece bytes being uploaded at once (read, not yet written), to peers
/// and direct: with slots alone, 4 MiB pieces would hold 32 MiB.
pub const UPLOAD_BUFFER_BYTES: usize = 8 << 20;

/// `[file]` with defaults filled in, as the transfer code uses it.
#[derive(Clone, Debug)]
pub struct FileSettings {
    pub config: FileConfig,
    pub cache_dir: PathBuf,
    pub max_inflight_bytes: u64,
    pub connect_timeout: Duration,
}

/// The permits of [`FileService::upload_buffer`] a piece of `len` bytes
/// takes (never more than there are).
pub fn upload_buffer_kib(len: usize) -> u32 {
    len.div_ceil(1024).min(UPLOAD_BUFFER_BYTES / 1024) as u32
}

/// Why file transfer cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FileServiceError {
    #[error("cannot load the agent's TLS material for the P2P link: {0}")]
    Tls(#[from] gse_core::tls::TlsError),
}

/// File transfer state shared by every link session of this agent.
pub struct FileService {
    pub settings: FileSettings,
    pub store: Arc<PieceStore>,
    pub upload: Option<Arc<RateLimit>>,
    pub download: Option<Arc<RateLimit>>,
    /// Upload buffer budget, in KiB ([`UPLOAD_BUFFER_BYTES`]); see
    /// [`upload_buffer_kib`].
    pub upload_buffer: Arc<Semaphore>,
    /// Dials peers (agent certificates, name `PEER_SERVER_NAME`) within
    /// `[file] p2p_connect_timeout`.
    pub peer_dialer: Dialer,
    /// Where the P2P listener is bound; `None` without one.
    pub listen_addr: Option<SocketAddr>,
}

// === impl FileService ===

impl FileService {
    /// Binds the P2P listener (if configured) and serves it until
    /// `shutdown`. A listener that cannot bind is logged, and the agent
    /// goes on without serving peers.
    pub async fn start(
        cfg: &AgentConfig,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, FileServiceError> {
        let file = &cfg.file;
        let settings = FileSettings {
            config: file.clone(),
            cache_dir: file.cache_dir(&cfg.agent.data_dir),
            max_inflight_bytes: file.max_inflight_mb.max(1) * MB,
            connect_timeout: file.p2p_connect_timeout,
        };
        let peer_dialer = Dialer::new(DialerParts {
            tls: gse_core::tls::peer_client_config(&cfg.tls)?,
            tls_files: cfg.tls.clone(),
            server_name: PEER_SERVER_NAME.into(),
            bind_ip: None,
            connect_timeout: settings.connect_timeout,
            keepalive: false,
        });
        let store = Arc::new(PieceStore::default());
        let upload = RateLimit::new(file.upload_speed_mb * MB);
        let slots = Arc::new(Semaphore::new(file.upload_slots.max(1) as usize));
        let upload_buffer = Arc::new(Semaphore::new(UPLOAD_BUFFER_BYTES / 1024));
        let mut listen_addr = None;
        if let Some(addr) = file.p2p_listen {
            let tls = gse_core::tls::server_config(&cfg.tls)?;
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    let bound = listener.local_addr().unwrap_or(addr);
                    listen_addr = Some(bound);
                    tracing::info!(
                        addr = %bound,
                        advertised = %file.describe_advertised(bound, cfg.agent.identity_ip),
                        "P2P listener ready"
                    );
                    let server = PeerServer::new(
                        store.clone(),
                        slots,
                        upload_buffer.clone(),
                        upload.clone(),
                        tls,
                    );
                    tokio::spawn(server.run(listener, shutdown));
                }
                Err(e) => tracing::error!(
                    addr = %addr, error = %e,
                    "cannot bind the P2P listener ([file] p2p_listen); this agent will serve no file pieces to peers"
                ),
            }
        }
        Ok(Arc::new(FileService {
            download: RateLimit::new(file.download_speed_mb * MB),
            upload_buffer,
            settings,
            store,
            upload,
            peer_dialer,
            listen_addr,
        }))
    }

    /// What to register as `p2p_addr`, given the identity IP of this
    /// session; `None` without a listener.
    pub fn p2p_addr(&self, identity_ip: Option<IpAddr>) -> Option<SocketAddr> {
        let bound = self.listen_addr?;
        Some(self.settings.config.advertised_addr(bound, identity_ip))
    }

    /// Waits for room to hold a piece of `len` bytes being uploaded.
    pub async fn upload_buffer(&self, len: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.upload_buffer
            .clone()
            .acquire_many_owned(upload_buffer_kib(len))
            .await
            .ok()
    }

    /// A runner for one link session; its frames go to `out`, and it
    /// introduces itself to peers as `agent` ("cloud:ip").
    pub fn runner(self: &Arc<Self>, out: mpsc::Sender<LinkOut>, agent: String) -> FileRunner {
        FileRunner::new(self.clone(), out, agent)
    }
}
