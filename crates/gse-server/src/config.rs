//! `gse-server` configuration (TOML), one struct per section.
//!
//! Loading is three steps (CONVENTIONS §4): parse ([`ServerConfig::from_toml`]),
//! fill derived values ([`ServerConfig::resolve`]: node id,
//! default paths under `data_dir`), then validate ([`ServerConfig::validate`],
//! pure, reports every problem at once) — all before anything binds.
//! Role sections live beside their roles and are re-exported here.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use gse_core::danger::{DangerAction, DangerPolicy, DangerRuleSpec, builtin_rules};
use gse_core::private_files::{Exposure, exposure};
use gse_core::tls::TlsFiles;
use serde::{Deserialize, Serialize};

pub use crate::store::config::{StoreConfig, StoreKind};

pub use crate::role::alarm::AlarmConfig;
pub use crate::role::api::ApiConfig;
pub use crate::role::data::DataConfig;
pub use crate::role::file::FileConfig;
pub use crate::role::link::LinkConfig;
pub use crate::role::task::TaskConfig;

/// The whole server config file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub node: NodeConfig,
    pub tls: TlsFiles,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub link: LinkConfig,
    #[serde(default)]
    pub alarm: AlarmConfig,
    #[serde(default)]
    pub store: StoreConfig,
    /// `[cluster]`: ZooKeeper membership (K1); empty: a single node.
    #[serde(default)]
    pub cluster: crate::cluster::ClusterConfig,
    #[serde(default)]
    pub danger: DangerConfig,
    #[serde(default)]
    pub task: TaskConfig,
    #[serde(default)]
    pub file: FileConfig,
    /// `[data]`: DataServers (C5, D4).
    #[serde(default)]
    pub data: DataConfig,
    /// `[proc]`: plugin process operations (D2, C8).
    #[serde(default)]
    pub proc: crate::role::proc::ProcConfig,
    /// `[plugin_message]`: plugin messages' slots (COMPAT §1.3).
    #[serde(default)]
    pub plugin_message: crate::role::message::MessageConfig,
    /// `[enroll]`: agents joining with a token (`gse-agent join`).
    #[serde(default)]
    pub enroll: crate::role::link::enroll::EnrollConfig,
}

/// `[danger]`: dangerous-operation rules (T6, T7), checked by the server
/// before dispatch and by agents before running.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DangerConfig {
    /// Start from the built-in rules (see docs/DANGER.md).
    #[serde(default = "default_true")]
    pub builtin: bool,
    /// Change a rule's action: `rule_name = "alarm"` or `"block"`.
    #[serde(default)]
    pub actions: BTreeMap<String, DangerAction>,
    /// More rules: `{ name, pattern, action, description }`.
    #[serde(default)]
    pub rules: Vec<DangerRuleSpec>,
}

fn default_true() -> bool {
    true
}

impl Default for DangerConfig {
    fn default() -> Self {
        DangerConfig {
            builtin: true,
            actions: BTreeMap::new(),
            rules: Vec::new(),
        }
    }
}

impl DangerConfig {
    /// The rule set this section describes, or what is wrong with it.
    pub fn resolve(&self) -> Result<Vec<DangerRuleSpec>, Vec<String>> {
        let mut rules = if self.builtin {
            builtin_rules()
        } else {
            Vec::new()
        };
        rules.extend(self.rules.iter().cloned());
        let mut problems = Vec::new();
        for (name, action) in &self.actions {
            match rules.iter_mut().find(|r| &r.name == name) {
                Some(rule) => rule.action = *action,
                None => problems.push(format!(
                    "danger.actions names rule {name:?}, which does not exist"
                )),
            }
        }
        if let Err(e) = DangerPolicy::new(&rules) {
            problems.push(format!("danger.rules: {e}"));
        }
        if problems.is_empty() {
            Ok(rules)
        } else {
            Err(problems)
        }
    }
}

/// `[node]`: who this node is and where it keeps its state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Stable name of this node in the cluster; default: the host name.
    #[serde(default)]
    pub id: String,
    /// Directory for the embedded store and default log/alarm files.
    pub data_dir: PathBuf,
    /// IP reported to agents as their parent (`parent_ip`) and for
    /// DataServers on a wildcard address; default: the address each agent
    /// connected to. A loopback value is never told to a remote agent.
    #[serde(default)]
    pub advertise_ip: Option<IpAddr>,
    /// K5 region of this node; empty = cluster-wide.
    #[serde(default)]
    pub region: String,
    /// Roles this node runs; default: all of them.
    #[serde(default = "default_roles")]
    pub roles: Vec<Role>,
}

/// A server role that `[node] roles` can select.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Api,
    Link,
    Alarm,
    /// DataServers: agents' data links, routes to sinks (C5).
    Data,
}

fn default_roles() -> Vec<Role> {
    vec![Role::Api, Role::Link, Role::Alarm, Role::Data]
}

/// Why the config cannot be used; lists every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("config file {path} has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl ServerConfig {
    /// Reads, parses, resolves and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.resolve();
        cfg.validate().map_err(|problems| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })?;
        Ok(cfg)
    }

    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("server config always serialises")
    }

    /// Fills derived values (node id, paths under data_dir)
    /// and raises values an older config may hold (logged at WARN).
    pub fn resolve(&mut self) {
        if self.node.id.is_empty() {
            self.node.id = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "gse-node".into());
        }
        if self.alarm.log_file.is_none() {
            self.alarm.log_file = Some(self.node.data_dir.join("alarms.jsonl"));
        }
        self.data.resolve();
    }

    /// Pure checks; every problem names its key and value.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = self.cluster.problems();
        problems.extend(self.cluster_problems());
        if self.cluster.enabled()
            && self.link.listen.ip().is_unspecified()
            && self.node.advertise_ip.is_none()
        {
            problems.push(format!(
                "node.advertise_ip is unset while link.listen = \"{}\" is a wildcard: a cluster member must tell \
                 the other nodes (and the agents they send here) its address; set node.advertise_ip",
                self.link.listen
            ));
        }
        if let Some(problem) = node_id_problem(&self.node.id) {
            problems.push(problem);
        }
        if self.node.roles.is_empty() {
            problems
                .push("node.roles is empty: name at least one of api, link, alarm, data".into());
        }
        for (key, path) in [
            ("tls.ca_file", &self.tls.ca_file),
            ("tls.cert_file", &self.tls.cert_file),
            ("tls.key_file", &self.tls.key_file),
        ] {
            if path.as_os_str().is_empty() {
                problems.push(format!("{key} is empty"));
            }
        }
        problems.extend(self.link.problems());
        problems.extend(self.store.problems());
        if let Err(p) = self.danger.resolve() {
            problems.extend(p);
        }
        problems.extend(self.alarm.problems());
        problems.extend(self.task.problems());
        problems.extend(self.file.problems());
        if self.has_role(Role::Data) {
            problems.extend(self.data.problems());
        }
        problems.extend(self.proc.problems());
        problems.extend(self.plugin_message.problems());
        problems.extend(self.enroll.problems());
        problems.extend(self.api.problems());
        if self.api.max_hosts_per_call == 0 {
            problems.push("api.max_hosts_per_call = 0: it must be at least 1".into());
        }
        if self.api.max_body_bytes < 1024 {
            problems.push(format!(
                "api.max_body_bytes = {}: it must be at least 1024",
                self.api.max_body_bytes
            ));
        }
        problems.extend(self.api.apps.iter().filter_map(|app| app.problem()));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.node.roles.contains(&role)
    }

    /// Path of the embedded store's SQLite file.
    pub fn store_path(&self) -> PathBuf {
        self.store
            .path
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("state.sqlite"))
    }

    /// A config with every default, for `quickstart` and tests.
    pub fn with_defaults(data_dir: PathBuf, tls: TlsFiles) -> Self {
        ServerConfig {
            node: NodeConfig {
                id: String::new(),
                data_dir,
                advertise_ip: None,
                region: String::new(),
                roles: default_roles(),
            },
            tls,
            api: ApiConfig::default(),
            link: LinkConfig::default(),
            alarm: AlarmConfig::default(),
            store: StoreConfig::default(),
            cluster: Default::default(),
            danger: DangerConfig::default(),
            task: TaskConfig::default(),
            file: FileConfig::default(),
            data: DataConfig::default(),
            proc: Default::default(),
            plugin_message: Default::default(),
            enroll: Default::default(),
        }
    }

    /// Files and directories of this config that hold secrets and that
    /// other local users can read (`check-config` warns, `run` logs them):
    /// the config file itself when it lists a plain app secret, the TLS
    /// key, the data dir and the state store.
    pub fn exposures(&self, config_file: &Path) -> Vec<Exposure> {
        let mut checks = vec![
            (self.tls.key_file.clone(), "the server's private TLS key"),
            (
                self.enroll.ca_key_file.clone(),
                "the CA's private key (enroll.ca_key_file)",
            ),
            (
                self.node.data_dir.clone(),
                "the node's state (app secret hashes, task records)",
            ),
            (self.store_path(), "the state store"),
        ];
        if self.api.apps.iter().any(|a| a.app_secret.is_some()) {
            checks.insert(
                0,
                (
                    config_file.to_path_buf(),
                    "plain-text app secrets ([[api.apps]] app_secret; prefer app_secret_hash)",
                ),
            );
        } else if self.plugin_message.slots.iter().any(|s| s.token.is_some()) {
            checks.insert(
                0,
                (
                    config_file.to_path_buf(),
                    "plain-text slot tokens ([[plugin_message.slots]] token; prefer token_hash)",
                ),
            );
        }
        checks
            .iter()
            .filter_map(|(path, holds)| exposure(path, holds))
            .collect()
    }

    /// This config with plain secrets replaced, for printing.
    pub fn redacted(&self) -> ServerConfig {
        let mut shown = self.clone();
        for app in &mut shown.api.apps {
            if app.app_secret.is_some() {
                app.app_secret = Some("<hidden>".into());
            }
        }
        for slot in &mut shown.plugin_message.slots {
            if slot.token.is_some() {
                slot.token = Some("<hidden>".into());
            }
        }
        shown
    }

    /// What a cluster member (`[cluster] zookeeper`) needs besides its
    /// `[cluster]` keys: the shared store, the link role where it runs the
    /// API (the agents' answers to work it owns come back through it), and
    /// an address to tell the other nodes.
    fn cluster_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.cluster.enabled() {
            return p;
        }
        if !self.store.uses_redis() {
            p.push(
                "cluster.zookeeper is set but store.redis is not: the nodes of a cluster share agents, tasks and \
                 routes in Redis; set store.redis = \"redis://host:port\" (or store.redis_sentinels and \
                 store.redis_master_name for Sentinel), the same on every node"
                    .into(),
            );
        }
        if self.has_role(Role::Api) && !self.has_role(Role::Link) {
            p.push(
                "node.roles has api but not link: in a cluster the agents' answers to work this node's API \
                 starts come back over the node link to the link role; add \"link\" to node.roles"
                    .into(),
            );
        }
        if self.cluster.node_listen.ip().is_unspecified() && self.node.advertise_ip.is_none() {
            p.push(format!(
                "node.advertise_ip is unset while cluster.node_listen = \"{}\" is a wildcard: the other nodes \
                 need an address to reach this one; set node.advertise_ip",
                self.cluster.node_listen
            ));
        }
        p
    }

    /// The agent-link address for this node's registry entry and
    /// quickstart: the advertised IP, or the bound address.
    pub fn agent_addr(&self, bound: SocketAddr) -> SocketAddr {
        SocketAddr::new(self.node.advertise_ip.unwrap_or(bound.ip()), bound.port())
    }
}

/// Longest `node.id`.
const NODE_ID_MAX: usize = 128;

/// Why `id` cannot name a node, if it cannot: it names the node's
/// ZooKeeper znode and its agents' claims in Redis, so it is a host-name
/// like word (letters, digits, `.`, `-`, `_`, `:`). Empty is filled in
/// from the host name by [`ServerConfig::resolve`].
fn node_id_problem(id: &str) -> Option<String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':');
    if id.len() > NODE_ID_MAX || !id.chars().all(ok) {
        Some(format!(
            "node.id = {id:?}: a node id is at most {NODE_ID_MAX} letters, digits, '.', '-', '_' or ':' \
             (it names the node in ZooKeeper and in Redis); pick another, or leave it out to use the host name"
        ))
    } else {
        None
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const MINIMAL: &str = r#"
[node]
data_dir = "/tmp/gse-test"
[tls]
ca_file = "ca.crt"
cert_file = "s.crt"
key_file = "s.key"
"#;

    #[test]
    fn minimal_file_gets_defaults() {
        let mut cfg = ServerConfig::from_toml(MINIMAL).unwrap();
        cfg.resolve();
        cfg.validate().unwrap();
        assert_eq!(cfg.link.listen.port(), 28668);
        assert_eq!(cfg.node.advertise_ip, None, "derived per agent link");
        assert_eq!(
            cfg.alarm.log_file.as_deref(),
            Some(Path::new("/tmp/gse-test/alarms.jsonl"))
        );
        assert!(cfg.has_role(Role::Api) && cfg.has_role(Role::Link));
        // Round trip through the serialised form.
        let again = ServerConfig::from_toml(&cfg.to_toml()).unwrap();
        assert_eq!(again, cfg);
    }

    #[test]
    fn shipped_example_matches_the_defaults() {
        let mut example =
            ServerConfig::from_toml(include_str!("../../../etc/gse-server.toml")).unwrap();
        example.resolve();
        example.validate().unwrap();
        let mut defaults =
            ServerConfig::with_defaults(example.node.data_dir.clone(), example.tls.clone());
        defaults.resolve();
        assert_eq!(
            example, defaults,
            "etc/gse-server.toml drifted from the defaults"
        );
    }

    #[test]
    fn a_config_from_before_the_record_size_fix_still_loads() {
        // The old default written out explicitly (issue 9 item 8 raised it).
        let text = format!("{MINIMAL}\n[data]\nmax_batch_bytes = 8388608\n");
        let mut cfg = ServerConfig::from_toml(&text).unwrap();
        cfg.resolve();
        cfg.validate().unwrap();
        assert_eq!(cfg.data.max_batch_bytes, gse_proto::MAX_BATCH_BYTES);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = format!("{MINIMAL}\n[link]\nlisten_port = 1\n");
        let err = ServerConfig::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("listen_port"), "{err}");
    }

    #[test]
    fn a_node_id_is_a_host_name_like_word() {
        for good in ["node-1", "gse.example.com", "n_2:a", ""] {
            assert_eq!(node_id_problem(good), None, "{good:?}");
        }
        for bad in ["a/b", "two words", "line\nbreak", &"x".repeat(129)] {
            let problem = node_id_problem(bad).expect(bad);
            assert!(problem.starts_with("node.id = "), "{problem}");
        }
    }

    #[test]
    fn every_problem_is_reported() {
        let mut cfg = ServerConfig::from_toml(MINIMAL).unwrap();
        cfg.node.roles.clear();
        cfg.api.max_hosts_per_call = 0;
        cfg.resolve();
        let problems = cfg.validate().unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn a_cluster_member_needs_redis_the_link_with_the_api_and_an_address() {
        let text = format!("{MINIMAL}\n[cluster]\nzookeeper = [\"zk1:2181\"]\n");
        let mut cfg = ServerConfig::from_toml(&text).unwrap();
        cfg.node.roles = vec![Role::Api];
        cfg.link.listen = "10.0.0.1:28668".parse().unwrap();
        cfg.resolve();
        let problems = cfg.validate().unwrap_err();
        for key in ["store.redis", "add \"link\"", "cluster.node_listen"] {
            assert!(
                problems.iter().any(|p| p.contains(key)),
                "{key}: {problems:?}"
            );
        }
        cfg.store.redis = Some("redis://10.0.0.9:6379".into());
        cfg.node.roles = vec![Role::Api, Role::Link];
        cfg.node.advertise_ip = Some("10.0.0.1".parse().unwrap());
        cfg.validate().unwrap();
    }
}
