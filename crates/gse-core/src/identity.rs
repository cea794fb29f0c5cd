//! Agent identity (K7).
//!
//! An agent is known by its [`AgentKey`] — `cloud_id:ip`, where `ip` is the
//! identity IP the agent reports, not the socket address the server sees —
//! and also by a stable agent id. API callers name agents either way
//! ([`AgentRef`]); the legacy form is recognised exactly as bk-job does:
//! `^\d+:<dotted ipv4>$` (COMPAT.md §2.0), and IPv6 as `cloud:[v6]` or
//! `cloud:v6`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Longest agent id accepted from the network or the API.
pub const MAX_AGENT_ID_LEN: usize = 64;

/// `cloud_id:ip`: the key status and routes are kept under. Serialised as
/// that string.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct AgentKey {
    pub cloud_id: i64,
    pub ip: IpAddr,
}

impl AgentKey {
    pub fn new(cloud_id: i64, ip: IpAddr) -> Self {
        AgentKey { cloud_id, ip }
    }
}

impl fmt::Display for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.cloud_id, self.ip)
    }
}

/// Why a string is not a valid agent name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("agent id {0:?} is empty")]
    Empty(String),
    #[error("agent id {id:?} is {len} bytes long; at most {MAX_AGENT_ID_LEN} are allowed")]
    TooLong { id: String, len: usize },
    #[error("agent id {0:?} has characters outside [A-Za-z0-9._:-]")]
    BadChars(String),
    #[error("{0:?} is not of the form cloud_id:ip (e.g. 0:10.0.0.1)")]
    NotAKey(String),
}

impl FromStr for AgentKey {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdentityError::NotAKey(s.to_string());
        let (cloud, ip) = s.split_once(':').ok_or_else(bad)?;
        if cloud.is_empty() || !cloud.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let cloud_id: i64 = cloud.parse().map_err(|_| bad())?;
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        Ok(AgentKey { cloud_id, ip })
    }
}

impl From<AgentKey> for String {
    fn from(k: AgentKey) -> String {
        k.to_string()
    }
}

impl TryFrom<String> for AgentKey {
    type Error = IdentityError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// How an API caller names an agent: the legacy `cloud:ip` form or a real id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AgentRef {
    Key(AgentKey),
    Id(String),
}

impl AgentRef {
    /// Parses what a client sent as `bk_agent_id`.
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        if let Ok(key) = s.parse::<AgentKey>() {
            return Ok(AgentRef::Key(key));
        }
        validate_agent_id(s)?;
        Ok(AgentRef::Id(s.to_string()))
    }
}

impl fmt::Display for AgentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentRef::Key(k) => k.fmt(f),
            AgentRef::Id(id) => f.write_str(id),
        }
    }
}

/// Checks an agent id received from an agent or a client.
pub fn validate_agent_id(s: &str) -> Result<(), IdentityError> {
    if s.is_empty() {
        return Err(IdentityError::Empty(s.to_string()));
    }
    if s.len() > MAX_AGENT_ID_LEN {
        return Err(IdentityError::TooLong {
            id: s.chars().take(MAX_AGENT_ID_LEN).collect(),
            len: s.len(),
        });
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(IdentityError::BadChars(s.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_form_parses_as_key() {
        let r = AgentRef::parse("0:10.0.0.1").unwrap();
        assert_eq!(
            r,
            AgentRef::Key(AgentKey::new(0, "10.0.0.1".parse().unwrap()))
        );
        assert_eq!(r.to_string(), "0:10.0.0.1");
        let r = AgentRef::parse("3:[::1]").unwrap();
        assert_eq!(r.to_string(), "3:::1");
    }

    #[test]
    fn real_ids_are_ids_and_bounded() {
        let id = "0100005254008ed86116666614661851";
        assert_eq!(AgentRef::parse(id).unwrap(), AgentRef::Id(id.into()));
        assert!(matches!(AgentRef::parse(""), Err(IdentityError::Empty(_))));
        assert!(matches!(
            AgentRef::parse(&"a".repeat(65)),
            Err(IdentityError::TooLong { len: 65, .. })
        ));
        assert!(matches!(
            AgentRef::parse("a b"),
            Err(IdentityError::BadChars(_))
        ));
        // Not a key (cloud is not numeric), but a valid id.
        assert_eq!(
            AgentRef::parse("x:1.2.3.4").unwrap(),
            AgentRef::Id("x:1.2.3.4".into())
        );
    }
}
