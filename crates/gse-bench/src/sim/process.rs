//! Simulated agents in child processes: one process may hold only so many
//! descriptors (20,000 here), and every simulated agent spends one, so a
//! bench with more agents than that runs a [`Fleet`] in each of several
//! children (`gse-bench scale`: one per node).
//!
//! The child is gse-bench itself, run as the hidden `sim-agents`
//! subcommand ([`run_child`]): it connects its range of agents to one
//! server and writes a [`Counters`] JSON line on stdout every
//! `--report-every-ms`. The parent ([`SimProcess`]) reads them, and holds
//! the child's stdin open: when the parent exits, however it exits, the
//! kernel closes that pipe and the child stops (no orphans); dropping a
//! [`SimProcess`] also kills its child.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use gse_core::tls::TlsFiles;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::watch;
use tokio::time::{MissedTickBehavior, interval};

use super::Fleet;
use crate::procfs::raise_fd_limit;

/// How long a child has to exit after its stdin closed before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// Flags of the hidden `gse-bench sim-agents` subcommand.
#[derive(Args, Debug)]
pub struct SimAgentsArgs {
    /// The server's agent link (`link.listen`).
    #[arg(long)]
    server: SocketAddr,
    /// Index of the first agent (identity `10.x.y.z`, agent id and source
    /// address follow from it): each child its own range.
    #[arg(long, default_value_t = 0)]
    first: u32,
    /// Agents of this process.
    #[arg(long)]
    count: u32,
    /// The agents' TLS files, signed by the server's CA.
    #[arg(long)]
    ca: PathBuf,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// TLS handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Time between two lines on stdout.
    #[arg(long, default_value_t = 1000)]
    report_every_ms: u64,
}

/// One line of a child's stdout: its fleet's counters so far.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Every agent registered or failed (the fleet is as big as it gets).
    pub connecting_done: bool,
    pub registered: u64,
    /// Agents whose TCP connect, TLS handshake or Register failed.
    pub failed: u64,
    /// Links that ended after registering.
    pub lost: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_acked: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl Counters {
    fn of(fleet: &Fleet, count: u32) -> Self {
        let registered = fleet.registered.load(Ordering::Relaxed);
        let failed = fleet.failed.load(Ordering::Relaxed);
        Counters {
            connecting_done: registered + failed >= u64::from(count),
            registered,
            failed,
            lost: fleet.lost.load(Ordering::Relaxed),
            heartbeats_sent: fleet.heartbeats_sent.load(Ordering::Relaxed),
            heartbeats_acked: fleet.heartbeats_acked.load(Ordering::Relaxed),
            first_error: fleet.first_error(),
        }
    }

    /// The counters of several children together (the first error found).
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a Counters>) -> Counters {
        all.into_iter().fold(
            Counters {
                connecting_done: true,
                ..Counters::default()
            },
            |acc, c| Counters {
                connecting_done: acc.connecting_done && c.connecting_done,
                registered: acc.registered + c.registered,
                failed: acc.failed + c.failed,
                lost: acc.lost + c.lost,
                heartbeats_sent: acc.heartbeats_sent + c.heartbeats_sent,
                heartbeats_acked: acc.heartbeats_acked + c.heartbeats_acked,
                first_error: acc.first_error.or_else(|| c.first_error.clone()),
            },
        )
    }
}

/// The child: runs its agents and reports until its stdin closes.
pub async fn run_child(args: SimAgentsArgs) -> Result<()> {
    raise_fd_limit()?;
    let tls = TlsFiles::new(args.ca, args.cert, args.key);
    let fleet = Fleet::new(&tls, args.server, args.concurrency)?;
    fleet.spawn_range(args.first..args.first + args.count);
    let mut parent_gone = tokio::spawn(async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        // EOF (the parent closed it, or exited) or an error: either way
        // nobody reads this child any more.
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let mut stdout = tokio::io::stdout();
    let mut ticker = interval(Duration::from_millis(args.report_every_ms.max(10)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut parent_gone => break,
            _ = ticker.tick() => {
                let mut line = serde_json::to_string(&Counters::of(&fleet, args.count))?;
                line.push('\n');
                if stdout.write_all(line.as_bytes()).await.is_err() || stdout.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    fleet.shutdown.cancel();
    Ok(())
}

/// A `sim-agents` child, as its parent sees it.
pub struct SimProcess {
    child: Child,
    pid: u32,
    /// Held open: closing it tells the child to stop.
    stdin: Option<ChildStdin>,
    latest: watch::Receiver<Option<Counters>>,
    /// The server its agents connect to.
    pub server: SocketAddr,
}

impl SimProcess {
    /// Starts a child holding agents `range`, all connected to `server`.
    pub fn spawn(
        server: SocketAddr,
        range: Range<u32>,
        tls: &TlsFiles,
        concurrency: usize,
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("cannot find gse-bench's own executable")?;
        let mut child = Command::new(&exe)
            .arg("sim-agents")
            .arg("--server")
            .arg(server.to_string())
            .args(["--first", &range.start.to_string()])
            .args(["--count", &range.len().to_string()])
            .arg("--ca")
            .arg(&tls.ca_file)
            .arg("--cert")
            .arg(&tls.cert_file)
            .arg("--key")
            .arg(&tls.key_file)
            .args(["--concurrency", &concurrency.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} sim-agents", exe.display()))?;
        let pid = child.id().context("the sim-agents child exited at once")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, latest) = watch::channel(None);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Counters>(&line) {
                    Ok(c) => {
                        let _ = tx.send(Some(c));
                    }
                    Err(e) => eprintln!("sim-agents {pid}: unexpected line {line:?}: {e}"),
                }
            }
        });
        Ok(SimProcess {
            stdin: child.stdin.take(),
            child,
            pid,
            latest,
            server,
        })
    }

    /// The child's latest counters; `None` before its first line.
    pub fn counters(&self) -> Option<Counters> {
        self.latest.borrow().clone()
    }

    /// The child's pid, as `/proc` names it.
    pub fn proc_id(&self) -> String {
        self.pid.to_string()
    }

    /// An error if the child has exited (it only stops when told to).
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the simulated agents of {} (pid {}) exited: {status}",
                self.server,
                self.pid
            );
        }
        Ok(())
    }

    /// Closes its stdin, waits for it to exit, kills it after a grace.
    pub async fn stop(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(EXIT_GRACE, self.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "sim-agents {} did not exit within {EXIT_GRACE:?} of its stdin closing; killed it",
                self.pid
            );
            let _ = self.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_round_trips_and_counters_add_up() {
        let a = Counters {
            connecting_done: true,
            registered: 10,
            failed: 1,
            first_error: Some("agent 3: TLS handshake failed".into()),
            heartbeats_sent: 5,
            ..Counters::default()
        };
        let line = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Counters>(&line).unwrap(), a);
        let b = Counters {
            registered: 7,
            lost: 2,
            heartbeats_acked: 4,
            ..Counters::default()
        };
        let sum = Counters::sum([&a, &b]);
        assert!(!sum.connecting_done, "b is still connecting");
        assert_eq!((sum.registered, sum.failed, sum.lost), (17, 1, 2));
        assert_eq!((sum.heartbeats_sent, sum.heartbeats_acked), (5, 4));
        assert_eq!(sum.first_error, a.first_error);
        assert!(Counters::sum([]).connecting_done);
    }
}
