//! Direct transfer through the node (F2, F3) on the agent link, and the
//! bounded queue file frames take to the link.
//!
//! [`LinkOut`] is what the file runner hands the link session: a frame and,
//! for frames carrying piece bytes, an upload permit released only once the
//! frame is written, so piece bytes queued for the link stay bounded.
//! [`DirectClient`] fetches one piece through the node: a `PieceRequest`
//! with a request id of ours, answered by the `PieceData` with the same id.
//! Serving the node's requests is `source.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gse_proto::link::{PieceRequest, PieceStatus};
use gse_proto::{Frame, MsgType};
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::wire::PieceDataBody;

/// How long a direct request may take before it counts as failed.
pub const DIRECT_TIMEOUT: Duration = Duration::from_secs(60);

/// A frame for the agent link.
#[derive(Debug)]
pub struct LinkOut {
    pub frame: Frame,
    /// Held until the frame is written (bounds piece bytes in the queue).
    pub permit: Option<OwnedSemaphorePermit>,
}

impl LinkOut {
    pub fn new(msg_type: MsgType, stream_id: u64, msg: &impl prost::Message) -> Self {
        LinkOut {
            frame: Frame::new(msg_type, stream_id, msg),
            permit: None,
        }
    }
}

/// Why a direct fetch brought no data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectError {
    #[error("the source is busy")]
    Busy,
    #[error("the source does not have the piece")]
    Missing,
    #[error("the source could not serve the piece: {0}")]
    Failed(String),
    #[error("no answer through the node within {}s", DIRECT_TIMEOUT.as_secs())]
    Timeout,
    #[error("the link to the node is gone")]
    LinkGone,
}

/// Fetches pieces through the node; one per link session.
#[derive(Debug)]
pub struct DirectClient {
    out: mpsc::Sender<LinkOut>,
    pending: Mutex<HashMap<u64, oneshot::Sender<PieceDataBody>>>,
    next_id: AtomicU64,
}

// === impl DirectClient ===

impl DirectClient {
    pub fn new(out: mpsc::Sender<LinkOut>) -> Arc<Self> {
        Arc::new(DirectClient {
            out,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    /// Asks the node for piece `piece` of `entry` and waits for it; the
    /// request goes on `stream_id`, the download's stream (the answer is
    /// matched by its request id).
    pub async fn fetch(
        &self,
        stream_id: u64,
        transfer_id: &str,
        task_index: u32,
        entry: u32,
        piece: u32,
    ) -> Result<Bytes, DirectError> {
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(request_id, tx);
        let _forget = Forget {
            client: self,
            request_id,
        };
        let req = PieceRequest {
            transfer_id: transfer_id.to_owned(),
            task_index,
            entry_index: entry,
            piece,
            request_id,
        };
        self.out
            .send(LinkOut::new(MsgType::PieceRequest, stream_id, &req))
            .await
            .map_err(|_| DirectError::LinkGone)?;
        let answer = tokio::time::timeout(DIRECT_TIMEOUT, rx)
            .await
            .map_err(|_| DirectError::Timeout)?
            .map_err(|_| DirectError::LinkGone)?;
        match PieceStatus::try_from(answer.status) {
            Ok(PieceStatus::PieceOk) => Ok(answer.data),
            Ok(PieceStatus::PieceBusy) => Err(DirectError::Busy),
            Ok(PieceStatus::PieceMissing) => Err(DirectError::Missing),
            _ => Err(DirectError::Failed(if answer.message.is_empty() {
                format!("status {}", answer.status)
            } else {
                answer.message
            })),
        }
    }

    /// Hands a `PieceData` from the node to its waiting fetch; `false` if
    /// nothing waits for its request id.
    pub fn on_piece_data(&self, body: PieceDataBody) -> bool {
        match self.pending.lock().remove(&body.request_id) {
            Some(tx) => tx.send(body).is_ok(),
            None => false,
        }
    }
}

/// Forgets a request id when its fetch ends, however it ends.
struct Forget<'a> {
    client: &'a DirectClient,
    request_id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.client.pending.lock().remove(&self.request_id);
    }
}
