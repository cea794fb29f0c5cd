//! Several `gse-server` nodes in one test, with ZooKeeper and agents that
//! know every node:
//!
//! ```ignore
//! let cluster = Cluster::builder().nodes(3).zookeeper().agents(2).start().await;
//! let nodes = cluster.api(0).list_nodes().await?;
//! ```
//!
//! [`ClusterBuilder::start`] starts a ZooKeeper (when asked), then node i
//! (0-based) as `node-<i+1>` in its own directory `node-<i+1>/` with its own
//! config and data, joined to the ZooKeeper, then agents 127.0.0.1 ..
//! 127.0.0.k listing every node's agent address. It returns once every node
//! lists all of them (`list_nodes`) and every agent is alive on some node.

use std::sync::Arc;
use std::time::Duration;

use gse_core::seams::NodeInfo;
use gse_server::config::ServerConfig;

use crate::redis::RedisServer;
use crate::zookeeper::ZooKeeperServer;
use crate::{AgentOptions, AgentProc, Api, Cluster, ServerOptions, ServerProc, eventually};

/// A change made to node i's config (0-based) before it is written.
pub type NodeHook = Arc<dyn Fn(usize, &mut ServerConfig) + Send + Sync>;

/// A change made to agent i's options (1-based, as its IP 127.0.0.i).
pub type AgentHook = Arc<dyn Fn(u32, &mut AgentOptions) + Send + Sync>;

/// How long nodes of a test cluster take to notice a node that died (its
/// ZooKeeper session timeout; the smallest a node accepts is 2 s).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(3);

/// What [`Cluster::builder`] starts; see the module doc.
pub struct ClusterBuilder {
    nodes: usize,
    zookeeper: bool,
    redis: bool,
    agents: u32,
    server: ServerOptions,
    node_config: Option<NodeHook>,
    agent_options: Option<AgentHook>,
}

impl Cluster {
    /// Starts building a test cluster (one node, no ZooKeeper, no agents).
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            nodes: 1,
            zookeeper: false,
            redis: false,
            agents: 0,
            server: ServerOptions::default(),
            node_config: None,
            agent_options: None,
        }
    }
}

impl ClusterBuilder {
    /// How many `gse-server` processes.
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Start a ZooKeeper and make every node a member (`[cluster]
    /// zookeeper`); without it each node is an embedded single node.
    pub fn zookeeper(mut self) -> Self {
        self.zookeeper = true;
        // A cluster member keeps its state in the shared Redis too
        // (`ServerConfig::validate` refuses a member without it).
        self.redis = true;
        self
    }

    /// Start a Redis and make it every node's store and agent directory
    /// (`[store] redis`): records readable through any node, agents
    /// reachable from any node.
    pub fn redis(mut self) -> Self {
        self.redis = true;
        self
    }

    /// How many agents (identity IPs 127.0.0.1 .. 127.0.0.k).
    pub fn agents(mut self, k: u32) -> Self {
        self.agents = k;
        self
    }

    /// Knobs every node shares (heartbeats, webhook, a config hook); its
    /// `name` is set per node.
    pub fn server_options(mut self, opts: ServerOptions) -> Self {
        self.server = opts;
        self
    }

    /// A change to node i's config, after the cluster's own settings: the
    /// place for what differs between nodes (region, roles) and for what
    /// the builder does not start yet (`[store] redis`).
    pub fn node_config(
        mut self,
        hook: impl Fn(usize, &mut ServerConfig) + Send + Sync + 'static,
    ) -> Self {
        self.node_config = Some(Arc::new(hook));
        self
    }

    /// A change to agent i's options (1-based, its IP 127.0.0.i): the
    /// place for what differs between agents (their region).
    pub fn agent_options(
        mut self,
        hook: impl Fn(u32, &mut AgentOptions) + Send + Sync + 'static,
    ) -> Self {
        self.agent_options = Some(Arc::new(hook));
        self
    }

    /// Starts everything and waits until it is ready; see the module doc.
    pub async fn start(self) -> StartedCluster {
        assert!(self.nodes >= 1, "a cluster has at least one node");
        let cluster = Cluster::new();
        let zookeeper = match self.zookeeper {
            true => Some(ZooKeeperServer::start().await),
            false => None,
        };
        let redis = match self.redis {
            true => Some(RedisServer::start(None).await),
            false => None,
        };
        let shared = Shared {
            zookeeper: zookeeper.as_ref().map(ZooKeeperServer::connect_string),
            redis: redis.as_ref().map(RedisServer::url),
        };
        let mut nodes = Vec::with_capacity(self.nodes);
        for i in 0..self.nodes {
            let opts = node_options(&self.server, i, shared.clone(), self.node_config.clone());
            nodes.push(cluster.server(opts).await);
        }
        let mut started = StartedCluster {
            agents: Vec::new(),
            nodes,
            zookeeper,
            redis,
            cluster,
            spec: NodeSpec {
                server: self.server,
                shared,
                node_config: self.node_config,
            },
        };
        if started.zookeeper.is_some() {
            started.wait_members().await;
        }
        let links: Vec<_> = started.nodes.iter().map(|n| n.link_addr).collect();
        for i in 1..=self.agents {
            let ip = gse_launch::agent::agent_ip(i).to_string();
            let mut opts = AgentOptions::ip(&ip);
            if let Some(hook) = &self.agent_options {
                hook(i, &mut opts);
            }
            let agent = started.cluster.agent_of(&links, opts);
            started.agents.push(agent);
        }
        for agent in &started.agents {
            started.wait_alive_somewhere(&agent.ip.to_string()).await;
        }
        started
    }
}

/// How the builder made its nodes, to make more later.
struct NodeSpec {
    server: ServerOptions,
    shared: Shared,
    node_config: Option<NodeHook>,
}

/// The services every node of the cluster uses.
#[derive(Clone)]
struct Shared {
    zookeeper: Option<String>,
    redis: Option<String>,
}

/// Node i's options: the shared ones, its own directory and node id, the
/// ZooKeeper and Redis, then the test's per-node hook.
fn node_options(
    shared: &ServerOptions,
    i: usize,
    services: Shared,
    node_config: Option<NodeHook>,
) -> ServerOptions {
    let id = node_id(i);
    let before = shared.customize.clone();
    ServerOptions {
        name: Some(id.clone()),
        customize: Some(Arc::new(move |cfg: &mut ServerConfig| {
            if let Some(hook) = &before {
                hook(cfg);
            }
            cfg.node.id = id.clone();
            if let Some(zk) = &services.zookeeper {
                cfg.cluster.zookeeper = vec![zk.clone()];
                cfg.cluster.session_timeout = SESSION_TIMEOUT;
                cfg.cluster.refresh = Duration::from_millis(300);
                // Every node its own port, told to the others as bound.
                cfg.cluster.node_listen = "127.0.0.1:0".parse().expect("an address");
            }
            if let Some(url) = &services.redis {
                cfg.store.redis = Some(url.clone());
            }
            if let Some(hook) = &node_config {
                hook(i, cfg);
            }
        })),
        ..shared.clone()
    }
}

/// Node i's id (0-based i): `node-1`, `node-2`, ...
pub fn node_id(i: usize) -> String {
    format!("node-{}", i + 1)
}

/// A started test cluster. Dropped in field order: agents, nodes,
/// ZooKeeper, then the directory (kept, with log tails, if the test failed).
pub struct StartedCluster {
    pub agents: Vec<AgentProc>,
    pub nodes: Vec<ServerProc>,
    pub zookeeper: Option<ZooKeeperServer>,
    pub redis: Option<RedisServer>,
    pub cluster: Cluster,
    spec: NodeSpec,
}

impl StartedCluster {
    /// Node i's API (0-based), with the test app's credentials.
    pub fn api(&self, i: usize) -> &Api {
        &self.nodes[i].api
    }

    /// The ids of the nodes that are running (not killed or stopped),
    /// sorted as `list_nodes` sorts them.
    pub fn running_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .map(node_id)
            .collect();
        ids.sort();
        ids
    }

    /// Starts one more node (`node-<n+1>`, configured as the others,
    /// the node hook included), waits until every running node lists it,
    /// and returns its index. Agents started before do not list it.
    pub async fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let spec = &self.spec;
        let opts = node_options(
            &spec.server,
            i,
            spec.shared.clone(),
            spec.node_config.clone(),
        );
        let node = self.cluster.server(opts).await;
        self.nodes.push(node);
        if self.zookeeper.is_some() {
            self.wait_members().await;
        }
        i
    }

    /// SIGKILLs node i, as a crash would.
    pub fn kill9(&mut self, i: usize) {
        self.nodes[i].kill9();
    }

    /// Waits until every running node lists exactly the running nodes
    /// (30 s, scaled by the test patience: a departure takes up to
    /// [`SESSION_TIMEOUT`]).
    pub async fn wait_members(&self) {
        let want = self.running_ids();
        for i in (0..self.nodes.len()).filter(|&i| self.nodes[i].is_running()) {
            self.api(i).wait_listed(&want).await;
        }
    }

    /// Waits until agent `0:ip` is alive on one of the running nodes.
    pub async fn wait_alive_somewhere(&self, ip: &str) {
        eventually(
            &format!("agent 0:{ip} alive on a node"),
            Duration::from_secs(20),
            || async {
                for node in self.nodes.iter().filter(|n| n.is_running()) {
                    if node.api.alive(0, ip).await == 1 {
                        return Ok(());
                    }
                }
                Err("not alive on any node".to_string())
            },
        )
        .await;
    }
}

impl Api {
    /// `POST /api/v2/cluster/list_nodes`: the nodes this node's registry
    /// sees, sorted by node id; Err with the answer if it is not a list.
    pub async fn list_nodes(&self) -> Result<Vec<NodeInfo>, String> {
        let (status, v) = self
            .post("/api/v2/cluster/list_nodes", serde_json::json!({}))
            .await;
        if status != 200 || v["code"] != 0 {
            return Err(format!("{status} {v}"));
        }
        serde_json::from_value(v["data"].clone()).map_err(|e| format!("{e}: {v}"))
    }

    /// Waits until `list_nodes` shows exactly the node ids `want` (sorted).
    pub async fn wait_listed(&self, want: &[String]) {
        eventually(
            &format!("{} lists the nodes {want:?}", self.base),
            Duration::from_secs(30),
            || async {
                let got: Vec<String> = self
                    .list_nodes()
                    .await?
                    .into_iter()
                    .map(|n| n.node_id)
                    .collect();
                (got == want).then_some(()).ok_or(format!("{got:?}"))
            },
        )
        .await;
    }
}
