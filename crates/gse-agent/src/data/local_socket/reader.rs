//! [`FrameReader`]: how both local sockets read a connection.
//!
//! The buffer grows with the bytes that arrive, never with what a header
//! claims: a frame larger than [`FREE_FRAME_BYTES`] is read only once its
//! [`FramePermit`] is granted (see `admission`), so unfinished frames stay
//! within the per-user and total budgets. A connection that completes no
//! frame for `idle_timeout` (waiting for room included) ends with
//! [`ReadEnd::Idle`]. Time spent handing records on (backpressure) does not
//! count: the caller marks [`progress`](FrameReader::progress) after it.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use super::admission::{FREE_FRAME_BYTES, FramePermit, Slot};

/// Free room in the buffer before each read, at least.
pub const READ_CHUNK: usize = 64 * 1024;

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadEnd {
    /// No frame completed within the idle timeout.
    Idle(Duration),
    Io(std::io::Error),
}

/// A connection's read buffer, budget and idle clock.
pub struct FrameReader {
    buf: BytesMut,
    permit: Option<FramePermit>,
    idle: Duration,
    deadline: Instant,
}

impl FrameReader {
    pub fn new(idle: Duration) -> FrameReader {
        FrameReader {
            buf: BytesMut::new(),
            permit: None,
            idle,
            deadline: Instant::now() + idle,
        }
    }

    /// The bytes read and not yet decoded.
    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// A frame completed, or records were handed on: the idle clock starts
    /// again.
    pub fn progress(&mut self) {
        self.deadline = Instant::now() + self.idle;
    }

    /// Reads more bytes; `head` is the whole length the header at the start
    /// of the buffer claims, once known. Returns 0 at end of stream.
    pub async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
        slot: &Slot,
        head: Option<usize>,
    ) -> Result<usize, ReadEnd> {
        self.budget(slot, head).await?;
        let want = match head {
            Some(total) if total > self.buf.len() => (total - self.buf.len()).min(READ_CHUNK),
            _ => READ_CHUNK,
        };
        self.buf.reserve(want);
        match tokio::time::timeout_at(self.deadline, rd.read_buf(&mut self.buf)).await {
            Err(_) => Err(ReadEnd::Idle(self.idle)),
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(ReadEnd::Io(e)),
        }
    }

    /// Holds a permit exactly while the head frame is a large one.
    async fn budget(&mut self, slot: &Slot, head: Option<usize>) -> Result<(), ReadEnd> {
        let large = head.filter(|&len| len > FREE_FRAME_BYTES);
        let Some(len) = large else {
            self.permit = None;
            return Ok(());
        };
        if self.permit.as_ref().is_some_and(|p| p.len == len) {
            return Ok(());
        }
        self.permit = None;
        match tokio::time::timeout_at(self.deadline, slot.reserve(len)).await {
            Ok(permit) => {
                self.permit = Some(permit);
                Ok(())
            }
            Err(_) => Err(ReadEnd::Idle(self.idle)),
        }
    }
}
