//! The TLS of an agent enrolling with a token (`gse-agent join`), which has
//! no certificate yet, nor the CA: the node's chain is taken as presented
//! (its handshake signature is checked, so the peer holds the key of what
//! it presented) and recorded; once the node has sent the CA certificate
//! and the agent has checked it against the hash it was given,
//! [`SeenChain::check`] judges that chain as the agent's link always does:
//! from that CA, for the server name, and marked as a server's. Only then
//! does the agent send its token.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore};
use rustls_pki_types::pem::PemObject;
use std::sync::Mutex;

use super::provider;
use super::verify::{PeerPolicy, RoleServerVerifier};
use crate::certs::CertKind;

/// The chain the node presented, as recorded during the handshake.
#[derive(Debug, Default)]
pub struct SeenChain(Mutex<Option<(CertificateDer<'static>, Vec<CertificateDer<'static>>)>>);

#[derive(Debug)]
struct RecordingVerifier {
    seen: Arc<SeenChain>,
}

/// A client config that presents no certificate and records the node's
/// chain for [`SeenChain::check`].
pub fn enrolling_client_config() -> (Arc<ClientConfig>, Arc<SeenChain>) {
    let seen = Arc::new(SeenChain::default());
    let verifier = Arc::new(RecordingVerifier { seen: seen.clone() });
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the default protocol versions are supported")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    (Arc::new(config), seen)
}

impl SeenChain {
    /// Whether the recorded chain is a gse server certificate from
    /// `ca_pem`, valid now for `server_name`.
    pub fn check(&self, ca_pem: &str, server_name: &str) -> Result<(), String> {
        let Some((end_entity, intermediates)) = self.0.lock().expect("not poisoned").clone() else {
            return Err("the node presented no certificate".into());
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("the CA certificate does not parse: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("the CA certificate is not usable: {e}"))?;
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| e.to_string())?;
        let verifier = RoleServerVerifier {
            inner: webpki,
            policy: PeerPolicy {
                wanted: CertKind::Server,
                also: None,
                proxy_area: None,
                legacy: false,
            },
        };
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("{server_name:?} is not a server name: {e}"))?;
        verifier
            .verify_server_cert(&end_entity, &intermediates, &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| format!("the node's certificate is not a server certificate from that CA for {server_name}: {e}"))
    }
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.0.lock().expect("not poisoned") = Some((
            end_entity.clone().into_owned(),
            intermediates
                .iter()
                .map(|c| c.clone().into_owned())
                .collect(),
        ));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
