//! A listener's accept loop, the same for every mutual-TLS listener: the
//! agent link, each DataServer, and next the node link and the proxy.
//!
//! Start at [`Acceptor::run`]. For each connection it:
//! 1. admits it within the pending-handshake caps ([`ConnLimits`], in all
//!    and per address) or closes it at once, counted in the listener's
//!    refusal metric and log;
//! 2. runs the TLS handshake within the listener's handshake timeout; a
//!    refusal is explained in words (`gse_core::tls`, K6), a timeout said;
//! 3. hands the [`Accepted`] stream, its deadline and its [`ConnPermit`] to
//!    the listener's handler, which reads the hello and drops the permit
//!    once the hello is accepted.
//!
//! When accept itself fails (EMFILE and friends) the loop backs off
//! instead of spinning. Every refusal goes through one [`RefusalLog`] per
//! listener: a few lines in full, then one summary per burst. What the
//! hello says and what follows it is the handler's business.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gse_core::refusals::RefusalLog;
use gse_core::tls::{AcceptError, TlsFiles, accept};
use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout_at};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::limits::{ConnLimits, ConnPermit};

/// Refused connections are summed up in one log line this often.
pub const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(10);
/// How long the loop waits after accept itself failed (out of
/// descriptors), so that it does not spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// How one listener names its connections in logs and metrics.
#[derive(Clone, Copy, Debug)]
pub struct AcceptNames {
    /// One connection, in log lines: "agent connection", "data link".
    pub one: &'static str,
    /// Its connections, plural: the refusal summary ("refused 12 agent
    /// connections in the last 10 s") and accept failures.
    pub many: &'static str,
    /// What a connection closed over the pending caps had too many of:
    /// "too many connections not registered yet".
    pub over_caps: &'static str,
    /// Put before a TLS refusal's explanation ("" or "data link: ").
    pub tls_prefix: &'static str,
    /// Counter of connections closed at once over the caps (label `reason`).
    pub refused_metric: &'static str,
    /// Counter of failed TLS handshakes, where the listener keeps one.
    pub tls_failures_metric: Option<&'static str>,
}

/// What [`Acceptor::new`] needs.
pub struct AcceptorParts {
    pub names: AcceptNames,
    pub tls: Arc<ServerConfig>,
    /// The files `tls` was loaded from, to explain refusals with.
    pub tls_files: TlsFiles,
    /// Time for the TLS handshake (and the hello, see [`Accepted::deadline`]).
    pub handshake_timeout: Duration,
    /// Caps on connections before their hello is accepted.
    pub pending: Arc<ConnLimits>,
}

/// One listener's accept loop and its refusal log.
pub struct Acceptor {
    names: AcceptNames,
    tls: Arc<ServerConfig>,
    tls_files: TlsFiles,
    handshake_timeout: Duration,
    pending: Arc<ConnLimits>,
    refusals: Arc<RefusalLog>,
}

/// A connection past its TLS handshake, for the listener's handler.
pub struct Accepted {
    pub tls: TlsStream<TcpStream>,
    pub peer: SocketAddr,
    /// Our address it reached.
    pub local: SocketAddr,
    /// The handshake deadline: the handler reads the hello by then.
    pub deadline: Instant,
    /// Its place among the pending handshakes; drop it once the hello is
    /// accepted.
    pub pending: ConnPermit,
}

// === impl Acceptor ===

impl Acceptor {
    pub fn new(parts: AcceptorParts) -> Arc<Self> {
        Arc::new(Acceptor {
            names: parts.names,
            tls: parts.tls,
            tls_files: parts.tls_files,
            handshake_timeout: parts.handshake_timeout,
            pending: parts.pending,
            refusals: Arc::new(RefusalLog::new(parts.names.many, REFUSAL_LOG_WINDOW)),
        })
    }

    /// The caps on connections before their hello.
    pub fn pending(&self) -> &ConnLimits {
        &self.pending
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// Accepts connections on `listener` until `shutdown`; each one past
    /// its TLS handshake runs `handler` in a task of its own.
    pub async fn run<H, F>(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        handler: H,
    ) where
        H: Fn(Accepted) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(self.refusals.clone().run(shutdown.clone()));
        let handler = Arc::new(handler);
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    // Over the caps the connection is dropped (closed) here.
                    let Some(permit) = self.admit(peer) else {
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let (this, handler) = (self.clone(), handler.clone());
                    tokio::spawn(async move {
                        // Boxed so that the handshake's state is freed once
                        // it is done, not kept inside a long-lived
                        // connection's future.
                        let done = Box::pin(this.handshake(tcp, peer, permit)).await;
                        if let Some(accepted) = done {
                            handler(accepted).await;
                        }
                    });
                }
                Err(e) => self.accept_failed(&e).await,
            }
        }
    }

    /// EMFILE and friends: say so once per burst, and back off instead of
    /// spinning.
    async fn accept_failed(&self, e: &std::io::Error) {
        let many = self.names.many;
        self.refusals.refused("accept failed", None, || {
            format!("cannot accept {many}: {e} (file descriptor limit? raise LimitNOFILE)")
        });
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    }

    /// A place among the connections still in their handshake, or `None`
    /// (counted and logged) when `peer` or everyone is over the cap: the
    /// caller drops the connection at once.
    fn admit(&self, peer: SocketAddr) -> Option<ConnPermit> {
        match self.pending.admit(peer.ip()) {
            Ok(permit) => Some(permit),
            Err(refusal) => {
                let reason = refusal.reason();
                metrics::counter!(self.names.refused_metric, "reason" => reason).increment(1);
                let AcceptNames { one, over_caps, .. } = self.names;
                self.refusals.refused(reason, Some(peer.ip()), || {
                    format!("{one} from {peer} closed at once: {over_caps}, {refusal}")
                });
                None
            }
        }
    }

    /// The TLS handshake within the handshake timeout; a failure is
    /// logged once, in words (K6).
    async fn handshake(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        pending: ConnPermit,
    ) -> Option<Accepted> {
        let deadline = Instant::now() + self.handshake_timeout;
        let one = self.names.one;
        let local = match tcp.local_addr() {
            Ok(local) => local,
            Err(e) => {
                tracing::debug!(peer = %peer, error = %e, "{one} closed before its handshake");
                return None;
            }
        };
        match timeout_at(deadline, accept(self.tls.clone(), tcp)).await {
            Ok(Ok(tls)) => Some(Accepted {
                tls,
                peer,
                local,
                deadline,
                pending,
            }),
            Ok(Err(e)) => {
                self.tls_refused(peer, &e);
                None
            }
            Err(_) => {
                let (limit, prefix) = (self.handshake_timeout, self.names.tls_prefix);
                self.refusals
                    .refused("no TLS handshake in time", Some(peer.ip()), || {
                        format!("{prefix}no TLS handshake from {peer} within {limit:?}; closing")
                    });
                None
            }
        }
    }

    /// Counts and explains a failed handshake; one that is not a TLS
    /// refusal (the peer just closed) is only a debug line.
    fn tls_refused(&self, peer: SocketAddr, e: &AcceptError) {
        if let Some(metric) = self.names.tls_failures_metric {
            metrics::counter!(metric).increment(1);
        }
        let prefix = self.names.tls_prefix;
        match e.explain(&peer.to_string(), &self.tls_files) {
            Some(text) => self
                .refusals
                .refused("TLS refused", Some(peer.ip()), || format!("{prefix}{text}")),
            None => {
                let one = self.names.one;
                tracing::debug!(peer = %peer, error = %e, "{one} closed during the TLS handshake");
            }
        }
    }
}

// === impl Accepted ===

impl Accepted {
    /// The certificates the peer presented (its own first).
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.tls.get_ref().1.peer_certificates()
    }
}

#[cfg(test)]
mod tests;
