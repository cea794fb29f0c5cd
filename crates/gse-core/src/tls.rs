//! The one mutual-TLS loader for every gse link (K6), and the words for when
//! certificates do not match.
//!
//! Both sides present a certificate signed by the same CA: servers require a
//! client certificate, agents verify the server's name. [`TlsFiles`] is the
//! config section; [`server_config`] and [`client_config`] build rustls
//! configs from it; [`explain`] turns a handshake or first-read failure into
//! one sentence that says what did not match and what to do, for the logs of
//! both sides. The crypto provider is aws-lc-rs, chosen explicitly so that a
//! second provider pulled in by another crate can never make rustls panic.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

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

/// A server config that requires and verifies a client certificate.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = load_roots(&files.ca_file)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Verifier {
            path: files.ca_file.clone(),
            message: e.to_string(),
        })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(bad_pair(files))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            load_certs("certificate", &files.cert_file)?,
            load_key(&files.key_file)?,
        )
        .map_err(bad_pair(files))?;
    Ok(Arc::new(config))
}

/// A client config that verifies the server against the CA and presents our
/// own certificate.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots(&files.ca_file)?;
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsError::Verifier {
            path: files.ca_file.clone(),
            message: e.to_string(),
        })?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(bad_pair(files))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(
            load_certs("certificate", &files.cert_file)?,
            load_key(&files.key_file)?,
        )
        .map_err(bad_pair(files))?;
    Ok(Arc::new(config))
}

/// Which end of a link is explaining a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The accepting side (gse-server, later gse-proxy).
    Server,
    /// The connecting side (gse-agent).
    Client,
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
pub fn explain(side: Side, peer: &str, files: &TlsFiles, err: &io::Error) -> Option<String> {
    let cause = rustls_cause(err)?;
    let ca = files.ca_file.display();
    let cert = files.cert_file.display();
    // What to do when the peer's certificate is not from our CA, and when
    // ours is not from theirs.
    let (they, their_ca_hint, our_ca_hint) = match side {
        Side::Server => (
            "agent",
            "issue the agent's certificate from this server's CA (`gse-server certs issue --kind agent`)",
            "issue this server's certificate from the CA the agents trust",
        ),
        Side::Client => (
            "server",
            "point ca_file at the gseca.crt of the CA that issued the server's certificate",
            "issue this agent's certificate from the server's CA (`gse-server certs issue --kind agent`)",
        ),
    };
    let text = match cause {
        rustls::Error::NoCertificatesPresented => format!(
            "TLS refused: the {they} at {peer} presented no certificate; configure cert_file/key_file in its [tls] section"
        ),
        rustls::Error::InvalidCertificate(ce) => match ce {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "TLS refused: the {they} at {peer} presented a certificate not signed by our CA ({ca}); the two sides use different CAs: {their_ca_hint}"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!(
                "TLS refused: the {they} at {peer} presented an expired certificate; issue a new one from the CA ({ca})"
            ),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => format!(
                "TLS refused: the {they} at {peer} presented a certificate that is not valid yet; check both hosts' clocks"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "TLS refused: the server certificate at {peer} does not carry the name we connect with; set server_name in the agent's [upstream] section to a name in the server certificate, or reissue it with that name"
                )
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                format!(
                    "TLS refused: the {they} at {peer} presented a certificate made for another purpose (server vs client); issue the right kind with `gse-server certs issue`"
                )
            }
            other => format!(
                "TLS refused: the {they} at {peer} presented an unusable certificate: {other:?}"
            ),
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::CertificateRequired => format!(
                "TLS refused by the {they} at {peer}: it requires a client certificate and we sent none; set cert_file/key_file in our [tls] section"
            ),
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::DecryptError => format!(
                "TLS refused by the {they} at {peer}: it does not trust our certificate ({cert}, alert {alert:?}); our certificate comes from another CA than the {they}'s: {our_ca_hint}"
            ),
            AlertDescription::CertificateExpired => format!(
                "TLS refused by the {they} at {peer}: our certificate ({cert}) has expired; issue a new one"
            ),
            other => format!("TLS refused by the {they} at {peer}: alert {other:?}"),
        },
        other => format!("TLS failure with the {they} at {peer}: {other}"),
    };
    Some(text)
}
