//! D2/C8 end to end: real agents supervise a real plugin (shell scripts
//! that background a `sleep` and write its pid file), driven through
//! bk-nodeman's process API (COMPAT.md §2.2, §4.3); and the
//! plugin-message socket (COMPAT.md §1.3) spoken by a client written here
//! from the byte layout.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gse_testkit::{AgentOptions, AgentProc, Api, Cluster, ServerOptions, ServerProc, eventually};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

const OPERATE: &str = "/api/v2/proc/operate_proc_multi/";
const RESULT: &str = "/api/v2/proc/get_proc_operate_result_v2/";
const STATUS: &str = "/api/v2/proc/get_proc_status_v2/";
const AGENT: &str = "0:127.0.0.1";
const KEY: &str = "0:127.0.0.1:nodeman:sleeper";

/// A plugin on disk; kills whatever its pid file names when dropped, so
/// no test leaves a `sleep` behind.
pub(crate) struct Plugin {
    dir: PathBuf,
}

impl Plugin {
    /// `start.sh` backgrounds `sleep` and writes its pid, unless `broken`
    /// (then it starts nothing).
    pub(crate) fn new(root: &Path, broken: bool) -> Self {
        let dir = root.join(if broken { "broken" } else { "sleeper" });
        std::fs::create_dir_all(&dir).unwrap();
        let start = if broken {
            "echo 'cannot start: missing config' >&2\n"
        } else {
            "sleep 600 &\necho $! > plugin.pid\n"
        };
        std::fs::write(dir.join("start.sh"), start).unwrap();
        std::fs::write(dir.join("stop.sh"), "kill $(cat plugin.pid)\n").unwrap();
        Plugin { dir }
    }

    pub(crate) fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("plugin.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The spec nodeman sends, with short checks.
    pub(crate) fn spec(&self) -> Value {
        json!({
            "identity": {"index_key": "", "proc_name": "sleeper",
                         "setup_path": self.dir.display().to_string(),
                         "pid_path": self.dir.join("plugin.pid").display().to_string(),
                         "user": "", "config_path": "", "log_path": ""},
            "control": {"start_cmd": "sh ./start.sh", "stop_cmd": "sh ./stop.sh",
                        "restart_cmd": "", "reload_cmd": "", "kill_cmd": "",
                        "version_cmd": "echo 9.9.9", "health_cmd": ""},
            "resource": {"cpu": 50, "mem": 50},
            "alive_monitor_policy": {"auto_type": 1, "start_check_secs": 1, "stop_check_secs": 3,
                                     "start_retries": 2, "start_interval": 1, "op_timeout": 20}
        })
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

pub(crate) fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string));
    matches!(state.as_deref(), Some(s) if s != "Z" && s != "X")
}

async fn operate(api: &Api, op_type: u32, agent: &str, name: &str, spec: &Value) -> String {
    let body = json!({"proc_operate_req": [{
        "meta": {"namespace": "nodeman", "name": name, "labels": {"proc_name": name}},
        "op_type": op_type,
        "agent_id_list": [agent],
        "spec": spec,
        "nodeman_spec": {"process_name": name, "control": {}},
    }]});
    let (status, v) = api.post(OPERATE, body).await;
    assert_eq!((status, &v["code"]), (200, &json!(0)), "{v}");
    v["data"]["task_id"].as_str().expect("task_id").to_string()
}

/// Polls the task until the entry `key` is final; returns every
/// (envelope code, entry code) seen, in order, without repeats.
async fn poll(api: &Api, task_id: &str, key: &str) -> (Vec<(i64, i64)>, Value) {
    let mut seen: Vec<(i64, i64)> = Vec::new();
    let deadline = tokio::time::Instant::now() + gse_testkit::patience(Duration::from_secs(40));
    loop {
        let (_, v) = api.post(RESULT, json!({"task_id": task_id})).await;
        let env = v["code"].as_i64().unwrap_or(-1);
        let code = v["data"][key]["error_code"].as_i64().unwrap_or(-1);
        if seen.last() != Some(&(env, code)) {
            seen.push((env, code));
        }
        if env == 0 && code != 115 {
            return (seen, v["data"][key].clone());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {task_id} not final: {seen:?}, last {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn op_code(
    api: &Api,
    op_type: u32,
    agent: &str,
    name: &str,
    spec: &Value,
) -> (i64, String) {
    let task = operate(api, op_type, agent, name, spec).await;
    let key = format!("{agent}:nodeman:{name}");
    let (_, e) = poll(api, &task, &key).await;
    (
        e["error_code"].as_i64().unwrap(),
        e["error_msg"].as_str().unwrap_or_default().to_string(),
    )
}

pub(crate) async fn status(api: &Api) -> Value {
    let (_, v) = api
        .post(
            STATUS,
            json!({"meta": {"namespace": "nodeman", "name": "sleeper", "labels": {"proc_name": "sleeper"}},
                   "agent_id_list": [AGENT]}),
        )
        .await;
    assert_eq!(v["code"], 0, "{v}");
    v["data"]["proc_infos"][0].clone()
}

/// Waits until the plugin runs with a pid other than `old`, as both the
/// pid file and the API say; returns it.
async fn restarted(api: &Api, plugin: &Plugin, old: i32) -> i32 {
    eventually("a new plugin pid", Duration::from_secs(20), || async {
        let info = status(api).await;
        match plugin.pid() {
            Some(p) if p != old && alive(p) && info["status"] == 1 && info["pid"] == p => Ok(p),
            other => Err(format!("pid file {other:?}, api {info}")),
        }
    })
    .await
}

async fn cluster_with_agent(dispatch: Duration) -> (Cluster, ServerProc, AgentProc) {
    let cluster = Cluster::new();
    let server = cluster
        .server(ServerOptions {
            customize: Some(Arc::new(move |cfg| cfg.proc.dispatch_interval = dispatch)),
            ..ServerOptions::default()
        })
        .await;
    let agent = cluster.agent(
        &server,
        AgentOptions {
            customize: Some(Arc::new(|cfg| {
                cfg.plugin.check_interval = Duration::from_millis(300);
            })),
            ..AgentOptions::ip("127.0.0.1")
        },
    );
    let api = server.api.clone();
    eventually("agent alive", Duration::from_secs(15), || {
        let api = api.clone();
        async move {
            (api.alive(0, "127.0.0.1").await == 1)
                .then_some(())
                .ok_or_default()
        }
    })
    .await;
    (cluster, server, agent)
}

trait OkOrDefault<T> {
    fn ok_or_default(self) -> Result<T, String>;
}

impl<T> OkOrDefault<T> for Option<T> {
    fn ok_or_default(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

#[tokio::test]
async fn d2_start_is_queued_then_running_then_done_and_status_has_host() {
    // A 1 s dispatch tick makes the queued phase observable.
    let (_cluster, server, agent) = cluster_with_agent(Duration::from_secs(1)).await;
    let plugin = Plugin::new(&agent.dir, false);
    let task = operate(&server.api, 0, AGENT, "sleeper", &plugin.spec()).await;
    let (seen, entry) = poll(&server.api, &task, KEY).await;
    assert_eq!(
        seen.first(),
        Some(&(1000115, 115)),
        "first poll is queued: {seen:?}"
    );
    assert!(seen.contains(&(0, 115)), "then running: {seen:?}");
    assert_eq!(seen.last(), Some(&(0, 0)), "then done: {seen:?}");
    assert_eq!(entry["error_msg"], "success");
    let content: Value = serde_json::from_str(entry["content"].as_str().unwrap()).unwrap();
    let pid = plugin.pid().expect("the plugin wrote its pid");
    assert_eq!(content["pid"], pid);
    assert!(alive(pid));

    let info = status(&server.api).await;
    assert_eq!(info["bk_agent_id"], AGENT);
    assert_eq!(info["host"], json!({"ip": "127.0.0.1", "bk_cloud_id": 0}));
    assert_eq!(info["meta"]["namespace"], "nodeman");
    assert_eq!(info["meta"]["name"], "sleeper");
    assert_eq!(
        (info["status"].clone(), info["isauto"].clone()),
        (json!(1), json!(true))
    );
    assert_eq!(info["version"], "9.9.9");

    // Start again: already running.
    let (code, _) = op_code(&server.api, 0, AGENT, "sleeper", &plugin.spec()).await;
    assert_eq!(code, 828);
    // Stop, then stop again: not running.
    let (code, msg) = op_code(&server.api, 1, AGENT, "sleeper", &plugin.spec()).await;
    assert_eq!(code, 0, "{msg}");
    assert!(!alive(pid));
    let info = status(&server.api).await;
    assert_eq!(
        (info["status"].clone(), info["isauto"].clone()),
        (json!(2), json!(false))
    );
    let (code, _) = op_code(&server.api, 1, AGENT, "sleeper", &plugin.spec()).await;
    assert_eq!(code, 829);
}

#[tokio::test]
async fn d2_delegated_plugin_is_restarted_also_after_an_agent_restart() {
    let (_cluster, server, mut agent) = cluster_with_agent(Duration::from_millis(50)).await;
    let api = &server.api;
    let plugin = Plugin::new(&agent.dir, false);
    let (code, msg) = op_code(api, 3, AGENT, "sleeper", &plugin.spec()).await;
    assert_eq!(code, 0, "{msg}");
    // Delegated and not running: the supervisor starts it.
    let first = restarted(api, &plugin, 0).await;

    kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();
    let second = restarted(api, &plugin, first).await;

    // The agent crashes and comes back: it re-adopts the running plugin
    // (same pid) and goes on supervising it.
    agent.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        plugin.pid(),
        Some(second),
        "the agent restart left the plugin alone"
    );
    assert!(alive(second));
    kill(Pid::from_raw(second), Signal::SIGKILL).unwrap();
    let third = restarted(api, &plugin, second).await;
    assert!(status(api).await["isauto"] == true);

    // Undelegate: a death is no longer repaired.
    let (code, _) = op_code(api, 4, AGENT, "sleeper", &plugin.spec()).await;
    assert_eq!(code, 0);
    kill(Pid::from_raw(third), Signal::SIGKILL).unwrap();
    eventually("reported stopped", Duration::from_secs(10), || async {
        let info = status(api).await;
        (info["status"] == 2 && info["isauto"] == false)
            .then_some(())
            .ok_or(format!("{info}"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(plugin.pid(), Some(third), "nothing restarted it");
}

#[tokio::test]
async fn d2_plugin_failing_to_restart_raises_an_alarm() {
    let (_cluster, server, agent) = cluster_with_agent(Duration::from_millis(50)).await;
    let plugin = Plugin::new(&agent.dir, true);
    let (code, msg) = op_code(&server.api, 0, AGENT, "broken", &plugin.spec()).await;
    assert_eq!(code, 836, "{msg}");
    let alarm = eventually("plugin_failed alarm", Duration::from_secs(30), || async {
        server
            .alarms()
            .into_iter()
            .find(|a| a["kind"] == "plugin_failed")
            .ok_or(format!("{:?}", server.alarms()))
    })
    .await;
    assert_eq!(alarm["agent"], AGENT);
    assert_eq!(alarm["plugin"], "nodeman:broken");
    let message = alarm["message"].as_str().unwrap();
    assert!(message.contains("failed to restart 2 times"), "{message}");
    assert!(
        message.contains("cannot start: missing config") || message.contains("not alive"),
        "{message}"
    );
}

#[tokio::test]
async fn d2_unknown_agents_and_op_types_are_answered_per_entry() {
    let (_cluster, server, agent) = cluster_with_agent(Duration::from_millis(50)).await;
    let plugin = Plugin::new(&agent.dir, false);
    let (code, msg) = op_code(&server.api, 0, "0:10.9.9.9", "sleeper", &plugin.spec()).await;
    assert_eq!(code, 117, "{msg}");
    let (code, _) = op_code(&server.api, 6, AGENT, "sleeper", &plugin.spec()).await;
    assert_eq!(code, 832);
    // A task nobody started.
    let (_, v) = server
        .api
        .post(RESULT, json!({"task_id": "GSETASK:P:nope:1"}))
        .await;
    assert_eq!(v["code"], 1011101, "{v}");
    // Bad input names its field.
    let (status, v) = server
        .api
        .post(OPERATE, json!({"proc_operate_req": [{"meta": {"namespace": "nodeman"}, "op_type": 0, "agent_id_list": [AGENT]}]}))
        .await;
    assert_eq!(status, 400);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("proc_operate_req[0].meta.name"),
        "{v}"
    );
}

/// The 28-byte big-endian header of COMPAT §1.3.
fn message_frame(proto_type: u16, seq: u64, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(28 + body.len());
    f.extend_from_slice(&0xDEAD_BEEFu32.to_be_bytes());
    f.extend_from_slice(&proto_type.to_be_bytes());
    f.extend_from_slice(&6u16.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&((28 + body.len()) as u32).to_be_bytes());
    f.extend_from_slice(&0u32.to_be_bytes());
    f.extend_from_slice(&0u32.to_be_bytes());
    f.extend_from_slice(body);
    f
}

#[tokio::test]
async fn d2_message_socket_answers_keepalive_and_drops_strangers() {
    let (_cluster, _server, agent) = cluster_with_agent(Duration::from_millis(50)).await;
    let path = agent.dir.join("data/ipc.state.message");
    let path2 = path.clone();
    eventually("message socket", Duration::from_secs(10), || {
        let p = path2.clone();
        async move { p.exists().then_some(()).ok_or_default() }
    })
    .await;
    let agent_id = agent.agent_id().expect("agent id");
    tokio::task::spawn_blocking(move || {
        use std::os::unix::net::UnixStream;
        let timeout = Some(Duration::from_secs(5));
        // A stranger is cut off; the socket keeps serving others.
        let mut bad = UnixStream::connect(&path).unwrap();
        bad.set_read_timeout(timeout).unwrap();
        bad.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut rest = Vec::new();
        assert_eq!(bad.read_to_end(&mut rest).unwrap(), 0);

        let mut c = UnixStream::connect(&path).unwrap();
        c.set_read_timeout(timeout).unwrap();
        let body = br#"{"plugin_name":"sleeper","version":"1.0","pid":1,"status_code":0,"status":"ok","remark":""}"#;
        for seq in [1_700_000_000u64, 1_700_000_001] {
            c.write_all(&message_frame(0x9006, seq, body)).unwrap();
            let mut head = [0u8; 28];
            c.read_exact(&mut head).unwrap();
            assert_eq!(&head[0..4], &0xDEAD_BEEFu32.to_be_bytes());
            assert_eq!(u16::from_be_bytes([head[4], head[5]]), 0x9007);
            assert_eq!(u16::from_be_bytes([head[6], head[7]]), 6);
            assert_eq!(u64::from_be_bytes(head[8..16].try_into().unwrap()), seq);
            let len = u32::from_be_bytes(head[16..20].try_into().unwrap()) as usize;
            let mut answer = vec![0u8; len - 28];
            c.read_exact(&mut answer).unwrap();
            let v: Value = serde_json::from_slice(&answer).unwrap();
            assert_eq!(v["agent_id"], agent_id.as_str());
            assert_eq!((v["cloud_id"].clone(), v["run_mode"].clone(), v["status_code"].clone()), (json!(0), json!(1), json!(2)));
            assert!(v["version"].as_str().is_some_and(|s| !s.is_empty()));
        }
    })
    .await
    .unwrap();
}
