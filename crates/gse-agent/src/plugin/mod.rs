//! The plugin supervisor (D2, C8): runs nodeman's process operations on
//! this host and keeps hosted (delegated) plugins alive.
//!
//! Start at [`PluginService`]. The link hands it `ProcOperate` frames
//! ([`PluginService::handle`]); each runs on the plugin's own task
//! ([`supervisor::PluginState::operate`]) and answers one
//! `ProcOperateResult`. A monitor loop checks every hosted plugin each
//! `plugin.check_interval` (liveness by pid, cpu/mem limits in
//! [`limits`]) and restarts the dead with backoff, raising a `ProcAlarm`
//! upstream when it gives up. Control commands and pids are [`process`];
//! what survives an agent restart is `<data_dir>/plugins.json`
//! ([`state_file`]), re-adopted by pid at start. Status goes upstream as
//! `ProcStatusReport`: everything when a link comes up and every
//! `report_interval`, single plugins when they change. Plugins keep
//! running when the agent stops or loses its link. An operation whose
//! control commands a dangerous-operation rule blocks (the link session's
//! rules, as for script tasks) is refused before anything runs or the spec
//! is kept. The plugin-message socket is `crate::data::message_ipc`.

pub mod config;
pub mod limits;
pub mod process;
pub mod spec;
pub mod state_file;
pub mod supervisor;

#[cfg(all(test, unix))]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use gse_core::danger::DangerPolicy;
use gse_proto::link::{
    ProcAlarm, ProcOperate, ProcOperateResult, ProcSpec, ProcStatus, ProcStatusReport,
};
use gse_proto::{Frame, MsgType};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::PluginConfig;
use limits::Sampler;
use spec::{OpType, PluginId, PluginSpec};
use supervisor::{OpOutcome, PluginState};

/// Frames queued for the link; beyond this, status reports are dropped
/// (the next full report repairs the server's view).
pub const OUTBOUND_FRAMES: usize = 256;
/// Most plugins one agent supervises.
const MAX_PLUGINS: usize = 256;

/// One supervised plugin.
struct Plugin {
    /// Held by whoever operates on or checks the plugin.
    state: Arc<tokio::sync::Mutex<PluginState>>,
    /// What was last published (saved and reported), readable without
    /// waiting for a running operation.
    published: Mutex<(ProcStatus, state_file::SavedPlugin)>,
}

impl Plugin {
    fn new(st: PluginState) -> Arc<Self> {
        let published = (status_of(&st), st.to_saved());
        Arc::new(Plugin {
            state: Arc::new(tokio::sync::Mutex::new(st)),
            published: Mutex::new(published),
        })
    }
}

struct Shared {
    cfg: PluginConfig,
    data_dir: PathBuf,
    state_path: PathBuf,
    plugins: Mutex<BTreeMap<PluginId, Arc<Plugin>>>,
    upstream: Mutex<Option<mpsc::Sender<Frame>>>,
    /// The dangerous-operation rules of the current link session (the
    /// built-in ones before the first).
    policy: Mutex<Arc<DangerPolicy>>,
    /// Alarms raised while no link was up; sent on the next one.
    pending_alarms: Mutex<Vec<ProcAlarm>>,
    /// Serialises writes of the state file.
    save_lock: tokio::sync::Mutex<()>,
    /// Operations received and not answered yet: a hand-over (K2) waits
    /// for them.
    operating: std::sync::atomic::AtomicUsize,
}

/// One operation in flight, counted in `Shared::operating` until dropped
/// (also if the operation panics).
struct Operating(Arc<Shared>);

impl Operating {
    fn start(shared: &Arc<Shared>) -> Self {
        shared
            .operating
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Operating(shared.clone())
    }
}

impl Drop for Operating {
    fn drop(&mut self) {
        self.0
            .operating
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The agent's plugin supervisor. Cheap to clone.
#[derive(Clone)]
pub struct PluginService {
    shared: Arc<Shared>,
}

// === impl PluginService ===

impl PluginService {
    /// Loads `<data_dir>/plugins.json`, re-adopts what still runs and
    /// starts the monitor loop (until `shutdown`). The plugin-message
    /// socket is started with the data path (`crate::data::start`).
    pub fn start(cfg: &crate::AgentConfig, shutdown: CancellationToken) -> Self {
        let data_dir = cfg.agent.data_dir.clone();
        let state_path = data_dir.join("plugins.json");
        let saved = state_file::load(&state_path).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot load the supervised plugins");
            Vec::new()
        });
        let svc = PluginService {
            shared: Arc::new(Shared {
                cfg: cfg.plugin.clone(),
                data_dir: data_dir.clone(),
                state_path,
                plugins: Mutex::new(BTreeMap::new()),
                upstream: Mutex::new(None),
                policy: Mutex::new(Arc::new(DangerPolicy::builtin())),
                pending_alarms: Mutex::new(Vec::new()),
                save_lock: tokio::sync::Mutex::new(()),
                operating: std::sync::atomic::AtomicUsize::new(0),
            }),
        };
        for s in saved {
            let log = process::control_log(&data_dir, &s.id.namespace, &s.id.name);
            let st = PluginState::restore(s, log);
            tracing::info!(plugin = %st.id, hosted = st.hosted, pid = st.proc.map(|p| p.pid), "supervising a plugin from the last run");
            svc.insert(st);
        }
        tokio::spawn(svc.clone().monitor(shutdown));
        svc
    }

    fn insert(&self, st: PluginState) -> Arc<Plugin> {
        let id = st.id.clone();
        let plugin = Plugin::new(st);
        self.shared.plugins.lock().insert(id, plugin.clone());
        plugin
    }

    /// The link is up: frames go to `tx` from now on, starting with the
    /// full status and any alarm that waited for a link; operations are
    /// checked against `policy`, the rules the server sent.
    pub fn attach(&self, tx: mpsc::Sender<Frame>, policy: Arc<DangerPolicy>) {
        *self.shared.policy.lock() = policy;
        *self.shared.upstream.lock() = Some(tx);
        self.report_all();
        let alarms = std::mem::take(&mut *self.shared.pending_alarms.lock());
        for a in alarms {
            self.send_alarm(a);
        }
    }

    /// The link is down; plugins go on running and being supervised.
    pub fn detach(&self) {
        *self.shared.upstream.lock() = None;
    }

    /// Takes a frame of the plugin range (0x300-0x37f) from the server;
    /// false if this agent does not handle its type.
    pub fn handle(&self, frame: &Frame) -> bool {
        if frame.msg_type != MsgType::ProcOperate {
            return false;
        }
        match frame.decode::<ProcOperate>() {
            Ok(op) => {
                let svc = self.clone();
                let stream_id = frame.stream_id;
                let operating = Operating::start(&self.shared);
                tokio::spawn(async move {
                    svc.operate(stream_id, op).await;
                    drop(operating);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a plugin operation that does not decode")
            }
        }
        true
    }

    /// Operations received and not answered yet (their answer queued).
    pub fn operating(&self) -> usize {
        self.shared
            .operating
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs one operation and answers it upstream, on the operation's
    /// stream (a node relaying for another node routes the answer by it).
    async fn operate(&self, stream_id: u64, op: ProcOperate) {
        let (outcome, status) = match self.prepare(&op) {
            Err(outcome) => (outcome, unregistered(&op)),
            Ok((plugin, kind, spec)) => {
                let mut st = plugin.state.clone().lock_owned().await;
                st.spec = spec;
                tracing::info!(plugin = %st.id, op = kind.as_str(), task_id = %op.task_id, "plugin operation");
                let outcome = st.operate(kind).await;
                let status = self.publish(&plugin, &st).await;
                (outcome, status)
            }
        };
        let content = serde_json::json!({
            "pid": status.pid,
            "status": status.status,
            "isauto": status.is_auto,
            "version": status.version,
            "proc_name": status.proc_name,
        })
        .to_string();
        let result = ProcOperateResult {
            task_id: op.task_id.clone(),
            index: op.index,
            error_code: outcome.code,
            error_msg: outcome.message,
            content,
            status: Some(status),
        };
        self.send(Frame::new(MsgType::ProcOperateResult, stream_id, &result));
    }

    /// Checks the op and finds (or makes) its plugin, with the op's spec.
    fn prepare(&self, op: &ProcOperate) -> Result<(Arc<Plugin>, OpType, PluginSpec), OpOutcome> {
        let fail = |code, msg: String| OpOutcome { code, message: msg };
        let kind = OpType::from_wire(op.op_type).ok_or_else(|| {
            fail(
                spec::CODE_UNKNOWN_OP,
                format!("op_type {} is not one of 0,1,2,3,4,7,8,9", op.op_type),
            )
        })?;
        spec::check_name("namespace", &op.namespace)
            .and_then(|()| spec::check_name("name", &op.name))
            .map_err(|e| fail(spec::CODE_FAILED, e.to_string()))?;
        let id = PluginId {
            namespace: op.namespace.clone(),
            name: op.name.clone(),
        };
        // Asking about a plugin this agent never ran must not register it:
        // it is "unregistered" (0), not "stopped" (2).
        if kind == OpType::Status && !self.shared.plugins.lock().contains_key(&id) {
            return Err(fail(0, "not registered on this agent".into()));
        }
        let labels: BTreeMap<String, String> = op.labels.clone().into_iter().collect();
        let wire = op.spec.clone().unwrap_or_default();
        let spec = PluginSpec::from_wire(&wire, labels)
            .map_err(|e| fail(spec::CODE_FAILED, e.to_string()))?;
        let policy = self.shared.policy.lock().clone();
        check_commands(&policy, &wire, &id).map_err(|m| fail(spec::CODE_FAILED, m))?;
        // Found or made under one hold of the lock: two first ops on the
        // same plugin must share one state, or one of them is lost.
        let mut plugins = self.shared.plugins.lock();
        if let Some(p) = plugins.get(&id).cloned() {
            // The op's spec replaces the old one once the plugin is free.
            return Ok((p, kind, spec));
        }
        if plugins.len() >= MAX_PLUGINS {
            return Err(fail(
                spec::CODE_FAILED,
                format!("this agent already supervises {MAX_PLUGINS} plugins"),
            ));
        }
        let log = process::control_log(&self.shared.data_dir, &id.namespace, &id.name);
        let plugin = Plugin::new(PluginState::new(id.clone(), spec.clone(), log));
        plugins.insert(id, plugin.clone());
        Ok((plugin, kind, spec))
    }

    /// Saves and reports the plugin if what is visible of it changed;
    /// returns its status.
    async fn publish(&self, plugin: &Plugin, st: &PluginState) -> ProcStatus {
        let status = status_of(st);
        let saved = st.to_saved();
        let changed = {
            let mut p = plugin.published.lock();
            let changed = !same_status(&p.0, &status) || p.1 != saved;
            *p = (status.clone(), saved);
            changed
        };
        if changed {
            self.save().await;
            let report = ProcStatusReport {
                full: false,
                procs: vec![status.clone()],
            };
            self.send(Frame::new(MsgType::ProcStatusReport, 0, &report));
        }
        status
    }

    /// Writes every plugin's last published state to the state file.
    async fn save(&self) {
        let _guard = self.shared.save_lock.lock().await;
        let all: Vec<_> = self
            .shared
            .plugins
            .lock()
            .values()
            .map(|p| p.published.lock().1.clone())
            .collect();
        let path = self.shared.state_path.clone();
        let saved = tokio::task::spawn_blocking(move || state_file::save(&path, &all)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot save the supervised plugins"),
            Err(e) => tracing::error!(error = %e, "saving the supervised plugins panicked"),
        }
    }

    fn report_all(&self) {
        let procs: Vec<ProcStatus> = self
            .shared
            .plugins
            .lock()
            .values()
            .map(|p| p.published.lock().0.clone())
            .collect();
        let report = ProcStatusReport { full: true, procs };
        self.send(Frame::new(MsgType::ProcStatusReport, 0, &report));
    }

    /// Queues a frame for the link; dropped (with a debug line) when no
    /// link is up or its queue is full.
    fn send(&self, frame: Frame) -> bool {
        let tx = self.shared.upstream.lock().clone();
        match tx.map(|tx| tx.try_send(frame)) {
            Some(Ok(())) => true,
            _ => {
                tracing::debug!(
                    "no link for a plugin frame; the next full report repairs the server's view"
                );
                false
            }
        }
    }

    fn send_alarm(&self, alarm: ProcAlarm) {
        let frame = Frame::new(MsgType::ProcAlarm, 0, &alarm);
        if !self.send(frame) {
            self.shared.pending_alarms.lock().push(alarm);
        }
    }

    /// Checks every plugin each `check_interval`; full report each
    /// `report_interval`.
    async fn monitor(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.shared.cfg.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut report = tokio::time::interval(self.shared.cfg.report_interval);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sampler = Sampler::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = report.tick() => self.report_all(),
                _ = tick.tick() => self.check_all(&mut sampler),
            }
        }
    }

    /// Starts a check of every plugin nobody is operating on.
    fn check_all(&self, sampler: &mut Sampler) {
        let plugins: Vec<Arc<Plugin>> = self.shared.plugins.lock().values().cloned().collect();
        let pids: Vec<u32> = plugins
            .iter()
            .filter_map(|p| {
                let published = p.published.lock();
                Some(published.0.pid).filter(|pid| *pid > 0 && published.0.is_auto)
            })
            .collect();
        let usage: HashMap<u32, limits::Usage> = sampler.sample(&pids).into_iter().collect();
        let samples = self.shared.cfg.limit_samples;
        for plugin in plugins {
            let Ok(mut st) = plugin.state.clone().try_lock_owned() else {
                continue;
            };
            let svc = self.clone();
            let sample = st.proc.and_then(|p| usage.get(&p.pid).copied());
            tokio::spawn(async move {
                let checked = st.check(sample, samples).await;
                if let Some(message) = checked.gave_up {
                    tracing::error!(plugin = %st.id, "{message}");
                    svc.send_alarm(ProcAlarm {
                        namespace: st.id.namespace.clone(),
                        name: st.id.name.clone(),
                        failed_restarts: st.failed_restarts,
                        message,
                    });
                }
                svc.publish(&plugin, &st).await;
            });
        }
    }
}

/// The dangerous-operation check of an operation's control commands (T6,
/// T7): a blocked one refuses the operation, naming the rule and the
/// field; alarm-only matches are logged (the server raised the alarm).
fn check_commands(policy: &DangerPolicy, wire: &ProcSpec, plugin: &PluginId) -> Result<(), String> {
    for (field, cmd) in wire.control_commands() {
        if cmd.trim().is_empty() {
            continue;
        }
        let verdict = policy.check([cmd]);
        if let Some(m) = verdict.blocked {
            return Err(format!(
                "refused by the dangerous-operation check: {} (in {field})",
                m.describe()
            ));
        }
        for m in verdict.alarms {
            tracing::warn!(plugin = %plugin, "a plugin command {} (in {field})", m.describe());
        }
    }
    Ok(())
}

/// The wire status of a plugin.
fn status_of(st: &PluginState) -> ProcStatus {
    ProcStatus {
        namespace: st.id.namespace.clone(),
        name: st.id.name.clone(),
        proc_name: st.spec.proc_name.clone(),
        status: st.status(),
        is_auto: st.hosted,
        version: st.version.clone(),
        pid: st.proc.map_or(0, |p| p.pid),
        setup_path: st.spec.setup_path.display().to_string(),
        failed_restarts: st.failed_restarts,
        gave_up: st.gave_up,
        cpu_percent: st.usage.cpu_percent,
        mem_percent: st.usage.mem_percent,
        labels: st.spec.labels.clone().into_iter().collect(),
        changed_ms: gse_core::now_ms(),
    }
}

/// Equal but for the time stamp and the resource samples.
fn same_status(a: &ProcStatus, b: &ProcStatus) -> bool {
    let strip = |s: &ProcStatus| ProcStatus {
        changed_ms: 0,
        cpu_percent: 0.0,
        mem_percent: 0.0,
        ..s.clone()
    };
    strip(a) == strip(b)
}

/// Status of a plugin an operation could not even name.
fn unregistered(op: &ProcOperate) -> ProcStatus {
    ProcStatus {
        namespace: op.namespace.clone(),
        name: op.name.clone(),
        status: spec::STATUS_UNREGISTERED,
        changed_ms: gse_core::now_ms(),
        ..Default::default()
    }
}
