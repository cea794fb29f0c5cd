//! The source side of a task: build the manifest, answer FileManifest,
//! then serve the task's pieces until CancelTransfer or the deadline.
//!
//! [`run_source`] builds the manifest in `spawn_blocking` (it walks and
//! hashes) with the rights of the task's account (the request's `user`,
//! else `[file] default_source_user`; [`SourceAccount`]), so nothing the
//! account cannot read is listed, hashed or served; it answers with the
//! entries or an error code (`codes.rs`), and
//! registers the task as a seed in the [`PieceStore`]: the P2P listener
//! serves it to holders of the token, and [`serve_direct`] answers the
//! node's direct requests. Every piece read from the source file is checked
//! against the manifest first (`store.rs`). Bytes served are reported as
//! FileProgress SIDE_UPLOAD about once a second while they change.
//!
//! [`PieceStore`]: super::store::PieceStore
//! [`SourceAccount`]: super::account::SourceAccount

use std::sync::Arc;
use std::time::Duration;

use gse_proto::MsgType;
use gse_proto::link::{
    FileManifest, FileManifestRequest, FileState, PieceRequest, PieceStatus, ProgressSide,
};
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::account::SourceAccount;
use super::codes::{self, Failure};
use super::direct::LinkOut;
use super::manifest::{EntryKind, ManifestBuilder, ManifestError, SourceSpec};
use super::progress::{REPORT_EVERY, Reporter};
use super::rate::{Limits, RateLimit};
use super::service::FileService;
use super::store::{ServeError, Source, TaskShare};
use super::wire::{self, PieceDataBody};

/// Largest FileManifest body sent: the agent link's frame limit, less room.
const MAX_MANIFEST_BYTES: usize = gse_proto::frame::DEFAULT_MAX_BODY - 64 * 1024;

/// What a source task needs from its runner.
pub struct SourceCtx {
    pub service: Arc<FileService>,
    pub out: mpsc::Sender<LinkOut>,
}

/// Answers `req` with the manifest, then serves the task until `cancel`
/// or its deadline.
pub async fn run_source(
    ctx: SourceCtx,
    stream_id: u64,
    req: FileManifestRequest,
    cancel: CancellationToken,
) {
    let deadline = deadline(req.timeout_ms);
    let default_user = &ctx.service.settings.config.default_source_user;
    let share = match build(&req, default_user).await {
        Ok((answer, share)) => {
            // Serve before answering: targets may dial at once.
            ctx.service.store.insert(share.clone());
            send(&ctx.out, stream_id, &answer).await;
            share
        }
        Err(failure) => {
            tracing::warn!(code = failure.code, error = %failure.message, "cannot build the manifest");
            let answer = FileManifest {
                transfer_id: req.transfer_id.clone(),
                task_index: req.task_index,
                error_code: failure.code,
                error_message: failure.message,
                ..FileManifest::default()
            };
            send(&ctx.out, stream_id, &answer).await;
            return;
        }
    };
    tracing::info!(
        entries = share.manifest().len(),
        "manifest sent; serving the task"
    );
    let mut reporter = Reporter::new(
        ctx.out.clone(),
        stream_id,
        &req.transfer_id,
        req.task_index,
        ProgressSide::SideUpload,
    );
    let total = share.manifest().iter().map(|e| e.size()).sum();
    reporter.totals(total, 0);
    let why = serve_until(&share, &mut reporter, &cancel, deadline).await;
    ctx.service.store.remove(&share);
    let mut last = reporter.upload(share.served(), FileState::FileCancelled);
    last.error_message = why.into();
    reporter.send_final(last, None).await;
    tracing::info!(
        served = share.served(),
        reason = why,
        "stopped serving the task"
    );
}

/// Reports bytes served once a second while they change; returns why it
/// stopped.
async fn serve_until(
    share: &TaskShare,
    reporter: &mut Reporter,
    cancel: &CancellationToken,
    deadline: Option<tokio::time::Instant>,
) -> &'static str {
    let mut tick = tokio::time::interval(REPORT_EVERY);
    let mut reported = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return "transfer cancelled",
            _ = sleep_until(deadline) => return "transfer timeout reached",
            _ = tick.tick() => {}
        }
        let served = share.served();
        if served != reported {
            reported = served;
            let p = reporter.upload(served, FileState::FileRunning);
            reporter.send_running(p);
        }
    }
}

/// Builds the manifest and the seed share, or the failure to report.
async fn build(
    req: &FileManifestRequest,
    default_user: &str,
) -> Result<(FileManifest, Arc<TaskShare>), Failure> {
    let spec = SourceSpec {
        dir: req.source_dir.clone().into(),
        selection: wire::selection(req.selection, &req.pattern)?,
    };
    let builder = ManifestBuilder::new(spec.clone());
    let user = match req.user.as_str() {
        "" => default_user.to_owned(),
        named => named.to_owned(),
    };
    let (account, manifest) = tokio::task::spawn_blocking(move || {
        let account = SourceAccount::resolve(&user)?;
        let built = account.run(move || builder.build())?;
        let manifest = built.map_err(|e| failure_as(e, &account))?;
        Ok::<_, Failure>((account, manifest))
    })
    .await
    .map_err(|e| Failure::new(codes::SOURCE_UNREADABLE, format!("hashing failed: {e}")))??;
    let answer = FileManifest {
        transfer_id: req.transfer_id.clone(),
        task_index: req.task_index,
        error_code: 0,
        error_message: String::new(),
        entries: manifest.entries.iter().map(wire::entry_to_wire).collect(),
        skipped: manifest.skipped.clone(),
    };
    if answer.encoded_len() > MAX_MANIFEST_BYTES {
        return Err(Failure::new(
            codes::MANIFEST_TOO_LARGE,
            format!(
                "the manifest of {:?} ({} entries) is over {MAX_MANIFEST_BYTES} bytes; send a smaller directory or a narrower pattern",
                req.source_dir,
                manifest.entries.len()
            ),
        ));
    }
    let share = TaskShare::new(
        req.transfer_id.clone(),
        req.task_index,
        req.token.clone(),
        Arc::new(manifest.entries),
        RateLimit::new(req.upload_bytes_per_s),
    )
    .into_seed()
    .read_as(account);
    for (index, entry) in share.manifest().iter().enumerate() {
        if let EntryKind::File(_) = entry.kind {
            share.set_source(index, Source::Seed(spec.source_path(&entry.path)));
        }
    }
    Ok((answer, Arc::new(share)))
}

/// The failure to report for `e`, naming the account it was read as.
fn failure_as(e: ManifestError, account: &SourceAccount) -> Failure {
    let mut failure = Failure::from(e);
    if !account.name().is_empty() {
        failure.message = format!(
            "{} (the source is read as user {:?})",
            failure.message,
            account.name()
        );
    }
    failure
}

/// Answers the node's `PieceRequest` (a target's direct fetch) from the
/// store, under the task's and the agent's upload caps.
pub fn serve_direct(
    service: &Arc<FileService>,
    out: &mpsc::Sender<LinkOut>,
    all: &CancellationToken,
    stream_id: u64,
    req: PieceRequest,
) {
    let service = service.clone();
    let out = out.clone();
    let cancel = all.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = answer_direct(service, out, stream_id, req) => {}
        }
    });
}

async fn answer_direct(
    service: Arc<FileService>,
    out: mpsc::Sender<LinkOut>,
    stream_id: u64,
    req: PieceRequest,
) {
    let mut head = PieceDataBody {
        transfer_id: req.transfer_id.clone(),
        task_index: req.task_index,
        entry_index: req.entry_index,
        piece: req.piece,
        request_id: req.request_id,
        ..PieceDataBody::default()
    };
    let Some(share) = service.store.get(&req.transfer_id, req.task_index) else {
        head.status = PieceStatus::PieceError as i32;
        head.message = format!(
            "transfer {} task {} is not served by this agent",
            req.transfer_id, req.task_index
        );
        let _ = out
            .send(LinkOut::new(MsgType::PieceData, stream_id, &head))
            .await;
        return;
    };
    let len = match share.check(req.entry_index, req.piece) {
        Ok(len) => len as u64,
        Err(status) => {
            head.status = status as i32;
            let _ = out
                .send(LinkOut::new(MsgType::PieceData, stream_id, &head))
                .await;
            return;
        }
    };
    Limits::new([share.upload.clone(), service.upload.clone()])
        .acquire(len)
        .await;
    let Some(permit) = service.upload_buffer(len as usize).await else {
        return;
    };
    let (entry, piece) = (req.entry_index, req.piece);
    let buf = Vec::with_capacity(len as usize);
    let read = tokio::task::spawn_blocking(move || share.read_piece(entry, piece, buf)).await;
    match read {
        Ok(Ok(data)) => head.data = data.into(),
        Ok(Err(ServeError::Missing { .. })) => head.status = PieceStatus::PieceMissing as i32,
        Ok(Err(ServeError::Failed(message))) => {
            tracing::warn!(entry, piece, error = %message, "cannot serve a direct piece");
            head.status = PieceStatus::PieceError as i32;
            head.message = message;
        }
        Err(e) => {
            head.status = PieceStatus::PieceError as i32;
            head.message = e.to_string();
        }
    }
    let mut frame = LinkOut::new(MsgType::PieceData, stream_id, &head);
    drop(head);
    frame.permit = Some(permit);
    let _ = out.send(frame).await;
}

async fn send(out: &mpsc::Sender<LinkOut>, stream_id: u64, answer: &FileManifest) {
    let _ = out
        .send(LinkOut::new(MsgType::FileManifest, stream_id, answer))
        .await;
}

/// The deadline `timeout_ms` from now; `None` for 0.
pub fn deadline(timeout_ms: u64) -> Option<tokio::time::Instant> {
    (timeout_ms > 0).then(|| tokio::time::Instant::now() + Duration::from_millis(timeout_ms))
}

/// Sleeps until `deadline`, or forever without one.
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
