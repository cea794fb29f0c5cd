//! The cluster benches' setup (`fanout --nodes N`, `failover`, `scale`):
//! ZooKeeper and Redis ([`Services`]: the Debian packages, DEPENDENCIES.md
//! §4, §11, each one process on a free loopback port in the bench's temp
//! dir, killed when dropped), N nodes on them sharing one set of
//! certificates ([`start_nodes`]), both in one [`BenchCluster`], and the
//! wait until they all see each other ([`wait_members`]).
//!
//! Not shared with gse-testkit's `zookeeper.rs` / `redis.rs`: those panic
//! (test style) and pull in the `redis` client, and gse-bench does not
//! depend on the testkit; this is the same start command with errors a
//! bench can report, and readiness probed over plain TCP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::time::{Instant, sleep};

use crate::api::ApiClient;
use crate::server::{BenchServer, ClusterMember, ServerOptions, free_port};

/// How long node 1 has to list every node after they all started.
const MEMBERS_WITHIN: Duration = Duration::from_secs(30);

/// Debian's ZooKeeper jar; its manifest pulls in the other jars.
const ZK_JAR: &str = "/usr/share/java/zookeeper.jar";
/// How long ZooKeeper (a JVM) has to start serving.
const ZK_READY_WITHIN: Duration = Duration::from_secs(60);
const REDIS_READY_WITHIN: Duration = Duration::from_secs(10);

/// A running ZooKeeper and Redis; both are killed on drop.
pub struct Services {
    pub zookeeper: SocketAddr,
    pub redis: SocketAddr,
    /// The redis-server's pid (its CPU and RSS in `/proc`).
    redis_pid: u32,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Services {
    /// Starts both in `dir` (made if missing) and waits until they serve.
    pub async fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("zk-data"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let mut services = Services {
            zookeeper: free_port()?,
            redis: free_port()?,
            redis_pid: 0,
            dir: dir.to_path_buf(),
            children: Vec::new(),
        };
        services.start_zookeeper()?;
        services.start_redis()?;
        let zk = services.zookeeper;
        wait_until("ZooKeeper", zk, ZK_READY_WITHIN, zk_serving).await?;
        let redis = services.redis;
        wait_until("redis-server", redis, REDIS_READY_WITHIN, redis_pong).await?;
        Ok(services)
    }

    /// The redis-server's pid, as `/proc` names it.
    pub fn redis_proc_id(&self) -> String {
        self.redis_pid.to_string()
    }

    /// `[store] redis` of every node.
    pub fn redis_url(&self) -> String {
        format!("redis://{}/", self.redis)
    }

    fn start_zookeeper(&mut self) -> Result<()> {
        if !Path::new(ZK_JAR).is_file() {
            bail!(
                "ZooKeeper is not installed ({ZK_JAR} missing): run scripts/install-deps.sh --tests"
            );
        }
        // admin.enableServer=false keeps Jetty off :8080; srvr is the probe.
        let cfg = format!(
            "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={}\nclientPortAddress=127.0.0.1\n\
             maxClientCnxns=0\nadmin.enableServer=false\n4lw.commands.whitelist=srvr\n\
             minSessionTimeout=1000\nmaxSessionTimeout=60000\n",
            self.dir.join("zk-data").display(),
            self.zookeeper.port()
        );
        let cfg_path = self.dir.join("zoo.cfg");
        std::fs::write(&cfg_path, cfg)?;
        let out = std::fs::File::create(self.dir.join("zk.out"))?;
        let child = Command::new("java")
            .args(["-Xmx256m", "-XX:+UseSerialGC", "-cp"])
            .arg(format!("/etc/zookeeper/conf:{ZK_JAR}"))
            .arg(format!("-Dzookeeper.log.dir={}", self.dir.display()))
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .context("cannot start ZooKeeper (java)")?;
        self.children.push(child);
        Ok(())
    }

    fn start_redis(&mut self) -> Result<()> {
        // `--save ''` + append-only file, as a cluster's Redis would run.
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.redis.port().to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args(["--save", "", "--appendonly", "yes"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server: run scripts/install-deps.sh --tests")?;
        self.redis_pid = child.id();
        self.children.push(child);
        Ok(())
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `n` nodes on `services` from `template` (binary, API apps,
/// limits, heartbeat interval), all with one set of certificates (the
/// first node's); on an error the started ones are stopped and their
/// files kept.
pub async fn start_nodes(
    services: &Services,
    n: u32,
    template: &ServerOptions,
) -> Result<Vec<BenchServer>> {
    let mut nodes: Vec<BenchServer> = Vec::new();
    for i in 0..n {
        let member = ClusterMember {
            node_id: node_id(i),
            zookeeper: services.zookeeper.to_string(),
            redis: services.redis_url(),
            certs: nodes.first().map(BenchServer::certs_dir),
        };
        let started = BenchServer::start(&ServerOptions {
            cluster: Some(member),
            ..template.clone()
        })
        .await;
        match started {
            Ok(node) => nodes.push(node),
            Err(e) => {
                stop_all(nodes, true).await;
                return Err(e.context(format!("cannot start {}", node_id(i))));
            }
        }
    }
    Ok(nodes)
}

/// ZooKeeper, Redis and the nodes of one bench run, in one temp dir.
pub struct BenchCluster {
    /// Kept (and its path printed) by [`BenchCluster::stop`] when asked.
    dir: tempfile::TempDir,
    pub services: Services,
    pub nodes: Vec<BenchServer>,
}

impl BenchCluster {
    /// Starts ZooKeeper and Redis, then `n` nodes from `template`
    /// ([`start_nodes`]); on an error the files are kept.
    pub async fn start(n: u32, template: &ServerOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("gse-bench-services-")
            .tempdir()
            .context("cannot create a temp dir")?;
        let services = match Services::start(dir.path()).await {
            Ok(s) => s,
            Err(e) => {
                let kept = dir.keep();
                return Err(e.context(format!("see {}", kept.display())));
            }
        };
        match start_nodes(&services, n, template).await {
            Ok(nodes) => Ok(BenchCluster {
                dir,
                services,
                nodes,
            }),
            Err(e) => {
                drop(services);
                eprintln!("ZooKeeper and Redis files kept in {}", dir.keep().display());
                Err(e)
            }
        }
    }

    /// Stops the nodes, then ZooKeeper and Redis, keeping every file if
    /// `keep`.
    pub async fn stop(self, keep: bool) {
        stop_all(self.nodes, keep).await;
        drop(self.services);
        if keep {
            eprintln!(
                "ZooKeeper and Redis files kept in {}",
                self.dir.keep().display()
            );
        }
    }
}

/// Polls `probe` (a blocking TCP exchange) until it succeeds or `within`
/// passes.
async fn wait_until(
    what: &str,
    addr: SocketAddr,
    within: Duration,
    probe: fn(SocketAddr) -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let outcome = tokio::task::spawn_blocking(move || probe(addr)).await?;
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                bail!("{what} on {addr} not ready after {within:?}: {e:#}")
            }
            Err(_) => sleep(Duration::from_millis(200)).await,
        }
    }
}

/// One request/answer over a fresh connection.
fn exchange(addr: SocketAddr, request: &[u8]) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(request)?;
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// ZooKeeper's `srvr`: ready once it reports a serving mode (`ruok`
/// answers before sessions are taken).
fn zk_serving(addr: SocketAddr) -> Result<()> {
    let answer = exchange(addr, b"srvr")?;
    if answer.contains("Mode: standalone") {
        Ok(())
    } else {
        bail!("answered {answer:?}")
    }
}

fn redis_pong(addr: SocketAddr) -> Result<()> {
    let answer = exchange(addr, b"PING\r\n")?;
    if answer.starts_with("+PONG") {
        Ok(())
    } else {
        bail!("answered {answer:?}")
    }
}

/// Stops the nodes (SIGTERM, then SIGKILL), keeping their files if asked.
pub async fn stop_all(nodes: Vec<BenchServer>, keep: bool) {
    for mut node in nodes {
        node.stop().await;
        if keep {
            let dir = node.keep_dir();
            eprintln!("node files kept in {}", dir.display());
        }
    }
}

/// Waits until node 1 lists all `n` nodes (K1), so that work for agents
/// of the others can be forwarded from the first round on.
pub async fn wait_members(api: &ApiClient, n: u32) -> Result<()> {
    let want = member_ids(n);
    let deadline = Instant::now() + MEMBERS_WITHIN;
    loop {
        let got = api.node_ids().await?;
        if got == want {
            eprintln!("cluster of {n} nodes formed");
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("node-1 lists {got:?} after {MEMBERS_WITHIN:?}, expected {want:?}");
        }
        sleep(Duration::from_millis(200)).await;
    }
}

/// Every node's id, sorted as `list_nodes` sorts them (by string).
fn member_ids(n: u32) -> Vec<String> {
    let mut ids: Vec<String> = (0..n).map(node_id).collect();
    ids.sort();
    ids
}

/// Node i's id (0-based i): `node-1`, `node-2`, ...
pub fn node_id(i: u32) -> String {
    format!("node-{}", i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_sort_as_list_nodes_does() {
        assert_eq!(member_ids(3), ["node-1", "node-2", "node-3"]);
        let twelve = member_ids(12);
        assert_eq!(&twelve[..4], ["node-1", "node-10", "node-11", "node-12"]);
    }
}
