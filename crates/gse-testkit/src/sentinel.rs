//! A real Redis Sentinel for tests: `redis-server <sentinel.conf>
//! --sentinel` (Debian's redis-server package) on a free loopback port, in
//! its own directory, monitoring one [`RedisServer`] under a name with
//! quorum 1 and a short down-after, so a failover is quick. Ready when
//! `SENTINEL get-master-addr-by-name` answers with the master; stopped with
//! SIGTERM (then SIGKILL) on drop. [`Sentinel::failover`] forces a failover
//! (retried until the sentinel has found a replica to promote) and
//! [`Sentinel::master_port`] says which server is the master now.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::procs::stop_child;
use crate::redis::RedisServer;
use crate::{eventually, free_port};

/// A running sentinel; see the module doc.
pub struct Sentinel {
    pub port: u16,
    pub master_name: String,
    pub dir: PathBuf,
    password: Option<String>,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

impl Sentinel {
    /// Starts a sentinel monitoring `master` as `master_name` (with the
    /// master's password), itself protected by `password` when given, and
    /// waits until it names the master.
    pub async fn start(
        master: &RedisServer,
        master_name: &str,
        password: Option<&str>,
    ) -> Sentinel {
        assert!(
            crate::redis::available(),
            "redis-server is not installed: run scripts/install-deps.sh --tests"
        );
        let tmp = tempfile::Builder::new()
            .prefix("gse-sentinel-")
            .tempdir()
            .expect("sentinel temp dir");
        let port = free_port();
        let dir = tmp.path().to_path_buf();
        // The sentinel rewrites its config file (what it learns about
        // replicas and failovers), so it is a file in its own directory.
        let conf = dir.join("sentinel.conf");
        let mut text = format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nlogfile {}\n\
             sentinel monitor {master_name} 127.0.0.1 {} 1\n\
             sentinel down-after-milliseconds {master_name} 1000\n\
             sentinel failover-timeout {master_name} 10000\n\
             sentinel parallel-syncs {master_name} 1\n",
            dir.display(),
            dir.join("sentinel.log").display(),
            master.port,
        );
        if let Some(p) = master.password() {
            text.push_str(&format!("sentinel auth-pass {master_name} {p}\n"));
        }
        if let Some(p) = password {
            text.push_str(&format!("requirepass {p}\n"));
        }
        std::fs::File::create(&conf)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start redis-server --sentinel: run scripts/install-deps.sh --tests");
        let sentinel = Sentinel {
            port,
            master_name: master_name.to_string(),
            dir,
            password: password.map(str::to_string),
            child: Some(child),
            _tmp: tmp,
        };
        let want = master.port;
        eventually(
            &format!("sentinel on port {port} names the master {master_name}"),
            Duration::from_secs(10),
            || async {
                match sentinel.master_port().await? {
                    Some(p) if p == want => Ok(()),
                    other => Err(format!("master port {other:?}")),
                }
            },
        )
        .await;
        sentinel
    }

    /// `127.0.0.1:PORT`: an entry of `[store] redis_sentinels`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A client for this sentinel (with its password).
    pub fn client(&self) -> redis::Client {
        let url = match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        };
        redis::Client::open(url).expect("sentinel url")
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, String> {
        let mut conn = self
            .client()
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        cmd.query_async(&mut conn).await.map_err(|e| e.to_string())
    }

    /// The port of the master the sentinel names now (`None`: unknown).
    pub async fn master_port(&self) -> Result<Option<u16>, String> {
        let addr: Option<(String, u16)> = self
            .query(
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.master_name),
            )
            .await?;
        Ok(addr.map(|(_, port)| port))
    }

    /// Forces a failover (`SENTINEL FAILOVER`), retried while the sentinel
    /// has not found a replica to promote yet, and waits until it names
    /// another master; returns the new master's port.
    pub async fn failover(&self) -> u16 {
        let old = self.master_port().await.expect("sentinel answers");
        eventually(
            &format!("SENTINEL FAILOVER {} accepted", self.master_name),
            Duration::from_secs(30),
            || async {
                self.query::<String>(
                    redis::cmd("SENTINEL")
                        .arg("FAILOVER")
                        .arg(&self.master_name),
                )
                .await
            },
        )
        .await;
        eventually(
            &format!("sentinel names a new master for {}", self.master_name),
            Duration::from_secs(30),
            || async {
                match self.master_port().await? {
                    Some(p) if Some(p) != old => Ok(p),
                    other => Err(format!("master port still {other:?}")),
                }
            },
        )
        .await
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sentinel_names_its_master_and_promotes_the_replica_on_failover() {
        let master = RedisServer::start(Some("pw")).await;
        let replica = RedisServer::start_replica(&master).await;
        let sentinel = Sentinel::start(&master, "gse", Some("spw")).await;
        assert_eq!(sentinel.master_port().await.unwrap(), Some(master.port));
        assert_eq!(sentinel.failover().await, replica.port);
        let info = replica.info_replication().await.unwrap();
        assert!(info.contains("role:master"), "{info}");
    }
}
