//! The agent link where `[node] roles` selects it, in two steps: bound
//! first (the other roles register their frame handlers on it), served last
//! (once every handler is in place and the alarm role has resumed the
//! agents known before this start).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use super::common::{Base, bind};
use crate::config::{Role, ServerConfig};
use crate::role::alarm::AlarmService;
use crate::role::link::{LinkParts, LinkService};

/// The link, bound but not yet serving.
pub(super) struct BoundLink {
    pub service: Arc<LinkService>,
    listener: TcpListener,
    /// Where agents connect, as advertised to them (`node.advertise_ip`).
    advertised: SocketAddr,
}

/// Binds `link.listen` and builds the link service, if this node runs it.
pub(super) async fn bind_link(
    config: &ServerConfig,
    base: &Base,
    alarms: &Option<Arc<AlarmService>>,
) -> Result<Option<BoundLink>> {
    if !config.has_role(Role::Link) {
        return Ok(None);
    }
    let listener = bind(config.link.listen, "agents", "link.listen").await?;
    let advertised = config.agent_addr(listener.local_addr()?);
    let service = LinkService::new(LinkParts {
        node_id: base.node_id.clone(),
        config: config.link.clone(),
        tls_files: config.tls.clone(),
        store: base.store.clone(),
        directory: base.directory.clone(),
        alarms: alarms.clone(),
        advertise_ip: config.node.advertise_ip,
        danger_rules: base.danger_rules.clone(),
        pending: base.budget.link_pending_limits(),
        enroll: config
            .enroll
            .enabled
            .then(|| crate::role::link::enroll::Enroller {
                tokens: crate::role::link::enroll::Tokens::new(
                    config.enroll.tokens_path(&config.node.data_dir),
                ),
                config: config.enroll.clone(),
                ca_cert: config.tls.ca_file.clone(),
            }),
        shutdown: base.shutdown.clone(),
    })
    .context("cannot load the TLS material in [tls]")?;
    if let Some(alarms) = alarms {
        // Lost agents' hosts are probed where they can be reached: from
        // here, or by their area's proxy linked to this node (C11).
        alarms.set_prober(service.clone());
    }
    Ok(Some(BoundLink {
        service,
        listener,
        advertised,
    }))
}

/// Starts serving agents; returns the address advertised to them.
pub(super) async fn serve(
    link: Option<BoundLink>,
    alarms: &Option<Arc<AlarmService>>,
    base: &mut Base,
) -> Option<SocketAddr> {
    let link = link?;
    // Before the link serves: an agent that reconnects at once finds its
    // grace already running and cancels it.
    if let Some(alarms) = alarms {
        alarms.resume_after_restart().await;
    }
    base.joins.spawn(link.service.clone().serve(link.listener));
    Some(link.advertised)
}
