//! Starting a script task: check it, list every target with its first
//! state, hand each reachable agent its `RunScript`, raise alarms.
//!
//! Every target gets its entries at once (bk-job fails a task whose result
//! stays empty): dispatched ones `STATUS_DISPATCHED`/115, the others final
//! with the reason (117 unknown/offline/unreachable, 118 blocked, 101 for
//! what we cannot run). Each target is located through the [`Sender`]
//! (the agent directory says where it is held, on this node or another);
//! the task is registered before any frame goes out, and each target's
//! delivery is recorded before its frame is sent, so an agent that drops
//! during its send is still seen by `on_disconnect` (which closes only what
//! was delivered to the claim that ended).
//!
//! [`Sender`]: crate::cluster::sender::Sender

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gse_core::AgentKey;
use gse_core::seams::KnownAgent;
use gse_core::seams::state_store::TaskTarget;
use gse_core::task::{
    ERR_AGENT_DOWN, ERR_DANGER_BLOCKED, ERR_RUNNING, ERR_SPAWN, STATUS_DISPATCHED, STATUS_FAILED,
};
use gse_proto::link::{AtomicTask, RunScript, ScriptFile};
use gse_proto::{Frame, MsgType};

use super::guard::{self, Findings};
use super::model::{Entry, LiveTask, TargetIndex, TaskState, Update};
use super::spec::{ScriptTaskSpec, TargetSpec};
use super::{TaskError, TaskService, metrics, unknown_agent};
use crate::cluster::sender::{Located, SendError};

/// Time an agent has beyond the timeouts of the atomic tasks it has left
/// (counted from when it reports one running) to report a final status
/// before its entries are closed.
pub(super) const DEADLINE_GRACE: Duration = Duration::from_secs(60);
/// Least time a target that has not started yet is left waiting: agents
/// run a bounded number of tasks at once and queue the rest.
const QUEUED_LIMIT: Duration = Duration::from_secs(24 * 3600);
/// Most bytes of `RunScript` bodies one task may hold: one body per
/// distinct `user`, so 5,000 users times a large script would otherwise
/// take gigabytes from one request.
pub(super) const MAX_BODIES_BYTES: usize = 256 << 20;
/// Protobuf key of `RunScript.user`: field 4, length-delimited.
const USER_KEY: u8 = (4 << 3) | 2;

/// How one target starts.
enum Start {
    /// Send it the task where it is held.
    Send(Located),
    /// Final at once: (error_code, error_msg).
    Fail(i32, String),
}

impl TaskService {
    /// Starts a script task and returns its id; the results come later.
    #[tracing::instrument(skip_all, fields(task_id))]
    pub async fn start_script(&self, spec: ScriptTaskSpec) -> Result<String, TaskError> {
        let begun = Instant::now();
        let task_id = self.new_task_id();
        tracing::Span::current().record("task_id", task_id.as_str());
        let (spec, findings) = guard::check_off_thread(self.danger.clone(), spec).await;
        let frames = match findings.blocked {
            Some(_) => HashMap::new(),
            None => self.encode(&task_id, &spec)?,
        };
        let refs: Vec<_> = spec.targets.iter().map(|t| t.agent.clone()).collect();
        let records = self.store.identify_agents(&refs).await?;
        let read_ms = begun.elapsed().as_millis();

        let starts = self.plan(&spec, &records, &findings).await;
        let planned_ms = begun.elapsed().as_millis();
        let task = self.build(&task_id, &spec, &records, &starts, &frames);
        self.register(&task);
        let sent = self.send_all(&task, &spec, starts, &frames).await;

        let names: Vec<String> = spec.targets.iter().map(|t| t.bk_agent_id.clone()).collect();
        guard::raise(
            self.alarms.as_deref(),
            &self.node_id,
            &task_id,
            &names,
            &findings,
        );
        metrics::task_started(begun.elapsed());
        tracing::info!(
            task_id = %task_id,
            targets = spec.targets.len(),
            dispatched = sent,
            atomic_tasks = spec.atomic_tasks.len(),
            blocked = findings.blocked.is_some(),
            read_ms,
            planned_ms,
            sent_ms = begun.elapsed().as_millis(),
            "task started"
        );
        Ok(task_id)
    }

    /// One `RunScript` body per distinct user, checked against the frame
    /// limit of the link that carries it (`link.max_frame_bytes`) and, all
    /// together, against [`MAX_BODIES_BYTES`]. The message is encoded once
    /// without a user; each user's body is that plus the `user` field
    /// appended (a decoder takes fields in any order).
    fn encode(
        &self,
        task_id: &str,
        spec: &ScriptTaskSpec,
    ) -> Result<HashMap<String, Bytes>, TaskError> {
        let default_timeout = self.config.default_timeout_seconds();
        let msg = RunScript {
            task_id: task_id.to_string(),
            scripts: spec
                .scripts
                .iter()
                .map(|s| ScriptFile {
                    name: s.name.clone(),
                    dir: s.dir.clone(),
                    content: s.content.clone().into_bytes(),
                })
                .collect(),
            atomic_tasks: spec
                .atomic_tasks
                .iter()
                .map(|a| AtomicTask {
                    atomic_id: a.id,
                    command: a.command.clone(),
                    timeout_seconds: if a.timeout_seconds == 0 {
                        default_timeout
                    } else {
                        a.timeout_seconds
                    },
                })
                .collect(),
            user: String::new(),
            login_env: spec.login_env,
            output_limit: self.config.output_limit,
            windows_interpreter: spec.windows_interpreter.clone(),
        };
        let base = Frame::new(MsgType::RunScript, 0, &msg).body;
        let users: std::collections::HashSet<&str> =
            spec.targets.iter().map(|t| t.user.as_str()).collect();
        let limit = self.sender.max_frame_bytes();
        let mut largest = 0;
        let mut total = 0usize;
        for user in &users {
            let len = body_len(base.len(), user);
            largest = largest.max(len);
            total = total.saturating_add(len);
        }
        if largest > limit {
            return Err(TaskError::TooLarge {
                field: "scripts",
                problem: format!(
                    "the task encodes to {largest} bytes for one agent, over the agent link's frame limit of {limit} bytes; send smaller scripts"
                ),
                bytes: largest,
                limit,
            });
        }
        if total > MAX_BODIES_BYTES {
            return Err(TaskError::TooLarge {
                field: "agents[].user",
                problem: format!(
                    "{} distinct users, each with its own copy of the {}-byte task, make {total} bytes, over the limit of {MAX_BODIES_BYTES} bytes per task; use fewer distinct users or smaller scripts, or split the task",
                    users.len(),
                    base.len()
                ),
                bytes: total,
                limit: MAX_BODIES_BYTES,
            });
        }
        Ok(users
            .into_iter()
            .map(|user| (user.to_string(), with_user(&base, user)))
            .collect())
    }

    /// How each target starts, in target order. Every known target is
    /// located in one directory round trip first.
    async fn plan(
        &self,
        spec: &ScriptTaskSpec,
        records: &[Option<KnownAgent>],
        findings: &Findings,
    ) -> Vec<Start> {
        let keys: Vec<AgentKey> = match findings.blocked {
            Some(_) => Vec::new(),
            None => records.iter().flatten().map(|r| r.key).collect(),
        };
        let mut located: HashMap<AgentKey, Result<Located, SendError>> = keys
            .iter()
            .copied()
            .zip(self.sender.locate_many(&keys).await)
            .collect();
        let mut first_name: HashMap<AgentKey, &str> = HashMap::new();
        let mut starts = Vec::with_capacity(spec.targets.len());
        for (target, record) in spec.targets.iter().zip(records) {
            let start = match (&findings.blocked, record) {
                (Some(f), _) => Start::Fail(
                    ERR_DANGER_BLOCKED,
                    format!("blocked before dispatch: {}", f.describe()),
                ),
                (None, None) => Start::Fail(ERR_AGENT_DOWN, unknown_agent(&target.bk_agent_id)),
                (None, Some(rec)) => self.plan_known(target, rec, &mut first_name, &mut located),
            };
            starts.push(start);
        }
        starts
    }

    fn plan_known<'a>(
        &self,
        target: &'a TargetSpec,
        rec: &KnownAgent,
        first_name: &mut HashMap<AgentKey, &'a str>,
        located: &mut HashMap<AgentKey, Result<Located, SendError>>,
    ) -> Start {
        if !target.bk_container_id.is_empty() {
            return Start::Fail(
                ERR_SPAWN,
                format!(
                    "bk_container_id {:?}: running in containers is not supported yet; target the host agent {}",
                    target.bk_container_id, target.bk_agent_id
                ),
            );
        }
        if let Some(other) = first_name.get(&rec.key) {
            return Start::Fail(
                ERR_SPAWN,
                format!(
                    "agent {} is also a target of this task as {other}; an agent runs a task once",
                    target.bk_agent_id
                ),
            );
        }
        first_name.insert(rec.key, &target.bk_agent_id);
        match located.remove(&rec.key) {
            Some(Ok(at)) => Start::Send(at),
            Some(Err(why)) => Start::Fail(ERR_AGENT_DOWN, why.for_host(&target.bk_agent_id)),
            None => Start::Fail(
                ERR_AGENT_DOWN,
                SendError::Offline(rec.key).for_host(&target.bk_agent_id),
            ),
        }
    }

    /// The task in memory, every entry in its first state.
    fn build(
        &self,
        task_id: &str,
        spec: &ScriptTaskSpec,
        records: &[Option<KnownAgent>],
        starts: &[Start],
        frames: &HashMap<String, Bytes>,
    ) -> Arc<LiveTask> {
        let now = gse_core::now_ms();
        let n = spec.atomic_tasks.len();
        let atomic_timeouts = self.atomic_timeouts(spec);
        let bound = atomic_timeouts
            .iter()
            .map(|&t| Duration::from_secs(u64::from(t)))
            .sum::<Duration>()
            + DEADLINE_GRACE;
        let queued_deadline = Instant::now() + QUEUED_LIMIT.max(bound * 10);
        let mut entries = Vec::with_capacity(spec.targets.len() * n);
        let mut by_agent = HashMap::new();
        for (i, start) in starts.iter().enumerate() {
            let first = match start {
                Start::Send(at) => {
                    by_agent.insert(at.agent(), i as u32);
                    Entry::new(STATUS_DISPATCHED, ERR_RUNNING, String::new())
                }
                Start::Fail(code, msg) => Entry::failed(*code, msg.clone(), now),
            };
            entries.extend(std::iter::repeat_n(first, n));
        }
        let targets: Vec<TaskTarget> = spec
            .targets
            .iter()
            .zip(records)
            .map(|(t, rec)| TaskTarget {
                bk_agent_id: t.bk_agent_id.clone(),
                bk_container_id: t.bk_container_id.clone(),
                agent_key: rec.as_ref().map(|r| r.key.to_string()).unwrap_or_default(),
                agent_id: rec.as_ref().map(|r| r.agent_id.clone()).unwrap_or_default(),
            })
            .collect();
        Arc::new(LiveTask {
            id: task_id.to_string(),
            tag: spec.tag.clone(),
            created_ms: now,
            atomic_count: n as u32,
            index: TargetIndex::new(&targets),
            bodies: parking_lot::Mutex::new(
                spec.targets
                    .iter()
                    .map(|t| frames.get(&t.user).cloned().unwrap_or_default())
                    .collect(),
            ),
            targets,
            by_agent,
            atomic_timeouts,
            queued_deadline,
            state: parking_lot::Mutex::new(TaskState::new(
                entries,
                self.config.output_limit,
                queued_deadline,
            )),
        })
    }

    /// Each atomic task's timeout in seconds, the default for 0.
    fn atomic_timeouts(&self, spec: &ScriptTaskSpec) -> Vec<u32> {
        let default = self.config.default_timeout_seconds();
        spec.atomic_tasks
            .iter()
            .map(|a| match a.timeout_seconds {
                0 => default,
                t => t,
            })
            .collect()
    }

    /// Sends every dispatched target its frame; a failed send closes the
    /// target's entries with the reason. Returns how many were sent.
    async fn send_all(
        &self,
        task: &Arc<LiveTask>,
        spec: &ScriptTaskSpec,
        starts: Vec<Start>,
        frames: &HashMap<String, Bytes>,
    ) -> usize {
        let mut outgoing = Vec::new();
        {
            // Each delivery is recorded before its send, so a disconnect of
            // that claim during the send finds it and closes the target.
            let mut state = task.state.lock();
            for (i, (target, start)) in spec.targets.iter().zip(starts).enumerate() {
                let Start::Send(at) = start else {
                    continue;
                };
                let Some(body) = frames.get(&target.user) else {
                    continue;
                };
                let frame = Frame {
                    msg_type: MsgType::RunScript,
                    stream_id: 0,
                    body: body.clone(),
                };
                let delivery = at.delivery();
                state.sent_on.insert(i as u32, delivery);
                outgoing.push(((i as u32, delivery), at, frame));
            }
        }
        // All at once: forwards to other nodes overlap instead of queueing,
        // and this node's link takes its frames without waiting.
        let mut sent = 0;
        for ((i, delivery), outcome) in self.sender.deliver_all(outgoing).await {
            match outcome {
                Ok(_) => sent += 1,
                Err(SendError::Moving(agent)) => {
                    // Not sent: it goes once the agent registered again.
                    task.state.lock().sent_on.remove(&i);
                    self.follow(task, i, agent, delivery);
                    sent += 1;
                }
                Err(why) => {
                    task.state.lock().sent_on.remove(&i);
                    let name = &spec.targets[i as usize].bk_agent_id;
                    let why = why.for_host(name);
                    self.close_target(task, i, STATUS_FAILED, ERR_AGENT_DOWN, &why)
                }
            }
        }
        sent
    }

    /// Closes every unfinished entry of one target with one state.
    pub(super) fn close_target(
        &self,
        task: &Arc<LiveTask>,
        target: u32,
        status: i32,
        error_code: i32,
        error_msg: &str,
    ) {
        let now = gse_core::now_ms();
        self.change(task, |state, effect| {
            for atomic_id in 0..task.atomic_count {
                if let Some(idx) = task.entry_index(target, atomic_id) {
                    let update = Update {
                        status,
                        error_code,
                        error_msg: error_msg.to_string(),
                        exit_code: 0,
                        start_ms: 0,
                        end_ms: now,
                    };
                    state.update(idx, update, effect);
                }
            }
        });
    }
}

/// Length of `base` with `user` appended by [`with_user`].
fn body_len(base: usize, user: &str) -> usize {
    if user.is_empty() {
        return base;
    }
    base + 1 + varint_len(user.len()) + user.len()
}

/// A `RunScript` body encoded without a user, with `user` appended as
/// field 4 (empty = unchanged, as prost leaves an empty string out).
fn with_user(base: &Bytes, user: &str) -> Bytes {
    if user.is_empty() {
        return base.clone();
    }
    let mut out = Vec::with_capacity(body_len(base.len(), user));
    out.extend_from_slice(base);
    out.push(USER_KEY);
    let mut n = user.len();
    while n >= 0x80 {
        out.push((n as u8 & 0x7F) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(user.as_bytes());
    Bytes::from(out)
}

/// Bytes of `n` as a protobuf varint.
fn varint_len(n: usize) -> usize {
    (usize::BITS - (n | 1).leading_zeros()).div_ceil(7) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_appended_decodes_as_if_encoded_with_the_message() {
        let mut msg = RunScript {
            task_id: "t".into(),
            atomic_tasks: vec![AtomicTask {
                atomic_id: 0,
                command: "id".into(),
                timeout_seconds: 5,
            }],
            output_limit: 9,
            windows_interpreter: "ps".into(),
            ..RunScript::default()
        };
        let base = Frame::new(MsgType::RunScript, 0, &msg).body;
        for user in [
            "",
            "root",
            &"u".repeat(127),
            &"v".repeat(128),
            &"w".repeat(20_000),
        ] {
            let body = with_user(&base, user);
            assert_eq!(body.len(), body_len(base.len(), user));
            msg.user = user.to_string();
            let frame = Frame {
                msg_type: MsgType::RunScript,
                stream_id: 0,
                body,
            };
            assert_eq!(frame.decode::<RunScript>().unwrap(), msg);
        }
    }
}
