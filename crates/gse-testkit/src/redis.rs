//! A real `redis-server` for tests (DEPENDENCIES.md §11): Debian's package,
//! one per test, on a free loopback port, in its own directory, with an
//! append-only file (`appendonly yes`) as a cluster's Redis would have.
//! Started by [`RedisServer::start`] (ready when it answers PING), stopped
//! with SIGTERM (then SIGKILL) on drop; [`RedisServer::restart`] brings it
//! back on the same port from its append-only file, as an operator's
//! restart would. [`RedisServer::client`] gives a `redis` client for
//! checking what a sink or a store wrote; [`RedisServer::url`] the URL a
//! node's config names. [`RedisServer::start_replica`] starts a replica of
//! another (for Sentinel failovers, with [`crate::sentinel`]).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::procs::stop_child;
use crate::{eventually, free_port};

/// A running redis-server; see the module doc.
pub struct RedisServer {
    pub port: u16,
    pub dir: PathBuf,
    password: Option<String>,
    /// The master's port, for a replica.
    replica_of: Option<u16>,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

/// Whether `redis-server` is on the PATH (tests fail with a message
/// naming the install script when it is not).
pub fn available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl RedisServer {
    /// Starts redis-server on a free loopback port and waits until it
    /// answers PING; `password` sets `requirepass`.
    pub async fn start(password: Option<&str>) -> RedisServer {
        assert!(
            available(),
            "redis-server is not installed: run scripts/install-deps.sh --tests"
        );
        let tmp = tempfile::Builder::new()
            .prefix("gse-redis-")
            .tempdir()
            .expect("redis temp dir");
        let mut server = RedisServer {
            port: free_port(),
            dir: tmp.path().to_path_buf(),
            password: password.map(str::to_string),
            replica_of: None,
            child: None,
            _tmp: tmp,
        };
        server.spawn().await;
        server
    }

    /// Starts a replica of `master` (same password, which is also what it
    /// authenticates to the master with) and waits until it has caught up
    /// (`master_link_status:up`).
    pub async fn start_replica(master: &RedisServer) -> RedisServer {
        let tmp = tempfile::Builder::new()
            .prefix("gse-redis-replica-")
            .tempdir()
            .expect("redis temp dir");
        let mut server = RedisServer {
            port: free_port(),
            dir: tmp.path().to_path_buf(),
            password: master.password.clone(),
            replica_of: Some(master.port),
            child: None,
            _tmp: tmp,
        };
        server.spawn().await;
        let client = server.client(server.password.as_deref());
        eventually(
            &format!("replica on port {} linked to its master", server.port),
            Duration::from_secs(15),
            || {
                let client = client.clone();
                async move {
                    let info = info_replication(&client).await?;
                    if info.contains("master_link_status:up") {
                        Ok(())
                    } else {
                        Err(info)
                    }
                }
            },
        )
        .await;
        server
    }

    /// `INFO replication` of this server.
    pub async fn info_replication(&self) -> Result<String, String> {
        info_replication(&self.client(self.password.as_deref())).await
    }

    /// Starts the process and waits until it answers PING (after loading
    /// its append-only file, on a restart).
    async fn spawn(&mut self) {
        let port = self.port;
        let mut cmd = Command::new("redis-server");
        // `--save ''`: no RDB snapshots, the append-only file is the data.
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            // masterauth too: a Sentinel failover may make any server a
            // replica of another.
            cmd.args(["--requirepass", p, "--masterauth", p]);
        }
        if let Some(master) = self.replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        let child = cmd
            .spawn()
            .expect("cannot start redis-server: run scripts/install-deps.sh --tests");
        self.child = Some(child);
        let client = self.client(self.password.as_deref());
        eventually(
            &format!("redis-server on port {port} answers PING"),
            Duration::from_secs(10),
            || {
                let client = client.clone();
                async move {
                    let mut conn = client
                        .get_multiplexed_async_connection()
                        .await
                        .map_err(|e| e.to_string())?;
                    redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .map_err(|e| e.to_string())
                }
            },
        )
        .await;
    }

    /// Its `requirepass`, if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The URL of this server, with its password: `[store] redis`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// Stops it and starts it again on the same port; what was written
    /// before comes back from the append-only file.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// A client for this server.
    pub fn client(&self, password: Option<&str>) -> redis::Client {
        let url = match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        };
        redis::Client::open(url).expect("redis url")
    }

    /// Kills the server (SIGKILL): a crash, as a Sentinel failover test
    /// needs.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after 2 s). On SIGTERM it
    /// flushes its append-only file first.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, Duration::from_secs(2));
        }
    }
}

async fn info_replication(client: &redis::Client) -> Result<String, String> {
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    redis::cmd("INFO")
        .arg("replication")
        .query_async::<String>(&mut conn)
        .await
        .map_err(|e| e.to_string())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_restart_keeps_what_was_written_and_the_password() {
        let mut server = RedisServer::start(Some("pw")).await;
        let client = server.client(Some("pw"));
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        server.restart().await;
        let client = redis::Client::open(server.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let v: Option<String> = redis::cmd("GET")
            .arg("k")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            v.as_deref(),
            Some("v"),
            "restored from the append-only file"
        );
        let anonymous = redis::Client::open(format!("redis://127.0.0.1:{}/", server.port)).unwrap();
        let mut conn = anonymous.get_multiplexed_async_connection().await.unwrap();
        assert!(
            redis::cmd("GET")
                .arg("k")
                .query_async::<Option<String>>(&mut conn)
                .await
                .is_err(),
            "the password still applies"
        );
    }
}
