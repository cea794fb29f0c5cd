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
use gse_core::AgentKey;
use gse_core::certs::{CertKind, IdentityMark, read_mark};
use gse_link::ConnPermit;
use gse_link::session::{AgentChannel, FirstFrameError, ServerSession, first_frame};
use gse_proto::link::{ProxyClose, ProxyData, ProxyHello, ProxyHelloAck, ProxyOpen};
use gse_proto::{Frame, FrameError, MsgType};
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::PollSender;

use super::connection::{Reached, run_over};
use super::{AgentPath, LinkService};

/// Agents one proxy link may carry at once.
const MAX_CHANNELS: usize = 50_000;
/// Proxies below this one an agent's way may pass (a chain's depth).
const MAX_CHAIN: usize = 8;
/// Frames queued into one channel's session. The proxy's link never
/// waits for one channel (its other agents' frames, and the writes up
/// that unblock the sessions, would wait behind it): a session that falls
/// this far behind has its channel closed (the agent reconnects).
const CHANNEL_QUEUE: usize = 256;
/// Frames of all channels queued for the proxy's link.
const OUT_QUEUE: usize = 4096;

/// What a proxy's certificate allows: `Some(None)` any area, `Some(Some(n))`
/// area `n` only; `None` when the certificate is not marked as a proxy's
/// (an unmarked legacy certificate never is).
pub(super) fn proxy_mark(certs: Option<&[CertificateDer<'_>]>) -> Option<Option<i64>> {
    let der = certs?.first()?;
    match read_mark(der) {
        Ok(Some(m)) if m.kind == CertKind::Proxy => Some(m.area),
        _ => None,
    }
}

/// What the channels send up the proxy's link.
enum Up {
    Frame(u64, Frame),
    /// The channel's agent session ended here.
    Ended(u64),
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

/// Who the proxy said it is.
struct Hello {
    proxy_id: String,
    area: i64,
    agent_addr: SocketAddr,
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
            .and_then(check_hello)
            .and_then(|h| match cert_area {
                // A certificate bound to an area serves that area only.
                Some(area) if area != h.area => Err(format!(
                    "this proxy's certificate is for cloud area {area} (gse://proxy/{area}), not {}; issue one for that area with `gse-server certs issue --proxy-area {}`",
                    h.area, h.area
                )),
                _ => Ok(h),
            }),
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

/// Whether `id` can name a proxy: 1 to 128 letters, digits, '.', '-',
/// '_' or ':' (it is kept in the agent's location).
fn proxy_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
}

/// Why a channel's proxy path cannot be taken, if it cannot.
fn bad_via(via: &[String]) -> Option<String> {
    if via.len() > MAX_CHAIN {
        return Some(format!(
            "the agent's way passes {} proxies below this one; at most {MAX_CHAIN}",
            via.len()
        ));
    }
    via.iter()
        .find(|id| !proxy_id_ok(id))
        .map(|id| format!("{id:?} in the agent's proxy path is not a proxy id"))
}

fn check_hello(h: ProxyHello) -> Result<Hello, String> {
    if !proxy_id_ok(&h.proxy_id) {
        return Err(format!(
            "proxy_id {:?} is not an id: 1 to 128 letters, digits, '.', '-', '_' or ':'",
            h.proxy_id
        ));
    }
    if h.bk_cloud_id <= 0 {
        return Err(format!(
            "bk_cloud_id {} is not a cloud area a proxy serves (the servers' own area 0 needs none)",
            h.bk_cloud_id
        ));
    }
    let agent_addr = h.agent_addr.parse().map_err(|e| {
        format!(
            "agent_addr {:?} is not ip:port ({e}): it is what the area's agents are told their parent is",
            h.agent_addr
        )
    })?;
    Ok(Hello {
        proxy_id: h.proxy_id,
        area: h.bk_cloud_id,
        agent_addr,
    })
}

/// Moves frames between the proxy's link and its channels; why it ended.
async fn relay(
    svc: &Arc<LinkService>,
    link: &mut ServerSession,
    hello: &Hello,
    peer: SocketAddr,
) -> String {
    let timeout = svc.config.heartbeat_timeout;
    let (up_tx, mut up_rx) = mpsc::channel::<Up>(OUT_QUEUE);
    let mut channels: HashMap<u64, mpsc::Sender<Frame>> = HashMap::new();
    loop {
        tokio::select! {
            _ = svc.shutdown.cancelled() => return "server shutting down".into(),
            Some(up) = up_rx.recv() => {
                let frame = match up {
                    Up::Frame(chan, f) => Frame::new(MsgType::ProxyData, 0, &ProxyData {
                        chan,
                        msg_type: f.msg_type.to_u16().into(),
                        stream_id: f.stream_id,
                        body: f.body.to_vec(),
                    }),
                    Up::Ended(chan) => {
                        if channels.remove(&chan).is_none() {
                            continue;
                        }
                        Frame::new(MsgType::ProxyClose, 0, &ProxyClose {
                            chan,
                            reason: "the agent's session on the node ended".into(),
                        })
                    }
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
                if let Err(reason) = from_proxy(svc, link, hello, peer, frame, (&mut channels, &up_tx)).await {
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
                let close = Frame::new(MsgType::ProxyClose, 0, &ProxyClose { chan, reason });
                return super::connection::send_within(link, close, svc.config.heartbeat_timeout)
                    .await;
            }
            if let Some(why) = bad_via(&open.via) {
                let close = Frame::new(MsgType::ProxyClose, 0, &ProxyClose { chan, reason: why });
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
            let Some(tx) = channels.get(&data.chan) else {
                tracing::debug!(proxy = %hello.proxy_id, chan = data.chan, "a frame for a channel that is not open; dropped");
                return Ok(());
            };
            let Ok(msg_type) = u16::try_from(data.msg_type) else {
                return Err(format!(
                    "protocol error: message type {} out of range",
                    data.msg_type
                ));
            };
            let inner = Frame {
                msg_type: MsgType::from_u16(msg_type),
                stream_id: data.stream_id,
                body: data.body.into(),
            };
            match tx.try_send(inner) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    channels.remove(&data.chan);
                    Ok(())
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    channels.remove(&data.chan);
                    tracing::warn!(proxy = %hello.proxy_id, chan = data.chan, queued = CHANNEL_QUEUE, "an agent's session behind the proxy fell too far behind its frames; closing its channel");
                    let reason = format!(
                        "the agent's session on node {} fell {CHANNEL_QUEUE} frames behind; reconnect",
                        svc.node_id
                    );
                    let close = Frame::new(
                        MsgType::ProxyClose,
                        0,
                        &ProxyClose {
                            chan: data.chan,
                            reason,
                        },
                    );
                    super::connection::send_within(link, close, svc.config.heartbeat_timeout).await
                }
            }
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
    let identity = open
        .cert_identity
        .then(|| {
            let ip = open.cert_ip.parse().ok()?;
            Some(IdentityMark {
                key: AgentKey::new(open.cert_cloud_id, ip),
                agent_id: (!open.cert_agent_id.is_empty()).then_some(open.cert_agent_id.clone()),
            })
        })
        .flatten();
    let agent_peer: SocketAddr = open.peer_addr.parse().unwrap_or(peer);
    let mut via = vec![hello.proxy_id.clone()];
    via.extend(open.via.iter().cloned());
    let reached = Reached {
        peer: agent_peer,
        port: hello.agent_addr.port(),
        path: AgentPath {
            parent_ip: hello.agent_addr.ip(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_names_an_id_an_area_and_where_agents_reach_the_proxy() {
        let hello = |id: &str, area: i64, addr: &str| ProxyHello {
            proxy_id: id.into(),
            bk_cloud_id: area,
            agent_addr: addr.into(),
            version: String::new(),
        };
        let ok = check_hello(hello("pa-1", 7, "10.7.0.1:28668")).unwrap();
        assert_eq!((ok.area, ok.agent_addr.port()), (7, 28668));
        for (bad, why) in [
            (hello("", 7, "10.7.0.1:1"), "proxy_id"),
            (hello("a/b", 7, "10.7.0.1:1"), "proxy_id"),
            (hello("pa", 0, "10.7.0.1:1"), "bk_cloud_id 0"),
            (hello("pa", 7, "10.7.0.1"), "agent_addr"),
        ] {
            let e = check_hello(bad).err().expect("refused");
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn a_proxy_path_is_a_short_list_of_ids() {
        assert_eq!(bad_via(&["pa-2".into(), "pa-3".into()]), None);
        let long: Vec<String> = (0..=MAX_CHAIN).map(|i| format!("p{i}")).collect();
        assert!(bad_via(&long).unwrap().contains("at most 8"));
        assert!(bad_via(&["x y".into()]).unwrap().contains("not a proxy id"));
    }
}
