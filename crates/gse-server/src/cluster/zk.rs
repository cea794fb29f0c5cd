//! K1 discovery on ZooKeeper: the [`Registry`] of a cluster.
//!
//! Each node holds one ephemeral znode, `<zk_root>/nodes/<node_id>`, whose
//! data is its [`NodeInfo`] as JSON (id, region, roles, addresses, load);
//! [`Registry::announce`] writes it, creating it on first use and after a
//! new session. A background loop keeps every node's view: it lists the
//! children with a watch (joins and departures wake it at once) and re-reads
//! their data every `refresh` (load changes need no watch per node), and
//! publishes the list on [`Registry::watch`].
//!
//! Sessions: the crate's client reconnects by itself within a session; an
//! expired session is dead (DEPENDENCIES.md §4), so the loop then builds a
//! new client, re-creates this node's znode and re-lists (persistent watches
//! may lose events across reconnects, so every session starts with a list).
//! A znode left by this node id's previous process (its session not yet
//! expired after a crash) is replaced, not waited for.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gse_core::seams::{NodeInfo, Registry, RegistryError};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use super::ClusterConfig;

const KIND: &str = "zookeeper";

/// The ZooKeeper registry; see the module doc.
pub struct ZkRegistry {
    config: ClusterConfig,
    client: Mutex<Option<zk::Client>>,
    me: Mutex<Option<NodeInfo>>,
    tx: watch::Sender<Vec<NodeInfo>>,
}

impl ZkRegistry {
    /// Connects (failing with the addresses and the reason when ZooKeeper
    /// cannot be reached within the session timeout), makes `<zk_root>/nodes`
    /// and starts the loop that keeps the node list until `shutdown`.
    pub async fn start(
        config: ClusterConfig,
        shutdown: CancellationToken,
    ) -> Result<Arc<ZkRegistry>, RegistryError> {
        let client = connect(&config).await?;
        let (tx, _) = watch::channel(Vec::new());
        let registry = Arc::new(ZkRegistry {
            config,
            client: Mutex::new(Some(client)),
            me: Mutex::new(None),
            tx,
        });
        registry.refresh().await?;
        tokio::spawn(registry.clone().keep(shutdown));
        Ok(registry)
    }

    fn client(&self) -> Result<zk::Client, RegistryError> {
        self.client
            .lock()
            .clone()
            .ok_or_else(|| unavailable("no ZooKeeper session (reconnecting)".into()))
    }

    /// Lists the nodes and publishes them; returns the children watch.
    async fn refresh(&self) -> Result<zk::OneshotWatcher, RegistryError> {
        let client = self.client()?;
        let (children, _, watcher) = client
            .get_and_watch_children(NODES)
            .await
            .map_err(|e| unavailable(format!("cannot list {NODES}: {e}")))?;
        let mut nodes = Vec::with_capacity(children.len());
        for child in children {
            match client.get_data(&format!("{NODES}/{child}")).await {
                Ok((data, _)) => match serde_json::from_slice::<NodeInfo>(&data) {
                    Ok(info) => nodes.push(info),
                    Err(e) => {
                        tracing::warn!(node = %child, error = %e, "ignoring an unreadable node entry in ZooKeeper")
                    }
                },
                // Gone between the list and the read: it left.
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(unavailable(format!("cannot read {NODES}/{child}: {e}"))),
            }
        }
        nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        self.tx.send_if_modified(|cur| {
            let changed = *cur != nodes;
            *cur = nodes;
            changed
        });
        Ok(watcher)
    }

    /// The loop of the module doc; at shutdown the session is closed, so
    /// this node leaves the list at once.
    async fn keep(self: Arc<Self>, shutdown: CancellationToken) {
        self.keep_until(&shutdown).await;
        // Dropping the last clone of the client sends closeSession.
        self.client.lock().take();
    }

    async fn keep_until(&self, shutdown: &CancellationToken) {
        let mut failing = false;
        while !shutdown.is_cancelled() {
            let state = self.client().ok().map(|c| c.state_watcher());
            let expired = state
                .as_ref()
                .is_none_or(|s| s.peek_state().is_terminated());
            if expired {
                if let Err(e) = self.reconnect().await {
                    if !failing {
                        tracing::warn!(error = %e, "ZooKeeper session lost; retrying");
                    }
                    failing = true;
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
                continue;
            }
            let watcher = match self.refresh().await {
                Ok(w) => {
                    if failing {
                        tracing::info!("ZooKeeper registry working again");
                    }
                    failing = false;
                    Some(w)
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot read the node list from ZooKeeper; retrying");
                    }
                    failing = true;
                    None
                }
            };
            let mut state = state.expect("checked above");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = async { match watcher { Some(w) => { w.changed().await; } None => std::future::pending().await } } => {}
                _ = state.changed() => {}
                _ = tokio::time::sleep(self.config.refresh) => {}
            }
        }
    }

    /// A new session after expiry: this node's znode is made again.
    async fn reconnect(&self) -> Result<(), RegistryError> {
        let client = connect(&self.config).await?;
        *self.client.lock() = Some(client);
        tracing::info!(servers = %self.config.zookeeper.join(","), "new ZooKeeper session");
        let me = self.me.lock().clone();
        if let Some(me) = me {
            self.write_me(&me).await?;
        }
        Ok(())
    }

    /// Writes this node's znode, creating it if this session has none.
    async fn write_me(&self, me: &NodeInfo) -> Result<(), RegistryError> {
        let client = self.client()?;
        let path = format!("{NODES}/{}", me.node_id);
        let data = serde_json::to_vec(me).expect("NodeInfo serialises");
        let session = client.session_id().0;
        match client.check_stat(&path).await {
            Ok(Some(stat)) if stat.ephemeral_owner == session => {
                client
                    .set_data(&path, &data, None)
                    .await
                    .map_err(|e| unavailable(format!("cannot update {path}: {e}")))?;
                return Ok(());
            }
            Ok(Some(_)) => {
                // Left by this node id's previous process, or held by
                // another live process with the same node id: the newest
                // claim wins, and the other is told in its next write.
                tracing::warn!(node = %me.node_id, "replacing a ZooKeeper entry of this node id that another session holds (a previous run of this node?)");
                let _ = client.delete(&path, None).await;
            }
            Ok(None) => {}
            Err(e) => return Err(unavailable(format!("cannot check {path}: {e}"))),
        }
        let options = zk::CreateMode::Ephemeral.with_acls(acls(&self.config));
        client
            .create(&path, &data, &options)
            .await
            .map_err(|e| unavailable(format!("cannot create {path}: {e}")))?;
        Ok(())
    }
}

#[async_trait]
impl Registry for ZkRegistry {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn announce(&self, me: NodeInfo) -> Result<(), RegistryError> {
        *self.me.lock() = Some(me.clone());
        self.write_me(&me).await
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        Ok(self.tx.borrow().clone())
    }

    fn watch(&self) -> watch::Receiver<Vec<NodeInfo>> {
        self.tx.subscribe()
    }
}

/// Where node entries live, under the chroot `zk_root`.
const NODES: &str = "/nodes";

/// A session rooted at `zk_root` (made if missing), with `/nodes` made.
async fn connect(config: &ClusterConfig) -> Result<zk::Client, RegistryError> {
    let servers = config.zookeeper.join(",");
    let mut connector = zk::Client::connector()
        .with_session_timeout(config.session_timeout)
        .with_connection_timeout(config.session_timeout)
        .with_fail_eagerly();
    if let Some(auth) = &config.zk_auth {
        connector = connector.with_auth("digest", auth.as_bytes());
    }
    let connecting = connector.connect(&servers);
    let client = tokio::time::timeout(config.session_timeout * 2, connecting)
        .await
        .map_err(|_| {
            unavailable(format!(
                "no ZooKeeper session with {servers} within {:?}: check [cluster] zookeeper and that ZooKeeper runs",
                config.session_timeout * 2
            ))
        })?
        .map_err(|e| {
            unavailable(format!(
                "cannot connect to ZooKeeper at {servers}: {e}: check [cluster] zookeeper and that ZooKeeper runs"
            ))
        })?;
    let options = zk::CreateMode::Persistent.with_acls(acls(config));
    let root = config.zk_root.trim_end_matches('/');
    let nodes_path = format!("{root}{NODES}");
    client.mkdir(&nodes_path, &options).await.map_err(|e| {
        unavailable(format!(
            "cannot make {nodes_path} in ZooKeeper at {servers}: {e}"
        ))
    })?;
    if root.is_empty() {
        return Ok(client);
    }
    client.chroot(root.to_string()).map_err(|_| {
        unavailable(format!(
            "[cluster] zk_root {root:?} is not a ZooKeeper path"
        ))
    })
}

/// With digest auth, what we create only we may touch; otherwise anyone.
fn acls(config: &ClusterConfig) -> zk::Acls<'static> {
    if config.zk_auth.is_some() {
        zk::Acls::creator_all()
    } else {
        zk::Acls::anyone_all()
    }
}

fn unavailable(message: String) -> RegistryError {
    RegistryError::Unavailable {
        backend: KIND,
        message,
    }
}
