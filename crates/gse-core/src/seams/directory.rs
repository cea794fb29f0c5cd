//! `AgentDirectory`: the one answer to "where is agent X" (DESIGN.md
//! "Reaching an agent").
//!
//! The node whose link an agent registers on *claims* it and gets an
//! [`Epoch`], strictly greater than any epoch the agent had before, on any
//! node. Only the holder of the current epoch may renew ([`AgentDirectory::renew`])
//! or release the claim, so a node that lost an agent without noticing
//! (a partition, a paused process) can never overwrite the current holder:
//! its next renewal says it is stale, and it drops the link. A claim always
//! succeeds: the agent is where it last registered. [`AgentDirectory::release_node`]
//! lets one surviving node release every claim of a node that died.
//!
//! The embedded [`MemoryDirectory`] serves a single node; the cluster's
//! directory lives in Redis. Both pass [`conformance`].

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::AgentKey;

/// A claim's generation; larger is newer, across every node.
pub type Epoch = u64;

/// Where an agent is held: the node whose link has it, and the proxies
/// between (outermost first; empty for a direct agent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub node_id: String,
    pub via: Vec<String>,
    pub epoch: Epoch,
}

/// Why the directory could not answer.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The backend is down or unreachable; retry later.
    #[error("agent directory {backend} unavailable: {message}")]
    Unavailable {
        backend: &'static str,
        message: String,
    },
}

#[async_trait]
pub trait AgentDirectory: Send + Sync {
    /// Short name for logs and metrics ("memory", "redis").
    fn kind(&self) -> &'static str;
    /// `node_id` holds `agent` now (reached through `via`); the new epoch.
    async fn claim(
        &self,
        agent: AgentKey,
        node_id: &str,
        via: &[String],
    ) -> Result<Epoch, DirectoryError>;
    /// Whether the claim `epoch` is still the current one (the holder
    /// keeps its link only while it is).
    async fn renew(&self, agent: AgentKey, epoch: Epoch) -> Result<bool, DirectoryError>;
    /// [`AgentDirectory::renew`] for many claims, in their order: a node
    /// renews every agent it holds at once, in one round trip where the
    /// directory can.
    async fn renew_many(&self, claims: &[(AgentKey, Epoch)]) -> Result<Vec<bool>, DirectoryError> {
        let mut out = Vec::with_capacity(claims.len());
        for &(agent, epoch) in claims {
            out.push(self.renew(agent, epoch).await?);
        }
        Ok(out)
    }
    /// Ends the claim `epoch` if it is current; true if it was.
    async fn release(&self, agent: AgentKey, epoch: Epoch) -> Result<bool, DirectoryError>;
    /// Where `agent` is, if some node holds it.
    async fn locate(&self, agent: AgentKey) -> Result<Option<Location>, DirectoryError>;
    /// Where each of `agents` is, in their order: one round trip for a
    /// whole task's targets (a fan-out to 10,000 agents must not wait for
    /// 10,000 lookups one after another).
    async fn locate_many(
        &self,
        agents: &[AgentKey],
    ) -> Result<Vec<Option<Location>>, DirectoryError>;
    /// Ends every claim `node_id` holds (it died); the agents released.
    async fn release_node(&self, node_id: &str) -> Result<Vec<AgentKey>, DirectoryError>;
}

/// The embedded directory: one node, in memory. Epochs come from the wall
/// clock in milliseconds (then +1 on ties), so they keep growing across a
/// restart of the node.
#[derive(Default)]
pub struct MemoryDirectory {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    held: HashMap<AgentKey, Location>,
    /// Last epoch given out per agent, kept after a release.
    last: HashMap<AgentKey, Epoch>,
}

impl MemoryDirectory {
    fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl AgentDirectory for MemoryDirectory {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn claim(
        &self,
        agent: AgentKey,
        node_id: &str,
        via: &[String],
    ) -> Result<Epoch, DirectoryError> {
        let mut st = self.state();
        let before = st.last.get(&agent).copied().unwrap_or(0);
        let epoch = crate::now_ms().max(before + 1);
        st.last.insert(agent, epoch);
        st.held.insert(
            agent,
            Location {
                node_id: node_id.to_string(),
                via: via.to_vec(),
                epoch,
            },
        );
        Ok(epoch)
    }

    async fn renew(&self, agent: AgentKey, epoch: Epoch) -> Result<bool, DirectoryError> {
        Ok(self
            .state()
            .held
            .get(&agent)
            .is_some_and(|l| l.epoch == epoch))
    }

    async fn release(&self, agent: AgentKey, epoch: Epoch) -> Result<bool, DirectoryError> {
        let mut st = self.state();
        let current = st.held.get(&agent).is_some_and(|l| l.epoch == epoch);
        if current {
            st.held.remove(&agent);
        }
        Ok(current)
    }

    async fn locate(&self, agent: AgentKey) -> Result<Option<Location>, DirectoryError> {
        Ok(self.state().held.get(&agent).cloned())
    }

    async fn locate_many(
        &self,
        agents: &[AgentKey],
    ) -> Result<Vec<Option<Location>>, DirectoryError> {
        let st = self.state();
        Ok(agents.iter().map(|a| st.held.get(a).cloned()).collect())
    }

    async fn release_node(&self, node_id: &str) -> Result<Vec<AgentKey>, DirectoryError> {
        let mut st = self.state();
        let mut gone: Vec<AgentKey> = st
            .held
            .iter()
            .filter(|(_, l)| l.node_id == node_id)
            .map(|(k, _)| *k)
            .collect();
        for k in &gone {
            st.held.remove(k);
        }
        gone.sort();
        Ok(gone)
    }
}

/// The contract every directory keeps, as checks a backend's tests run
/// (`conformance::all(&dir).await`). Panics name the broken rule.
pub mod conformance {
    use super::*;

    fn key(last: u8) -> AgentKey {
        AgentKey::new(0, std::net::IpAddr::from([10, 9, 0, last]))
    }

    /// Every rule below, on agents 10.9.0.1..10.9.0.4 (a fresh directory).
    pub async fn all(dir: &dyn AgentDirectory) {
        claims_fence_older_holders(dir).await;
        release_needs_the_current_epoch(dir).await;
        a_dead_node_is_released_alone(dir).await;
        many_are_located_as_one_by_one(dir).await;
        many_are_renewed_as_one_by_one(dir).await;
    }

    /// `renew_many` answers what `renew` answers, in the asked order.
    pub async fn many_are_renewed_as_one_by_one(dir: &dyn AgentDirectory) {
        let (a, b, c) = (key(8), key(9), key(10));
        let old = dir.claim(a, "n1", &[]).await.unwrap();
        let newer = dir.claim(a, "n2", &[]).await.unwrap();
        let held = dir.claim(c, "n1", &[]).await.unwrap();
        let claims = [(a, old), (b, 1), (c, held), (a, newer)];
        let many = dir.renew_many(&claims).await.unwrap();
        let mut one_by_one = Vec::new();
        for (agent, epoch) in claims {
            one_by_one.push(dir.renew(agent, epoch).await.unwrap());
        }
        assert_eq!(many, one_by_one);
        assert_eq!(many, [false, false, true, true]);
        assert!(dir.renew_many(&[]).await.unwrap().is_empty());
    }

    /// `locate_many` answers what `locate` answers, in the asked order.
    pub async fn many_are_located_as_one_by_one(dir: &dyn AgentDirectory) {
        let (a, b, c) = (key(5), key(6), key(7));
        dir.claim(a, "n1", &[]).await.unwrap();
        dir.claim(c, "n2", &["p1".to_string()]).await.unwrap();
        let many = dir.locate_many(&[c, b, a]).await.unwrap();
        let one_by_one = vec![
            dir.locate(c).await.unwrap(),
            dir.locate(b).await.unwrap(),
            dir.locate(a).await.unwrap(),
        ];
        assert_eq!(many, one_by_one);
        assert_eq!(
            many[0].as_ref().map(|l| l.via.clone()),
            Some(vec!["p1".to_string()])
        );
        assert_eq!(many[1], None);
        assert!(dir.locate_many(&[]).await.unwrap().is_empty());
    }

    /// A newer claim wins, its epoch is larger, and the old holder learns
    /// it is stale and cannot release the new claim.
    pub async fn claims_fence_older_holders(dir: &dyn AgentDirectory) {
        let a = key(1);
        assert_eq!(dir.locate(a).await.unwrap(), None, "unknown agent");
        let e1 = dir.claim(a, "n1", &[]).await.unwrap();
        assert!(dir.renew(a, e1).await.unwrap(), "the holder renews");
        let via = vec!["proxy-1".to_string()];
        let e2 = dir.claim(a, "n2", &via).await.unwrap();
        assert!(e2 > e1, "epochs grow: {e1} then {e2}");
        assert!(!dir.renew(a, e1).await.unwrap(), "the old holder is stale");
        assert!(!dir.release(a, e1).await.unwrap(), "and cannot release");
        let at = dir.locate(a).await.unwrap().expect("held");
        assert_eq!((at.node_id.as_str(), at.via, at.epoch), ("n2", via, e2));
    }

    /// Release ends only the current claim; a later claim is newer still.
    pub async fn release_needs_the_current_epoch(dir: &dyn AgentDirectory) {
        let a = key(2);
        let e1 = dir.claim(a, "n1", &[]).await.unwrap();
        assert!(dir.release(a, e1).await.unwrap());
        assert_eq!(dir.locate(a).await.unwrap(), None, "released");
        assert!(!dir.renew(a, e1).await.unwrap(), "nothing to renew");
        let e2 = dir.claim(a, "n1", &[]).await.unwrap();
        assert!(e2 > e1, "a claim after a release is newer: {e1} then {e2}");
    }

    /// Releasing a node ends its claims and no other node's.
    pub async fn a_dead_node_is_released_alone(dir: &dyn AgentDirectory) {
        let (a, b) = (key(3), key(4));
        dir.claim(a, "dead", &[]).await.unwrap();
        let eb = dir.claim(b, "alive", &[]).await.unwrap();
        assert_eq!(dir.release_node("dead").await.unwrap(), vec![a]);
        assert_eq!(dir.locate(a).await.unwrap(), None);
        assert!(dir.renew(b, eb).await.unwrap(), "other nodes keep theirs");
        assert!(dir.release_node("dead").await.unwrap().is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_directory_keeps_the_contract() {
        conformance::all(&MemoryDirectory::default()).await;
    }
}
