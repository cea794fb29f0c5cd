//! A real Kafka-protocol broker for tests: `tansu` (crates.io, Apache-2.0)
//! with its in-memory storage engine, on a free loopback port.
//!
//! Start at [`Tansu::start`]. The binary is built once, outside the
//! workspace, by `scripts/install-deps.sh --tests` into
//! `${GSE_TOOLS_DIR:-$HOME/.cache/gse}/tansu/bin/tansu`; when it is missing the
//! test fails saying so (it never skips). The broker's output goes to
//! `tansu.log` in the directory given, which a failing [`crate::Cluster`]
//! prints. Storage is memory: a restarted broker is empty, so tests create
//! their topics again ([`Tansu::create_topic`]). Consumer helpers use rskafka,
//! the same client the sink uses.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rskafka::BackoffConfig;
use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::RecordAndOffset;

use crate::{eventually, free_port, read_lines};

/// A running tansu broker; killed on drop.
pub struct Tansu {
    child: Option<Child>,
    port: u16,
    /// The port clients are told in metadata (a relay in front), when not
    /// `port`.
    advertised: Option<u16>,
    /// Where this helper's own clients connect when a relay fronts the
    /// broker: its address, and TLS to it.
    front: Option<(String, Option<std::sync::Arc<rustls::ClientConfig>>)>,
    dir: PathBuf,
    bin: PathBuf,
}

/// Where `scripts/install-deps.sh --tests` puts the tansu binary.
pub fn tansu_bin() -> PathBuf {
    let tools = match std::env::var_os("GSE_TOOLS_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            Path::new(&home).join(".cache/gse")
        }
    };
    tools.join("tansu/bin/tansu")
}

// === impl Tansu ===

impl Tansu {
    /// Starts tansu on a free loopback port, logging to `dir/tansu.log`, and
    /// waits until it answers a metadata request.
    pub async fn start(dir: &Path) -> Tansu {
        Self::start_advertising(dir, None).await
    }

    /// Like [`Tansu::start`], but telling clients (in metadata) to come
    /// back through `advertised` (a relay's port), when given.
    pub async fn start_advertising(dir: &Path, advertised: Option<u16>) -> Tansu {
        let bin = tansu_bin();
        assert!(
            bin.is_file(),
            "the tansu Kafka broker is missing at {}: run `scripts/install-deps.sh --tests` \
             (builds it once, about 12 minutes) or set GSE_TOOLS_DIR to where it is installed",
            bin.display()
        );
        std::fs::create_dir_all(dir).expect("tansu test dir");
        let mut t = Tansu {
            child: None,
            port: free_port(),
            advertised,
            front: None,
            dir: dir.to_path_buf(),
            bin,
        };
        t.spawn().await;
        t
    }

    /// `127.0.0.1:<port>`, the bootstrap address.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL, as a crash would; the in-memory topics are gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port (empty: memory storage).
    pub async fn start_again(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// This helper's clients go through the relay at `addr` (with TLS when
    /// given), which the broker advertises ([`Tansu::start_advertising`]).
    pub fn set_front(&mut self, addr: String, tls: Option<std::sync::Arc<rustls::ClientConfig>>) {
        self.front = Some((addr, tls));
    }

    /// A client on this broker.
    pub async fn client(&self) -> Client {
        let (addr, tls) = match &self.front {
            Some((addr, tls)) => (addr.clone(), tls.clone()),
            None => (self.addr(), None),
        };
        let mut builder = ClientBuilder::new(vec![addr.clone()]).backoff_config(short_backoff());
        if let Some(tls) = tls {
            builder = builder.tls_config(tls);
        }
        builder
            .build()
            .await
            .unwrap_or_else(|e| panic!("connect to tansu at {addr}: {e}"))
    }

    /// Creates `topic` with `partitions` partitions (replication 1).
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let client = self.client().await;
        let controller = client.controller_client().expect("controller client");
        controller
            .create_topic(topic, partitions, 1, 5_000)
            .await
            .unwrap_or_else(|e| panic!("create topic {topic} on tansu {}: {e}", self.addr()));
    }

    /// Every record of `topic`/`partition`, oldest first, up to the high
    /// watermark of the fetches (tansu 0.6's ListOffsets "latest" answers
    /// the last batch's base offset + 1, not the high watermark, so it is
    /// not used).
    pub async fn fetch_all(&self, topic: &str, partition: i32) -> Vec<RecordAndOffset> {
        let client = self.client().await;
        let pc = client
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .unwrap_or_else(|e| panic!("partition client {topic}/{partition}: {e}"));
        let mut offset = pc
            .get_offset(OffsetAt::Earliest)
            .await
            .expect("earliest offset");
        let mut out = Vec::new();
        loop {
            let (records, high) = pc
                .fetch_records(offset, 1..4_000_000, 100)
                .await
                .unwrap_or_else(|e| panic!("fetch {topic}/{partition} at {offset}: {e}"));
            let Some(last) = records.last() else { break };
            offset = last.offset + 1;
            out.extend(records);
            if offset >= high {
                break;
            }
        }
        out
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .expect("tansu log file");
        let url = format!("tcp://{}", self.addr());
        let advertised = match self.advertised {
            Some(port) => format!("tcp://127.0.0.1:{port}"),
            None => url.clone(),
        };
        let child = Command::new(&self.bin)
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("tansu log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        self.child = Some(child);
        let addr = self.addr();
        let log_path = self.dir.join("tansu.log");
        let child = self.child.as_mut().expect("just spawned");
        eventually("tansu to answer metadata", Duration::from_secs(20), || {
            let exited = child.try_wait().ok().flatten();
            let addr = addr.clone();
            let log_path = log_path.clone();
            async move {
                if let Some(status) = exited {
                    let tail = read_lines(&log_path);
                    panic!(
                        "tansu exited ({status}) before listening on {addr}; log:\n{}",
                        tail[tail.len().saturating_sub(20)..].join("\n")
                    );
                }
                ClientBuilder::new(vec![addr])
                    .backoff_config(short_backoff())
                    .build()
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        })
        .await;
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn short_backoff() -> BackoffConfig {
    BackoffConfig {
        init_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        base: 2.0,
        deadline: Some(Duration::from_millis(500)),
    }
}
