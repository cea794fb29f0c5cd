//! The area's side: agents, and the proxies below this one in a chain,
//! connecting to this proxy.
//!
//! Every connection passes the same accept loop as a node's agent link
//! (`gse_link::Acceptor`: pending-handshake caps, mutual TLS that takes
//! agent and proxy certificates). Then:
//! - an agent's connection becomes one channel upstream ([`serve_agent`]):
//!   `ProxyOpen` with what its certificate names, its frames relayed both
//!   ways by their header, bodies untouched;
//! - a lower proxy's link ([`serve_lower`]) says `ProxyHello` for this
//!   proxy's area, and each of its channels becomes one of ours, its path
//!   (`via`) growing by the lower proxy's id.
//!
//! Nothing is accepted while the link upstream is down: the agent would
//! only wait, while its area's other proxy may be linked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use gse_link::proxy;
use gse_link::proxy::mux;
use gse_link::session::{AgentChannel, ServerSession, send_all_within};
use gse_link::{Accepted, ConnPermit};
use gse_proto::link::{ProxyClose, ProxyData, ProxyHelloAck, ProxyOpen};
use gse_proto::{Frame, FrameCodec, MsgType};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::upstream::{Current, OpenError, Route, Upstream, WRITE_TIMEOUT};

/// Frames from upstream queued for one agent; one that falls this far
/// behind has its channel closed (the link upstream never waits for one
/// agent).
const CHANNEL_QUEUE: usize = 256;
/// Frames from upstream queued for one lower proxy's link.
const LOWER_QUEUE: usize = 4096;
/// Frames written to one connection in one flush, at most.
const WRITE_BATCH: usize = 64;
/// Read buffer of a connection (it grows for a large frame).
const READ_BUFFER: usize = 512;
/// A connection's write buffer beyond this is given back after a write.
const KEEP_WRITE_BUFFER: usize = 4096;

/// What every connection's handler needs.
pub(crate) struct Downstream {
    pub area: i64,
    pub proxy_id: String,
    /// Where the area's agents reach this proxy: their parent.
    pub agent_addr: SocketAddr,
    /// This proxy's data listener as they reach it, on the control
    /// listener (told to agents and lower proxies); `None` on the data
    /// listener itself.
    pub data_addr: Option<SocketAddr>,
    /// The link upstream this listener's connections ride on.
    pub current: Current,
    pub shutdown: CancellationToken,
}

impl Downstream {
    /// Serves one connection past its TLS handshake.
    pub async fn serve(self: Arc<Self>, accepted: Accepted) {
        let cert_area = proxy::proxy_mark(accepted.peer_certificates());
        let identity = gse_link::claim::certificate_identity(accepted.peer_certificates());
        let Accepted {
            tls,
            peer,
            deadline,
            pending,
            ..
        } = accepted;
        // Small buffers: most of the area's links are idle most of the time.
        let conn = Framed::with_capacity(tls, FrameCodec::default(), READ_BUFFER);
        // Taken now: a connection opened while the link was up ends with it.
        let Some(up) = self.current.borrow().clone() else {
            tracing::info!(peer = %peer, "not linked upstream yet; closing the connection (the agent retries, or tries its area's other proxy)");
            metrics::counter!("gse_proxy_refused_total", "reason" => "not linked upstream")
                .increment(1);
            return;
        };
        match cert_area {
            Some(cert_area) => {
                self.serve_lower(up, conn, cert_area, (peer, deadline, pending))
                    .await
            }
            None => {
                drop(pending);
                self.serve_agent(up, conn, peer, identity).await
            }
        }
    }

    /// Relays one agent's connection as a channel upstream until either
    /// side ends it.
    async fn serve_agent(
        &self,
        up: Arc<Upstream>,
        mut conn: ServerSession,
        peer: SocketAddr,
        identity: Option<gse_core::certs::IdentityMark>,
    ) {
        let (tx, mut rx) = mpsc::channel(CHANNEL_QUEUE);
        let opened = up
            .open(Route::Direct(tx), |chan| {
                proxy::open_frame(
                    chan,
                    (peer, self.agent_addr, self.data_addr),
                    identity.as_ref(),
                )
            })
            .await;
        let chan = match opened {
            Ok(chan) => chan,
            Err(e) => return refused(peer, e),
        };
        tracing::debug!(peer = %peer, chan, node = %up.node_id, "agent connected; relaying");
        let mut batch = Vec::new();
        let reason = loop {
            tokio::select! {
                _ = up.gone.cancelled() => break "the link upstream ended".to_string(),
                _ = self.shutdown.cancelled() => break "the proxy is stopping".to_string(),
                got = conn.next() => match got {
                    Some(Ok(frame)) => {
                        if !up.from_agent(chan, frame).await {
                            break "the link upstream ended".to_string();
                        }
                    }
                    Some(Err(e)) => break format!("reading the agent failed: {e}"),
                    None => break "the agent closed its connection".to_string(),
                },
                n = rx.recv_many(&mut batch, WRITE_BATCH) => {
                    if n == 0 {
                        break "upstream closed the agent's channel".to_string();
                    }
                    if let Err(e) = send_all_within(&mut conn, &batch, WRITE_TIMEOUT).await {
                        break format!("writing to the agent failed: {e}");
                    }
                    // Idle links keep little: the batch and the write buffer
                    // a burst grew are given back.
                    if batch.capacity() > 4 {
                        batch = Vec::new();
                    } else {
                        batch.clear();
                    }
                    if conn.write_buffer().capacity() > KEEP_WRITE_BUFFER {
                        conn.shrink_write_buffer(READ_BUFFER);
                    }
                }
            }
        };
        tracing::debug!(peer = %peer, chan, reason = %reason, "agent's channel ended");
        up.close(chan, &reason).await;
    }

    /// Serves a lower proxy's link (a chain): its hello, then its channels
    /// as ours, until either link ends.
    async fn serve_lower(
        &self,
        up: Arc<Upstream>,
        mut link: ServerSession,
        cert_area: Option<i64>,
        (peer, deadline, pending): (SocketAddr, Instant, ConnPermit),
    ) {
        let Some(lower) = self
            .lower_hello(&up, &mut link, cert_area, peer, deadline)
            .await
        else {
            return;
        };
        drop(pending);
        tracing::info!(lower = %lower, peer = %peer, "a lower proxy linked; relaying its agents");
        let (tx, mut rx) = mpsc::channel::<Frame>(LOWER_QUEUE);
        up.lower_linked(&lower, tx.clone());
        // Their channel number -> ours.
        let mut chans: HashMap<u64, u64> = HashMap::new();
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        let reason = loop {
            tokio::select! {
                _ = up.gone.cancelled() => break "the link upstream ended".to_string(),
                _ = self.shutdown.cancelled() => break "the proxy is stopping".to_string(),
                got = link.next() => match got {
                    Some(Ok(frame)) => {
                        if let Err(reason) = self.on_lower_frame(&up, &lower, &tx, &mut chans, frame).await {
                            break reason;
                        }
                    }
                    Some(Err(e)) => break format!("reading the lower proxy failed: {e}"),
                    None => break "the lower proxy closed its link".to_string(),
                },
                n = rx.recv_many(&mut batch, WRITE_BATCH) => {
                    if n == 0 {
                        break "the proxy is stopping".to_string();
                    }
                    // Channels upstream closed are forgotten here too.
                    for f in &batch {
                        if f.msg_type == MsgType::ProxyClose
                            && let Ok(c) = f.decode::<ProxyClose>()
                        {
                            chans.remove(&c.chan);
                        }
                    }
                    if let Err(e) = send_all_within(&mut link, &batch, WRITE_TIMEOUT).await {
                        break format!("writing to the lower proxy failed: {e}");
                    }
                    batch.clear();
                }
            }
        };
        up.lower_unlinked(&lower, &tx);
        tracing::info!(lower = %lower, peer = %peer, reason = %reason, "a lower proxy's link ended; its agents' channels end");
        for ours in chans.into_values() {
            up.close(ours, "the lower proxy's link ended").await;
        }
    }

    /// Reads and answers a lower proxy's `ProxyHello` (it must serve this
    /// proxy's area): its id, or `None` when refused.
    async fn lower_hello(
        &self,
        up: &Upstream,
        link: &mut ServerSession,
        cert_area: Option<i64>,
        peer: SocketAddr,
        deadline: Instant,
    ) -> Option<String> {
        let ack = ProxyHelloAck {
            accepted: true,
            message: String::new(),
            node_id: up.node_id.clone(),
            data_endpoint: self.data_addr.map(|a| a.to_string()).unwrap_or_default(),
        };
        let accept = |h: &proxy::Hello| {
            if h.area != self.area {
                Err((
                    format!(
                        "proxy {} serves cloud area {}, this proxy ({}) area {}: a chain stays in one area",
                        h.proxy_id, h.area, self.proxy_id, self.area
                    ),
                    ack.clone(),
                ))
            } else if h.proxy_id == self.proxy_id {
                Err((
                    format!("proxy id {} is this proxy's own", h.proxy_id),
                    ack.clone(),
                ))
            } else {
                Ok(ack.clone())
            }
        };
        let hello =
            mux::accept_hello(link, (cert_area, peer, deadline), WRITE_TIMEOUT, accept).await?;
        Some(hello.proxy_id)
    }

    /// Acts on one frame of a lower proxy; `Err(reason)` ends its link.
    async fn on_lower_frame(
        &self,
        up: &Arc<Upstream>,
        lower: &str,
        tx: &mpsc::Sender<Frame>,
        chans: &mut HashMap<u64, u64>,
        frame: Frame,
    ) -> Result<(), String> {
        let bad = |e: gse_proto::FrameError| format!("protocol error: {e}");
        match frame.msg_type {
            MsgType::ProxyOpen => {
                let mut open: ProxyOpen = frame.decode().map_err(bad)?;
                let theirs = open.chan;
                open.via.insert(0, lower.to_string());
                let refusal = if chans.contains_key(&theirs) {
                    Some(format!("channel {theirs} is open already"))
                } else {
                    proxy::bad_via(&open.via)
                };
                if let Some(why) = refusal {
                    let _ = tx.try_send(proxy::close_frame(theirs, why));
                    return Ok(());
                }
                let route = Route::Lower {
                    tx: tx.clone(),
                    chan: theirs,
                };
                let opened = up
                    .open(route, |ours| {
                        open.chan = ours;
                        Frame::new(MsgType::ProxyOpen, 0, &open)
                    })
                    .await;
                match opened {
                    Ok(ours) => {
                        chans.insert(theirs, ours);
                    }
                    Err(OpenError::Gone) => return Err("the link upstream ended".into()),
                    Err(OpenError::Full(max)) => {
                        let why = format!("proxy {} relays at most {max} agents", self.proxy_id);
                        let _ = tx.try_send(proxy::close_frame(theirs, why));
                    }
                }
                Ok(())
            }
            MsgType::ProxyData => {
                let data: ProxyData = frame.decode().map_err(bad)?;
                let (theirs, inner) =
                    proxy::unwrap(data).map_err(|e| format!("protocol error: {e}"))?;
                if let Some(&ours) = chans.get(&theirs)
                    && !up.from_agent(ours, inner).await
                {
                    return Err("the link upstream ended".into());
                }
                Ok(())
            }
            // A probe's answer (C11): for the node, unchanged.
            MsgType::ProxyProbeResult => {
                if !up.send(frame).await {
                    return Err("the link upstream ended".into());
                }
                Ok(())
            }
            MsgType::ProxyClose => {
                let close: ProxyClose = frame.decode().map_err(bad)?;
                if let Some(ours) = chans.remove(&close.chan) {
                    up.close(ours, &close.reason).await;
                }
                Ok(())
            }
            other => Err(format!(
                "protocol error: a lower proxy sent message type {} on its link",
                other.to_u16()
            )),
        }
    }
}

fn refused(peer: SocketAddr, e: OpenError) {
    match e {
        OpenError::Gone => {
            tracing::debug!(peer = %peer, "the link upstream ended before the agent's channel opened")
        }
        OpenError::Full(max) => {
            metrics::counter!("gse_proxy_refused_total", "reason" => "max_agents").increment(1);
            tracing::warn!(peer = %peer, max_agents = max, "refusing an agent: this proxy relays proxy.max_agents agents already");
        }
    }
}
