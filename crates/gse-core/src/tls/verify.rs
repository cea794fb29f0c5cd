//! Certificate verifiers that know what the peer must be.
//!
//! Both wrap rustls's webpki verifiers (chain, validity, purpose, name) and
//! add two things: a certificate the chain check refused is looked at for
//! the usual suspects (X.509 v1, self-signed, a CA certificate used as a
//! leaf), so the refusal can say so; and a certificate it accepted must
//! carry the expected role mark ([`crate::certs::mark`]), or no mark at all
//! when `legacy_unmarked_certs` allows certificates made before marks.
//! Refusals are [`PeerCertProblem`]s inside `CertificateError::Other`,
//! which [`super::explain`] puts in words; the peer gets the
//! `certificate_unknown` alert. webpki's own refusals pass through (a name
//! mismatch with its names made plain by [`super::names`]), keeping their
//! alerts.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};
use x509_parser::prelude::X509Certificate;

use crate::certs::{CertKind, CertMark, MarkError, read_mark};

/// Why a peer's certificate was refused beyond what webpki says.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerCertProblem {
    #[error("{} ({mark}) where {} was expected", .mark.kind.a_certificate(), .wanted.a_certificate())]
    WrongRole { mark: CertMark, wanted: CertKind },
    #[error("a certificate without a gse role mark where {} was expected", .wanted.a_certificate())]
    Unmarked { wanted: CertKind },
    #[error(
        "a proxy certificate for cloud area {area} (gse://proxy/{area}) where this side is in area {want}: a proxy serves its own area's agents only"
    )]
    WrongArea { area: i64, want: i64 },
    #[error("a certificate whose gse mark cannot be used: {0}")]
    BadMark(MarkError),
    #[error("{0}")]
    Defect(Defect),
}

/// Something wrong with a certificate in itself, whoever checks it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Defect {
    #[error("an X.509 v{version} certificate")]
    OldVersion { version: u32 },
    #[error("a self-signed certificate (subject {subject})")]
    SelfSigned { subject: String },
    #[error("a CA certificate (subject {subject}) used as a leaf")]
    CaAsLeaf { subject: String },
}

/// What the certificate `der` has wrong in itself: too old a version,
/// signed by itself, or a CA's; `None` when none of these (or unparsable,
/// which webpki reports well enough).
pub fn defect(der: &[u8]) -> Option<Defect> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let version = cert.version().0 + 1;
    if version < 3 {
        return Some(Defect::OldVersion { version });
    }
    let subject = cert.subject().to_string();
    if self_signed(&cert) {
        return Some(Defect::SelfSigned { subject });
    }
    cert.is_ca().then_some(Defect::CaAsLeaf { subject })
}

fn self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.subject().as_raw() == cert.issuer().as_raw() && cert.verify_signature(None).is_ok()
}

/// Whether `der` may act as `wanted`; the refusal when not.
pub fn check_role(der: &[u8], wanted: CertKind, legacy: bool) -> Result<(), PeerCertProblem> {
    match read_mark(der) {
        Ok(Some(mark)) if mark.kind == wanted => Ok(()),
        Ok(Some(mark)) => Err(PeerCertProblem::WrongRole { mark, wanted }),
        Ok(None) if legacy => Ok(()),
        Ok(None) => Err(PeerCertProblem::Unmarked { wanted }),
        Err(e) => Err(PeerCertProblem::BadMark(e)),
    }
}

fn refusal(problem: PeerCertProblem) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(problem))))
}

/// The peer certificate check after webpki's: a webpki refusal is replaced
/// by the certificate's defect when it has one (a name mismatch keeps its
/// kind but lists the certificate's names plainly); an acceptance still
/// needs the role.
fn after_webpki<T>(
    result: Result<T, rustls::Error>,
    end_entity: &CertificateDer<'_>,
    policy: &PeerPolicy,
) -> Result<T, rustls::Error> {
    match result {
        Err(e) => Err(defect(end_entity)
            .map(|d| refusal(PeerCertProblem::Defect(d)))
            .unwrap_or_else(|| super::names::with_cert_names(e, end_entity))),
        Ok(v) => match (policy.also, read_mark(end_entity)) {
            // The second role a side takes (a node's agent link takes
            // proxies too; an area's agent, its proxy as its server): only
            // a certificate marked so, never an unmarked legacy one, and,
            // where the policy names an area, a proxy certificate for that
            // area (or for any).
            (Some(also), Ok(Some(m))) if m.kind == also => match (policy.proxy_area, m.area) {
                (Some(want), Some(area)) if want != area => {
                    Err(refusal(PeerCertProblem::WrongArea { area, want }))
                }
                _ => Ok(v),
            },
            _ => check_role(end_entity, policy.wanted, policy.legacy)
                .map(|()| v)
                .map_err(refusal),
        },
    }
}

/// The role a peer must have, and whether unmarked certificates pass.
#[derive(Clone, Copy, Debug)]
pub(super) struct PeerPolicy {
    pub wanted: CertKind,
    /// A second role that passes too (marked certificates only).
    pub also: Option<CertKind>,
    /// The cloud area a proxy certificate passing as `also` must be bound
    /// to (or bound to none); `None`: any area.
    pub proxy_area: Option<i64>,
    pub legacy: bool,
}

// === impl RoleServerVerifier ===

/// Verifies the server a client connects to, then its role.
#[derive(Debug)]
pub(super) struct RoleServerVerifier {
    pub inner: Arc<dyn ServerCertVerifier>,
    pub policy: PeerPolicy,
}

impl ServerCertVerifier for RoleServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let checked = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        after_webpki(checked, end_entity, &self.policy)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

// === impl RoleClientVerifier ===

/// Verifies a connecting client's certificate (mandatory), then its role.
#[derive(Debug)]
pub(super) struct RoleClientVerifier {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub policy: PeerPolicy,
}

impl ClientCertVerifier for RoleClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let checked = self
            .inner
            .verify_client_cert(end_entity, intermediates, now);
        after_webpki(checked, end_entity, &self.policy)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
