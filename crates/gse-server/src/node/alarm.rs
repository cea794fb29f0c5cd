//! The alarm role where `[node] roles` selects it: lost-agent grace,
//! alarm log and webhook.

use std::sync::Arc;

use anyhow::{Context, Result};

use super::common::Base;
use crate::config::{Role, ServerConfig};
use crate::role::alarm::AlarmService;

pub(super) fn start(config: &ServerConfig, base: &Base) -> Result<Option<Arc<AlarmService>>> {
    if !config.has_role(Role::Alarm) {
        return Ok(None);
    }
    let svc = AlarmService::start(
        config.alarm.clone(),
        base.node_id.clone(),
        base.store.clone(),
        base.shutdown.clone(),
    )
    .context("cannot start the alarm role")?;
    Ok(Some(svc))
}
