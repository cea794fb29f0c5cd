//! The sender over the real memory directory and a recording link: where a
//! frame goes, and each failure's kind and per-host text.

use std::collections::HashMap;

use gse_core::seams::MemoryDirectory;
use gse_proto::MsgType;
use parking_lot::Mutex;

use super::*;

/// A link holding agents under claims; records what it was handed.
#[derive(Default)]
struct RecordingLink {
    held: Mutex<HashMap<AgentKey, Epoch>>,
    full: Mutex<bool>,
    sent: Mutex<Vec<(AgentKey, MsgType)>>,
    /// Where the frame went, in order: "here" or the node id.
    journal: Journal,
}

/// Every hand-over of a link and a forwarder, in order.
type Journal = Arc<Mutex<Vec<String>>>;

impl LocalLink for RecordingLink {
    fn deliver(&self, agent: AgentKey, epoch: Epoch, frame: Frame) -> Result<(), SendError> {
        if self.held.lock().get(&agent) != Some(&epoch) {
            return Err(SendError::Stale(agent));
        }
        if *self.full.lock() {
            return Err(SendError::Busy { agent, queued: 1 });
        }
        self.sent.lock().push((agent, frame.msg_type));
        self.journal.lock().push("here".into());
        Ok(())
    }

    fn max_frame_bytes(&self) -> usize {
        1234
    }
}

/// Forwards to other nodes by recording; refuses node "down".
#[derive(Default)]
struct RecordingForwarder {
    sent: Mutex<Vec<(String, AgentKey, Epoch)>>,
    journal: Journal,
}

#[async_trait]
impl NodeForwarder for RecordingForwarder {
    async fn forward(
        &self,
        node_id: &str,
        agent: AgentKey,
        epoch: Epoch,
        _frame: Frame,
    ) -> Result<(), SendError> {
        if node_id == "down" {
            return Err(SendError::RemoteUnreachable {
                agent,
                node: node_id.into(),
                reason: "connection refused".into(),
            });
        }
        self.sent.lock().push((node_id.into(), agent, epoch));
        self.journal.lock().push(node_id.into());
        Ok(())
    }
}

fn key(last: u8) -> AgentKey {
    AgentKey::new(0, std::net::IpAddr::from([10, 0, 0, last]))
}

fn frame() -> Frame {
    Frame {
        msg_type: MsgType::CancelTask,
        stream_id: 0,
        body: Default::default(),
    }
}

struct Setup {
    dir: Arc<MemoryDirectory>,
    link: Arc<RecordingLink>,
    sender: Arc<Sender>,
}

fn setup() -> Setup {
    let dir = Arc::new(MemoryDirectory::default());
    let link = Arc::new(RecordingLink::default());
    let sender = Sender::new(
        "me".into(),
        dir.clone(),
        Some(link.clone() as Arc<dyn LocalLink>),
    );
    Setup { dir, link, sender }
}

impl Setup {
    async fn hold_here(&self, agent: AgentKey) -> Epoch {
        let epoch = self.dir.claim(agent, "me", &[]).await.unwrap();
        self.link.held.lock().insert(agent, epoch);
        epoch
    }
}

#[tokio::test]
async fn an_agent_held_here_goes_to_this_nodes_link_under_its_claim() {
    let s = setup();
    let e1 = s.hold_here(key(1)).await;
    let first = s.sender.send(key(1), frame()).await.unwrap();
    assert_eq!(first, Delivery::of_claim(e1));
    assert_eq!(*s.link.sent.lock(), [(key(1), MsgType::CancelTask)]);
    // The agent registers again: a new claim, a different delivery.
    s.hold_here(key(1)).await;
    let second = s.sender.send(key(1), frame()).await.unwrap();
    assert_ne!(first, second, "each claim is its own delivery");
    assert_eq!(s.sender.current(key(1)).await.unwrap(), Some(second));
    assert_eq!(s.sender.max_frame_bytes(), 1234);
}

#[tokio::test]
async fn an_agent_nobody_holds_is_offline() {
    let s = setup();
    let e = s.sender.send(key(2), frame()).await.unwrap_err();
    assert!(matches!(e, SendError::Offline(k) if k == key(2)), "{e:?}");
    assert_eq!(e.for_host("host-2"), "agent host-2 is offline");
    assert!(!e.is_transient());
    assert_eq!(s.sender.current(key(2)).await.unwrap(), None);
}

#[tokio::test]
async fn a_claim_that_ended_between_lookup_and_send_is_stale() {
    let s = setup();
    s.hold_here(key(3)).await;
    let located = s.sender.locate(key(3)).await.unwrap();
    // The link moved on to a newer connection of the agent.
    s.link.held.lock().insert(key(3), 1);
    let e = s.sender.deliver(&located, frame()).await.unwrap_err();
    assert!(matches!(e, SendError::Stale(_)), "{e:?}");
    assert!(s.link.sent.lock().is_empty());
}

#[tokio::test]
async fn a_full_queue_is_busy_and_worth_retrying() {
    let s = setup();
    s.hold_here(key(4)).await;
    *s.link.full.lock() = true;
    let e = s.sender.send(key(4), frame()).await.unwrap_err();
    assert!(matches!(e, SendError::Busy { .. }), "{e:?}");
    assert!(e.is_transient());
}

#[tokio::test]
async fn an_agent_of_another_node_goes_through_the_forwarder_or_fails_clearly() {
    let s = setup();
    let epoch = s.dir.claim(key(5), "other", &[]).await.unwrap();
    let e = s.sender.send(key(5), frame()).await.unwrap_err();
    assert!(
        matches!(&e, SendError::RemoteUnreachable { node, .. } if node == "other"),
        "{e:?}"
    );
    assert!(
        e.for_host("h5").contains("agent h5 is held by node other")
            && e.to_string().contains("no node-to-node link"),
        "{e}"
    );
    let fwd = Arc::new(RecordingForwarder::default());
    s.sender.set_forwarder(fwd.clone());
    let d = s.sender.send(key(5), frame()).await.unwrap();
    assert_eq!(d, Delivery::of_claim(epoch));
    assert_eq!(*fwd.sent.lock(), [("other".to_string(), key(5), epoch)]);
    s.dir.claim(key(6), "down", &[]).await.unwrap();
    let e = s.sender.send(key(6), frame()).await.unwrap_err();
    assert!(e.to_string().contains("connection refused"), "{e}");
    assert!(
        s.link.sent.lock().is_empty(),
        "nothing went to this node's link"
    );
}

#[tokio::test]
async fn deliver_all_queues_the_forwards_before_this_nodes_own_frames() {
    let s = setup();
    let fwd = Arc::new(RecordingForwarder {
        journal: s.link.journal.clone(),
        ..RecordingForwarder::default()
    });
    s.sender.set_forwarder(fwd.clone());
    let mut items = Vec::new();
    for last in 1..=6u8 {
        let located = if last % 2 == 0 {
            s.hold_here(key(last)).await;
            s.sender.locate(key(last)).await.unwrap()
        } else {
            let node = if last == 5 { "down" } else { "other" };
            s.dir.claim(key(last), node, &[]).await.unwrap();
            s.sender.locate(key(last)).await.unwrap()
        };
        items.push((last, located, frame()));
    }
    let mut outcomes: Vec<(u8, bool)> = s
        .sender
        .deliver_all(items)
        .await
        .into_iter()
        .map(|(tag, r)| (tag, r.is_ok()))
        .collect();
    outcomes.sort();
    let want: Vec<(u8, bool)> = (1..=6).map(|l| (l, l != 5)).collect();
    assert_eq!(
        outcomes, want,
        "every tag once; only the refused forward failed"
    );
    assert_eq!(
        *s.link.journal.lock(),
        ["other", "other", "here", "here", "here"],
        "forwards go first"
    );
}

#[tokio::test]
async fn an_agent_held_here_without_a_link_role_is_named_so() {
    let dir = Arc::new(MemoryDirectory::default());
    let sender = Sender::new("me".into(), dir.clone(), None);
    dir.claim(key(7), "me", &[]).await.unwrap();
    let e = sender.send(key(7), frame()).await.unwrap_err();
    assert!(matches!(e, SendError::NoLink(_)), "{e:?}");
}

#[tokio::test]
async fn an_agent_behind_a_proxy_is_reached_through_the_node_its_proxy_is_on() {
    let s = setup();
    // Held here, through proxy-a (its channel is this node's link).
    let epoch = s
        .dir
        .claim(key(8), "me", &["proxy-a".to_string()])
        .await
        .unwrap();
    s.link.held.lock().insert(key(8), epoch);
    s.sender.send(key(8), frame()).await.unwrap();
    assert_eq!(*s.link.sent.lock(), [(key(8), MsgType::CancelTask)]);
    // Held by another node through its proxy: forwarded there.
    let fwd = Arc::new(RecordingForwarder::default());
    s.sender.set_forwarder(fwd.clone());
    let other = s
        .dir
        .claim(key(9), "other", &["proxy-b".to_string()])
        .await
        .unwrap();
    s.sender.send(key(9), frame()).await.unwrap();
    assert_eq!(*fwd.sent.lock(), [("other".to_string(), key(9), other)]);
}

#[tokio::test]
async fn deliver_now_answers_here_at_once_and_reports_a_failed_forward_later() {
    let s = setup();
    let e = s.hold_here(key(9)).await;
    let here = s.sender.locate(key(9)).await.unwrap();
    let never = |e: SendError| panic!("no forward for an agent held here: {e}");
    assert_eq!(
        s.sender.deliver_now(&here, frame(), never).unwrap(),
        Delivery::of_claim(e)
    );
    assert_eq!(
        s.link.sent.lock().len(),
        1,
        "queued before deliver_now returned"
    );

    s.dir.claim(key(10), "down", &[]).await.unwrap();
    let far = s.sender.locate(key(10)).await.unwrap();
    let no_link = s.sender.deliver_now(&far, frame(), never).unwrap_err();
    assert!(
        matches!(no_link, SendError::RemoteUnreachable { .. }),
        "{no_link:?}"
    );
    assert!(s.sender.reachable(&far).is_err());

    s.sender
        .set_forwarder(Arc::new(RecordingForwarder::default()));
    assert!(s.sender.reachable(&far).is_ok());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sent = s.sender.deliver_now(&far, frame(), move |e| {
        let _ = tx.send(e.to_string());
    });
    assert!(sent.is_ok(), "the forward runs on its own task");
    let why = rx.await.expect("the failed forward is reported");
    assert!(why.contains("connection refused"), "{why}");
}

/// The memory directory, answering `locate` only after a yield (as a
/// remote one answers after a round trip).
struct SlowDirectory(MemoryDirectory);

#[async_trait]
impl AgentDirectory for SlowDirectory {
    fn kind(&self) -> &'static str {
        "slow"
    }
    async fn claim(&self, a: AgentKey, n: &str, via: &[String]) -> Result<Epoch, DirectoryError> {
        self.0.claim(a, n, via).await
    }
    async fn renew(&self, a: AgentKey, e: Epoch) -> Result<bool, DirectoryError> {
        self.0.renew(a, e).await
    }
    async fn release(&self, a: AgentKey, e: Epoch) -> Result<bool, DirectoryError> {
        self.0.release(a, e).await
    }
    async fn locate(&self, a: AgentKey) -> Result<Option<Location>, DirectoryError> {
        tokio::task::yield_now().await;
        self.0.locate(a).await
    }
    async fn locate_many(&self, a: &[AgentKey]) -> Result<Vec<Option<Location>>, DirectoryError> {
        tokio::task::yield_now().await;
        self.0.locate_many(a).await
    }
    async fn release_node(&self, n: &str) -> Result<Vec<AgentKey>, DirectoryError> {
        self.0.release_node(n).await
    }
}

#[tokio::test]
async fn posts_that_need_no_wait_go_out_at_once_and_in_order() {
    let s = setup();
    s.hold_here(key(11)).await;
    s.sender.post(key(11), frame(), "first");
    let mut second = frame();
    second.msg_type = MsgType::RunScript;
    s.sender.post(key(11), second, "second");
    assert_eq!(
        *s.link.sent.lock(),
        [
            (key(11), MsgType::CancelTask),
            (key(11), MsgType::RunScript)
        ]
    );
}

#[tokio::test]
async fn a_post_that_must_wait_finishes_on_its_own_task() {
    let dir = Arc::new(SlowDirectory(MemoryDirectory::default()));
    let link = Arc::new(RecordingLink::default());
    let sender = Sender::new(
        "me".into(),
        dir.clone(),
        Some(link.clone() as Arc<dyn LocalLink>),
    );
    let epoch = dir.claim(key(12), "me", &[]).await.unwrap();
    link.held.lock().insert(key(12), epoch);
    let (tx, rx) = tokio::sync::oneshot::channel();
    sender.post_then(key(12), frame(), move |sent| {
        let _ = tx.send(sent.map_err(|e| e.to_string()));
    });
    assert!(
        link.sent.lock().is_empty(),
        "the directory has not answered yet"
    );
    assert_eq!(rx.await.unwrap(), Ok(Delivery::of_claim(epoch)));
    assert_eq!(link.sent.lock().len(), 1);
}
