//! A framed session: gse-proto frames ([`FrameCodec`]) over a TLS stream,
//! with the two time bounds every link needs.
//!
//! - [`first_frame`]: the hello (or its answer) by a deadline; a link's
//!   first frame is what lets the peer in, so waiting for it is bounded.
//! - [`send_within`]: one write bounded in time; a peer that stops reading
//!   (a stopped process, a paused VM) must not hold the writer forever.
//!   An abandoned write may leave half a frame behind, so the caller ends
//!   the session on either error.
//!
//! Each link puts the errors in its own words (what it was reading or
//! writing, and to whom).

use std::time::Duration;

use futures::{Sink, SinkExt, Stream, StreamExt};
use gse_core::certs::IdentityMark;
use gse_proto::{Frame, FrameCodec, FrameError};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::codec::Framed;

/// A session on the accepting side (agent link, DataServer).
pub type ServerSession = Framed<tokio_rustls::server::TlsStream<TcpStream>, FrameCodec>;

/// What a node serves one agent over: the agent's frames both ways, and
/// the identity its certificate names. A direct link ([`ServerSession`])
/// is one; the node's code for an agent (register, heartbeats, work) is
/// written once against this, whatever carries the frames.
pub trait AgentChannel:
    Stream<Item = Result<Frame, FrameError>> + Sink<Frame, Error = FrameError> + Unpin + Send
{
    /// The identity the agent's certificate names, when it is a
    /// per-agent one (read from the certificate checked at the TLS
    /// handshake); `None` for a fleet-wide certificate.
    fn certificate_identity(&self) -> Option<IdentityMark>;

    /// Gives back write-buffer memory a large frame grew (a long idle
    /// link needs `keep` bytes at most).
    fn shrink_write_buffer(&mut self, keep: usize);

    /// The only cloud area (`bk_cloud_id`) an agent may register from
    /// over this channel: a proxy's area; `None` for a direct link.
    fn cloud_area(&self) -> Option<i64> {
        None
    }

    /// The proxies the agent's frames pass, nearest the node first (its
    /// location's `via`); empty for a direct link.
    fn via(&self) -> Vec<String> {
        Vec::new()
    }

    /// Where the agent sends its data when its proxy relays it (C10): told
    /// to it as its DataServer; `None` for a direct link.
    fn data_endpoint(&self) -> Option<String> {
        None
    }
}

impl AgentChannel for ServerSession {
    fn certificate_identity(&self) -> Option<IdentityMark> {
        crate::claim::certificate_identity(self.get_ref().get_ref().1.peer_certificates())
    }

    fn shrink_write_buffer(&mut self, keep: usize) {
        *self.write_buffer_mut() = bytes::BytesMut::with_capacity(keep);
    }
}
/// A session on the dialing side.
pub type ClientSession = Framed<tokio_rustls::client::TlsStream<TcpStream>, FrameCodec>;

/// Why no first frame came.
#[derive(Debug, thiserror::Error)]
pub enum FirstFrameError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("{0}")]
    Frame(FrameError),
    #[error("no frame in time")]
    Timeout,
}

/// Why a bounded write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Failed(FrameError),
    #[error("the write did not complete within {0:?}")]
    TimedOut(Duration),
}

/// The next frame of `frames` if it comes by `deadline`.
pub async fn first_frame<S>(frames: &mut S, deadline: Instant) -> Result<Frame, FirstFrameError>
where
    S: Stream<Item = Result<Frame, FrameError>> + Unpin,
{
    match timeout_at(deadline, frames.next()).await {
        Ok(Some(Ok(frame))) => Ok(frame),
        Ok(Some(Err(e))) => Err(FirstFrameError::Frame(e)),
        Ok(None) => Err(FirstFrameError::Closed),
        Err(_) => Err(FirstFrameError::Timeout),
    }
}

/// Writes `frames` and flushes once, giving up after `limit` for all of
/// them: a burst (a task's frames for thousands of agents) goes out in few
/// TLS records and system calls instead of one flush per frame (the codec
/// still writes whenever its buffer fills).
pub async fn send_all_within<S>(
    sink: &mut S,
    frames: &[Frame],
    limit: Duration,
) -> Result<(), WriteError>
where
    S: Sink<Frame, Error = FrameError> + Unpin,
{
    let write = async {
        for frame in frames {
            sink.feed(frame.clone()).await?;
        }
        sink.flush().await
    };
    match timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(WriteError::Failed(e)),
        Err(_) => Err(WriteError::TimedOut(limit)),
    }
}

/// Writes (and flushes) `frame`, giving up after `limit`.
pub async fn send_within<S>(sink: &mut S, frame: Frame, limit: Duration) -> Result<(), WriteError>
where
    S: Sink<Frame, Error = FrameError> + Unpin,
{
    match timeout(limit, sink.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(WriteError::Failed(e)),
        Err(_) => Err(WriteError::TimedOut(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gse_proto::MsgType;
    use gse_proto::link::Goodbye;
    use tokio::io::duplex;

    fn goodbye() -> Frame {
        Frame::new(
            MsgType::Goodbye,
            7,
            &Goodbye {
                reason: "x".into(),
                ..Goodbye::default()
            },
        )
    }

    #[tokio::test]
    async fn a_first_frame_comes_closes_or_times_out() {
        let (a, b) = duplex(4096);
        let (mut a, mut b) = (
            Framed::new(a, FrameCodec::default()),
            Framed::new(b, FrameCodec::default()),
        );
        send_within(&mut a, goodbye(), Duration::from_secs(5))
            .await
            .unwrap();
        let soon = Instant::now() + Duration::from_secs(5);
        assert_eq!(first_frame(&mut b, soon).await.unwrap(), goodbye());
        let quick = Instant::now() + Duration::from_millis(20);
        assert!(matches!(
            first_frame(&mut b, quick).await,
            Err(FirstFrameError::Timeout)
        ));
        drop(a);
        assert!(matches!(
            first_frame(&mut b, soon).await,
            Err(FirstFrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_write_nobody_reads_gives_up_in_time() {
        // A pipe with room for less than one frame, never read.
        let (a, _b) = duplex(8);
        let mut a = Framed::new(a, FrameCodec::default());
        let limit = Duration::from_millis(50);
        let e = send_within(&mut a, goodbye(), limit).await.unwrap_err();
        assert!(matches!(e, WriteError::TimedOut(l) if l == limit), "{e}");
    }

    #[tokio::test]
    async fn a_burst_arrives_whole_and_in_order_or_gives_up_in_time() {
        let (a, b) = duplex(1 << 20);
        let (mut a, mut b) = (
            Framed::new(a, FrameCodec::default()),
            Framed::new(b, FrameCodec::default()),
        );
        let burst: Vec<Frame> = (0..300)
            .map(|i| Frame {
                stream_id: i,
                ..goodbye()
            })
            .collect();
        send_all_within(&mut a, &burst, Duration::from_secs(5))
            .await
            .unwrap();
        for want in &burst {
            let soon = Instant::now() + Duration::from_secs(5);
            assert_eq!(&first_frame(&mut b, soon).await.unwrap(), want);
        }

        let (c, _d) = duplex(8);
        let mut c = Framed::new(c, FrameCodec::default());
        let limit = Duration::from_millis(50);
        let e = send_all_within(&mut c, &burst, limit).await.unwrap_err();
        assert!(matches!(e, WriteError::TimedOut(l) if l == limit), "{e}");
    }
}
