//! Node links between real listeners on loopback, with certificates from
//! `CertDir` (what `gse-server certs` makes).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gse_core::certs::{CertDir, CertKind, DEFAULT_SERVER_NAME};
use gse_core::seams::NodeInfo;
use gse_proto::link::{RunScript, TaskOutput};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;

/// What the roles of one test node saw.
#[derive(Debug)]
enum Seen {
    Delivered(AgentKey, u64, Frame),
    FromRemote(AgentKey, Frame),
    Undelivered(Undelivered),
}

/// A node's agents: `held` are delivered to, others are refused.
struct TestAgents {
    node: String,
    held: Vec<AgentKey>,
    tx: mpsc::UnboundedSender<Seen>,
}

impl LocalAgents for TestAgents {
    fn deliver(&self, agent: AgentKey, epoch: u64, frame: Frame) -> Result<(), Refused> {
        if !self.held.contains(&agent) {
            return Err(Refused {
                code: UndeliveredCode::NotHeld,
                reason: format!("agent {agent} is not held by node {}", self.node),
            });
        }
        let _ = self.tx.send(Seen::Delivered(agent, epoch, frame));
        Ok(())
    }

    fn answer_from_remote(&self, agent: AgentKey, frame: Frame) {
        let _ = self.tx.send(Seen::FromRemote(agent, frame));
    }

    fn undelivered(&self, notice: Undelivered) {
        let _ = self.tx.send(Seen::Undelivered(notice));
    }
}

struct TestNode {
    links: Arc<NodeLinks>,
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl TestNode {
    async fn next(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(20), self.seen.recv())
            .await
            .expect("nothing seen within 20 s")
            .expect("channel open")
    }
}

fn key(last: u8) -> AgentKey {
    format!("0:10.0.0.{last}").parse().unwrap()
}

fn info(id: &str, addr: &str) -> NodeInfo {
    NodeInfo {
        node_id: id.into(),
        region: String::new(),
        roles: vec!["link".into()],
        agent_addr: String::new(),
        api_addr: String::new(),
        agents: 0,
        node_addr: addr.into(),
        data_servers: Vec::new(),
    }
}

/// A registry whose node list the test changes.
struct TestRegistry {
    tx: tokio::sync::watch::Sender<Vec<NodeInfo>>,
}

#[async_trait::async_trait]
impl gse_core::seams::Registry for TestRegistry {
    fn kind(&self) -> &'static str {
        "test"
    }
    async fn announce(&self, _me: NodeInfo) -> Result<(), gse_core::seams::RegistryError> {
        Ok(())
    }
    async fn nodes(&self) -> Result<Vec<NodeInfo>, gse_core::seams::RegistryError> {
        Ok(self.tx.borrow().clone())
    }
    fn watch(&self) -> tokio::sync::watch::Receiver<Vec<NodeInfo>> {
        self.tx.subscribe()
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    certs: CertDir,
    registry: Arc<TestRegistry>,
}

fn setup(nodes: &[(&str, &str)]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let certs = CertDir::new(dir.path().join("certs"));
    certs.init(&[], 30).unwrap();
    let (tx, _) =
        tokio::sync::watch::channel(nodes.iter().map(|(id, addr)| info(id, addr)).collect());
    let registry = Arc::new(TestRegistry { tx });
    Setup {
        _dir: dir,
        certs,
        registry,
    }
}

fn parts(s: &Setup, id: &str, cluster: &str, kind: CertKind) -> NodeLinkParts {
    NodeLinkParts {
        node_id: id.into(),
        cluster: cluster.into(),
        tls_files: s.certs.tls_files(kind),
        server_name: DEFAULT_SERVER_NAME.into(),
        connect_timeout: Duration::from_secs(5),
        handshake_timeout: Duration::from_secs(5),
        max_frame_bytes: 1 << 20,
        outbox_frames: OUTBOX_FRAMES,
        queue_wait: QUEUE_WAIT,
        registry: s.registry.clone(),
        shutdown: CancellationToken::new(),
    }
}

fn start(p: NodeLinkParts, held: Vec<AgentKey>, listener: Option<TcpListener>) -> TestNode {
    let node = p.node_id.clone();
    let links = NodeLinks::new(p).unwrap();
    let (tx, seen) = mpsc::unbounded_channel();
    links.set_local(Arc::new(TestAgents { node, held, tx }));
    if let Some(l) = listener {
        tokio::spawn(links.clone().serve(l));
    }
    TestNode { links, seen }
}

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    (l, addr)
}

/// A frame the agent answers on its stream (a script to run).
fn request(stream_id: u64, user: &str) -> Frame {
    let run = RunScript {
        task_id: "t1".into(),
        user: user.into(),
        ..Default::default()
    };
    Frame::new(MsgType::RunScript, stream_id, &run)
}

fn output(stream_id: u64, text: &str) -> Frame {
    let out = TaskOutput {
        task_id: "t1".into(),
        data: text.as_bytes().to_vec(),
        ..Default::default()
    };
    Frame::new(MsgType::TaskOutput, stream_id, &out)
}

#[tokio::test]
async fn a_frame_reaches_the_agent_of_another_node_and_its_answers_come_back_in_order() {
    let (la, a_addr) = listener().await;
    let (lb, b_addr) = listener().await;
    let s = setup(&[("a", &a_addr), ("b", &b_addr)]);
    let mut a = start(parts(&s, "a", "/gse", CertKind::Server), vec![], Some(la));
    let mut b = start(
        parts(&s, "b", "/gse", CertKind::Server),
        vec![key(1)],
        Some(lb),
    );

    a.links
        .send_to_agent("b", key(1), 7, request(42, "run"))
        .await
        .unwrap();
    let Seen::Delivered(agent, epoch, frame) = b.next().await else {
        panic!("expected a delivery on b")
    };
    assert_eq!((agent, epoch), (key(1), 7));
    assert_eq!(frame.body, request(42, "run").body, "body relayed as is");
    assert_ne!(frame.stream_id, 42, "the holding node picks its own stream");

    // The agent answers on that stream, twice: both go back to a, in
    // order, on a's own stream id.
    for text in ["one", "two"] {
        b.links
            .agent_frame(key(1), output(frame.stream_id, text))
            .await
            .expect("a relayed stream");
    }
    for text in ["one", "two"] {
        let Seen::FromRemote(agent, back) = a.next().await else {
            panic!("expected an answer on a")
        };
        assert_eq!(agent, key(1));
        assert_eq!(back, output(42, text));
    }
    // Frames on b's own streams stay on b.
    assert!(
        b.links
            .agent_frame(key(1), output(0, "local"))
            .await
            .is_err()
    );

    // The agent's link ends: a hears that its stream ended unanswered.
    b.links.agent_gone(key(1));
    let Seen::Undelivered(n) = a.next().await else {
        panic!("expected a notice on a")
    };
    assert_eq!(n.code, UndeliveredCode::LinkEnded);
    assert_eq!(
        (n.agent, n.stream_id, n.msg_type, n.epoch),
        (key(1), 42, MsgType::RunScript, 7)
    );
    assert!(n.reason.contains("node b"), "{}", n.reason);
    assert_eq!(b.links.open_streams(), 0);
}

#[tokio::test]
async fn one_way_frames_open_no_stream_and_a_single_answer_closes_its_own() {
    let (la, a_addr) = listener().await;
    let (lb, b_addr) = listener().await;
    let s = setup(&[("a", &a_addr), ("b", &b_addr)]);
    let mut a = start(parts(&s, "a", "/gse", CertKind::Server), vec![], Some(la));
    let mut b = start(
        parts(&s, "b", "/gse", CertKind::Server),
        vec![key(1)],
        Some(lb),
    );
    let cancel = Frame::new(
        MsgType::CancelTask,
        9,
        &gse_proto::link::CancelTask::default(),
    );
    a.links
        .send_to_agent("b", key(1), 1, cancel.clone())
        .await
        .unwrap();
    let Seen::Delivered(_, _, got) = b.next().await else {
        panic!("expected the cancel on b")
    };
    assert_eq!(got, cancel, "a one-way frame goes as it is");
    assert_eq!(b.links.open_streams(), 0);

    let ask = Frame::new(
        MsgType::PieceRequest,
        4,
        &gse_proto::link::PieceRequest::default(),
    );
    a.links.send_to_agent("b", key(1), 1, ask).await.unwrap();
    let Seen::Delivered(_, _, got) = b.next().await else {
        panic!("expected the request on b")
    };
    assert_eq!(b.links.open_streams(), 1);
    let answer = Frame::new(
        MsgType::PieceData,
        got.stream_id,
        &gse_proto::link::PieceRequest::default(),
    );
    b.links.agent_frame(key(1), answer).await.unwrap();
    let Seen::FromRemote(_, back) = a.next().await else {
        panic!("expected the answer on a")
    };
    assert_eq!((back.msg_type, back.stream_id), (MsgType::PieceData, 4));
    assert_eq!(b.links.open_streams(), 0, "the only answer ends the stream");
}

#[tokio::test]
async fn an_agent_the_node_does_not_hold_is_reported_back() {
    let (la, a_addr) = listener().await;
    let (lb, b_addr) = listener().await;
    let s = setup(&[("a", &a_addr), ("b", &b_addr)]);
    let mut a = start(parts(&s, "a", "/gse", CertKind::Server), vec![], Some(la));
    let _b = start(parts(&s, "b", "/gse", CertKind::Server), vec![], Some(lb));
    a.links
        .send_to_agent("b", key(9), 3, request(5, "x"))
        .await
        .unwrap();
    let Seen::Undelivered(n) = a.next().await else {
        panic!("expected a notice")
    };
    assert_eq!(n.code, UndeliveredCode::NotHeld);
    assert!(n.reason.contains("not held by node b"), "{}", n.reason);
    assert_eq!((n.stream_id, n.epoch), (5, 3));
}

#[tokio::test]
async fn an_unreachable_or_unknown_node_fails_the_frame_at_once() {
    // A port nobody listens on: bind, note it, close.
    let (l, dead_addr) = listener().await;
    drop(l);
    let (la, a_addr) = listener().await;
    let s = setup(&[("a", &a_addr), ("dead", &dead_addr)]);
    let mut a = start(parts(&s, "a", "/gse", CertKind::Server), vec![], Some(la));
    for (node, words) in [
        ("dead", "refused the connection"),
        ("nobody", "not in the cluster"),
    ] {
        a.links
            .send_to_agent(node, key(1), 0, request(3, "x"))
            .await
            .unwrap();
        let Seen::Undelivered(n) = a.next().await else {
            panic!("expected a notice")
        };
        assert_eq!(n.code, UndeliveredCode::NodeUnreachable);
        assert!(n.reason.contains(words), "{}", n.reason);
    }
}

#[tokio::test]
async fn a_peer_without_a_server_certificate_or_of_another_cluster_is_refused() {
    let (lb, b_addr) = listener().await;
    let s = setup(&[("b", &b_addr)]);
    let mut b = start(
        parts(&s, "b", "/gse", CertKind::Server),
        vec![key(1)],
        Some(lb),
    );
    // An agent certificate from the same CA: a host, not a node.
    let mut rogue = start(parts(&s, "rogue", "/gse", CertKind::Agent), vec![], None);
    rogue
        .links
        .send_to_agent("b", key(1), 0, request(1, "rm -rf /"))
        .await
        .unwrap();
    let Seen::Undelivered(n) = rogue.next().await else {
        panic!("expected a refusal")
    };
    assert_eq!(n.code, UndeliveredCode::NodeUnreachable);
    assert!(
        n.reason.contains("node link to b") && n.reason.contains("does not accept our certificate"),
        "{}",
        n.reason
    );
    // A server certificate, but another cluster's node.
    let mut other = start(parts(&s, "other", "/other", CertKind::Server), vec![], None);
    other
        .links
        .send_to_agent("b", key(1), 0, request(1, "x"))
        .await
        .unwrap();
    let Seen::Undelivered(n) = other.next().await else {
        panic!("expected a refusal")
    };
    assert!(n.reason.contains("check cluster.zk_root"), "{}", n.reason);
    assert!(b.seen.try_recv().is_err(), "nothing reached b's agents");
}

#[tokio::test]
async fn work_on_agents_of_a_node_that_leaves_ends_per_agent() {
    let (la, a_addr) = listener().await;
    let (lb, b_addr) = listener().await;
    let s = setup(&[("a", &a_addr), ("b", &b_addr)]);
    let mut a = start(parts(&s, "a", "/gse", CertKind::Server), vec![], Some(la));
    let mut b = start(
        parts(&s, "b", "/gse", CertKind::Server),
        vec![key(1), key(2)],
        Some(lb),
    );
    for k in [key(1), key(2)] {
        a.links
            .send_to_agent("b", k, 5, request(1, "x"))
            .await
            .unwrap();
        assert!(matches!(b.next().await, Seen::Delivered(..)));
    }
    // b dies: it leaves the registry.
    s.registry
        .tx
        .send_modify(|nodes| nodes.retain(|n| n.node_id != "b"));
    let mut lost = Vec::new();
    for _ in 0..2 {
        let Seen::Undelivered(n) = a.next().await else {
            panic!("expected a notice")
        };
        assert_eq!((n.code, n.epoch), (UndeliveredCode::NodeUnreachable, 5));
        assert!(
            n.reason.contains("node b") && n.reason.contains("left the cluster"),
            "{}",
            n.reason
        );
        lost.push(n.agent);
    }
    lost.sort_by_key(|k| k.ip);
    assert_eq!(lost, [key(1), key(2)]);
}

#[test]
fn undelivered_codes_round_trip() {
    let all = HashMap::from([
        (1, UndeliveredCode::NotHeld),
        (2, UndeliveredCode::Busy),
        (3, UndeliveredCode::LinkEnded),
        (4, UndeliveredCode::NodeUnreachable),
        (5, UndeliveredCode::Moving),
    ]);
    for (n, code) in all {
        assert_eq!(UndeliveredCode::from_wire(n), code);
        assert_eq!(code as u32, n);
    }
}

#[tokio::test]
async fn a_burst_of_answers_waits_for_room_on_the_way_back_and_none_is_dropped() {
    let (la, a_addr) = listener().await;
    let (lb, b_addr) = listener().await;
    let s = setup(&[("a", &a_addr), ("b", &b_addr)]);
    let mut a = start(parts(&s, "a", "/gse", CertKind::Server), vec![], Some(la));
    // b's queue back to a holds 2 frames: every answer past those must
    // wait for room (a queue that refused them dropped all but a few).
    let mut small = parts(&s, "b", "/gse", CertKind::Server);
    small.outbox_frames = 2;
    let mut b = start(small, vec![key(1)], Some(lb));

    a.links
        .send_to_agent("b", key(1), 7, request(42, "run"))
        .await
        .unwrap();
    let Seen::Delivered(_, _, frame) = b.next().await else {
        panic!("expected a delivery on b")
    };
    const ANSWERS: usize = 500;
    for i in 0..ANSWERS {
        b.links
            .agent_frame(key(1), output(frame.stream_id, &i.to_string()))
            .await
            .expect("a relayed stream");
    }
    for i in 0..ANSWERS {
        let Seen::FromRemote(_, back) = a.next().await else {
            panic!("expected answer {i} on a")
        };
        assert_eq!(back, output(42, &i.to_string()), "answer {i}, in order");
    }
}

/// A peer node that takes nothing (it accepted the connection and never
/// answers the handshake): once one frame waited a whole `queue_wait` for
/// room, the next fail at once instead of each waiting again, so an
/// agent whose answers go there is not held up frame after frame.
#[tokio::test]
async fn a_stalled_peer_costs_one_wait_then_frames_for_it_fail_at_once() {
    let (la, a_addr) = listener().await;
    // Accepts, reads nothing, answers nothing.
    let (dead, dead_addr) = listener().await;
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = dead.accept().await {
            held.push(conn);
        }
    });
    let s = setup(&[("a", &a_addr), ("dead", &dead_addr)]);
    let mut p = parts(&s, "a", "/gse", CertKind::Server);
    p.outbox_frames = 2;
    p.queue_wait = Duration::from_secs(2);
    // The dial to it stays in its handshake throughout.
    p.handshake_timeout = Duration::from_secs(60);
    let a = start(p, vec![], Some(la));

    let mut first_busy = None;
    for i in 0..10u64 {
        let began = std::time::Instant::now();
        let sent = a
            .links
            .send_to_agent("dead", key(1), 7, request(i, "x"))
            .await;
        if let Err(e) = sent {
            assert!(
                matches!(&e, NodeLinkError::Busy { node, .. } if node == "dead"),
                "{e}"
            );
            assert!(e.to_string().contains("queued for 2s"), "{e}");
            first_busy = Some(began.elapsed());
            break;
        }
    }
    let waited = first_busy.expect("the queue to a peer that takes nothing fills");
    assert!(
        waited >= Duration::from_millis(1900),
        "the first waits: {waited:?}"
    );
    for i in 0..5u64 {
        let began = std::time::Instant::now();
        let e = a
            .links
            .send_to_agent("dead", key(1), 7, request(100 + i, "x"))
            .await
            .unwrap_err();
        assert!(matches!(e, NodeLinkError::Busy { .. }), "{e}");
        assert!(
            began.elapsed() < Duration::from_secs(1),
            "the next fail at once, not after another wait: {:?}",
            began.elapsed()
        );
    }
}
