//! Simulated agents, many in this one process: each has its own source
//! address, TCP + mutual TLS connection and identity, and speaks the real
//! link protocol (Register, then a Heartbeat every `heartbeat_interval_ms`
//! of the RegisterAck), and answers `RunScript` frames ([`task`]) through
//! the Executor seam's simulation runner ([`SimulatedExecutor`]): nothing
//! is spawned on this host, but the server gets the frames a real agent
//! sends. Start at [`Fleet`] and [`run`].
//!
//! Every agent is one task with small buffers, so that tens of thousands fit
//! in the bench process beside the server. The TLS client has resumption
//! disabled: each real agent is its own process with an empty session cache,
//! so every handshake here is a full one, as on a real fleet's first connect.

mod executor;
pub mod failover;
pub mod process;
mod task;

pub use executor::SimulatedExecutor;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use gse_core::seams::Executor;
use gse_core::tls::TlsFiles;
use gse_proto::link::{Heartbeat, Register, RegisterAck};
use gse_proto::{Frame, FrameCodec, LINK_PROTOCOL_VERSION, MsgType};
use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep, timeout};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

type Link = Framed<TlsStream<TcpStream>, FrameCodec>;

/// Read and write buffer of each simulated link; link frames are tiny.
const LINK_BUFFER: usize = 256;
/// Time one agent has for TCP, TLS and Register together.
const CONNECT_WITHIN: Duration = Duration::from_secs(60);
/// Largest frame body a simulated agent accepts.
const MAX_BODY: usize = 64 * 1024;
/// How often [`Fleet::wait_connected`] prints its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What every simulated agent shares: where to connect, and the counters.
pub struct Fleet {
    connector: TlsConnector,
    /// Agent `i` connects to `servers[i % len]`: a cluster's nodes do not
    /// balance agents yet, so the bench spreads them itself.
    servers: Vec<SocketAddr>,
    /// Bounds the handshakes in flight.
    handshakes: Semaphore,
    /// The agents' cloud area: 0, or an area whose proxy they connect to
    /// (as "gse-proxy", its certificate bound to the area).
    area: i64,
    pub shutdown: CancellationToken,
    /// When the first agent started to connect.
    pub started: Instant,
    pub registered: AtomicU64,
    pub failed: AtomicU64,
    /// Links that ended after registering (the server closed them).
    pub lost: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_acked: AtomicU64,
    /// `RunScript` frames answered (every atomic task reported final).
    pub tasks_answered: AtomicU64,
    /// Runs the atomic tasks of `RunScript` frames.
    executor: Arc<dyn Executor>,
    /// Microseconds from `started` to the latest RegisterAck.
    last_ack_us: AtomicU64,
    first_error: OnceLock<String>,
}

impl Fleet {
    pub fn new(tls: &TlsFiles, server: SocketAddr, concurrency: usize) -> Result<Arc<Self>> {
        Self::spread(tls, vec![server], concurrency)
    }

    /// A fleet whose agent `i` connects to `servers[i % servers.len()]`.
    pub fn spread(
        tls: &TlsFiles,
        servers: Vec<SocketAddr>,
        concurrency: usize,
    ) -> Result<Arc<Self>> {
        Self::in_area(tls, servers, concurrency, 0)
    }

    /// [`Self::spread`] for agents of cloud `area`: with an area above 0,
    /// `servers` are the area's proxies.
    pub fn in_area(
        tls: &TlsFiles,
        servers: Vec<SocketAddr>,
        concurrency: usize,
        area: i64,
    ) -> Result<Arc<Self>> {
        anyhow::ensure!(!servers.is_empty(), "a fleet needs a server to connect to");
        let mut config = (*gse_core::tls::upstream_client_config(tls, area)?).clone();
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(Fleet {
            connector: TlsConnector::from(Arc::new(config)),
            servers,
            handshakes: Semaphore::new(concurrency),
            area,
            shutdown: CancellationToken::new(),
            started: Instant::now(),
            registered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            heartbeats_sent: AtomicU64::new(0),
            heartbeats_acked: AtomicU64::new(0),
            tasks_answered: AtomicU64::new(0),
            executor: Arc::new(SimulatedExecutor),
            last_ack_us: AtomicU64::new(0),
            first_error: OnceLock::new(),
        }))
    }

    /// Starts agents `0..agents`, one tokio task each.
    pub fn spawn_all(self: &Arc<Self>, agents: u32) {
        self.spawn_range(0..agents);
    }

    /// Starts agents `range` (their indexes: identity, source address),
    /// one tokio task each: a fleet in each of several processes takes
    /// its own range.
    pub fn spawn_range(self: &Arc<Self>, range: std::ops::Range<u32>) {
        for i in range {
            tokio::spawn(run(self.clone(), i));
        }
    }

    /// Waits until every agent registered or failed, printing progress.
    pub async fn wait_connected(&self, agents: u32) {
        let mut last_print = Instant::now();
        loop {
            let registered = self.registered.load(Ordering::Relaxed);
            let failed = self.failed.load(Ordering::Relaxed);
            let done = registered + failed >= u64::from(agents);
            if done || last_print.elapsed() >= PROGRESS_EVERY {
                eprintln!(
                    "connecting: {registered}/{agents} registered, {failed} failed, {:.1}s",
                    self.started.elapsed().as_secs_f64()
                );
                last_print = Instant::now();
            }
            if done {
                return;
            }
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// Time from the first connect to the latest RegisterAck.
    pub fn connect_time(&self) -> Duration {
        Duration::from_micros(self.last_ack_us.load(Ordering::Relaxed))
    }

    /// The first connection error, if any agent failed.
    pub fn first_error(&self) -> Option<String> {
        self.first_error.get().cloned()
    }

    pub(crate) fn fail(&self, i: u32, e: anyhow::Error) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let _ = self.first_error.set(format!("agent {i}: {e:#}"));
    }
}

/// Runs simulated agent `i` until the fleet shuts down or its link ends.
pub async fn run(fleet: Arc<Fleet>, i: u32) {
    let permit = fleet.handshakes.acquire().await;
    let connected = tokio::select! {
        _ = fleet.shutdown.cancelled() => return,
        c = timeout(CONNECT_WITHIN, connect(&fleet, i)) => c,
    };
    drop(permit);
    let (link, ack) = match connected {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => return fleet.fail(i, e),
        Err(_) => {
            return fleet.fail(
                i,
                anyhow::anyhow!("not registered within {CONNECT_WITHIN:?}"),
            );
        }
    };
    let at = fleet.started.elapsed().as_micros() as u64;
    fleet.last_ack_us.fetch_max(at, Ordering::Relaxed);
    fleet.registered.fetch_add(1, Ordering::Relaxed);
    let period = Duration::from_millis(u64::from(ack.heartbeat_interval_ms.max(100)));
    heartbeat(&fleet, link, period).await;
}

/// Source address of agent `i`: spread over 127.0.0.0/8, 250 per address,
/// so the ephemeral ports of one source address are never the limit
/// (127.1.0.1 up; past 64,000 agents on to 127.2.0.1, ...).
fn source_ip(i: u32) -> IpAddr {
    let block = i / 250;
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (block >> 8) as u8,
        block as u8,
        (i % 250 + 1) as u8,
    ))
}

/// Identity IP of agent `i`: unique per agent, so each is its own host.
pub fn identity_ip(i: u32) -> String {
    Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8).to_string()
}

/// TCP from the agent's source address, TLS, Register -> RegisterAck.
async fn connect(fleet: &Fleet, i: u32) -> Result<(Link, RegisterAck)> {
    let server = fleet.servers[i as usize % fleet.servers.len()];
    connect_to(fleet, i, server).await
}

/// [`connect`] to a given server.
async fn connect_to(fleet: &Fleet, i: u32, server: SocketAddr) -> Result<(Link, RegisterAck)> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::new(source_ip(i), 0))
        .with_context(|| format!("cannot bind to {}", source_ip(i)))?;
    let tcp = socket
        .connect(server)
        .await
        .with_context(|| format!("TCP connect to {server} failed"))?;
    tcp.set_nodelay(true)?;
    let name = match fleet.area {
        0 => ServerName::try_from(gse_core::certs::DEFAULT_SERVER_NAME)?,
        _ => ServerName::try_from("gse-proxy")?,
    };
    let tls = fleet
        .connector
        .connect(name, tcp)
        .await
        .context("TLS handshake failed")?;
    let codec = FrameCodec::new(MAX_BODY);
    let mut link = Framed::with_capacity(tls, codec, LINK_BUFFER);
    link.send(Frame::new(MsgType::Register, 1, &register(i, fleet.area)))
        .await
        .context("cannot send Register")?;
    let frame = link
        .next()
        .await
        .context("the server closed the link before answering Register")?
        .context("no RegisterAck")?;
    if frame.msg_type != MsgType::RegisterAck {
        bail!("answer to Register has type {}", frame.msg_type.to_u16());
    }
    let ack: RegisterAck = frame.decode()?;
    if !ack.accepted {
        bail!("registration refused: {}", ack.message);
    }
    Ok((link, ack))
}

fn register(i: u32, area: i64) -> Register {
    Register {
        agent_id: format!("bench{i:027}"),
        cloud_id: area,
        identity_ip: identity_ip(i),
        version: gse_core::VERSION.into(),
        hostname: format!("bench-{i}"),
        os_type: "linux".into(),
        start_time_s: gse_core::now_ms() / 1000,
        zone: String::new(),
        run_mode: 1,
        protocol_version: LINK_PROTOCOL_VERSION,
        p2p_addr: String::new(),
        region: String::new(),
        // The bench places its simulated agents itself (a fleet per node)
        // and follows no redirect (K2): the node must take them.
        redirected: true,
    }
}

/// Heartbeats every `period` from a random phase, counting acks and
/// answering tasks, until the fleet shuts down or the server ends the link.
async fn heartbeat(fleet: &Fleet, mut link: Link, period: Duration) {
    let phase = Duration::from_millis(rand::random_range(0..period.as_millis() as u64));
    let mut ticker = interval_at(Instant::now() + phase, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = fleet.shutdown.cancelled() => return,
            _ = ticker.tick() => {
                seq += 1;
                let hb = Heartbeat { seq, time_ms: gse_core::now_ms(), ..Default::default() };
                if link.send(Frame::new(MsgType::Heartbeat, 0, &hb)).await.is_err() {
                    break;
                }
                fleet.heartbeats_sent.fetch_add(1, Ordering::Relaxed);
            }
            next = link.next() => match next {
                Some(Ok(frame)) => {
                    if on_frame(fleet, &mut link, frame).await.is_err() {
                        break;
                    }
                }
                // Goodbye is followed by a close, which ends up here.
                None | Some(Err(_)) => break,
            }
        }
    }
    if !fleet.shutdown.is_cancelled() {
        fleet.lost.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a HeartbeatAck or answers a RunScript; other frames (Goodbye,
/// CancelTask: nothing simulated runs long) are ignored. An error means
/// the link failed.
async fn on_frame(fleet: &Fleet, link: &mut Link, frame: Frame) -> Result<()> {
    match frame.msg_type {
        MsgType::HeartbeatAck => {
            fleet.heartbeats_acked.fetch_add(1, Ordering::Relaxed);
        }
        MsgType::RunScript => {
            // Boxed: kept inline, its state would stay in every idle agent's
            // heartbeat future (~600 bytes each).
            Box::pin(task::answer(fleet.executor.as_ref(), link, &frame)).await?;
            fleet.tasks_answered.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_ids_are_unique_and_valid() {
        assert_eq!(source_ip(0).to_string(), "127.1.0.1");
        assert_eq!(source_ip(19_999).to_string(), "127.1.79.250");
        assert_eq!(source_ip(64_000).to_string(), "127.2.0.1");
        assert_eq!(source_ip(94_999).to_string(), "127.2.123.250");
        assert_eq!(identity_ip(70_000), "10.1.17.112");
        let reg = register(49_999, 0);
        assert_eq!(reg.agent_id.len(), 32);
        gse_core::identity::validate_agent_id(&reg.agent_id).unwrap();
    }
}
