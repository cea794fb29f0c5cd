//! What the link does with a refused identity claim (issue 9).
//!
//! The claim itself (the hello's fields, the certificate, the pins) is
//! checked by `gse_link::claim`, the one check the link and the
//! DataServers share. A registration it refuses for a conflict (another
//! host's identity or agent id) is counted and raised as an
//! `identity_conflict` alarm at most once per [`REALARM_AFTER`] for one
//! identity and claimant ([`ConflictAlarms`]): a refused impostor retries
//! every few seconds.

use std::collections::HashMap;
use std::net::SocketAddr;

use gse_core::AgentKey;
use gse_core::certs::IdentityMark;
use gse_link::claim::{self, Claim, Refusal};
use parking_lot::Mutex;

use super::LinkService;
use crate::role::alarm::{Alarm, AlarmKind};

/// How long one identity conflict (identity, claimant) stays quiet after
/// its alarm, ms: a refused impostor retries every few seconds.
pub(crate) const REALARM_AFTER: u64 = 10 * 60 * 1000;
/// Conflicts remembered for [`ConflictAlarms`]; beyond it, the oldest go.
const REMEMBERED_CONFLICTS: usize = 4096;

// === impl LinkService (claims) ===

impl LinkService {
    /// Checks a registration's claim of `key` with `agent_id` (certificate,
    /// pin); a refused one raises `identity_conflict` and returns the
    /// message for the agent.
    pub(super) async fn admit(
        &self,
        key: AgentKey,
        agent_id: &str,
        certificate: Option<IdentityMark>,
        peer: SocketAddr,
    ) -> Result<(), String> {
        let claim = Claim {
            key,
            agent_id,
            certificate,
        };
        match claim::admit(self.store.as_ref(), claim, peer).await {
            Ok(_) => Ok(()),
            Err(refusal) => {
                if let Refusal::Conflict(message) = &refusal {
                    self.identity_conflict(key, agent_id, peer, message);
                }
                Err(refusal.message().to_string())
            }
        }
    }

    /// Raises `identity_conflict` for a refused claim, once per window.
    fn identity_conflict(&self, key: AgentKey, agent_id: &str, peer: SocketAddr, message: &str) {
        metrics::counter!("gse_link_identity_conflicts_total").increment(1);
        let Some(alarms) = &self.alarms else {
            return;
        };
        if !self.conflict_alarms.due(key, agent_id, gse_core::now_ms()) {
            return;
        }
        let alarm = Alarm::about_agent_key(
            AlarmKind::IdentityConflict,
            &self.node_id,
            key,
            format!("a registration from {peer} was refused: {message}"),
        );
        alarms.raise(Alarm {
            bk_agent_id: agent_id.to_string(),
            ..alarm
        });
    }
}

// === impl ConflictAlarms ===

/// When each (identity, claimant) conflict was last alarmed.
#[derive(Default)]
pub(crate) struct ConflictAlarms {
    last: Mutex<HashMap<(AgentKey, String), u64>>,
}

impl ConflictAlarms {
    /// Whether a conflict of `agent_id` over `key` at `now_ms` should
    /// raise an alarm (none for it in the last [`REALARM_AFTER`]).
    pub(crate) fn due(&self, key: AgentKey, agent_id: &str, now_ms: u64) -> bool {
        let mut last = self.last.lock();
        let entry = (key, agent_id.to_string());
        if last
            .get(&entry)
            .is_some_and(|at| now_ms.saturating_sub(*at) < REALARM_AFTER)
        {
            return false;
        }
        if last.len() >= REMEMBERED_CONFLICTS {
            last.retain(|_, at| now_ms.saturating_sub(*at) < REALARM_AFTER);
            if last.len() >= REMEMBERED_CONFLICTS {
                last.clear();
            }
        }
        last.insert(entry, now_ms);
        true
    }
}

#[cfg(test)]
mod tests;
