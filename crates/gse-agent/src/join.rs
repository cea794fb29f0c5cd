//! `gse-agent join`: get this agent's own certificate from a node with a
//! one-time token (issue 13), instead of copying a shared key to the host.
//!
//! The agent makes its key here (it never leaves the host) and a signing
//! request for it; connects to the node's agent link without a certificate;
//! gets the CA certificate and checks it against the SHA-256 it was given
//! (`--ca-sha256`, printed with the token) and that the node's TLS
//! certificate is a server certificate from that CA, for
//! `upstream.server_name`; only then sends the token. With the certificate
//! back it writes the files its config's `[tls]` names (the key 0600) and
//! can start. A token the node refuses (used, expired, for another
//! identity) is reported in the node's words.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use gse_proto::link::{EnrollAnswer, EnrollHello, EnrollHelloAck, EnrollRequest};
use gse_proto::{Frame, FrameCodec, MsgType};
use tokio_util::codec::Framed;

use crate::AgentConfig;

/// What `join` was told.
#[derive(Clone, Debug)]
pub struct JoinOptions {
    /// The node's agent link, `host:port`.
    pub server: String,
    pub token: String,
    /// SHA-256 of the CA certificate's DER, hex.
    pub ca_sha256: String,
    /// Replace a certificate and key already at the config's paths.
    pub force: bool,
}

/// What `join` got.
#[derive(Debug)]
pub struct Joined {
    /// "cloud:ip" the certificate is bound to.
    pub identity: String,
}

/// See the module doc.
pub async fn join(cfg: &AgentConfig, opts: &JoinOptions) -> anyhow::Result<Joined> {
    let tls = &cfg.tls;
    if !opts.force && (tls.cert_file.exists() || tls.key_file.exists()) {
        bail!(
            "{} or {} exists already: this agent has a certificate; give --force to replace it",
            tls.cert_file.display(),
            tls.key_file.display()
        );
    }
    let (key_pem, csr_pem) = gse_core::certs::agent_request()?;
    let limit = cfg.upstream.connect_timeout;
    let tcp = tokio::time::timeout(limit, tokio::net::TcpStream::connect(&opts.server))
        .await
        .with_context(|| format!("no connection to {} within {limit:?}", opts.server))?
        .with_context(|| format!("cannot connect to {}", opts.server))?;
    let local_ip = tcp.local_addr().ok().map(|a| a.ip());
    let identity_ip: IpAddr = cfg
        .agent
        .identity_ip
        .or(local_ip)
        .context("cannot tell this host's address; set agent.identity_ip")?;
    let (config, seen) = gse_core::tls::enroll::enrolling_client_config();
    let name = rustls::pki_types::ServerName::try_from(cfg.upstream.server_name.clone())
        .with_context(|| {
            format!(
                "upstream.server_name {:?} is not a server name",
                cfg.upstream.server_name
            )
        })?;
    let stream = tokio::time::timeout(
        limit,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .with_context(|| format!("no TLS handshake with {} within {limit:?}", opts.server))?
    .with_context(|| {
        format!(
            "TLS handshake with {} failed (is [enroll] enabled on that node?)",
            opts.server
        )
    })?;
    let mut link = Framed::new(stream, FrameCodec::default());

    send(
        &mut link,
        Frame::new(MsgType::EnrollHello, 1, &EnrollHello {}),
    )
    .await?;
    let hello: EnrollHelloAck = expect(&mut link, MsgType::EnrollHelloAck, limit).await?;
    let got = gse_core::certs::ca_fingerprint(&hello.ca_pem)
        .context("the node sent no CA certificate")?;
    if !got.eq_ignore_ascii_case(opts.ca_sha256.trim()) {
        bail!(
            "the node's CA certificate has SHA-256 {got}, not {} as given: this is not the node the token is for (or a machine in between); nothing was sent",
            opts.ca_sha256
        );
    }
    seen.check(&hello.ca_pem, &cfg.upstream.server_name)
        .map_err(|e| anyhow::anyhow!("{e}; nothing was sent"))?;

    let request = EnrollRequest {
        token: opts.token.clone(),
        csr_pem,
        cloud_id: cfg.agent.cloud_id,
        identity_ip: identity_ip.to_string(),
    };
    send(&mut link, Frame::new(MsgType::EnrollRequest, 1, &request)).await?;
    let answer: EnrollAnswer = expect(&mut link, MsgType::EnrollAnswer, limit * 4).await?;
    if !answer.error.is_empty() {
        bail!("the node refused to enroll this agent: {}", answer.error);
    }
    write(&tls.ca_file, hello.ca_pem.as_bytes(), false)?;
    write(&tls.cert_file, answer.cert_pem.as_bytes(), false)?;
    write(&tls.key_file, key_pem.as_bytes(), true)?;
    Ok(Joined {
        identity: format!("{}:{identity_ip}", cfg.agent.cloud_id),
    })
}

async fn send<S>(link: &mut Framed<S, FrameCodec>, frame: Frame) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    link.send(frame).await.context("cannot write to the node")
}

async fn expect<S, M: prost::Message + Default>(
    link: &mut Framed<S, FrameCodec>,
    want: MsgType,
    within: std::time::Duration,
) -> anyhow::Result<M>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frame = tokio::time::timeout(within, link.next())
        .await
        .with_context(|| format!("no {want:?} from the node within {within:?}"))?
        .with_context(|| {
            format!(
                "the node closed the connection before its {want:?} (is [enroll] enabled there?)"
            )
        })?
        .map_err(|e| match certificate_required(&e) {
            // In TLS 1.3 a node that wants a certificate says so only now.
            true => anyhow::anyhow!(
                "the node asks for a client certificate: is [enroll] enabled there? (it is off by default)"
            ),
            false => anyhow::Error::new(e).context("cannot read from the node"),
        })?;
    if frame.msg_type != want {
        bail!("the node sent {:?} instead of {want:?}", frame.msg_type);
    }
    Ok(frame.decode()?)
}

/// Whether `e` is the node's TLS alert that a certificate is required.
fn certificate_required(e: &gse_proto::FrameError) -> bool {
    let gse_proto::FrameError::Io(io) = e else {
        return false;
    };
    io.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)
            )
        })
}

/// Writes a file of the agent's TLS material (its directory made private
/// if missing); a key privately (0600, atomically, never through a link).
fn write(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        gse_core::private_files::create_private_dir(dir)
            .with_context(|| format!("cannot make {}", dir.display()))?;
    }
    if private {
        gse_core::private_files::write_private(path, bytes)
    } else {
        std::fs::write(path, bytes)
    }
    .with_context(|| format!("cannot write {}", path.display()))
}
