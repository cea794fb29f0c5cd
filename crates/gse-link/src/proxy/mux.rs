//! The accepting end of a proxy's link, written once: the node's agent
//! link and each DataServer take proxies' links with it (and, for the
//! hello only, a gse-proxy takes its lower proxies').
//!
//! [`accept_hello`] reads and answers `ProxyHello`. [`relay`] then moves
//! frames between the link and its channels: each `ProxyOpen` becomes a
//! [`ProxiedChannel`], an [`AgentChannel`] that the listener's
//! [`ChannelServer`] serves exactly as it serves a direct agent's link.
//! The link never waits for one channel: a channel whose session falls
//! [`MuxLimits::channel_queue`] frames behind is closed (its agent
//! reconnects). Frames of the link itself (not a channel's) go to
//! [`ChannelServer::link_frame`]; the listener sends its own with
//! [`Up::Raw`]. When the link ends, every channel ends with it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Sink, Stream, StreamExt};
use gse_core::certs::IdentityMark;
use gse_proto::link::{ProxyClose, ProxyData, ProxyHello, ProxyHelloAck, ProxyOpen};
use gse_proto::{Frame, FrameError, MsgType};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, PollSender};

use super::{Hello, bad_via, check_hello, close_frame, open_identity, unwrap, wrap};
use crate::session::{AgentChannel, FirstFrameError, first_frame, send_all_within, send_within};

/// Frames written to a proxy's link in one flush, at most.
const WRITE_BATCH: usize = 256;

/// What goes up a proxy's link to the proxy.
pub enum Up {
    /// A frame of a channel's agent.
    Frame(u64, Frame),
    /// The channel's agent session ended here.
    Ended(u64),
    /// A frame of the link itself (a probe).
    Raw(Frame),
}

/// One agent behind the proxy, as the listener's code for an agent sees it.
pub struct ProxiedChannel {
    chan: u64,
    down: mpsc::Receiver<Frame>,
    up: PollSender<Up>,
    identity: Option<IdentityMark>,
    area: i64,
    via: Vec<String>,
    /// The agent's address as its proxy saw it.
    pub peer: SocketAddr,
    /// Where the agent reached its own proxy: its parent.
    pub parent: SocketAddr,
    /// Its proxy's data listener, when that proxy relays data.
    data: Option<String>,
}

impl Stream for ProxiedChannel {
    type Item = Result<Frame, FrameError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.down.poll_recv(cx).map(|f| f.map(Ok))
    }
}

fn link_gone() -> FrameError {
    FrameError::Io(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the proxy's link ended",
    ))
}

impl Sink<Frame> for ProxiedChannel {
    type Error = FrameError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        self.up.poll_reserve(cx).map_err(|_| link_gone())
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> Result<(), FrameError> {
        let chan = self.chan;
        self.up
            .send_item(Up::Frame(chan, frame))
            .map_err(|_| link_gone())
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        self.up.close();
        Poll::Ready(Ok(()))
    }
}

impl AgentChannel for ProxiedChannel {
    fn certificate_identity(&self) -> Option<IdentityMark> {
        self.identity.clone()
    }

    fn shrink_write_buffer(&mut self, _: usize) {}

    fn cloud_area(&self) -> Option<i64> {
        Some(self.area)
    }

    fn via(&self) -> Vec<String> {
        self.via.clone()
    }

    fn data_endpoint(&self) -> Option<String> {
        self.data.clone()
    }
}

/// Serves the channels of proxies' links for one listener.
pub trait ChannelServer: Send + Sync + 'static {
    /// Serves one channel's agent until its session ends.
    fn serve(&self, channel: ProxiedChannel) -> BoxFuture<'static, ()>;

    /// A frame of the link itself, not of a channel; `Err(reason)` ends
    /// the link. None is expected unless the listener sends its own.
    fn link_frame(&self, frame: Frame) -> Result<(), String> {
        Err(format!(
            "protocol error: a proxy sent message type {} on its link",
            frame.msg_type.to_u16()
        ))
    }
}

/// Bounds of one proxy link, and how its refusals name this side.
#[derive(Clone, Debug)]
pub struct MuxLimits {
    /// Agents one link may carry at once.
    pub max_channels: usize,
    /// Frames queued into one channel's session before it is closed.
    pub channel_queue: usize,
    /// Frames of all channels queued for the link.
    pub out_queue: usize,
    /// A write to the link that takes longer ends it.
    pub write_timeout: Duration,
    /// This side in words ("node node-1", "DataServer node-1/0").
    pub who: String,
}

/// Reads a proxy's `ProxyHello` by `deadline` and answers it: refused when
/// [`check_hello`] (with the certificate's `cert_area`) or `accept` says
/// why; else `accept`'s ack is sent. The hello when accepted.
pub async fn accept_hello<S>(
    link: &mut S,
    (cert_area, peer, deadline): (Option<i64>, SocketAddr, Instant),
    write_timeout: Duration,
    accept: impl FnOnce(&Hello) -> Result<ProxyHelloAck, (String, ProxyHelloAck)>,
) -> Option<Hello>
where
    S: Stream<Item = Result<Frame, FrameError>> + Sink<Frame, Error = FrameError> + Unpin,
{
    let frame = match first_frame(link, deadline).await {
        Ok(f) => f,
        Err(FirstFrameError::Closed) => return None,
        Err(e) => {
            tracing::warn!(peer = %peer, error = %e, "no ProxyHello from a proxy certificate's peer; closing");
            return None;
        }
    };
    let checked = match frame.msg_type {
        MsgType::ProxyHello => frame
            .decode::<ProxyHello>()
            .map_err(|e| e.to_string())
            .and_then(|h| check_hello(h, cert_area)),
        other => Err(format!(
            "a proxy certificate's first frame must be ProxyHello, got type {} (an agent registers with an agent certificate)",
            other.to_u16()
        )),
    };
    let (hello, ack) = match checked {
        Ok(hello) => match accept(&hello) {
            Ok(ack) => (Some(hello), ack),
            Err((why, ack)) => (None, refusal(peer, why, ack)),
        },
        Err(why) => (None, refusal(peer, why, ProxyHelloAck::default())),
    };
    let ack = Frame::new(MsgType::ProxyHelloAck, frame.stream_id, &ack);
    match send_within(link, ack, write_timeout).await {
        Ok(()) => hello,
        Err(_) => None,
    }
}

fn refusal(peer: SocketAddr, why: String, ack: ProxyHelloAck) -> ProxyHelloAck {
    tracing::warn!(peer = %peer, reason = %why, "refusing a proxy");
    ProxyHelloAck {
        accepted: false,
        message: why,
        ..ack
    }
}

/// Moves frames between a proxy's link and its channels until the link
/// ends or `shutdown`; why it ended. `up` is the link's queue (its sender
/// is the listener's, for [`Up::Raw`] frames).
pub async fn relay<S, C>(
    link: &mut S,
    (hello, peer): (&Hello, SocketAddr),
    server: &C,
    limits: &MuxLimits,
    (up_tx, up_rx): (&mpsc::Sender<Up>, &mut mpsc::Receiver<Up>),
    shutdown: &CancellationToken,
) -> String
where
    S: Stream<Item = Result<Frame, FrameError>> + Sink<Frame, Error = FrameError> + Unpin,
    C: ChannelServer + ?Sized,
{
    let mut ups = Vec::with_capacity(WRITE_BATCH);
    let mut mux = Mux {
        hello,
        peer,
        server,
        limits,
        up_tx,
        channels: HashMap::new(),
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return "shutting down".into(),
            n = up_rx.recv_many(&mut ups, WRITE_BATCH) => {
                if n == 0 {
                    return "shutting down".into();
                }
                // A burst (a task's frames for thousands of agents) goes
                // out in few TLS records and writes.
                let mut frames = Vec::with_capacity(ups.len());
                for up in ups.drain(..) {
                    match up {
                        Up::Frame(chan, f) => frames.push(wrap(chan, f)),
                        Up::Ended(chan) => {
                            if mux.channels.remove(&chan).is_some() {
                                let why = format!("the agent's session on {} ended", limits.who);
                                frames.push(close_frame(chan, why));
                            }
                        }
                        Up::Raw(frame) => frames.push(frame),
                    }
                }
                if let Err(e) = send_all_within(link, &frames, limits.write_timeout).await {
                    return format!("write to the proxy failed: {e}");
                }
            }
            next = link.next() => {
                let frame = match next {
                    None => return "connection closed by the proxy".into(),
                    Some(Err(e)) => return format!("connection error: {e}"),
                    Some(Ok(f)) => f,
                };
                if let Err(reason) = mux.on_proxy_frame(link, frame).await {
                    return reason;
                }
            }
        }
    }
}

/// [`relay`]'s state.
struct Mux<'a, C: ?Sized> {
    hello: &'a Hello,
    peer: SocketAddr,
    server: &'a C,
    limits: &'a MuxLimits,
    up_tx: &'a mpsc::Sender<Up>,
    /// Each open channel's queue into its session.
    channels: HashMap<u64, mpsc::Sender<Frame>>,
}

impl<C: ChannelServer + ?Sized> Mux<'_, C> {
    /// Acts on one frame from the proxy; `Err(reason)` ends its link.
    async fn on_proxy_frame<S>(&mut self, link: &mut S, frame: Frame) -> Result<(), String>
    where
        S: Sink<Frame, Error = FrameError> + Unpin,
    {
        let bad = |e: FrameError| format!("protocol error: {e}");
        let refuse = |chan: u64, reason: String| close_frame(chan, reason);
        match frame.msg_type {
            MsgType::ProxyOpen => {
                let open: ProxyOpen = frame.decode().map_err(bad)?;
                let chan = open.chan;
                let refusal = if self.channels.contains_key(&chan) {
                    Some(format!("channel {chan} is open already"))
                } else if self.channels.len() >= self.limits.max_channels {
                    Some(format!(
                        "{} takes at most {} agents per proxy link",
                        self.limits.who, self.limits.max_channels
                    ))
                } else {
                    bad_via(&open.via)
                };
                if let Some(why) = refusal {
                    return self.send(link, refuse(chan, why)).await;
                }
                let (down_tx, down_rx) = mpsc::channel(self.limits.channel_queue);
                self.channels.insert(chan, down_tx);
                self.open(open, down_rx);
                Ok(())
            }
            MsgType::ProxyData => {
                let data: ProxyData = frame.decode().map_err(bad)?;
                let (chan, inner) = unwrap(data).map_err(|e| format!("protocol error: {e}"))?;
                let Some(tx) = self.channels.get(&chan) else {
                    tracing::debug!(proxy = %self.hello.proxy_id, chan, "a frame for a channel that is not open; dropped");
                    return Ok(());
                };
                match tx.try_send(inner) {
                    Ok(()) => Ok(()),
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        self.channels.remove(&chan);
                        Ok(())
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.channels.remove(&chan);
                        let queued = self.limits.channel_queue;
                        tracing::warn!(proxy = %self.hello.proxy_id, chan, queued, "an agent's session behind the proxy fell too far behind its frames; closing its channel");
                        let reason = format!(
                            "the agent's session on {} fell {queued} frames behind; reconnect",
                            self.limits.who
                        );
                        self.send(link, refuse(chan, reason)).await
                    }
                }
            }
            MsgType::ProxyClose => {
                let close: ProxyClose = frame.decode().map_err(bad)?;
                // Dropping the sender ends the channel's session.
                self.channels.remove(&close.chan);
                Ok(())
            }
            _ => self.server.link_frame(frame),
        }
    }

    async fn send<S>(&self, link: &mut S, frame: Frame) -> Result<(), String>
    where
        S: Sink<Frame, Error = FrameError> + Unpin,
    {
        send_within(link, frame, self.limits.write_timeout)
            .await
            .map_err(|e| format!("write to the proxy failed: {e}"))
    }

    /// Starts the session of the agent on channel `open.chan`.
    fn open(&self, open: ProxyOpen, down: mpsc::Receiver<Frame>) {
        let chan = open.chan;
        let peer: SocketAddr = open.peer_addr.parse().unwrap_or(self.peer);
        // The proxy the agent is connected to is its parent: in a chain,
        // the lowest one, as that proxy said.
        let parent = open.parent_addr.parse().unwrap_or(self.hello.agent_addr);
        let mut via = vec![self.hello.proxy_id.clone()];
        via.extend(open.via.iter().cloned());
        let up = self.up_tx.clone();
        let channel = ProxiedChannel {
            chan,
            down,
            up: PollSender::new(up.clone()),
            identity: open_identity(&open),
            area: self.hello.area,
            via,
            peer,
            parent,
            data: (!open.data_addr.is_empty()).then(|| open.data_addr.clone()),
        };
        let session = self.server.serve(channel);
        tokio::spawn(async move {
            session.await;
            let _ = up.send(Up::Ended(chan)).await;
        });
    }
}
