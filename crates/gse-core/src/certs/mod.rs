//! Making the certificates of a gse deployment (K6).
//!
//! One CA signs everything. The file names follow GSE's own (`gseca.crt`,
//! `gse_server.crt`, `gse_agent.crt`, ...) so operators find what they know.
//! [`CertDir::init`] makes a CA (unless one is there) and a server, agent and
//! API-client certificate; [`CertDir::issue`] makes one more from the same CA
//! for a real deployment (another server name, a proxy), and
//! [`CertDir::issue_agent`] a per-agent certificate for one identity. Every
//! certificate carries its role (and a per-agent one its identity) as a
//! `gse://` URI name: see [`mark`]. Server, agent and proxy certificates are
//! good for both TLS purposes, since agents also serve P2P pieces to each
//! other; what a peer may be is decided by the role mark, not the purpose.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

pub mod mark;

pub use mark::{CertMark, IdentityMark, MarkError, read_mark};

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
    /// Every kind, in mark-name order.
    pub const ALL: [CertKind; 4] = [
        CertKind::Server,
        CertKind::Agent,
        CertKind::Proxy,
        CertKind::ApiClient,
    ];

    /// The role's name in a `gse://` mark.
    pub fn mark_name(self) -> &'static str {
        match self {
            CertKind::Server => "server",
            CertKind::Agent => "agent",
            CertKind::Proxy => "proxy",
            CertKind::ApiClient => "api-client",
        }
    }

    /// The kind of a mark's role name.
    pub fn from_mark_name(name: &str) -> Option<CertKind> {
        Self::ALL.into_iter().find(|k| k.mark_name() == name)
    }

    /// "a server certificate", "an agent certificate", ... for messages.
    pub fn a_certificate(self) -> &'static str {
        match self {
            CertKind::Server => "a server certificate",
            CertKind::Agent => "an agent certificate",
            CertKind::Proxy => "a proxy certificate",
            CertKind::ApiClient => "an API client certificate",
        }
    }

    /// Base file name, GSE style: `gse_server`, `gse_agent`, ...
    pub fn file_stem(self) -> &'static str {
        match self {
            CertKind::Server => "gse_server",
            CertKind::Agent => "gse_agent",
            CertKind::Proxy => "gse_proxy",
            CertKind::ApiClient => "gse_api_client",
        }
    }

    pub(crate) fn default_names(self) -> Vec<String> {
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
    #[error("{0}; bind the certificate to the id in the agent's data_dir/agent_id file")]
    BadAgentId(crate::identity::IdentityError),
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

    /// The TLS section for a side using the certificate of `kind` (its
    /// default file name) from this directory.
    pub fn tls_files(&self, kind: CertKind) -> crate::tls::TlsFiles {
        let p = self.paths(kind, None);
        crate::tls::TlsFiles::new(self.ca_cert(), p.cert, p.key)
    }

    /// Makes a CA unless there is one, then a server and a shared agent
    /// certificate: what a deployment needs. `server_names` are extra DNS
    /// names or IPs for the server certificate. (No API-client certificate:
    /// the HTTP API authenticates apps by code and secret, and an unused
    /// private key is only something to leak; `issue` makes one on request.)
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
        let names = leaf_names(kind, extra_names);
        let common_name = names[0].clone();
        self.issue_marked(
            &CertMark::role(kind),
            &common_name,
            names,
            &paths,
            days,
            force,
        )
    }

    /// Issues a per-agent certificate: it may register only as `identity`
    /// (and, when the identity names one, only with that agent id). The
    /// file stem defaults to `gse_agent_<cloud>_<ip>`.
    pub fn issue_agent(
        &self,
        identity: IdentityMark,
        stem: Option<&str>,
        extra_names: &[String],
        days: u32,
        force: bool,
    ) -> Result<IssuedPaths, CertError> {
        if let Some(id) = &identity.agent_id {
            crate::identity::validate_agent_id(id).map_err(CertError::BadAgentId)?;
        }
        let default_stem = agent_stem(&identity);
        let paths = self.paths(CertKind::Agent, Some(stem.unwrap_or(&default_stem)));
        let common_name = format!("gse-agent {}", identity.key);
        let mark = CertMark::agent(identity.key, identity.agent_id);
        let names = leaf_names(CertKind::Agent, extra_names);
        self.issue_marked(&mark, &common_name, names, &paths, days, force)
    }

    /// Issues a proxy certificate bound to cloud area `area`: a node takes
    /// its `ProxyHello` only for that area. The file stem defaults to
    /// `gse_proxy_<area>`.
    pub fn issue_proxy(
        &self,
        area: i64,
        stem: Option<&str>,
        extra_names: &[String],
        days: u32,
        force: bool,
    ) -> Result<IssuedPaths, CertError> {
        let default_stem = format!("gse_proxy_{area}");
        let paths = self.paths(CertKind::Proxy, Some(stem.unwrap_or(&default_stem)));
        let common_name = format!("gse-proxy area {area}");
        let names = leaf_names(CertKind::Proxy, extra_names);
        self.issue_marked(
            &CertMark::proxy(area),
            &common_name,
            names,
            &paths,
            days,
            force,
        )
    }

    fn issue_marked(
        &self,
        mark: &CertMark,
        common_name: &str,
        names: Vec<String>,
        paths: &IssuedPaths,
        days: u32,
        force: bool,
    ) -> Result<IssuedPaths, CertError> {
        if !force && paths.cert.exists() {
            return Err(CertError::Exists {
                path: paths.cert.clone(),
            });
        }
        let issuer = load_issuer(&self.ca_cert(), &self.ca_key())?;
        let key = KeyPair::generate().map_err(rc("leaf key"))?;
        let params = leaf_params(mark, common_name, names, days)?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(rc("leaf certificate"))?;
        write_file(&paths.cert, cert.pem().as_bytes(), false)?;
        write_file(&paths.key, key.serialize_pem().as_bytes(), true)?;
        Ok(paths.clone())
    }
}

/// The DNS names and IPs of a certificate of `kind`: its defaults, then
/// `extra`, without repeats.
/// The CA of `ca_cert` and `ca_key` (PEM files), ready to sign.
fn load_issuer(ca_cert: &Path, ca_key: &Path) -> Result<Issuer<'static, KeyPair>, CertError> {
    let ca_pem = read_file(ca_cert)?;
    let ca_key = KeyPair::from_pem(&read_file(ca_key)?).map_err(rc("CA key"))?;
    Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(rc("CA certificate"))
}

/// What every leaf certificate says: its names, its `gse://` mark, its
/// purposes and validity. Only these go into a certificate, whatever a
/// signing request asked for.
fn leaf_params(
    mark: &CertMark,
    common_name: &str,
    names: Vec<String>,
    days: u32,
) -> Result<CertificateParams, CertError> {
    let mut params =
        CertificateParams::new(names.clone()).map_err(rc(format!("names {names:?}")))?;
    let uri = mark.uri();
    let uri_name = uri.as_str().try_into().map_err(rc(format!("mark {uri}")))?;
    params.subject_alt_names.push(SanType::URI(uri_name));
    params.distinguished_name = dn(common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = mark.kind.purposes();
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, days);
    Ok(params)
}

/// Signs an agent's certificate signing request (PEM) with the CA of
/// `ca_cert` and `ca_key`: a per-agent certificate for `identity` (agent
/// enrollment). The request's signature proves the agent holds the key;
/// everything else it asks for is ignored: the certificate says only what
/// [`CertDir::issue_agent`] would. Returns the certificate, PEM.
pub fn sign_agent_request(
    ca_cert: &Path,
    ca_key: &Path,
    csr_pem: &str,
    identity: IdentityMark,
    days: u32,
) -> Result<String, CertError> {
    let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(rc("the certificate signing request"))?;
    let common_name = format!("gse-agent {}", identity.key);
    let mark = CertMark::agent(identity.key, identity.agent_id);
    csr.params = leaf_params(&mark, &common_name, leaf_names(CertKind::Agent, &[]), days)?;
    let issuer = load_issuer(ca_cert, ca_key)?;
    let cert = csr.signed_by(&issuer).map_err(rc("agent certificate"))?;
    Ok(cert.pem())
}

/// The SHA-256 of a PEM certificate's DER (its first certificate), hex:
/// what `gse-agent join --ca-sha256` pins (as `openssl x509 -outform der |
/// sha256sum` prints it).
pub fn ca_fingerprint(pem: &str) -> Option<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use sha2::Digest;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(hex::encode(sha2::Sha256::digest(der.as_ref())))
}

/// A new key pair and a signing request for it (PEM each): what an
/// enrolling agent sends (the key never leaves the host).
pub fn agent_request() -> Result<(String, String), CertError> {
    let key = KeyPair::generate().map_err(rc("agent key"))?;
    let params = CertificateParams::new(vec!["gse-agent".to_string()]).map_err(rc("request"))?;
    let csr = params
        .serialize_request(&key)
        .map_err(rc("certificate signing request"))?;
    let pem = csr.pem().map_err(rc("certificate signing request"))?;
    Ok((key.serialize_pem(), pem))
}

fn leaf_names(kind: CertKind, extra: &[String]) -> Vec<String> {
    let mut names = kind.default_names();
    for name in extra {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// `gse_agent_0_10.0.0.1`; an IPv6 address's colons become dashes.
fn agent_stem(identity: &IdentityMark) -> String {
    let ip = identity.key.ip.to_string().replace(':', "-");
    format!("gse_agent_{}_{ip}", identity.key.cloud_id)
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
mod tests;
