//! The agent's own identity: its stable agent id, kept in `data_dir/agent_id`
//! once generated, so it survives restarts and upgrades.

use std::path::PathBuf;

use crate::config::AgentConfig;

/// Who this agent says it is when it registers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentIdentity {
    pub agent_id: String,
    pub cloud_id: i64,
}

/// Why the identity could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "cannot read or create the agent id file {path}: {source}; check that agent.data_dir is writable"
    )]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the agent id file {path} holds an invalid id: {source}; delete it to generate a new one"
    )]
    Invalid {
        path: PathBuf,
        source: gse_core::identity::IdentityError,
    },
}

impl AgentIdentity {
    pub fn load(cfg: &AgentConfig) -> Result<Self, IdentityError> {
        let agent_id = match &cfg.agent.agent_id {
            Some(id) => id.clone(),
            None => stored_or_new(cfg.agent.data_dir.join("agent_id"))?,
        };
        Ok(AgentIdentity {
            agent_id,
            cloud_id: cfg.agent.cloud_id,
        })
    }
}

fn stored_or_new(path: PathBuf) -> Result<String, IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim().to_string();
            gse_core::identity::validate_agent_id(&id).map_err(|source| {
                IdentityError::Invalid {
                    path: path.clone(),
                    source,
                }
            })?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // 32 hex characters, like a GSE 2.0 agent id.
            let id = hex::encode(rand::random::<[u8; 16]>());
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, format!("{id}\n")).map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            Ok(id)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/agent_id");
        let first = stored_or_new(path.clone()).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(stored_or_new(path.clone()).unwrap(), first);
        std::fs::write(&path, "bad id!").unwrap();
        assert!(matches!(
            stored_or_new(path),
            Err(IdentityError::Invalid { .. })
        ));
    }
}
