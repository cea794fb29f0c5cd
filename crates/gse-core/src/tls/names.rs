//! The names a server certificate carries, and what they say about a
//! refusal (issue 10).
//!
//! An agent checks that the server's certificate carries the name it
//! connects with (`upstream.server_name`); a server never sees that check,
//! only the agent's alert and the name the agent asked for in its
//! ClientHello (SNI, sent for a DNS name, never for an IP address). Both
//! sides put the same facts in words: the name expected, the DNS and IP
//! names the certificate carries ([`cert_names`]; not its `gse://` role
//! mark, which no one connects with), and how to make them meet. Matching
//! is webpki's own ([`rustls::client::verify_server_name`]), so the server
//! judges the agent's name exactly as the agent did.

use std::net::IpAddr;

use rustls::CertificateError;
use rustls::client::verify_server_name;
use rustls::server::ParsedCertificate;
use rustls_pki_types::{CertificateDer, ServerName};
use x509_parser::extensions::GeneralName;

use crate::certs::CertKind;

/// The DNS names and IP addresses in the certificate `der`'s
/// subjectAltName, in order; empty when it has none (or cannot be parsed).
pub fn cert_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => ip_from(bytes).map(|ip| ip.to_string()),
            _ => None,
        })
        .collect()
}

fn ip_from(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// `err` with a name mismatch's presented names replaced by
/// [`cert_names`] of `end_entity` (webpki lists them in debug form, role
/// marks included). Still `NotValidForNameContext`, so the peer gets the
/// same alert (bad_certificate), which the server's words rely on.
pub(super) fn with_cert_names(err: rustls::Error, end_entity: &[u8]) -> rustls::Error {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected,
            ..
        }) => rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected,
            presented: cert_names(end_entity),
        }),
        other => other,
    }
}

/// What the name a client asked for (SNI) says about our certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum NameSeen {
    /// The client sent no name (it connects by IP address), or our
    /// certificate cannot be read: we cannot tell.
    Unknown { ours: Vec<String> },
    /// Our certificate carries the name the client asked for.
    Carried { asked: String },
    /// Our certificate does not carry it; the names it does carry.
    Missing { asked: String, ours: Vec<String> },
}

/// Whether our certificate `der` carries `sni`, as the client's webpki
/// would judge it.
pub(super) fn name_seen(der: &CertificateDer<'_>, sni: Option<&str>) -> NameSeen {
    let ours = cert_names(der);
    let (Some(asked), Ok(parsed)) = (sni, ParsedCertificate::try_from(der)) else {
        return NameSeen::Unknown { ours };
    };
    let Ok(name) = ServerName::try_from(asked) else {
        return NameSeen::Unknown { ours };
    };
    let asked = asked.to_owned();
    match verify_server_name(&parsed, &name) {
        Ok(()) => NameSeen::Carried { asked },
        Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => NameSeen::Missing { asked, ours },
        Err(_) => NameSeen::Unknown { ours },
    }
}

/// "a, b, c", or words for none.
pub(super) fn list(names: &[String]) -> String {
    if names.is_empty() {
        "no DNS name or IP address".into()
    } else {
        names.join(", ")
    }
}

/// The command that re-issues the server certificate from the same CA
/// with `wanted` added to the names it carries now (`certs init` always
/// adds its default names; the others must be given again).
pub(super) fn reissue_command(ours: &[String], wanted: &str) -> String {
    let defaults = CertKind::Server.default_names();
    let mut cmd = "gse-server certs init --dir <the CA's directory>".to_owned();
    let extra = ours.iter().map(String::as_str).chain([wanted]);
    let mut seen: Vec<&str> = Vec::new();
    for name in extra {
        if !defaults.iter().any(|d| d == name) && !seen.contains(&name) {
            cmd.push_str(" --server-name ");
            cmd.push_str(name);
            seen.push(name);
        }
    }
    cmd
}
