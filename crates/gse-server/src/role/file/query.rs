//! Polls (`get_transfer_file_result`): entries from memory for live and
//! recent transfers, from the store for older ones, optionally only those
//! of the named agents.
//!
//! A caller may name an agent by the `bk_agent_id` it used at the start, or
//! by its other name (`cloud:ip` or real agent id); the answer always
//! echoes the names used at the start.

use std::collections::HashSet;

use gse_core::AgentRef;
use gse_core::seams::state_store::FileEntryRecord;

use super::model::AgentSlot;
use super::spec::AgentName;
use super::{FileError, FileService};

impl FileService {
    /// The transfer's entries in answer order (per task: its upload, then
    /// its downloads); with `agents`, only uploads whose source and
    /// downloads whose target is named.
    pub async fn results(
        &self,
        task_id: &str,
        agents: Option<&[AgentName]>,
    ) -> Result<Vec<FileEntryRecord>, FileError> {
        let names = agents.filter(|a| !a.is_empty()).map(NameSet::new);
        let keep = |e: &FileEntryRecord| names.as_ref().is_none_or(|n| n.matches_entry(e));
        if let Some(t) = self.live(task_id) {
            let st = t.state.lock();
            return Ok(st.entries.iter().filter(|e| keep(e)).cloned().collect());
        }
        match self.store.get_file_transfer(task_id).await? {
            Some(record) => Ok(record.entries.into_iter().filter(|e| keep(e)).collect()),
            None => Err(FileError::NotFound(task_id.to_string())),
        }
    }
}

/// The agents a poll or terminate names, under every form they may take.
pub(super) struct NameSet {
    names: HashSet<(String, String)>,
}

impl NameSet {
    pub fn new(agents: &[AgentName]) -> Self {
        let mut names = HashSet::with_capacity(agents.len() * 2);
        for a in agents {
            names.insert((a.bk_agent_id.clone(), a.bk_container_id.clone()));
            if let Ok(normal) = AgentRef::parse(&a.bk_agent_id) {
                names.insert((normal.to_string(), a.bk_container_id.clone()));
            }
        }
        NameSet { names }
    }

    fn matches(&self, names: [&str; 3], container: &str) -> bool {
        names
            .iter()
            .filter(|n| !n.is_empty())
            .any(|n| self.names.contains(&(n.to_string(), container.to_string())))
    }

    pub fn matches_slot(&self, slot: &AgentSlot) -> bool {
        let key = slot.key.map(|k| k.to_string()).unwrap_or_default();
        self.matches([&slot.name, &key, &slot.real_id], &slot.container)
    }

    /// An upload by its source, a download by its target.
    pub fn matches_entry(&self, e: &FileEntryRecord) -> bool {
        let (name, container) = match e.mode {
            0 => (&e.source_agent_id, &e.source_container_id),
            _ => (&e.dest_agent_id, &e.dest_container_id),
        };
        self.matches([name, &e.agent_key, &e.agent_real_id], container)
    }
}
