//! A real ZooKeeper for tests (DEPENDENCIES.md §4, §11): Debian's package,
//! one standalone server per test on a free loopback port, in its own
//! directory. Started by [`ZooKeeperServer::start`] (ready when the `srvr`
//! four-letter word reports a serving mode: `ruok` says `imok` before the
//! server takes sessions), stopped with SIGTERM (then
//! SIGKILL) on drop; [`ZooKeeperServer::restart`] keeps its data, as an
//! operator's restart would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::procs::stop_child;
use crate::{eventually, free_port};

/// Debian's ZooKeeper jar; its manifest pulls in the other jars.
const JAR: &str = "/usr/share/java/zookeeper.jar";

/// A running ZooKeeper; see the module doc.
pub struct ZooKeeperServer {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

/// Whether the ZooKeeper package and java are installed.
pub fn available() -> bool {
    std::path::Path::new(JAR).is_file()
        && Command::new("java")
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

impl ZooKeeperServer {
    /// Starts ZooKeeper on a free loopback port and waits until it is
    /// ready.
    pub async fn start() -> ZooKeeperServer {
        assert!(
            available(),
            "ZooKeeper is not installed: run scripts/install-deps.sh --tests"
        );
        let tmp = tempfile::Builder::new()
            .prefix("gse-zk-")
            .tempdir()
            .expect("zookeeper temp dir");
        let dir = tmp.path().to_path_buf();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        // admin.enableServer=false keeps Jetty off :8080; srvr is the probe.
        let cfg = format!(
            "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={}\nclientPortAddress=127.0.0.1\n\
             maxClientCnxns=0\nadmin.enableServer=false\n4lw.commands.whitelist=srvr,stat,mntr\n\
             minSessionTimeout=1000\nmaxSessionTimeout=60000\n",
            dir.join("data").display(),
            addr.port()
        );
        std::fs::write(dir.join("zoo.cfg"), cfg).unwrap();
        let mut server = ZooKeeperServer {
            addr,
            dir,
            child: None,
            _tmp: tmp,
        };
        server.spawn().await;
        server
    }

    /// `host:port`, as a `[cluster] zookeeper` entry.
    pub fn connect_string(&self) -> String {
        self.addr.to_string()
    }

    async fn spawn(&mut self) {
        let out = std::fs::File::create(self.dir.join("zk.out")).unwrap();
        let child = Command::new("java")
            .args(["-Xmx128m", "-XX:+UseSerialGC", "-cp"])
            .arg(format!("/etc/zookeeper/conf:{JAR}"))
            .arg(format!("-Dzookeeper.log.dir={}", self.dir.display()))
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(self.dir.join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("cannot start ZooKeeper (java)");
        self.child = Some(child);
        let addr = self.addr;
        eventually(
            "ZooKeeper serving",
            Duration::from_secs(60),
            || async move {
                tokio::task::spawn_blocking(move || serving(addr))
                    .await
                    .unwrap()
            },
        )
        .await;
    }

    /// Stops the server (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c, Duration::from_secs(10));
        }
    }

    /// Stops and starts it again on the same port and data.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Stops it, deletes its data and starts it again on the same port:
    /// every session expires and every entry is gone, as after the loss of
    /// a ZooKeeper ensemble's data.
    pub async fn restart_empty(&mut self) {
        self.stop();
        let data = self.dir.join("data");
        std::fs::remove_dir_all(&data).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        self.spawn().await;
    }
}

impl Drop for ZooKeeperServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `srvr` probe: Ok once the server reports its mode.
fn serving(addr: SocketAddr) -> Result<(), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"srvr").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    if answer.contains("Mode: standalone") {
        Ok(())
    } else {
        Err(format!("answered {answer:?}"))
    }
}
