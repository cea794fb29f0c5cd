//! One peer node's outbox: the queue of frames for it, and the task that
//! dials it (with back-off) and writes them, in order.
//!
//! A frame that cannot be written is never silently dropped: a frame for
//! an agent comes back to this node's roles as [`Undelivered`] (the node is
//! unreachable), an answer for another node is logged and counted
//! (`gse_node_link_frames_dropped_total`). While the node stays
//! unreachable, frames fail at once until the back-off allows the next
//! dial, so work for its agents ends promptly rather than waiting.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gse_core::AgentKey;
use gse_core::seams::Registry;
use gse_link::session::{ClientSession, first_frame, send_all_within, send_within};
use gse_link::{Backoff, DialError, Dialer};
use gse_proto::link::{LinkError, NodeHello, NodeHelloAck, NodeRelay};
use gse_proto::{Frame, FrameCodec, MsgType};
use parking_lot::RwLock;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::{LocalAgents, NodeLinks, Undelivered, UndeliveredCode};

/// Time for one write (of up to [`WRITE_BATCH`] frames) before the link
/// counts as broken.
const WRITE_LIMIT: Duration = Duration::from_secs(10);
/// Most frames one write takes from the queue, and the bytes after which
/// it takes no more (file pieces are large: a write stays well within
/// [`WRITE_LIMIT`] on a slow link).
const WRITE_BATCH: usize = 512;
const WRITE_BATCH_BYTES: usize = 1 << 20;
/// Back-off between dials of an unreachable node.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

type Local = Arc<RwLock<Option<Arc<dyn LocalAgents>>>>;

/// What an outbox's task needs.
pub(super) struct OutboxParts {
    pub node: String,
    pub me: String,
    pub cluster: String,
    pub dialer: Dialer,
    pub registry: Arc<dyn Registry>,
    pub max_frame_bytes: usize,
    /// Frames the queue holds.
    pub frames: usize,
    pub handshake_timeout: Duration,
    pub local: Local,
    pub stop: CancellationToken,
}

/// The queue to one node; dropping it stops its task.
pub(super) struct Outbox {
    tx: mpsc::Sender<Frame>,
    stop: CancellationToken,
}

impl Outbox {
    pub fn start(parts: OutboxParts) -> Outbox {
        let (tx, rx) = mpsc::channel(parts.frames);
        let stop = parts.stop.clone();
        tokio::spawn(run(parts, rx));
        Outbox { tx, stop }
    }

    pub fn sender(&self) -> mpsc::Sender<Frame> {
        self.tx.clone()
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl NodeLinks {
    pub(super) fn outbox_parts(&self, node: &str) -> OutboxParts {
        OutboxParts {
            node: node.to_string(),
            me: self.me.clone(),
            cluster: self.cluster.clone(),
            dialer: self.dialer.clone(),
            registry: self.registry.clone(),
            max_frame_bytes: self.max_frame_bytes,
            frames: self.outbox_frames,
            handshake_timeout: self.handshake_timeout,
            local: self.local.clone(),
            stop: self.shutdown.child_token(),
        }
    }
}

/// A dialed link: where frames are written, and a token cancelled when
/// the other side closes it.
struct Session {
    sink: futures::stream::SplitSink<ClientSession, Frame>,
    closed: CancellationToken,
}

async fn run(parts: OutboxParts, mut rx: mpsc::Receiver<Frame>) {
    let mut session: Option<Session> = None;
    let mut backoff = Backoff::new(BACKOFF_FIRST, BACKOFF_MAX);
    let mut down: Option<(Instant, String)> = None;
    loop {
        let frame = tokio::select! {
            _ = parts.stop.cancelled() => break,
            frame = rx.recv() => match frame { Some(f) => f, None => break },
        };
        if session.as_ref().is_some_and(|s| s.closed.is_cancelled()) {
            tracing::info!(node = %parts.node, "node link closed by the other node; dialing again");
            session = None;
        }
        if session.is_none() {
            if let Some((until, why)) = &down
                && Instant::now() < *until
            {
                fail(&parts, frame, why);
                continue;
            }
            match connect(&parts).await {
                Ok(s) => {
                    tracing::info!(node = %parts.node, "node link up");
                    backoff.reset();
                    down = None;
                    session = Some(s);
                }
                Err(why) => {
                    tracing::warn!(node = %parts.node, error = %why, "cannot reach node");
                    metrics::counter!("gse_node_link_dial_failures_total").increment(1);
                    fail(&parts, frame, &why);
                    down = Some((Instant::now() + backoff.next_delay(), why));
                    continue;
                }
            }
        }
        let Some(s) = session.as_mut() else { continue };
        // What queued meanwhile goes in the same write, in order.
        let mut bytes = frame.body.len();
        let mut batch = vec![frame];
        while batch.len() < WRITE_BATCH && bytes < WRITE_BATCH_BYTES {
            match rx.try_recv() {
                Ok(f) => {
                    bytes += f.body.len();
                    batch.push(f);
                }
                Err(_) => break,
            }
        }
        if let Err(e) = send_all_within(&mut s.sink, &batch, WRITE_LIMIT).await {
            let why = format!("the node link to {} broke: {e}", parts.node);
            tracing::warn!(node = %parts.node, error = %e, frames = batch.len(), "node link write failed");
            for frame in batch {
                fail(&parts, frame, &why);
            }
            session = None;
        } else {
            metrics::counter!("gse_node_link_frames_sent_total").increment(batch.len() as u64);
        }
    }
    // Stopped (the node left, or shutdown): what is still queued fails.
    rx.close();
    while let Ok(frame) = rx.try_recv() {
        fail(
            &parts,
            frame,
            &format!("node {} left the cluster", parts.node),
        );
    }
}

/// Dials the node, says hello and waits for its answer.
async fn connect(parts: &OutboxParts) -> Result<Session, String> {
    let addr = address(parts).await?;
    let tls = parts
        .dialer
        .dial(&addr)
        .await
        .map_err(|e| dial_error(&parts.node, &addr, e))?;
    let mut link = Framed::new(tls, FrameCodec::new(parts.max_frame_bytes));
    let hello = NodeHello {
        node_id: parts.me.clone(),
        cluster: parts.cluster.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    send_within(
        &mut link,
        Frame::new(MsgType::NodeHello, 0, &hello),
        WRITE_LIMIT,
    )
    .await
    .map_err(|e| format!("cannot greet node {} at {addr}: {e}", parts.node))?;
    let deadline = Instant::now() + parts.handshake_timeout;
    let answer = first_frame(&mut link, deadline).await.map_err(|e| {
        let refused = match &e {
            gse_link::session::FirstFrameError::Frame(gse_proto::FrameError::Io(io)) => {
                parts.dialer.explain(&addr, io)
            }
            _ => None,
        }
        .map(|why| format!("node link to {} at {addr}: {why}", parts.node));
        refused.unwrap_or_else(|| {
            format!(
                "node {} at {addr} did not answer the hello: {e}",
                parts.node
            )
        })
    })?;
    match answer.msg_type {
        MsgType::NodeHelloAck => {
            let ack: NodeHelloAck = answer.decode().map_err(|e| e.to_string())?;
            if ack.node_id != parts.node {
                return Err(format!(
                    "{addr} is node {:?}, not node {:?}: two nodes share an address or a node id",
                    ack.node_id, parts.node
                ));
            }
        }
        MsgType::LinkError => {
            let why = answer
                .decode::<LinkError>()
                .map(|e| e.message)
                .unwrap_or_default();
            return Err(format!(
                "node {} at {addr} refused this node: {why}",
                parts.node
            ));
        }
        other => {
            return Err(format!(
                "node {} at {addr} answered the hello with frame type {:#x}",
                parts.node,
                other.to_u16()
            ));
        }
    }
    let (sink, mut stream) = link.split();
    let closed = CancellationToken::new();
    let watch = closed.clone();
    // The other node writes nothing more on this link: reading only
    // notices, at once, that it closed (so the next frame redials instead
    // of vanishing into a dead socket).
    tokio::spawn(async move {
        while let Some(Ok(_)) = stream.next().await {}
        watch.cancel();
    });
    Ok(Session { sink, closed })
}

/// The node's node-link address, from the registry.
async fn address(parts: &OutboxParts) -> Result<String, String> {
    let nodes = parts
        .registry
        .nodes()
        .await
        .map_err(|e| format!("cannot look up node {}: {e}", parts.node))?;
    let node = nodes
        .into_iter()
        .find(|n| n.node_id == parts.node)
        .ok_or_else(|| {
            format!(
                "node {} is not in the cluster (it left, or has not joined yet)",
                parts.node
            )
        })?;
    if node.node_addr.is_empty() {
        return Err(format!(
            "node {} advertises no node-link address (cluster.node_listen); upgrade it or set the key",
            parts.node
        ));
    }
    Ok(node.node_addr)
}

fn dial_error(node: &str, addr: &str, e: DialError) -> String {
    match e {
        DialError::Tls {
            explained: Some(why),
            ..
        } => format!("node link to {node} at {addr}: {why}"),
        DialError::Connect { ref source, .. }
            if source.kind() == io::ErrorKind::ConnectionRefused =>
        {
            format!(
                "node {node} at {addr} refused the connection: is it running, and is cluster.node_listen reachable from here?"
            )
        }
        e => format!("node link to {node} at {addr}: {e}"),
    }
}

/// A frame that could not be written: an agent's frame goes back to this
/// node's roles as undelivered; anything else is counted.
fn fail(parts: &OutboxParts, frame: Frame, why: &str) {
    let notice = (frame.msg_type == MsgType::NodeToAgent)
        .then(|| frame.decode::<NodeRelay>().ok())
        .flatten()
        .and_then(|relay| {
            let ip = relay.ip.parse().ok()?;
            let msg_type = u16::try_from(relay.msg_type).ok()?;
            Some(Undelivered {
                agent: AgentKey::new(relay.cloud_id, ip),
                msg_type: MsgType::from_u16(msg_type),
                stream_id: relay.stream_id,
                epoch: relay.epoch,
                code: UndeliveredCode::NodeUnreachable,
                reason: why.to_string(),
            })
        });
    match notice {
        Some(notice) => {
            let local = parts.local.read().clone();
            if let Some(local) = local {
                local.undelivered(notice);
            }
        }
        None => {
            metrics::counter!("gse_node_link_frames_dropped_total").increment(1);
            tracing::warn!(node = %parts.node, msg_type = frame.msg_type.to_u16(), error = %why, "a frame for another node is dropped");
        }
    }
}
