//! The one mutual-TLS loader for every gse link (K6), and the words for when
//! certificates do not match.
//!
//! Both sides present a certificate signed by the same CA: servers require a
//! client certificate, agents verify the server's name, and each side checks
//! the other's role mark (issue 9): a server accepts agent certificates, an
//! agent accepts a server certificate from its upstream and agent
//! certificates from its P2P peers ([`verify`]). [`TlsFiles`] is the config
//! section; [`server_config`], [`client_config`] and [`peer_client_config`]
//! build rustls configs from it; [`accept`] runs a server's handshake and
//! keeps the name the client asked for; [`explain`] turns a handshake or
//! first-read failure into one sentence that says what did not match and
//! what to do, for the logs of both sides ([`names`]: the name an agent
//! expected and the names the server certificate carries). The crypto provider is aws-lc-rs, chosen
//! explicitly so that a second provider pulled in by another crate can never
//! make rustls panic.

mod accept;
pub mod enroll;
mod explain;
pub mod names;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

pub use accept::{AcceptError, accept};
pub use explain::{Side, explain, rustls_cause};

use crate::certs::CertKind;
use verify::{Defect, PeerPolicy, RoleClientVerifier, RoleServerVerifier};

/// Paths of the CA bundle and this side's certificate and key (PEM).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA certificate(s) that sign every gse certificate (`gseca.crt`).
    pub ca_file: PathBuf,
    /// This side's certificate chain (`gse_server.crt` / `gse_agent.crt`).
    pub cert_file: PathBuf,
    /// This side's private key, unencrypted PKCS#8/PKCS#1/SEC1 PEM.
    pub key_file: PathBuf,
    /// Accept peer certificates that carry no gse role mark (made by
    /// `gse-server certs` before marks, or by another PKI). For upgrades
    /// only: with it, any certificate from the CA passes in any role (a
    /// server's or API client's as an agent's, an agent's as the server's).
    #[serde(default)]
    pub legacy_unmarked_certs: bool,
}

impl TlsFiles {
    /// The three files, marks required.
    pub fn new(ca_file: PathBuf, cert_file: PathBuf, key_file: PathBuf) -> Self {
        TlsFiles {
            ca_file,
            cert_file,
            key_file,
            legacy_unmarked_certs: false,
        }
    }

    fn policy(&self, wanted: CertKind) -> PeerPolicy {
        PeerPolicy {
            wanted,
            also: None,
            proxy_area: None,
            legacy: self.legacy_unmarked_certs,
        }
    }
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}; check the path in the [tls] section")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{what} {path} holds no PEM certificate")]
    Empty { what: &'static str, path: PathBuf },
    #[error("cannot use the CA certificate in {path}: {source}")]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("certificate {cert} and key {key} do not form a usable pair: {source}")]
    BadPair {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("cannot build the certificate verifier from {path}: {message}")]
    Verifier { path: PathBuf, message: String },
    #[error(
        "{path} holds an X.509 v{version} certificate; gse (rustls) takes only X.509 v3 certificates, which carry the role and purpose: issue a new one with `gse-server certs issue`"
    )]
    OldVersion { path: PathBuf, version: u32 },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_err = |source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// This side's own chain; an X.509 v1/v2 leaf is refused here in words
/// (rustls would only say "invalid peer certificate").
fn load_own_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = load_certs("certificate", path)?;
    if let Some(Defect::OldVersion { version }) = verify::defect(&certs[0]) {
        return Err(TlsError::OldVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Read {
        what: "private key",
        path: path.to_path_buf(),
        source,
    })
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("CA file", path)? {
        roots.add(cert).map_err(|source| TlsError::BadCa {
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok(Arc::new(roots))
}

fn bad_pair(files: &TlsFiles) -> impl FnOnce(rustls::Error) -> TlsError + '_ {
    move |source| TlsError::BadPair {
        cert: files.cert_file.clone(),
        key: files.key_file.clone(),
        source,
    }
}

/// A server config that requires a client certificate from the CA, marked
/// as an agent's (gse-server's link and DataServers, an agent's P2P
/// listener).
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_for(files, CertKind::Agent)
}

/// A server config for a node's agent link: agents, and the proxies that
/// relay the agents of isolated areas (issue 12), each with a certificate
/// marked so (an unmarked legacy certificate passes as an agent only).
pub fn link_server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let mut policy = files.policy(CertKind::Agent);
    policy.also = Some(CertKind::Proxy);
    server_config_with(files, policy)
}

/// [`link_server_config`] for a node that enrolls agents (issue 13): a
/// client may also come without a certificate. Such a connection may only
/// enroll (the node's link role sends it nowhere else); one that presents
/// a certificate is checked as always.
pub fn link_server_config_enrolling(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let mut policy = files.policy(CertKind::Agent);
    policy.also = Some(CertKind::Proxy);
    server_config_built(files, policy, true)
}

/// A server config for the node link (T1): the dialing node must present
/// a server certificate from the CA, as this node does.
pub fn node_server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_for(files, CertKind::Server)
}

fn server_config_for(files: &TlsFiles, peer: CertKind) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(files, files.policy(peer))
}

fn server_config_with(files: &TlsFiles, policy: PeerPolicy) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_built(files, policy, false)
}

fn server_config_built(
    files: &TlsFiles,
    policy: PeerPolicy,
    certificate_optional: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = load_roots(&files.ca_file)?;
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
    if certificate_optional {
        builder = builder.allow_unauthenticated();
    }
    let webpki = builder.build().map_err(|e| TlsError::Verifier {
        path: files.ca_file.clone(),
        message: e.to_string(),
    })?;
    let verifier = Arc::new(RoleClientVerifier {
        inner: webpki,
        policy,
    });
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(bad_pair(files))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            load_own_certs(&files.cert_file)?,
            load_key(&files.key_file)?,
        )
        .map_err(bad_pair(files))?;
    Ok(Arc::new(config))
}

/// A client config for an agent's upstream links (agent link, data link):
/// verifies the server against the CA, its name and its server mark, and
/// presents our own certificate.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_for(files, CertKind::Server)
}

/// A client config for an agent's P2P connections to other agents: the
/// peer must present an agent certificate.
pub fn peer_client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_for(files, CertKind::Agent)
}

/// A client config for the upstream links of a side in cloud area `area`:
/// in area 0, [`client_config`]; in any other area the servers are out of
/// reach and the area's gse-proxy stands in for them, so a proxy
/// certificate for that area (or for any) passes as well as a server's.
/// A gse-proxy dials its upstream (a node, or the next proxy of a chain)
/// with this too.
pub fn upstream_client_config(files: &TlsFiles, area: i64) -> Result<Arc<ClientConfig>, TlsError> {
    let mut policy = files.policy(CertKind::Server);
    if area != 0 {
        policy.also = Some(CertKind::Proxy);
        policy.proxy_area = Some(area);
    }
    client_config_with(files, policy)
}

fn client_config_for(files: &TlsFiles, peer: CertKind) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with(files, files.policy(peer))
}

fn client_config_with(files: &TlsFiles, policy: PeerPolicy) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots(&files.ca_file)?;
    let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Verifier {
            path: files.ca_file.clone(),
            message: e.to_string(),
        })?;
    let verifier = Arc::new(RoleServerVerifier {
        inner: webpki,
        policy,
    });
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(bad_pair(files))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(
            load_own_certs(&files.cert_file)?,
            load_key(&files.key_file)?,
        )
        .map_err(bad_pair(files))?;
    Ok(Arc::new(config))
}

/// Makes aws-lc-rs the process's default crypto provider, once, at start:
/// every TLS config gse builds names it already, and this keeps any
/// library that asks for the default (the Kafka client links `ring` too)
/// on the same one. A second call does nothing.
pub fn install_default_provider() {
    let _ = CryptoProvider::install_default((*provider()).clone());
}

/// A client config for a service outside gse over TLS (Kafka brokers): its
/// certificate must chain to a CA of `ca_file` (a PEM bundle) and name
/// the host dialed; no client certificate. Built with the one crypto
/// provider every gse TLS config uses.
pub fn ca_client_config(ca_file: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots(ca_file)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the default protocol versions are supported")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests;
