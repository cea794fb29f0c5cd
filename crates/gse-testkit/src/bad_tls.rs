//! Certificates no gse tool makes, and raw TLS ends that present them, for
//! the tests of TLS refusals (K6, issue 9 item 10).
//!
//! [`write_odd_cert`] makes a self-signed CA certificate used as a leaf (what
//! `openssl req -x509` gives), a self-signed leaf, or an X.509 v1
//! certificate signed by the cluster's own CA (no extensions at all). rustls
//! will not load a v1 certificate as its own, so [`raw_client`] and
//! [`raw_server`] present whatever chain they are given without that check:
//! they stand in for a foreign TLS stack on the other end of a gse link.
//! Nothing here is used by gse itself.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use gse_core::certs::CertDir;
use gse_core::tls::TlsFiles;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SigningKey,
};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use yasna::models::{ObjectIdentifier, UTCTime};

/// A kind of certificate gse refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OddCert {
    /// Self-signed with CA:TRUE, as `openssl req -x509` makes by default.
    SelfSignedCa,
    /// Self-signed, not a CA.
    SelfSignedLeaf,
    /// X.509 v1 (no version field, no extensions), signed by the cluster CA.
    V1,
    /// Signed by the cluster CA as `certs init` made certificates before
    /// they carried a role mark: both TLS purposes, no `gse://` name.
    Unmarked,
}

/// Writes `<stem>.crt` and `<stem>.key` of `kind` into `certs.dir`, with
/// `cn` as its common name (and DNS name where it has extensions); returns
/// TLS files that trust the cluster CA and present it.
pub fn write_odd_cert(certs: &CertDir, kind: OddCert, cn: &str, stem: &str) -> TlsFiles {
    let key = KeyPair::generate().expect("key");
    let pem = match kind {
        OddCert::SelfSignedCa | OddCert::SelfSignedLeaf => {
            let mut params = CertificateParams::new(vec![cn.to_string()]).expect("params");
            params.distinguished_name.push(DnType::CommonName, cn);
            if kind == OddCert::SelfSignedCa {
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            }
            params.self_signed(&key).expect("self-signed").pem()
        }
        OddCert::Unmarked => {
            let mut params = CertificateParams::new(vec![cn.to_string()]).expect("params");
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            params.use_authority_key_identifier_extension = true;
            let issuer = ca_issuer(certs);
            params.signed_by(&key, &issuer).expect("signed").pem()
        }
        OddCert::V1 => {
            let ca_pem = std::fs::read_to_string(certs.ca_key()).expect("CA key");
            let ca_key = KeyPair::from_pem(&ca_pem).expect("CA key");
            let der = v1_cert(cn, &key, &ca_key, &ca_subject(&certs.ca_cert()));
            pem_of(&der)
        }
    };
    let cert_file = certs.dir.join(format!("{stem}.crt"));
    let key_file = certs.dir.join(format!("{stem}.key"));
    std::fs::write(&cert_file, pem).expect("write odd cert");
    std::fs::write(&key_file, key.serialize_pem()).expect("write odd key");
    TlsFiles::new(certs.ca_cert(), cert_file, key_file)
}

fn ca_issuer(certs: &CertDir) -> Issuer<'static, KeyPair> {
    let ca_pem = std::fs::read_to_string(certs.ca_cert()).expect("CA cert");
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(certs.ca_key()).expect("CA key"))
        .expect("CA key");
    Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("CA issuer")
}

/// The raw DER of the CA certificate's subject, the issuer of a v1 cert.
fn ca_subject(ca_cert: &Path) -> Vec<u8> {
    let der = CertificateDer::from_pem_file(ca_cert).expect("CA cert");
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("parse CA cert");
    parsed.subject().as_raw().to_vec()
}

/// A DER X.509 v1 certificate for `key`, named `cn`, signed by `issuer_key`
/// (ECDSA P-256 with SHA-256, what rcgen's keys are). Hand-written: no
/// certificate crate makes v1 certificates any more, which is the point.
fn v1_cert(cn: &str, key: &KeyPair, issuer_key: &KeyPair, issuer_name: &[u8]) -> Vec<u8> {
    let ecdsa_sha256 = ObjectIdentifier::from_slice(&[1, 2, 840, 10045, 4, 3, 2]);
    let subject = yasna::construct_der(|w| {
        w.write_sequence_of(|w| {
            w.next().write_set(|w| {
                w.next().write_sequence(|w| {
                    w.next()
                        .write_oid(&ObjectIdentifier::from_slice(&[2, 5, 4, 3]));
                    w.next().write_utf8_string(cn);
                })
            })
        })
    });
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("whole seconds");
    let tbs = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            // No [0] version field: that is what makes it v1.
            w.next().write_i64(now.unix_timestamp());
            w.next()
                .write_sequence(|w| w.next().write_oid(&ecdsa_sha256));
            w.next().write_der(issuer_name);
            w.next().write_sequence(|w| {
                w.next()
                    .write_utctime(&UTCTime::from_datetime(now - Duration::hours(1)));
                w.next()
                    .write_utctime(&UTCTime::from_datetime(now + Duration::days(30)));
            });
            w.next().write_der(&subject);
            w.next()
                .write_der(&rcgen::PublicKeyData::subject_public_key_info(key));
        })
    });
    let signature = issuer_key.sign(&tbs).expect("sign v1 cert");
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_der(&tbs);
            w.next()
                .write_sequence(|w| w.next().write_oid(&ecdsa_sha256));
            w.next().write_bitvec_bytes(&signature, signature.len() * 8);
        })
    })
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// The chain and key of `files`, loaded without rustls's own checks.
fn certified_key(files: &TlsFiles) -> Arc<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert_file)
        .expect("cert file")
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(&files.key_file).expect("key file");
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signer = provider
        .key_provider
        .load_private_key(key)
        .expect("signing key");
    Arc::new(CertifiedKey::new(chain, signer))
}

/// Presents one certificate whatever is asked.
#[derive(Debug)]
struct Present(Arc<CertifiedKey>);

impl ResolvesClientCert for Present {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for Present {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Connects to `addr` trusting `files.ca_file` and presenting `files`'
/// certificate; Ok when the server kept the connection after the
/// handshake and a first write (TLS 1.3 reports a refused client
/// certificate only on the first read).
pub async fn raw_client(addr: SocketAddr, files: &TlsFiles) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&files.ca_file).expect("CA file") {
        roots.add(ca.expect("CA cert")).expect("CA usable");
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(Present(certified_key(files))));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(gse_core::certs::DEFAULT_SERVER_NAME).unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tls.write_all(b"hello").await;
    let mut buf = [0u8; 16];
    match tls.read(&mut buf).await {
        Ok(0) => Err("closed".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// A TLS listener on `ip:0` that presents `files`' certificate to every
/// client (asking none of theirs) and holds each connection until the
/// client goes; for agents to connect to as if it were their server.
pub async fn raw_server(ip: IpAddr, files: &TlsFiles) -> SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Present(certified_key(files))));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind((ip, 0))
        .await
        .expect("bind the raw TLS server");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 1024];
                    while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
                }
            });
        }
    });
    addr
}
