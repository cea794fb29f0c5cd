//! A `gse-server run` child process on a config file someone else wrote
//! (benches; quickstart's cluster nodes), with its readiness: spawned,
//! then polled (with a deadline) until `GET /healthz` answers 200. Its
//! stdout and stderr go to `<dir>/server.out`, its log to `<dir>/server.log`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout};

/// How long a server has to answer `/healthz` after it is spawned.
pub const READY_WITHIN: Duration = Duration::from_secs(30);

/// A running `gse-server run --config <config>`.
pub struct ServerProcess {
    child: Child,
    pid: u32,
    /// Its `--log-file`.
    pub log: PathBuf,
    /// Where its HTTP API listens (the config's `api.listen`).
    pub api: SocketAddr,
}

impl ServerProcess {
    /// Spawns `bin run --config <config>` with its output files in `dir`
    /// and waits until `api` answers `GET /healthz` with 200; fails (with
    /// the end of its output) if it exits first or is not ready in
    /// [`READY_WITHIN`].
    pub async fn start(bin: &Path, config: &Path, dir: &Path, api: SocketAddr) -> Result<Self> {
        let out_path = dir.join("server.out");
        let out = std::fs::File::create(&out_path)
            .with_context(|| format!("cannot create {}", out_path.display()))?;
        let log = dir.join("server.log");
        let child = Command::new(bin)
            .arg("--log-file")
            .arg(&log)
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id().context("gse-server exited at once")?;
        let mut server = ServerProcess {
            child,
            pid,
            log,
            api,
        };
        if let Err(e) = server.wait_ready().await {
            server.stop(Duration::from_secs(5)).await;
            let tail = crate::log_tail(&out_path, 10);
            return Err(e.context(format!("{} ends with:\n{tail}", out_path.display())));
        }
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process has exited (and reaps it if so).
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("gse-server exited before it was ready ({status})");
            }
            if healthz(self.api).await.unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "gse-server did not answer GET http://{}/healthz within {READY_WITHIN:?}",
                    self.api
                );
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`; returns
    /// whether it had to be killed (callers without a log say so).
    pub async fn stop(&mut self, grace: Duration) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return false;
        }
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        if timeout(grace, self.child.wait()).await.is_err() {
            tracing::warn!(
                pid = self.pid,
                "gse-server did not stop within {grace:?} of SIGTERM; killing it"
            );
            let _ = self.child.kill().await;
            return true;
        }
        false
    }
}

/// True if `GET /healthz` at `api` answers 200 (HTTP/1.0 over a raw socket:
/// no HTTP client needed to ask whether a server is up).
pub async fn healthz(api: SocketAddr) -> std::io::Result<bool> {
    let mut tcp = TcpStream::connect(api).await?;
    tcp.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    timeout(Duration::from_secs(2), tcp.read_to_end(&mut answer)).await??;
    let status = answer.split(|&b| b == b' ').nth(1);
    Ok(status == Some(b"200".as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn healthz_reads_the_status_of_the_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serve = |answer: &'static [u8]| {
            let accept = listener.accept();
            async move {
                let (mut tcp, _) = accept.await.unwrap();
                let mut buf = [0u8; 256];
                let _ = tcp.read(&mut buf).await.unwrap();
                tcp.write_all(answer).await.unwrap();
            }
        };
        let (ok, _) = tokio::join!(healthz(addr), serve(b"HTTP/1.0 200 OK\r\n\r\nok"));
        assert!(ok.unwrap());
        let (down, _) = tokio::join!(healthz(addr), serve(b"HTTP/1.0 503 Unavailable\r\n\r\n"));
        assert!(!down.unwrap());
        drop(listener);
        assert!(healthz(addr).await.is_err(), "nobody listens any more");
    }
}
