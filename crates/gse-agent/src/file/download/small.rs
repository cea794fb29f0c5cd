//! Small files, fetched whole through the node (F2): a few at a time, each
//! piece checked against its blake3 as it arrives, the file against its
//! size, MD5 and blake3 before it is written (`install::write_small_file`).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};

use super::{DownloadCtx, Plan, blocking};
use crate::file::codes::{self, Failure};
use crate::file::digest::FileDigest;
use crate::file::direct::DirectError;
use crate::file::install;
use crate::file::manifest::EntryKind;
use crate::file::store::{Source, TaskShare};

/// Small files fetched at once.
const SMALL_DEPTH: usize = 8;
/// Failed direct fetches of one piece before the task fails.
pub const DIRECT_ATTEMPTS: u32 = 3;
/// Wait after the source answered "busy".
const BUSY_RETRY: Duration = Duration::from_millis(200);

/// Fetches and installs the small files `indexes` of `plan`.
pub async fn fetch_all(
    ctx: &Arc<DownloadCtx>,
    plan: &Plan,
    share: &Arc<TaskShare>,
    indexes: Vec<usize>,
) -> Result<(), Failure> {
    futures::stream::iter(indexes)
        .map(|i| fetch_one(ctx, plan, share, i))
        .buffer_unordered(SMALL_DEPTH)
        .try_for_each(|()| async { Ok(()) })
        .await
}

async fn fetch_one(
    ctx: &Arc<DownloadCtx>,
    plan: &Plan,
    share: &Arc<TaskShare>,
    index: usize,
) -> Result<(), Failure> {
    let entry = &plan.entries[index];
    let EntryKind::File(digest) = &entry.kind else {
        return Ok(());
    };
    let content = fetch_content(ctx, index as u32, digest, &entry.path).await?;
    let (targets, opts, digest2, mode) = (
        plan.targets.clone(),
        plan.opts.clone(),
        digest.clone(),
        entry.mode,
    );
    blocking(move || install::write_small_file(&targets[index], &content, &digest2, mode, &opts))
        .await??;
    ctx.stats.add(digest.size, true);
    ctx.stats
        .files_done
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if plan.relay {
        // A relay passes small files on direct, from its cache.
        share.set_source(index, Source::Seed(plan.targets[index].path().into()));
    }
    Ok(())
}

/// The whole content of a small file, piece by piece.
async fn fetch_content(
    ctx: &DownloadCtx,
    entry: u32,
    digest: &FileDigest,
    path: &str,
) -> Result<Bytes, Failure> {
    match digest.piece_count() {
        0 => Ok(Bytes::new()),
        1 => fetch_piece(ctx, entry, 0, digest, path).await,
        n => {
            let mut all = BytesMut::with_capacity(digest.size as usize);
            for piece in 0..n {
                all.extend_from_slice(&fetch_piece(ctx, entry, piece, digest, path).await?);
            }
            Ok(all.freeze())
        }
    }
}

/// One piece through the node, verified, with retries.
pub async fn fetch_piece(
    ctx: &DownloadCtx,
    entry: u32,
    piece: u32,
    digest: &FileDigest,
    path: &str,
) -> Result<Bytes, Failure> {
    let len = digest.piece_range(piece).map_or(0, |(_, len)| len as u64);
    let mut failures = 0;
    loop {
        ctx.limits.acquire(len).await;
        let error = match ctx
            .direct
            .fetch(
                ctx.stream_id,
                &ctx.transfer_id,
                ctx.task_index,
                entry,
                piece,
            )
            .await
        {
            Ok(data) if digest.piece_matches(piece, &data) => return Ok(data),
            Ok(data) => format!("{} bytes that do not match the piece's blake3", data.len()),
            Err(DirectError::Busy) => {
                ctx.limits.refund(len);
                tokio::time::sleep(BUSY_RETRY).await;
                continue;
            }
            Err(e) => e.to_string(),
        };
        failures += 1;
        tracing::warn!(path, piece, failures, error = %error, "direct fetch failed");
        if failures >= DIRECT_ATTEMPTS {
            return Err(unobtainable(path, piece, failures, &error));
        }
        tokio::time::sleep(BUSY_RETRY * failures).await;
    }
}

/// The failure of a piece that neither peers nor the node could provide.
pub fn unobtainable(path: &str, piece: u32, failures: u32, last: &str) -> Failure {
    Failure::new(
        codes::PIECES_UNOBTAINABLE,
        format!(
            "piece {piece} of {path:?} could not be fetched through the node ({failures} attempts, last: {last}); \
             check that the source agent is online and the source file unchanged, then retry"
        ),
    )
}
