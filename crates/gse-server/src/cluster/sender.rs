//! The one module that sends a frame to an agent (DESIGN.md "Reaching an
//! agent").
//!
//! [`Sender::send`] asks the [`AgentDirectory`] where the agent is and
//! delivers there: to this node's link ([`LocalLink`]), or to the node that
//! holds it through a [`NodeForwarder`] (the node-to-node link). An agent
//! behind a proxy is held by the node its proxy is connected to, and that
//! node's link writes into the agent's channel on the proxy's link. The task, file and proc roles hand it frames and get
//! back a [`Delivery`]: an opaque token naming the claim the frame went to,
//! which they compare with the one a disconnect names
//! ([`crate::role::link::AgentFrames::on_disconnect`]). They never see
//! connection ids, node ids or proxies; a failure is a [`SendError`] whose
//! kind says what to do and whose text is the per-host error they report.

use std::sync::Arc;

use async_trait::async_trait;
use gse_core::AgentKey;
use gse_core::seams::directory::{AgentDirectory, DirectoryError, Epoch, Location};
use gse_proto::Frame;
use parking_lot::RwLock;

/// Which claim of an agent a frame was handed to. Two deliveries are equal
/// when they went to the same claim; a disconnect names the claim that
/// ended, so a role knows what was lost with it. Nothing else can be read
/// from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Delivery {
    epoch: Epoch,
}

impl Delivery {
    /// The delivery token of the claim `epoch` (for the link, which holds
    /// the claims, and for test doubles of it).
    pub(crate) fn of_claim(epoch: Epoch) -> Self {
        Delivery { epoch }
    }
}

/// Why a frame did not reach an agent. The kind tells the caller what to
/// do (retry a busy link, report the others); the text is a per-host error.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SendError {
    /// No node holds the agent: it is not registered anywhere now.
    #[error("agent {0} is offline")]
    Offline(AgentKey),
    /// The claim the directory named is over: the agent's connection ended
    /// or was replaced between the lookup and the send.
    #[error(
        "agent {0} lost its connection as the frame was sent; it is offline until it registers again"
    )]
    Stale(AgentKey),
    /// The agent's link was handed over to another node (K2) and the agent
    /// has not registered there yet: the frame did not reach it, and can
    /// follow it there ([`Sender::follow`]).
    #[error(
        "agent {0} is moving to another node (its link was handed over); it has not registered there yet"
    )]
    Moving(AgentKey),
    /// A moving agent did not register anywhere within the time it was
    /// waited for.
    #[error(
        "agent {agent} was moving to another node and did not register there within {}",
        humantime::format_duration(*within)
    )]
    NotArrived {
        agent: AgentKey,
        within: std::time::Duration,
    },
    /// Another node holds the agent and this node cannot hand it the frame.
    #[error("agent {agent} is held by node {node}, which this node cannot reach: {reason}")]
    RemoteUnreachable {
        agent: AgentKey,
        node: String,
        reason: String,
    },
    /// This node holds the agent but runs no link role (a misconfigured
    /// `[node] roles`, or a test).
    #[error("agent {0} is held by this node, but this node runs no link role to reach it")]
    NoLink(AgentKey),
    /// The agent's outbound queue is full: worth retrying shortly.
    #[error("agent {agent} has {queued} frames queued already; its link is too slow")]
    Busy { agent: AgentKey, queued: usize },
    /// The directory could not answer: worth retrying once it is back.
    #[error("cannot find where agent {agent} is: {source}")]
    Directory {
        agent: AgentKey,
        #[source]
        source: Arc<DirectoryError>,
    },
}

impl SendError {
    /// Whether the same send may succeed shortly (a full queue, the
    /// directory down); the others need the agent to register again.
    pub fn is_transient(&self) -> bool {
        matches!(self, SendError::Busy { .. } | SendError::Directory { .. })
    }

    /// The per-host error for a target its caller names `name` (its
    /// `bk_agent_id`, which may differ from the `cloud:ip` key).
    pub fn for_host(&self, name: &str) -> String {
        let text = self.to_string();
        let key = match self {
            SendError::Offline(k)
            | SendError::Stale(k)
            | SendError::NoLink(k)
            | SendError::Moving(k) => k,
            SendError::NotArrived { agent, .. }
            | SendError::RemoteUnreachable { agent, .. }
            | SendError::Busy { agent, .. }
            | SendError::Directory { agent, .. } => agent,
        };
        text.replacen(&key.to_string(), name, 1)
    }
}

/// This node's link, as the sender needs it: the real
/// [`crate::role::link::LinkService`], or a fake in tests.
pub trait LocalLink: Send + Sync {
    /// Queues `frame` for `agent` if its connection here is the claim
    /// `epoch`; `Stale` when it is not (any more), `Busy` when its queue is
    /// full.
    fn deliver(&self, agent: AgentKey, epoch: Epoch, frame: Frame) -> Result<(), SendError>;
    /// Largest frame body the link sends to an agent, bytes.
    fn max_frame_bytes(&self) -> usize;
}

/// Hands a frame to the node that holds an agent (the node-to-node link,
/// built by the cluster work). The receiving node delivers it to the claim
/// `epoch` only, so a frame never reaches a newer connection it was not
/// meant for.
#[async_trait]
pub trait NodeForwarder: Send + Sync {
    async fn forward(
        &self,
        node_id: &str,
        agent: AgentKey,
        epoch: Epoch,
        frame: Frame,
    ) -> Result<(), SendError>;
}

/// Where a located agent is, kept opaque for the roles: pass it back to
/// [`Sender::deliver`].
#[derive(Clone, Debug)]
pub struct Located {
    agent: AgentKey,
    at: Location,
}

impl Located {
    /// The agent located.
    pub fn agent(&self) -> AgentKey {
        self.agent
    }

    /// The delivery a successful [`Sender::deliver`] of it returns, known
    /// before sending, so a role can record it first (a disconnect of the
    /// claim that arrives during the send then finds the record).
    pub fn delivery(&self) -> Delivery {
        Delivery::of_claim(self.at.epoch)
    }
}

/// Sends frames to agents wherever they are held.
pub struct Sender {
    node_id: String,
    directory: Arc<dyn AgentDirectory>,
    local: Option<Arc<dyn LocalLink>>,
    forwarder: RwLock<Option<Arc<dyn NodeForwarder>>>,
}

impl Sender {
    /// A sender for node `node_id`, whose link (if it runs one) is `local`.
    pub fn new(
        node_id: String,
        directory: Arc<dyn AgentDirectory>,
        local: Option<Arc<dyn LocalLink>>,
    ) -> Arc<Self> {
        Arc::new(Sender {
            node_id,
            directory,
            local,
            forwarder: RwLock::new(None),
        })
    }

    /// Lets frames for agents of other nodes go through `forwarder` (set
    /// once the node-to-node link is up).
    pub fn set_forwarder(&self, forwarder: Arc<dyn NodeForwarder>) {
        *self.forwarder.write() = Some(forwarder);
    }

    /// The directory this sender reads (liveness questions go there too).
    pub fn directory(&self) -> &Arc<dyn AgentDirectory> {
        &self.directory
    }

    /// Largest frame body an agent is sent, bytes.
    pub fn max_frame_bytes(&self) -> usize {
        self.local
            .as_ref()
            .map_or(gse_proto::frame::DEFAULT_MAX_BODY, |l| l.max_frame_bytes())
    }

    /// Where `agent` is now; `Offline` when no node holds it.
    pub async fn locate(&self, agent: AgentKey) -> Result<Located, SendError> {
        match self.directory.locate(agent).await {
            Ok(Some(at)) => Ok(Located { agent, at }),
            Ok(None) => Err(SendError::Offline(agent)),
            Err(e) => Err(SendError::Directory {
                agent,
                source: Arc::new(e),
            }),
        }
    }

    /// Where each of `agents` is now, in their order, in one directory
    /// round trip (a task's or transfer's targets); each `Offline` when no
    /// node holds it, all `Directory` when the directory cannot answer.
    pub async fn locate_many(&self, agents: &[AgentKey]) -> Vec<Result<Located, SendError>> {
        match self.directory.locate_many(agents).await {
            Ok(found) => agents
                .iter()
                .zip(found)
                .map(|(&agent, at)| match at {
                    Some(at) => Ok(Located { agent, at }),
                    None => Err(SendError::Offline(agent)),
                })
                .collect(),
            Err(e) => {
                let e = Arc::new(e);
                agents
                    .iter()
                    .map(|&agent| {
                        Err(SendError::Directory {
                            agent,
                            source: e.clone(),
                        })
                    })
                    .collect()
            }
        }
    }

    /// The delivery a frame sent to `agent` now would have, if it is held
    /// anywhere: a role compares it with what it sent to learn whether the
    /// agent still has the connection its work went on.
    pub async fn current(&self, agent: AgentKey) -> Result<Option<Delivery>, DirectoryError> {
        Ok(self
            .directory
            .locate(agent)
            .await?
            .map(|at| Delivery::of_claim(at.epoch)))
    }

    /// Whether a frame for `located` can be handed on from here at all
    /// (this node's link for its own agents, a node-to-node link for
    /// others'); the error is the one a send would give.
    pub fn reachable(&self, located: &Located) -> Result<(), SendError> {
        let Located { agent, at } = located;
        if at.node_id == self.node_id {
            return match self.local {
                Some(_) => Ok(()),
                None => Err(SendError::NoLink(*agent)),
            };
        }
        match *self.forwarder.read() {
            Some(_) => Ok(()),
            None => Err(no_node_link(*agent, at)),
        }
    }

    /// Hands `frame` to the claim `located` names.
    pub async fn deliver(&self, located: &Located, frame: Frame) -> Result<Delivery, SendError> {
        let frame = match self.deliver_here(located, frame) {
            Ok(done) => return done,
            Err(frame) => frame,
        };
        let Located { agent, at } = located;
        let forwarder = self.forwarder.read().clone();
        let Some(forwarder) = forwarder else {
            return Err(no_node_link(*agent, at));
        };
        forwarder
            .forward(&at.node_id, *agent, at.epoch, frame)
            .await?;
        Ok(located.delivery())
    }

    /// Hands each frame to the claim its [`Located`] names, all at once:
    /// the forwards to other nodes are queued first (they have a hop more
    /// to go, and the other nodes start on them while this node's link
    /// takes its own frames), then this node's agents get theirs. Each
    /// outcome comes back with its `tag`, in no particular order.
    pub async fn deliver_all<T>(
        &self,
        items: Vec<(T, Located, Frame)>,
    ) -> Vec<(T, Result<Delivery, SendError>)> {
        let (remote, here): (Vec<_>, Vec<_>) = items
            .into_iter()
            .partition(|(_, located, _)| located.at.node_id != self.node_id);
        let forwards =
            futures::future::join_all(remote.into_iter().map(|(tag, located, frame)| async move {
                let outcome = self.deliver(&located, frame).await;
                (tag, outcome)
            }));
        let mut forwards = std::pin::pin!(forwards);
        // One poll queues every forward that has room on its node link.
        let first = futures::poll!(forwards.as_mut());
        let mut out = Vec::with_capacity(here.len());
        for (tag, located, frame) in here {
            let outcome = self.deliver(&located, frame).await;
            out.push((tag, outcome));
        }
        out.extend(match first {
            std::task::Poll::Ready(done) => done,
            std::task::Poll::Pending => forwards.await,
        });
        out
    }

    /// Delivers what needs no other node at once (an agent held here,
    /// directly or through a proxy connected here: its channel is a link
    /// of this node); gives back the frame of an agent another node holds.
    fn deliver_here(
        &self,
        located: &Located,
        frame: Frame,
    ) -> Result<Result<Delivery, SendError>, Frame> {
        let Located { agent, at } = located;
        if at.node_id != self.node_id {
            return Err(frame);
        }
        Ok(match &self.local {
            Some(link) => link
                .deliver(*agent, at.epoch, frame)
                .map(|()| located.delivery()),
            None => Err(SendError::NoLink(*agent)),
        })
    }

    /// Finds `agent` and hands it `frame`.
    pub async fn send(&self, agent: AgentKey, frame: Frame) -> Result<Delivery, SendError> {
        let located = self.locate(agent).await?;
        self.deliver(&located, frame).await
    }

    /// Sends from code that cannot wait (frame handlers, timers, code under
    /// a lock): the send runs on its own task and a failure is logged with
    /// `what`, for frames whose loss the protocol tolerates (the agent
    /// times out or asks again).
    pub fn post(self: &Arc<Self>, agent: AgentKey, frame: Frame, what: &'static str) {
        self.post_then(agent, frame, move |outcome| {
            if let Err(e) = outcome {
                tracing::debug!(agent = %agent, error = %e, "cannot send {what}");
            }
        });
    }

    /// Like [`Sender::post`], then hands the outcome to `then`. A send
    /// that completes at once (the embedded directory, this node's link)
    /// is done before this returns, `then` included, so frames posted one
    /// after another reach an agent of this node in order; one that must
    /// wait (a remote directory, another node) finishes on its own task.
    pub fn post_then(
        self: &Arc<Self>,
        agent: AgentKey,
        frame: Frame,
        then: impl FnOnce(Result<Delivery, SendError>) + Send + 'static,
    ) {
        let sender = self.clone();
        let mut send = Box::pin(async move { sender.send(agent, frame).await });
        match futures::FutureExt::now_or_never(&mut send) {
            Some(outcome) => then(outcome),
            None => {
                tokio::spawn(async move { then(send.await) });
            }
        }
    }

    /// Hands `frame` to the claim `located` names without waiting, for
    /// code that holds a lock while it records what it sent: this node's
    /// link takes it at once (its error is returned); for another node the
    /// forward runs on its own task, and its failure goes to `on_fail`
    /// (the caller closes then what it recorded as sent).
    pub fn deliver_now(
        self: &Arc<Self>,
        located: &Located,
        frame: Frame,
        on_fail: impl FnOnce(SendError) + Send + 'static,
    ) -> Result<Delivery, SendError> {
        let frame = match self.deliver_here(located, frame) {
            Ok(done) => return done,
            Err(frame) => frame,
        };
        if self.forwarder.read().is_none() {
            return Err(no_node_link(located.agent, &located.at));
        }
        let sender = self.clone();
        let located = located.clone();
        let delivery = located.delivery();
        tokio::spawn(async move {
            if let Err(e) = sender.deliver(&located, frame).await {
                tracing::warn!(agent = %located.agent, error = %e, "cannot forward a frame to the agent's node");
                on_fail(e);
            }
        });
        Ok(delivery)
    }
}

/// Work waiting for agents that are moving to another node (K2): a frame
/// that did not reach an agent because its link here was handed over
/// ([`SendError::Moving`]) waits here, and is handed back with the agent's
/// new claim once it registered again (here or on another node), or with
/// [`SendError::NotArrived`] once `within` passed. A role keeps one and
/// asks [`Followers::arrived`] on its timer; every ask is one directory
/// round trip for all the agents waited for.
pub struct Followers<T> {
    waiting: parking_lot::Mutex<Vec<Waiting<T>>>,
}

struct Waiting<T> {
    agent: AgentKey,
    after: Epoch,
    until: tokio::time::Instant,
    within: std::time::Duration,
    item: T,
}

impl<T> Default for Followers<T> {
    fn default() -> Self {
        Followers {
            waiting: parking_lot::Mutex::new(Vec::new()),
        }
    }
}

impl<T> Followers<T> {
    /// Waits (at most `within`) for `agent` to hold a claim newer than
    /// `moved_from`, the delivery its link was handed over under.
    pub fn wait(
        &self,
        agent: AgentKey,
        moved_from: Delivery,
        within: std::time::Duration,
        item: T,
    ) {
        self.waiting.lock().push(Waiting {
            agent,
            after: moved_from.epoch,
            until: tokio::time::Instant::now() + within,
            within,
            item,
        });
    }

    /// How many items wait.
    pub fn len(&self) -> usize {
        self.waiting.lock().len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.lock().is_empty()
    }

    /// The items whose agent registered again (with where) or whose time
    /// ran out (`NotArrived`); the others go on waiting. A directory that
    /// cannot answer only ends the items whose time ran out.
    pub async fn arrived(&self, sender: &Sender) -> Vec<(T, Result<Located, SendError>)> {
        let waiting = std::mem::take(&mut *self.waiting.lock());
        if waiting.is_empty() {
            return Vec::new();
        }
        let agents: Vec<AgentKey> = waiting.iter().map(|w| w.agent).collect();
        let found = sender.directory.locate_many(&agents).await.ok();
        let now = tokio::time::Instant::now();
        let mut done = Vec::new();
        let mut still = Vec::new();
        for (i, w) in waiting.into_iter().enumerate() {
            match found.as_ref().and_then(|f| f.get(i).cloned().flatten()) {
                Some(at) if at.epoch > w.after => {
                    done.push((w.item, Ok(Located { agent: w.agent, at })))
                }
                _ if now >= w.until => done.push((
                    w.item,
                    Err(SendError::NotArrived {
                        agent: w.agent,
                        within: w.within,
                    }),
                )),
                _ => still.push(w),
            }
        }
        self.waiting.lock().extend(still);
        done
    }
}

/// The error for an agent of another node when this node has no
/// node-to-node link.
fn no_node_link(agent: AgentKey, at: &Location) -> SendError {
    SendError::RemoteUnreachable {
        agent,
        node: at.node_id.clone(),
        reason: "this node has no node-to-node link (it is not a cluster member)".into(),
    }
}

#[cfg(test)]
mod tests;
