//! The peer link (F1, C4): agents fetching pieces from each other over
//! mutual TLS, one connection per (downloader, uploader, task).
//!
//! - [`server`]: [`PeerServer`] is the P2P listener. It checks each
//!   connection's `PeerHello` (task and token) against the [`PieceStore`],
//!   answers `PieceRequest`s within the upload slots and speed caps, and
//!   pushes `Have`s as the task gains pieces.
//! - [`client`]: [`connect`] dials a peer and says hello; the download
//!   side (`swarm/`) drives the connection.
//!
//! Both sides use the agent link's frame format with a smaller body limit
//! ([`PEER_MAX_FRAME`]), and write through one [`Outgoing`] queue per
//! connection so that piece bytes go from their buffer to TLS uncopied.
//! A peer that misbehaves loses its own connection, nothing else.
//!
//! [`PieceStore`]: super::store::PieceStore

pub mod client;
pub mod server;

use std::time::Duration;

use gse_proto::{Frame, FrameCodec};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::wire::{MAX_PIECE_SIZE, PieceDataBody, frame_header, piece_frame_head};

pub use client::{PeerError, connect};
pub use server::PeerServer;

/// Largest frame body on the peer link: one piece and its fields.
pub const PEER_MAX_FRAME: usize = MAX_PIECE_SIZE as usize + 64 * 1024;
/// TLS name every agent certificate carries and peers verify.
pub const PEER_SERVER_NAME: &str = "gse-agent";
/// A write that makes no progress this long ends the connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Frames queued per connection before the producer waits.
pub const CONN_QUEUE: usize = 16;

/// The codec of the peer link.
pub fn peer_codec() -> FrameCodec {
    FrameCodec::new(PEER_MAX_FRAME)
}

/// One frame for a connection's writer.
#[derive(Debug)]
pub enum Outgoing {
    Frame(Frame),
    /// A `PieceData` whose `data` is written from `data`, not from `head`.
    /// `permits` (upload slot, buffer) are released once it is written.
    Piece {
        stream_id: u64,
        head: PieceDataBody,
        data: Vec<u8>,
        permits: Vec<OwnedSemaphorePermit>,
    },
}

/// Writes one frame (not flushed).
pub async fn write_outgoing<W: AsyncWrite + Unpin>(
    w: &mut W,
    out: Outgoing,
) -> std::io::Result<()> {
    match out {
        Outgoing::Frame(frame) => {
            w.write_all(&frame_header(
                frame.msg_type,
                frame.stream_id,
                frame.body.len(),
            ))
            .await?;
            w.write_all(&frame.body).await
        }
        Outgoing::Piece {
            stream_id,
            head,
            data,
            permits,
        } => {
            w.write_all(&piece_frame_head(stream_id, &head, data.len()))
                .await?;
            w.write_all(&data).await?;
            drop(permits);
            Ok(())
        }
    }
}

/// Writes what `rx` yields until it closes; flushes whenever the queue is
/// empty. Returns why it stopped on an error.
pub async fn run_writer<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Outgoing>,
) -> Result<(), String> {
    while let Some(out) = rx.recv().await {
        let write = async {
            write_outgoing(&mut w, out).await?;
            if rx.is_empty() {
                w.flush().await?;
            }
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("write failed: {e}")),
            Err(_) => {
                return Err(format!(
                    "the peer read nothing for {}s",
                    WRITE_TIMEOUT.as_secs()
                ));
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), w.shutdown()).await;
    Ok(())
}
