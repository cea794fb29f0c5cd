//! A running gse-server node: the seams built from the config and the roles
//! started over them.
//!
//! [`Node::start`] is the list of role starts, each in its own file taking
//! what it needs: the common wiring (`common`: data dir, state store with
//! the configured apps, open-files budget, `[danger]` rules, shutdown), the
//! alarm role, the agent link (bound first, so the other roles can register
//! their frame families on it), the work roles (`work`: task, file and
//! proc, wherever the API or the link runs), the data path (`data`: routes,
//! snapshot cache, DataServers), the cluster registry (`cluster`; the D4
//! balancer sees every node's DataServers from then on), then the link
//! starts serving (after the alarm role has picked up the agents known
//! before this start, so that one that does not come back raises
//! `agent_lost`, `role::alarm::lost`), the API, and the announcement of
//! this node with its agent count and DataServers. [`Node::stop`] cancels
//! everything and waits for the roles to finish. Addresses actually bound
//! (port 0 allowed) are in the `Node`.

mod alarm;
mod api;
mod cluster;
mod common;
mod data;
mod link;
mod work;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use gse_core::seams::StateStore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cluster::sender::{LocalLink, Sender};
use crate::config::ServerConfig;
use crate::role::alarm::AlarmService;
use crate::role::data::DataService;
use crate::role::data::routes::RouteService;
use crate::role::file::FileService;
use crate::role::link::LinkService;
use crate::role::proc::ProcService;
use crate::role::task::TaskService;

/// A started node.
pub struct Node {
    pub config: ServerConfig,
    /// Where the HTTP API listens, if this node runs it.
    pub api_addr: Option<SocketAddr>,
    /// Where agents connect, as advertised to them, if this node runs the link.
    pub agent_addr: Option<SocketAddr>,
    pub store: Arc<dyn StateStore>,
    pub link: Option<Arc<LinkService>>,
    /// How roles reach agents (the node link sets its forwarder here).
    pub sender: Arc<Sender>,
    pub alarms: Option<Arc<AlarmService>>,
    pub tasks: Option<Arc<TaskService>>,
    pub files: Option<Arc<FileService>>,
    /// Data routes and the live route table (D5), where the API or the link runs.
    pub routes: Option<Arc<RouteService>>,
    pub procs: Option<Arc<ProcService>>,
    /// Plugin messages (COMPAT §1.3), where the API or the link runs.
    pub messages: Option<Arc<crate::role::message::MessageService>>,
    /// The DataServers (C5, D4), if this node runs the data role.
    pub data: Option<DataService>,
    shutdown: CancellationToken,
    joins: JoinSet<()>,
}

impl Node {
    /// Builds the seams and starts the roles; returns once every listener
    /// is bound.
    pub async fn start(config: ServerConfig) -> Result<Node> {
        let mut base = common::Base::open(&config).await?;
        let alarms = alarm::start(&config, &base)?;
        let bound_link = link::bind_link(&config, &base, &alarms).await?;
        let link = bound_link.as_ref().map(|l| l.service.clone());
        let sender = Sender::new(
            base.node_id.clone(),
            base.directory.clone(),
            link.clone().map(|l| l as Arc<dyn LocalLink>),
        );
        let work = work::start(&config, &mut base, &link, &sender, &alarms).await?;
        let data = data::start(&config, &mut base, &link).await?;
        let registry = cluster::start_registry(&config, &base.shutdown).await?;
        // Before the link serves: the first agents are given any node's
        // DataServer already.
        cluster::join_data_balance(&config, &base, &registry, &data.balancer);
        let agent_addr = link::serve(bound_link, &alarms, &mut base).await;
        let api_addr = api::start(&config, &mut base, &work, &data, registry.clone()).await?;
        let node_addr = cluster::start_node_link(
            &config,
            &mut base,
            registry.clone(),
            &link,
            &sender,
            &alarms,
        )
        .await?;
        cluster::spawn_balance(&config, &mut base, registry.clone(), &link);
        cluster::spawn_announce(
            &config,
            &mut base,
            registry,
            cluster::Addresses {
                api: api_addr,
                agents: agent_addr,
                node: node_addr,
            },
            link.clone(),
            data.servers
                .as_ref()
                .map(|d| d.servers.iter().map(|s| s.load.clone()).collect())
                .unwrap_or_default(),
        );

        tracing::info!(node = %base.node_id, api = ?api_addr, agents = ?agent_addr, store = base.store.kind(), "gse-server node started");
        Ok(Node {
            config,
            api_addr,
            agent_addr,
            store: base.store,
            link,
            sender,
            alarms,
            tasks: work.tasks,
            files: work.files,
            routes: data.routes,
            procs: work.procs,
            messages: work.messages,
            data: data.servers,
            shutdown: base.shutdown,
            joins: base.joins,
        })
    }

    /// Cancelling this token stops the node.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops every role, waiting up to `grace` for them to finish.
    pub async fn stop(mut self, grace: Duration) {
        self.shutdown.cancel();
        let all = async { while self.joins.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("some roles did not stop within {grace:?}; exiting anyway");
        }
    }
}
