//! Who may claim an identity (issue 9): one host cannot take another's.
//! One check for every hello that claims one: the agent link's `Register`,
//! the DataServer's `DataHello` (and next, what a proxy relays).
//!
//! A hello claims `cloud_id:ip` with an agent id; [`claimed_key`] checks
//! what it says ([`ClaimError`]), [`Claim::new`] adds what the peer's
//! certificate names. [`admit`] checks the claim in two steps:
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
//! checked in the TLS handshake (`gse_core::tls::verify`). What a refusal
//! raises (the link's `identity_conflict` alarm) is the caller's; how a
//! claim was let in is logged here.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use gse_core::AgentKey;
use gse_core::certs::{IdentityMark, read_mark};
use gse_core::identity::{IdentityError, validate_agent_id};
use gse_core::seams::StateStore;
use gse_core::seams::state_store::{IdentityPin, PinClaim, StoreError};
use rustls::pki_types::CertificateDer;

/// A claim of an identity.
pub struct Claim<'a> {
    pub key: AgentKey,
    pub agent_id: &'a str,
    /// The identity the peer's certificate names, if it is a per-agent one.
    pub certificate: Option<IdentityMark>,
}

/// What a hello says about who sends it that cannot be true of anyone;
/// each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("{0}; fix agent_id in the agent's config or data dir")]
    AgentId(IdentityError),
    #[error("cloud_id {0} is negative")]
    NegativeCloudId(i64),
    #[error("identity_ip {0:?} is not an IP address; set identity_ip in the agent's config")]
    NotAnIp(String),
    #[error("identity_ip {0} is unspecified; set identity_ip in the agent's config")]
    Unspecified(IpAddr),
}

/// Where identity pins are kept: the state store's pin methods, named
/// apart so that the claim needs nothing else of the store.
pub trait IdentityPins: Send + Sync {
    /// See `StateStore::claim_identity`.
    fn claim_pin(
        &self,
        pin: IdentityPin,
    ) -> impl Future<Output = Result<PinClaim, StoreError>> + Send;
    /// See `StateStore::repin_identity`.
    fn repin(&self, pin: IdentityPin) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl<S: StateStore + ?Sized> IdentityPins for S {
    fn claim_pin(
        &self,
        pin: IdentityPin,
    ) -> impl Future<Output = Result<PinClaim, StoreError>> + Send {
        self.claim_identity(pin)
    }

    fn repin(&self, pin: IdentityPin) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.repin_identity(pin)
    }
}

/// How a claim was let in.
#[derive(Debug, PartialEq, Eq)]
pub enum Admitted {
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
pub enum Refusal {
    /// The claim is not what the certificate names, the identity is pinned
    /// to another agent id, or the agent id to another identity: raise
    /// `identity_conflict`.
    Conflict(String),
    /// The pin could not be read; the agent retries.
    Store(String),
}

impl Refusal {
    pub fn message(&self) -> &str {
        match self {
            Refusal::Conflict(m) | Refusal::Store(m) => m,
        }
    }
}

/// The identity a hello claims: its agent id, cloud id and identity IP,
/// checked.
pub fn claimed_key(
    agent_id: &str,
    cloud_id: i64,
    identity_ip: &str,
) -> Result<AgentKey, ClaimError> {
    validate_agent_id(agent_id).map_err(ClaimError::AgentId)?;
    if cloud_id < 0 {
        return Err(ClaimError::NegativeCloudId(cloud_id));
    }
    let ip: IpAddr = identity_ip
        .parse()
        .map_err(|_| ClaimError::NotAnIp(identity_ip.to_string()))?;
    if ip.is_unspecified() {
        return Err(ClaimError::Unspecified(ip));
    }
    Ok(AgentKey::new(cloud_id, ip))
}

/// The identity a peer's certificate names, when it is a per-agent one.
/// The mark's role and syntax were checked in the handshake, so a mark
/// that cannot be read here names no identity.
pub fn certificate_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<IdentityMark> {
    let der = certs?.first()?;
    read_mark(der).ok().flatten()?.identity
}

// === impl Claim ===

impl<'a> Claim<'a> {
    /// `key` with `agent_id`, claimed by a peer that presented `certs`.
    pub fn new(key: AgentKey, agent_id: &'a str, certs: Option<&[CertificateDer<'_>]>) -> Self {
        Claim {
            key,
            agent_id,
            certificate: certificate_identity(certs),
        }
    }
}

/// Whether a claim is what its certificate names.
pub fn match_certificate(
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

/// Checks `claim` from `peer` against its certificate and the pins,
/// pinning a free identity and agent id to each other (see the module
/// doc); a claim let in by a new or moved pin is logged.
pub async fn admit<P: IdentityPins + ?Sized>(
    pins: &P,
    claim: Claim<'_>,
    peer: SocketAddr,
) -> Result<Admitted, Refusal> {
    let (key, agent_id) = (claim.key, claim.agent_id);
    let admitted = check_pins(pins, claim).await?;
    match &admitted {
        Admitted::Held => {}
        Admitted::Pinned => {
            tracing::info!(agent = %key, agent_id, "identity and agent id pinned to each other");
        }
        Admitted::Repinned { from } => {
            tracing::warn!(agent = %key, agent_id, from = %from, peer = %peer, "identity re-pinned to a new agent id: its per-agent certificate names this identity");
        }
        Admitted::Moved { from } => {
            tracing::warn!(agent = %key, agent_id, from = %from, peer = %peer, "agent id re-pinned to a new identity: its per-agent certificate names this identity and agent id");
        }
    }
    Ok(admitted)
}

/// [`admit`]'s decision, and the pin it makes or moves.
async fn check_pins<P: IdentityPins + ?Sized>(
    store: &P,
    claim: Claim<'_>,
) -> Result<Admitted, Refusal> {
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
    let claimed = store.claim_pin(wanted.clone()).await.map_err(store_err)?;
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
        store.repin(wanted).await.map_err(store_err)?;
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

#[cfg(test)]
mod tests;
