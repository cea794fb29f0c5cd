//! `gse-agent` configuration: the types live in `gse-agent-config` so that
//! tools writing agent configs (quickstart, testkit, benches) need not build
//! the agent.

pub use gse_agent_config::*;
