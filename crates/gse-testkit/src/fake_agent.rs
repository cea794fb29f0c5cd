//! Hand-driven agents, proxies and peers for adversarial tests.
//!
//! A [`FakeAgent`] is a real mTLS connection to a server's link that
//! registers like an agent and then lets the test read and write frames
//! itself: a source that answers a manifest with a path escaping the target
//! root, a target that never reports. A [`RoguePeer`] is a real P2P listener
//! (the agents' certificate, the agents' framing) that claims to hold every
//! piece and serves corrupt bytes. Both speak the wire contract of
//! `proto/gse/link/v1`, nothing in them is mocked on the other side.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use gse_core::tls::TlsFiles;
use gse_proto::link::{
    EntryHave, Heartbeat, PeerHello, PeerHelloAck, PieceData, PieceRequest, PieceStatus, Register,
    RegisterAck,
};
use gse_proto::{Frame, FrameCodec, LINK_PROTOCOL_VERSION, MsgType};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

/// A registered fake agent: frames the server sends (heartbeat acks
/// dropped) come out of [`FakeAgent::recv`]; [`FakeAgent::send`] writes.
pub struct FakeAgent {
    tx: mpsc::Sender<Frame>,
    rx: mpsc::Receiver<Frame>,
    /// Frames read on the link since the RegisterAck, heartbeat acks
    /// included (what a real agent says in `HandOverReady`).
    received: Arc<AtomicU64>,
    pub ack: RegisterAck,
}

/// How a fake agent introduces itself.
#[derive(Clone, Debug)]
pub struct FakeAgentOptions {
    pub ip: IpAddr,
    pub cloud_id: i64,
    pub zone: String,
    /// Announced P2P listener (e.g. a [`RoguePeer`]'s address).
    pub p2p_addr: Option<SocketAddr>,
}

impl FakeAgentOptions {
    pub fn ip(ip: &str) -> Self {
        FakeAgentOptions {
            ip: ip.parse().expect("an IP"),
            cloud_id: 0,
            zone: String::new(),
            p2p_addr: None,
        }
    }
}

impl FakeAgent {
    /// Connects from `opts.ip` (a loopback address), registers and starts
    /// heartbeating every second.
    pub async fn connect(server: SocketAddr, tls: &TlsFiles, opts: FakeAgentOptions) -> FakeAgent {
        let config = gse_core::tls::client_config(tls).expect("agent TLS config");
        let connector = tokio_rustls::TlsConnector::from(config);
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(opts.ip, 0))
            .expect("bind the fake agent's address");
        let tcp = socket.connect(server).await.expect("connect to the link");
        let name = ServerName::try_from(gse_core::certs::DEFAULT_SERVER_NAME).unwrap();
        let tls = connector.connect(name, tcp).await.expect("TLS to the link");
        let mut link = Framed::new(tls, FrameCodec::default());
        let register = Register {
            agent_id: format!("fake{:028}", u32::from_be_bytes(octets(opts.ip))),
            cloud_id: opts.cloud_id,
            identity_ip: opts.ip.to_string(),
            version: "fake".into(),
            hostname: "fake".into(),
            os_type: "linux".into(),
            start_time_s: 0,
            zone: opts.zone.clone(),
            run_mode: 1,
            protocol_version: LINK_PROTOCOL_VERSION,
            p2p_addr: opts.p2p_addr.map(|a| a.to_string()).unwrap_or_default(),
            ..Register::default()
        };
        link.send(Frame::new(MsgType::Register, 1, &register))
            .await
            .expect("send Register");
        let frame = link
            .next()
            .await
            .expect("an answer to Register")
            .expect("a frame");
        let ack: RegisterAck = frame.decode().expect("RegisterAck");
        assert!(ack.accepted, "fake agent refused: {}", ack.message);

        let (out_tx, mut out_rx) = mpsc::channel::<Frame>(64);
        let (in_tx, in_rx) = mpsc::channel::<Frame>(1024);
        let received = Arc::new(AtomicU64::new(0));
        let counted = received.clone();
        tokio::spawn(async move {
            let mut beat = tokio::time::interval(Duration::from_secs(1));
            let mut seq = 0;
            loop {
                tokio::select! {
                    _ = beat.tick() => {
                        seq += 1;
                        let hb = Heartbeat { seq, ..Default::default() };
                        if link.send(Frame::new(MsgType::Heartbeat, 0, &hb)).await.is_err() {
                            return;
                        }
                    }
                    out = out_rx.recv() => match out {
                        Some(f) => if link.send(f).await.is_err() { return },
                        None => return,
                    },
                    got = link.next() => match got {
                        Some(Ok(f)) => {
                            counted.fetch_add(1, Ordering::Relaxed);
                            if f.msg_type != MsgType::HeartbeatAck && in_tx.send(f).await.is_err() {
                                return;
                            }
                        }
                        _ => return,
                    },
                }
            }
        });
        FakeAgent {
            tx: out_tx,
            rx: in_rx,
            received,
            ack,
        }
    }

    /// Frames read since the RegisterAck (heartbeat acks included).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub async fn send(&self, frame: Frame) {
        self.tx.send(frame).await.expect("fake agent link open");
    }

    /// The next frame of type `want` within `within` (others are dropped).
    pub async fn recv_type(&mut self, want: MsgType, within: Duration) -> Frame {
        self.recv_any(&[want], within).await
    }

    /// The next frame of one of the types `want` within `within` (others
    /// are dropped).
    pub async fn recv_any(&mut self, want: &[MsgType], within: Duration) -> Frame {
        let deadline = tokio::time::Instant::now() + crate::patience(within);
        loop {
            let got = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no {want:?} frame within {within:?}"))
                .expect("fake agent link closed");
            if want.contains(&got.msg_type) {
                return got;
            }
        }
    }
}

fn octets(ip: IpAddr) -> [u8; 4] {
    match ip {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [o[12], o[13], o[14], o[15]]
        }
    }
}

/// A P2P listener that accepts any PeerHello, claims every piece of every
/// entry it is told about, and answers each request with corrupt bytes of
/// the right length.
pub struct RoguePeer {
    pub addr: SocketAddr,
    served: Arc<AtomicU64>,
}

impl RoguePeer {
    /// Listens on `ip`; `pieces` lists (entry_index, piece_count,
    /// piece_size, file_size) of the files it pretends to hold.
    pub async fn start(ip: &str, tls: &TlsFiles, pieces: Vec<(u32, u32, u32, u64)>) -> RoguePeer {
        let config = gse_core::tls::server_config(tls).expect("peer TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = TcpListener::bind((ip.parse::<IpAddr>().expect("an IP"), 0))
            .await
            .expect("bind the rogue peer");
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicU64::new(0));
        let count = served.clone();
        let pieces = Arc::new(pieces);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let count = count.clone();
                let pieces = pieces.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut link = Framed::new(tls, FrameCodec::default());
                    while let Some(Ok(frame)) = link.next().await {
                        let reply = match frame.msg_type {
                            MsgType::PeerHello => {
                                let _: PeerHello = frame.decode().expect("PeerHello");
                                let have = pieces
                                    .iter()
                                    .map(|&(entry, n, _, _)| EntryHave {
                                        entry_index: entry,
                                        bitmap: full_bitmap(n),
                                    })
                                    .collect();
                                let ack = PeerHelloAck {
                                    accepted: true,
                                    message: String::new(),
                                    have,
                                };
                                Frame::new(MsgType::PeerHelloAck, frame.stream_id, &ack)
                            }
                            MsgType::PieceRequest => {
                                let req: PieceRequest = frame.decode().expect("PieceRequest");
                                let len = pieces
                                    .iter()
                                    .find(|p| p.0 == req.entry_index)
                                    .map(|&(_, _, size, total)| {
                                        let start = u64::from(req.piece) * u64::from(size);
                                        total.saturating_sub(start).min(u64::from(size)) as usize
                                    })
                                    .unwrap_or(0);
                                count.fetch_add(1, Ordering::Relaxed);
                                let data = PieceData {
                                    transfer_id: req.transfer_id,
                                    task_index: req.task_index,
                                    entry_index: req.entry_index,
                                    piece: req.piece,
                                    request_id: req.request_id,
                                    status: PieceStatus::PieceOk as i32,
                                    data: vec![0xA5; len].into(),
                                    message: String::new(),
                                };
                                Frame::new(MsgType::PieceData, frame.stream_id, &data)
                            }
                            _ => continue,
                        };
                        if link.send(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RoguePeer { addr, served }
    }

    /// Piece requests answered with garbage so far.
    pub fn corrupt_pieces_served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

/// A PieceSet bitmap with the first `n` bits set (least significant first).
fn full_bitmap(n: u32) -> Vec<u8> {
    let mut bytes = vec![0u8; n.div_ceil(8) as usize];
    for i in 0..n {
        bytes[(i / 8) as usize] |= 1 << (i % 8);
    }
    bytes
}

/// A hand-driven proxy (issue 12): a real mTLS connection to a node's
/// agent link with a proxy certificate, saying `ProxyHello`; the test
/// opens agents' channels and reads and writes their frames itself.
pub struct FakeProxy {
    tx: mpsc::Sender<Frame>,
    rx: mpsc::Receiver<Frame>,
    /// The node's answer to the hello.
    pub ack: gse_proto::link::ProxyHelloAck,
}

impl FakeProxy {
    /// Connects with `tls` (a proxy's, or any, certificate), sends
    /// `first` (a `ProxyHello`, or anything else to see it refused) and
    /// reads the node's answer: the ack, or `Err` with the first frame's
    /// type and body when it is not a `ProxyHelloAck` (or none came).
    pub async fn connect(
        server: SocketAddr,
        tls: &TlsFiles,
        first: Frame,
    ) -> Result<FakeProxy, Option<Frame>> {
        let config = gse_core::tls::client_config(tls).expect("proxy TLS config");
        let connector = tokio_rustls::TlsConnector::from(config);
        let tcp = tokio::net::TcpStream::connect(server)
            .await
            .expect("connect to the link");
        let name = ServerName::try_from(gse_core::certs::DEFAULT_SERVER_NAME).unwrap();
        let tls = connector.connect(name, tcp).await.expect("TLS to the link");
        let mut link = Framed::new(tls, FrameCodec::default());
        link.send(first).await.expect("send the first frame");
        let answer = match tokio::time::timeout(Duration::from_secs(10), link.next()).await {
            Ok(Some(Ok(f))) => f,
            _ => return Err(None),
        };
        if answer.msg_type != MsgType::ProxyHelloAck {
            return Err(Some(answer));
        }
        let ack: gse_proto::link::ProxyHelloAck = answer.decode().expect("ProxyHelloAck");
        let (out_tx, mut out_rx) = mpsc::channel::<Frame>(64);
        let (in_tx, in_rx) = mpsc::channel::<Frame>(1024);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    out = out_rx.recv() => match out {
                        Some(f) => if link.send(f).await.is_err() { return },
                        None => return,
                    },
                    got = link.next() => match got {
                        Some(Ok(f)) => if in_tx.send(f).await.is_err() { return },
                        _ => return,
                    },
                }
            }
        });
        Ok(FakeProxy {
            tx: out_tx,
            rx: in_rx,
            ack,
        })
    }

    pub async fn send(&self, frame: Frame) {
        self.tx.send(frame).await.expect("fake proxy link open");
    }

    /// Opens channel `chan` for an agent at `peer` whose certificate names
    /// no identity (a fleet-wide agent certificate).
    pub async fn open(&self, chan: u64, peer: SocketAddr) {
        let open = gse_proto::link::ProxyOpen {
            chan,
            peer_addr: peer.to_string(),
            ..Default::default()
        };
        self.send(Frame::new(MsgType::ProxyOpen, 0, &open)).await;
    }

    /// Sends `inner` as the agent of channel `chan`.
    pub async fn to_node(&self, chan: u64, inner: Frame) {
        let data = gse_proto::link::ProxyData {
            chan,
            msg_type: inner.msg_type.to_u16().into(),
            stream_id: inner.stream_id,
            body: inner.body,
        };
        self.send(Frame::new(MsgType::ProxyData, 0, &data)).await;
    }

    /// The next frame of type `want` for channel `chan` within `within`
    /// (others are dropped); a `ProxyClose` of `chan` is returned as
    /// `Err(reason)`.
    pub async fn recv_on(
        &mut self,
        chan: u64,
        want: MsgType,
        within: Duration,
    ) -> Result<Frame, String> {
        let deadline = tokio::time::Instant::now() + crate::patience(within);
        loop {
            let got = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no {want:?} on channel {chan} within {within:?}"))
                .expect("fake proxy link closed");
            match got.msg_type {
                MsgType::ProxyData => {
                    let d: gse_proto::link::ProxyData = got.decode().expect("ProxyData");
                    let inner = Frame {
                        msg_type: MsgType::from_u16(d.msg_type as u16),
                        stream_id: d.stream_id,
                        body: d.body,
                    };
                    if d.chan == chan && inner.msg_type == want {
                        return Ok(inner);
                    }
                }
                MsgType::ProxyClose => {
                    let c: gse_proto::link::ProxyClose = got.decode().expect("ProxyClose");
                    if c.chan == chan {
                        return Err(c.reason);
                    }
                }
                _ => {}
            }
        }
    }
}
