//! gse-launch: starting gse on this host.
//!
//! - [`agent`]: `gse-agent` child processes with identity IPs 127.0.0.i,
//!   their configs written from [`gse_agent_config`] (quickstart, benches;
//!   the testkit builds its agent configs with [`agent::local_config`]).
//! - [`server`]: a `gse-server run` child process on a config someone else
//!   wrote, ready once `GET /healthz` answers 200.
//! - [`quickstart`]: the `gse-server quickstart` machinery (directory,
//!   certificates, app, agents, quickstart.json, signals), and the node
//!   processes of a quickstart cluster ([`quickstart::cluster`]: started,
//!   watched, reported when they exit). The node configs are written and
//!   the node(s) started by the caller through
//!   [`quickstart::QuickstartNode`]: this crate
//!   sits below gse-server, which depends on it for its `quickstart`
//!   subcommand, so it must not depend on gse-server (or on gse-agent).

pub mod agent;
pub mod quickstart;
pub mod server;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The built binary `name` in the directory of this executable (where
/// `cargo build --bins` and the packages put every gse binary).
pub fn beside_current_exe(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the current executable")?;
    let bin = exe.with_file_name(name);
    if !bin.is_file() {
        bail!(
            "cannot find the {name} binary at {}; build it (cargo build --release --bins)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The last `lines` lines of a log file ("" if it cannot be read), for
/// errors about a child that exited.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
