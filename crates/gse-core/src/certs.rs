//! Making the certificates of a gse deployment (K6).
//!
//! One CA signs everything. The file names follow GSE's own (`gseca.crt`,
//! `gse_server.crt`, `gse_agent.crt`, ...) so operators find what they know.
//! [`CertDir::init`] makes a CA (unless one is there) and a server, agent and
//! API-client certificate; [`CertDir::issue`] makes one more from the same CA
//! for a real deployment (another server name, a proxy). Server, agent and
//! proxy certificates are good for both TLS roles, since agents also serve
//! P2P pieces to each other and servers also dial each other.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// Default validity of a CA, in days.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Default validity of a server/agent/proxy certificate, in days.
pub const DEFAULT_LEAF_DAYS: u32 = 3650;
/// DNS name every server certificate carries, and the name agents verify by
/// default; deployments may add their real names.
pub const DEFAULT_SERVER_NAME: &str = "gse-server";

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertKind {
    Server,
    Agent,
    Proxy,
    ApiClient,
}

impl CertKind {
    /// Base file name, GSE style: `gse_server`, `gse_agent`, ...
    pub fn file_stem(self) -> &'static str {
        match self {
            CertKind::Server => "gse_server",
            CertKind::Agent => "gse_agent",
            CertKind::Proxy => "gse_proxy",
            CertKind::ApiClient => "gse_api_client",
        }
    }

    fn default_names(self) -> Vec<String> {
        match self {
            CertKind::Server => vec![
                DEFAULT_SERVER_NAME.into(),
                "localhost".into(),
                "127.0.0.1".into(),
            ],
            CertKind::Agent => vec!["gse-agent".into()],
            CertKind::Proxy => vec!["gse-proxy".into()],
            CertKind::ApiClient => vec!["gse-api-client".into()],
        }
    }

    fn purposes(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            CertKind::ApiClient => vec![ExtendedKeyUsagePurpose::ClientAuth],
            _ => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        }
    }
}

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}; run `gse-server certs init --dir {dir}` first", dir = .path.parent().map(|p| p.display().to_string()).unwrap_or_default())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot generate or parse certificate material ({what}): {source}")]
    Rcgen { what: String, source: rcgen::Error },
    #[error("{path} exists already; pass --force to replace it")]
    Exists { path: PathBuf },
}

/// A directory holding a CA and the certificates it issued.
#[derive(Clone, Debug)]
pub struct CertDir {
    pub dir: PathBuf,
}

/// Paths of one issued certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn rc(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertError {
    let what = what.into();
    move |source| CertError::Rcgen { what, source }
}

impl CertDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CertDir { dir: dir.into() }
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("gseca.crt")
    }

    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("gseca.key")
    }

    /// Paths of the certificate of `kind` (named `stem`, or the kind's
    /// default stem).
    pub fn paths(&self, kind: CertKind, stem: Option<&str>) -> IssuedPaths {
        let stem = stem.unwrap_or(kind.file_stem());
        IssuedPaths {
            cert: self.dir.join(format!("{stem}.crt")),
            key: self.dir.join(format!("{stem}.key")),
        }
    }

    /// Makes a CA unless there is one, then a server, an agent and an API
    /// client certificate. `server_names` are extra DNS names or IPs for the
    /// server certificate.
    pub fn init(&self, server_names: &[String], days: u32) -> Result<(), CertError> {
        // 0700: the directory holds the CA key and the private keys.
        crate::private_files::create_private_dir(&self.dir).map_err(|source| CertError::Write {
            path: self.dir.clone(),
            source,
        })?;
        if !self.ca_cert().exists() {
            self.make_ca(days)?;
        }
        self.issue(CertKind::Server, None, server_names, days, true)?;
        self.issue(CertKind::Agent, None, &[], days, true)?;
        self.issue(CertKind::ApiClient, None, &[], days, true)?;
        Ok(())
    }

    /// Makes a new self-signed CA, replacing any.
    pub fn make_ca(&self, days: u32) -> Result<(), CertError> {
        let key = KeyPair::generate().map_err(rc("CA key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rc("CA params"))?;
        params.distinguished_name = dn(&format!(
            "gse CA {}",
            OffsetDateTime::now_utc().unix_timestamp()
        ));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, days);
        let cert = params.self_signed(&key).map_err(rc("CA certificate"))?;
        write_file(&self.ca_cert(), cert.pem().as_bytes(), false)?;
        write_file(&self.ca_key(), key.serialize_pem().as_bytes(), true)?;
        Ok(())
    }

    /// Issues a certificate of `kind` from this directory's CA. `extra_names`
    /// are added to the kind's default names. Refuses to overwrite unless
    /// `force`.
    pub fn issue(
        &self,
        kind: CertKind,
        stem: Option<&str>,
        extra_names: &[String],
        days: u32,
        force: bool,
    ) -> Result<IssuedPaths, CertError> {
        let paths = self.paths(kind, stem);
        if !force && paths.cert.exists() {
            return Err(CertError::Exists { path: paths.cert });
        }
        let ca_pem = read_file(&self.ca_cert())?;
        let ca_key = KeyPair::from_pem(&read_file(&self.ca_key())?).map_err(rc("CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(rc("CA certificate"))?;

        let mut names = kind.default_names();
        names.extend(extra_names.iter().cloned());
        names.dedup();
        let key = KeyPair::generate().map_err(rc("leaf key"))?;
        let mut params =
            CertificateParams::new(names.clone()).map_err(rc(format!("names {names:?}")))?;
        params.distinguished_name = dn(&names[0]);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = kind.purposes();
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, days);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(rc("leaf certificate"))?;
        write_file(&paths.cert, cert.pem().as_bytes(), false)?;
        write_file(&paths.key, key.serialize_pem().as_bytes(), true)?;
        Ok(paths)
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "gse");
    dn
}

fn set_validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // A little slack backwards for hosts whose clocks are slightly behind.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days as i64);
}

fn read_file(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), CertError> {
    let err = |source| CertError::Write {
        path: path.to_path_buf(),
        source,
    };
    if secret {
        // A key is 0600 from its first byte, and replaces any old file (or
        // planted link) by rename instead of writing through it.
        return crate::private_files::write_private(path, bytes).map_err(err);
    }
    fs::write(path, bytes).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{TlsFiles, client_config, server_config};

    #[test]
    fn init_makes_a_usable_set_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let cd = CertDir::new(dir.path());
        cd.init(&["gse.example".into()], 30).unwrap();
        for kind in [CertKind::Server, CertKind::Agent, CertKind::ApiClient] {
            let p = cd.paths(kind, None);
            assert!(p.cert.exists() && p.key.exists(), "{kind:?}");
        }
        let server = cd.paths(CertKind::Server, None);
        let agent = cd.paths(CertKind::Agent, None);
        server_config(&TlsFiles {
            ca_file: cd.ca_cert(),
            cert_file: server.cert,
            key_file: server.key,
        })
        .unwrap();
        client_config(&TlsFiles {
            ca_file: cd.ca_cert(),
            cert_file: agent.cert,
            key_file: agent.key,
        })
        .unwrap();
        assert!(matches!(
            cd.issue(CertKind::Agent, None, &[], 30, false),
            Err(CertError::Exists { .. })
        ));
        cd.issue(
            CertKind::Proxy,
            Some("proxy-a"),
            &["10.1.1.1".into()],
            30,
            false,
        )
        .unwrap();
        assert!(dir.path().join("proxy-a.crt").exists());
    }
}
