//! D1, D4, D5 end to end: a collector written here from COMPAT.md §1.2's
//! byte layouts talks to a real agent's local socket; records travel over
//! the agent's data link to a real DataServer and land in a file sink made
//! through the route API (COMPAT §2.3). SIGKILL of the server, a server
//! that is down when the agent starts, `gse-agent send`, and agents moved
//! between two DataServers (D4) must lose nothing (at-least-once: the
//! duplicates are counted and printed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gse_testkit::{
    AgentOptions, AgentProc, Cluster, ServerOptions, ServerProc, bin, eventually, read_lines,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

pub(crate) const DATA_ID: u32 = 1001;

// === the collector: COMPAT §1.2 frames ===

pub(crate) fn header(msg_type: u32, data_id: u32, body_len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    for v in [msg_type, data_id, 1_700_000_000, body_len, 0, 0] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

/// 0xC01 and 0xC0C: the whole body is the payload.
pub(crate) fn plain(msg_type: u32, data_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = header(msg_type, data_id, payload.len() as u32);
    out.extend_from_slice(payload);
    out
}

/// 0x09 as libgse sends it: 24-byte extension {index, flags, metaLen,
/// metaMaxLen = 408, metaCount}, the 408-byte meta area, then the payload.
fn dynamic(data_id: u32, payload: &[u8], meta: Option<(&str, &str)>) -> Vec<u8> {
    let mut area = Vec::new();
    if let Some((k, v)) = meta {
        area.extend_from_slice(&(k.len() as u32).to_be_bytes());
        area.extend_from_slice(&(v.len() as u32).to_be_bytes());
        area.extend_from_slice(k.as_bytes());
        area.extend_from_slice(v.as_bytes());
    }
    let meta_len = area.len() as u32;
    area.resize(408, 0);
    let mut out = header(0x09, data_id, (24 + 408 + payload.len()) as u32);
    out.extend_from_slice(&0u64.to_be_bytes());
    for v in [0u32, meta_len, 408, u32::from(meta.is_some())] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&area);
    out.extend_from_slice(payload);
    out
}

pub(crate) fn socket_of(agent: &AgentProc) -> PathBuf {
    agent.dir.join("data").join("ipc.state.report")
}

pub(crate) async fn connect(path: &Path) -> UnixStream {
    eventually(
        "the agent's data socket",
        Duration::from_secs(20),
        || async { UnixStream::connect(path).await.map_err(|e| e.to_string()) },
    )
    .await
}

/// Asks 0x0A and reads the reply in one read, as libgse does.
async fn agent_info(conn: &mut UnixStream) -> Value {
    conn.write_all(&header(0x0A, 0, 0)).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("a 0x0A reply")
        .unwrap();
    assert!(n >= 8, "short reply: {n} bytes");
    let ty = u32::from_be_bytes(buf[0..4].try_into().unwrap());
    let len = u32::from_be_bytes(buf[4..8].try_into().unwrap()) as usize;
    assert_eq!(ty, 0x0A);
    assert_eq!(n, 8 + len, "header and body came in one read");
    serde_json::from_slice(&buf[8..n]).unwrap()
}

// === routes and the file sink ===

/// A file stream_to and a route for `data_id`; returns the sink file.
/// A server with a file route for [`DATA_ID`] and one alive agent,
/// 127.0.0.1, whose local data socket is `socket`.
pub(crate) struct DataRig {
    pub cluster: Cluster,
    pub server: ServerProc,
    pub sink: PathBuf,
    pub agent: AgentProc,
    pub socket: PathBuf,
}

pub(crate) async fn data_rig() -> DataRig {
    let cluster = Cluster::new();
    let server = cluster.server(ServerOptions::default()).await;
    let sink = file_route(&server, DATA_ID).await;
    let agent = cluster.agent(&server, AgentOptions::ip("127.0.0.1"));
    server.api.wait_alive("127.0.0.1").await;
    let socket = socket_of(&agent);
    DataRig {
        cluster,
        server,
        sink,
        agent,
        socket,
    }
}

pub(crate) async fn file_route(server: &ServerProc, data_id: u32) -> PathBuf {
    let (status, v) = server
        .api
        .post(
            "/api/v2/data/add_streamto",
            json!({
                "operation": {"operator_name": "admin"},
                "metadata": {"plat_name": "bkmonitor"},
                "stream_to": {"name": format!("file_{data_id}"), "report_mode": "file", "data_log_path": "sink"},
            }),
        )
        .await;
    assert_eq!((status, &v["code"]), (200, &json!(0)), "{v}");
    let stream_to_id = v["data"]["stream_to_id"].as_u64().expect("stream_to_id");
    let (status, v) = server
        .api
        .post(
            "/api/v2/data/add_route",
            json!({
                "operation": {"operator_name": "admin"},
                "metadata": {"plat_name": "bkmonitor", "channel_id": data_id},
                "route": [{"name": "r1", "stream_to": {"stream_to_id": stream_to_id}}],
            }),
        )
        .await;
    assert_eq!((status, &v["code"]), (200, &json!(0)), "{v}");
    server
        .dir
        .join("data")
        .join("sink")
        .join(format!("{data_id}_r1.jsonl"))
}

/// Payload -> how many times it is in the sink file.
pub(crate) fn sink_counts(path: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in read_lines(path) {
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let data = v["data"].as_str().unwrap_or_default().to_string();
        *counts.entry(data).or_default() += 1;
    }
    counts
}

/// Waits until every payload in `want` is in the sink; prints duplicates.
pub(crate) async fn wait_all(
    path: &Path,
    want: &[String],
    within: Duration,
) -> HashMap<String, usize> {
    let counts = eventually(
        &format!("{} records in {}", want.len(), path.display()),
        within,
        || async {
            let counts = sink_counts(path);
            let missing = want.iter().filter(|p| !counts.contains_key(*p)).count();
            if missing == 0 {
                Ok(counts)
            } else {
                Err(format!("{missing} of {} missing", want.len()))
            }
        },
    )
    .await;
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "{} records delivered, {} of them more than once (at-least-once){}",
        want.len(),
        dups.len(),
        if dups.is_empty() {
            String::new()
        } else {
            format!(": {:?}", dups.iter().take(10).collect::<Vec<_>>())
        }
    );
    counts
}

/// Sends `n` records `<tag>-<i>` as 0xC01 on one connection, `per_tick` at a
/// time every `tick`.
pub(crate) async fn stream_records(
    path: PathBuf,
    tag: String,
    n: usize,
    per_tick: usize,
    tick: Duration,
) {
    let mut conn = connect(&path).await;
    for chunk in (0..n).collect::<Vec<_>>().chunks(per_tick) {
        let mut buf = Vec::new();
        for i in chunk {
            buf.extend(plain(0xC01, DATA_ID, format!("{tag}-{i}").as_bytes()));
        }
        conn.write_all(&buf).await.unwrap();
        tokio::time::sleep(tick).await;
    }
}

/// Streams 3000 records `<tag>-<i>` into `socket`, runs `crash` once some
/// have reached `sink` (a process killed and brought back), and waits until
/// every record is in the sink: nothing acknowledged is lost.
pub(crate) async fn records_survive(
    socket: PathBuf,
    sink: &Path,
    tag: &str,
    crash: impl AsyncFnOnce(),
) {
    let n = 3000;
    let sender = tokio::spawn(stream_records(
        socket,
        tag.into(),
        n,
        30,
        Duration::from_millis(20),
    ));
    // Let some arrive, then crash in the middle of the stream.
    eventually("records flowing", Duration::from_secs(30), || async {
        (sink_counts(sink).len() > 200)
            .then_some(())
            .ok_or("few".to_string())
    })
    .await;
    crash().await;
    sender.await.unwrap();
    let want: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    wait_all(sink, &want, Duration::from_secs(90)).await;
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_collector_frames_reach_the_file_sink_and_bad_frames_close_only_their_connection() {
    let DataRig {
        cluster: _cluster,
        server: _server,
        sink,
        agent,
        socket: path,
    } = data_rig().await;

    let mut main = connect(&path).await;
    let info = agent_info(&mut main).await;
    assert_eq!(info["ip"], "127.0.0.1", "{info}");
    assert_eq!(info["cloudid"], 0);
    assert_eq!(info["cloud_id"], 0);
    assert!(!info["bk_agent_id"].as_str().unwrap().is_empty(), "{info}");

    let mut want = Vec::new();
    for i in 0..5 {
        let p = format!("{{\"beat\":\"dynamic\",\"i\":{i}}}");
        let meta = (i == 0).then_some(("k", "v"));
        main.write_all(&dynamic(DATA_ID, p.as_bytes(), meta))
            .await
            .unwrap();
        want.push(p);
    }
    let p = "{\"sdk\":\"common\"}".to_string();
    main.write_all(&plain(0xC01, DATA_ID, p.as_bytes()))
        .await
        .unwrap();
    want.push(p);
    // libgse sends every op record on a fresh connection.
    for i in 0..3 {
        let mut op = connect(&path).await;
        let p = format!("{{\"op\":{i}}}");
        op.write_all(&plain(0xC0C, DATA_ID, p.as_bytes()))
            .await
            .unwrap();
        op.shutdown().await.unwrap();
        want.push(p);
    }

    // Malformed frames, each on its own connection: the agent closes it.
    let mut dyn_too_short = header(0x09, DATA_ID, 10);
    dyn_too_short.extend_from_slice(&[0; 10]);
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("oversized body", header(0xC01, DATA_ID, u32::MAX)),
        ("unknown type", plain(0x77, DATA_ID, b"x")),
        ("bad 0x09 length", dyn_too_short),
        ("truncated header", header(0xC01, DATA_ID, 1)[..10].to_vec()),
    ];
    for (what, bytes) in bad {
        let mut c = connect(&path).await;
        c.write_all(&bytes).await.unwrap();
        if what == "truncated header" {
            c.shutdown().await.unwrap();
        }
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "{what}: the agent should close the connection, got {closed:?}"
        );
    }
    // The first connection still works.
    let p = "{\"after\":\"bad frames\"}".to_string();
    main.write_all(&plain(0xC01, DATA_ID, p.as_bytes()))
        .await
        .unwrap();
    want.push(p);
    assert_eq!(agent_info(&mut main).await["ip"], "127.0.0.1");

    let counts = wait_all(&sink, &want, Duration::from_secs(30)).await;
    let line: Value = serde_json::from_str(&read_lines(&sink)[0]).unwrap();
    assert_eq!(line["dataid"], DATA_ID);
    assert_eq!(line["agent"], "0:127.0.0.1");
    assert!(counts.len() >= want.len());
    assert!(
        agent.log().contains("bad frame"),
        "the agent logs the bad frames"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_server_sigkill_mid_stream_loses_no_record() {
    let DataRig {
        cluster: _cluster,
        mut server,
        sink,
        agent,
        socket: _socket,
    } = data_rig().await;
    records_survive(socket_of(&agent), &sink, "kill", async || {
        server.kill9();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.start_again().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_records_spool_while_the_server_is_down_and_drain_when_it_is_back() {
    let cluster = Cluster::new();
    let mut server = cluster.server(ServerOptions::default()).await;
    let sink = file_route(&server, DATA_ID).await;
    server.kill9();
    // The agent starts with no server at all: its records go to the spool.
    let agent = cluster.agent(&server, AgentOptions::ip("127.0.0.1"));
    let n = 500;
    stream_records(
        socket_of(&agent),
        "spool".into(),
        n,
        50,
        Duration::from_millis(10),
    )
    .await;
    let spool = agent.dir.join("data").join("data-spool");
    eventually("spooled batches", Duration::from_secs(10), || async {
        let segs = std::fs::read_dir(&spool)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
                    .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                    .sum::<u64>()
            })
            .unwrap_or(0);
        (segs > 0)
            .then_some(())
            .ok_or(format!("{segs} bytes spooled"))
    })
    .await;
    assert!(!sink.exists() || sink_counts(&sink).is_empty());
    server.start_again().await;
    let want: Vec<String> = (0..n).map(|i| format!("spool-{i}")).collect();
    wait_all(&sink, &want, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_gse_agent_send_turns_stdin_lines_into_records() {
    let DataRig {
        cluster,
        server: _server,
        sink,
        agent,
        socket,
    } = data_rig().await;
    connect(&socket).await;

    let run = |args: Vec<String>, stdin: &'static str| {
        let mut child = std::process::Command::new(bin("gse-agent"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let config = agent.config_path.display().to_string();
    let out = run(
        vec![
            "--config".into(),
            config,
            "send".into(),
            "--data-id".into(),
            DATA_ID.to_string(),
        ],
        "line one\nline two\n\nline three\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("sent 3 records"), "{stdout}");
    let want: Vec<String> = ["line one", "line two", "line three"]
        .map(String::from)
        .to_vec();
    wait_all(&sink, &want, Duration::from_secs(30)).await;

    let missing = cluster.path.join("no-such.sock");
    let out = run(
        vec![
            "send".into(),
            "--data-id".into(),
            "1".into(),
            "--socket".into(),
            missing.display().to_string(),
        ],
        "x\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&missing.display().to_string()) && stderr.contains("start gse-agent"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_agents_move_between_data_servers_without_loss() {
    let cluster = Cluster::new();
    let opts = ServerOptions {
        customize: Some(Arc::new(|cfg| {
            cfg.data.listen = vec!["127.0.0.1:0".parse().unwrap(); 2];
            cfg.data.rebalance_interval = Duration::from_secs(2);
        })),
        ..ServerOptions::default()
    };
    let server = cluster.server(opts).await;
    let sink = file_route(&server, DATA_ID).await;
    // Registered one after another, the agents alternate between the two
    // DataServers: 1 and 3 on the first, 2 and 4 on the second.
    let mut agents = Vec::new();
    for i in 1..=4 {
        let ip = format!("127.0.0.{i}");
        agents.push(cluster.agent(&server, AgentOptions::ip(&ip)));
        server.api.wait_alive(&ip).await;
    }
    // Only agents 1 and 3 send: the first DataServer carries all the load,
    // so the node moves one of them to the second.
    let n = 1500;
    let pad = "x".repeat(1000);
    let mut senders = Vec::new();
    for i in [0usize, 2] {
        let path = socket_of(&agents[i]);
        let tag = format!("a{}-{pad}", i + 1);
        senders.push(tokio::spawn(stream_records(
            path,
            tag,
            n,
            10,
            Duration::from_millis(20),
        )));
    }
    for s in senders {
        s.await.unwrap();
    }
    let want: Vec<String> = [1, 3]
        .iter()
        .flat_map(|a| (0..n).map(move |i| format!("a{a}-{}-{i}", "x".repeat(1000))))
        .collect();
    wait_all(&sink, &want, Duration::from_secs(60)).await;
    let log = server.log();
    assert!(
        log.contains("rebalance:"),
        "the node moved no agent; server log:\n{}",
        log.lines()
            .filter(|l| l.contains("data"))
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let moved = agents
        .iter()
        .filter(|a| a.log().contains("DataServer reassigned"))
        .count();
    assert!(moved >= 1, "no agent saw a DataAssign");
}

/// A full spool drops the oldest batches; the agent reports the count in
/// its heartbeats and the node raises one `data_dropped` alarm naming the
/// setting to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_a_full_spool_drops_the_oldest_and_the_node_raises_an_alarm() {
    use gse_server::config::Role;

    let cluster = Cluster::new();
    // No DataServer on this node: the agent can only spool.
    let server = cluster
        .server(ServerOptions {
            customize: Some(Arc::new(|cfg| {
                cfg.node.roles = vec![Role::Api, Role::Link, Role::Alarm];
            })),
            ..ServerOptions::default()
        })
        .await;
    let agent = cluster.agent(
        &server,
        AgentOptions {
            customize: Some(Arc::new(|cfg| {
                cfg.data.spool_max_mb = 1;
                cfg.data.batch_max_kb = 16;
            })),
            ..AgentOptions::ip("127.0.0.1")
        },
    );
    server.api.wait_alive("127.0.0.1").await;
    // About 4 MB of records into a 1 MB spool.
    let mut conn = connect(&socket_of(&agent)).await;
    let payload = vec![b'x'; 1000];
    for _ in 0..40 {
        let mut buf = Vec::new();
        for _ in 0..100 {
            buf.extend(plain(0xC01, DATA_ID, &payload));
        }
        conn.write_all(&buf).await.unwrap();
    }
    let alarm = eventually("a data_dropped alarm", Duration::from_secs(20), || async {
        server
            .alarms()
            .into_iter()
            .find(|a| a["kind"] == "data_dropped")
            .ok_or_else(|| format!("alarms so far: {:?}", server.alarms()))
    })
    .await;
    assert_eq!(alarm["agent"], "0:127.0.0.1");
    let message = alarm["message"].as_str().unwrap();
    assert!(message.contains("spool_max_mb"), "{message}");
    assert!(
        agent.log().contains("data spool is full"),
        "the agent logs the drops itself too"
    );
    // One alarm, not one per heartbeat.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let count = server
        .alarms()
        .iter()
        .filter(|a| a["kind"] == "data_dropped")
        .count();
    assert_eq!(count, 1);
}
