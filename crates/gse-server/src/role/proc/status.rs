//! The last plugin status each agent reported (`ProcStatusReport`, and the
//! status carried by every operation result), for `get_proc_status_v2`.
//!
//! A full report replaces everything known of that agent; single entries
//! update one plugin. A plugin nobody reported is `status 0`
//! (unregistered), as nodeman expects for hosts GSE knows nothing of. The
//! cache is memory only: agents send a full report whenever their link
//! comes up, so a restarted node learns everything again.

use std::collections::{BTreeMap, HashMap};

use gse_core::seams::AgentRecord;
use gse_core::{AgentKey, AgentRef};
use gse_proto::link::ProcStatus;
use parking_lot::Mutex;

/// What `get_proc_status_v2` shows of one plugin on one agent.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcView {
    /// The agent as the caller named it.
    pub bk_agent_id: String,
    pub ip: String,
    pub bk_cloud_id: i64,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// 0 unregistered, 1 running, 2 stopped.
    pub status: u32,
    pub isauto: bool,
    pub version: String,
    pub pid: u32,
    /// Unix ms of the agent's last report of this plugin; 0 = never.
    pub report_time: u64,
}

/// One agent's plugins by (namespace, name).
type AgentPlugins = HashMap<(String, String), ProcStatus>;

/// Last reported plugin status per agent.
#[derive(Default)]
pub struct StatusCache {
    by_agent: Mutex<HashMap<AgentKey, AgentPlugins>>,
}

impl StatusCache {
    /// Applies a report from `agent`.
    pub fn update(&self, agent: AgentKey, full: bool, procs: Vec<ProcStatus>) {
        let mut all = self.by_agent.lock();
        let mine = all.entry(agent).or_default();
        if full {
            mine.clear();
        }
        for p in procs {
            mine.insert((p.namespace.clone(), p.name.clone()), p);
        }
    }

    /// The view of `namespace:name` on the agent the caller named `sent`
    /// (resolved to `rec` when gse knows it); `labels` are the caller's
    /// meta labels, echoed when the agent reported none.
    pub fn view(
        &self,
        sent: &str,
        agent: &AgentRef,
        rec: Option<&AgentRecord>,
        namespace: &str,
        name: &str,
    ) -> ProcView {
        let key = rec.map(|r| r.key).or(match agent {
            AgentRef::Key(k) => Some(*k),
            AgentRef::Id(_) => None,
        });
        let reported = key.and_then(|k| {
            self.by_agent
                .lock()
                .get(&k)
                .and_then(|m| m.get(&(namespace.to_string(), name.to_string())).cloned())
        });
        let mut view = ProcView {
            bk_agent_id: sent.to_string(),
            ip: key.map(|k| k.ip.to_string()).unwrap_or_default(),
            bk_cloud_id: key.map_or(0, |k| k.cloud_id),
            namespace: namespace.to_string(),
            name: name.to_string(),
            labels: BTreeMap::new(),
            status: 0,
            isauto: false,
            version: String::new(),
            pid: 0,
            report_time: 0,
        };
        if let Some(p) = reported {
            view.labels = p.labels.into_iter().collect();
            view.status = p.status;
            view.isauto = p.is_auto;
            view.version = p.version;
            view.pid = p.pid;
            view.report_time = p.changed_ms;
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(name: &str, status: u32) -> ProcStatus {
        ProcStatus {
            namespace: "nodeman".into(),
            name: name.into(),
            status,
            is_auto: true,
            ..Default::default()
        }
    }

    #[test]
    fn full_reports_replace_and_unknown_plugins_are_unregistered() {
        let cache = StatusCache::default();
        let key: AgentKey = "0:10.0.0.1".parse().unwrap();
        let r = AgentRef::Key(key);
        cache.update(key, true, vec![st("a", 1), st("b", 2)]);
        let v = cache.view("0:10.0.0.1", &r, None, "nodeman", "a");
        assert_eq!(
            (v.status, v.isauto, v.ip.as_str(), v.bk_cloud_id),
            (1, true, "10.0.0.1", 0)
        );
        cache.update(key, false, vec![st("a", 2)]);
        assert_eq!(cache.view("x", &r, None, "nodeman", "a").status, 2);
        assert_eq!(cache.view("x", &r, None, "nodeman", "b").status, 2);
        cache.update(key, true, vec![st("a", 1)]);
        let gone = cache.view("x", &r, None, "nodeman", "b");
        assert_eq!((gone.status, gone.isauto), (0, false));
        // An agent id gse does not know: unregistered, no host.
        let unknown = cache.view("abc", &AgentRef::Id("abc".into()), None, "nodeman", "a");
        assert_eq!((unknown.status, unknown.ip.as_str()), (0, ""));
    }
}
