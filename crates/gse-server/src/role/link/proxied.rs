//! Agents behind a gse-proxy (issue 12, C2): a proxy's link to this node.
//!
//! A peer whose certificate is marked as a proxy's says `ProxyHello` (its
//! id, the cloud area it serves, the address its agents reach it at)
//! instead of `Register`. Then every agent connected to it is a channel:
//! `ProxyOpen` (what the agent's certificate names, checked by the proxy),
//! its frames both ways as `ProxyData`, `ProxyClose`. Each channel is a
//! [`ProxiedChannel`], an [`AgentChannel`] served by the same code as a
//! direct agent's link ([`super::connection::run_over`]): Register and its
//! identity checks, the claim (its location's `via` names the proxy), the
//! heartbeats, every role's work. Only agents of the proxy's area register
//! through it. When the proxy's link ends, every channel ends with it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use futures::{Sink, Stream, StreamExt};
use gse_core::certs::IdentityMark;
use gse_link::ConnPermit;
use gse_link::proxy::{self, Hello};
use gse_link::session::{AgentChannel, FirstFrameError, ServerSession, first_frame};
use gse_proto::link::{ProxyClose, ProxyData, ProxyHello, ProxyHelloAck, ProxyOpen};
use gse_proto::{Frame, FrameError, MsgType};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::PollSender;

use super::connection::{Reached, run_over};
use super::{AgentPath, LinkService};

/// Agents one proxy link may carry at once.
const MAX_CHANNELS: usize = 50_000;
/// Frames queued into one channel's session. The proxy's link never
/// waits for one channel (its other agents' frames, and the writes up
/// that unblock the sessions, would wait behind it): a session that falls
/// this far behind has its channel closed (the agent reconnects).
const CHANNEL_QUEUE: usize = 256;
/// Frames of all channels queued for the proxy's link.
const OUT_QUEUE: usize = 4096;

/// What goes up the proxy's link.
pub(super) enum Up {
    /// A frame of a channel's agent.
    Frame(u64, Frame),
    /// The channel's agent session ended here.
    Ended(u64),
    /// A frame of the link itself (a probe, [`super::probe`]).
    Raw(Frame),
}

/// One agent behind the proxy, as the link role's agent code sees it.
struct ProxiedChannel {
    chan: u64,
    down: mpsc::Receiver<Frame>,
    up: PollSender<Up>,
    identity: Option<IdentityMark>,
    area: i64,
    via: Vec<String>,
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
}

/// Serves a proxy's link until it ends.
pub(super) async fn serve(
    svc: Arc<LinkService>,
    mut link: ServerSession,
    cert_area: Option<i64>,
    (peer, deadline, pending): (SocketAddr, Instant, ConnPermit),
) {
    let Some(hello) = hello(&svc, &mut link, cert_area, peer, deadline).await else {
        return;
    };
    drop(pending);
    metrics::counter!("gse_link_proxy_links_total").increment(1);
    tracing::info!(proxy = %hello.proxy_id, bk_cloud_id = hello.area, peer = %peer, agents_reach = %hello.agent_addr, "proxy connected");
    let reason = relay(&svc, &mut link, &hello, peer).await;
    tracing::info!(proxy = %hello.proxy_id, peer = %peer, reason = %reason, "proxy disconnected; its agents' sessions end");
}

/// Reads and answers `ProxyHello`; `None` when the proxy is refused.
async fn hello(
    svc: &LinkService,
    link: &mut ServerSession,
    cert_area: Option<i64>,
    peer: SocketAddr,
    deadline: Instant,
) -> Option<Hello> {
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
            .and_then(|h| proxy::check_hello(h, cert_area)),
        other => Err(format!(
            "a proxy certificate's first frame must be ProxyHello, got type {} (an agent registers with an agent certificate)",
            other.to_u16()
        )),
    };
    let (accepted, message) = match &checked {
        Ok(_) => (true, String::new()),
        Err(why) => {
            tracing::warn!(peer = %peer, reason = %why, "refusing a proxy");
            (false, why.clone())
        }
    };
    let ack = ProxyHelloAck {
        accepted,
        message,
        node_id: svc.node_id.clone(),
    };
    let sent = super::connection::send_within(
        link,
        Frame::new(MsgType::ProxyHelloAck, frame.stream_id, &ack),
        svc.config.heartbeat_timeout,
    )
    .await;
    match (checked, sent) {
        (Ok(hello), Ok(())) => Some(hello),
        _ => None,
    }
}

/// Moves frames between the proxy's link and its channels; why it ended.
async fn relay(
    svc: &Arc<LinkService>,
    link: &mut ServerSession,
    hello: &Hello,
    peer: SocketAddr,
) -> String {
    let (up_tx, mut up_rx) = mpsc::channel::<Up>(OUT_QUEUE);
    let mut channels: HashMap<u64, mpsc::Sender<Frame>> = HashMap::new();
    let link_id = svc.next_conn.fetch_add(1, Ordering::Relaxed);
    svc.proxy_links
        .linked(&hello.proxy_id, hello.area, link_id, up_tx.clone());
    let reason = relay_frames(svc, link, hello, peer, (&up_tx, &mut up_rx), &mut channels).await;
    svc.proxy_links.unlinked(&hello.proxy_id, link_id);
    reason
}

/// [`relay`]'s loop.
async fn relay_frames(
    svc: &Arc<LinkService>,
    link: &mut ServerSession,
    hello: &Hello,
    peer: SocketAddr,
    (up_tx, up_rx): (&mpsc::Sender<Up>, &mut mpsc::Receiver<Up>),
    channels: &mut HashMap<u64, mpsc::Sender<Frame>>,
) -> String {
    let timeout = svc.config.heartbeat_timeout;
    loop {
        tokio::select! {
            _ = svc.shutdown.cancelled() => return "server shutting down".into(),
            Some(up) = up_rx.recv() => {
                let frame = match up {
                    Up::Frame(chan, f) => proxy::wrap(chan, f),
                    Up::Ended(chan) => {
                        if channels.remove(&chan).is_none() {
                            continue;
                        }
                        proxy::close_frame(chan, "the agent's session on the node ended")
                    }
                    Up::Raw(frame) => frame,
                };
                if let Err(reason) = super::connection::send_within(link, frame, timeout).await {
                    return reason;
                }
            }
            next = link.next() => {
                let frame = match next {
                    None => return "connection closed by the proxy".into(),
                    Some(Err(e)) => return format!("connection error: {e}"),
                    Some(Ok(f)) => f,
                };
                if let Err(reason) = from_proxy(svc, link, hello, peer, frame, (channels, up_tx)).await {
                    return reason;
                }
            }
        }
    }
}

/// Acts on one frame from the proxy; `Err(reason)` ends its link.
async fn from_proxy(
    svc: &Arc<LinkService>,
    link: &mut ServerSession,
    hello: &Hello,
    peer: SocketAddr,
    frame: Frame,
    (channels, up_tx): (&mut HashMap<u64, mpsc::Sender<Frame>>, &mpsc::Sender<Up>),
) -> Result<(), String> {
    let bad = |e: FrameError| format!("protocol error: {e}");
    match frame.msg_type {
        MsgType::ProxyOpen => {
            let open: ProxyOpen = frame.decode().map_err(bad)?;
            let chan = open.chan;
            if channels.contains_key(&chan) || channels.len() >= MAX_CHANNELS {
                let reason = if channels.contains_key(&chan) {
                    format!("channel {chan} is open already")
                } else {
                    format!("this node takes at most {MAX_CHANNELS} agents per proxy link")
                };
                let close = proxy::close_frame(chan, reason);
                return super::connection::send_within(link, close, svc.config.heartbeat_timeout)
                    .await;
            }
            if let Some(why) = proxy::bad_via(&open.via) {
                let close = proxy::close_frame(chan, why);
                return super::connection::send_within(link, close, svc.config.heartbeat_timeout)
                    .await;
            }
            let (down_tx, down_rx) = mpsc::channel(CHANNEL_QUEUE);
            channels.insert(chan, down_tx);
            open_channel(svc, hello, peer, open, down_rx, up_tx.clone());
            Ok(())
        }
        MsgType::ProxyData => {
            let data: ProxyData = frame.decode().map_err(bad)?;
            let (chan, inner) = proxy::unwrap(data).map_err(|e| format!("protocol error: {e}"))?;
            let Some(tx) = channels.get(&chan) else {
                tracing::debug!(proxy = %hello.proxy_id, chan, "a frame for a channel that is not open; dropped");
                return Ok(());
            };
            match tx.try_send(inner) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    channels.remove(&chan);
                    Ok(())
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    channels.remove(&chan);
                    tracing::warn!(proxy = %hello.proxy_id, chan, queued = CHANNEL_QUEUE, "an agent's session behind the proxy fell too far behind its frames; closing its channel");
                    let reason = format!(
                        "the agent's session on node {} fell {CHANNEL_QUEUE} frames behind; reconnect",
                        svc.node_id
                    );
                    let close = proxy::close_frame(chan, reason);
                    super::connection::send_within(link, close, svc.config.heartbeat_timeout).await
                }
            }
        }
        MsgType::ProxyProbeResult => {
            svc.proxy_links.answered(frame.decode().map_err(bad)?);
            Ok(())
        }
        MsgType::ProxyClose => {
            let close: ProxyClose = frame.decode().map_err(bad)?;
            // Dropping the sender ends the channel's session.
            channels.remove(&close.chan);
            Ok(())
        }
        other => Err(format!(
            "protocol error: a proxy sent message type {} on its link",
            other.to_u16()
        )),
    }
}

/// Starts the session of the agent on channel `open.chan`.
fn open_channel(
    svc: &Arc<LinkService>,
    hello: &Hello,
    peer: SocketAddr,
    open: ProxyOpen,
    down: mpsc::Receiver<Frame>,
    up: mpsc::Sender<Up>,
) {
    let chan = open.chan;
    let identity = proxy::open_identity(&open);
    let agent_peer: SocketAddr = open.peer_addr.parse().unwrap_or(peer);
    let mut via = vec![hello.proxy_id.clone()];
    via.extend(open.via.iter().cloned());
    // The proxy the agent is connected to is its parent: in a chain, the
    // lowest one, as that proxy said.
    let parent: SocketAddr = open.parent_addr.parse().unwrap_or(hello.agent_addr);
    let reached = Reached {
        peer: agent_peer,
        port: parent.port(),
        path: AgentPath {
            parent_ip: parent.ip(),
            peer_ip: agent_peer.ip(),
        },
    };
    let mut channel = ProxiedChannel {
        chan,
        down,
        up: PollSender::new(up.clone()),
        identity,
        area: hello.area,
        via,
    };
    let svc = svc.clone();
    let conn_id = svc.next_conn.fetch_add(1, Ordering::Relaxed);
    let deadline = Instant::now() + svc.config.handshake_timeout;
    tokio::spawn(async move {
        run_over(svc, &mut channel, reached, (deadline, None), conn_id).await;
        let _ = up.send(Up::Ended(chan)).await;
    });
}
