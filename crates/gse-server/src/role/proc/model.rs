//! A process-operation task in memory: its operations, one entry per
//! (operation, target agent), and each entry's state.
//!
//! An entry is `Queued` until the dispatcher sends it, `Sent` until the
//! agent answers (or its link ends, or the answer is overdue), then
//! `Done` with its code. A task none of whose entries has left the queue
//! is *queued* (envelope 1000115 in results).

use std::collections::BTreeMap;

use gse_core::{AgentKey, AgentRef};
use gse_proto::link::ProcSpec;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

use super::codes::*;
use crate::cluster::sender::Delivery;
use crate::role::jobs::Job;

/// One operation of `operate_proc_multi`, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct OpRequest {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub op_type: u32,
    /// The agents as the caller named them, and what that name means.
    pub targets: Vec<(String, AgentRef)>,
    pub spec: ProcSpec,
}

/// Where an entry is.
#[derive(Clone, Debug, PartialEq)]
pub enum EntryState {
    Queued,
    Sent {
        agent: AgentKey,
        /// The agent's claim the op was delivered to.
        held: Delivery,
        deadline: Instant,
    },
    Done(Answer),
}

impl EntryState {
    /// The final state with `answer`, counted in the metrics.
    pub fn done(answer: Answer) -> Self {
        super::metrics::entry_final(answer.error_code);
        EntryState::Done(answer)
    }
}

/// A finished entry's answer, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = ProcEntryAnswer)]
pub struct Answer {
    /// 0 success, 115 still running, 117 agent abnormal (unknown, offline
    /// or lost), 828 already running, 829 not running, 832 unknown op
    /// type, 836 not alive after start, 65535 failed.
    pub error_code: i32,
    pub error_msg: String,
    /// What the agent reported (the operation's output).
    pub content: String,
}

impl Answer {
    pub fn new(code: i32, msg: impl Into<String>) -> Self {
        Answer {
            error_code: code,
            error_msg: msg.into(),
            content: String::new(),
        }
    }

    fn running() -> Self {
        Answer::new(CODE_RUNNING, "running")
    }
}

/// One (operation, agent) pair.
#[derive(Clone, Debug)]
pub struct Entry {
    /// `"<agent_id>:<namespace>:<name>"`, the agent as the caller named it.
    pub key: String,
    pub op: usize,
    pub target: usize,
    pub state: EntryState,
}

/// A task and its entries.
pub struct ProcTask {
    pub id: String,
    pub created: Instant,
    pub ops: Vec<OpRequest>,
    pub state: Mutex<TaskState>,
}

/// The changing part of a task.
pub struct TaskState {
    pub entries: Vec<Entry>,
    /// True once the dispatcher took the task from the queue.
    pub dispatched: bool,
}

/// The result key nodeman reads: `agent:namespace:name`.
pub fn result_key(agent: &str, namespace: &str, name: &str) -> String {
    format!("{agent}:{namespace}:{name}")
}

// === impl ProcTask ===

impl Job for ProcTask {
    fn id(&self) -> &str {
        &self.id
    }
}

impl ProcTask {
    /// A new task; entries of an unknown op type are answered 832 at once.
    pub fn new(id: String, ops: Vec<OpRequest>) -> Self {
        let mut entries = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            for (t, (agent, _)) in op.targets.iter().enumerate() {
                let state = if known_op(op.op_type) {
                    EntryState::Queued
                } else {
                    EntryState::done(Answer::new(
                        CODE_UNKNOWN_OP,
                        format!(
                            "op_type {} is not one of 0 start, 1 stop, 2 status, 3 delegate, 4 undelegate, 7 restart, 8 reload, 9 kill",
                            op.op_type
                        ),
                    ))
                };
                entries.push(Entry {
                    key: result_key(agent, &op.namespace, &op.name),
                    op: i,
                    target: t,
                    state,
                });
            }
        }
        ProcTask {
            id,
            created: Instant::now(),
            ops,
            state: Mutex::new(TaskState {
                entries,
                dispatched: false,
            }),
        }
    }

    /// Whether any entry still waits to be sent or answered.
    pub fn unfinished(&self) -> bool {
        self.state
            .lock()
            .entries
            .iter()
            .any(|e| !matches!(e.state, EntryState::Done(_)))
    }

    /// Every entry's answer by key (115 while queued or sent), and whether
    /// the task is still queued.
    pub fn answers(&self) -> (bool, BTreeMap<String, Answer>) {
        let st = self.state.lock();
        let map = st
            .entries
            .iter()
            .map(|e| {
                let a = match &e.state {
                    EntryState::Done(a) => a.clone(),
                    _ => Answer::running(),
                };
                (e.key.clone(), a)
            })
            .collect();
        (!st.dispatched, map)
    }
}

/// Op types the agent knows.
pub fn known_op(op_type: u32) -> bool {
    matches!(op_type, 0..=4 | 7..=9)
}

impl TaskState {
    /// Closes entry `index` with `answer` if it is still open and, when
    /// `from` is given, was sent to that agent. True if it changed.
    pub fn close(&mut self, index: usize, from: Option<AgentKey>, answer: Answer) -> bool {
        let Some(e) = self.entries.get_mut(index) else {
            return false;
        };
        let matches = match (&e.state, from) {
            (EntryState::Done(_), _) => false,
            (EntryState::Sent { agent, .. }, Some(from)) => *agent == from,
            (_, Some(_)) => false,
            (_, None) => true,
        };
        if matches {
            e.state = EntryState::done(answer);
        }
        matches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(op_type: u32, agents: &[&str]) -> OpRequest {
        OpRequest {
            namespace: "nodeman".into(),
            name: "beat".into(),
            labels: BTreeMap::new(),
            op_type,
            targets: agents
                .iter()
                .map(|a| (a.to_string(), AgentRef::parse(a).unwrap()))
                .collect(),
            spec: ProcSpec::default(),
        }
    }

    #[test]
    fn keys_name_the_agent_as_sent_and_unknown_ops_answer_832() {
        let t = ProcTask::new(
            "T".into(),
            vec![op(0, &["0:10.0.0.1", "abc"]), op(5, &["0:10.0.0.2"])],
        );
        let (queued, map) = t.answers();
        assert!(queued);
        assert_eq!(map["0:10.0.0.1:nodeman:beat"].error_code, 115);
        assert_eq!(map["abc:nodeman:beat"].error_code, 115);
        assert_eq!(map["0:10.0.0.2:nodeman:beat"].error_code, 832);
        assert!(t.unfinished());
    }

    #[test]
    fn only_the_agent_it_was_sent_to_can_answer() {
        let t = ProcTask::new("T".into(), vec![op(0, &["0:10.0.0.1"])]);
        let key: AgentKey = "0:10.0.0.1".parse().unwrap();
        let other: AgentKey = "0:10.0.0.9".parse().unwrap();
        let mut st = t.state.lock();
        // Not sent yet: an agent's answer is refused.
        assert!(!st.close(0, Some(key), Answer::new(0, "ok")));
        st.entries[0].state = EntryState::Sent {
            agent: key,
            held: Delivery::of_claim(1),
            deadline: Instant::now(),
        };
        assert!(!st.close(0, Some(other), Answer::new(0, "ok")));
        assert!(st.close(0, Some(key), Answer::new(0, "ok")));
        // Closed once only.
        assert!(!st.close(0, None, Answer::new(117, "lost")));
        drop(st);
        assert!(!t.unfinished());
        assert_eq!(t.answers().1["0:10.0.0.1:nodeman:beat"].error_code, 0);
    }
}
