//! Agent enrollment (issue 13: `gse-agent join`): a short-lived, single-use
//! token lets a new agent get its own certificate from a node, instead of
//! an operator copying a shared key to every host.
//!
//! `gse-server enroll token` ([`Tokens::create`]) writes a token to
//! `enroll.tokens_file` (0600; only its id and a BLAKE3 hash of its secret)
//! and prints the agent's one-line `join` command, with the SHA-256 of the
//! CA certificate. With `[enroll] enabled`, the node's agent link takes TLS
//! connections without a client certificate, and such a connection may only
//! enroll ([`serve`]): `EnrollHello` is answered with the CA certificate,
//! which the agent checks against that hash (and that this node's TLS
//! certificate chains to it) before it sends the token and a signing
//! request for a key it made. The token is spent (written back before the
//! certificate is made), its identity checked, and the agent gets a
//! per-agent certificate for exactly that identity
//! (`gse_core::certs::sign_agent_request`). Then the connection closes;
//! the agent connects again with its certificate.
//!
//! What it trusts and not: a token is good once and until its expiry; its
//! secret is 128 random bits, compared in constant time; the identity is
//! the one the token pins, else the address the node sees the connection
//! come from (a token holder cannot take another host's identity). The
//! node must hold the CA's key (`enroll.ca_key_file`) to sign: enable
//! enrollment only on nodes where that is acceptable. One frame of at most
//! [`MAX_REQUEST_BYTES`] within the link's handshake timeout, counted among
//! its pending handshakes. Tokens live in one node's file: in a cluster,
//! make the token on the node the join command names.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use gse_core::AgentKey;
use gse_core::certs::IdentityMark;
use gse_proto::link::{EnrollAnswer, EnrollHelloAck, EnrollRequest};
use gse_proto::{Frame, FrameCodec, MsgType};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::codec::Framed;

/// Largest enrollment frame (a token and a signing request fit easily).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// `[enroll]` settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnrollConfig {
    /// Agents may enroll with a token on this node's agent link.
    #[serde(default)]
    pub enabled: bool,
    /// The CA's private key, which signs enrolled agents' certificates (its
    /// certificate is `tls.ca_file`).
    #[serde(default)]
    pub ca_key_file: PathBuf,
    /// Where tokens are kept; "" = `<data_dir>/enroll-tokens.json`.
    #[serde(default)]
    pub tokens_file: PathBuf,
    /// Longest life a token may be given.
    #[serde(default = "default_max_ttl", with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Validity of the certificates enrolled agents get, in days.
    #[serde(default = "default_cert_days")]
    pub cert_days: u32,
}

fn default_max_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_cert_days() -> u32 {
    gse_core::certs::DEFAULT_LEAF_DAYS
}

impl Default for EnrollConfig {
    fn default() -> Self {
        EnrollConfig {
            enabled: false,
            ca_key_file: PathBuf::new(),
            tokens_file: PathBuf::new(),
            max_ttl: default_max_ttl(),
            cert_days: default_cert_days(),
        }
    }
}

impl EnrollConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.enabled && self.ca_key_file.as_os_str().is_empty() {
            p.push(
                "enroll.enabled = true needs enroll.ca_key_file: the CA key the node signs enrolled agents' certificates with"
                    .into(),
            );
        }
        if self.cert_days == 0 {
            p.push("enroll.cert_days = 0: it must be at least 1".into());
        }
        p
    }

    /// The tokens file under `data_dir` unless one is given.
    pub fn tokens_path(&self, data_dir: &Path) -> PathBuf {
        match self.tokens_file.as_os_str().is_empty() {
            true => data_dir.join("enroll-tokens.json"),
            false => self.tokens_file.clone(),
        }
    }
}

/// Why an enrollment was refused (the agent is told, in these words).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnrollError {
    #[error(
        "the token is not one this node made (or its file was removed); make a new one with `gse-server enroll token` on the node you join"
    )]
    UnknownToken,
    #[error(
        "the token was used already (at {0} ms); tokens are good once: make a new one with `gse-server enroll token`"
    )]
    Used(u64),
    #[error("the token expired; make a new one with `gse-server enroll token`")]
    Expired,
    #[error("the token is for {pinned}, not {asked}")]
    WrongIdentity { pinned: String, asked: String },
    #[error(
        "this host connects from {peer}, not from the identity IP {asked} it asks for; make a token that pins the identity (`enroll token --ip {asked}`) when the host is behind NAT"
    )]
    NotFromThatAddress { asked: IpAddr, peer: IpAddr },
    #[error("the identity {0:?} is not a usable IP address")]
    BadIdentity(String),
    #[error("the node cannot read or write its tokens ({0}); check enroll.tokens_file")]
    Store(String),
    #[error("the node cannot make the certificate: {0}")]
    Sign(String),
}

/// One token as kept in the file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct TokenRecord {
    id: String,
    /// BLAKE3 of the secret, hex.
    secret_hash: String,
    created_ms: u64,
    expires_ms: u64,
    /// The identity it pins, if any.
    cloud_id: Option<i64>,
    ip: Option<IpAddr>,
    used_ms: Option<u64>,
    used_by: Option<String>,
}

/// The tokens file (see the module doc).
pub struct Tokens {
    path: PathBuf,
}

/// A token just made, and what the agent's join needs.
pub struct NewToken {
    pub token: String,
    pub expires_ms: u64,
}

impl Tokens {
    pub fn new(path: PathBuf) -> Self {
        Tokens { path }
    }

    /// Makes a token good for `ttl`, pinning `cloud_id` and `ip` if given.
    pub fn create(
        &self,
        ttl: Duration,
        cloud_id: Option<i64>,
        ip: Option<IpAddr>,
    ) -> Result<NewToken, EnrollError> {
        let id = hex::encode(rand::random::<[u8; 4]>());
        let secret = hex::encode(rand::random::<[u8; 16]>());
        let now = gse_core::now_ms();
        let expires_ms = now + ttl.as_millis() as u64;
        self.update(|records| {
            // Forget what cannot be used any more.
            records.retain(|r| r.used_ms.is_none() && r.expires_ms > now);
            records.push(TokenRecord {
                id: id.clone(),
                secret_hash: blake3::hash(secret.as_bytes()).to_hex().to_string(),
                created_ms: now,
                expires_ms,
                cloud_id,
                ip,
                used_ms: None,
                used_by: None,
            });
            Ok(())
        })?;
        Ok(NewToken {
            token: format!("{id}.{secret}"),
            expires_ms,
        })
    }

    /// Spends `token` for an agent asking for `asked` from `peer`; the
    /// identity it may have.
    pub fn redeem(
        &self,
        token: &str,
        asked: AgentKey,
        peer: IpAddr,
    ) -> Result<AgentKey, EnrollError> {
        let (id, secret) = token.split_once('.').ok_or(EnrollError::UnknownToken)?;
        let now = gse_core::now_ms();
        self.update(|records| {
            let r = records
                .iter_mut()
                .find(|r| r.id == id)
                .ok_or(EnrollError::UnknownToken)?;
            let want =
                blake3::Hash::from_hex(&r.secret_hash).map_err(|_| EnrollError::UnknownToken)?;
            // blake3::Hash compares in constant time.
            if blake3::hash(secret.as_bytes()) != want {
                return Err(EnrollError::UnknownToken);
            }
            if let Some(at) = r.used_ms {
                return Err(EnrollError::Used(at));
            }
            if r.expires_ms <= now {
                return Err(EnrollError::Expired);
            }
            let identity = match (r.cloud_id, r.ip) {
                (cloud, Some(ip)) => {
                    let pinned = AgentKey::new(cloud.unwrap_or(asked.cloud_id), ip);
                    if pinned != asked {
                        return Err(EnrollError::WrongIdentity {
                            pinned: pinned.to_string(),
                            asked: asked.to_string(),
                        });
                    }
                    pinned
                }
                (cloud, None) => {
                    if canonical(asked.ip) != canonical(peer) {
                        return Err(EnrollError::NotFromThatAddress {
                            asked: asked.ip,
                            peer,
                        });
                    }
                    if cloud.is_some_and(|c| c != asked.cloud_id) {
                        return Err(EnrollError::WrongIdentity {
                            pinned: format!("cloud area {}", cloud.unwrap_or_default()),
                            asked: asked.to_string(),
                        });
                    }
                    asked
                }
            };
            r.used_ms = Some(now);
            r.used_by = Some(identity.to_string());
            Ok(identity)
        })
    }

    /// Reads, changes and writes the file back (atomically, 0600) under an
    /// exclusive lock, so a node and `enroll token` never lose each other's
    /// changes.
    fn update<T>(
        &self,
        change: impl FnOnce(&mut Vec<TokenRecord>) -> Result<T, EnrollError>,
    ) -> Result<T, EnrollError> {
        let store = |e: std::io::Error| EnrollError::Store(format!("{}: {e}", self.path.display()));
        if let Some(dir) = self.path.parent() {
            gse_core::private_files::create_private_dir(dir).map_err(store)?;
        }
        let lock_path = self.path.with_extension("lock");
        gse_core::private_files::ensure_private_file(&lock_path).map_err(store)?;
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .open(&lock_path)
            .map_err(store)?;
        let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| store(std::io::Error::from(e)))?;
        let mut records: Vec<TokenRecord> = match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| EnrollError::Store(format!("{}: {e}", self.path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(store(e)),
        };
        let out = change(&mut records)?;
        let json = serde_json::to_vec_pretty(&records).expect("token records serialise");
        gse_core::private_files::write_private(&self.path, &json).map_err(store)?;
        Ok(out)
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// What a node needs to enroll agents.
pub struct Enroller {
    pub config: EnrollConfig,
    pub tokens: Tokens,
    pub ca_cert: PathBuf,
}

/// Serves one connection that came without a client certificate: one
/// enrollment, then close.
pub(super) async fn serve<S>(enroller: &Enroller, io: S, peer: SocketAddr, deadline: Instant)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut link = Framed::new(io, FrameCodec::new(MAX_REQUEST_BYTES));
    let outcome = tokio::time::timeout_at(deadline, enroll_once(enroller, &mut link, peer)).await;
    match outcome {
        Ok(Ok(identity)) => {
            metrics::counter!("gse_link_enrollments_total", "outcome" => "enrolled").increment(1);
            tracing::info!(peer = %peer, agent = %identity, "an agent enrolled with a token and got its certificate");
        }
        Ok(Err(why)) => {
            metrics::counter!("gse_link_enrollments_total", "outcome" => "refused").increment(1);
            tracing::warn!(peer = %peer, reason = %why, "an enrollment was refused");
        }
        Err(_) => {
            tracing::debug!(peer = %peer, "a connection without a certificate did not enroll in time; closed")
        }
    }
    let _ = SinkExt::<Frame>::close(&mut link).await;
}

async fn enroll_once<S>(
    enroller: &Enroller,
    link: &mut Framed<S, FrameCodec>,
    peer: SocketAddr,
) -> Result<AgentKey, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let first = next(link).await?;
    if first.msg_type != MsgType::EnrollHello {
        return Err(format!(
            "a connection without a client certificate sent {:?}; it may only enroll",
            first.msg_type
        ));
    }
    let ca_pem = std::fs::read_to_string(&enroller.ca_cert)
        .map_err(|e| format!("cannot read {}: {e}", enroller.ca_cert.display()))?;
    send(
        link,
        Frame::new(MsgType::EnrollHelloAck, 0, &EnrollHelloAck { ca_pem }),
    )
    .await?;
    let request = next(link).await?;
    if request.msg_type != MsgType::EnrollRequest {
        return Err(format!(
            "expected EnrollRequest, got {:?}",
            request.msg_type
        ));
    }
    let req: EnrollRequest = request.decode().map_err(|e| e.to_string())?;
    let answer = match issue(enroller, &req, peer.ip()).await {
        Ok((identity, cert_pem)) => {
            let ok = EnrollAnswer {
                cert_pem,
                error: String::new(),
            };
            send(link, Frame::new(MsgType::EnrollAnswer, 0, &ok)).await?;
            return Ok(identity);
        }
        Err(e) => e,
    };
    let refused = EnrollAnswer {
        cert_pem: String::new(),
        error: answer.to_string(),
    };
    send(link, Frame::new(MsgType::EnrollAnswer, 0, &refused)).await?;
    Err(answer.to_string())
}

/// Spends the token and signs the request (off the async threads).
async fn issue(
    enroller: &Enroller,
    req: &EnrollRequest,
    peer: IpAddr,
) -> Result<(AgentKey, String), EnrollError> {
    let ip: IpAddr = req
        .identity_ip
        .parse()
        .map_err(|_| EnrollError::BadIdentity(req.identity_ip.clone()))?;
    if ip.is_unspecified() || req.cloud_id < 0 {
        return Err(EnrollError::BadIdentity(req.identity_ip.clone()));
    }
    let asked = AgentKey::new(req.cloud_id, ip);
    let (token, csr) = (req.token.clone(), req.csr_pem.clone());
    let tokens_path = enroller.tokens.path.clone();
    let (ca_cert, ca_key, days) = (
        enroller.ca_cert.clone(),
        enroller.config.ca_key_file.clone(),
        enroller.config.cert_days,
    );
    tokio::task::spawn_blocking(move || {
        let identity = Tokens::new(tokens_path).redeem(&token, asked, peer)?;
        let mark = IdentityMark {
            key: identity,
            agent_id: None,
        };
        let cert = gse_core::certs::sign_agent_request(&ca_cert, &ca_key, &csr, mark, days)
            .map_err(|e| EnrollError::Sign(e.to_string()))?;
        Ok((identity, cert))
    })
    .await
    .map_err(|e| EnrollError::Sign(e.to_string()))?
}

async fn next<S>(link: &mut Framed<S, FrameCodec>) -> Result<Frame, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match link.next().await {
        Some(Ok(f)) => Ok(f),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("the connection closed".into()),
    }
}

async fn send<S>(link: &mut Framed<S, FrameCodec>, frame: Frame) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    link.send(frame).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str) -> AgentKey {
        AgentKey::new(0, ip.parse().unwrap())
    }

    #[test]
    fn a_token_is_good_once_for_its_own_identity() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::new(dir.path().join("t.json"));
        let t = tokens.create(Duration::from_secs(60), None, None).unwrap();
        let peer: IpAddr = "10.0.0.5".parse().unwrap();
        // Another host's identity is refused, and spends nothing.
        assert!(matches!(
            tokens.redeem(&t.token, key("10.0.0.6"), peer),
            Err(EnrollError::NotFromThatAddress { .. })
        ));
        assert_eq!(
            tokens.redeem(&t.token, key("10.0.0.5"), peer),
            Ok(key("10.0.0.5"))
        );
        assert!(matches!(
            tokens.redeem(&t.token, key("10.0.0.5"), peer),
            Err(EnrollError::Used(_))
        ));
        let (id, _) = t.token.split_once('.').unwrap();
        assert_eq!(
            tokens.redeem(&format!("{id}.{}", "0".repeat(32)), key("10.0.0.5"), peer),
            Err(EnrollError::UnknownToken)
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("t.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(dir.path().join("t.json")).unwrap();
        assert!(
            !text.contains(t.token.split_once('.').unwrap().1),
            "the secret is not kept"
        );
    }

    #[test]
    fn a_pinned_token_serves_its_identity_from_anywhere_and_expired_ones_none() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::new(dir.path().join("t.json"));
        let pinned = tokens
            .create(
                Duration::from_secs(60),
                Some(3),
                Some("192.168.1.9".parse().unwrap()),
            )
            .unwrap();
        let nat: IpAddr = "203.0.113.7".parse().unwrap();
        let want = AgentKey::new(3, "192.168.1.9".parse().unwrap());
        assert!(matches!(
            tokens.redeem(&pinned.token, key("192.168.1.9"), nat),
            Err(EnrollError::WrongIdentity { .. })
        ));
        assert_eq!(tokens.redeem(&pinned.token, want, nat), Ok(want));
        let old = tokens.create(Duration::ZERO, None, None).unwrap();
        assert_eq!(
            tokens.redeem(&old.token, key("10.0.0.5"), "10.0.0.5".parse().unwrap()),
            Err(EnrollError::Expired)
        );
    }
}
