//! Unit tests of the task role over the real embedded store (SQLite in a
//! temp dir) and a fake link that records what would go to agents: the
//! harness and fakes are here; `start` (dispatch, dangerous operations),
//! `results` (agent frames, polls, screen slicing) and `lifecycle`
//! (disconnect, terminate, deadline, restart, scale) hold the tests.
//! Real agent processes are exercised by gse-testkit's end-to-end tests.

mod fake;
mod flaky;
mod lifecycle;
mod moving;
mod remote;
mod results;
mod start;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gse_core::seams::{AgentRecord, StateStore};
use gse_core::task::*;
use gse_core::{AgentKey, AgentRef};
use gse_proto::link::{RunScript, TaskOutput, TaskStatus};
use gse_proto::{Frame, MsgType};
use tokio_util::sync::CancellationToken;

use super::spec::{
    AgentQuery, AtomicQuery, AtomicSpec, ResultQuery, ScriptFileSpec, ScriptTaskSpec, TargetName,
    TargetSpec,
};
use super::writer::{MEMORY, MEMORY_TTL};
use super::{EntryView, TaskConfig, TaskError, TaskParts, TaskService};
use crate::role::alarm::{AlarmConfig, AlarmService};
use crate::role::jobs::writer::Writer as WriterState;
use crate::role::jobs::{self, Memory};
use crate::role::link::AgentFrames;
use crate::store::EmbeddedStore;
pub(crate) use fake::{FIRST_CONN, FakeLink, held};

const NODE: &str = "n1";

pub(crate) fn key(ip: &str) -> AgentKey {
    AgentKey::new(0, ip.parse().unwrap())
}

pub(crate) fn agent_record(ip: &str, node: &str, alive: bool) -> AgentRecord {
    AgentRecord {
        key: key(ip),
        agent_id: format!("id-{ip}"),
        version: "0.1.0".into(),
        hostname: "h".into(),
        os_type: "linux".into(),
        run_mode: 1,
        zone: String::new(),
        start_time_s: 1,
        node_id: node.into(),
        parent_ip: "127.0.0.1".into(),
        parent_port: 28668,
        peer_addr: format!("{ip}:5000"),
        alive,
        connected_at_ms: 1,
        last_seen_ms: 1,
        cpu_percent: 0.0,
        mem_bytes: 0,
        mem_percent: 0.0,
        p2p_addr: String::new(),
    }
}

pub(crate) use flaky::FlakyStore;

// === harness ===

struct Harness {
    dir: tempfile::TempDir,
    store: Arc<dyn StateStore>,
    link: Arc<FakeLink>,
    svc: Arc<TaskService>,
}

/// A node "n1" holding 10.0.0.1 and 10.0.0.2; 10.0.0.3 is offline;
/// 10.0.0.4 is held by node "n2".
async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("s.sqlite")).unwrap());
    let link = Arc::new(FakeLink::default());
    for (ip, node, alive) in [
        ("10.0.0.1", NODE, true),
        ("10.0.0.2", NODE, true),
        ("10.0.0.3", NODE, false),
        ("10.0.0.4", "n2", true),
    ] {
        store
            .upsert_agent(agent_record(ip, node, alive))
            .await
            .unwrap();
        if alive && node == NODE {
            link.connected.lock().insert(key(ip));
        } else if alive {
            link.remote.lock().insert(key(ip), node.into());
        }
    }
    let svc = service(&store, &link, None).await;
    Harness {
        dir,
        store,
        link,
        svc,
    }
}

async fn service(
    store: &Arc<dyn StateStore>,
    link: &Arc<FakeLink>,
    alarms: Option<Arc<AlarmService>>,
) -> Arc<TaskService> {
    TaskService::start(TaskParts {
        node_id: NODE.into(),
        config: TaskConfig::default(),
        store: store.clone(),
        sender: link.sender(),
        danger_rules: gse_core::danger::builtin_rules(),
        alarms,
    })
    .await
    .unwrap()
}

fn spec(agents: &[&str], commands: &[&str]) -> ScriptTaskSpec {
    ScriptTaskSpec {
        targets: agents
            .iter()
            .map(|a| TargetSpec {
                bk_agent_id: a.to_string(),
                agent: AgentRef::parse(a).unwrap(),
                bk_container_id: String::new(),
                user: String::new(),
            })
            .collect(),
        atomic_tasks: commands
            .iter()
            .enumerate()
            .map(|(i, c)| AtomicSpec {
                id: i as u32,
                command: c.to_string(),
                timeout_seconds: 0,
            })
            .collect(),
        ..ScriptTaskSpec::default()
    }
}

async fn poll_all(svc: &TaskService, task_id: &str) -> Vec<EntryView> {
    svc.results(task_id, &ResultQuery::default()).await.unwrap()
}

fn poll_one(agent: &str, atomic_id: u32, offset: u64, limit: Option<u64>) -> ResultQuery {
    ResultQuery {
        agents: Some(vec![AgentQuery {
            target: TargetName {
                bk_agent_id: agent.into(),
                bk_container_id: String::new(),
            },
            atomic_tasks: vec![AtomicQuery {
                atomic_id,
                offset,
                limit,
            }],
        }]),
    }
}

fn status_frame(
    task_id: &str,
    atomic_id: u32,
    status: i32,
    error_code: i32,
    exit_code: i32,
) -> Frame {
    let msg = TaskStatus {
        task_id: task_id.into(),
        atomic_id,
        status,
        error_code,
        error_msg: String::new(),
        exit_code,
        start_time_ms: 1_700_000_000_000,
        end_time_ms: if is_final(status, error_code) {
            1_700_000_001_000
        } else {
            0
        },
    };
    Frame::new(MsgType::TaskStatus, 0, &msg)
}

fn output_frame(task_id: &str, atomic_id: u32, data: &str) -> Frame {
    let msg = TaskOutput {
        task_id: task_id.into(),
        atomic_id,
        data: data.as_bytes().to_vec(),
    };
    Frame::new(MsgType::TaskOutput, 0, &msg)
}

/// Runs one atomic task to success on an agent, with `output`.
fn run_ok(svc: &TaskService, ip: &str, task_id: &str, atomic_id: u32, output: &str) {
    svc.on_frame(
        key(ip),
        status_frame(task_id, atomic_id, STATUS_RUNNING, ERR_RUNNING, 0),
    );
    svc.on_frame(key(ip), output_frame(task_id, atomic_id, output));
    svc.on_frame(
        key(ip),
        status_frame(task_id, atomic_id, STATUS_SUCCESS, ERR_NONE, 0),
    );
}

/// The writer's steps, driven by hand.
impl TaskService {
    async fn flush(&self, state: &mut WriterState) -> bool {
        jobs::writer::flush(self, false, state).await
    }

    fn evict(&self, now: Instant) {
        self.evict_within(now, MEMORY.max_entries, MEMORY.max_bytes);
    }

    fn evict_within(&self, now: Instant, max_entries: usize, max_bytes: usize) {
        let memory = Memory {
            max_entries,
            max_bytes,
            ..MEMORY
        };
        self.jobs.evict(now, &memory);
    }
}

async fn flush(svc: &TaskService) {
    assert!(svc.flush(&mut WriterState::default()).await, "flush failed");
}

fn codes(entries: &[EntryView]) -> Vec<(String, i32, i32)> {
    entries
        .iter()
        .map(|e| (e.bk_agent_id.clone(), e.status, e.error_code))
        .collect()
}
