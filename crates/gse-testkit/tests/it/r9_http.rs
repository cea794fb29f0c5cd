//! Issue 9 item 2 (and parts of item 10): the HTTP API and the accept loops
//! under hostile network clients. Every attack is a `gse-hostile` process
//! speaking raw HTTP/1.1, so the server's answers are seen byte for byte.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use gse_server::config::ServerConfig;
use gse_testkit::hostile::hold::Background;
use gse_testkit::{AgentOptions, Cluster, ServerOptions, ServerProc, bin, eventually};
use serde_json::{Value, json};

const LIST_AGENTS: &str = "/api/v2/cluster/list_agents";
const EXECUTE: &str = "/api/v2/task/extensions/async_execute_script";
const RESULT: &str = "/api/v2/task/extensions/get_execute_script_result";

fn server_opts(f: impl Fn(&mut ServerConfig) + Send + Sync + 'static) -> ServerOptions {
    ServerOptions {
        customize: Some(Arc::new(f)),
        ..ServerOptions::default()
    }
}

fn hostile(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("gse-hostile"));
    cmd.args(args);
    cmd
}

/// Starts `hold-connections` and returns it with its "opened" summary
/// (printed once the counts `extra` asks to wait for are reached).
pub(crate) async fn hold(
    server_addr: String,
    bind: &str,
    count: usize,
    extra: &[&str],
) -> (Background, Value) {
    let count = count.to_string();
    let mut args = vec![
        "hold-connections",
        "--addr",
        &server_addr,
        "--bind",
        bind,
        "--count",
        &count,
    ];
    args.extend_from_slice(extra);
    let mut bg = Background::spawn(hostile(&args));
    let opened = tokio::task::spawn_blocking(move || {
        let v = bg.next_json();
        (bg, v)
    })
    .await
    .unwrap();
    (opened.0, opened.1)
}

/// The "done" summary of a `hold-connections` run.
pub(crate) async fn done(mut bg: Background) -> Value {
    tokio::task::spawn_blocking(move || bg.next_json())
        .await
        .unwrap()
}

/// Runs one `gse-hostile` step to completion and returns its JSON line.
async fn run(args: Vec<String>) -> Value {
    tokio::task::spawn_blocking(move || {
        gse_testkit::hostile::run_json(Command::new(bin("gse-hostile")).args(&args))
    })
    .await
    .unwrap()
}

/// One raw request from `bind` (`extra`: more `http-request` flags).
pub(crate) async fn request(server: &ServerProc, bind: &str, path: &str, extra: &[&str]) -> Value {
    let mut args: Vec<String> = ["http-request", "--addr", &server.api_addr.to_string()]
        .iter()
        .chain(&["--bind", bind, "--path", path])
        .map(|s| s.to_string())
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    run(args).await
}

fn auth_header(server: &ServerProc) -> String {
    let creds = json!({"bk_app_code": server.api.app_code, "bk_app_secret": server.api.app_secret});
    format!("X-Bkapi-Authorization: {creds}")
}

fn count(v: &Value, map: &str, key: &str) -> u64 {
    v[map][key].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn r9_2_half_sent_headers_are_closed_after_the_header_timeout() {
    let cluster = Cluster::new();
    let server = cluster
        .server(server_opts(|c| {
            c.api.header_read_timeout = Duration::from_secs(2);
            c.api.idle_timeout = Duration::from_secs(300);
        }))
        .await;
    let addr = server.api_addr.to_string();
    let watch = ["--watch-secs", "30"];
    let (silent, _) = hold(
        addr.clone(),
        "127.0.0.1",
        50,
        &[&["--send", "half-header"][..], &watch].concat(),
    )
    .await;
    // A client trickling one header byte every 300 ms is not idle, but its
    // headers still never complete.
    let trickle = [
        &["--send", "half-header", "--trickle-ms", "300"][..],
        &watch,
    ]
    .concat();
    let (trickling, _) = hold(addr, "127.0.0.1", 5, &trickle).await;
    for (what, bg, n) in [("silent", silent, 50), ("trickling", trickling, 5)] {
        let v = done(bg).await;
        assert_eq!(
            v["closed"], n,
            "{what}: every half-sent connection closed: {v}"
        );
        let (min, max) = (
            v["closed_ms_min"].as_u64().unwrap(),
            v["closed_ms_max"].as_u64().unwrap(),
        );
        assert!(
            min >= 1500 && max < 15_000,
            "{what}: closed after ~2 s: {v}"
        );
    }
}

#[tokio::test]
async fn r9_2_idle_connections_are_closed_after_the_idle_timeout() {
    let cluster = Cluster::new();
    let server = cluster
        .server(server_opts(|c| {
            c.api.header_read_timeout = Duration::from_secs(300);
            c.api.idle_timeout = Duration::from_secs(2);
        }))
        .await;
    let args = [
        "--send",
        "idle-after-request",
        "--watch-secs",
        "30",
        "--until-answered",
        "5",
    ];
    let (bg, opened) = hold(server.api_addr.to_string(), "127.0.0.1", 5, &args).await;
    assert_eq!(
        count(&opened, "statuses", "200"),
        5,
        "each got its answer: {opened}"
    );
    let v = done(bg).await;
    assert_eq!(v["closed"], 5, "idle keep-alive connections closed: {v}");
    let (min, max) = (
        v["closed_ms_min"].as_u64().unwrap(),
        v["closed_ms_max"].as_u64().unwrap(),
    );
    assert!(min >= 1500 && max < 15_000, "closed after ~2 s idle: {v}");
}

#[tokio::test]
async fn r9_2_one_address_cannot_take_the_api_and_over_the_cap_is_503() {
    let cluster = Cluster::new();
    let server = cluster
        .server(server_opts(|c| {
            c.api.max_connections = 12;
            c.api.max_connections_per_ip = 5;
            c.api.header_read_timeout = Duration::from_secs(300);
            c.api.idle_timeout = Duration::from_secs(300);
        }))
        .await;
    let addr = server.api_addr.to_string();
    let args = ["--send", "half-header", "--watch-secs", "300"];

    // One address holding 10: 5 kept, 5 answered 503 in the envelope and
    // closed (the server takes them in order, so the 5 kept came first).
    let until_5_closed = [&args[..], &["--until-closed", "5"]].concat();
    let (a, opened) = hold(addr.clone(), "127.0.0.11", 10, &until_5_closed).await;
    assert_eq!(opened["open"], 5, "{opened}");
    assert_eq!(count(&opened, "statuses", "503"), 5, "{opened}");
    assert_eq!(count(&opened, "codes", "1000503"), 5, "{opened}");
    let msg = opened["messages"][0].as_str().unwrap_or_default();
    assert!(
        msg.contains("127.0.0.11") && msg.contains("api.max_connections_per_ip"),
        "{msg}"
    );

    // Another address still gets answers, authenticated calls included.
    let v = request(
        &server,
        "127.0.0.2",
        LIST_AGENTS,
        &["--header", &auth_header(&server)],
    )
    .await;
    assert_eq!(
        (v["status"].as_u64(), v["json"]["code"].as_i64()),
        (Some(200), Some(0)),
        "{v}"
    );

    // Two more addresses fill the global cap of 12 (the test's own client
    // may hold a pooled connection too): the 13th connection and later
    // ones are refused whatever their address.
    let (b, opened) = hold(addr.clone(), "127.0.0.12", 5, &args).await;
    assert_eq!(opened["open"], 5, "{opened}");
    let until_3_closed = [&args[..], &["--until-closed", "3"]].concat();
    let (c, opened) = hold(addr.clone(), "127.0.0.13", 5, &until_3_closed).await;
    assert!(opened["open"].as_u64().unwrap() <= 2, "{opened}");
    assert!(count(&opened, "codes", "1000503") >= 3, "{opened}");
    let msg = opened["messages"][0].as_str().unwrap_or_default();
    assert!(msg.contains("api.max_connections"), "{msg}");
    // While the cap is full, any address is refused. A connection the
    // server was still closing when `c` connected (the 127.0.0.2 call's)
    // leaves a place free once it is gone: each 200 here means such a
    // place, which one more held connection takes.
    let mut top_ups = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let v = request(&server, "127.0.0.2", "/healthz", &["--method", "GET"]).await;
        if (v["status"].as_u64(), v["json"]["code"].as_i64()) == (Some(503), Some(1000503)) {
            let msg = v["json"]["message"].as_str().unwrap_or_default();
            assert!(
                msg.contains("api.max_connections") && !msg.contains("per_ip"),
                "{msg}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the global cap never filled ({} held after c): {v}",
            top_ups.len()
        );
        // Accepted in order: this one is taken before the next /healthz.
        let bind = format!("127.0.1.{}", top_ups.len() + 1);
        top_ups.push(hold(addr.clone(), &bind, 1, &args).await.0);
    }

    // Connections closed: the API answers again.
    drop((a, b, c, top_ups));
    eventually("the API answers again", Duration::from_secs(15), || async {
        let v = request(&server, "127.0.0.2", "/healthz", &["--method", "GET"]).await;
        (v["status"] == 200).then_some(()).ok_or(v.to_string())
    })
    .await;
}

#[tokio::test]
async fn r9_2_agents_register_while_the_api_connections_are_exhausted() {
    let cluster = Cluster::new();
    let server = cluster
        .server(ServerOptions {
            open_files_limit: Some(256),
            ..server_opts(|c| {
                c.api.fd_reserve = 128;
                c.api.header_read_timeout = Duration::from_secs(300);
                c.api.idle_timeout = Duration::from_secs(300);
            })
        })
        .await;
    // 300 held connections: more than the 256 descriptors the server has.
    // Those over the cap are closed (most answered 503 first): wait until
    // at least 300 - 128 are, so none still waits in the accept backlog.
    let args = [
        "--send",
        "half-header",
        "--watch-secs",
        "300",
        "--until-closed",
        "172",
    ];
    let (holder, opened) = hold(server.api_addr.to_string(), "127.0.0.1", 300, &args).await;
    assert!(
        opened["open"].as_u64().unwrap() <= 128,
        "the API holds at most 256 - 128: {opened}"
    );
    assert!(
        count(&opened, "codes", "1000503") >= 1,
        "refused ones are told why: {opened}"
    );

    // A new agent still registers and gets its data link.
    let agent = cluster.agent(&server, AgentOptions::ip("127.0.2.1"));
    eventually(
        "the agent registered and its data link up",
        Duration::from_secs(30),
        || async {
            let log = server.log();
            let registered = log
                .lines()
                .any(|l| l.contains("agent registered") && l.contains("127.0.2.1"));
            let data = log
                .lines()
                .any(|l| l.contains("data link up") && l.contains("127.0.2.1"));
            (registered && data)
                .then_some(())
                .ok_or(format!("registered {registered}, data link {data}"))
        },
    )
    .await;
    drop(holder);
    eventually(
        "the API sees the agent",
        Duration::from_secs(15),
        || async {
            (server.api.alive(0, "127.0.2.1").await == 1)
                .then_some(())
                .ok_or(String::new())
        },
    )
    .await;
    drop(agent);
}

/// Resident set (kB) and its peak of a process, from /proc.
fn memory_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test]
async fn r9_2_unauthenticated_big_bodies_do_not_grow_the_server() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let (rss_before, hwm_before) = memory_kb(server.pid());
    let mb8 = (8 << 20).to_string();
    let v = run([
        "big-bodies",
        "--addr",
        &server.api_addr.to_string(),
        "--count",
        "100",
        "--bytes",
        &mb8,
    ]
    .map(String::from)
    .to_vec())
    .await;
    let (_, hwm_after) = memory_kb(server.pid());
    let grew_mb = hwm_after.saturating_sub(rss_before.max(hwm_before)) / 1024;
    assert!(
        grew_mb < 100,
        "100 x 8 MiB unauthenticated bodies raised the server's peak RSS by {grew_mb} MiB: {v}"
    );
    assert_eq!(
        v["answers"]["401 1000401"], 100,
        "each told to authenticate: {v}"
    );

    // Credentials in the body still work for small requests.
    let (status, v) = server.api.post(LIST_AGENTS, json!({})).await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    // A big body with its credentials only in the body is refused, saying
    // what to do; with credential headers it is read.
    let pad = "x".repeat(100 * 1024);
    let body = json!({"bk_app_code": server.api.app_code, "bk_app_secret": server.api.app_secret, "pad": pad});
    let (status, v) = server
        .api
        .send(LIST_AGENTS, body.to_string().into_bytes(), &[])
        .await;
    assert_eq!((status, v["code"].as_i64()), (401, Some(1000401)), "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("api.preauth_body_limit"),
        "{v}"
    );
    let (status, v) = server
        .api
        .post_header_auth(LIST_AGENTS, json!({"pad": pad}))
        .await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
}

#[tokio::test]
async fn r9_2_results_answer_once_per_agent_and_within_the_answer_cap() {
    let cluster = Cluster::new();
    let server = cluster
        .server(server_opts(|c| c.api.max_response_bytes = 16 * 1024))
        .await;
    let ip = "127.0.2.2";
    let _agent = cluster.agent(&server, AgentOptions::ip(ip));
    let api = &server.api;
    eventually("agent alive", Duration::from_secs(20), || async {
        (api.alive(0, ip).await == 1)
            .then_some(())
            .ok_or(String::new())
    })
    .await;
    let agent = format!("0:{ip}");
    let body = json!({
        "agents": [{"bk_agent_id": agent}],
        "atomic_tasks": [{"atomic_task_id": 0, "command": "head -c 200000 /dev/zero | tr '\\0' a", "timeout_seconds": 60}],
    });
    let (_, v) = api.post_header_auth(EXECUTE, body).await;
    let task_id = v["data"]["result"]["task_id"]
        .as_str()
        .expect("task id")
        .to_string();
    let one = json!({"bk_agent_id": agent, "atomic_tasks": [{"atomic_task_id": 0, "offset": 0}]});
    eventually("the task finished", Duration::from_secs(30), || async {
        let (_, v) = api
            .post_header_auth(RESULT, json!({"task_id": task_id, "agent_tasks": [one]}))
            .await;
        (v["data"]["result"][0]["status"] == 2)
            .then_some(())
            .ok_or(v.to_string())
    })
    .await;

    // The same agent named 5,000 times: one entry, cut to fit the cap.
    let many = vec![one.clone(); 5000];
    let (status, v) = api
        .post_header_auth(RESULT, json!({"task_id": task_id, "agent_tasks": many}))
        .await;
    assert_eq!(
        (status, v["code"].as_i64()),
        (200, Some(0)),
        "{}",
        v.to_string().len()
    );
    let list = v["data"]["result"].as_array().unwrap();
    assert_eq!(list.len(), 1, "one entry per agent and atomic task");
    let screen = list[0]["screen"].as_str().unwrap();
    assert!(
        !screen.is_empty() && screen.len() <= 8 * 1024 && screen.bytes().all(|b| b == b'a'),
        "{}",
        screen.len()
    );
    assert!(v.to_string().len() <= 16 * 1024);

    // An answer that cannot be cut to fit is refused, naming the cap.
    let atomic: Vec<Value> = (0..100)
        .map(|i| json!({"atomic_task_id": i, "command": "true", "timeout_seconds": 60}))
        .collect();
    let (_, v) = api
        .post_header_auth(
            EXECUTE,
            json!({"agents": [{"bk_agent_id": agent}], "atomic_tasks": atomic}),
        )
        .await;
    let task_id = v["data"]["result"]["task_id"]
        .as_str()
        .expect("task id")
        .to_string();
    let (status, v) = api
        .post_header_auth(RESULT, json!({"task_id": task_id}))
        .await;
    assert_eq!((status, v["code"].as_i64()), (413, Some(1000413)), "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("api.max_response_bytes"),
        "{v}"
    );
}

#[tokio::test]
async fn r9_10_uri_and_header_limits_answer_in_the_envelope() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let cases: [(&str, &[&str], u64); 4] = [
        ("a 20 KB URI", &["--path-pad", "20000"], 414),
        ("a 100 KB header", &["--header-pad", "100000"], 431),
        ("200 headers", &["--header-count", "200"], 431),
        (
            "a request line that is not HTTP",
            &["--method", "BAD(METHOD"],
            400,
        ),
    ];
    for (what, extra, want) in cases {
        let v = request(&server, "127.0.0.1", LIST_AGENTS, extra).await;
        assert_eq!(v["status"].as_u64(), Some(want), "{what}: {v}");
        assert_eq!(v["json"]["result"], false, "{what}: an envelope: {v}");
        assert_eq!(
            v["json"]["code"].as_u64(),
            Some(1_000_000 + want),
            "{what}: {v}"
        );
    }
}

#[tokio::test]
async fn r9_10_numbers_given_as_strings_are_refused() {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let api = &server.api;
    let agent = json!({"bk_agent_id": "0:127.0.0.1"});
    let cases = [
        (
            "/api/c/compapi/v2/gse/get_agent_status/",
            json!({"hosts": [{"ip": "10.0.0.1", "bk_cloud_id": "0"}]}),
            "hosts[0].bk_cloud_id",
        ),
        (
            EXECUTE,
            json!({"agents": [agent], "atomic_tasks": [{"atomic_task_id": 0, "command": "true", "timeout_seconds": "60"}]}),
            "atomic_tasks[0].timeout_seconds",
        ),
        (
            RESULT,
            json!({"task_id": "GSETASK:S:x:1", "agent_tasks": [{"bk_agent_id": "0:127.0.0.1", "atomic_tasks": [{"atomic_task_id": 0, "offset": "0"}]}]}),
            "agent_tasks[0].atomic_tasks[0].offset",
        ),
        (
            "/api/v2/task/extensions/async_transfer_file",
            json!({"timeout_seconds": "10", "tasks": [{"source": {"file_name": "a", "store_dir": "/tmp", "agent": agent}, "target": {"file_name": "a", "store_dir": "/tmp/x", "agents": [agent]}}]}),
            "timeout_seconds",
        ),
        (
            "/api/v2/data/add_route",
            json!({"metadata": {"plat_name": "bkmonitor", "channel_id": "1001"}, "operation": {"operator_name": "admin"}}),
            "metadata.channel_id",
        ),
        (
            "/api/v2/proc/operate_proc_multi",
            json!({"proc_operate_req": [{"meta": {"namespace": "nodeman", "name": "p"}, "op_type": "0", "agent_id_list": ["0:127.0.0.1"]}]}),
            "op_type",
        ),
    ];
    for (path, body, field) in cases {
        let (status, v) = api.post_header_auth(path, body).await;
        assert_eq!(
            (status, v["code"].as_i64()),
            (400, Some(1000400)),
            "{path}: {v}"
        );
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.contains(field) && msg.contains("integer"),
            "{path}: {msg}"
        );
    }
}

#[tokio::test]
async fn r9_10_refused_connections_are_logged_once_per_burst() {
    let cluster = Cluster::new();
    let server = cluster
        .server(server_opts(|c| {
            c.api.max_connections = 4;
            c.api.max_connections_per_ip = 2;
        }))
        .await;
    let args = ["--send", "half-header", "--watch-secs", "60"];
    // 100 refused API connections, and 100 connections to the agent link
    // that are not TLS at all.
    let (api_holder, _) = hold(server.api_addr.to_string(), "127.0.0.21", 100, &args).await;
    let (link_holder, _) = hold(server.link_addr.to_string(), "127.0.0.22", 100, &args).await;
    let lines_about = |ip: &str| {
        server
            .log()
            .lines()
            .filter(|l| l.contains(ip))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    eventually(
        "a summary line per burst",
        Duration::from_secs(30),
        || async {
            let api = lines_about("127.0.0.21");
            let link = lines_about("127.0.0.22");
            let summary = |lines: &[String]| lines.iter().any(|l| l.contains("in the last"));
            (summary(&api) && summary(&link))
                .then_some(())
                .ok_or(format!("{api:#?}\n{link:#?}"))
        },
    )
    .await;
    for ip in ["127.0.0.21", "127.0.0.22"] {
        let lines = lines_about(ip);
        assert!(
            lines.len() <= 10,
            "{} lines about {ip}:\n{lines:#?}",
            lines.len()
        );
    }
    drop((api_holder, link_holder));
}
