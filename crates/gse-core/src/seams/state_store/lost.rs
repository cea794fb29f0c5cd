//! Raised `agent_lost` alarms (K4), kept so that a restarted node neither
//! raises one again nor forgets to clear it.

use async_trait::async_trait;

use super::StoreError;
use crate::identity::AgentKey;

/// An `agent_lost` alarm (K4) a node raised and has not cleared yet: kept
/// so that after a restart the node neither raises it again nor forgets to
/// clear it when the agent comes back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostAlarm {
    pub key: AgentKey,
    /// The node that raised it.
    pub node_id: String,
    /// When it was raised, unix ms.
    pub raised_ms: u64,
}

#[async_trait]
pub trait LostAlarmStore: Send + Sync {
    /// Remembers a raised `agent_lost`, replacing any kept for its agent.
    async fn put_lost_alarm(&self, alarm: LostAlarm) -> Result<(), StoreError>;
    /// Forgets the `agent_lost` of `key` that `node_id` raised (it cleared
    /// it); one raised by another node stays.
    async fn clear_lost_alarm(&self, key: AgentKey, node_id: &str) -> Result<(), StoreError>;
    /// Every `agent_lost` raised and not cleared, by any node.
    async fn list_lost_alarms(&self) -> Result<Vec<LostAlarm>, StoreError>;
}
