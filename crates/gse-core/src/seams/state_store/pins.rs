//! Identity pins (issue 9): a `cloud_id:ip` and the first agent id that
//! claimed it, bound to each other until an operator releases the pin.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::identity::AgentKey;

/// An identity and the agent id that first claimed it, bound to each other
/// (issue 9): another agent id claiming the identity, or the agent id
/// claimed under another identity, is refused until an operator releases
/// the pin (`gse-server agents release-pin`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityPin {
    pub key: AgentKey,
    pub agent_id: String,
    /// When the pin was made, unix ms.
    pub pinned_ms: u64,
    /// Made by a per-agent certificate naming this identity: then only such
    /// a certificate may claim it, whatever agent id comes with a shared one.
    pub by_certificate: bool,
}

/// The pin in force after a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinClaim {
    pub pin: IdentityPin,
    /// Whether this claim made it (the identity was free).
    pub made: bool,
}

#[async_trait]
pub trait PinStore: Send + Sync {
    /// Pins `pin.key` and `pin.agent_id` to each other unless either is
    /// pinned already (a pin binds both ways: one agent id per identity,
    /// one identity per agent id), and returns the pin in force afterwards:
    /// `pin` itself when both were free, else the older one (unchanged):
    /// the agent id's pin when it is on another identity, else the
    /// identity's. Two racing claims see one winner.
    async fn claim_identity(&self, pin: IdentityPin) -> Result<PinClaim, StoreError>;
    /// Sets the pin of `pin.key`, replacing the identity's pin and the
    /// agent id's pin on another identity (a per-agent certificate naming
    /// them outranks a pin made with the shared one).
    async fn repin_identity(&self, pin: IdentityPin) -> Result<(), StoreError>;
    /// Removes the pin of `key`, freeing the identity and its agent id;
    /// returns it, `None` if there was none.
    async fn release_identity(&self, key: AgentKey) -> Result<Option<IdentityPin>, StoreError>;
    /// Every pin, by key.
    async fn list_identity_pins(&self) -> Result<Vec<IdentityPin>, StoreError>;
}
