//! The role and identity a gse certificate states about itself (issue 9).
//!
//! Every certificate `gse-server certs` makes carries one URI subject
//! alternative name in the `gse` scheme:
//!
//! | mark | certificate |
//! |------|-------------|
//! | `gse://server`, `gse://proxy`, `gse://api-client` | that role |
//! | `gse://proxy/<cloud_id>` | a proxy that may serve that cloud area only |
//! | `gse://agent` | the shared agent certificate |
//! | `gse://agent/<cloud_id>/<ip>` | a per-agent certificate for that identity |
//! | `gse://agent/<cloud_id>/<ip>/<agent_id>` | ... bound to that agent id too |
//!
//! The CA signs it, so only whoever holds the CA key decides what a
//! certificate is for. A URI name rather than a private extended key usage:
//! it needs no registered OID, `openssl x509 -text` shows it as text, and the
//! identity travels in the same place. TLS name checks ignore URI names.
//! [`read_mark`] finds the mark in a DER certificate; the TLS verifiers
//! (`crate::tls`) and the link's Register check use it.

use std::fmt;
use std::net::IpAddr;

use x509_parser::extensions::GeneralName;

use super::CertKind;
use crate::identity::{AgentKey, validate_agent_id};

/// Scheme and separator every mark starts with.
pub const MARK_PREFIX: &str = "gse://";

/// The identity a per-agent certificate may claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityMark {
    pub key: AgentKey,
    /// When set, the only agent id that may claim `key` with this certificate.
    pub agent_id: Option<String>,
}

/// What a certificate says it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertMark {
    pub kind: CertKind,
    /// Only agent certificates carry one: a per-agent certificate.
    pub identity: Option<IdentityMark>,
    /// Only proxy certificates carry one: the one cloud area
    /// (`bk_cloud_id`) the proxy may serve.
    pub area: Option<i64>,
}

/// Why a certificate's mark cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MarkError {
    #[error("the certificate cannot be parsed as X.509 ({0})")]
    Unparsable(String),
    #[error("its mark {uri:?} is malformed: {why}")]
    Malformed { uri: String, why: String },
    #[error("it carries two gse marks, {first:?} and {second:?}")]
    Twice { first: String, second: String },
}

// === impl CertMark ===

impl CertMark {
    /// The mark of a certificate of `kind` with no identity.
    pub fn role(kind: CertKind) -> Self {
        CertMark {
            kind,
            identity: None,
            area: None,
        }
    }

    /// The mark of a proxy certificate bound to cloud area `area`.
    pub fn proxy(area: i64) -> Self {
        CertMark {
            kind: CertKind::Proxy,
            identity: None,
            area: Some(area),
        }
    }

    /// The mark of a per-agent certificate.
    pub fn agent(key: AgentKey, agent_id: Option<String>) -> Self {
        CertMark {
            kind: CertKind::Agent,
            identity: Some(IdentityMark { key, agent_id }),
            area: None,
        }
    }

    /// The URI written into the certificate.
    pub fn uri(&self) -> String {
        let mut uri = format!("{MARK_PREFIX}{}", self.kind.mark_name());
        if let Some(id) = &self.identity {
            uri.push_str(&format!("/{}/{}", id.key.cloud_id, id.key.ip));
            if let Some(agent_id) = &id.agent_id {
                uri.push('/');
                uri.push_str(agent_id);
            }
        }
        if let Some(area) = self.area {
            uri.push_str(&format!("/{area}"));
        }
        uri
    }

    /// Parses a `gse://` URI.
    pub fn parse(uri: &str) -> Result<CertMark, MarkError> {
        let bad = |why: &str| MarkError::Malformed {
            uri: uri.to_string(),
            why: why.to_string(),
        };
        let rest = uri
            .strip_prefix(MARK_PREFIX)
            .ok_or_else(|| bad("it does not start with gse://"))?;
        let mut parts = rest.split('/');
        let kind = parts.next().unwrap_or_default();
        let kind = CertKind::from_mark_name(kind)
            .ok_or_else(|| bad("unknown role (server, agent, proxy or api-client)"))?;
        let rest: Vec<&str> = parts.collect();
        if kind == CertKind::Proxy {
            let area = match rest.as_slice() {
                [] => None,
                [area] => Some(
                    area.parse::<i64>()
                        .ok()
                        .filter(|a| *a > 0)
                        .ok_or_else(|| bad("the cloud area is not a number above 0"))?,
                ),
                _ => return Err(bad("expected gse://proxy or gse://proxy/<cloud_id>")),
            };
            return Ok(CertMark {
                kind,
                identity: None,
                area,
            });
        }
        let identity = match rest.as_slice() {
            [] => None,
            _ if kind != CertKind::Agent => return Err(bad("only agent marks name an identity")),
            [cloud, ip] | [cloud, ip, _] => {
                let cloud_id = cloud
                    .parse::<i64>()
                    .ok()
                    .filter(|c| *c >= 0)
                    .ok_or_else(|| bad("the cloud id is not a number"))?;
                let ip: IpAddr = ip.parse().map_err(|_| bad("the IP is not an IP"))?;
                let agent_id = rest.get(2).map(|id| id.to_string());
                if let Some(id) = &agent_id {
                    validate_agent_id(id).map_err(|e| bad(&e.to_string()))?;
                }
                Some(IdentityMark {
                    key: AgentKey::new(cloud_id, ip),
                    agent_id,
                })
            }
            _ => return Err(bad("expected gse://agent/<cloud_id>/<ip>[/<agent_id>]")),
        };
        Ok(CertMark {
            kind,
            identity,
            area: None,
        })
    }
}

impl fmt::Display for CertMark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// The mark of the DER certificate `der`; `None` when it has none (a
/// certificate made before marks existed, or by another PKI).
pub fn read_mark(der: &[u8]) -> Result<Option<CertMark>, MarkError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| MarkError::Unparsable(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| MarkError::Unparsable(e.to_string()))?;
    let mut found: Option<&str> = None;
    let uris = san.iter().flat_map(|s| s.value.general_names.iter());
    for name in uris {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        if !uri.starts_with(MARK_PREFIX) {
            continue;
        }
        if let Some(first) = found {
            return Err(MarkError::Twice {
                first: first.to_string(),
                second: uri.to_string(),
            });
        }
        found = Some(uri);
    }
    found.map(CertMark::parse).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip() {
        let key: AgentKey = "3:10.0.0.1".parse().unwrap();
        let v6: AgentKey = "0:fd00::1".parse().unwrap();
        for mark in [
            CertMark::role(CertKind::Server),
            CertMark::role(CertKind::ApiClient),
            CertMark::role(CertKind::Agent),
            CertMark::agent(key, None),
            CertMark::agent(key, Some("0100a-b_c.d:e".into())),
            CertMark::agent(v6, Some("x".into())),
            CertMark::role(CertKind::Proxy),
            CertMark::proxy(7),
        ] {
            assert_eq!(CertMark::parse(&mark.uri()), Ok(mark.clone()), "{mark}");
        }
        assert_eq!(
            CertMark::agent(key, Some("id1".into())).uri(),
            "gse://agent/3/10.0.0.1/id1"
        );
        assert_eq!(
            CertMark::role(CertKind::ApiClient).uri(),
            "gse://api-client"
        );
    }

    #[test]
    fn malformed_marks_are_refused() {
        for uri in [
            "gse://root",
            "gse://server/0/10.0.0.1",
            "gse://agent/x/10.0.0.1",
            "gse://agent/-1/10.0.0.1",
            "gse://agent/0/not-ip",
            "gse://agent/0",
            "gse://agent/0/10.0.0.1/bad id",
            "gse://agent/0/10.0.0.1/id/more",
            "gse://proxy/0",
            "gse://proxy/x",
            "gse://proxy/7/8",
        ] {
            assert!(
                matches!(CertMark::parse(uri), Err(MarkError::Malformed { .. })),
                "{uri}"
            );
        }
    }
}
