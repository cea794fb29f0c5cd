//! The work roles, where the API or the link runs: task (script tasks),
//! file (transfers), proc (plugin operations) and message (plugin
//! messages). Each takes work from the
//! API to this node's agents and registers the link's frames of its family
//! (`add_frame_handler(MsgFamily, …)`); their writers and dispatchers run
//! in the node's task set.

use std::sync::Arc;

use anyhow::{Context, Result};
use gse_core::seams::StateStore;

use super::common::Base;
use crate::cluster::sender::Sender;
use crate::config::{Role, ServerConfig};
use crate::role::alarm::AlarmService;
use crate::role::file::{FileLink, FileParts, FileService};
use crate::role::link::LinkService;
use crate::role::message::{MessageParts, MessageService};
use crate::role::proc::{ProcParts, ProcService};
use crate::role::task::{TaskParts, TaskService};

/// The work roles this node runs (all or none).
pub(super) struct WorkRoles {
    pub tasks: Option<Arc<TaskService>>,
    pub files: Option<Arc<FileService>>,
    pub procs: Option<Arc<ProcService>>,
    pub messages: Option<Arc<MessageService>>,
}

/// Starts the task, file and proc roles and spawns their loops.
pub(super) async fn start(
    config: &ServerConfig,
    base: &mut Base,
    link: &Option<Arc<LinkService>>,
    sender: &Arc<Sender>,
    alarms: &Option<Arc<AlarmService>>,
) -> Result<WorkRoles> {
    let danger = Arc::new(
        gse_core::danger::DangerPolicy::new(&base.danger_rules)
            .context("cannot use the dangerous-operation rules of [danger]")?,
    );
    let store = &base.store;
    let tasks = start_task_role(
        config,
        store,
        link,
        sender,
        alarms,
        base.danger_rules.clone(),
    )
    .await?;
    if let Some(svc) = &tasks {
        base.joins.spawn(svc.clone().run(base.shutdown.clone()));
    }
    let files = start_file_role(config, store, link, sender).await?;
    if let Some(svc) = &files {
        base.joins.spawn(svc.clone().run(base.shutdown.clone()));
    }
    let procs = start_proc_role(config, store, link, sender, alarms, danger);
    if let Some(svc) = &procs {
        base.joins.spawn(svc.clone().run(base.shutdown.clone()));
    }
    let messages = start_message_role(config, store, link, sender).await?;
    Ok(WorkRoles {
        tasks,
        files,
        procs,
        messages,
    })
}

/// Starts the task role where the API or the link runs (it takes script
/// tasks from the API to this node's agents and their results back) and
/// hands it the link's task frames. The caller spawns its writer.
async fn start_task_role(
    config: &ServerConfig,
    store: &Arc<dyn StateStore>,
    link: &Option<Arc<LinkService>>,
    sender: &Arc<Sender>,
    alarms: &Option<Arc<AlarmService>>,
    danger_rules: Vec<gse_core::danger::DangerRuleSpec>,
) -> Result<Option<Arc<TaskService>>> {
    if !(config.has_role(Role::Api) || config.has_role(Role::Link)) {
        return Ok(None);
    }
    let svc = TaskService::start(TaskParts {
        node_id: config.node.id.clone(),
        config: config.task.clone(),
        store: store.clone(),
        sender: sender.clone(),
        danger_rules,
        alarms: alarms.clone(),
    })
    .await
    .context("cannot start the task role")?;
    if let Some(link) = link {
        link.add_frame_handler(gse_proto::MsgFamily::Task, svc.clone());
    }
    Ok(Some(svc))
}

/// Starts the file role where the API or the link runs (it takes file
/// transfers from the API to this node's agents and relays their direct
/// pieces) and hands it the link's file frames. The caller spawns its
/// writer.
async fn start_file_role(
    config: &ServerConfig,
    store: &Arc<dyn StateStore>,
    link: &Option<Arc<LinkService>>,
    sender: &Arc<Sender>,
) -> Result<Option<Arc<FileService>>> {
    if !(config.has_role(Role::Api) || config.has_role(Role::Link)) {
        return Ok(None);
    }
    let svc = FileService::start(FileParts {
        node_id: config.node.id.clone(),
        config: config.file.clone(),
        store: store.clone(),
        link: link.clone().map(|l| l as Arc<dyn FileLink>),
        sender: sender.clone(),
    })
    .await
    .context("cannot start the file role")?;
    if let Some(link) = link {
        link.add_frame_handler(gse_proto::MsgFamily::File, svc.clone());
    }
    Ok(Some(svc))
}

/// Starts the proc role where the API or the link runs (it takes plugin
/// process operations from the API to this node's agents and their
/// results, status and alarms back) and hands it the link's plugin frames.
/// The caller spawns its dispatcher.
fn start_proc_role(
    config: &ServerConfig,
    store: &Arc<dyn StateStore>,
    link: &Option<Arc<LinkService>>,
    sender: &Arc<Sender>,
    alarms: &Option<Arc<AlarmService>>,
    danger: Arc<gse_core::danger::DangerPolicy>,
) -> Option<Arc<ProcService>> {
    if !(config.has_role(Role::Api) || config.has_role(Role::Link)) {
        return None;
    }
    let svc = ProcService::new(ProcParts {
        node_id: config.node.id.clone(),
        config: config.proc.clone(),
        store: store.clone(),
        sender: sender.clone(),
        alarms: alarms.clone(),
        danger,
    });
    if let Some(link) = link {
        link.add_frame_handler(gse_proto::MsgFamily::Proc, svc.clone());
    }
    Some(svc)
}

/// Starts the message role where the API or the link runs (plugin
/// messages from the API to this node's agents, their answers, and the
/// plugins' messages up to the slots' callbacks) and hands it the link's
/// plugin-message frames.
async fn start_message_role(
    config: &ServerConfig,
    store: &Arc<dyn StateStore>,
    link: &Option<Arc<LinkService>>,
    sender: &Arc<Sender>,
) -> Result<Option<Arc<MessageService>>> {
    if !(config.has_role(Role::Api) || config.has_role(Role::Link)) {
        return Ok(None);
    }
    let parts = MessageParts {
        config: config.plugin_message.clone(),
        store: store.clone(),
        sender: sender.clone(),
    };
    // Plain tokens are hashed here (slow on purpose): off the async threads.
    let svc = tokio::task::spawn_blocking(move || MessageService::new(parts))
        .await
        .context("cannot start the message role")?;
    if let Some(link) = link {
        link.add_frame_handler(gse_proto::MsgFamily::PluginMessage, svc.clone());
    }
    Ok(Some(svc))
}
