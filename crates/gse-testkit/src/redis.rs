//! A real `redis-server` for tests (DEPENDENCIES.md §11): one per test, on
//! a free loopback port, in its own directory, with no persistence.
//! Started by [`RedisServer::start`] (ready when it answers PING), stopped
//! with SIGTERM (then SIGKILL) on drop. [`RedisServer::client`] gives a
//! `redis` client for checking what a sink wrote.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::procs::stop_child;
use crate::{eventually, free_port};

/// A running redis-server; see the module doc.
pub struct RedisServer {
    pub port: u16,
    pub dir: PathBuf,
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
        let tmp = tempfile::Builder::new()
            .prefix("gse-redis-")
            .tempdir()
            .expect("redis temp dir");
        let dir = tmp.path().to_path_buf();
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .spawn()
            .expect("cannot start redis-server: install it (apt-get install redis-server)");
        let server = RedisServer {
            port,
            dir,
            child: Some(child),
            _tmp: tmp,
        };
        let client = server.client(password);
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
        server
    }

    /// A client for this server.
    pub fn client(&self, password: Option<&str>) -> redis::Client {
        let url = match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        };
        redis::Client::open(url).expect("redis url")
    }

    /// Stops the server (SIGTERM, then SIGKILL after 2 s).
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child, Duration::from_secs(2));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
