//! Issue 9 items 7-9 (and the `data_log_path` part of 10) end to end: the
//! agent's local data and plugin-message sockets against a local user
//! (`nobody`, through `gse-hostile ipc ...`), the record size every hop
//! agrees on, and the socket paths real collectors dial.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gse_testkit::hostile::{self, as_user, run_json};
use gse_testkit::{AgentOptions, AgentProc, Cluster, ServerOptions, bin, eventually, read_lines};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::d_data::{
    DATA_ID, DataRig, connect, data_rig, file_route, header, plain, socket_of, wait_all,
};

/// The SDK's message limit (COMPAT §1.2), which the agent takes as its
/// largest record.
const SDK_MAX: usize = 10 << 20;

// === helpers ===

/// An agent on 127.0.0.1 whose config `hook` adjusts.
pub(crate) fn agent_with(
    cluster: &Cluster,
    server: &gse_testkit::ServerProc,
    hook: impl Fn(&mut gse_agent::AgentConfig) + Send + Sync + 'static,
) -> AgentProc {
    cluster.agent(
        server,
        AgentOptions {
            customize: Some(Arc::new(hook)),
            ..AgentOptions::ip("127.0.0.1")
        },
    )
}

/// A `VmRSS`/`VmHWM`-style line of /proc/<pid>/status, in KiB.
fn status_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Descriptors the process has open now.
pub(crate) fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Starts `gse-hostile` as nobody with `args`, its JSON on a pipe.
pub(crate) fn spawn_nobody(args: &[String]) -> std::process::Child {
    as_user("nobody")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gse-hostile")
}

/// Waits for a spawned `gse-hostile` and parses the JSON line it printed.
pub(crate) async fn finish_nobody(child: std::process::Child) -> Value {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gse-hostile failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("gse-hostile printed {text:?}: {e}"))
}

/// Waits until the agent holds `more` descriptors than `before`: the
/// attacker's connections are in.
pub(crate) async fn attacker_holds(agent: &AgentProc, before: usize, more: usize) {
    let pid = agent.pid();
    eventually(
        "the attacker's connections held by the agent",
        Duration::from_secs(30),
        || async {
            let now = open_fds(pid);
            (now >= before + more)
                .then_some(())
                .ok_or(format!("{now} descriptors, {before} before"))
        },
    )
    .await;
}

/// `gse-agent send --socket <socket>` of one line, as root; fails if it
/// does not finish within `within`.
pub(crate) async fn root_send(socket: &Path, line: &str, within: Duration) -> Result<(), String> {
    let mut child = tokio::process::Command::new(bin("gse-agent"))
        .arg("send")
        .arg("--data-id")
        .arg(DATA_ID.to_string())
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{line}\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    drop(stdin);
    match tokio::time::timeout(within, child.wait_with_output()).await {
        Err(_) => Err(format!("gse-agent send did not finish within {within:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// The sink's complete lines, parsed (a line the server is still
/// writing is left for the next look).
pub(crate) fn sink_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:.200}")))
        .collect()
}

pub(crate) fn s(v: impl std::fmt::Display) -> String {
    v.to_string()
}

// === item 7: connections, memory, who sent it ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r9_7_held_connections_do_not_lock_collectors_out_and_idle_ones_are_closed() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let sink = file_route(&server, DATA_ID).await;
    let agent = agent_with(&cluster, &server, |cfg| {
        cfg.data.idle_timeout = Duration::from_secs(15);
    });
    server.api.wait_alive("127.0.0.1").await;
    let path = socket_of(&agent);
    drop(connect(&path).await);
    hostile::open_path_to(path.parent().unwrap());

    let before = open_fds(agent.pid());
    let attack = spawn_nobody(&[
        s("ipc"),
        s("hold"),
        s("--socket"),
        s(path.display()),
        s("--count"),
        s(3000),
        s("--seconds"),
        s(60),
    ]);
    attacker_holds(&agent, before, 50).await;

    // A root collector gets its record through while nobody's connections
    // are held (well inside their 15 s idle timeout).
    let started = Instant::now();
    root_send(&path, "root-during-attack", Duration::from_secs(10))
        .await
        .expect("a root collector can send during the attack");
    wait_all(
        &sink,
        &["root-during-attack".to_string()],
        Duration::from_secs(12),
    )
    .await;
    println!(
        "root's record arrived {:?} into the attack",
        started.elapsed()
    );

    // The agent closes every held connection itself (idle timeout, or at
    // once beyond the per-uid cap).
    let out = finish_nobody(attack).await;
    println!("attack: {out}");
    assert!(out["opened"].as_u64().unwrap() >= 64, "{out}");
    assert_eq!(
        out["open_at_end"], 0,
        "connections the agent never closed: {out}"
    );
    let log = agent.log();
    assert!(
        log.contains("over data.max_connections_per_uid = 64"),
        "the agent says which limit refused the attacker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r9_7_held_message_socket_connections_do_not_lock_plugins_out() {
    use futures::{SinkExt, StreamExt};
    use gse_agent::data::message_ipc::{KEEPALIVE_REQ, KEEPALIVE_RESP, MessageCodec, MessageFrame};

    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let agent = cluster.agent(&server, AgentOptions::ip("127.0.0.1"));
    server.api.wait_alive("127.0.0.1").await;
    let path = agent.dir.join("data").join("ipc.state.message");
    drop(connect(&path).await);
    hostile::open_path_to(path.parent().unwrap());

    let before = open_fds(agent.pid());
    let mut attack = spawn_nobody(&[
        s("ipc"),
        s("hold"),
        s("--socket"),
        s(path.display()),
        s("--count"),
        s(1000),
        s("--seconds"),
        s(40),
    ]);
    attacker_holds(&agent, before, 50).await;

    // A root plugin's keepalive is answered while nobody holds connections.
    let conn = UnixStream::connect(&path).await.expect("connect as root");
    let mut plugin = tokio_util::codec::Framed::new(conn, MessageCodec::new(1 << 20));
    plugin
        .send(MessageFrame::new(
            KEEPALIVE_REQ,
            7,
            b"{\"plugin_name\":\"root-plugin\"}".to_vec().into(),
        ))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), plugin.next())
        .await
        .expect("a keepalive answer while nobody holds connections")
        .expect("the connection stays open")
        .unwrap();
    assert_eq!(reply.header.proto_type, KEEPALIVE_RESP);
    assert_eq!(reply.header.sequence, 7);
    let _ = attack.kill();
    let _ = attack.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r9_7_partial_huge_frames_do_not_grow_the_agent() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let agent = agent_with(&cluster, &server, |cfg| {
        cfg.data.idle_timeout = Duration::from_secs(10);
    });
    server.api.wait_alive("127.0.0.1").await;
    let path = socket_of(&agent);
    drop(connect(&path).await);
    hostile::open_path_to(path.parent().unwrap());
    let rss_before = status_kib(agent.pid(), "VmRSS");

    // 30 frames, each claiming 10 MiB and sent all but 760 bytes.
    let out = run_json(as_user("nobody").args([
        s("ipc"),
        s("partial-frames"),
        s("--socket"),
        s(path.display()),
        s("--count"),
        s(30),
        s("--claim"),
        s(SDK_MAX),
        s("--send"),
        s(SDK_MAX - 760),
        s("--seconds"),
        s(20),
    ]));
    let hwm = status_kib(agent.pid(), "VmHWM");
    let grew_mib = hwm.saturating_sub(rss_before) / 1024;
    println!("attack: {out}; agent RSS {rss_before} KiB before, peak {hwm} KiB (+{grew_mib} MiB)");
    assert_eq!(out["opened"], 30, "{out}");
    // Today's code buffered every claimed body: about +300 MiB.
    assert!(
        grew_mib < 100,
        "30 unfinished 10 MiB frames raised the agent by {grew_mib} MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r9_7_records_name_the_uid_and_pid_that_sent_them() {
    let DataRig {
        cluster: _cluster,
        server: _server,
        sink,
        agent: _agent,
        socket: path,
    } = data_rig().await;
    drop(connect(&path).await);
    hostile::open_path_to(path.parent().unwrap());

    let nobody = run_json(as_user("nobody").args([
        s("ipc"),
        s("send-record"),
        s("--socket"),
        s(path.display()),
        s("--data-id"),
        s(DATA_ID),
        s("--payload"),
        s("from-nobody"),
    ]));
    assert_eq!(nobody["sent"], true, "{nobody}");
    let mut root = connect(&path).await;
    root.write_all(&plain(0xC01, DATA_ID, b"from-root"))
        .await
        .unwrap();
    root.shutdown().await.unwrap();
    wait_all(
        &sink,
        &["from-nobody".to_string(), "from-root".to_string()],
        Duration::from_secs(30),
    )
    .await;

    for line in read_lines(&sink) {
        // The fields consumers already read keep their place and form.
        assert!(
            line.starts_with(&format!(
                "{{\"dataid\":{DATA_ID},\"agent\":\"0:127.0.0.1\",\"seq\":"
            )),
            "{line}"
        );
    }
    let lines = sink_lines(&sink);
    let of = |data: &str| lines.iter().find(|l| l["data"] == data).unwrap().clone();
    let n = of("from-nobody");
    assert_eq!(n["peer_uid"], nobody["uid"], "{n}");
    assert_eq!(n["peer_pid"], nobody["pid"], "{n}");
    let r = of("from-root");
    assert_eq!(r["peer_uid"], 0, "{r}");
    assert_eq!(r["peer_pid"], std::process::id(), "{r}");
}

// === item 8: one record size for socket, batcher, link and server ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r9_8_records_up_to_the_socket_limit_arrive_and_a_larger_one_is_refused_naming_it() {
    assert_eq!(SDK_MAX, gse_proto::MAX_RECORD_BYTES);
    let DataRig {
        cluster: _cluster,
        server: _server,
        sink,
        agent,
        socket: path,
    } = data_rig().await;

    // 9,000,000 bytes (the case) and exactly the limit, each after
    // a small record so they share the data id's open batch.
    let mut conn = connect(&path).await;
    for (tag, len) in [("nine", 9_000_000usize), ("max", SDK_MAX)] {
        conn.write_all(&plain(0xC01, DATA_ID, format!("small-{tag}").as_bytes()))
            .await
            .unwrap();
        let mut payload = format!("{tag}-").into_bytes();
        payload.resize(len, b'a');
        conn.write_all(&plain(0xC01, DATA_ID, &payload))
            .await
            .unwrap();
    }
    conn.shutdown().await.unwrap();

    // One byte over: the connection is closed, with an ERROR naming the limit.
    let mut over = connect(&path).await;
    over.write_all(&header(0xC01, DATA_ID, SDK_MAX as u32 + 1))
        .await
        .unwrap();
    let mut buf = [0u8; 8];
    let closed = tokio::time::timeout(Duration::from_secs(10), over.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the agent keeps a connection whose frame is over the limit: {closed:?}"
    );

    // Both big records are in the sink: accepted means delivered.
    let want = [("nine-", 9_000_000usize), ("max-", SDK_MAX)];
    eventually(
        "both big records in the sink",
        Duration::from_secs(60),
        || async {
            let got: Vec<(String, usize)> = sink_lines(&sink)
                .iter()
                .filter_map(|l| l["data"].as_str())
                .map(|d| (d.chars().take(5).collect(), d.len()))
                .collect();
            let missing: Vec<_> = want
                .iter()
                .filter(|(p, len)| !got.iter().any(|(g, l)| g.starts_with(p) && l == len))
                .collect();
            missing
                .is_empty()
                .then_some(())
                .ok_or(format!("missing {missing:?}"))
        },
    )
    .await;
    let log = agent.log();
    let refusal = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains(&SDK_MAX.to_string()))
        .unwrap_or_else(|| panic!("no ERROR naming the {SDK_MAX}-byte limit"));
    println!("{refusal}");
    assert!(
        !log.contains("larger than the DataServer takes"),
        "the uplink dropped a batch the socket had accepted"
    );
}

// === item 9: the paths real collectors dial ===

/// Data-socket paths collectors dial (COMPAT §1.1): libgse's compiled-in
/// op-data path, the GSE 2.0 layout, the SDK examples, shipped beat configs.
const REAL_DATA_PATHS: [&str; 4] = [
    "/usr/local/gse/gseagent/ipc.state.report",
    "/usr/local/gse/agent/data/ipc.state.report",
    "/var/run/gse2/agent/ipc.state.report",
    "/var/run/ipc.state.report",
];
/// Plugin-message socket path of the SDK examples.
const REAL_MESSAGE_PATHS: [&str; 1] = ["/var/run/gse2/agent/ipc.state.message"];

/// `real` moved under `root` (a test may not touch the host's paths).
fn under(root: &Path, real: &Path) -> PathBuf {
    root.join(real.strip_prefix("/").unwrap())
}

fn sorted(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut v = paths.to_vec();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r9_9_the_packaged_config_serves_the_paths_real_collectors_dial() {
    let shipped_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../etc/gse-agent.toml");
    let shipped = gse_agent::AgentConfig::load(&shipped_path).expect("the shipped config loads");
    let real = |list: &[&str]| sorted(&list.iter().map(PathBuf::from).collect::<Vec<_>>());
    assert_eq!(
        sorted(&shipped.data.ipc_links),
        real(&REAL_DATA_PATHS),
        "etc/gse-agent.toml data.ipc_links"
    );
    assert_eq!(
        sorted(&shipped.plugin.message_ipc_links),
        real(&REAL_MESSAGE_PATHS),
        "etc/gse-agent.toml plugin.message_ipc_links"
    );

    let cluster = Cluster::new();
    let root = cluster.path.join("host");
    // Like a real host: /var/run is root's symlink to /run.
    std::fs::create_dir_all(root.join("run")).unwrap();
    std::fs::create_dir_all(root.join("var")).unwrap();
    std::os::unix::fs::symlink(root.join("run"), root.join("var/run")).unwrap();
    // Another agent's link, which this one must leave alone.
    let foreign = root.join("other/ipc.state.report");
    std::fs::create_dir_all(foreign.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/nonexistent/their.sock", &foreign).unwrap();
    // A directory symlink nobody planted: never followed.
    let victim = root.join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    let planted = root.join("planted");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &planted,
        Some(nobody.uid),
        Some(nobody.gid),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    let through_planted = planted.join("gse/ipc.state.report");

    let server = cluster.server(ServerOptions::default()).await;
    let sink = file_route(&server, DATA_ID).await;
    let (data_links, message_links): (Vec<PathBuf>, Vec<PathBuf>) = (
        shipped
            .data
            .ipc_links
            .iter()
            .map(|p| under(&root, p))
            .collect(),
        shipped
            .plugin
            .message_ipc_links
            .iter()
            .map(|p| under(&root, p))
            .collect(),
    );
    let (data_hook, message_hook) = (data_links.clone(), message_links.clone());
    let (foreign_hook, planted_hook) = (foreign.clone(), through_planted.clone());
    let mut agent = agent_with(&cluster, &server, move |cfg| {
        // Everything as shipped except what points at this host's paths.
        let mut data = shipped.data.clone();
        data.ipc_links = data_hook.clone();
        data.ipc_links.push(foreign_hook.clone());
        data.ipc_links.push(planted_hook.clone());
        let mut plugin = shipped.plugin.clone();
        plugin.message_ipc_links = message_hook.clone();
        cfg.data = data;
        cfg.plugin = plugin;
    });
    server.api.wait_alive("127.0.0.1").await;

    // A record through every data path lands in the sink.
    let mut want = Vec::new();
    for (i, link) in data_links.iter().enumerate() {
        let mut c = connect(link).await;
        let p = format!("via-link-{i}");
        c.write_all(&plain(0xC01, DATA_ID, p.as_bytes()))
            .await
            .unwrap();
        c.shutdown().await.unwrap();
        want.push(p);
    }
    wait_all(&sink, &want, Duration::from_secs(30)).await;
    for link in &message_links {
        UnixStream::connect(link)
            .await
            .unwrap_or_else(|e| panic!("plugin-message link {}: {e}", link.display()));
    }
    // Directories made on the way are root's and not writable by others.
    use std::os::unix::fs::MetadataExt;
    let made = root.join("usr/local/gse/gseagent");
    let meta = std::fs::symlink_metadata(&made).unwrap();
    assert!(meta.is_dir() && meta.uid() == 0, "{}", made.display());
    assert_eq!(
        meta.mode() & 0o022,
        0,
        "{} mode {:o}",
        made.display(),
        meta.mode()
    );
    assert!(
        root.join("run/gse2/agent/ipc.state.report").exists(),
        "root's /var/run symlink is followed"
    );
    assert!(
        std::fs::symlink_metadata(root.join("var/run"))
            .unwrap()
            .is_symlink()
    );
    // nobody's symlink was not followed, and the agent said so.
    assert_eq!(
        std::fs::read_dir(&victim).unwrap().count(),
        0,
        "wrote through nobody's symlink"
    );
    assert!(
        agent.log().contains(&planted.display().to_string()),
        "the refusal names the path"
    );
    assert_eq!(
        std::fs::read_link(&foreign).unwrap(),
        Path::new("/nonexistent/their.sock"),
        "another agent's link was replaced"
    );

    // A clean stop removes its links and only those.
    agent.stop();
    for link in data_links.iter().chain(&message_links) {
        assert!(
            std::fs::symlink_metadata(link).is_err(),
            "{} left behind",
            link.display()
        );
    }
    assert!(
        std::fs::symlink_metadata(&foreign).unwrap().is_symlink(),
        "another agent's link removed"
    );
}

// === item 10: data_log_path bounds ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r9_10_data_log_path_with_control_characters_or_too_long_is_refused() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let add_file_sink = |path: String| {
        let api = &server.api;
        async move {
            let body = json!({
                "operation": {"operator_name": "admin"},
                "metadata": {"plat_name": "bkmonitor"},
                "stream_to": {"name": "f", "report_mode": "file", "data_log_path": path},
            });
            api.post("/api/v2/data/add_streamto", body).await
        }
    };
    let long = "a/".repeat(2049);
    for (what, path) in [
        ("a newline", "logs\nx".to_string()),
        ("an escape", "logs\u{1b}[31m".to_string()),
        ("a DEL", "logs\u{7f}".to_string()),
        ("4098 bytes", long),
    ] {
        let (status, v) = add_file_sink(path).await;
        assert!((400..500).contains(&status), "{what}: status {status}: {v}");
        assert_ne!(v["code"], 0, "{what}: {v}");
        let message = v["message"].as_str().unwrap_or_default();
        assert!(message.contains("data_log_path"), "{what}: {message}");
    }
    // 4096 bytes is fine.
    let (status, v) = add_file_sink("b/".repeat(2048)).await;
    assert_eq!((status, &v["code"]), (200, &json!(0)), "{v}");
}
