//! Who may claim an identity (issue 9): one host cannot take another's.
//!
//! A registration (and a data link's hello) claims `cloud_id:ip` with an
//! agent id. [`admit`] checks the claim in two steps:
//!
//! 1. a per-agent certificate (`gse://agent/<cloud>/<ip>[/<agent_id>]`)
//!    may claim only what it names ([`match_certificate`]);
//! 2. the pins ([`IdentityPin`] in the state store), which bind both ways:
//!    the first claim of a free identity with a free agent id pins the two
//!    to each other. The same pair again (a flap, a restart) is let in, so
//!    it still replaces its own older link. With the shared certificate,
//!    another agent id claiming a pinned identity, or a pinned agent id
//!    claimed under another identity (which would take every task
//!    addressed by `bk_agent_id`), is refused until an operator releases
//!    the pin (`gse-server agents release-pin`). A per-agent certificate
//!    outranks a pin: its claim re-pins the identity it names (and the
//!    agent id, when it names one too), and an identity pinned by one
//!    accepts no shared certificate after.
//!
//! The role of the certificate itself (agent, not server or API client) was
//! checked in the TLS handshake (`gse_core::tls::verify`). Refusals are
//! raised as `identity_conflict` alarms at most once per
//! [`REALARM_AFTER`] for one identity and claimant ([`ConflictAlarms`]).

use std::collections::HashMap;
use std::net::SocketAddr;

use gse_core::AgentKey;
use gse_core::certs::{IdentityMark, read_mark};
use gse_core::seams::StateStore;
use gse_core::seams::state_store::IdentityPin;
use parking_lot::Mutex;
use rustls::pki_types::CertificateDer;

use super::LinkService;
use super::connection::CheckedRegister;
use crate::role::alarm::{Alarm, AlarmKind};

/// How long one identity conflict (identity, claimant) stays quiet after
/// its alarm, ms: a refused impostor retries every few seconds.
pub(crate) const REALARM_AFTER: u64 = 10 * 60 * 1000;
/// Conflicts remembered for [`ConflictAlarms`]; beyond it, the oldest go.
const REMEMBERED_CONFLICTS: usize = 4096;

/// A claim of an identity.
pub(crate) struct Claim<'a> {
    pub key: AgentKey,
    pub agent_id: &'a str,
    /// The identity the peer's certificate names, if it is a per-agent one.
    pub certificate: Option<IdentityMark>,
}

/// How a claim was let in.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admitted {
    /// The identity was free; it is now pinned to this agent id.
    Pinned,
    /// Already pinned to this agent id.
    Held,
    /// A per-agent certificate moved the pin from the agent id named.
    Repinned { from: String },
    /// A per-agent certificate naming this identity and agent id moved the
    /// agent id's pin from the identity named.
    Moved { from: AgentKey },
}

/// Why a claim was refused; each says what to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The claim is not what the certificate names, the identity is pinned
    /// to another agent id, or the agent id to another identity: raise
    /// `identity_conflict`.
    Conflict(String),
    /// The pin could not be read; the agent retries.
    Store(String),
}

impl Refusal {
    pub(crate) fn message(&self) -> &str {
        match self {
            Refusal::Conflict(m) | Refusal::Store(m) => m,
        }
    }
}

/// The identity a peer's certificate names, when it is a per-agent one.
/// The mark's role and syntax were checked in the handshake, so a mark
/// that cannot be read here names no identity.
pub(crate) fn certificate_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<IdentityMark> {
    let der = certs?.first()?;
    read_mark(der).ok().flatten()?.identity
}

/// Whether a claim is what its certificate names.
pub(crate) fn match_certificate(
    certificate: Option<&IdentityMark>,
    key: AgentKey,
    agent_id: &str,
) -> Result<(), String> {
    let Some(mark) = certificate else {
        return Ok(());
    };
    let id_ok = mark.agent_id.as_deref().is_none_or(|id| id == agent_id);
    if mark.key == key && id_ok {
        return Ok(());
    }
    let named = match &mark.agent_id {
        Some(id) => format!("{} with agent id {id}", mark.key),
        None => mark.key.to_string(),
    };
    Err(format!(
        "the agent's certificate is issued for {named}, but it claims {key} with agent id {agent_id}; set cloud_id, identity_ip (and agent_id) in the agent's config to what its certificate names, or issue it a certificate for its own identity (gse-server certs issue --dir DIR --agent {key})"
    ))
}

/// Checks `claim` against its certificate and the pins, pinning a free
/// identity and agent id to each other; see the module doc.
pub(crate) async fn admit(store: &dyn StateStore, claim: Claim<'_>) -> Result<Admitted, Refusal> {
    match_certificate(claim.certificate.as_ref(), claim.key, claim.agent_id)
        .map_err(Refusal::Conflict)?;
    let wanted = IdentityPin {
        key: claim.key,
        agent_id: claim.agent_id.to_string(),
        pinned_ms: gse_core::now_ms(),
        by_certificate: claim.certificate.is_some(),
    };
    let names_agent_id = claim
        .certificate
        .as_ref()
        .is_some_and(|mark| mark.agent_id.is_some());
    let store_err = |e| {
        Refusal::Store(format!(
            "cannot check the identity pin of {}: {e}; the agent will try again",
            claim.key
        ))
    };
    let claimed = store
        .claim_identity(wanted.clone())
        .await
        .map_err(store_err)?;
    if claimed.made {
        return Ok(Admitted::Pinned);
    }
    let held = claimed.pin;
    let verdict = judge(&held, &wanted, names_agent_id);
    let moves = matches!(
        verdict,
        Ok(Admitted::Repinned { .. } | Admitted::Moved { .. })
    );
    if moves || upgrade(&held, &wanted) {
        store.repin_identity(wanted).await.map_err(store_err)?;
    }
    verdict
}

/// A pin made with the shared certificate, now claimed by the same agent
/// id with a per-agent certificate: it becomes a certificate's pin.
fn upgrade(held: &IdentityPin, wanted: &IdentityPin) -> bool {
    held.key == wanted.key
        && held.agent_id == wanted.agent_id
        && wanted.by_certificate
        && !held.by_certificate
}

/// When `pin` was made, for messages.
fn since(pin: &IdentityPin) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(pin.pinned_ms),
    )
}

/// The decision on `wanted` against the pin `held` in force: the agent
/// id's pin on another identity, or else the identity's own pin.
/// `names_agent_id`: the claim's certificate names its agent id.
fn judge(
    held: &IdentityPin,
    wanted: &IdentityPin,
    names_agent_id: bool,
) -> Result<Admitted, Refusal> {
    if held.key != wanted.key {
        return judge_agent_id(held, wanted, names_agent_id);
    }
    let key = wanted.key;
    let since = since(held);
    if held.by_certificate && !wanted.by_certificate {
        return Err(Refusal::Conflict(format!(
            "identity {key} is bound to a per-agent certificate (pinned to agent id {} since {since}); this agent claims it with agent id {} and a certificate that does not name it; give the agent its per-agent certificate",
            held.agent_id, wanted.agent_id
        )));
    }
    if held.agent_id == wanted.agent_id {
        return Ok(Admitted::Held);
    }
    if wanted.by_certificate {
        return Ok(Admitted::Repinned {
            from: held.agent_id.clone(),
        });
    }
    Err(Refusal::Conflict(format!(
        "identity {key} is pinned to agent id {} (since {since}); this agent claims it with agent id {}: two hosts use one identity (give each its own identity_ip), or the host was re-installed (then release the pin on the server: gse-server agents release-pin -c CONFIG --agent {key})",
        held.agent_id, wanted.agent_id
    )))
}

/// The decision on `wanted` when its agent id is pinned to another
/// identity: only a per-agent certificate naming both moves it.
fn judge_agent_id(
    held: &IdentityPin,
    wanted: &IdentityPin,
    names_agent_id: bool,
) -> Result<Admitted, Refusal> {
    if names_agent_id {
        return Ok(Admitted::Moved { from: held.key });
    }
    let hint = if wanted.by_certificate {
        "; a per-agent certificate moves an agent id only when it names it (certs issue --agent-id)"
    } else {
        ""
    };
    Err(Refusal::Conflict(format!(
        "agent id {} is pinned to identity {} (since {}); this agent claims it as {}: two hosts use one agent id (a copied data dir, or agent_id set to another host's), or the host's identity changed (then release the old pin on the server: gse-server agents release-pin -c CONFIG --agent {}){hint}",
        wanted.agent_id,
        held.key,
        since(held),
        wanted.key,
        held.key
    )))
}

// === impl LinkService (claims) ===

impl LinkService {
    /// Checks a registration's claim on its identity (certificate, pin);
    /// a refused one raises `identity_conflict` and returns the message
    /// for the agent.
    pub(super) async fn admit(
        &self,
        certificate: Option<IdentityMark>,
        reg: &CheckedRegister,
        peer: SocketAddr,
    ) -> Result<(), String> {
        let (key, agent_id) = (reg.key, reg.msg.agent_id.as_str());
        let claim = Claim {
            key,
            agent_id,
            certificate,
        };
        match admit(self.store.as_ref(), claim).await {
            Ok(Admitted::Held) => Ok(()),
            Ok(Admitted::Pinned) => {
                tracing::info!(agent = %key, agent_id, "identity and agent id pinned to each other");
                Ok(())
            }
            Ok(Admitted::Repinned { from }) => {
                tracing::warn!(agent = %key, agent_id, from = %from, peer = %peer, "identity re-pinned to a new agent id: its per-agent certificate names this identity");
                Ok(())
            }
            Ok(Admitted::Moved { from }) => {
                tracing::warn!(agent = %key, agent_id, from = %from, peer = %peer, "agent id re-pinned to a new identity: its per-agent certificate names this identity and agent id");
                Ok(())
            }
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
