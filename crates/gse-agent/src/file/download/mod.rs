//! The target (and relay) side of a task: FileStart -> files in place.
//!
//! [`run`] checks the whole request first ([`plan::Plan`]: paths, owner),
//! then installs directories, fetches small files whole through the node
//! (`small.rs`, F2) while large files come in pieces from peers
//! (`swarm/`, F1, F3, F5), then links, then directory modes (deepest
//! first). Pieces we hold are served to others at once through the
//! [`PieceStore`], and after the download until CancelTransfer or the
//! deadline. Progress goes out once a second and once at the end; any
//! failure ends the task with its code, and nothing half-written stays
//! under a final name. Relays fetch into their cache and install nothing.
//!
//! [`PieceStore`]: crate::file::store::PieceStore

mod plan;
mod small;
pub(crate) mod swarm;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use gse_proto::link::{FileStart, FileState, Peer, ProgressSide};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::codes::{self, Failure};
use super::direct::{DirectClient, LinkOut};
use super::install;
use super::manifest::EntryKind;
use super::progress::{DownloadStats, REPORT_EVERY, Reporter};
use super::rate::{Limits, RateLimit};
use super::service::FileService;
use super::source::{deadline, sleep_until};
use super::store::TaskShare;

pub use plan::Plan;

/// Failed P2P attempts of one piece before it goes direct, when the
/// FileStart does not say.
const DEFAULT_P2P_ATTEMPTS: u32 = 3;

/// What one download needs.
pub struct DownloadCtx {
    pub service: Arc<FileService>,
    pub direct: Arc<DirectClient>,
    pub out: mpsc::Sender<LinkOut>,
    /// This agent, "cloud:ip" (PeerHello, and to skip ourselves in peer sets).
    pub agent: String,
    pub transfer_id: String,
    pub task_index: u32,
    /// The stream the node sent FileStart on: progress and direct piece
    /// requests go on it, so a node relaying for another node routes them
    /// to the node that owns the transfer by header alone.
    pub stream_id: u64,
    /// The task's source, "cloud:ip" (for the fallback reason).
    pub source_agent: String,
    pub token: Vec<u8>,
    /// Download caps: the task's and the agent's.
    pub limits: Limits,
    pub p2p_attempts: u32,
    pub stats: Arc<DownloadStats>,
}

/// How a download ended, before reporting.
enum Ended {
    Failed(Failure),
    Cancelled,
    TimedOut,
}

// === impl DownloadCtx ===

impl DownloadCtx {
    pub fn new(
        service: Arc<FileService>,
        direct: Arc<DirectClient>,
        out: mpsc::Sender<LinkOut>,
        agent: String,
        stream_id: u64,
        start: &FileStart,
    ) -> Self {
        DownloadCtx {
            limits: Limits::new([
                RateLimit::new(start.download_bytes_per_s),
                service.download.clone(),
            ]),
            service,
            direct,
            out,
            agent,
            transfer_id: start.transfer_id.clone(),
            task_index: start.task_index,
            stream_id,
            source_agent: start.source_agent.clone(),
            token: start.token.clone(),
            p2p_attempts: match start.p2p_attempts {
                0 => DEFAULT_P2P_ATTEMPTS,
                n => n,
            },
            stats: Arc::default(),
        }
    }
}

/// Runs the download of `start`, then serves it until cancelled or its
/// deadline; reports progress on `stream_id`.
pub async fn run(
    ctx: DownloadCtx,
    stream_id: u64,
    mut start: FileStart,
    peer_updates: mpsc::Receiver<Vec<Peer>>,
    cancel: CancellationToken,
) {
    let ctx = Arc::new(ctx);
    let deadline = deadline(start.timeout_ms);
    let mut reporter = Reporter::new(
        ctx.out.clone(),
        stream_id,
        &start.transfer_id,
        start.task_index,
        ProgressSide::SideDownload,
    );
    let peers = std::mem::take(&mut start.peers);
    let upload_cap = RateLimit::new(start.upload_bytes_per_s);
    let cache_dir = ctx.service.settings.cache_dir.clone();
    let planned = guard(&cancel, deadline, async move {
        blocking(move || Plan::build(&start, &cache_dir)).await?
    });
    let plan = match planned.await {
        Ok(plan) => plan,
        Err(ended) => return report_end(&mut reporter, &ctx.stats, ended).await,
    };
    tracing::info!(root = ?plan.root, entries = plan.entries.len(), bytes = plan.total_bytes(), relay = plan.relay, "download starting");
    ctx.stats.total.store(plan.total_bytes(), Ordering::Relaxed);
    ctx.stats
        .files_total
        .store(plan.files_total(), Ordering::Relaxed);
    let share = Arc::new(TaskShare::new(
        ctx.transfer_id.clone(),
        ctx.task_index,
        ctx.token.clone(),
        plan.entries.clone(),
        upload_cap,
    ));
    let owned = ctx.service.store.insert_if_absent(share.clone());
    let work = fetch(&ctx, &plan, &share, peers, peer_updates);
    let stats = ctx.stats.clone();
    match guard(&cancel, deadline, with_reports(&mut reporter, &stats, work)).await {
        Ok(()) => {
            let done = reporter.download(&ctx.stats, FileState::FileDone);
            tracing::info!(
                bytes_p2p = done.bytes_p2p,
                bytes_direct = done.bytes_direct,
                "download done; serving it to peers until the transfer ends"
            );
            reporter.send_final(done, None).await;
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = sleep_until(deadline) => {}
            }
        }
        Err(ended) => report_end(&mut reporter, &ctx.stats, ended).await,
    }
    clean_up(&ctx, &plan, &share, owned).await;
}

/// Directories, then files (small ones direct, large ones in pieces, at
/// the same time), then links and directory modes.
async fn fetch(
    ctx: &Arc<DownloadCtx>,
    plan: &Plan,
    share: &Arc<TaskShare>,
    peers: Vec<Peer>,
    peer_updates: mpsc::Receiver<Vec<Peer>>,
) -> Result<(), Failure> {
    if !plan.relay {
        let (targets, opts, dirs) = (plan.targets.clone(), plan.opts.clone(), plan.dirs());
        blocking(move || {
            dirs.iter()
                .try_for_each(|&i| install::install_dir(&targets[i], &opts))
                .map_err(Failure::from)
        })
        .await??;
    }
    let small = small::fetch_all(ctx, plan, share, plan.small_files());
    let large = swarm::Swarm::new(ctx.clone(), plan, share.clone(), peers, peer_updates).run();
    tokio::try_join!(small, large)?;
    if !plan.relay {
        let (entries, targets, opts) = (
            plan.entries.clone(),
            plan.targets.clone(),
            plan.opts.clone(),
        );
        let (links, dirs) = (plan.links(), plan.dirs());
        blocking(move || {
            for &i in &links {
                if let EntryKind::Symlink { target } = &entries[i].kind {
                    install_symlink(&targets[i], target, &opts)?;
                }
            }
            for &i in dirs.iter().rev() {
                install::set_dir_mode(&targets[i], entries[i].mode, &opts)?;
            }
            Ok::<_, Failure>(())
        })
        .await??;
    }
    Ok(())
}

#[cfg(unix)]
fn install_symlink(
    target: &super::TargetPath,
    link: &str,
    opts: &super::InstallOptions,
) -> Result<(), Failure> {
    Ok(install::install_symlink(target, link, opts)?)
}

#[cfg(not(unix))]
fn install_symlink(
    target: &super::TargetPath,
    _link: &str,
    _opts: &super::InstallOptions,
) -> Result<(), Failure> {
    Err(Failure::new(
        codes::INSTALL,
        format!(
            "cannot create the link {:?}: links are not supported on this platform",
            target.path()
        ),
    ))
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Failure::new(codes::WRITE, format!("a disk task failed: {e}")))
}

/// Runs `fut` unless the task is cancelled or its deadline passes first.
async fn guard<T>(
    cancel: &CancellationToken,
    deadline: Option<tokio::time::Instant>,
    fut: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Ended> {
    tokio::select! {
        _ = cancel.cancelled() => Err(Ended::Cancelled),
        _ = sleep_until(deadline) => Err(Ended::TimedOut),
        r = fut => r.map_err(Ended::Failed),
    }
}

/// Runs `fut`, sending a running report every [`REPORT_EVERY`].
async fn with_reports<F: Future>(
    reporter: &mut Reporter,
    stats: &DownloadStats,
    fut: F,
) -> F::Output {
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = &mut fut => return r,
            _ = tick.tick() => {
                let p = reporter.download(stats, FileState::FileRunning);
                reporter.send_running(p);
            }
        }
    }
}

async fn report_end(reporter: &mut Reporter, stats: &DownloadStats, ended: Ended) {
    match ended {
        Ended::Failed(f) => {
            tracing::warn!(code = f.code, error = %f.message, "download failed");
            let p = reporter.download(stats, FileState::FileFailed);
            reporter.send_final(p, Some(&f)).await;
        }
        Ended::Cancelled => {
            tracing::info!("download cancelled");
            let p = reporter.download(stats, FileState::FileCancelled);
            reporter.send_final(p, None).await;
        }
        Ended::TimedOut => {
            let p = reporter.download(stats, FileState::FileFailed);
            let f = Failure::new(
                codes::TIMEOUT,
                format!(
                    "the transfer's timeout passed with {} of {} bytes here; raise timeout or check the peers' and source's speed",
                    p.done_bytes, p.total_bytes
                ),
            );
            tracing::warn!(error = %f.message, "download timed out");
            reporter.send_final(p, Some(&f)).await;
        }
    }
}

/// Stops serving the task; a relay's cache goes too.
async fn clean_up(ctx: &DownloadCtx, plan: &Plan, share: &Arc<TaskShare>, owned: bool) {
    if owned {
        ctx.service.store.remove(share);
    }
    if plan.relay {
        let root = plan.root.clone();
        let _ = blocking(move || {
            if let Err(e) = std::fs::remove_dir_all(&root) {
                tracing::warn!(dir = ?root, error = %e, "cannot remove the relay cache");
            }
            if let Some(parent) = root.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        })
        .await;
    }
}
