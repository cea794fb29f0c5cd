//! The fake node the role tests run on: a link that records frames and
//! the agent directory that says where agents are.

use std::collections::HashSet;
use std::sync::Arc;

use gse_core::AgentKey;
use gse_core::seams::{AgentDirectory, DirectoryError, Location};
use gse_proto::{Frame, MsgType};
use parking_lot::Mutex;

use super::{NODE, key};
use crate::cluster::sender::{Delivery, LocalLink, SendError, Sender};

/// Records frames instead of sending them; agents in `connected` are up on
/// this node, agents in `remote` are held by the node named. It is the
/// fake node's agent directory as well (what `connected`, `conns` and
/// `remote` say), so tests move agents by changing those sets.
#[derive(Default)]
pub(crate) struct FakeLink {
    pub connected: Mutex<HashSet<AgentKey>>,
    /// Connected, but their queue is full: every send is `Busy`.
    pub refuse: Mutex<HashSet<AgentKey>>,
    pub sent: Mutex<Vec<(AgentKey, Frame)>>,
    /// `link.max_frame_bytes`; 0 = the default.
    pub max_frame: Mutex<usize>,
    /// Each connected agent's claim epoch, when not [`FIRST_CONN`].
    pub conns: Mutex<std::collections::HashMap<AgentKey, u64>>,
    /// Agents held by other nodes, and by which.
    pub remote: Mutex<std::collections::HashMap<AgentKey, String>>,
    /// Connected agents whose link was handed over (K2): every send is
    /// `Moving` until they are claimed again.
    pub moving: Mutex<HashSet<AgentKey>>,
}

/// The claim epoch of an agent in `FakeLink::connected` unless `conns`
/// says otherwise.
pub(crate) const FIRST_CONN: u64 = 1;

/// The claim epoch of an agent in `FakeLink::remote`: newer than any claim
/// it had here (a move to another node is a newer claim).
const REMOTE_CLAIM: u64 = 1_000_000;

impl FakeLink {
    /// The claim `agent` is held under here, if it is.
    fn epoch(&self, key: AgentKey) -> Option<u64> {
        self.connected
            .lock()
            .contains(&key)
            .then(|| self.conns.lock().get(&key).copied().unwrap_or(FIRST_CONN))
    }

    /// A sender for node [`NODE`] over this fake link and directory.
    pub fn sender(self: &Arc<Self>) -> Arc<Sender> {
        Sender::new(
            NODE.into(),
            self.clone() as Arc<dyn AgentDirectory>,
            Some(self.clone() as Arc<dyn LocalLink>),
        )
    }
}

/// The delivery of claim `epoch`, as roles see it.
pub(crate) fn held(epoch: u64) -> Delivery {
    Delivery::of_claim(epoch)
}

impl LocalLink for FakeLink {
    fn deliver(&self, key: AgentKey, epoch: u64, frame: Frame) -> Result<(), SendError> {
        if self.refuse.lock().contains(&key) {
            return Err(SendError::Busy {
                agent: key,
                queued: 256,
            });
        }
        if self.epoch(key) != Some(epoch) {
            return Err(SendError::Stale(key));
        }
        if self.moving.lock().contains(&key) {
            return Err(SendError::Moving(key));
        }
        self.sent.lock().push((key, frame));
        Ok(())
    }

    fn max_frame_bytes(&self) -> usize {
        match *self.max_frame.lock() {
            0 => gse_proto::frame::DEFAULT_MAX_BODY,
            n => n,
        }
    }
}

#[async_trait::async_trait]
impl AgentDirectory for FakeLink {
    fn kind(&self) -> &'static str {
        "fake"
    }

    async fn claim(
        &self,
        key: AgentKey,
        node_id: &str,
        _via: &[String],
    ) -> Result<u64, DirectoryError> {
        // Epochs only grow, across nodes too.
        let remote = self
            .remote
            .lock()
            .contains_key(&key)
            .then_some(REMOTE_CLAIM);
        let epoch = self.epoch(key).or(remote).unwrap_or(FIRST_CONN) + 1;
        self.moving.lock().remove(&key);
        if node_id == NODE {
            self.remote.lock().remove(&key);
            self.connected.lock().insert(key);
            self.conns.lock().insert(key, epoch);
        } else {
            self.connected.lock().remove(&key);
            self.remote.lock().insert(key, node_id.into());
        }
        Ok(epoch)
    }

    async fn renew(&self, key: AgentKey, epoch: u64) -> Result<bool, DirectoryError> {
        Ok(self.epoch(key) == Some(epoch))
    }

    async fn release(&self, key: AgentKey, epoch: u64) -> Result<bool, DirectoryError> {
        let current = self.epoch(key) == Some(epoch);
        if current {
            self.connected.lock().remove(&key);
        }
        Ok(current)
    }

    async fn locate_many(
        &self,
        keys: &[AgentKey],
    ) -> Result<Vec<Option<Location>>, DirectoryError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.locate(*key).await?);
        }
        Ok(out)
    }

    async fn locate(&self, key: AgentKey) -> Result<Option<Location>, DirectoryError> {
        if let Some(epoch) = self.epoch(key) {
            return Ok(Some(Location {
                node_id: NODE.into(),
                via: Vec::new(),
                epoch,
            }));
        }
        Ok(self.remote.lock().get(&key).map(|node| Location {
            node_id: node.clone(),
            via: Vec::new(),
            epoch: REMOTE_CLAIM,
        }))
    }

    async fn release_node(&self, node_id: &str) -> Result<Vec<AgentKey>, DirectoryError> {
        let mut remote = self.remote.lock();
        let gone: Vec<AgentKey> = remote
            .iter()
            .filter(|(_, n)| *n == node_id)
            .map(|(k, _)| *k)
            .collect();
        for k in &gone {
            remote.remove(k);
        }
        Ok(gone)
    }
}

impl FakeLink {
    /// How many `CancelTask` frames went to `ip`.
    pub fn cancels_to(&self, ip: &str) -> usize {
        self.sent
            .lock()
            .iter()
            .filter(|(k, f)| *k == key(ip) && f.msg_type == MsgType::CancelTask)
            .count()
    }
}
