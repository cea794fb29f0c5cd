//! `[data]` section of the agent config (in `gse-agent-config`).

pub use gse_agent_config::data::*;
