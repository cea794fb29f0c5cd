//! The proxy's one link upstream: to any node of the cluster (or, in a
//! chain, to the next proxy up), failing over between the configured
//! addresses, and the table of channels that ride on it.
//!
//! [`run`] dials, says `ProxyHello`, and while the link is up publishes it
//! as an [`Upstream`]: the connections of agents and lower proxies
//! ([`crate::downstream`]) open their channels on it. When the link ends
//! every channel ends with it (agents reconnect, to this proxy once it is
//! linked again, or to their area's other proxy), and the next address is
//! tried at once, then with back-off.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use gse_link::probe::{ProbeSpec, Verdict};
use gse_link::proxy;
use gse_link::session::{ClientSession, first_frame, send_all_within};
use gse_link::{Backoff, Dialer, DialerParts};
use gse_proto::link::{
    ProxyClose, ProxyData, ProxyHello, ProxyHelloAck, ProxyProbe, ProxyProbeResult,
};
use gse_proto::{Frame, FrameCodec, MsgType};
use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::ProxyError;
use crate::config::ProxyConfig;
use crate::pieces::{Asked, PieceStore, Pieces};

/// Frames of all channels queued for the link upstream.
const OUT_QUEUE: usize = 4096;
/// Frames queued for the data link upstream: batches of up to 10 MiB, so
/// few; an agent whose batch waits for room waits (it has few in flight).
const DATA_OUT_QUEUE: usize = 16;
/// Frames written upstream in one flush, at most.
const WRITE_BATCH: usize = 256;
/// A write upstream that takes longer ends the link: the node stopped
/// reading.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often unanswered piece fetches and idle transfers are swept (F8).
const PIECE_SWEEP: Duration = Duration::from_secs(5);
/// Host probes run at once (C11).
const PROBES_AT_ONCE: usize = 64;
/// Longest probe a node may ask for, per probe kind.
const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// A link that stayed up this long resets the back-off.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Where a channel's frames from upstream go.
pub(crate) enum Route {
    /// An agent connected to this proxy: its connection's queue of the
    /// agent's frames.
    Direct(mpsc::Sender<Frame>),
    /// An agent below a lower proxy: that proxy's link queue, on its own
    /// channel number there.
    Lower { tx: mpsc::Sender<Frame>, chan: u64 },
}

/// The link upstream while it is up.
pub(crate) struct Upstream {
    /// The node the link reached (as the node, or the upper proxy, says).
    pub node_id: String,
    out: mpsc::Sender<Frame>,
    routes: Mutex<Routes>,
    /// Cancelled when the link ends.
    pub gone: CancellationToken,
    max_channels: usize,
    /// This proxy's id (named in its probes' answers).
    proxy_id: String,
    /// The lower proxies linked to this one (a chain), by id: their
    /// links' queues, for probes addressed through them.
    lowers: Mutex<HashMap<String, mpsc::Sender<Frame>>>,
    probe_slots: Arc<Semaphore>,
    /// "control" or "data", in metrics.
    pub kind: &'static str,
    /// The pieces the area's targets fetch through this link (F8).
    pieces: Arc<Pieces>,
    /// `gse_proxy_frames_total{direction="down"}`, looked up once.
    frames_down: metrics::Counter,
}

#[derive(Default)]
struct Routes {
    next: u64,
    open: HashMap<u64, Route>,
    /// Of `open`, the agents connected to this proxy itself.
    direct: usize,
}

/// Why a channel could not be opened.
pub(crate) enum OpenError {
    /// The link upstream ended.
    Gone,
    /// `max_agents` channels are open.
    Full(usize),
}

impl Upstream {
    fn new(
        node_id: String,
        (out, gone): (mpsc::Sender<Frame>, CancellationToken),
        (max_channels, kind): (usize, &'static str),
        (proxy_id, store): (&str, Arc<PieceStore>),
    ) -> Arc<Upstream> {
        let up = Arc::new(Upstream {
            node_id,
            out,
            routes: Mutex::new(Routes::default()),
            gone,
            max_channels,
            proxy_id: proxy_id.to_string(),
            lowers: Mutex::new(HashMap::new()),
            probe_slots: Arc::new(Semaphore::new(PROBES_AT_ONCE)),
            kind,
            pieces: Arc::new(Pieces::new(store)),
            frames_down: metrics::counter!("gse_proxy_frames_total", "direction" => "down"),
        });
        if kind == "control" {
            tokio::spawn(up.clone().sweep_pieces());
        }
        up
    }

    /// Every few seconds until the link ends: fetches left unanswered are
    /// given up ("busy" to their waiters), idle transfers leave the cache.
    async fn sweep_pieces(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PIECE_SWEEP);
        loop {
            tokio::select! {
                _ = self.gone.cancelled() => return,
                _ = tick.tick() => {}
            }
            for (chan, frame) in self.pieces.expired() {
                let _ = self.deliver(chan, frame);
            }
            self.pieces.store().sweep().await;
        }
    }

    /// An agent's frame on channel `chan`, for upstream: a target's piece
    /// request may be answered here (F8); false once the link has ended.
    pub async fn from_agent(self: &Arc<Self>, chan: u64, frame: Frame) -> bool {
        if frame.msg_type != MsgType::PieceRequest || self.kind != "control" {
            return self.send(proxy::wrap(chan, frame)).await;
        }
        match self.pieces.up(chan, frame) {
            (Asked::Fetch(f), _) | (Asked::Pass(f), _) => self.send(proxy::wrap(chan, f)).await,
            (Asked::Handled, later) => {
                if let Some(later) = later {
                    let up = self.clone();
                    tokio::spawn(async move {
                        let (chan, frame) = later.frame().await;
                        let _ = up.deliver(chan, frame);
                    });
                }
                true
            }
        }
    }

    /// Hands `inner` to the agent of channel `chan`.
    fn deliver(&self, chan: u64, inner: Frame) -> Result<(), Dropped> {
        match self.routes.lock().open.get(&chan) {
            None => Err(Dropped::Closed),
            Some(Route::Direct(tx)) => tx.try_send(inner).map_err(drop_frame),
            Some(Route::Lower { tx, chan: theirs }) => {
                tx.try_send(proxy::wrap(*theirs, inner)).map_err(drop_frame)
            }
        }
    }

    /// Opens a channel for `route`: its number, once `open(chan)` (the
    /// channel's `ProxyOpen`) is queued upstream.
    pub async fn open(
        &self,
        route: Route,
        open: impl FnOnce(u64) -> Frame,
    ) -> Result<u64, OpenError> {
        let chan = {
            let mut routes = self.routes.lock();
            if routes.open.len() >= self.max_channels {
                return Err(OpenError::Full(self.max_channels));
            }
            routes.next += 1;
            let chan = routes.next;
            if matches!(route, Route::Direct(_)) {
                routes.direct += 1;
            }
            routes.open.insert(chan, route);
            self.gauges(&routes);
            chan
        };
        if self.send(open(chan)).await {
            Ok(chan)
        } else {
            self.forget(chan);
            Err(OpenError::Gone)
        }
    }

    /// Queues `frame` upstream; false once the link has ended.
    pub async fn send(&self, frame: Frame) -> bool {
        // Without waiting when there is room (the common case, per frame).
        let frame = match self.out.try_send(frame) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(frame)) => frame,
        };
        tokio::select! {
            _ = self.gone.cancelled() => false,
            sent = self.out.send(frame) => sent.is_ok(),
        }
    }

    /// Ends channel `chan` from this side: forgotten, and `ProxyClose`
    /// sent unless upstream closed it first.
    pub async fn close(&self, chan: u64, reason: &str) {
        if self.forget(chan).is_some() {
            self.send(proxy::close_frame(chan, reason)).await;
        }
    }

    fn forget(&self, chan: u64) -> Option<Route> {
        self.pieces.channel_ended(chan);
        let mut routes = self.routes.lock();
        let route = routes.open.remove(&chan);
        if matches!(route, Some(Route::Direct(_))) {
            routes.direct -= 1;
        }
        self.gauges(&routes);
        route
    }

    fn gauges(&self, routes: &Routes) {
        let link = self.kind;
        metrics::gauge!("gse_proxy_agents", "link" => link).set(routes.direct as f64);
        metrics::gauge!("gse_proxy_channels", "link" => link).set(routes.open.len() as f64);
    }

    /// Ends the link's channels: their connections end when their routes'
    /// senders are dropped (lower proxies' links watch [`Self::gone`]).
    fn end(&self) {
        self.gone.cancel();
        let mut routes = self.routes.lock();
        routes.open.clear();
        routes.direct = 0;
        self.gauges(&routes);
    }

    /// Acts on one frame from upstream; `Err(reason)` ends the link.
    async fn on_upstream_frame(&self, frame: Frame) -> Result<(), String> {
        let bad = |e: gse_proto::FrameError| format!("protocol error: {e}");
        match frame.msg_type {
            MsgType::ProxyData => {
                let data: ProxyData = frame.decode().map_err(bad)?;
                let (chan, inner) =
                    proxy::unwrap(data).map_err(|e| format!("protocol error: {e}"))?;
                self.frames_down.increment(1);
                if let Some(answers) = self.pieces.down(chan, &inner) {
                    // Our fetch's answer, for every target waiting on it.
                    for (chan, frame) in answers {
                        let _ = self.deliver(chan, frame);
                    }
                    return Ok(());
                }
                match self.deliver(chan, inner) {
                    Ok(()) => Ok(()),
                    // The connection ended; it closes the channel itself.
                    Err(Dropped::Closed) => Ok(()),
                    Err(Dropped::Full) => {
                        metrics::counter!("gse_proxy_channels_lagging_total").increment(1);
                        tracing::warn!(
                            chan,
                            "an agent fell too far behind its frames from upstream; closing its channel (it reconnects)"
                        );
                        self.close(
                            chan,
                            "the agent's connection to the proxy fell behind; it reconnects",
                        )
                        .await;
                        Ok(())
                    }
                }
            }
            MsgType::ProxyProbe => {
                let ask: ProxyProbe = frame.decode().map_err(bad)?;
                self.probe(ask);
                Ok(())
            }
            MsgType::ProxyClose => {
                let close: ProxyClose = frame.decode().map_err(bad)?;
                tracing::debug!(chan = close.chan, reason = %close.reason, "upstream closed a channel");
                if let Some(Route::Lower { tx, chan }) = self.forget(close.chan) {
                    let _ = tx.try_send(proxy::close_frame(chan, close.reason));
                }
                // A direct route's sender is dropped here: its connection
                // ends once it has written what was queued.
                Ok(())
            }
            other => Err(format!(
                "protocol error: upstream sent message type {} on a proxy's link",
                other.to_u16()
            )),
        }
    }
}

impl Upstream {
    /// Lower proxy `id`'s link takes frames on `tx` (until
    /// [`Self::lower_unlinked`]).
    pub fn lower_linked(&self, id: &str, tx: mpsc::Sender<Frame>) {
        self.lowers.lock().insert(id.to_string(), tx);
    }

    pub fn lower_unlinked(&self, id: &str, tx: &mpsc::Sender<Frame>) {
        let mut lowers = self.lowers.lock();
        if lowers.get(id).is_some_and(|t| t.same_channel(tx)) {
            lowers.remove(id);
        }
    }

    /// A node asks for a host probe (C11): this proxy probes, or passes it
    /// down the chain; the answer goes up.
    fn probe(&self, mut ask: ProxyProbe) {
        if !ask.via.is_empty() {
            let lower = ask.via.remove(0);
            let tx = self.lowers.lock().get(&lower).cloned();
            let passed = tx.is_some_and(|tx| {
                tx.try_send(Frame::new(MsgType::ProxyProbe, 0, &ask))
                    .is_ok()
            });
            if !passed {
                let why = format!("proxy {} has no link to proxy {lower}", self.proxy_id);
                self.answer_probe(ask.probe_id, Verdict::none(why));
            }
            return;
        }
        let Ok(ip) = ask.ip.parse::<std::net::IpAddr>() else {
            let why = format!("{:?} is not an IP address", ask.ip);
            self.answer_probe(ask.probe_id, Verdict::none(why));
            return;
        };
        let spec = ProbeSpec {
            tcp_port: u16::try_from(ask.tcp_port).unwrap_or(0),
            timeout: Duration::from_millis(ask.timeout_ms.into()).min(MAX_PROBE_TIMEOUT),
        };
        let (slots, out, proxy_id) = (
            self.probe_slots.clone(),
            self.out.clone(),
            self.proxy_id.clone(),
        );
        tokio::spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            let v = gse_link::probe::probe(ip, spec).await;
            tracing::info!(host = %ip, reachable = v.reachable, probe = %v.probe, "probed a lost agent's host for the node");
            let _ = out.try_send(probe_result(ask.probe_id, &proxy_id, v));
        });
    }

    fn answer_probe(&self, probe_id: u64, v: Verdict) {
        let _ = self.out.try_send(probe_result(probe_id, &self.proxy_id, v));
    }
}

fn probe_result(probe_id: u64, proxy_id: &str, v: Verdict) -> Frame {
    let result = ProxyProbeResult {
        probe_id,
        reachable: v.reachable,
        probe: format!("proxy {proxy_id}: {}", v.probe),
    };
    Frame::new(MsgType::ProxyProbeResult, 0, &result)
}

enum Dropped {
    Full,
    Closed,
}

fn drop_frame<T>(e: mpsc::error::TrySendError<T>) -> Dropped {
    match e {
        mpsc::error::TrySendError::Full(_) => Dropped::Full,
        mpsc::error::TrySendError::Closed(_) => Dropped::Closed,
    }
}

/// What the downstream side sees of the link upstream: `Some` while up.
pub(crate) type Current = watch::Receiver<Option<Arc<Upstream>>>;

/// Where the downstream side finds the links upstream.
pub(crate) struct Links {
    /// The control link.
    pub control: watch::Sender<Option<Arc<Upstream>>>,
    /// The data link (C10), while the control link is up and names a
    /// DataServer.
    pub data: watch::Sender<Option<Arc<Upstream>>>,
}

/// Keeps a link upstream until `shutdown`, publishing it in `links`.
pub(crate) async fn run(
    cfg: Arc<ProxyConfig>,
    (agent_addr, store): (std::net::SocketAddr, Arc<PieceStore>),
    links: Links,
    shutdown: CancellationToken,
) -> Result<(), ProxyError> {
    let up = &cfg.upstream;
    let dialer = Arc::new(Dialer::new(DialerParts {
        tls: gse_core::tls::upstream_client_config(&cfg.tls, cfg.proxy.bk_cloud_id)?,
        tls_files: cfg.tls.clone(),
        server_name: up.server_name.clone(),
        bind_ip: up.bind_ip,
        connect_timeout: up.connect_timeout,
        keepalive: true,
    }));
    let hello = ProxyHello {
        proxy_id: cfg.proxy.id.clone(),
        bk_cloud_id: cfg.proxy.bk_cloud_id,
        agent_addr: agent_addr.to_string(),
        version: gse_core::VERSION.into(),
    };
    let links = Arc::new(links);
    let mut backoff = Backoff::new(up.backoff_initial, up.backoff_max);
    let mut attempt = 0usize;
    loop {
        let server = &up.servers[attempt % up.servers.len()];
        attempt += 1;
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = connect(&dialer, server, &hello, up.connect_timeout) => c,
        };
        match connected {
            Ok((link, ack)) => {
                metrics::counter!("gse_proxy_upstream_connects_total").increment(1);
                metrics::gauge!("gse_proxy_upstream_connected").set(1.0);
                tracing::info!(server = %server, node = %ack.node_id, data = %ack.data_endpoint, "linked upstream; relaying the area's agents");
                let since = Instant::now();
                let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
                let link_up = Upstream::new(
                    ack.node_id,
                    (out_tx, shutdown.child_token()),
                    (cfg.proxy.max_agents, "control"),
                    (&cfg.proxy.id, store.clone()),
                );
                if !ack.data_endpoint.is_empty() {
                    let data = DataLink {
                        dialer: dialer.clone(),
                        endpoint: ack.data_endpoint,
                        hello: hello.clone(),
                        cfg: cfg.clone(),
                        links: links.clone(),
                        gone: link_up.gone.clone(),
                        store: store.clone(),
                    };
                    tokio::spawn(data.run());
                }
                links.control.send_replace(Some(link_up.clone()));
                let reason = serve(link, &link_up, out_rx).await;
                links.control.send_replace(None);
                link_up.end();
                metrics::gauge!("gse_proxy_upstream_connected").set(0.0);
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                tracing::warn!(server = %server, reason = %reason, "link upstream lost; the agents' channels end and the next server is tried");
                if since.elapsed() >= STABLE_AFTER {
                    backoff.reset();
                    // The next address at once: this one just failed.
                    continue;
                }
            }
            Err(text) => tracing::warn!(server = %server, "cannot link upstream: {text}"),
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// The data link (C10) of one control link: to the DataServer the node
/// named, kept (with back-off) until the control link ends.
struct DataLink {
    dialer: Arc<Dialer>,
    endpoint: String,
    hello: ProxyHello,
    cfg: Arc<ProxyConfig>,
    links: Arc<Links>,
    /// The control link's end.
    gone: CancellationToken,
    store: Arc<PieceStore>,
}

impl DataLink {
    async fn run(self) {
        let up = &self.cfg.upstream;
        let mut backoff = Backoff::new(up.backoff_initial, up.backoff_max);
        let endpoint = &self.endpoint;
        loop {
            let connected = tokio::select! {
                _ = self.gone.cancelled() => return,
                c = connect(&self.dialer, endpoint, &self.hello, up.connect_timeout) => c,
            };
            match connected {
                Ok((link, ack)) => {
                    metrics::gauge!("gse_proxy_data_upstream_connected").set(1.0);
                    tracing::info!(data_server = %ack.node_id, endpoint = %endpoint, "data link up; relaying the area's data");
                    let since = Instant::now();
                    let (out_tx, out_rx) = mpsc::channel(DATA_OUT_QUEUE);
                    let link_up = Upstream::new(
                        ack.node_id,
                        (out_tx, self.gone.child_token()),
                        (self.cfg.proxy.max_agents, "data"),
                        (&self.cfg.proxy.id, self.store.clone()),
                    );
                    self.links.data.send_replace(Some(link_up.clone()));
                    let reason = serve(link, &link_up, out_rx).await;
                    self.links.data.send_replace(None);
                    link_up.end();
                    metrics::gauge!("gse_proxy_data_upstream_connected").set(0.0);
                    if self.gone.is_cancelled() {
                        return;
                    }
                    tracing::warn!(endpoint = %endpoint, reason = %reason, "data link lost; the agents keep their data until it is back");
                    if since.elapsed() >= STABLE_AFTER {
                        backoff.reset();
                    }
                }
                Err(text) => {
                    tracing::warn!(endpoint = %endpoint, "cannot open the data link: {text}")
                }
            }
            tokio::select! {
                _ = self.gone.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
}

/// TCP, TLS, `ProxyHello` and its answer; the link and the answer.
async fn connect(
    dialer: &Dialer,
    server: &str,
    hello: &ProxyHello,
    limit: Duration,
) -> Result<(ClientSession, ProxyHelloAck), String> {
    let tls = dialer.dial(server).await.map_err(|e| match &e {
        gse_link::DialError::Tls {
            explained: Some(text),
            ..
        } => text.clone(),
        _ => e.to_string(),
    })?;
    let mut link = Framed::new(tls, FrameCodec::default());
    let sent =
        tokio::time::timeout(limit, link.send(Frame::new(MsgType::ProxyHello, 0, hello))).await;
    if !matches!(sent, Ok(Ok(()))) {
        return Err("cannot send ProxyHello".into());
    }
    let answer = first_frame(&mut link, Instant::now() + limit)
        .await
        .map_err(|e| match e {
            gse_link::session::FirstFrameError::Closed => {
                "the server closed the link after ProxyHello (an older gse-server that knows no proxies, or this certificate is not a proxy's)".into()
            }
            e => format!("no answer to ProxyHello: {e}"),
        })?;
    if answer.msg_type != MsgType::ProxyHelloAck {
        return Err(format!(
            "the server answered ProxyHello with message type {}",
            answer.msg_type.to_u16()
        ));
    }
    let ack: ProxyHelloAck = answer
        .decode()
        .map_err(|e| format!("a ProxyHelloAck that cannot be read: {e}"))?;
    if !ack.accepted {
        return Err(format!(
            "node {} refused this proxy: {}",
            ack.node_id, ack.message
        ));
    }
    Ok((link, ack))
}

/// Moves frames both ways until the link ends; why it ended.
async fn serve(
    link: ClientSession,
    up: &Arc<Upstream>,
    mut out_rx: mpsc::Receiver<Frame>,
) -> String {
    let (mut sink, mut stream) = link.split();
    // The writer is a task of its own: the agents' frames go up while the
    // reader hands the node's down, on the other core.
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        while out_rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
            metrics::counter!("gse_proxy_frames_total", "direction" => "up")
                .increment(batch.len() as u64);
            if let Err(e) = send_all_within(&mut sink, &batch, WRITE_TIMEOUT).await {
                return format!("write upstream failed: {e}");
            }
            batch.clear();
        }
        "the proxy is stopping".to_string()
    });
    let abort = writer.abort_handle();
    let writer = async {
        writer
            .await
            .unwrap_or_else(|e| format!("the writer upstream failed: {e}"))
    };
    let reader = async {
        loop {
            match stream.next().await {
                None => return "upstream closed the link".to_string(),
                Some(Err(e)) => return format!("read upstream failed: {e}"),
                Some(Ok(frame)) => {
                    if let Err(reason) = up.on_upstream_frame(frame).await {
                        return reason;
                    }
                }
            }
        }
    };
    let reason = tokio::select! {
        _ = up.gone.cancelled() => "the proxy is stopping".into(),
        r = writer => r,
        r = reader => r,
    };
    abort.abort();
    reason
}
