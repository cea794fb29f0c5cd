//! One sentence for a TLS refusal, on either side of a link (K6).
//!
//! A refusal is either ours (the peer's certificate failed our checks: the
//! rustls error says which, and [`super::verify::PeerCertProblem`] adds the
//! role and the usual defects) or theirs (we received an alert). An alert
//! names no reason, so for one we look at our own certificate for what
//! the peer's checks would refuse (an old version, self-signed, a CA's, a
//! wrong or missing role mark) and name it; a server also checks the name
//! the agent asked for against its certificate ([`super::names`]). Only
//! when all that looks right do we fall back to the likely cause for that
//! alert, and the CA is blamed only where the alert is about the chain
//! (unknown_ca, decrypt_error) or, worded as the less likely cause, where
//! we cannot see the name (bad_certificate without SNI).

use std::io;

use rustls::{AlertDescription, CertificateError};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::TlsFiles;
use super::names::{NameSeen, list, name_seen, reissue_command};
use super::verify::{Defect, PeerCertProblem, defect};
use crate::certs::{CertKind, read_mark};

/// Which end of a link is explaining a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side<'a> {
    /// The accepting side (gse-server, later gse-proxy); `sni` is the DNS
    /// name the client asked for, `None` when it sent none (see
    /// [`super::accept`]).
    Server { sni: Option<&'a str> },
    /// The connecting side (gse-agent).
    Client,
}

/// What each side is and what to tell it.
struct Words {
    /// The peer, "agent" or "server".
    they: &'static str,
    /// Our own certificate's kind.
    ours: CertKind,
    /// How to get the peer a certificate from our CA.
    their_ca_hint: &'static str,
    /// How to get us a certificate from the peer's CA.
    our_ca_hint: &'static str,
    /// How to give the peer a certificate of the right kind.
    their_kind_hint: &'static str,
    /// How to give us a certificate of the right kind.
    our_kind_hint: &'static str,
    /// Where the name an agent connects with is set.
    name_key: &'static str,
    /// The server certificate, seen from this side.
    server_cert: &'static str,
}

fn words(side: Side<'_>) -> Words {
    match side {
        Side::Server { .. } => Words {
            they: "agent",
            ours: CertKind::Server,
            their_ca_hint: "issue the agent's certificate from this server's CA (`gse-server certs issue --kind agent`)",
            our_ca_hint: "issue this server's certificate from the CA the agents trust",
            their_kind_hint: "give the agent an agent certificate (gse_agent.crt from `gse-server certs init`, or `gse-server certs issue --kind agent`)",
            our_kind_hint: "set cert_file and key_file in this server's [tls] section to gse_server.crt and gse_server.key (from `gse-server certs init`, or `gse-server certs issue --kind server`)",
            name_key: "server_name in the agent's [upstream] section",
            server_cert: "this server's certificate",
        },
        Side::Client => Words {
            they: "server",
            ours: CertKind::Agent,
            their_ca_hint: "point ca_file at the gseca.crt of the CA that issued the server's certificate",
            our_ca_hint: "issue this agent's certificate from the server's CA (`gse-server certs issue --kind agent`)",
            their_kind_hint: "the server must present a server certificate (gse_server.crt from `gse-server certs init`, or `gse-server certs issue --kind server`) in its [tls] section",
            our_kind_hint: "set cert_file and key_file in this agent's [tls] section to gse_agent.crt and gse_agent.key (from `gse-server certs init`, or `gse-server certs issue --kind agent`)",
            name_key: "server_name in this agent's [upstream] section",
            server_cert: "the server's certificate",
        },
    }
}

/// Finds the rustls error inside an I/O error from a TLS stream, if any.
pub fn rustls_cause(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

/// One sentence on what did not match, when `err` is a certificate problem;
/// `None` when it is not a TLS certificate failure (e.g. connection reset).
///
/// `peer` names the other side (an address); `files` is our own TLS config,
/// so the sentence can name the file to look at.
pub fn explain(side: Side<'_>, peer: &str, files: &TlsFiles, err: &io::Error) -> Option<String> {
    let w = words(side);
    let they = w.they;
    let text = match rustls_cause(err)? {
        rustls::Error::NoCertificatesPresented => format!(
            "TLS refused: the {they} at {peer} presented no certificate; configure cert_file/key_file in its [tls] section"
        ),
        rustls::Error::InvalidCertificate(ce) => {
            format!(
                "TLS refused: the {they} at {peer} presented {}",
                their_certificate(&w, files, ce)
            )
        }
        rustls::Error::AlertReceived(alert) => {
            format!(
                "TLS refused by the {they} at {peer}: {}",
                our_certificate(&w, side, files, *alert)
            )
        }
        other => format!("TLS failure with the {they} at {peer}: {other}"),
    };
    Some(text)
}

/// What was wrong with the peer's certificate and what to do, after
/// "presented ".
fn their_certificate(w: &Words, files: &TlsFiles, ce: &CertificateError) -> String {
    let ca = files.ca_file.display();
    let their_ca_hint = w.their_ca_hint;
    match ce {
        CertificateError::Other(other) => match other.0.downcast_ref::<PeerCertProblem>() {
            Some(problem) => their_problem(w, files, problem),
            None => format!("an unusable certificate: {other}"),
        },
        CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
            "a certificate not signed by our CA ({ca}); the two sides use different CAs: {their_ca_hint}"
        ),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            format!("an expired certificate; issue a new one from the CA ({ca})")
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "a certificate that is not valid yet; check both hosts' clocks".into()
        }
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => {
            let expected = expected.to_str();
            format!(
                "a certificate for {}, not for {expected}, the name we connect with: {}",
                list(presented),
                name_fix(w, presented, Some(&expected))
            )
        }
        CertificateError::NotValidForName => format!(
            "a certificate that does not carry the name we connect with; set {} to a name in the server certificate, or re-issue it with that name",
            w.name_key
        ),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "a certificate made for another purpose (server vs client); issue the right kind with `gse-server certs issue`".into()
        }
        other => format!("an unusable certificate: {other}"),
    }
}

fn their_problem(w: &Words, files: &TlsFiles, problem: &PeerCertProblem) -> String {
    let hint = w.their_kind_hint;
    match problem {
        PeerCertProblem::WrongRole { mark, wanted } => format!(
            "{} (marked {mark}), not {}; {hint}",
            mark.kind.a_certificate(),
            wanted.a_certificate()
        ),
        PeerCertProblem::Unmarked { wanted } => format!(
            "a certificate without a gse role mark where {} was expected (made by `gse-server certs` before role marks, or by another PKI); {hint}, or, while upgrading, set legacy_unmarked_certs = true in this side's [tls] section (then any certificate from the CA passes in any role)",
            wanted.a_certificate()
        ),
        PeerCertProblem::WrongArea { area, want } => format!(
            "a proxy certificate for cloud area {area}, but this side is in area {want}: point it at its own area's proxy, or issue that proxy a certificate for area {want} (`gse-server certs issue --proxy-area {want}`)"
        ),
        PeerCertProblem::BadMark(e) => {
            format!("a certificate whose gse mark cannot be used ({e}); {hint}")
        }
        PeerCertProblem::Defect(Defect::OldVersion { version }) => format!(
            "an X.509 v{version} certificate; gse takes only X.509 v3 certificates (they carry the role and purpose): {hint}"
        ),
        PeerCertProblem::Defect(Defect::SelfSigned { subject }) => format!(
            "a self-signed certificate (subject {subject}), not one issued by our CA ({}); {}",
            files.ca_file.display(),
            w.their_ca_hint
        ),
        PeerCertProblem::Defect(Defect::CaAsLeaf { subject }) => format!(
            "a CA certificate (subject {subject}) as its own; it must present a certificate issued by the CA, not the CA's: {hint}"
        ),
    }
}

/// How to make the name an agent connects with (`wanted`, when known) and
/// the server certificate's names (`ours`) meet.
fn name_fix(w: &Words, ours: &[String], wanted: Option<&str>) -> String {
    let (with, command) = match wanted {
        Some(name) => ("that name", reissue_command(ours, name)),
        None => (
            "the agent's server_name",
            reissue_command(ours, "<the agent's upstream.server_name>"),
        ),
    };
    format!(
        "set {} to one of those names, or re-issue {} from the same CA with {with} (`{command}`) and restart gse-server",
        w.name_key, w.server_cert
    )
}

/// Why the peer probably refused us, after "TLS refused by the X at P: ".
fn our_certificate(w: &Words, side: Side<'_>, files: &TlsFiles, alert: AlertDescription) -> String {
    let cert = files.cert_file.display();
    match alert {
        AlertDescription::CertificateRequired => {
            "it requires a client certificate and we sent none; set cert_file/key_file in our [tls] section".into()
        }
        AlertDescription::CertificateExpired => {
            format!("our certificate ({cert}) has expired (or is not valid yet); issue a new one, and check both hosts' clocks")
        }
        AlertDescription::UnknownCA
        | AlertDescription::BadCertificate
        | AlertDescription::DecryptError
        | AlertDescription::CertificateUnknown
        | AlertDescription::UnsupportedCertificate
        | AlertDescription::AccessDenied => refused_ours(w, side, files, alert),
        other => format!("alert {other:?}"),
    }
}

/// Why the peer refused our certificate with `alert`: a defect or wrong
/// mark of ours when it has one; then, on a server, the name the agent
/// asked for; then the likely cause for that alert.
fn refused_ours(w: &Words, side: Side<'_>, files: &TlsFiles, alert: AlertDescription) -> String {
    use AlertDescription::{BadCertificate, DecryptError, UnknownCA};
    let cert = files.cert_file.display();
    let der = own_cert(files);
    // An alert about the chain or the name is not about the role mark.
    let marks = !matches!(alert, UnknownCA | BadCertificate | DecryptError);
    if let Some(problem) = der.as_ref().and_then(|d| own_problem(w, d, marks)) {
        return format!("our certificate ({cert}) {problem}");
    }
    let seen = match (side, &der) {
        (Side::Server { sni }, Some(der)) => Some(name_seen(der, sni)),
        _ => None,
    };
    let they = w.they;
    let another_ca = format!(
        "our certificate comes from another CA than the {they}'s: {}",
        w.our_ca_hint
    );
    let refused = format!("it does not accept our certificate ({cert}, alert {alert:?})");
    match (alert, seen) {
        (UnknownCA | DecryptError, Some(NameSeen::Missing { asked, ours })) => format!(
            "it does not trust our certificate ({cert}, alert {alert:?}); {another_ca}; besides, {}",
            missing_name(w, &asked, &ours)
        ),
        (UnknownCA | DecryptError, _) => {
            format!("it does not trust our certificate ({cert}, alert {alert:?}); {another_ca}")
        }
        (_, Some(NameSeen::Missing { asked, ours })) => {
            format!("{refused}: {}", missing_name(w, &asked, &ours))
        }
        (BadCertificate, Some(NameSeen::Unknown { ours })) => format!(
            "{refused} and sent no name we could check (it connects by IP address): most likely it connects with a name our certificate does not carry (ours carries {}): {}; less likely, {another_ca}; the {they}'s log says which",
            list(&ours),
            name_fix(w, &ours, None)
        ),
        (_, Some(NameSeen::Carried { asked })) => format!(
            "{refused}, though ours carries the name {asked} it connects with; the {they}'s log says why"
        ),
        _ => format!("{refused}; the {they}'s log says why"),
    }
}

/// The agent asked for `asked`, which our certificate lacks.
fn missing_name(w: &Words, asked: &str, ours: &[String]) -> String {
    format!(
        "the agent connects with the name {asked} (its upstream.server_name), which our certificate does not carry; ours carries {}: {}",
        list(ours),
        name_fix(w, ours, Some(asked))
    )
}

/// Our own certificate (the first in our chain), when it can be read.
fn own_cert(files: &TlsFiles) -> Option<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(&files.cert_file)
        .ok()?
        .next()?
        .ok()
}

/// What the peer would refuse in our own certificate `der`, after "our
/// certificate (path) "; role marks only when `marks` (an unknown-CA alert
/// is about the chain, not the role).
fn own_problem(w: &Words, der: &CertificateDer<'_>, marks: bool) -> Option<String> {
    let ours = w.ours;
    if let Some(d) = defect(der) {
        return Some(match d {
            Defect::OldVersion { version } => format!(
                "is an X.509 v{version} certificate; gse takes only X.509 v3 certificates: {}",
                w.our_kind_hint
            ),
            Defect::SelfSigned { subject } => format!(
                "is self-signed (subject {subject}), not issued by the CA the {} trusts: {}",
                w.they, w.our_ca_hint
            ),
            Defect::CaAsLeaf { subject } => format!(
                "is a CA certificate (subject {subject}), not one the CA issued: {}",
                w.our_kind_hint
            ),
        });
    }
    if !marks {
        return None;
    }
    match read_mark(der) {
        Ok(Some(mark)) if mark.kind == ours => None,
        Ok(Some(mark)) => Some(format!(
            "is {} (marked {mark}), but this side needs {}: {}",
            mark.kind.a_certificate(),
            ours.a_certificate(),
            w.our_kind_hint
        )),
        Ok(None) => Some(format!(
            "has no gse role mark (made by `gse-server certs` before role marks, or by another PKI): {}, or set legacy_unmarked_certs = true in the {}'s [tls] section while upgrading",
            w.our_kind_hint, w.they
        )),
        Err(e) => Some(format!(
            "has a gse mark that cannot be used ({e}): {}",
            w.our_kind_hint
        )),
    }
}
